#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace nodepool {

/// What a member of the replicated log keeps on disk (libraft's raft_uv
/// directory, `<data-dir>/raft`), as a restarting member loads it: the
/// last snapshot and the entries after it, unframed. For `nodepool check`
/// on a stopped member.
struct raft_disk {
  uint64_t term = 0;
  uint64_t voted_for = 0;
  uint64_t snapshot_index = 0;  // 0: no snapshot
  uint64_t snapshot_term = 0;
  std::string snapshot;         // the state machine's bytes
  struct entry {
    uint64_t index = 0;
    uint64_t term = 0;
    bool command = false;  // a state machine entry (not a barrier or a
                           // configuration change)
    std::string data;      // a command's bytes
  };
  std::vector<entry> entries;  // in log order; may start before the snapshot
  /// The last index named by a closed segment file (`FIRST-LAST`): raft_uv
  /// loads a damaged segment as if the log ended before it, without an
  /// error, so the caller compares.
  uint64_t named_last_index = 0;
  std::string named_last_segment;
};

/// Loads `dir` (a raft_uv directory) without changing it: raft_uv tidies
/// the files it loads (it closes an open segment), so it reads a copy in a
/// temporary directory. False with `error` set when it cannot be read.
bool load_raft_dir(const std::string& dir, raft_disk& out, std::string& error);

} // namespace nodepool
