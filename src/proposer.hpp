#pragma once

#include <cstdint>
#include <string>

#include "pool_state.hpp"
#include "replica.hpp"

namespace nodepool {

/// The leader's side of a replicated pool. Its PoolState runs ahead of the
/// committed one by the batches in flight: commands are applied at once (so
/// refusals and events are known at once) and collected into the next
/// batch; whoever drives it proposes the batch and holds every answer and
/// event back until the batch is committed.
///
/// It starts from the committed state after the barrier of its term, and it
/// is thrown away when the term ends: a deposed leader's speculative state
/// never survives, the next term starts again from what committed.
class proposer {
public:
  proposer(const replica& committed, uint64_t term);
  /// From the committed state's snapshot (replica::snapshot()).
  proposer(const pb::Snapshot& committed, uint64_t term);

  /// Applies `cmd` at the clock's time (never earlier than the last
  /// command's). A command that changed the pool is moved into the pending
  /// batch.
  apply_result apply(pb::Command& cmd, int64_t clock_ms);
  bool has_pending() const { return pending_.entries_size() > 0; }
  size_t pending() const { return static_cast<size_t>(pending_.entries_size()); }
  /// The pending commands as one log entry of this term; empties it.
  std::string take_batch();

  const pool_state& pool() const { return pool_; }
  uint64_t term() const { return term_; }
  uint64_t last_index() const { return next_index_ - 1; }

private:
  pool_state pool_;
  uint64_t term_;
  uint64_t next_index_;
  int64_t last_now_;
  pb::LogBatch pending_;  // built in place: no copy per command
};

} // namespace nodepool
