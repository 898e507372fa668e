// `nodepool bench --only failover`: three oracle processes on loopback as
// one replicated pool, a miner process following the leader and a submitter
// process retrying at the leader. The leader is killed with SIGKILL again
// and again under that load; each time, the time from the kill to the first
// grant by the new leader is read off the pool itself: the earliest
// `started_at` (the leader's apply time) of a session started more than
// 5 ms after the kill, among the live sessions and the archive. The killed member is
// started again (it rejoins as a follower) before the next kill.
#include <algorithm>
#include <arpa/inet.h>
#include <csignal>
#include <optional>
#include <fstream>
#include <netinet/in.h>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>

#include <caf/all.hpp>
#include <caf/io/all.hpp>
#include <nlohmann/json.hpp>

#include "actors/config.hpp"
#include "actors/node.hpp"
#include "cli/bench_common.hpp"
#include "cli/os.hpp"
#include "cli/common.hpp"
#include "cluster_config.hpp"

namespace nodepool::cli::bench {

namespace {

using namespace std::chrono_literals;
using nodepool::cli::child_process;

int64_t wall_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
           std::chrono::system_clock::now().time_since_epoch())
    .count();
}

/// The gateway of the member at `addr`, if it answers.
std::optional<caf::actor> reach(caf::actor_system& sys,
                                const std::string& addr) {
  auto [host, port] = parse_host_port(addr);
  auto gw = connect_oracle(sys, host, port, 300ms);
  if (!gw)
    return std::nullopt;
  return *gw;
}

/// Whether the member at `addr` is the cluster's ready leader.
bool leads(caf::actor_system& sys, const std::string& addr) {
  auto gw = reach(sys, addr);
  return gw && is_leader(sys, *gw, 500ms);
}

/// The earliest start at or after `since` of a session on the member at
/// `addr` (live or archived); 0 if none yet.
int64_t first_start_since(caf::actor_system& sys, const std::string& addr,
                          int64_t since) {
  auto gw = reach(sys, addr);
  if (!gw)
    return 0;
  int64_t best = 0;
  auto consider = [&](const pb::SessionRecord& s) {
    if (s.started_at() >= since && (best == 0 || s.started_at() < best))
      best = s.started_at();
  };
  caf::scoped_actor self{sys};
  self->request(*gw, 1s, state_atom::value)
    .receive(
      [&](const std::string& bytes) {
        pb::Snapshot snap;
        if (snap.ParseFromString(bytes))
          for (auto& s : snap.sessions())
            consider(s);
      },
      [&](caf::error&) {});
  pb::ArchiveQuery q;
  q.set_since(since);
  q.set_limit(1000);
  self->request(*gw, 1s, archive_atom::value, q.SerializeAsString())
    .receive(
      [&](const std::string& bytes) {
        pb::ArchiveAnswer a;
        if (a.ParseFromString(bytes))
          for (auto& s : a.sessions())
            consider(s);
      },
      [&](caf::error&) {});
  return best;
}

/// Every session start from `since` (wall ms) to `until`, sorted, as the
/// archive of the member at `addr` holds them (paged, 1000 at a time).
std::vector<int64_t> start_times(caf::actor_system& sys, const std::string& addr,
                                 int64_t since, int64_t until) {
  std::vector<int64_t> out;
  auto gw = reach(sys, addr);
  if (!gw)
    return out;
  caf::scoped_actor self{sys};
  pb::ArchiveQuery q;
  q.set_since(since);
  q.set_limit(1000);
  for (bool more = true; more && !stop_requested;) {
    more = false;
    self->request(*gw, 5s, archive_atom::value, q.SerializeAsString())
      .receive(
        [&](const std::string& bytes) {
          pb::ArchiveAnswer a;
          if (!a.ParseFromString(bytes) || a.sessions_size() == 0)
            return;
          for (auto& s : a.sessions())
            if (s.started_at() >= since && s.started_at() <= until)
              out.push_back(s.started_at());
          auto& last = a.sessions(a.sessions_size() - 1);
          q.set_since(last.ended_at());
          q.set_after_id(last.id());
          more = a.more();
        },
        [&](caf::error&) {});
  }
  std::sort(out.begin(), out.end());
  return out;
}

