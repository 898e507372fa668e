#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include <mutex>

#include "pool_state.hpp"
#include "replication.hpp"

namespace nodepool {

/// One oracle's copy of the committed pool: the state every member of a
/// cluster folds the replicated log into, in the order the log commits it.
///
/// An entry of the log is a `LogBatch`: the commands of one group commit of
/// the leader, each with the time it was applied at and its index in the
/// pool's own numbering (which continues across leaders). Every member
/// applies the same batches in the same order with the stored times, so
/// every replica holds the same state at the same index (PoolState is
/// deterministic).
///
/// A batch that does not decode, whose term is below the last one applied
/// (a deposed leader), whose indexes do not continue this replica's, or
/// whose time runs backwards is refused whole and changes nothing; it is
/// counted. A command the pool refuses inside an accepted batch means the
/// leader's state and this one diverged: it changes nothing either, and is
/// reported as a violation.
///
/// Pure: no threads, no clock, no I/O. Ended sessions are handed to the
/// `archive` function (an oracle writes them to its RocksDB archive).
class replica {
public:
  using archive_fn = std::function<void(std::vector<pb::SessionRecord>&)>;

  struct outcome {
    bool ok = false;            // false: the batch was refused, nothing changed
    std::string error;          // why it was refused
    /// Refused because its first entry is not the next one due: this
    /// state can never take a later entry of that log either.
    bool off_log = false;
    size_t entries = 0;         // commands applied
    std::vector<violation> violations;
  };

  /// Ended sessions this replica did not archive itself: those ended by
  /// the entries a snapshot skipped (`from_index`..`to_index`, applied at
  /// times `from_now`..`to_now`, both inclusive). Their records are on the
  /// peers' archives; the oracle copies them from there.
  struct archive_gap {
    uint64_t from_index = 0;
    uint64_t to_index = 0;
    int64_t from_now = 0;
    int64_t to_now = 0;
  };

  /// `check`: run the incremental I1-I5 check after every command (tests,
  /// simulation). `archived_index` / `archived_now`: how far the local
  /// archive already goes (an oracle restarting reads it from its store).
  explicit replica(archive_fn archive = {}, bool check = false,
                   uint64_t archived_index = 0, int64_t archived_now = 0);

  outcome apply(std::string_view bytes);
  outcome apply(const pb::LogBatch& batch);
  /// Whether these batches, in order, would each start at the entry due
  /// after the one before (what `apply` needs): "" if so, else why not.
  /// Batches `apply` refuses for other reasons (they do not decode, or
  /// come from a deposed leader) change nothing there and are skipped.
  std::string follows(const std::vector<std::string_view>& batches,
                      size_t& bad) const;

  /// The committed state: the pool's snapshot with the last index, time
  /// and term folded in.
  pb::Snapshot snapshot() const;
  /// The same in two steps (pool_state::freeze).
  pool_state::frozen freeze();
  /// See pool_state::set_kept_copy_from (kept across a restore).
  void set_kept_copy_from(size_t records) { pool_.set_kept_copy_from(records); }
  /// After each batch applied, up to `budget` changed records are copied
  /// ahead into the kept copy, `leave` of them left to the next Raft
  /// snapshot's stop (pool_state::copy_ahead; the supervisor's defaults).
  /// A budget of 0: none.
  void set_copy_ahead(size_t budget, size_t leave) {
    copy_ahead_budget_ = budget;
    copy_ahead_leave_ = leave;
  }
  /// Records copied ahead so far.
  uint64_t copied_ahead() const { return copied_ahead_; }
  std::string snapshot_bytes() const;
  /// A bounded read of the committed state (pool_state::read), with the
  /// last index.
  pb::StatePage read(const pb::StateQuery& q) const {
    auto p = pool_.read(q);
    p.set_index(last_index_);
    return p;
  }
  /// Replaces the state with a snapshot's (a lagging member catching up).
  /// A snapshot that does not decode or breaks an invariant is refused with
  /// `error` and the state stays as it was.
  bool restore(std::string_view bytes, std::string& error);
  bool restore(const pb::Snapshot& snap, std::string& error);
  /// Whether `restore` would take these bytes: they decode, and their
  /// records hold I1-I5 (check_snapshot). Changes nothing.
  static bool check(std::string_view bytes, std::string& error);

