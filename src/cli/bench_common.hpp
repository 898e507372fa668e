#pragma once

// Pieces shared by the sections of `nodepool bench`: options, statistics,
// resident memory, temporary directories and child processes.
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <map>
#include <nlohmann/json.hpp>
#include <sys/types.h>

#include "cli/os.hpp"
#include "params.hpp"

namespace nodepool::cli::bench {

struct options {
  bool quick = false;
  bool json = false;
  std::string plot_dir;          // where to write the latency plot, if set
  std::vector<std::string> only; // sections to run (all when empty)
  int reps = 5;                  // repetitions of every figure
  double seconds = 2.0;          // measuring window of one repetition
  double warmup = 0.5;           // before every window
  uint32_t clients = 32;         // concurrent clients (nodepool and redis)
  uint32_t nodes = 1000;         // pool size of state_machine / durable / redis
  std::vector<double> loads;     // fractions of saturation for the latency curve
  double load_base = 0;          // cycles/s the loads are of (0: the run's saturation)
  long copy_ahead = -1;          // durable's copy_ahead_per_commit (-1: the default)
  bool driver_requests = false;  // the driver asks by CAF request, not by ticket
  long caf_moderate_polls = -1;  // durable's and replicated's CAF setting (-1: ours)
  std::vector<uint32_t> scale_nodes;
  uint32_t recovery_nodes = 100000;
  uint32_t recovery_sessions = 10000;
  double flat_seconds = 60;       // the long saturation run of `durable`
  double flat_retention_s = 10;   // its pool's session_id_retention
  std::vector<uint64_t> check_sessions;  // history sizes of `check`
  uint32_t queue_nodes = 100000;  // pool of the deep-queue case of `queue`
  uint32_t queue_sessions = 10000;
  uint32_t remote_nodes = 200;
  uint32_t remote_clients = 64;
  uint32_t api_connections = 200;        // keep-alive connections of `api`
  double api_seconds = 30;               // its measuring window (each way)
  unsigned failover_kills = 20;          // leader kills of `failover`
  unsigned failover_election_ms = 400;   // its Raft election timeout
  unsigned raft_snapshot_threshold = 0;  // replicated's; 0: the cluster file's default
  unsigned rotations = 10;               // hand-overs timed by `rotation`
  unsigned rotation_interval_ms = 2000;  // its rotation_interval_ms
  std::string redis_server;      // path of redis-server (found or installed)
  /// Pool parameters of the nodepool sections (defaults unless flags say
  /// otherwise), and the flags themselves, passed on to child runs.
  params pool;
  std::map<std::string, std::string> pool_flags;
};

using clock = std::chrono::steady_clock;

inline double seconds_since(clock::time_point t) {
  return std::chrono::duration<double>(clock::now() - t).count();
}

inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
           clock::now().time_since_epoch())
    .count();
}

/// Median of the values (0 for none).
double median(std::vector<double> xs);
/// The q-quantile (0..1) of the values, nearest rank (0 for none).
double quantile(std::vector<double> xs, double q);

/// Resident set size of this process, in bytes (/proc/self/statm).
uint64_t rss_bytes();

void remove_tree(const std::string& dir);

/// A fresh directory under $TMPDIR (or /tmp), nodepool-bench-TAG-XXXXXX,
/// removed when it goes out of scope, also when a signal or an error ends
/// the section early.
struct temp_tree {
  std::string path;
  bool keep = false;  // leave it (and say where) instead of removing it
  explicit temp_tree(const std::string& tag)
      : path(make_temp_dir("bench-" + tag)) {}
  temp_tree(const temp_tree&) = delete;
  temp_tree& operator=(const temp_tree&) = delete;
  ~temp_tree() {
    if (!keep)
      remove_tree(path);
  }
};


/// Path of the running executable.
std::string self_exe();

/// Thrown where a section notices a signal (stop_requested); the section's
/// cleanup (actors, child processes, temporary directories) runs on the way
/// out, and `nodepool bench` exits with 128 + the signal.
struct interrupted {};
/// Throws interrupted once a signal asked to stop.
void check_stop();
/// Sleeps `seconds` in slices of at most 50 ms; throws interrupted as soon
/// as a signal asked to stop.
void sleep_unless_stopped(double seconds);

/// How the bench runs `bin` (child_process): stdout and stderr appended to
/// one log; in a process group of its own, so that a Ctrl-C reaches only
/// this process, which passes a single SIGTERM on (child_process::finish);
/// killed if this process dies.
inline child_options bench_child(std::string bin) {
  child_options o;
  o.bin = std::move(bin);
  o.one_log = true;
  return o;
}
/// Ends such a child: SIGTERM, then SIGKILL past `grace`, or past half a
/// second once a signal asked this process to stop, also while it waits
/// (a Ctrl-C ends the bench within a second).
void end_child(child_process& c, std::chrono::milliseconds grace);
/// The same for several at once (null entries skipped): each is asked
/// before any is waited for (terminate_all).
void end_children(const std::vector<child_process*>& cs,
                  std::chrono::milliseconds grace);

/// Progress on stderr (a line per step), so that stdout stays one object
/// with --json.
void note(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

/// Runs `reps` repetitions of `f` and returns the values it gave.
template <class F>
std::vector<double> repeat(int reps, F&& f) {
  std::vector<double> out;
  for (int i = 0; i < reps; ++i)
    out.push_back(f(i));
  return out;
}

/// `binary` from PATH or /usr/bin; when missing, Debian's `package` is
/// installed (apt-get, as root). Throws naming `section` when it cannot be.
std::string find_or_install(const std::string& binary, const std::string& package,
                            const std::string& section);

// The sections. Each returns its part of the report.
nlohmann::json state_machine(const options& o);
/// Saturation and the latency curve; the latency curve is also in
/// "curve" for the plot.
nlohmann::json durable(const options& o);
/// The durable cycle through a 3-member Raft group in this process.
nlohmann::json replicated(const options& o);
/// Leader kills under load in a 3-oracle cluster of processes.
nlohmann::json failover(const options& o);
nlohmann::json rotation(const options& o);
nlohmann::json remote(const options& o);
nlohmann::json redis(options& o);
/// The same cycle as transactions on a 3-member etcd cluster, and its
/// failover after a kill -9 of its leader.
nlohmann::json etcd(options& o);
nlohmann::json scale(const options& o);
/// One size of `scale`, run in a child process (--scale-point N).
nlohmann::json scale_point(const options& o, uint32_t nodes);
nlohmann::json recovery(const options& o);
/// `nodepool check` speed: entries per second over stored histories of
/// growing length (sessions served one after another).
nlohmann::json check_speed(const options& o);
/// The cost of a command with a deep queue that nobody can serve and a big
/// pool, against a small pool and an empty queue.
nlohmann::json queue_cost(const options& o);
/// What one snapshot of a big pool with a deep queue costs the supervisor
/// (its stop) and the snapshot writer (each step, timed apart).
nlohmann::json snapshot_cost(const options& o);
/// Completions over the HTTP API (many keep-alive connections) and the same
/// asked in-process, against simulated miners.
nlohmann::json api(const options& o);

/// `nodepool bench --prepare-recovery DIR`: writes the stored state of a
/// pool with `nodes` nodes and `sessions` queued sessions into DIR, then
/// kills itself with SIGKILL, as a crashed oracle would leave it.
[[noreturn]] void prepare_recovery(const std::string& dir, uint32_t nodes,
                                   uint32_t sessions);

} // namespace nodepool::cli::bench
