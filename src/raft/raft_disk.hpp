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
/// `as_a_member`: first set aside what a member sets aside at start
/// (set_aside_stale_segments, on the copy), so that the reader loads what
/// the member would; false: as raft_uv alone loads it.
bool load_raft_dir(const std::string& dir, raft_disk& out, std::string& error,
                   bool as_a_member = true);

/// Before raft_start: the remains of a snapshot install that a crash cut
/// short, which libraft 0.15 would load at the wrong indexes (see
/// raft_member.cpp, 12.). A follower installing snapshot S writes it, then
/// deletes its closed segments one by one; killed in between, it restarts
/// with S and closed segments that all end before S. raft_uv leaves those
/// files (it drops them only in memory) and appends S+1... to a new open
/// segment. Killed again before that segment is closed, it restarts with
/// both, and raft_uv, which does not record where an open segment starts,
/// loads it right after the last closed segment: every entry S-X places
/// too early. When the newest snapshot is S, an open segment holds
/// entries, and every closed segment ends before S, those closed segments
/// (entries the snapshot holds) are renamed `stale-FIRST-LAST`, which raft
/// ignores; the open segment then loads at S+1, where its entries belong.
/// Returns the names moved aside (none: nothing to do); false with `error`
/// when the directory cannot be read or a rename fails.
bool set_aside_stale_segments(const std::string& dir,
                              std::vector<std::string>& moved,
                              std::string& error);

} // namespace nodepool
