#pragma once

// Deterministic simulation of a whole single-oracle pool: the real actors
// under CAF's test_coordinator, the real PoolState and storage code, and a
// fault schedule drawn from a seed. The same seed gives the same run, byte
// for byte, so a failing seed is its own reproducer.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace nodepool {

struct sim_options {
  /// "memory" (the in-memory store) or "rocksdb" (a RocksDB directory per
  /// run under `data_root`, closed and reopened at every oracle restart).
  std::string store = "memory";
  std::string data_root = "/tmp";
  /// Healthy nodes among the miners (the rest draw a behaviour at random).
  /// Liveness is checked with at least one; 0 is for testing the checker.
  uint32_t healthy_nodes = 3;
  /// Keep a line per injected fault in sim_result::trace.
  bool trace = false;
  /// For testing the checker itself: a store that acknowledges session
  /// submissions without keeping them (a disk that lies about fsync). Every
  /// run that accepts a session must then report a violation.
  bool lossy_store = false;
  /// Sync every group commit, as an oracle does. Off is for testing the
  /// checker: the simulation cuts the power, and an unsynced store then
  /// loses acknowledged sessions, which must be reported.
  bool sync = true;
  /// Oracles: 1 is one oracle over a store (run_sim); 3 or 5 a replicated
  /// pool (run_cluster_sim), whose members keep their log in memory.
  uint32_t oracles = 1;
  /// For testing the checker (cluster only): a log that tells the leader an
  /// entry committed as soon as it is proposed. A leader that dies with
  /// entries not yet on a majority then loses acknowledged sessions, which
  /// the runs must report.
  bool lying_log = false;
  /// For testing the checker (cluster only): libraft without raft_member's
  /// guard (src/raft/raft_member.cpp), whose holes some seeds must find.
  bool raft_guard = true;
  /// Cluster only: half the stopped oracles crash and restart from what
  /// their disk kept (half of those with a power cut) instead of resuming
  /// with their memory. Off: every stop is a freeze, as before crashes
  /// were simulated.
  bool restarts = true;
  /// For testing the checker (cluster only, with restarts): a power cut
  /// also takes the last three raft log entries the disk had acknowledged
  /// as written. Some seeds must fail, each with a reproducer.
  bool lying_disk = false;
  /// For testing the harness (one oracle): the check after this command
  /// (counted from 1) reports a violation, as a broken pool would, so that
  /// a run ended early by one is seen to end and report. 0: never.
  uint64_t fail_at_command = 0;
  /// For testing the checker (one oracle): the clients hear no answer, as
  /// if each were lost on its way; the run must report the submissions
  /// that never got one.
  bool deaf_clients = false;
  /// max_tests_in_flight of every run; 0: the pool's default (250, which
  /// a run's few nodes never reach). 1 to 3 make tests wait for each other
  /// through the faults.
  uint32_t tests_in_flight = 0;
};

struct sim_violation {
  uint64_t seed = 0;
  std::string invariant;  // I1..I5, "lost", "liveness", "history"
  std::string detail;
};

struct sim_result {
  uint64_t seed = 0;
  std::vector<sim_violation> violations;
  std::map<std::string, uint64_t> faults;  // injected, by kind
  uint64_t nodes = 0;
  uint64_t commands = 0;   // commands applied (all oracle lives)
  uint64_t submitted = 0;  // session ids sent by the clients
  uint64_t accepted = 0;   // acknowledged to a client
  uint64_t completed = 0;
  uint64_t failed = 0;
  uint64_t lost = 0;       // acknowledged and missing or unfinished
  // Cognitive tests of nodes without the model (solver, copycat): how many
  // ended, and how many passed (by luck: a copycat's copied answers can
  // land on the same questions; see README "Cognitive tests").
  uint64_t cheat_tests = 0;
  uint64_t cheat_passes = 0;
  /// Nodes lost past lost_retention_ms, or retired past
  /// retired_retention_ms, that left the records (NodeForgotten).
  uint64_t nodes_forgotten = 0;
  // A replicated pool only:
  uint32_t oracles = 1;
  uint64_t leader_changes = 0;  // terms in which a leader became ready
  /// Gaps a snapshot install left in a member's archive (the sessions
  /// ended by the entries it skipped), each copied from a peer by the
  /// archive backfill before the run ends.
  uint64_t archive_gaps = 0;
  /// What the guard of libraft 0.15's holes did (src/raft/raft_member.cpp),
  /// summed over the members and their lives: the log_status guard counts,
  /// snapshots refused and messages from outside the configuration.
  std::map<std::string, uint64_t> raft_guard;
  std::string trace;
};

/// Runs one seed. Never throws for a fault it injected; a violation found
/// ends the run early and is reported in the result.
sim_result run_sim(uint64_t seed, const sim_options& opt = {});

/// Runs one seed of a replicated pool (`opt.oracles` members, 3 or 5) on
/// libraft's simulated network and disks (actors/sim_cluster.cpp; an
/// oracle binary links it, a miner does not).
sim_result run_cluster_sim(uint64_t seed, const sim_options& opt);

/// The command line that reruns one seed with these options.
std::string sim_repro_command(uint64_t seed, const sim_options& opt);

} // namespace nodepool
