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
#include "cli/chaos_process.hpp"
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

/// Sessions started per second from `since` (wall ms) to `until`, as the
/// archive of the member at `addr` holds them (paged, 1000 at a time).
std::vector<uint64_t> grants_per_second(caf::actor_system& sys,
                                        const std::string& addr, int64_t since,
                                        int64_t until) {
  std::vector<uint64_t> per_s(static_cast<size_t>((until - since) / 1000 + 1), 0);
  auto gw = reach(sys, addr);
  if (!gw)
    return per_s;
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
          for (auto& s : a.sessions()) {
            auto t = s.started_at();
            if (t >= since && t <= until)
              ++per_s[static_cast<size_t>((t - since) / 1000)];
          }
          auto& last = a.sessions(a.sessions_size() - 1);
          q.set_since(last.ended_at());
          q.set_after_id(last.id());
          more = a.more();
        },
        [&](caf::error&) {});
  }
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

nlohmann::json failover(const options& o) {
  temp_tree tree{"failover"};  // outlives the processes that use it
  auto& dir = tree.path;
  std::string addr[4];
  auto members = write_loopback_cluster(
    dir + "/cluster.toml", 3,
    "[raft]\nelection_timeout_ms = " + std::to_string(o.failover_election_ms)
      + "\nheartbeat_timeout_ms = "
      + std::to_string(std::max<unsigned>(1, o.failover_election_ms / 10)) + "\n");
  for (int i = 1; i <= 3; ++i)
    addr[i] = members[i - 1].address;
  auto list = addr[1] + "," + addr[2] + "," + addr[3];
  std::unique_ptr<child_process> oracle[4];
  int runs = 0;
  auto start = [&](int i) {
    std::vector<std::string> args{"--log-level", "error", "oracle", "--cluster",
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
        throw std::runtime_error("failover: oracle " + std::to_string(i)
                                 + " did not start: " + oracle[i]->errors());
      check_stop();
      std::this_thread::sleep_for(20ms);
    }
  };
  for (int i = 1; i <= 3; ++i)
    start(i);
  child_process miner{{"--log-level", "error", "miner", "--oracle", list,
                       "--nodes", "32", "--id-prefix", "fo",
                       "--connect-timeout", "120"},
                      dir + "/miner"};
  child_process submit{{"--log-level", "error", "submit", "--oracle", list,
                        "--sessions", "100000000", "--prefix", "fo",
                        "--interval-ms", "5", "--max-tasks", "1",
                        "--connect-timeout", "120"},
                       dir + "/submit"};
  actor_config cfg;
  caf::actor_system sys{cfg};
  auto leader = [&] {
    for (int i = 1; i <= 3; ++i) {
      if (oracle[i] && oracle[i]->running() && leads(sys, addr[i]))
        return i;
    }
    return 0;
  };
  std::vector<double> grant_ms, elect_ms;
  unsigned missed = 0;
  auto t_start = clock::now();
  auto wall_start = wall_ms();
  nlohmann::json timeline = nlohmann::json::array();  // one entry per kill
  // Load first: nodes admitted and sessions flowing.
  while (first_start_since(sys, addr[leader() ? leader() : 1], 0) == 0) {
    check_stop();
    if (seconds_since(t_start) > 60)
      throw std::runtime_error("failover: no session was served within 60 s");
    std::this_thread::sleep_for(100ms);
  }
  auto requeued_before = requeued(sys, addr[leader() ? leader() : 1]);
  for (unsigned k = 0; k < o.failover_kills; ++k) {
    check_stop();
    std::this_thread::sleep_for(1s);  // a second of load under this leader
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
    if (granted == 0)
      ++missed;
    else
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
  submit.terminate(5s);
  miner.terminate(5s);
  for (int i = 1; i <= 3; ++i)
    if (oracle[i])
      oracle[i]->terminate(5s);
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

} // namespace nodepool::cli::bench
