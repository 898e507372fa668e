// nodepool chaos: real processes on loopback (one oracle, or 3 or 5 as a
// replicated pool; several miner processes; a stream of `nodepool submit`
// batches) under a seeded schedule of SIGKILL and SIGSTOP/SIGCONT of the
// oracles (on a cluster, the member seen leading or a given one) and of the
// miners. A killed process is started again (an oracle on the same data
// directory and port). On a cluster every member's data directory is
// checked, and each must hold every acknowledged session.
// When the faults stop, the pool is given a bounded time to finish every
// session it acknowledged, the oracle is stopped cleanly, `nodepool check`
// verifies I1-I5 over the whole stored history, and every acknowledged
// session is looked up in the final stored state.
//
//   start oracle --> start miners, submitters --> faults for --duration
//        --> continue/restart everything, submitters finish their batch
//        --> poll `status` until every accepted session ended (bounded)
//        --> SIGTERM oracle, miners --> `check` --> table / JSON, exit code
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <thread>
#include <unistd.h>

#include "cli/chaos_settle.hpp"
#include "cli/os.hpp"
#include "cluster_config.hpp"
#include "cli/common.hpp"
#include "random.hpp"

namespace nodepool::cli {

namespace {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;
namespace fs = std::filesystem;

struct chaos_options {
  double duration_s = 0;
  uint64_t seed = 0;
  CLI::Option* seed_flag = nullptr;
  bool json = false;
  size_t miners = 3;
  size_t nodes = 4;
  size_t submitters = 4;
  size_t batch = 20;
  int64_t interval_ms = 20;
  int64_t fault_interval_ms = 1500;
  int64_t max_stop_ms = 3000;
  double settle_s = 120;
  std::string dir;
  bool keep = false;
  size_t oracles = 1;  // 3 or 5: a replicated pool
  bool partitions = false;  // members and miners in network namespaces
  std::string plot_dir;  // draw the run's timeline here (gnuplot)
};

// ------------------------------------------------------------ the schedule

enum fault_kind : size_t {
  oracle_kill,
  oracle_stop,
  miner_kill,
  miner_stop,
  base_kinds,
  // --partitions: a link goes down, then comes back.
  oracle_cut = base_kinds,  // a member's: cut off from everyone
  miner_cut,                // the miners' namespace's
  fault_kinds
};

/// Whether a fault of this kind falls on an oracle (a member, in a
/// cluster) rather than on the miners.
bool on_oracle(fault_kind k) {
  return k == oracle_kill || k == oracle_stop || k == oracle_cut;
}

/// How long a fault meant for the leader waits while no leader is known.
constexpr std::chrono::milliseconds leader_wait{3000};

const char* const fault_keys[fault_kinds] = {"oracle_kills", "oracle_stops",
                                             "miner_kills", "miner_stops",
                                             "oracle_cuts", "miner_cuts"};
const char* const fault_labels[fault_kinds] = {
  "oracle SIGKILL", "oracle SIGSTOP/SIGCONT", "miner SIGKILL",
  "miner SIGSTOP/SIGCONT", "oracle link cut", "miners' link cut"};

/// One planned fault: at `at_ms` after the start of the fault phase, `kind`
/// on the oracle or on miner process `miner`. `hold_ms` is how long a
/// stopped process stays stopped, or how long a killed one stays dead.
struct fault {
  int64_t at_ms;
  fault_kind kind;
  size_t miner;
  int64_t hold_ms;
  // A replicated pool: an oracle fault hits the member that leads when it
  // is due (`at_leader`; while none is known the fault waits, up to
  // leader_wait),
  // else member `member`.
  size_t member = 0;
  bool at_leader = false;
};

/// The command that draws the same schedule again: every option the
/// schedule or the load depends on, with the seed.
std::string repeat_command(const chaos_options& o, uint64_t seed) {
  std::ostringstream c;
  c << "nodepool chaos --duration " << o.duration_s << " --seed " << seed
    << " --oracles " << o.oracles << (o.partitions ? " --partitions" : "")
    << " --miners " << o.miners << " --nodes " << o.nodes << " --submitters "
    << o.submitters << " --batch " << o.batch << " --interval-ms "
    << o.interval_ms << " --fault-interval-ms " << o.fault_interval_ms
    << " --max-stop-ms " << o.max_stop_ms;
  return c.str();
}

/// The whole fault schedule, drawn from the seed alone: the same seed gives
/// the same times, kinds, targets and holds (what the processes are doing
/// at those times still depends on the machine).
std::vector<fault> draw_schedule(uint64_t seed, const chaos_options& o) {
  seeded_rng rng{seed};
  std::vector<fault> out;
  auto total = static_cast<int64_t>(o.duration_s * 1000);
  int64_t t = 0;
  for (;;) {
    // Gaps uniform in [0.2, 1.8] x the mean.
    auto lo = std::max<int64_t>(1, o.fault_interval_ms / 5);
    auto span = std::max<int64_t>(1, o.fault_interval_ms * 8 / 5);
    t += lo + static_cast<int64_t>(rng.below(static_cast<uint64_t>(span)));
    if (t >= total)
      break;
    fault f;
    f.at_ms = t;
    f.kind = static_cast<fault_kind>(rng.below(base_kinds));
    f.miner = static_cast<size_t>(rng.below(o.miners));
    if (f.kind == oracle_stop || f.kind == miner_stop)
      f.hold_ms = 100 + static_cast<int64_t>(rng.below(
                          static_cast<uint64_t>(std::max<int64_t>(1, o.max_stop_ms - 99))));
    else
      f.hold_ms = static_cast<int64_t>(rng.below(1000));
    if (o.oracles > 1) {  // drawn last: one oracle's schedules stay as they were
      f.member = static_cast<size_t>(rng.below(o.oracles));
      f.at_leader = rng.chance(0.5);
    }
    // Drawn after that: schedules without partitions stay as they were. A
    // third of the faults become a cut link, of an oracle or of the miners,
    // for 0.3 to 2.8 s.
    if (o.partitions && rng.chance(1.0 / 3)) {
      f.kind = f.kind == oracle_kill || f.kind == oracle_stop ? oracle_cut : miner_cut;
      f.hold_ms = 300 + static_cast<int64_t>(rng.below(2500));
    }
    out.push_back(f);
  }
  return out;
}

// ------------------------------------------------------------ the network

/// --partitions: the layout of deploy/netns-cluster, made with iproute2 by
/// the runner itself: a bridge PREFIXbr (SUBNET.254, the host's side), one
/// namespace per member (PREFIXo1.., SUBNET.i) and one for the miners
/// (PREFIXm, SUBNET.100), each joined to the bridge by a veth pair whose
/// host end is PREFIX<name>h. A cut is that end going down. Removed, with
/// every link, when the run ends (after its processes).
class netns_cluster {
public:
  netns_cluster(size_t members, const std::string& prefix, const std::string& subnet)
    : prefix_(prefix), subnet_(subnet) {
    // A second Ctrl-C exits at once: it says how to remove what is left.
    hint_ = "nodepool chaos: its network namespaces are left; remove them with: "
            "NETNS_PREFIX=" + prefix_ + " deploy/netns-cluster down\n";
    exit_hint = hint_.c_str();
    try {
      make(members);
    } catch (...) {
      teardown();  // what was made goes, then the reason
      throw;
    }
  }
  ~netns_cluster() { teardown(); }
  netns_cluster(const netns_cluster&) = delete;
  netns_cluster& operator=(const netns_cluster&) = delete;

  std::string name(const std::string& n) const { return prefix_ + n; }
  std::string address(const std::string& n) const {
    return subnet_ + (n == "m" ? std::string{".100"} : "." + n.substr(1));
  }
  void set_link(const std::string& n, bool up) {
    ip("link set " + name(n) + "h " + (up ? "up" : "down"));
  }

