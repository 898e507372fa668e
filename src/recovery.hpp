#pragma once

#include <atomic>
#include <string>
#include <vector>

#include "pool_state.hpp"
#include "storage.hpp"

namespace nodepool {

/// Rebuilds the pool from a store (start `pool` with default parameters): the latest snapshot, then every log entry
/// after it, applied in order with the times they were first applied at.
struct recovered {
  uint64_t last_index = 0;
  uint64_t replayed = 0;
  int64_t last_now = 0;
};
status recover(store& st, pool_state& pool, recovered& info);

/// Result of verifying a whole stored history (`nodepool check`).
struct history_report {
  uint64_t entries = 0;
  std::vector<std::pair<uint64_t, violation>> violations;  // (entry, what)
  uint64_t sessions_accepted = 0;
  std::string load_error;  // set when the store could not be read
  bool stopped = false;    // `stop` was set: the rest is unchecked
};

/// Replays the full log from an empty pool, checking I1..I5 after every
/// entry and, at the end, that every session ever accepted is still known
/// (I4 across restarts) and that the snapshot agrees with the replay. The
/// replay starts from default parameters; the log's Configure entries set
/// the ones the oracle ran with. With `stride` > 1 the invariants are
/// checked after every stride-th entry and after the last (a check costs
/// O(nodes + sessions), so a long history with a big pool wants a stride).
/// Once `*stop` is set (a signal) the scan skips the remaining entries and
/// the report says `stopped`: nothing may then be concluded from it.
history_report check_history(store& st, uint64_t stride = 1,
                             const std::atomic<bool>* stop = nullptr);

} // namespace nodepool
