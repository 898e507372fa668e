#pragma once

// How `nodepool chaos` decides that a run has settled, from the members'
// `status --json` answers alone (no process, no clock: the runner asks, this
// reads). First the sessions: the current leader lists none of those the
// runner saw accepted as live. Then, in a cluster, the archives: every
// member's archive holds every session ended through the pool index that
// leader had applied.
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace nodepool::cli {

/// A cluster member's `status --json` comes from a leader that is ready
/// (it applied every entry of the terms before its own) in the newest term
/// the runner has seen, or a later one. A member just started, or a
/// candidate, lists no session yet: its empty list would pass for a
/// settled pool.
bool from_current_leader(const nlohmann::json& status, uint64_t newest_term);

enum class sessions_answer {
  no_answer,           // not a status report
  not_from_the_leader, // a cluster member other than the current leader
  open,                // an accepted session is still queued or active
  settled,             // none is
};

/// What a `status --json --sessions` answer says of the accepted sessions.
/// `status` lists live sessions only: whether each ended one is in the
/// archive, and how it ended, is for the check that follows.
sessions_answer read_sessions_answer(const nlohmann::json& status,
                                     const std::set<std::string>& accepted,
                                     bool cluster, uint64_t newest_term);

/// The archives' step: how far each member's archive is complete
/// (`archive_complete_through`), against the pool index the current
/// leader had applied when it first answered.
class archive_watch {
public:
  explicit archive_watch(size_t members)
    : through_(members), first_(members) {}

  /// Member k's `status --json` (anything else is ignored).
  void answer(size_t k, const nlohmann::json& status, uint64_t newest_term);
  /// Every member's archive holds everything through the target.
  bool complete() const;
  /// The member to ask after member k: the next one, in turn, not known
  /// complete (every one in turn while the target is unknown).
  size_t next(size_t k) const;
  /// Members whose first answer, once the target was known, was short of
  /// it: those the runner waited for.
  size_t behind() const;
  std::optional<uint64_t> target() const { return target_; }
  /// "member 2 through 1180, member 3 through unknown": those short of it.
  std::string short_of_target() const;

private:
  bool short_of(size_t k) const {
    return !target_ || !through_[k] || *through_[k] < *target_;
  }
  std::optional<uint64_t> target_;
  std::vector<std::optional<uint64_t>> through_, first_;
};

} // namespace nodepool::cli
