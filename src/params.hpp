#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace nodepool {

/// Tunable parameters of the pool (DESIGN.md section 2). Times are in
/// milliseconds. Defaults follow the published descriptions of inference
/// networks; every field can be set from a TOML file (see deploy/nodepool.toml).
struct params {
  /// Upper bound of every duration (2^40 ms, about 34 years).
  static constexpr int64_t max_duration_ms = int64_t{1} << 40;

  // cognitive tests
  int64_t test_deadline_ms = 5000;
  uint32_t challenges_per_test = 5;
  double pass_mark = 0.6;
  /// Latency bound of a test (ms, from sending it to its answers) at each
  /// level, comma-separated from level 0; the last one holds for the levels
  /// above. Slower fails the test (too_slow) even with every answer right.
  /// 0 at a level: no bound there.
  std::string test_latency_ms = "4000,3500,3000,2500,2000,1500";
  /// Completion tokens per second a test's answers must reach, where the
  /// node's backend reports tokens (0: not checked).
  double test_min_tokens_per_s = 0;
  /// Share of a test's items that are cross-checks against nodes in good
  /// standing (peer items of the bank).
  double peer_share = 0.2;
  /// An answer longer than this is refused (answer_too_large).
  uint32_t max_answer_bytes = 8192;
  /// Admission tests and retests sent and not yet finished, at most; the
  /// others wait in the order they were asked for, and a test's deadline
  /// starts when it is sent. A re-validation (a node back from a session)
  /// never waits, but counts. 0: no limit. Without it, thousands of nodes
  /// registering at once (an oracle's start, a miner fleet's) are all sent
  /// a test together, and those answered late fail through no fault of
  /// their own. A stored parameter set that does not name it (written
  /// before it existed) reads as 0, so an older log replays as it ran.
  uint32_t max_tests_in_flight = 250;
  // sessions
  uint32_t min_nodes = 1;
  uint32_t max_nodes = 3;
  uint32_t redundancy = 3;
  uint32_t tasks_before_release = 5;
  int64_t reserve_period_ms = 300000;
  int64_t idle_threshold_ms = 60000;
  int64_t queue_timeout_ms = 600000;  // queued longer than this: failed
  // Sessions waiting in the queue at most; a submission over it is refused
  // (queue_full) and changes nothing.
  uint64_t max_queued_sessions = 1000000;
  /// How long the pool itself refuses a resubmitted id after its session
  /// ended (the idempotency window; older ids are looked up in the archive).
  int64_t session_id_retention_ms = 300000;
  int64_t task_phase_timeout_ms = 5000;
  // pool membership
  int64_t ephemeral_window_ms = 30 * 60 * 1000;
  int64_t heartbeat_interval_ms = 1000;
  int64_t heartbeat_timeout_ms = 5000;
  /// A node lost this long (no reconnection) leaves the pool's records, so
  /// that what the pool holds depends on its nodes, not on every node it
  /// ever saw; it comes back as a new node. 0: kept for ever.
  int64_t lost_retention_ms = 7 * 24 * 3600 * 1000LL;
  /// A node retired this long (by its strikes or by an operator) leaves the
  /// records too: else every id a miner ever had retired (a miner names its
  /// own nodes) would stay for ever. Back after it, it is a new node, tested
  /// before it serves. 0: kept for ever.
  int64_t retired_retention_ms = 30 * 24 * 3600 * 1000LL;
  // failure handling
  int64_t quarantine_backoff_ms = 30000;
  int64_t quarantine_backoff_max_ms = 300000;
  uint32_t max_strikes = 5;
  double panic_share = 0.5;  // max share of nodes quarantined by session failures
  // quality
  double embedding_threshold = 0.85;
  double reputation_alpha = 0.1;
  uint32_t max_level = 5;
  uint32_t promote_after = 3;  // consecutive passes to go up one level
  uint32_t recent_size = 8;
  // selection
  std::string selection = "reputation";  // reputation | random | latency
  uint64_t seed = 1;
  // storage
  uint64_t snapshot_every = 100000;  // log entries between snapshots (at least
                                  // nodes + sessions on record)
  int64_t tick_interval_ms = 200;

  /// Checks ranges; returns an empty string when valid, else what is wrong.
  std::string validate() const;
};

/// The latency bound of a test at `level` (0: none). `p` must be valid.
int64_t test_latency_bound_ms(const params& p, uint32_t level);
/// All of them, from level 0 (empty when the text does not parse).
std::vector<int64_t> test_latency_bounds(const params& p);
/// The bound at `level` of a parsed list: the last one for the levels
/// above it; 0 (none) for an empty list.
int64_t latency_bound_at(const std::vector<int64_t>& bounds, uint32_t level);

/// JSON form of all fields (what a Configure command carries).
std::string to_json(const params& p);
/// Parses to_json()'s output over `base`; unknown keys or wrong types give
/// an error message in `err`.
params params_from_json(const std::string& text, params base, std::string& err);

/// Names of all parameters, in declaration order.
std::vector<std::string> param_names();
/// Sets one parameter from text ("key=value" on a command line). Returns an
/// error message, empty on success.
std::string set_param(params& p, const std::string& key, const std::string& value);

/// Loads parameters from a TOML file over `base`. Throws std::runtime_error
/// with the file, key and reason on a bad file, unknown key or bad value.
params load_params(const std::string& path, params base = {});
/// TOML text made safe for Debian's toml++ 3.3.0, which hits
/// __builtin_unreachable() on some non-ASCII characters outside strings:
/// those are replaced by U+FFFD (an error there either way). Parse every
/// TOML file through it.
std::string without_toml_trap(const std::string& text);
/// The same from TOML text; `source` names it in error messages.
params load_params_text(const std::string& text, const std::string& source,
                        params base = {});

} // namespace nodepool