  /// Can this process make namespaces? Empty if so, else why not.
  static std::string unavailable() {
    if (geteuid() != 0)
      return "--partitions needs root (ip netns)";
    std::string probe = "npprobe" + std::to_string(getpid() % 100000);
    std::string out;
    if (run("netns add " + probe, out) != 0)
      return "--partitions needs ip netns: " + out;
    run("netns del " + probe, out);
    return {};
  }

private:
  void teardown() {
    exit_hint = nullptr;
    for (auto& n : names_)
      ip("netns del " + name(n), false);
    names_.clear();
    if (made_)
      ip("link del " + bridge(), false);
    made_ = false;
  }
  void make(size_t members) {
    ip("link add " + bridge() + " type bridge");
    made_ = true;
    // Bridged frames skip the host's packet filter (br_netfilter).
    ip("link set " + bridge()
         + " type bridge nf_call_iptables 0 nf_call_ip6tables 0 nf_call_arptables 0",
       false);
    ip("addr add " + subnet_ + ".254/24 dev " + bridge());
    ip("link set " + bridge() + " up");
    for (size_t k = 1; k <= members; ++k)
      add("o" + std::to_string(k));
    add("m");
  }
  std::string bridge() const { return prefix_ + "br"; }
  void add(const std::string& n) {
    ip("netns add " + name(n));
    names_.push_back(n);
    ip("link add " + name(n) + "h type veth peer name " + name(n) + "n");
    ip("link set " + name(n) + "n netns " + name(n));
    ip("link set " + name(n) + "h master " + bridge() + " up");
    ip("-n " + name(n) + " link set lo up");
    ip("-n " + name(n) + " addr add " + address(n) + "/24 dev " + name(n) + "n");
    ip("-n " + name(n) + " link set " + name(n) + "n up");
  }
  static int run(const std::string& args, std::string& out) {
    out.clear();
    FILE* p = popen(("ip " + args + " 2>&1").c_str(), "r");
    if (!p)
      return -1;
    char buf[256];
    while (fgets(buf, sizeof buf, p))
      out += buf;
    int st = pclose(p);
    while (!out.empty() && out.back() == '\n')
      out.pop_back();
    return st;
  }
  void ip(const std::string& args, bool must = true) {
    std::string out;
    if (run(args, out) != 0 && must)
      throw std::runtime_error("ip " + args + ": " + (out.empty() ? "failed" : out));
  }

  std::string prefix_, subnet_;
  bool made_ = false;
  std::vector<std::string> names_;
  std::string hint_;
};

// ------------------------------------------------------------ the run

std::string seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g s", s);
  return buf;
}

/// The oracle or one miner process: the process now running for it, and
/// what is due (a SIGCONT, a start). Owned by the runner.
struct role {
  std::string name;
  std::unique_ptr<child_process> proc;
  int runs = 0;                          // processes started for it
  bool killed = false;                   // the current one was SIGKILLed by us
  bool listening = false;                // oracle only: printed its port
  steady::time_point started_at;         // of the current process
  std::optional<steady::time_point> cont_at;
  std::optional<steady::time_point> start_at;
  std::optional<steady::time_point> heal_at;  // --partitions: its link is down
};

/// One stream of sessions: consecutive `nodepool submit` batches.
struct submitter {
  std::unique_ptr<child_process> proc;
  size_t next = 0;
  int batches = 0;
};

class chaos_run {
public:
  chaos_run(const chaos_options& o, uint64_t seed, std::string dir)
    : o_(o), seed_(seed), dir_(std::move(dir)), db_(dir_ + "/db"),
      logs_(dir_ + "/logs") {
    fs::create_directories(logs_);
  }

  /// Runs everything; returns the report (JSON) and fills errors_.
  nlohmann::json run();

  bool interrupted() const { return interrupted_; }
  /// After a signal: see the definition.
  void stop_children();
  bool ok() const { return ok_; }

private:
  void note(const std::string& what) {
    auto t = std::chrono::duration<double>(steady::now() - t0_).count();
    std::fprintf(stderr, "chaos %7.2fs  %s\n", t, what.c_str());
  }
  void error(const std::string& what) {
    errors_.push_back(what);
    note("ERROR " + what);
  }

  std::vector<std::string> oracle_args(size_t k) const;
  std::vector<std::string> miner_args(size_t i) const;
  bool cluster() const { return o_.oracles > 1; }
  // --partitions: the network namespaces (see netns_cluster below).
  std::string ns_of(const role& r, size_t index) const;
  void cut(role& r, const std::string& link, int64_t hold_ms, steady::time_point now);
  void heal(role& r, const std::string& link);
  std::string link_of(const role& r, size_t index) const;
  bool is_oracle(const role& r) const {
    return &r >= oracles_.data() && &r < oracles_.data() + oracles_.size();
  }
  /// Where miners and clients reach the pool: the oracle, or every member.
  std::string oracle_list() const;
  std::string data_dir(size_t k) const {
    return cluster() ? dir_ + "/m" + std::to_string(k + 1) : db_;
  }
  void write_cluster_file();
  bool start_oracles();
  void poll_leader(steady::time_point now);
  void start(role& r, size_t index);
  void tend(role& r, size_t index, steady::time_point now);
  void inject(const fault& f, steady::time_point now);
  void harvest(submitter& s, bool killed = false);
  void start_batch(size_t j);
  void poll_status(steady::time_point now);
  void poll_archives(steady::time_point now);
  /// `status --json` of member k (its output in logs/`log`); none when the
  /// member is down or stopped, and then k moves on to the next member.
  std::unique_ptr<child_process> ask_member(size_t& k, const std::string& log);
  bool archives_complete() const {
    return !cluster() || (archives_ && archives_->complete());
  }
  void sample(steady::time_point now);
  void tick(steady::time_point now);
  void shutdown();
  nlohmann::json verify();

  const chaos_options& o_;
  uint64_t seed_;
  std::string dir_, db_, logs_;
  std::string port_ = "0";      // one oracle: the port it chose
  std::vector<std::string> members_;  // a cluster: each member's client address
  std::string cluster_file_;
  steady::time_point t0_ = steady::now();
  // --partitions: the namespaces, removed after every process (declared
  // before them, so destroyed after).
  std::unique_ptr<netns_cluster> net_;
  std::vector<role> oracles_;
  // A cluster: the member last seen leading (-1: none yet), in which term,
  // and how many times the leadership was seen to change.
  int leader_ = -1;
  uint64_t leader_term_ = 0;
  size_t leader_changes_ = 0;
  std::unique_ptr<child_process> leader_poll_;
  steady::time_point leader_poll_since_, status_since_, sampler_since_;
  size_t poll_member_ = 0;
  std::optional<steady::time_point> leader_poll_at_;
  size_t leader_faults_[2] = {}, follower_faults_[2] = {};  // kills, stops
  std::vector<role> miners_;
  std::vector<submitter> subs_;
  bool feeding_ = false;  // submitters start new batches
  std::unique_ptr<child_process> status_;
  std::optional<steady::time_point> status_at_;
  bool settled_ = false;
  size_t stale_answers_ = 0;  // a cluster: answers of no current leader
  // A cluster, once the sessions settled: how far each member's archive
  // holds every ended session, asked member by member (chaos_settle.hpp).
  // A member that caught up by a snapshot install copies the install's
  // archive gap from a peer a while later; stopped before that, its
  // archive would lack sessions the others hold.
  std::optional<archive_watch> archives_;
  size_t archive_member_ = 0;
  std::unique_ptr<child_process> archive_poll_;
  steady::time_point archive_poll_since_;
  std::optional<steady::time_point> archive_poll_at_;