/// Sessions started per second from `since` (wall ms) to `until`.
std::vector<uint64_t> grants_per_second(caf::actor_system& sys,
                                        const std::string& addr, int64_t since,
                                        int64_t until) {
  std::vector<uint64_t> per_s(static_cast<size_t>((until - since) / 1000 + 1), 0);
  for (auto t : start_times(sys, addr, since, until))
    ++per_s[static_cast<size_t>((t - since) / 1000)];
  return per_s;
}

/// How many times active sessions went back to the queue, as the member at
/// `addr` has committed; nullopt if it does not answer.
std::optional<uint64_t> requeued(caf::actor_system& sys, const std::string& addr) {
  auto gw = reach(sys, addr);
  if (!gw)
    return std::nullopt;
  std::optional<uint64_t> n;
  caf::scoped_actor self{sys};
  self->request(*gw, 2s, state_atom::value)
    .receive(
      [&](const std::string& bytes) {
        pb::Snapshot snap;
        if (snap.ParseFromString(bytes))
          n = snap.sessions_requeued();
      },
      [&](caf::error&) {});
  return n;
}

} // namespace

/// Three oracle processes on loopback as one replicated pool (cluster file
/// `[raft]` from `raft_extra`), a miner process with 32 nodes and a
/// submitter process at 200 sessions/s, all following the leader.
struct loaded_cluster {
  const options& o;
  const char* name;
  temp_tree tree;  // outlives the processes that use it
  std::string addr[4];
  std::string list;
  std::unique_ptr<child_process> oracle[4];
  std::unique_ptr<child_process> miner, submit;
  int runs = 0;
  std::string level = "error";  // of the processes' logs
  actor_config cfg;
  caf::actor_system sys{cfg};

  loaded_cluster(const options& opts, const char* section,
                 const std::string& raft_extra)
    : o(opts), name(section), tree{section} {
    auto& dir = tree.path;
    // NODEPOOL_BENCH_KEEP=1: the processes log at info and their directory
    // stays, to look into a kill after which nothing was granted.
    if (std::getenv("NODEPOOL_BENCH_KEEP")) {
      tree.keep = true;
      level = "info";
      note("%s: keeping %s", section, dir.c_str());
    }
    auto members = write_loopback_cluster(
      dir + "/cluster.toml", 3,
      "[raft]\nelection_timeout_ms = " + std::to_string(o.failover_election_ms)
        + "\nheartbeat_timeout_ms = "
        + std::to_string(std::max<unsigned>(1, o.failover_election_ms / 10))
        + "\n" + raft_extra);
    for (int i = 1; i <= 3; ++i)
      addr[i] = members[i - 1].address;
    list = addr[1] + "," + addr[2] + "," + addr[3];
    for (int i = 1; i <= 3; ++i)
      start(i);
    miner = std::make_unique<child_process>(
      std::vector<std::string>{"--log-level", level, "miner", "--oracle",
                               list, "--nodes", "32", "--id-prefix", "fo",
                               "--connect-timeout", "120"},
      dir + "/miner");
    submit = std::make_unique<child_process>(
      std::vector<std::string>{"--log-level", level, "submit", "--oracle",
                               list, "--sessions", "100000000", "--prefix",
                               "fo", "--interval-ms", "5", "--max-tasks", "1",
                               "--connect-timeout", "120"},
      dir + "/submit");
  }

  ~loaded_cluster() {
    end_children({submit.get(), miner.get(), oracle[1].get(), oracle[2].get(),
                  oracle[3].get()},
                 5s);
  }

  void start(int i) {
    auto& dir = tree.path;
    std::vector<std::string> args{"--log-level", level, "oracle", "--cluster",
                                  dir + "/cluster.toml", "--id",
                                  std::to_string(i), "--data-dir",
                                  dir + "/m" + std::to_string(i)};
    for (auto& [k, v] : o.pool_flags) {  // the bench's pool flags
      auto flag = "--" + k;
      std::replace(flag.begin(), flag.end(), '_', '-');
      args.push_back(flag);
      args.push_back(v);
    }
    oracle[i] = std::make_unique<child_process>(
      args, dir + "/oracle" + std::to_string(i) + "." + std::to_string(++runs));
    auto t0 = clock::now();
    while (oracle[i]->output().find("listening on") == std::string::npos) {
      if (!oracle[i]->running() || seconds_since(t0) > 30)
        throw std::runtime_error(std::string{name} + ": oracle "
                                 + std::to_string(i) + " did not start: "
                                 + oracle[i]->errors());
      check_stop();
      std::this_thread::sleep_for(20ms);
    }
  }

