#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "raft/raft_tls.hpp"
#include "replication.hpp"

namespace nodepool {

struct raft_peer {
  uint64_t id = 0;
  std::string address;  // host:port of its Raft listener
};

struct raft_options {
  uint64_t id = 0;
  std::string dir;                // raft's own files: log segments, snapshots
  std::vector<raft_peer> members;  // every voter, this one included
  unsigned election_timeout_ms = 400;
  unsigned heartbeat_timeout_ms = 50;
  unsigned snapshot_threshold = 1024;  // entries between snapshots
  unsigned snapshot_trailing = 128;    // entries kept after a snapshot
  unsigned install_snapshot_timeout_ms = 10000;  // resend an unanswered one
  bool pre_vote = true;
  /// Joins a running cluster: a fresh directory is not bootstrapped; the
  /// member waits, with no configuration, until a leader adds it.
  bool join = false;
  /// Raft between members over mutual TLS (raft_tls_tunnel); empty
  /// certificate: plain TCP.
  raft_tls_tunnel::files tls;
};

/// A member of a Raft group over libraft 0.15 (`raft_uv` on disk, the
/// `raft_uv_tcp` transport), on a libuv loop of its own thread. The state
/// machine is applied, and `role` called, on that thread. A fresh directory
/// is bootstrapped with `members` (unless it joins); a directory with state
/// resumes from it.
/// Returns nullptr and sets `error` when the member cannot start.
std::unique_ptr<replicated_log> start_raft_log(const raft_options& opts,
                                               state_machine& sm,
                                               replicated_log::role_fn role,
                                               std::string& error);

} // namespace nodepool