  std::set<std::string> accepted_;
  size_t refused_ = 0;
  size_t counts_[fault_kinds] = {};
  size_t skipped_ = 0;
  size_t oracle_restarts_ = 0, miner_restarts_ = 0;
  size_t oracle_exits_ = 0, miner_exits_ = 0;  // not caused by us
  size_t bind_retries_ = 0;
  std::vector<int64_t> recovery_ms_;  // restarted oracle: start to listening
  std::vector<std::string> errors_;
  bool interrupted_ = false;
  bool ok_ = false;
  // --plot: what happened when (seconds since the start), and the queue
  // depth sampled by a `status` child every half second.
  struct mark {
    double t;
    std::string what;  // "SIGKILL oracle", "SIGSTOP miner1", ...
  };
  std::vector<mark> marks_;
  std::vector<std::pair<double, double>> queue_;  // (t, queued)
  std::unique_ptr<child_process> sampler_;
  std::optional<steady::time_point> sample_at_;
  int64_t wall_t0_ms_ = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();

 public:
  /// --plot: the timeline's data, gnuplot script and PNG in `dir`.
  void plot(const std::string& dir);
};

std::string chaos_run::oracle_list() const {
  if (!cluster())
    return "127.0.0.1:" + port_;
  std::string s;
  for (auto& m : members_)
    s += (s.empty() ? "" : ",") + m;
  return s;
}

/// Each member's client and Raft ports, chosen free now (with --partitions,
/// fixed ports on each member's own address); compaction every 256 entries,
/// so that members restarted in the run catch up by snapshot.
void chaos_run::write_cluster_file() {
  cluster_file_ = dir_ + "/cluster.toml";
  std::string raft = "[raft]\nelection_timeout_ms = 500\nheartbeat_timeout_ms = 50\n"
                     "snapshot_threshold = 256\nsnapshot_trailing = 64\n";
  if (!net_) {
    for (auto& m : write_loopback_cluster(cluster_file_,
                                          static_cast<unsigned>(o_.oracles), raft))
      members_.push_back(m.address);
    return;
  }
  std::ofstream f{cluster_file_};
  for (size_t k = 1; k <= o_.oracles; ++k) {
    auto a = net_->address("o" + std::to_string(k));
    // No http: each member's API stays on the loopback of its namespace.
    f << "[[member]]\nid = " << k << "\nraft = \"" << a << ":7101\"\naddress = \""
      << a << ":4241\"\n";
    members_.push_back(a + ":4241");
  }
  f << raft << "\n[tests]\nsecret_file = \"" << dir_ << "/test_secret\"\n";
  if (!f)
    throw std::runtime_error("cannot write " + cluster_file_);
}

std::string chaos_run::ns_of(const role& r, size_t index) const {
  if (!net_)
    return {};
  return net_->name(is_oracle(r) ? "o" + std::to_string(index + 1) : "m");
}

std::string chaos_run::link_of(const role& r, size_t index) const {
  return is_oracle(r) ? "o" + std::to_string(index + 1) : "m";
}

void chaos_run::cut(role& r, const std::string& link, int64_t hold_ms,
                    steady::time_point now) {
  net_->set_link(link, false);
  r.heal_at = now + std::chrono::milliseconds(hold_ms);
  marks_.push_back({std::chrono::duration<double>(now - t0_).count(), "cut " + link});
  note("cut the link of " + link + " for " + std::to_string(hold_ms) + " ms");
}

void chaos_run::heal(role& r, const std::string& link) {
  net_->set_link(link, true);
  r.heal_at.reset();
  note("link of " + link + " back");
}

std::vector<std::string> chaos_run::oracle_args(size_t k) const {
  // Lifecycles of fractions of a second, so that many of them cross the
  // faults; the strike limit is high because a healthy node that fails a
  // test while its process is stopped should be retested, not retired.
  std::vector<std::string> where;
  if (cluster())
    where = {"--cluster", cluster_file_, "--id", std::to_string(k + 1),
             "--data-dir", data_dir(k)};
  else
    where = {"--data-dir", db_, "--port", port_};
  std::vector<std::string> a{"oracle"};
  a.insert(a.end(), where.begin(), where.end());
  std::vector<std::string> pool{
          "--test-deadline-ms", "1000",
          "--task-phase-timeout-ms", "500",
          "--heartbeat-interval-ms", "100",
          "--heartbeat-timeout-ms", "1500",
          "--quarantine-backoff-ms", "1000",
          "--quarantine-backoff-max-ms", "4000",
          "--tick-interval-ms", "50",
          "--max-strikes", "1000000"};
  a.insert(a.end(), pool.begin(), pool.end());
  return a;
}

std::vector<std::string> chaos_run::miner_args(size_t i) const {
  return {"miner",
          "--oracle", oracle_list(),
          "--nodes", std::to_string(o_.nodes),
          "--id-prefix", "m" + std::to_string(i),
          "--seed", std::to_string(mix64(seed_ + i) % 1000000007),
          "--deadline-hint-ms", "1000",
          "--connect-timeout", "3600"};
}

void chaos_run::start(role& r, size_t index) {
  auto out = logs_ + "/" + r.name + "." + std::to_string(r.runs) + ".out";
  auto args = is_oracle(r) ? oracle_args(index) : miner_args(index);
  child_options co;
  co.netns = ns_of(r, index);
  r.proc = std::make_unique<child_process>(std::move(args), out, co);
  r.started_at = steady::now();
  r.killed = false;
  r.listening = false;
  r.cont_at.reset();
  r.start_at.reset();
  if (r.runs > 0)
    (is_oracle(r) ? oracle_restarts_ : miner_restarts_)++;
  note("start " + r.name + (r.runs > 0 ? " again" : "") + " (pid "
       + std::to_string(r.proc->pid()) + ")");
  ++r.runs;
}

/// Reaps, restarts and continues one role's process as due.
void chaos_run::tend(role& r, size_t index, steady::time_point now) {
  bool is_oracle = this->is_oracle(r);
  if (r.proc && !r.proc->running()) {
    auto st = r.proc->status().value_or(-1);
    if (!r.killed) {
      auto all = r.proc->errors();
      auto err = last_line(all);
      if (is_oracle && !r.listening
          && all.find("cannot listen") != std::string::npos) {
        // The port is not free yet (or was taken): the same port again,
        // since the miners and submitters know only that one.
        if (++bind_retries_ > 100)
          throw std::runtime_error(r.name + " cannot listen on its port again: "
                                   + err);
      } else {
        ++(is_oracle ? oracle_exits_ : miner_exits_);
        auto what = r.name + " exited by itself (status "
                    + std::to_string(st) + "): " + err;
        // A crash: its report (signal and stack) is what the reader needs.
        if (auto crash = all.rfind("nodepool: fatal signal");
            crash != std::string::npos)
          what = r.name + " crashed (status " + std::to_string(st)
                 + "): " + all.substr(crash, 4000);
        // An oracle must only end when told to; a miner may leave (nodes
        // retired), which the table shows, and is started again.
        if (is_oracle)
          error(what);
        else
          note(what);
      }
      r.start_at = now + 200ms;
    }
    r.proc.reset();
  }
  if (!r.proc && r.start_at && now >= *r.start_at)
    start(r, index);
  if (r.proc && r.cont_at && now >= *r.cont_at) {
    r.proc->signal(SIGCONT);
    r.cont_at.reset();
    note("SIGCONT " + r.name);
  }
  if (r.heal_at && now >= *r.heal_at)
    heal(r, link_of(r, index));
  if (is_oracle && r.proc && !r.listening
      && r.proc->output().find("listening on") != std::string::npos) {
    r.listening = true;
    bind_retries_ = 0;
    if (r.runs > 1) {
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                  now - r.started_at).count();
      recovery_ms_.push_back(ms);
      note(r.name + " listening again, " + std::to_string(ms)
           + " ms after its start");
    }
  }
}