  int leader() {
    for (int i = 1; i <= 3; ++i)
      if (oracle[i] && oracle[i]->running() && leads(sys, addr[i]))
        return i;
    return 0;
  }

  /// Waits until sessions are being served (nodes admitted, load flowing).
  void wait_for_load() {
    auto t0 = clock::now();
    while (first_start_since(sys, addr[leader() ? leader() : 1], 0) == 0) {
      check_stop();
      if (seconds_since(t0) > 60)
        throw std::runtime_error(std::string{name}
                                 + ": no session was served within 60 s");
      std::this_thread::sleep_for(100ms);
    }
  }
};

nlohmann::json failover(const options& o) {
  loaded_cluster c{o, "failover", ""};
  auto& sys = c.sys;
  auto& addr = c.addr;
  auto& oracle = c.oracle;
  auto leader = [&] { return c.leader(); };
  auto start = [&](int i) { c.start(i); };
  std::vector<double> grant_ms, elect_ms;
  unsigned missed = 0;
  auto wall_start = wall_ms();
  nlohmann::json timeline = nlohmann::json::array();  // one entry per kill
  c.wait_for_load();
  auto requeued_before = requeued(sys, addr[leader() ? leader() : 1]);
  for (unsigned k = 0; k < o.failover_kills; ++k) {
    check_stop();
    sleep_unless_stopped(1.0);  // a second of load under this leader
    int l = 0;
    for (int tries = 0; tries < 300 && l == 0; ++tries) {
      l = leader();
      if (l == 0)
        std::this_thread::sleep_for(20ms);
    }
    if (l == 0)
      throw std::runtime_error("failover: no leader before kill "
                               + std::to_string(k + 1));
    auto t_kill = wall_ms();
    oracle[l]->signal(SIGKILL);
    oracle[l]->wait(5s);
    int64_t elected = 0, granted = 0;
    auto t0 = clock::now();
    while (granted == 0 && seconds_since(t0) < 30) {
      check_stop();
      for (int i = 1; i <= 3 && granted == 0; ++i) {
        if (i == l)
          continue;
        if (leads(sys, addr[i])) {
          if (elected == 0)
            elected = wall_ms();
          // A session the old leader started in the very millisecond of
          // the kill (applied and committed as the signal landed) is not
          // the new leader's: 5 ms of margin leave it out.
          granted = first_start_since(sys, addr[i], t_kill + 5);
        }
      }
      if (granted == 0)
        std::this_thread::sleep_for(5ms);
    }
    if (granted == 0) {
      ++missed;
      // What each process said, for the next person to read: a miss is
      // rare and has not been reproduced at will.
      auto tail = [](const std::string& s) {
        return s.size() > 1500 ? "..." + s.substr(s.size() - 1500) : s;
      };
      int now_leading = leader();
      note("failover: kill %u: no grant within 30 s (member %d leads now); "
           "elected after %.0f ms", k + 1, now_leading,
           elected ? static_cast<double>(elected - t_kill) : -1.0);
      note("failover: miner said: %s", tail(c.miner->errors()).c_str());
      note("failover: submit said: %s", tail(c.submit->errors()).c_str());
      for (int i = 1; i <= 3; ++i)
        if (i != l && oracle[i])
          note("failover: oracle %d said: %s", i, tail(oracle[i]->errors()).c_str());
    } else
      grant_ms.push_back(static_cast<double>(granted - t_kill));
    if (elected > 0)
      elect_ms.push_back(static_cast<double>(elected - t_kill));
    auto rel = [&](int64_t t) {
      return t > 0 ? nlohmann::json((t - wall_start) / 1000.0) : nlohmann::json();
    };
    timeline.push_back({{"member", l}, {"kill_s", rel(t_kill)},
                        {"leader_seen_s", rel(elected)},
                        {"first_grant_s", rel(granted)}});
    note("failover: kill %u of %u (member %d): first grant after %.0f ms",
         k + 1, o.failover_kills, l,
         granted ? static_cast<double>(granted - t_kill) : -1.0);
    start(l);  // it rejoins as a follower
  }
  std::optional<uint64_t> requeued_after;
  for (int tries = 0; tries < 100 && !requeued_after; ++tries) {
    if (int l = leader())
      requeued_after = requeued(sys, addr[l]);
    else
      std::this_thread::sleep_for(50ms);
  }
  nlohmann::json per_s;
  if (!o.plot_dir.empty()) {
    // For the timeline plot: every session's start, from the leader's
    // archive, before the processes go.
    for (int tries = 0; tries < 100 && per_s.is_null(); ++tries) {
      if (int l = leader())
        per_s = grants_per_second(sys, addr[l], wall_start, wall_ms());
      else
        std::this_thread::sleep_for(50ms);
    }
  }
  std::sort(grant_ms.begin(), grant_ms.end());
  nlohmann::json j;
  j["kills"] = o.failover_kills;
  j["election_timeout_ms"] = o.failover_election_ms;
  j["no_grant_within_30s"] = missed;
  j["kill_to_first_grant_ms"] = grant_ms;
  if (!grant_ms.empty()) {
    j["median_ms"] = quantile(grant_ms, 0.5);
    j["p90_ms"] = quantile(grant_ms, 0.9);
    j["max_ms"] = grant_ms.back();
  }
  j["kill_to_leader_seen_median_ms"] = median(elect_ms);
  j["timeline"] = timeline;
  if (!per_s.is_null())
    j["grants_per_s"] = per_s;
  // Active sessions whose nodes did not come back to the new leader in
  // time go back to the queue (TakeOver); most continue where they were.
  if (requeued_before && requeued_after)
    j["sessions_requeued"] = *requeued_after - *requeued_before;
  return j;
}

