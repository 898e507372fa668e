#pragma once

#include <atomic>
#include <functional>
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
  uint64_t sessions_archived = 0;  // ended, hence in the archive
  std::string load_error;  // set when the store could not be read
  bool stopped = false;    // `stop` was raised before the end
};

/// Replays the full log from an empty pool, checking I1..I5 after every
/// entry on the records it touched (PoolState::check_after) and on the
/// whole state where the stored snapshot was taken and at the end; so the
/// time is linear in the history's length. At the end every session ever
/// accepted must be live or in the archive exactly as the log ended it
/// (I4 across restarts), and the stored snapshot must equal the replay at
/// its index. The replay starts from default parameters; the log's
/// Configure entries set the ones the oracle ran with. With `stride` > 1
/// the whole state is also checked after every stride-th entry (O(state)
/// each: a debugging aid, nothing needs it). Raising `*stop` ends the
/// check early (`stopped`).
/// `progress`, if given, is called with the number of entries checked so
/// far after every 1024th entry.
history_report check_history(
  store& st, uint64_t stride = 1, const std::atomic<bool>* stop = nullptr,
  const std::function<void(uint64_t)>& progress = {});

} // namespace nodepool