void chaos_run::inject(const fault& f, steady::time_point now) {
  if (f.kind == oracle_cut || f.kind == miner_cut) {
    // The miners share a namespace: their cut is kept on the first role.
    size_t member = f.at_leader && leader_ >= 0 ? static_cast<size_t>(leader_) : f.member;
    auto& r = f.kind == oracle_cut ? oracles_[member] : miners_[0];
    if (r.heal_at) {
      ++skipped_;
      return;
    }
    ++counts_[f.kind];
    cut(r, f.kind == oracle_cut ? link_of(r, member) : "m", f.hold_ms, now);
    return;
  }
  bool oracle = on_oracle(f.kind);  // cuts were dealt with above
  size_t member = 0;
  if (oracle && cluster())
    member = f.at_leader && leader_ >= 0 ? static_cast<size_t>(leader_) : f.member;
  auto& r = oracle ? oracles_[member] : miners_[f.miner];
  // A process that is dead (waiting for its restart) cannot be hit; a
  // stopped one can be killed but not stopped again.
  bool stop = f.kind == oracle_stop || f.kind == miner_stop;
  if (!r.proc || !r.proc->running() || (stop && r.proc->stopped())) {
    ++skipped_;
    return;
  }
  ++counts_[f.kind];
  if (oracle && cluster())
    ++(static_cast<int>(member) == leader_ ? leader_faults_
                                           : follower_faults_)[stop ? 1 : 0];
  auto pid = std::to_string(r.proc->pid());
  marks_.push_back({std::chrono::duration<double>(now - t0_).count(),
                    std::string{stop ? "SIGSTOP " : "SIGKILL "} + r.name});
  if (stop) {
    r.proc->signal(SIGSTOP);
    r.cont_at = now + std::chrono::milliseconds(f.hold_ms);
    note("SIGSTOP " + r.name + " (pid " + pid + ") for "
         + std::to_string(f.hold_ms) + " ms");
  } else {
    r.proc->signal(SIGKILL);
    r.killed = true;
    r.cont_at.reset();
    r.start_at = now + std::chrono::milliseconds(f.hold_ms);
    note("SIGKILL " + r.name + " (pid " + pid + "), back in "
         + std::to_string(f.hold_ms) + " ms");
  }
}

/// Reads a finished (or killed) batch: "accepted ID" lines are the
/// oracle's acknowledgements.
void chaos_run::harvest(submitter& s, bool killed) {
  std::istringstream in{s.proc->output()};
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("accepted ", 0) == 0) {
      auto rest = line.substr(9);
      accepted_.insert(rest.substr(0, rest.find(' ')));
    } else if (line.rfind("refused ", 0) == 0) {
      ++refused_;
      error("a session was refused: " + line.substr(8));
    }
  }
  auto st = s.proc->status();
  if (killed)
    error("a submitter had not finished its batch when the settling time "
          "ran out");
  else if (st && *st != 0 && *st != 1)
    error("a submitter ended with status " + std::to_string(*st) + ": "
          + last_line(s.proc->errors()));
  else if (st && *st == 1 && s.proc->errors().find("oracle gone")
                               != std::string::npos)
    error("a submitter gave up on the oracle");
  s.proc.reset();
}

void chaos_run::start_batch(size_t j) {
  auto& s = subs_[j];
  auto out = logs_ + "/submit" + std::to_string(j) + "."
             + std::to_string(s.batches) + ".out";
  s.proc = std::make_unique<child_process>(
    // At info: each retry and leader change is on its log, for a submitter
    // that does not finish its batch (38 lines over the 115 batches of a
    // 30 s run with 47 faults planned).
    std::vector<std::string>{"--log-level", "info", "submit", "--oracle", oracle_list(),
                             "--sessions", std::to_string(o_.batch),
                             "--prefix", "s" + std::to_string(j),
                             "--first", std::to_string(s.next),
                             "--max-tasks", "2",
                             "--interval-ms", std::to_string(o_.interval_ms),
                             "--connect-timeout", "3600"},
    out);
  s.next += o_.batch;
  ++s.batches;
}

/// During the settling phase: asks the oracle for every session's state
/// (one `status` child at a time) until every accepted session ended.
/// A `status` child asking a member whose link is cut waits for TCP to give
/// up: it is ended after `limit`, and asked again later.
bool overdue(std::unique_ptr<child_process>& c, steady::time_point since,
             steady::time_point now, std::chrono::milliseconds limit) {
  if (!c || !c->running() || now - since < limit)
    return false;
  c.reset();
  return true;
}

void chaos_run::poll_status(steady::time_point now) {
  if (overdue(status_, status_since_, now, 3s))
    status_at_ = now + 300ms;
  if (status_ && !status_->running()) {
    auto j = nlohmann::json::parse(last_line(status_->output()), nullptr, false);
    status_.reset();
    status_at_ = now + 300ms;
    // A cluster: only the current leader answers for the pool; another
    // member is asked again (the leader's poll finds the current leader).
    switch (read_sessions_answer(j, accepted_, cluster(), leader_term_)) {
      case sessions_answer::settled: settled_ = true; break;
      case sessions_answer::not_from_the_leader: ++stale_answers_; break;
      case sessions_answer::open:
      case sessions_answer::no_answer: break;
    }
  }
  bool any = std::any_of(oracles_.begin(), oracles_.end(),
                         [](const role& r) { return r.listening; });
  if (!status_ && !settled_ && (!status_at_ || now >= *status_at_) && any) {
    // A cluster: the last leader seen (a follower's view may lag).
    auto target = cluster() && leader_ >= 0
                    ? members_[leader_]
                    : oracle_list();
    std::vector<std::string> a{"status", "--oracle", target, "--json",
                               "--sessions"};
    status_ = std::make_unique<child_process>(std::move(a), logs_ + "/status.out");
    status_since_ = now;
  }
}

/// A cluster, after the sessions settled: asks the leader for the pool
/// index it applied, then each member (one `status` child at a time) how
/// far its archive is complete, until every member's reaches that index.
void chaos_run::poll_archives(steady::time_point now) {
  auto n = oracles_.size();
  if (!archives_) {
    archives_.emplace(n);
    archive_member_ = leader_ >= 0 ? static_cast<size_t>(leader_) : 0;
  }
  if (overdue(archive_poll_, archive_poll_since_, now, 3s)) {
    archive_member_ = (archive_member_ + 1) % n;
    archive_poll_at_ = now + 100ms;
  }
  if (archive_poll_ && !archive_poll_->running()) {
    archives_->answer(archive_member_,
                      nlohmann::json::parse(last_line(archive_poll_->output()),
                                            nullptr, false),
                      leader_term_);
    archive_poll_.reset();
    archive_poll_at_ = now + 100ms;
    archive_member_ = archives_->next(archive_member_);
  }
  if (!archive_poll_ && !archives_->complete()
      && (!archive_poll_at_ || now >= *archive_poll_at_)) {
    archive_poll_ = ask_member(archive_member_, "archives.out");
    archive_poll_since_ = now;
  }
}

std::unique_ptr<child_process> chaos_run::ask_member(size_t& k,
                                                     const std::string& log) {
  auto& r = oracles_[k];
  if (!r.listening || !r.proc || r.proc->stopped()) {
    k = (k + 1) % oracles_.size();
    return nullptr;
  }
  return std::make_unique<child_process>(
    std::vector<std::string>{"status", "--oracle", members_[k], "--json"},
    logs_ + "/" + log);
}