/// Scheduled rotation under load: the cluster file rotates leadership
/// every `rotation_interval_ms`; each hand-over seen is timed by the pause
/// in grants around it: the longest gap between two consecutive session
/// starts (from the archive, after the run) within half an interval of the
/// moment the new leader was seen, against the same measure half an
/// interval earlier, away from any change (the load's own gaps).
nlohmann::json rotation(const options& o) {
  auto interval = std::max<unsigned>(o.rotation_interval_ms,
                                     2 * o.failover_election_ms);
  loaded_cluster c{o, "rotation",
                   "rotation_interval_ms = " + std::to_string(interval) + "\n"};
  c.wait_for_load();
  auto wall_start = wall_ms();
  std::vector<int64_t> changes;  // wall ms the new leader was first seen
  int last = c.leader();
  auto deadline = clock::now() + std::chrono::milliseconds(
                                   (o.rotations + 2) * 2 * interval + 10000);
  while (changes.size() < o.rotations && clock::now() < deadline) {
    check_stop();
    int l = c.leader();
    if (l != 0 && l != last) {
      if (last != 0)
        changes.push_back(wall_ms());
      note("rotation: member %d leads (change %zu of %u)", l, changes.size(),
           o.rotations);
      last = l;
    }
    std::this_thread::sleep_for(10ms);
  }
  sleep_unless_stopped(interval / 2000.0);
  std::vector<int64_t> starts;
  for (int tries = 0; tries < 100 && starts.empty(); ++tries) {
    if (int l = c.leader())
      starts = start_times(c.sys, c.addr[l], wall_start, wall_ms());
    else
      std::this_thread::sleep_for(50ms);
  }
  auto max_gap = [&](int64_t from, int64_t to) {
    int64_t gap = 0;
    auto i = std::lower_bound(starts.begin(), starts.end(), from);
    for (; i != starts.end() && i + 1 != starts.end() && *(i + 1) <= to; ++i)
      gap = std::max(gap, *(i + 1) - *i);
    return static_cast<double>(gap);
  };
  std::vector<double> pause, baseline;
  int64_t half = interval / 2;
  for (auto t : changes) {
    pause.push_back(max_gap(t - half, t + half));
    baseline.push_back(max_gap(t - 2 * half + 1, t - half));
  }
  nlohmann::json j;
  j["rotation_interval_ms"] = interval;
  j["rotations"] = changes.size();
  j["sessions_started"] = starts.size();
  j["pause_ms"] = pause;
  j["baseline_gap_ms"] = baseline;
  if (!pause.empty()) {
    j["median_pause_ms"] = median(pause);
    j["max_pause_ms"] = *std::max_element(pause.begin(), pause.end());
    j["median_baseline_gap_ms"] = median(baseline);
  }
  note("rotation: %zu hand-overs, grants paused a median %.0f ms (the "
       "load's own longest gap: %.0f ms)",
       changes.size(), pause.empty() ? -1.0 : median(pause),
       baseline.empty() ? -1.0 : median(baseline));
  return j;
}

} // namespace nodepool::cli::bench
