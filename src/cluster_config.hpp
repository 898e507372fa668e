#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace nodepool {

/// "host:port" split, with a port in 1..65535; nullopt when it is not that.
/// The one reader of addresses (cluster files, --oracle lists, the leader's
/// address in a member's view).
std::optional<std::pair<std::string, uint16_t>>
split_host_port(const std::string& s);

/// A member's host:port as it may travel in the Raft configuration, which
/// joins a member's addresses with ';' (member_config_address).
bool member_address_ok(const std::string& s);

/// Why `raft` cannot be a member's Raft address, or empty: it must be an
/// IPv4 address and port (libraft 0.15 reads it with uv_ip4_addr and does
/// not resolve names).
std::string raft_address_error(const std::string& raft);

/// One oracle of a cluster, as the cluster file names it.
struct cluster_member {
  uint64_t id = 0;
  std::string raft;     // host:port of its Raft listener (oracles only)
  std::string address;  // host:port for miners and clients
  std::string http;     // host:port of its HTTP API (optional)
};

/// A member's address in the Raft configuration. Members of the cluster
/// file are there by their Raft listener alone (the file names the rest);
/// a member added while the cluster runs carries its client and HTTP
/// addresses too, "RAFT;CLIENT;HTTP" (HTTP may be empty), so that every
/// member learns them with the configuration. The transport is given the
/// part before the first ';'.
std::string member_config_address(const cluster_member& m);
/// The member `id` at `address` (as member_config_address wrote it).
cluster_member member_from_config(uint64_t id, const std::string& address);

/// A cluster file (TOML): every member, the replication's timing, and the
/// pool's parameters ([pool], read by load_params as in a config file).
///
///   cluster_id = "prod-eu"      # optional
///   [[member]]
///   id = 1
///   raft = "127.0.0.1:7101"
///   address = "127.0.0.1:4241"
///   http = "127.0.0.1:5011"   # optional: its HTTP API
///   ...
///   [raft]                      # optional
///   election_timeout_ms = 400
///   heartbeat_timeout_ms = 50
///   snapshot_threshold = 1024
///   snapshot_trailing = 128
///   install_snapshot_timeout_ms = 10000
///   rotation_interval_ms = 0    # > 0: the leader hands over after this long
///   stop_handover_ms = 600      # a leader asked to stop hands over within this
/// [tests] of an oracle's config file or of a cluster file: the challenge
/// bank (empty: the builtin one) and the file holding the oracles' secret
/// (empty: `<data-dir>/test_secret`). Every member of a cluster must use
/// the same secret: put it in the cluster file.
struct tests_files {
  std::string bank;
  std::string secret_file;
};

/// [tests] of TOML text (empty when it has none). Throws std::runtime_error
/// naming `source` and the key on a bad table or an unknown key.
tests_files parse_tests_table(const std::string& text, const std::string& source);

struct cluster_config {
  /// Names the cluster; a member's data directory remembers it and refuses
  /// a file naming another. Set it (top-level `cluster_id = "..."`) before
  /// the member list ever changes; by default it is derived from the list.
  std::string cluster_id;
  /// The id derived from the member list, named or not: a data directory
  /// that holds it takes the name given later for the same list.
  std::string derived_id;
  std::vector<cluster_member> members;
  unsigned election_timeout_ms = 400;
  unsigned heartbeat_timeout_ms = 50;
  unsigned snapshot_threshold = 1024;
  unsigned snapshot_trailing = 128;
  /// A leader that sent a snapshot and heard nothing back sends it again
  /// after this long (libraft's default, 30 s, leaves a follower whose
  /// snapshot was lost that far behind).
  unsigned install_snapshot_timeout_ms = 10000;
  /// Scheduled rotation: a leader hands leadership to the next member in
  /// id order once it has led this long (0: only on failure, the default).
  unsigned rotation_interval_ms = 0;
  /// A leader asked to stop (SIGTERM, Ctrl-C) hands leadership over first,
  /// waiting at most this long for the transfer and for the new leader to
  /// be heard from, then stops whatever came of it (with the default, a
  /// signal ends an oracle within a second; a healthy cluster on loopback
  /// hands over and stops in about 0.2 s). 0: no hand-over (the others
  /// elect after their election timeout).
  unsigned stop_handover_ms = 600;
  tests_files tests;

  const cluster_member* find(uint64_t id) const;
};

/// Parses a cluster file's text. Throws std::runtime_error naming `source`
/// and the key for: a syntax error, an unknown key, a member without an id
/// (or id 0), raft or address, an address that is not host:port, two
/// members with the same id, Raft address or client address, no member,
/// more than 7, or timings out of range.
cluster_config parse_cluster(const std::string& text, const std::string& source);
cluster_config load_cluster(const std::string& path);

/// Binds `data_dir` to the cluster: the first start writes its id there;
/// a later start with another cluster's file is refused (std::runtime_error
/// naming both ids).
void claim_data_dir(const cluster_config& c, const std::string& data_dir);

/// A TCP port on 127.0.0.1 that was free a moment ago: for tests and
/// benchmarks that start servers on one machine. Throws if none is.
uint16_t free_loopback_port();  // never the same port twice in a process

/// Writes a cluster file of `n` members on 127.0.0.1, every port free now
/// (ids 1..n), followed by `extra` (a `[raft]` table, say) and, unless
/// `extra` has one, a `[tests]` table naming `test_secret` next to the file
/// (one secret for the members); returns the members as written. Throws if
/// the file cannot be written.
std::vector<cluster_member> write_loopback_cluster(const std::string& path,
                                                   unsigned n,
                                                   const std::string& extra);

} // namespace nodepool