/// A cluster: asks one member after another who leads, and counts the
/// changes of leadership it sees (a leader that came and went between two
/// looks is not seen).
void chaos_run::poll_leader(steady::time_point now) {
  if (!cluster())
    return;
  if (overdue(leader_poll_, leader_poll_since_, now, 2s)) {
    poll_member_ = (poll_member_ + 1) % oracles_.size();
    leader_poll_at_ = now + 100ms;
  }
  if (leader_poll_ && !leader_poll_->running()) {
    auto j = nlohmann::json::parse(last_line(leader_poll_->output()), nullptr,
                                   false);
    leader_poll_.reset();
    if (j.is_object() && j.contains("cluster")) {
      auto& c = j["cluster"];
      auto term = c.value("term", uint64_t{0});
      if (c.value("role", "") == "leader" && c.value("ready", false)
          && term > leader_term_) {
        if (leader_ >= 0)
          ++leader_changes_;
        auto id = c.value("id", uint64_t{0});
        leader_ = static_cast<int>(id) - 1;
        leader_term_ = term;
        note("member " + std::to_string(id) + " leads term " + std::to_string(term));
      }
      // A member that knows of a leader of a newer term names it: ask that
      // one next, at once, rather than the next member in turn (which may
      // be stopped, or just restarted and still electing). A leader still
      // catching up (not ready) names itself, and is asked again.
      auto named = c.value("leader_id", uint64_t{0});
      if (c.value("role", "") == "leader")
        named = c.value("id", uint64_t{0});
      if (term > leader_term_ && named >= 1 && named <= oracles_.size()) {
        poll_member_ = static_cast<size_t>(named - 1);
        leader_poll_at_ = now + 20ms;
        return;
      }
    }
    poll_member_ = (poll_member_ + 1) % oracles_.size();
    leader_poll_at_ = now + 100ms;
  }
  if (!leader_poll_ && (!leader_poll_at_ || now >= *leader_poll_at_)) {
    leader_poll_ = ask_member(poll_member_, "leader.out");
    leader_poll_since_ = now;
  }
}

/// --plot: the queue depth every half second, from a `status` child (one
/// at a time; none while no oracle listens).
void chaos_run::sample(steady::time_point now) {
  if (o_.plot_dir.empty())
    return;
  if (overdue(sampler_, sampler_since_, now, 2s))
    sample_at_ = now + 500ms;
  if (sampler_ && !sampler_->running()) {
    auto j = nlohmann::json::parse(last_line(sampler_->output()), nullptr, false);
    if (j.is_object() && j.contains("sessions"))
      queue_.emplace_back(std::chrono::duration<double>(now - t0_).count(),
                          j["sessions"].value("queued", 0.0));
    sampler_.reset();
    sample_at_ = now + 500ms;
  }
  bool any = std::any_of(oracles_.begin(), oracles_.end(), [](const role& r) {
    return r.listening && r.proc && !r.proc->stopped();
  });
  if (!sampler_ && any && (!sample_at_ || now >= *sample_at_)) {
    auto target = cluster() && leader_ >= 0 ? members_[leader_] : oracle_list();
    sampler_since_ = now;
    sampler_ = std::make_unique<child_process>(
      std::vector<std::string>{"status", "--oracle", target, "--json"},
      logs_ + "/sample.out");
  }
}

void chaos_run::tick(steady::time_point now) {
  sample(now);
  for (size_t k = 0; k < oracles_.size(); ++k)
    tend(oracles_[k], k, now);
  poll_leader(now);
  for (size_t i = 0; i < miners_.size(); ++i)
    tend(miners_[i], i, now);
  for (size_t j = 0; j < subs_.size(); ++j) {
    auto& s = subs_[j];
    if (s.proc && !s.proc->running())
      harvest(s);
    if (!s.proc && feeding_)
      start_batch(j);
  }
}

void chaos_run::shutdown() {
  for (auto& s : subs_)
    if (s.proc) {
      s.proc->signal(SIGKILL);
      s.proc->wait(10s);
      harvest(s, true);
    }
  status_.reset();
  sampler_.reset();
  leader_poll_.reset();
  for (auto& r : oracles_) {
    if (!r.proc)
      continue;
    auto [st, forced] = r.proc->terminate(60s);
    if (forced || st != 0)
      error(r.name + " did not stop cleanly (status " + std::to_string(st)
            + (forced ? ", SIGKILL after 60 s" : "") + "): "
            + last_line(r.proc->errors()));
    else
      note(r.name + " stopped");
    r.proc.reset();
  }
  for (auto& m : miners_)
    if (m.proc) {
      m.proc->terminate(10s);
      m.proc.reset();
    }
}

/// After a signal, within a second: the submitters and the status runs are
/// killed (they hold nothing); the oracle and the miners get SIGTERM and
/// half a second to stop cleanly, so that the oracle closes its store, then
/// SIGKILL like every child left.
void chaos_run::stop_children() {
  for (auto& s : subs_)
    s.proc.reset();
  status_.reset();
  sampler_.reset();
  leader_poll_.reset();
  archive_poll_.reset();
  std::vector<role*> all;
  for (auto& r : oracles_)
    all.push_back(&r);
  for (auto& m : miners_)
    all.push_back(&m);
  for (auto* r : all)
    if (r->proc) {
      r->proc->signal(SIGCONT);
      r->proc->signal(SIGTERM);
    }
  auto until = steady::now() + 500ms;
  for (auto* r : all)
    if (r->proc) {
      r->proc->wait(std::max(
        std::chrono::duration_cast<std::chrono::milliseconds>(until
                                                              - steady::now()),
        0ms));
      r->proc.reset();
    }
}

/// `nodepool check` on the data directory, and every accepted session
/// looked up in the final stored state.
nlohmann::json chaos_run::verify() {
  nlohmann::json r;
  r["violations"] = nlohmann::json::array();
  size_t completed = 0, failed = 0;
  uint64_t entries = 0;
  nlohmann::json lost = nlohmann::json::array();
  // Every member's data directory: each must hold every accepted session,
  // ended.
  for (size_t k = 0; k < oracles_.size(); ++k) {
    child_process c{{"check", "--data-dir", data_dir(k), "--json", "--sessions"},
                    logs_ + "/check" + std::to_string(k + 1) + ".out"};
    std::optional<int> st;
    auto end = steady::now() + 600s;
    while (!(st = c.status()) && steady::now() < end && !stop_requested)
      std::this_thread::sleep_for(20ms);
    auto j = nlohmann::json::parse(last_line(c.output()), nullptr, false);
    if (!st || !j.is_object() || !j.contains("violations")
        || !j.contains("session_states")) {
      if (!st)
        c.signal(SIGKILL);
      error("nodepool check of " + data_dir(k) + " gave no report (status "
            + (st ? std::to_string(*st) : std::string{"timeout"})
            + "): " + last_line(c.errors()));
      r["entries"] = nullptr;
      return r;
    }
    for (auto v : j["violations"]) {
      if (cluster())
        v["member"] = k + 1;
      r["violations"].push_back(v);
    }
    entries = std::max<uint64_t>(entries, j["entries"].get<uint64_t>());
    auto& states = j["session_states"];
    size_t done = 0, bad = 0;
    for (auto& id : accepted_) {
      auto it = states.find(id);
      nlohmann::json miss;
      if (it == states.end())
        miss = {{"session", id}, {"state", "absent"}};
      else if (*it == "completed")
        ++done;
      else if (*it == "failed")
        ++bad;
      else
        miss = {{"session", id}, {"state", *it}};
      if (!miss.is_null()) {
        if (cluster())
          miss["member"] = k + 1;
        lost.push_back(miss);
      }
    }
    if (k == 0) {
      completed = done;
      failed = bad;
    }
  }
  r["entries"] = entries;
  r["completed"] = completed;
  r["failed"] = failed;
  r["lost"] = lost;
  return r;
}