  const pool_state& pool() const { return pool_; }
  uint64_t last_index() const { return last_index_; }
  uint64_t last_term() const { return last_term_; }
  int64_t last_now() const { return last_now_; }
  uint64_t batches_applied() const { return batches_; }
  uint64_t batches_refused() const { return refused_; }
  uint64_t restores() const { return restores_; }
  /// Snapshots refused (bad input from a peer): the state stayed.
  uint64_t restores_refused() const { return restores_refused_; }
  /// The gaps restores left in the local archive since the last call (the
  /// newest `kept_gaps` of them: an oracle never asks, and records each
  /// one durably through on_archive_gap instead).
  std::vector<archive_gap> take_archive_gaps();
  static constexpr size_t kept_gaps = 64;
  /// Called on the applying thread when a restore leaves a gap, before the
  /// restore returns (an oracle records it durably; see member_archive.hpp).
  /// Returns whether the gap was recorded: once it says no, the archive's
  /// position stays where it was, as after a failed batch (on_batch).
  void on_archive_gap(std::function<bool(const archive_gap&)> f) {
    gap_fn_ = std::move(f);
  }
  /// Called after each applied batch (after its ended sessions went to the
  /// archive function) with the index and time it reached. Returns whether
  /// the archive is whole through that index: once it says no, the
  /// archive's position (archived_index) stays where it was, so that no
  /// answer from this archive vouches for records it lacks.
  void on_batch(std::function<bool(uint64_t, int64_t)> f) {
    batch_fn_ = std::move(f);
  }
  /// Called before the state is handed to raft as a snapshot, with the
  /// archive's position (at or past the snapshot): raft may then drop the entries it
  /// covers, so what they archived must be durable first (a member that
  /// loses unsynced archive writes in a power cut could no longer replay
  /// them).
  void on_snapshot(std::function<void(uint64_t, int64_t)> f) {
    snapshot_fn_ = std::move(f);
  }
  /// What must happen before the state goes to raft as a snapshot (the
  /// on_snapshot function, with the archive's position as it is now), to
  /// be run later, on any thread: a snapshot is taken in two steps.
  std::function<void()> before_snapshot_later() const {
    return [f = snapshot_fn_, index = archived_index_, now = archived_now_] {
      if (f)
        f(index, now);
    };
  }
  /// The local archive holds every session ended up to this index.
  uint64_t archived_index() const { return archived_index_; }
  /// A write of the archive failed: its position no longer moves.
  bool archive_broken() const { return archive_broken_; }
  int64_t archived_now() const { return archived_now_; }
  /// Violations seen since the start (divergence, and I1-I5 when checking).
  const std::vector<violation>& violations() const { return violations_; }

private:
  pool_state pool_;
  archive_fn archive_;
  bool check_ = false;
  uint64_t last_index_ = 0;
  uint64_t last_term_ = 0;
  int64_t last_now_ = 0;
  uint64_t batches_ = 0;
  uint64_t refused_ = 0;
  uint64_t restores_ = 0;
  uint64_t restores_refused_ = 0;
  size_t copy_ahead_budget_ = 256;
  size_t copy_ahead_leave_ = 2048;
  uint64_t copied_ahead_ = 0;
  uint64_t archived_index_ = 0;
  int64_t archived_now_ = 0;
  std::vector<archive_gap> gaps_;
  std::function<bool(const archive_gap&)> gap_fn_;
  std::function<bool(uint64_t, int64_t)> batch_fn_;
  bool archive_broken_ = false;
  std::function<void(uint64_t, int64_t)> snapshot_fn_;
  std::vector<violation> violations_;
};

/// The replica as the state machine of a replicated log. Refused batches
/// and violations are logged (and counted by the replica). The log applies
/// on its own thread; `with` gives other threads a consistent look.
///
/// `deferred`: `apply` only keeps a copy of the entry, and `catch_up`
/// applies what was kept. Raft calls a leader's proposal back right after
/// `apply`, so the commit reaches the supervisor before the replica's own
/// work on it (decoding, the pool's commands, the archive's write: about
/// 190 us per batch of 30 commands), which then overlaps the supervisor's
/// next batch instead of delaying it. Whatever looks at the state (`with`,
/// a snapshot, a restore) applies what is pending first, so no reader sees
/// a state behind what raft has applied.
class replica_machine final : public state_machine {
public:
  explicit replica_machine(replica& r, bool deferred = false)
      : r_(r), deferred_(deferred) {}
  void apply(std::string_view entry) override;
  void catch_up() override;
  std::string snapshot() override;
  /// Copies the state under the lock; the archive's sync and the
  /// serialization run in the returned function.
  std::function<std::string()> snapshot_later() override;
  bool restore(std::string_view bytes, std::string& error) override;
  bool check(std::string_view bytes, std::string& error) const override {
    return replica::check(bytes, error);
  }
  /// Set by the first batch refused for not being the next one due
  /// (replica::outcome::off_log); nothing is applied after it.
  std::string broken() const override {
    std::lock_guard<std::mutex> g{mu_};
    return broken_;
  }
  std::string follows(const std::vector<std::string_view>& entries,
                      size_t& bad) const override {
    std::lock_guard<std::mutex> g{mu_};
    return r_.follows(entries, bad);
  }
  template <class F>
  auto with(F&& f) {
    std::lock_guard<std::mutex> g{mu_};
    apply_pending();
    return f(r_);
  }
  /// Entries kept for later (deferred), not yet applied.
  size_t pending() const {
    std::lock_guard<std::mutex> g{mu_};
    return pending_.size();
  }

private:
  void apply_now(std::string_view entry);  // mu_ held
  void apply_pending();                    // mu_ held

  replica& r_;
  const bool deferred_;
  mutable std::mutex mu_;
  std::vector<std::string> pending_;  // in log order
  std::string broken_;
};

} // namespace nodepool