/// Starts the oracle (which picks a free port, then kept for its restarts)
/// or every member of the cluster, and waits until each listens.
bool chaos_run::start_oracles() {
  if (o_.partitions) {
    auto pid = static_cast<unsigned>(getpid());
    net_ = std::make_unique<netns_cluster>(o_.oracles, "nc" + std::to_string(pid % 100000),
                                           "10.79." + std::to_string(pid % 250));
    note("network namespaces " + net_->name("o1") + ".. and " + net_->name("m")
         + " on " + net_->address("o1") + "/24");
  }
  if (cluster())
    write_cluster_file();
  oracles_.resize(o_.oracles);
  for (size_t k = 0; k < oracles_.size(); ++k) {
    oracles_[k].name = cluster() ? "oracle" + std::to_string(k + 1) : "oracle";
    start(oracles_[k], k);
  }
  auto ready_by = steady::now() + 60s;
  for (;;) {
    if (stop_requested) {
      interrupted_ = true;
      return false;
    }
    bool all = true;
    for (auto& r : oracles_) {
      if (r.listening)
        continue;
      if (!r.proc->running())
        throw std::runtime_error(
          r.name + " did not start (status "
          + std::to_string(r.proc->status().value_or(-1))
          + "): " + last_line(r.proc->errors()));
      auto out = r.proc->output();
      if (auto i = out.find("listening on "); i != std::string::npos) {
        if (!cluster()) {
          auto colon = out.find(':', i);
          auto end = out.find(' ', colon);
          port_ = out.substr(colon + 1, end - colon - 1);
        }
        r.listening = true;
      } else {
        all = false;
      }
    }
    if (all)
      break;
    if (steady::now() > ready_by)
      throw std::runtime_error("the oracles did not listen within 60 s");
    std::this_thread::sleep_for(10ms);
  }
  note("listening on " + oracle_list());
  return true;
}

nlohmann::json chaos_run::run() {
  auto schedule = draw_schedule(seed_, o_);
  note("seed " + std::to_string(seed_) + ", " + std::to_string(schedule.size())
       + " faults planned over " + seconds(o_.duration_s) + "; files in "
       + dir_);
  if (!start_oracles())
    return {};
  miners_.resize(o_.miners);
  for (size_t i = 0; i < o_.miners; ++i) {
    miners_[i].name = "miner" + std::to_string(i);
    start(miners_[i], i);
  }
  subs_.resize(o_.submitters);
  feeding_ = true;

  // Faults.
  auto t_faults = steady::now();
  auto faults_end = t_faults + std::chrono::milliseconds(
                                 static_cast<int64_t>(o_.duration_s * 1000));
  size_t next = 0;
  while (steady::now() < faults_end) {
    if (stop_requested) {
      interrupted_ = true;
      return {};
    }
    auto now = steady::now();
    while (next < schedule.size()
           && now >= t_faults + std::chrono::milliseconds(schedule[next].at_ms)) {
      // A fault meant for the leader waits (up to 3 s) while none is known
      // yet: dealt to a member chosen in advance instead, it would miss the
      // leader most of the time.
      auto& f = schedule[next];
      if (cluster() && f.at_leader && on_oracle(f.kind) && leader_ < 0
          && now < t_faults + std::chrono::milliseconds(f.at_ms) + leader_wait)
        break;
      inject(schedule[next++], now);
    }
    tick(now);
    std::this_thread::sleep_for(10ms);
  }

  // Settling: everything continued or started again, the submitters finish
  // their batch, then the oracle must end every session it accepted.
  feeding_ = false;
  auto t_settle = steady::now();
  auto settle_by = t_settle + std::chrono::milliseconds(
                                static_cast<int64_t>(o_.settle_s * 1000));
  note("faults over; settling (at most " + seconds(o_.settle_s) + ")");
  for (auto* r : [&] {
         std::vector<role*> all;
         for (auto& o : oracles_)
           all.push_back(&o);
         for (auto& m : miners_)
           all.push_back(&m);
         return all;
       }()) {
    if (r->proc && r->proc->stopped()) {
      r->proc->signal(SIGCONT);
      r->cont_at.reset();
    }
    if (r->start_at)
      r->start_at = t_settle;
    if (r->heal_at)
      r->heal_at = t_settle;  // every link back
  }
  // Then (a cluster) every member's archive must hold every ended
  // session, before the members are stopped and checked.
  std::optional<steady::time_point> t_sessions;
  while (!(settled_ && archives_complete()) && steady::now() < settle_by) {
    if (stop_requested) {
      interrupted_ = true;
      return {};
    }
    auto now = steady::now();
    tick(now);
    bool feeding = std::any_of(subs_.begin(), subs_.end(),
                               [](auto& s) { return s.proc != nullptr; });
    if (!feeding && !settled_)
      poll_status(now);
    if (settled_ && !t_sessions) {
      t_sessions = now;
      if (cluster())
        note("no accepted session is queued or active; waiting for every "
             "member's archive");
    }
    if (settled_ && cluster())
      poll_archives(now);
    std::this_thread::sleep_for(10ms);
  }
  archive_poll_.reset();
  auto settle_s = std::chrono::duration<double>(steady::now() - t_settle).count();
  size_t behind = archives_ ? archives_->behind() : 0;
  auto target = archives_ ? archives_->target() : std::nullopt;
  if (!settled_) {
    note("not settled after " + seconds(o_.settle_s));
  } else if (!archives_complete()) {
    note("not settled after " + seconds(o_.settle_s) + ": an archive lacks "
         "sessions ended by pool index "
         + (target ? std::to_string(*target) : std::string{"unknown"}) + " ("
         + (archives_ ? archives_->short_of_target() : std::string{})
         + ")");
  } else if (cluster()) {
    note("settled: every member's archive holds every session ended by pool "
         "index " + std::to_string(*target) + " ("
         + std::to_string(behind) + " member(s) behind were waited for, "
         + seconds(std::round(std::chrono::duration<double>(
                                 steady::now() - *t_sessions).count() * 100)
                   / 100)
         + ")");
  } else {
    note("settled: no accepted session is queued or active");
  }
  bool settled = settled_ && archives_complete();
  shutdown();
  auto v = verify();
  if (stop_requested) {
    interrupted_ = true;
    return {};
  }

  nlohmann::json rep;
  rep["seed"] = seed_;
  rep["duration_s"] = o_.duration_s;
  rep["oracles"] = o_.oracles;
  if (cluster()) {
    rep["leader_changes"] = leader_changes_;
    rep["last_term_seen"] = leader_term_;
  }
  rep["miners"] = o_.miners;
  rep["nodes_per_miner"] = o_.nodes;
  rep["submitters"] = o_.submitters;
  size_t kills = counts_[oracle_kill] + counts_[miner_kill];
  size_t stops = counts_[oracle_stop] + counts_[miner_stop];
  rep["kills"] = kills;
  rep["stops"] = stops;
  rep["cuts"] = counts_[oracle_cut] + counts_[miner_cut];
  nlohmann::json faults;
  for (size_t k = 0; k < fault_kinds; ++k)
    faults[fault_keys[k]] = counts_[k];
  if (cluster()) {
    faults["leader_kills"] = leader_faults_[0];
    faults["leader_stops"] = leader_faults_[1];
    faults["follower_kills"] = follower_faults_[0];
    faults["follower_stops"] = follower_faults_[1];
  }
  faults["planned"] = schedule.size();
  faults["skipped"] = skipped_;
  rep["faults"] = faults;
  rep["restarts"] = {{"oracle", oracle_restarts_}, {"miners", miner_restarts_}};
  rep["unexpected_exits"] = {{"oracle", oracle_exits_},
                             {"miners", miner_exits_}};
  if (!recovery_ms_.empty()) {
    int64_t sum = 0;
    for (auto ms : recovery_ms_)
      sum += ms;
    rep["oracle_restart_ms"] = {
      {"mean", sum / static_cast<int64_t>(recovery_ms_.size())},
      {"max", *std::max_element(recovery_ms_.begin(), recovery_ms_.end())}};
  }
  size_t lost = v.contains("lost") ? v["lost"].size() : 0;
  rep["sessions"] = {{"accepted", accepted_.size()},
                     {"refused", refused_},
                     {"completed", v.value("completed", size_t{0})},
                     {"failed", v.value("failed", size_t{0})},
                     {"lost", lost},
                     {"lost_ids", v.contains("lost") ? v["lost"]
                                                      : nlohmann::json::array()}};
  rep["settled"] = settled;
  rep["settle_s"] = settle_s;
  if (cluster()) {
    // Members whose archive was still copying a gap when the sessions
    // settled: waited for before the stop.
    rep["archives_behind_at_settle"] = behind;
    // Answers to the settling question that came from no ready leader of
    // the newest term (a member just restarted, a candidate): not taken.
    rep["status_answers_not_from_the_leader"] = stale_answers_;
    rep["archive_target_index"] = target ? nlohmann::json(*target)
                                         : nlohmann::json(nullptr);
  }
  rep["history_entries"] = v["entries"];
  rep["violations"] = v["violations"];
  rep["errors"] = errors_;
  rep["elapsed_s"] = std::chrono::duration<double>(steady::now() - t0_).count();
  // Lost sessions include those that did not end within the settling time.
  ok_ = lost == 0 && v["violations"].empty() && errors_.empty()
        && v.contains("lost");
  return rep;
}

/// The run's timeline: grants per second (every session's start, read from
/// the archive of the first oracle's data directory once the run is over)
/// and the queue depth sampled during it, with every SIGKILL and SIGSTOP as
/// a vertical mark.
void chaos_run::plot(const std::string& dir) {
  fs::create_directories(dir);
  child_process c{{"sessions", "--data-dir", data_dir(0), "--json"},
                  logs_ + "/plot-sessions.out"};
  auto end = steady::now() + 300s;
  while (!c.status() && steady::now() < end && !stop_requested)
    std::this_thread::sleep_for(20ms);
  std::map<int64_t, uint64_t> per_s;  // second since the start -> grants
  std::istringstream in{c.output()};
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_object())
      continue;
    auto started = j.value("started_at", int64_t{0});
    if (started > 0)
      ++per_s[(started - wall_t0_ms_) / 1000];
  }
  double last_t = std::chrono::duration<double>(steady::now() - t0_).count();
  {
    std::ofstream out{dir + "/chaos_grants.dat"};
    out << "# second_since_start grants_in_that_second\n";
    for (int64_t t = 0; t <= static_cast<int64_t>(last_t); ++t) {
      auto i = per_s.find(t);
      out << t << ' ' << (i == per_s.end() ? 0 : i->second) << '\n';
    }
  }
  {
    std::ofstream out{dir + "/chaos_queue.dat"};
    out << "# second_since_start sessions_queued\n";
    for (auto& [t, q] : queue_)
      out << t << ' ' << q << '\n';
  }
  {
    std::ofstream out{dir + "/chaos_faults.dat"};
    out << "# second_since_start fault\n";
    for (auto& m : marks_)
      out << m.t << " \"" << m.what << "\"\n";
  }
  {
    std::ofstream out{dir + "/chaos.gp"};
    out << "# The timeline of nodepool chaos --seed " << seed_
        << "; written by nodepool chaos --plot.\n"
           "set terminal pngcairo size 1100,700 noenhanced\n"
           "set output 'chaos.png'\n"
           "set multiplot layout 2,1 title 'nodepool chaos, seed "
        << seed_ << ": red SIGKILL, orange SIGSTOP'\n"
           "set grid\nset lmargin 12\nset xrange [0:" << last_t << "]\n";
    for (auto& m : marks_)
      out << "set arrow from " << m.t << ", graph 0 to " << m.t
          << ", graph 1 nohead lw 1 lc rgb '"
          << (m.what.rfind("SIGKILL", 0) == 0 ? "#d62728" : "#ff9f1c")
          << "' dt " << (m.what.find("oracle") != std::string::npos ? 1 : 3)
          << "\n";
    out << "set ylabel 'grants per second'\n"
           "plot 'chaos_grants.dat' using 1:2 with steps lw 2 lc rgb '#1f77b4' "
           "title 'sessions started (solid marks: oracle, dotted: miner)'\n"
           "set xlabel 'seconds since the start'\n"
           "set ylabel 'sessions queued'\n"
           "plot 'chaos_queue.dat' using 1:2 with lines lw 2 lc rgb '#2ca02c' "
           "title 'queue depth (sampled every 0.5 s while an oracle answers)'\n"
           "unset multiplot\n";
  }
  auto cmd = "cd " + shell_quote(dir) + " && gnuplot chaos.gp";
  if (std::system(cmd.c_str()) != 0)
    note("gnuplot failed (apt-get install gnuplot-nox); data and script are "
         "in " + dir);
  else
    note("timeline drawn in " + dir + "/chaos.png");
}

void print_table(std::FILE* f, const nlohmann::json& r, const chaos_options& o,
                 const std::string& dir) {
  std::fprintf(f, "nodepool chaos: seed %llu, %.1f s of faults, %zu oracle%s + "
                  "%zu miner processes x %zu nodes, %zu submitters\n",
               r["seed"].get<unsigned long long>(), o.duration_s, o.oracles,
               o.oracles > 1 ? "s (a replicated pool)" : "", o.miners, o.nodes,
               o.submitters);
  std::fprintf(f, "  %-24s %6s\n", "injected", "count");
  for (size_t k = 0; k < fault_kinds; ++k)
    if (k < base_kinds || o.partitions)
      std::fprintf(f, "  %-24s %6zu\n", fault_labels[k],
                   r["faults"][fault_keys[k]].get<size_t>());
  if (r.contains("leader_changes"))
    std::fprintf(f, "  of the oracle faults: leader kills %zu, leader stops %zu, "
                    "follower kills %zu, follower stops %zu; leadership seen to "
                    "change %zu times (last term seen %llu)\n",
                 r["faults"]["leader_kills"].get<size_t>(),
                 r["faults"]["leader_stops"].get<size_t>(),
                 r["faults"]["follower_kills"].get<size_t>(),
                 r["faults"]["follower_stops"].get<size_t>(),
                 r["leader_changes"].get<size_t>(),
                 r["last_term_seen"].get<unsigned long long>());
  std::fprintf(f, "  %-24s %6zu  (%zu planned on a process that was down: "
                  "skipped)\n",
               "total", r["kills"].get<size_t>() + r["stops"].get<size_t>()
                          + r["cuts"].get<size_t>(),
               r["faults"]["skipped"].get<size_t>());
  std::fprintf(f, "  restarts: oracle %zu, miners %zu; exits not caused by a "
                  "fault: oracle %zu, miners %zu\n",
               r["restarts"]["oracle"].get<size_t>(),
               r["restarts"]["miners"].get<size_t>(),
               r["unexpected_exits"]["oracle"].get<size_t>(),
               r["unexpected_exits"]["miners"].get<size_t>());
  if (r.contains("oracle_restart_ms"))
    std::fprintf(f, "  a restarted oracle listened after %lld ms on average, "
                    "%lld ms at most\n",
                 r["oracle_restart_ms"]["mean"].get<long long>(),
                 r["oracle_restart_ms"]["max"].get<long long>());
  auto& s = r["sessions"];
  std::fprintf(f, "sessions  accepted %zu  completed %zu  failed %zu  "
                  "LOST %zu  (refused %zu)\n",
               s["accepted"].get<size_t>(), s["completed"].get<size_t>(),
               s["failed"].get<size_t>(), s["lost"].get<size_t>(),
               s["refused"].get<size_t>());
  size_t shown = 0;
  for (auto& l : s["lost_ids"])
    if (++shown <= 20)
      std::fprintf(f, "  lost %s (%s)\n",
                   l["session"].get<std::string>().c_str(),
                   l["state"].get<std::string>().c_str());
  if (shown > 20)
    std::fprintf(f, "  ... and %zu more (all in the JSON report)\n",
                 shown - 20);
  if (r["history_entries"].is_null())
    std::fprintf(f, "history   not checked\n");
  else
    std::fprintf(f, o.oracles > 1 ? "history   %llu log entries checked on "
                                    "every member: %s\n"
                                  : "history   %llu log entries checked: %s\n",
                 r["history_entries"].get<unsigned long long>(),
                 r["violations"].empty() ? "I1-I5 hold after every entry"
                                         : "VIOLATIONS");
  for (auto& v : r["violations"])
    std::fprintf(f, "  VIOLATION %s\n", v.dump().c_str());
  for (auto& e : r["errors"])
    std::fprintf(f, "  ERROR %s\n", e.get<std::string>().c_str());
  std::fprintf(f, "elapsed   %.1f s (settling %.1f s%s)\n",
               r["elapsed_s"].get<double>(), r["settle_s"].get<double>(),
               r["settled"].get<bool>() ? "" : ", not settled");
  std::fprintf(f, "repeat    %s\n",
               repeat_command(o, r["seed"].get<uint64_t>()).c_str());
  if (!dir.empty())
    std::fprintf(f, "files     %s\n", dir.c_str());
}

int run_chaos(const chaos_options& o) {
  begin();
  catch_stop_signal(SIGHUP);
  // A closed stdout or stderr must not end the runner before it has ended
  // its children (they get the default back, see child_process).
  std::signal(SIGPIPE, SIG_IGN);
  uint64_t seed = o.seed;
  if (!(o.seed_flag && o.seed_flag->count() > 0))
    seed = mix64(static_cast<uint64_t>(
                   std::chrono::system_clock::now().time_since_epoch().count())
                 ^ static_cast<uint64_t>(getpid()))
           % 1000000000;
  if (o.partitions) {
    if (o.oracles < 3)
      throw std::runtime_error("--partitions needs --oracles 3 or 5 (a member "
                               "cut off from a single oracle is all of it)");
    if (auto why = netns_cluster::unavailable(); !why.empty())
      throw std::runtime_error(why);
  }
  bool own_dir = o.dir.empty();
  std::string dir = o.dir;
  if (own_dir) {
    dir = make_temp_dir("chaos");
  } else {
    std::error_code ec;
    if (fs::exists(dir, ec) && !fs::is_empty(dir, ec))
      throw std::runtime_error("--dir " + dir
                               + " is not empty (the run needs a fresh data "
                                 "directory)");
    fs::create_directories(dir, ec);
    if (ec)
      throw std::runtime_error("--dir " + dir + ": " + ec.message());
  }
  std::fprintf(stderr, "nodepool chaos: seed %llu\n",
               static_cast<unsigned long long>(seed));
  nlohmann::json rep;
  bool ok = false, interrupted = false;
  {
    chaos_run run{o, seed, dir};
    rep = run.run();
    ok = run.ok();
    interrupted = run.interrupted();
    if (!interrupted && !o.plot_dir.empty() && rep.is_object())
      run.plot(o.plot_dir);
    if (interrupted)
      run.stop_children();
  }  // every child process is ended here
  if (interrupted)
    return report_interrupted(
      "chaos", "child processes ended; files in " + dir
                 + " (nodepool check --data-dir " + dir
                 + (o.oracles > 1 ? "/mN" : "/db")
                 + " verifies what the oracle stored); a chaos run is not "
                   "resumed: " + repeat_command(o, seed)
                 + " repeats its schedule");
  bool keep = o.keep || !ok || !own_dir;
  if (!keep) {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  rep["dir"] = keep ? nlohmann::json(dir) : nlohmann::json(nullptr);
  print_table(o.json ? stderr : stdout, rep, o, keep ? dir : "");
  if (o.json)
    std::printf("%s\n", rep.dump().c_str());
  std::fflush(stdout);
  return ok ? 0 : 1;
}

} // namespace

void add_chaos(CLI::App& app) {
  auto o = std::make_shared<chaos_options>();
  auto* cmd = app.add_subcommand(
    "chaos", "real oracle and miner processes under seeded SIGKILL and "
             "SIGSTOP/SIGCONT; then check that nothing accepted was lost");
  cmd->add_option("--duration", o->duration_s,
                  "seconds of fault injection")
    ->required()
    ->check(CLI::Range(0.1, 86400.0));
  o->seed_flag = cmd->add_option(
    "--seed", o->seed,
    "seed of the fault schedule (default: from the clock, printed)");
  cmd->add_flag("--json", o->json,
                "print one JSON object as the last line (the table goes to "
                "stderr)");
  cmd->add_option("--oracles", o->oracles,
                  "1 (default), or 3 or 5: a replicated pool whose leaders "
                  "and followers are killed and stopped")
    ->check(CLI::IsMember({1, 3, 5}));
  cmd->add_flag("--partitions", o->partitions,
                "with --oracles 3 or 5: every member and the miners in a network "
                "namespace of its own (needs root and ip netns), and faults that "
                "cut a member's link or the miners' for a while");
  cmd->add_option("--miners", o->miners, "miner processes (default 3)")
    ->check(CLI::Range(1, 64));
  cmd->add_option("--nodes", o->nodes, "nodes per miner process (default 4)")
    ->check(CLI::Range(1, 1000));
  cmd->add_option("--submitters", o->submitters,
                  "concurrent streams of sessions (default 4)")
    ->check(CLI::Range(1, 16));
  cmd->add_option("--batch", o->batch,
                  "sessions per `nodepool submit` process (default 20)")
    ->check(CLI::Range(1, 100000));
  cmd->add_option("--interval-ms", o->interval_ms,
                  "pause between two submissions of a stream (default 20)")
    ->check(CLI::Range(int64_t{0}, int64_t{60000}));
  cmd->add_option("--fault-interval-ms", o->fault_interval_ms,
                  "mean time between two faults (default 1500)")
    ->check(CLI::Range(int64_t{10}, int64_t{3600000}));
  cmd->add_option("--max-stop-ms", o->max_stop_ms,
                  "longest SIGSTOP before its SIGCONT (default 3000)")
    ->check(CLI::Range(int64_t{100}, int64_t{600000}));
  cmd->add_option("--settle-timeout", o->settle_s,
                  "seconds the pool has after the faults to end every "
                  "accepted session and, a cluster, for every member's "
                  "archive to hold them (default 120)")
    ->check(CLI::Range(1.0, 86400.0));
  cmd->add_option("--plot", o->plot_dir,
                  "draw the run's timeline into this directory: grants per "
                  "second and queue depth over time, kills and stops marked "
                  "(data files, gnuplot script, chaos.png)");
  cmd->add_option("--dir", o->dir,
                  "directory for the data and the process logs (must be "
                  "empty; default: a new one under $TMPDIR, removed after a "
                  "clean run)");
  cmd->add_flag("--keep", o->keep, "keep the directory after a clean run");
  cmd->callback([o] {
    if (int rc = run_chaos(*o); rc != 0)
      throw exit_code{rc};
  });
}

} // namespace nodepool::cli
