// The nodepool sections of `nodepool bench`: the state machine alone, the
// durable supervisor (saturation and grant latency), pool size (scale) and
// node actors in a separate miner process (remote).
//
// One cycle is what a node goes through between two sessions:
//   SubmitSession -> the node is reserved (the grant)
//   EndSession    -> it is released and a re-validation test is requested
//   TestResult    -> it passed and is back in the pool.
#include <algorithm>
#include <array>
#include <cstdlib>
#include <limits>
#include <arpa/inet.h>
#include <filesystem>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <atomic>
#include <caf/all.hpp>
#include <caf/io/all.hpp>
#include <cinttypes>
#include <csignal>
#include <fstream>
#include <malloc.h>
#include <memory>
#include <mutex>
#include <random>
#include <sys/resource.h>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "actors/config.hpp"
#include "actors/local.hpp"
#include "actors/oracle.hpp"
#include "actors/supervisor.hpp"
#include "actors/tickets.hpp"
#include "allocator.hpp"
#include "raft/raft_log.hpp"
#include "log.hpp"
#include "member_archive.hpp"
#include "replica.hpp"
#include "cli/bench_common.hpp"
#include "cli/common.hpp"
#include "cluster_config.hpp"
#include "recovery.hpp"
#include "random.hpp"

namespace nodepool::cli::bench {

namespace {

using admit_atom = caf::atom_constant<caf::atom("badmit")>;
using go_atom = caf::atom_constant<caf::atom("bgo")>;
using halt_atom = caf::atom_constant<caf::atom("bhalt")>;
using arrive_atom = caf::atom_constant<caf::atom("barrive")>;
using inflight_atom = caf::atom_constant<caf::atom("binflight")>;

const char* model = "llama-3-8b";

std::string node_name(const std::string& prefix, uint64_t i) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%s-%06" PRIu64, prefix.c_str(), i);
  return buf;
}

pb::Command register_cmd(const std::string& id) {
  pb::Command c;
  auto* r = c.mutable_register_();
  r->set_node_id(id);
  r->add_models(model);
  return c;
}

pb::Command submit_cmd(const std::string& sid) {
  pb::Command c;
  auto* s = c.mutable_submit_session();
  s->set_session_id(sid);
  s->set_model(model);
  s->set_min_nodes(1);
  s->set_max_nodes(1);
  s->set_redundancy(1);
  s->set_max_tasks(1);
  s->set_client("bench");
  return c;
}

pb::Command end_cmd(const std::string& sid) {
  pb::Command c;
  c.mutable_end_session()->set_session_id(sid);
  return c;
}

pb::Command pass_cmd(const std::string& node, uint64_t test_id) {
  pb::Command c;
  auto* t = c.mutable_test_result();
  t->set_node_id(node);
  t->set_test_id(test_id);
  t->set_correct(5);
  t->set_total(5);
  return c;
}

/// What the driver tells the thread that measures. Counters only grow.
struct sink {
  std::atomic<uint64_t> admitted{0};
  std::atomic<uint64_t> cycles{0};
  std::atomic<uint64_t> granted{0};
  std::atomic<uint64_t> refused{0};
  std::atomic<uint64_t> shed{0};  // submissions refused as overloaded
  std::atomic<uint64_t> submitted{0};
  std::atomic<bool> record{false};
  std::atomic<uint64_t> driver_mailbox{0};  // at its last arrival or events
  // The driver's commands go as CAF requests (answers found in O(n) of
  // those in flight), not with tickets (O(1)): to compare the two.
  std::atomic<bool> driver_requests{false};
  std::mutex mx;
  std::vector<double> latencies_ms;  // grants while `record`
  /// Each of those grants in three parts (ms), where the supervisor's apply
  /// of the submission was seen: the arrival's wait to reach the driver
  /// (the sender's tick, the hop to the driver and its turn on a worker);
  /// the driver's submission until the supervisor applied it (the hop, the
  /// supervisor's turn, the commands before it); and from the apply until
  /// the driver heard of the grant (the rest of the batch, the group
  /// commit, the event's hop back).
  std::vector<std::array<double, 3>> parts_ms;
  /// When the supervisor applied submission "s<N>", at [N % size], written
  /// on the supervisor's thread while `record` (the observer) and read by
  /// the driver when the grant comes. The sessions in flight are far fewer
  /// than its size.
  std::vector<std::atomic<int64_t>> applied_ns =
    std::vector<std::atomic<int64_t>>(size_t{1} << 16);

  std::vector<double> take_latencies() {
    std::lock_guard<std::mutex> g{mx};
    std::vector<double> out;
    out.swap(latencies_ms);
    return out;
  }

  std::vector<std::array<double, 3>> take_parts() {
    std::lock_guard<std::mutex> g{mx};
    std::vector<std::array<double, 3>> out;
    out.swap(parts_ms);
    return out;
  }

  std::atomic<int64_t>& applied(const std::string& session_id) {
    auto n = std::strtoull(session_id.c_str() + 1, nullptr, 10);
    return applied_ns[n & (applied_ns.size() - 1)];
  }
};

// ------------------------------------------------------------------ driver
//
// Plays every client of the durable pool and the validator: subscribed to
// the supervisor, it ends a session as soon as it is granted a node and
// passes each re-validation as soon as it is requested. Every step waits for
// the previous one to be durable (events are published after the group
// commit). Closed loop: `clients` sessions in flight, a new one for each
// cycle completed. Open loop: a session for each arrival_atom, whatever is
// in flight.

/// A session waiting for its grant: when it was due (its scheduled arrival,
/// or when the closed loop sent it) and when the driver sent it.
struct waiting_session {
  int64_t due_ns = 0;
  int64_t sent_ns = 0;
};

struct driver_state {
  caf::actor sup;
  std::shared_ptr<sink> out;
  std::unordered_map<std::string, waiting_session> waiting;
  std::unordered_set<std::string> revalidating;
  command_tickets tickets;  // its commands to the supervisor, in flight
  uint64_t next = 0;
  bool closed = false;
  static inline const char* name = "bench_driver";
};

using driver_ptr = caf::stateful_actor<driver_state>*;

/// Sends a command to the supervisor (as built: the driver plays the
/// oracle's own actors); a refusal is counted, and `refused` (if any) runs
/// on the driver when it comes.
void send_cmd(driver_ptr self, pb::Command c,
              std::function<void()> refused = {}) {
  auto out = self->state.out;
  auto cmd = std::make_shared<pb::Command>(std::move(c));
  if (out->driver_requests) {
    self->request(self->state.sup, caf::infinite, cmd_atom::value, cmd)
      .then([](accepted_atom) {},
            [out, refused](caf::error&) {
              ++out->refused;
              if (refused)
                refused();
            });
    return;
  }
  self->state.tickets.send(self, self->state.sup, cmd,
                           [out, refused](pb::RefusalCode code,
                                          const std::string&) {
                             if (code == pb::REFUSAL_NONE)
                               return;
                             ++out->refused;
                             if (refused)
                               refused();
                           });
}

void submit(driver_ptr self, int64_t t0) {
  auto sid = "s" + std::to_string(self->state.next++);
  self->state.waiting.emplace(sid, waiting_session{t0, now_ns()});
  ++self->state.out->submitted;
  // A submission shed under overload waits for nothing more.
  send_cmd(self, submit_cmd(sid), [self, sid] {
    if (self->state.waiting.erase(sid) > 0)
      ++self->state.out->shed;
  });
}

caf::behavior driver(driver_ptr self, caf::actor sup, std::shared_ptr<sink> out) {
  self->state.sup = sup;
  self->state.out = out;
  return {
    [=](admit_atom, const std::string& prefix, uint64_t first, uint64_t count) {
      // A registration refused because no term was led yet (a member's
      // supervisor just after an election) is sent again shortly: the
      // constructor waits for every node.
      for (uint64_t i = first; i < first + count; ++i)
        self->state.tickets.send(
          self, self->state.sup,
          std::make_shared<pb::Command>(register_cmd(node_name(prefix, i))),
          [=](pb::RefusalCode code, const std::string&) {
            if (code == pb::REFUSAL_NONE)
              return;
            ++self->state.out->refused;
            if (code == pb::REFUSAL_NOT_LEADER)
              self->delayed_send(self, std::chrono::milliseconds(10),
                                 admit_atom::value, prefix, i, uint64_t{1});
          });
    },
    [=](go_atom, uint32_t clients) {
      self->state.closed = true;
      for (uint32_t i = 0; i < clients; ++i)
        submit(self, now_ns());
    },
    [=](halt_atom) { self->state.closed = false; },
    [=](arrive_atom, const std::vector<int64_t>& t0s) {
      self->state.out->driver_mailbox.store(self->mailbox().size(),
                                            std::memory_order_relaxed);
      for (auto t0 : t0s)
        submit(self, t0);
    },
    [=](answer_atom, uint64_t ticket, pb::RefusalCode code,
        const std::string& detail) {
      self->state.tickets.answered(self, self->state.sup, ticket, code, detail);
    },
    [=](inflight_atom) -> uint64_t {
      return self->state.waiting.size() + self->state.revalidating.size();
    },
    [=](events_atom, const event_batch& batch) {
      auto& st = self->state;
      st.out->driver_mailbox.store(self->mailbox().size(),
                                   std::memory_order_relaxed);
      if (!batch)
        return;
      auto t = now_ns();
      for (auto& e : batch->events()) {
        switch (e.kind_case()) {
          case pb::Event::kNodeReserved: {
            auto i = st.waiting.find(e.node_reserved().session_id());
            if (i == st.waiting.end())
              break;
            ++st.out->granted;
            if (st.out->record) {
              auto& w = i->second;
              auto applied = st.out->applied(i->first).exchange(0);
              std::lock_guard<std::mutex> g{st.out->mx};
              st.out->latencies_ms.push_back((t - w.due_ns) / 1e6);
              if (applied >= w.sent_ns && applied <= t)
                st.out->parts_ms.push_back({(w.sent_ns - w.due_ns) / 1e6,
                                            (applied - w.sent_ns) / 1e6,
                                            (t - applied) / 1e6});
            }
            send_cmd(self, end_cmd(i->first));
            st.waiting.erase(i);
            break;
          }
          case pb::Event::kTestRequested: {
            auto& r = e.test_requested();
            if (r.kind() == pb::REVALIDATION)
              st.revalidating.insert(r.node_id());
            send_cmd(self, pass_cmd(r.node_id(), r.test_id()));
            break;
          }
          case pb::Event::kTestFinished: {
            auto& f = e.test_finished();
            if (!f.passed())
              break;
            if (st.revalidating.erase(f.node_id())) {
              ++st.out->cycles;
              if (st.closed)
                submit(self, t);
            } else {
              ++st.out->admitted;
            }
            break;
          }
          default:
            break;
        }
      }
    },
  };
}

/// A supervisor over a fresh RocksDB store (synced group commits) and its
/// driver, with `nodes` nodes admitted.
struct durable_pool {
  size_t copy_ahead_per_commit = 0;  // the supervisor's, as configured
  size_t moderate_polls = 0;  // CAF's work-stealing.moderate-poll-attempts, as configured
  std::string dir;
  actor_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  caf::actor sup;
  caf::actor drv;
  std::shared_ptr<sink> out = std::make_shared<sink>();
  std::shared_ptr<supervisor_gauges> gauges = std::make_shared<supervisor_gauges>();
  uint64_t rss_before = 0;
  uint64_t rss_after = 0;
  uint64_t rss_untrimmed = 0;  // rss_after before malloc_trim
  double admit_s = 0;

  unsigned snapshot_threshold_ = 0;  // raft's; 0: raft_options' default

  /// A member of the replicated variant: its archive, replica and log.
  /// Declared so that the log (whose thread writes to the others) goes
  /// first.
  struct member {
    std::shared_ptr<store> archive;
    std::shared_ptr<replica> rep;
    std::shared_ptr<replica_machine> machine;
    std::shared_ptr<role_relay> roles;
    std::shared_ptr<replicated_log> log;
  };
  std::vector<member> members;

  /// `replicas` > 0: the pool is replicated over that many members of a
  /// Raft group in this process (libraft over loopback TCP, each on its own
  /// directory and fsync), and the supervisor is the leader's.
  /// `copy_ahead` >= 0: the supervisor's copy_ahead_per_commit.
  /// `moderate_polls` >= 0: CAF's work-stealing.moderate-poll-attempts
  /// instead of actor_config's.
  durable_pool(const std::string& tag, uint32_t nodes, const params& p,
               unsigned replicas = 0, unsigned snapshot_threshold = 0,
               long copy_ahead = -1, long moderate_polls = -1)
    : cfg(false), snapshot_threshold_(snapshot_threshold) {
    dir = make_temp_dir("bench-" + tag);
    if (moderate_polls >= 0)
      cfg.set("work-stealing.moderate-poll-attempts",
              static_cast<size_t>(moderate_polls));
    this->moderate_polls = caf::get_or(cfg, "work-stealing.moderate-poll-attempts",
                                       caf::defaults::work_stealing::moderate_poll_attempts);
    sys = std::make_unique<caf::actor_system>(cfg);
    supervisor_config sc;
    sc.pool = p;
    sc.sync = true;
    if (copy_ahead >= 0)
      sc.copy_ahead_per_commit = static_cast<size_t>(copy_ahead);
    copy_ahead_per_commit = sc.copy_ahead_per_commit;
    if (replicas == 0) {
      sc.storage = open_store(dir);
    } else {
      start_group(replicas);
      int l = -1;
      auto t0 = clock::now();
      while (l < 0 && !stop_requested && seconds_since(t0) < 30) {
        for (size_t i = 0; i < members.size() && l < 0; ++i)
          if (members[i].log->status().ready)
            l = static_cast<int>(i);
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      if (l < 0 && stop_requested)
        return;  // the caller checks; the destructor cleans up
      if (l < 0)
        throw std::runtime_error(tag + ": no leader elected within 30 s");
      sc.storage = members[l].archive;
      sc.cluster_log = members[l].log;
      sc.replica = members[l].machine;
      sc.roles = members[l].roles;
    }
    sc.gauges = gauges;
    // When each measured submission was applied (single oracle: the
    // observer runs on the supervisor's thread after each command that
    // changed the pool). An atomic store, only while latencies are taken.
    sc.observer = [out = out](const pool_state&, const pb::Command& c,
                              const apply_result&) {
      if (c.has_submit_session() && out->record.load(std::memory_order_relaxed))
        out->applied(c.submit_session().session_id())
          .store(now_ns(), std::memory_order_relaxed);
    };
    sup = spawn_supervisor(*sys, sc);
    drv = sys->spawn(driver, sup, out);
    caf::anon_send(sup, subscribe_atom::value, drv);
    wait_inflight();  // the supervisor is up
    // A member's supervisor takes commands once it hears that its member
    // leads, a little after the log says so: until then it refuses them
    // (not_leader), and a node refused so would never be admitted.
    for (auto t1 = clock::now(); !stats().value("leading", false);) {
      if (stop_requested)
        return;
      if (seconds_since(t1) > 30)
        throw std::runtime_error(tag + ": the supervisor did not lead within 30 s");
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    // Resident memory is read with the allocator's free memory handed back
    // (malloc_trim), so that it counts what the pool holds, not what the
    // burst of admissions once needed in flight.
    malloc_trim(0);
    rss_before = rss_bytes();
    auto t0 = clock::now();
    // Nodes arrive in waves of 1000 (registration, admission test, pass).
    // After a signal the constructor returns early (the caller checks): a
    // throw from here would skip the destructor that stops the actors.
    for (uint64_t first = 0; first < nodes; first += 1000) {
      auto count = std::min<uint64_t>(1000, nodes - first);
      caf::anon_send(drv, admit_atom::value, std::string{"n"}, first, count);
      while (out->admitted < first + count) {
        if (stop_requested)
          return;
        if (seconds_since(t0) > 600)
          throw std::runtime_error("nodes were not admitted within 600 s");
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    }
    admit_s = seconds_since(t0);
    wait_inflight();
    rss_untrimmed = rss_bytes();
    malloc_trim(0);
    rss_after = rss_bytes();
  }

  void start_group(unsigned n) {
    std::vector<raft_peer> peers;
    for (unsigned i = 1; i <= n; ++i)
      peers.push_back({i, "127.0.0.1:" + std::to_string(free_loopback_port())});
    for (unsigned i = 1; i <= n; ++i) {
      auto mdir = dir + "/m" + std::to_string(i);
      std::filesystem::create_directories(mdir + "/raft");
      member m;
      m.archive = open_store(mdir + "/db");
      // As an oracle's member: the archive, its position after every
      // batch, and the gaps a snapshot install would leave.
      m.rep = member_replica(m.archive, false, [](const std::string& e) {
        nodepool::log("bench")->critical("replicated: {}", e);
      });
      m.machine = std::make_shared<replica_machine>(*m.rep, true);  // as an oracle's
      m.roles = std::make_shared<role_relay>();
      raft_options ro;
      ro.id = i;
      ro.dir = mdir + "/raft";
      ro.members = peers;
      // The members share this process and its cores with the driver: a
      // loop starved past an election timeout would hand leadership to a
      // member the bench's supervisor is not on (a repetition then counts
      // nothing). This section measures throughput, not failover.
      ro.election_timeout_ms = 1000;
      ro.heartbeat_timeout_ms = 100;
      if (snapshot_threshold_ > 0) {
        ro.snapshot_threshold = snapshot_threshold_;
        ro.snapshot_trailing = std::min(ro.snapshot_trailing, snapshot_threshold_ / 2);
      }
      auto roles = m.roles;
      std::string err;
      auto l = start_raft_log(
        ro, *m.machine, [roles](const log_status& st) { roles->publish(st); },
        err);
      if (!l)
        throw std::runtime_error("replicated: member " + std::to_string(i)
                                 + ": " + err);
      m.log = std::move(l);
      members.push_back(std::move(m));
    }
  }

  uint64_t inflight() {
    caf::scoped_actor self{*sys};
    uint64_t n = 0;
    self->request(drv, std::chrono::seconds(60), inflight_atom::value)
      .receive([&](uint64_t x) { n = x; },
               [&](caf::error& e) {
                 throw std::runtime_error("bench driver: " + sys->render(e));
               });
    return n;
  }

  /// The supervisor's counters: applied entries and group commits.
  std::pair<uint64_t, uint64_t> commits() {
    caf::scoped_actor self{*sys};
    std::pair<uint64_t, uint64_t> x;
    self->request(sup, std::chrono::seconds(60), stats_atom::value)
      .receive(
        [&](const std::string& js) {
          auto j = nlohmann::json::parse(js);
          x = {j["applied"].get<uint64_t>(), j["batches"].get<uint64_t>()};
        },
        [&](caf::error& e) {
          throw std::runtime_error("supervisor stats: " + sys->render(e));
        });
    return x;
  }
  /// The supervisor's counters, as JSON.
  nlohmann::json stats() {
    caf::scoped_actor self{*sys};
    nlohmann::json j;
    self->request(sup, std::chrono::seconds(60), stats_atom::value)
      .receive([&](const std::string& js) { j = nlohmann::json::parse(js); },
               [&](caf::error& e) {
                 throw std::runtime_error("supervisor stats: " + sys->render(e));
               });
    return j;
  }
  /// CPU time the whole process used per second of wall time while the
  /// pool waited for work (its actors' timers, idle scheduler workers,
  /// RocksDB's and raft's threads), over `seconds`.
  double idle_cpu_ms_per_s(double seconds) {
    auto cpu = [] {
      struct rusage u {};
      getrusage(RUSAGE_SELF, &u);
      return (u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1e3
             + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e3;
    };
    sleep_unless_stopped(0.5);  // what admission left in flight settles
    auto c0 = cpu();
    auto t0 = clock::now();
    sleep_unless_stopped(seconds);
    return (cpu() - c0) / seconds_since(t0);
  }

  /// Entries per group commit over the last saturation run.
  double entries_per_commit = 0;
  /// Submissions shed as overloaded during the last offer().
  uint64_t last_shed = 0;
  /// Where the last offer()'s backlog waited, read every 50 ms without
  /// asking the actors: the longest the pool's queue, the supervisor's
  /// mailbox and the driver's were, and a sample of the three (with the
  /// grants so far) every 250 ms.
  nlohmann::json last_backlog;
  /// The last offer()'s grants in three parts (sink::parts_ms).
  std::vector<std::array<double, 3>> last_parts;

  void wait_inflight() {
    auto t0 = clock::now();
    while (!stop_requested && inflight() > 0 && seconds_since(t0) < 60)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }

  /// Closed loop with `clients` sessions in flight: cycles/s of each of
  /// `reps` consecutive windows after a warm-up.
  std::vector<double> saturate(uint32_t clients, int reps, double seconds,
                               double warmup) {
    caf::anon_send(drv, go_atom::value, clients);
    sleep_unless_stopped(warmup);
    auto before = commits();
    std::vector<double> xs;
    for (int r = 0; r < reps; ++r) {
      auto c0 = out->cycles.load();
      auto t0 = clock::now();
      sleep_unless_stopped(seconds);
      xs.push_back((out->cycles.load() - c0) / seconds_since(t0));
    }
    auto after = commits();
    if (after.second > before.second)
      entries_per_commit = double(after.first - before.first)
                           / double(after.second - before.second);
    caf::anon_send(drv, halt_atom::value);
    wait_inflight();
    return xs;
  }

  /// Open loop: Poisson arrivals at `rate` per second for a warm-up and a
  /// window; grant latencies (from the scheduled arrival, so a late sender
  /// does not hide queueing) of the window. The sender wakes at most every
  /// 100 us and hands over all arrivals due by then in one message, so that
  /// it does not take a core of its own from the pool.
  std::pair<std::vector<double>, double> offer(double rate, double seconds,
                                               double warmup, uint64_t seed) {
    std::mt19937_64 rng{seed};
    std::exponential_distribution<double> gap{rate};
    out->take_latencies();
    auto start = clock::now();
    auto window_at = start + std::chrono::duration_cast<clock::duration>(
                               std::chrono::duration<double>(warmup));
    auto end = window_at + std::chrono::duration_cast<clock::duration>(
                             std::chrono::duration<double>(seconds));
    auto next = start;
    bool recording = false;
    uint64_t g0 = 0;
    uint64_t shed0 = out->shed;
    clock::time_point t_rec;
    const auto tick = std::chrono::microseconds(100);
    uint64_t max_queued = 0, max_mailbox = 0, max_driver = 0;
    nlohmann::json series = nlohmann::json::array();
    auto sampled = start;
    int samples = 0;
    auto sample = [&] {
      auto q = gauges->queued.load(std::memory_order_relaxed);
      auto m = gauges->mailbox.load(std::memory_order_relaxed);
      auto d = out->driver_mailbox.load(std::memory_order_relaxed);
      max_queued = std::max(max_queued, q);
      max_mailbox = std::max(max_mailbox, m);
      max_driver = std::max(max_driver, d);
      if (samples++ % 5 == 0)
        series.push_back({std::round(seconds_since(start) * 100) / 100, q, m, d,
                          out->granted.load()});
    };
    while (next < end) {
      check_stop();
      if (clock::now() - sampled >= std::chrono::milliseconds(50)) {
        sampled = clock::now();
        sample();
      }
      if (!recording && next >= window_at) {
        recording = true;
        out->record = true;
        g0 = out->granted;
        t_rec = clock::now();
      }
      std::this_thread::sleep_until(std::max(next, clock::now() + tick));
      std::vector<int64_t> due;
      auto now = clock::now();
      while (next <= now && next < end) {
        due.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(
                        next.time_since_epoch())
                        .count());
        next += std::chrono::duration_cast<clock::duration>(
          std::chrono::duration<double>(gap(rng)));
      }
      if (!due.empty())
        caf::anon_send(drv, arrive_atom::value, std::move(due));
    }
    auto achieved = (out->granted - g0) / seconds_since(t_rec);
    last_shed = out->shed - shed0;
    out->record = false;
    sample();
    last_backlog = {{"max_queued", max_queued},
                    {"max_supervisor_mailbox", max_mailbox},
                    {"max_driver_mailbox", max_driver},
                    {"series_s_queued_mailbox_driver_granted", series}};
    wait_inflight();
    last_parts = out->take_parts();
    return {out->take_latencies(), achieved};
  }

  /// offer(), with the window doubled (up to three times) while no grant
  /// was measured in it: a machine busy with other work may grant nothing
  /// within a short window at a low rate. Throws if it never does.
  std::pair<std::vector<double>, double> offer_measured(
    const char* section, double rate, double seconds, double warmup,
    uint64_t seed) {
    for (int attempt = 0; attempt < 4; ++attempt, seconds *= 2) {
      auto r = offer(rate, seconds, warmup, seed);
      if (!r.first.empty())
        return r;
    }
    throw std::runtime_error(std::string{section} + ": no grant measured");
  }

  ~durable_pool() {
    if (sys) {
      if (sup) {
        caf::anon_send_exit(drv, caf::exit_reason::user_shutdown);
        caf::anon_send_exit(sup, caf::exit_reason::user_shutdown);
        caf::scoped_actor self{*sys};
        self->wait_for(sup, drv);
      }
      sup = nullptr;
      drv = nullptr;
      // The logs' threads call into the actors: they stop while the actor
      // system is still there.
      for (auto& m : members) {
        m.roles->listen({});
        m.log->stop();
      }
      sys.reset();
    }
    members.clear();
    remove_tree(dir);
  }
};

} // namespace

// ------------------------------------------------------------ state_machine

namespace {

/// A pool with `nodes` nodes admitted (level 0, model `model`), and the
/// three-command cycle of the state_machine section: submit a session, end
/// it (its node goes to re-validation), pass the re-validation.
struct cycling_pool {
  pool_state ps;
  int64_t now = 1000000;
  uint64_t next = 0, commands = 0, refused = 0;
  std::vector<std::pair<std::string, uint64_t>> tests;
  /// Freezes a snapshot every `snapshot_every` commands when set (what the
  /// supervisor does; the snapshot itself is dropped).
  uint64_t snapshot_every = 0, since_snapshot = 0;

  cycling_pool(const params& p, uint32_t nodes) : ps{p} {
    for (uint32_t i = 0; i < nodes; ++i) {
      if (i % 4096 == 0)
        check_stop();
      take_tests(ps.apply(register_cmd(node_name("n", i)), now));
    }
    pass_all();
    if (ps.count_by_state()[pb::EPHEMERAL] != nodes)
      throw std::runtime_error("bench: nodes were not admitted");
  }

  /// Passes every test asked for, and those sent as others pass (past
  /// max_tests_in_flight, tests wait for a place).
  void pass_all() {
    for (size_t k = 0; k < tests.size(); ++k) {
      if (k % 4096 == 0)
        check_stop();
      auto [n, t] = tests[k];  // a copy: take_tests may grow the list
      take_tests(ps.apply(pass_cmd(n, t), now));
    }
    tests.clear();
  }

  void take_tests(const apply_result& r) {
    for (auto& e : r.events)
      if (e.has_test_requested())
        tests.emplace_back(e.test_requested().node_id(),
                           e.test_requested().test_id());
  }

  void cycle() {
    auto sid = "s" + std::to_string(next++);
    auto r1 = ps.apply(submit_cmd(sid), ++now);
    auto r2 = ps.apply(end_cmd(sid), now);
    take_tests(r2);
    refused += r1.refused.has_value() + r2.refused.has_value();
    for (auto& [n, t] : tests)
      refused += ps.apply(pass_cmd(n, t), now).refused.has_value();
    commands += 2 + tests.size();
    since_snapshot += 2 + tests.size();
    tests.clear();
    if (snapshot_every > 0 && since_snapshot >= snapshot_every) {
      since_snapshot = 0;
      ps.freeze();
    }
  }

  /// Commands per second of `reps` windows after a warm-up.
  std::vector<double> rate(const options& o) {
    auto warm = clock::now();
    while (seconds_since(warm) < o.warmup) {
      check_stop();
      cycle();
    }
    auto xs = repeat(o.reps, [&](int) {
      auto c0 = commands;
      auto t0 = clock::now();
      while (seconds_since(t0) < o.seconds) {
        check_stop();
        for (int k = 0; k < 64; ++k)
          cycle();
      }
      return (commands - c0) / seconds_since(t0);
    });
    if (refused > 0)
      throw std::runtime_error("bench: " + std::to_string(refused)
                               + " commands refused");
    return xs;
  }
};

} // namespace

nlohmann::json state_machine(const options& o) {
  // The pool alone: the same three commands per cycle, applied in a loop.
  cycling_pool cp{o.pool, o.nodes};
  auto xs = cp.rate(o);
  auto cps = median(xs);
  nlohmann::json j;
  j["commands_per_s"] = cps;
  j["cycles_per_s"] = cps / 3;
  j["commands_per_s_reps"] = xs;
  j["nodes"] = o.nodes;
  // With the supervisor's snapshots (a freeze every max(snapshot_every,
  // records) commands), side by side: each copied whole, or the copy kept
  // and only what changed copied again (which costs every command the
  // noting of what it changed).
  auto every = std::max<uint64_t>(o.pool.snapshot_every, o.nodes);
  cycling_pool whole{o.pool, o.nodes}, kept{o.pool, o.nodes};
  whole.ps.set_kept_copy_from(std::numeric_limits<size_t>::max());
  kept.ps.set_kept_copy_from(0);
  for (auto* c : {&whole, &kept})
    c->snapshot_every = every;
  options one = o;
  one.reps = 1;
  std::vector<double> a, b;
  for (int r = 0; r < o.reps; ++r) {
    a.push_back(whole.rate(one).front());
    b.push_back(kept.rate(one).front());
  }
  j["with_snapshots"] = {{"every", every},
                         {"whole_copy_commands_per_s", median(a)},
                         {"kept_copy_commands_per_s", median(b)},
                         {"whole_copy_reps", a},
                         {"kept_copy_reps", b},
                         {"ratio_kept_to_whole", median(b) / median(a)}};
  note("state_machine: with a snapshot every %llu commands: %.0f commands/s "
       "copying the records whole, %.0f keeping the copy (%.2f x)",
       static_cast<unsigned long long>(every), median(a), median(b),
       median(b) / median(a));
  return j;
}

// -------------------------------------------------------------------- queue

nlohmann::json queue_cost(const options& o) {
  // The same cycle on a small pool with an empty queue, and on a big pool
  // behind a deep queue that no node can serve: half the queued sessions
  // want a model no node has, half a level no node of their model has. They
  // have waited past half their queue timeout, so each also asks whether
  // any node could ever serve it. Measured alternately, side by side.
  // The cycle advances the pool's clock 1 ms per session and sends no
  // ticks: a long ephemeral window keeps idle nodes servable throughout.
  auto p = o.pool;
  p.ephemeral_window_ms = params::max_duration_ms;
  cycling_pool small{p, 1000};
  cycling_pool big{p, o.queue_nodes};
  cycling_pool big_empty{p, o.queue_nodes};  // the pool's size alone
  // A few nodes of a rare model, admitted once: level 0.
  for (int i = 0; i < 3; ++i) {
    auto reg = register_cmd(node_name("rare", i));
    reg.mutable_register_()->set_models(0, "rare-model");
    big.take_tests(big.ps.apply(reg, big.now));
  }
  big.pass_all();
  for (uint32_t i = 0; i < o.queue_sessions; ++i) {
    auto c = submit_cmd("q" + std::to_string(i));
    auto* s = c.mutable_submit_session();
    if (i % 2 == 0) {
      s->set_model("no-such-model");
    } else {
      s->set_model("rare-model");
      s->set_min_level(5);
    }
    if (big.ps.apply(c, big.now).refused)
      throw std::runtime_error("queue: a queued session was refused");
  }
  big.now += p.queue_timeout_ms / 2 + 1;  // waited long: they may hold
  options one = o;
  one.reps = 1;
  std::vector<double> a, b, c;
  for (int r = 0; r < o.reps; ++r) {
    a.push_back(small.rate(one).front());
    b.push_back(big.rate(one).front());
    c.push_back(big_empty.rate(one).front());
  }
  auto queued = big.ps.session_counts()[pb::QUEUED];
  if (queued != o.queue_sessions)
    throw std::runtime_error("queue: " + std::to_string(queued)
                             + " sessions still queued, expected "
                             + std::to_string(o.queue_sessions));
  nlohmann::json j;
  j["small"] = {{"nodes", 1000}, {"queued", 0},
                {"commands_per_s", median(a)}, {"commands_per_s_reps", a}};
  j["deep"] = {{"nodes", o.queue_nodes}, {"queued", o.queue_sessions},
               {"commands_per_s", median(b)}, {"commands_per_s_reps", b}};
  j["big_empty"] = {{"nodes", o.queue_nodes}, {"queued", 0},
                    {"commands_per_s", median(c)},
                    {"commands_per_s_reps", c}};
  j["ratio_deep_to_small"] = median(b) / median(a);
  j["ratio_deep_to_big_empty"] = median(b) / median(c);
  note("queue: %.0f commands/s (1000 nodes, empty queue), %.0f (%u nodes, "
       "empty queue), %.0f (%u nodes, %u unservable queued): deep/small "
       "%.2f, deep/big %.2f",
       median(a), median(c), o.queue_nodes, median(b), o.queue_nodes,
       o.queue_sessions, median(b) / median(a), median(b) / median(c));
  return j;
}

// ----------------------------------------------------------------- snapshot

nlohmann::json snapshot_cost(const options& o) {
  // What one snapshot costs the threads that take it, at the recovery
  // target's shape: a big pool (queue_nodes) behind a deep queue
  // (queue_sessions). Between two snapshots the pool serves cycles until
  // max(snapshot_every, nodes) commands are applied, as the supervisor
  // would. Then, timed apart: the supervisor's stop (freeze), and the
  // writer's work as it was and as it is, on the same frozen state.
  auto p = o.pool;
  p.ephemeral_window_ms = params::max_duration_ms;
  // Nodes picked at random, so that the records changed between two
  // snapshots are spread over the pool as a busy oracle's are (with equal
  // reputations the default selection would pick the same few nodes).
  p.selection = "random";
  // Two pools given the same commands: `ahead` also copies ahead after
  // every 32 commands (a group commit of the durable bench's 32 clients),
  // as the supervisor does (supervisor_config's copy_ahead_per_commit and
  // copy_ahead_leave); its snapshots must be the same bytes.
  cycling_pool cp{p, o.queue_nodes}, ahead{p, o.queue_nodes};
  for (auto* pool : {&cp, &ahead}) {
    for (uint32_t i = 0; i < o.queue_sessions; ++i) {
      auto c = submit_cmd("q" + std::to_string(i));
      c.mutable_submit_session()->set_model("no-such-model");
      if (pool->ps.apply(c, pool->now).refused)
        throw std::runtime_error("snapshot: a queued session was refused");
    }
    pool->ps.set_kept_copy_from(0);  // kept whatever the size (--quick)
    pool->ps.freeze();  // the first copy is whole; the ones measured are not
  }
  auto every = std::max<uint64_t>(p.snapshot_every, o.queue_nodes);
  const supervisor_config sc;
  std::vector<double> stop, changed, bytes;
  std::vector<double> stop_ahead, changed_ahead, ahead_ms;
  std::vector<double> message, serialize, restore_check;  // as it was
  std::vector<double> check, encode;                      // as it is
  auto ms_since = [](clock::time_point t) {
    return std::chrono::duration<double, std::milli>(clock::now() - t).count();
  };
  auto fail_on = [](const std::vector<violation>& v, const char* how) {
    if (!v.empty())
      throw std::runtime_error(std::string{"snapshot: "} + how + " finds "
                               + v.front().invariant + ": " + v.front().detail);
  };
  for (int r = 0; r < o.reps; ++r) {
    check_stop();
    auto c0 = cp.commands;
    for (uint64_t k = 0; cp.commands - c0 < every; ++k) {
      if (k % 1024 == 0)
        check_stop();
      cp.cycle();
    }
    changed.push_back(static_cast<double>(cp.ps.changes_pending()));
    c0 = ahead.commands;
    auto committed = c0;
    double spent = 0;
    for (uint64_t k = 0; ahead.commands - c0 < every; ++k) {
      if (k % 1024 == 0)
        check_stop();
      ahead.cycle();
      if (ahead.commands - committed >= 32) {
        committed = ahead.commands;
        auto t = clock::now();
        ahead.ps.copy_ahead(sc.copy_ahead_per_commit, sc.copy_ahead_leave);
        spent += ms_since(t);
      }
    }
    ahead_ms.push_back(spent);
    changed_ahead.push_back(static_cast<double>(ahead.ps.changes_pending()));
    auto t0 = clock::now();
    auto fa = ahead.ps.freeze();
    stop_ahead.push_back(ms_since(t0));
    t0 = clock::now();
    auto f = cp.ps.freeze();
    stop.push_back(ms_since(t0));
    auto same = std::move(fa).encode();
    auto g = f;  // the same frozen state, for the other way
    std::string was, is;
    auto old_way = [&] {
      auto t = clock::now();
      auto snap = std::move(f).finish();
      message.push_back(ms_since(t));
      t = clock::now();
      was = snap.SerializeAsString();
      serialize.push_back(ms_since(t));
      t = clock::now();
      pool_state copy;
      copy.restore(snap, false);
      auto v = copy.check_invariants();
      restore_check.push_back(ms_since(t));
      fail_on(v, "restore and check_invariants");
    };
    auto new_way = [&] {
      auto t = clock::now();
      auto v = g.check();
      check.push_back(ms_since(t));
      fail_on(v, "the frozen check");
      t = clock::now();
      is = std::move(g).encode();
      encode.push_back(ms_since(t));
    };
    check_stop();
    if (r % 2 == 0) {
      old_way();
      check_stop();
      new_way();
    } else {
      new_way();
      check_stop();
      old_way();
    }
    check_stop();
    if (was != is)
      throw std::runtime_error("snapshot: encode() differs from the message's "
                               "own serialization");
    if (same != is)
      throw std::runtime_error("snapshot: the pool that copied ahead froze "
                               "another state");
    bytes.push_back(static_cast<double>(is.size()));
  }
  auto before = median(message) + median(serialize) + median(restore_check);
  auto after = median(check) + median(encode);
  // What a list of the HTTP API stops the supervisor for, on this pool:
  // the whole state copied and serialized (how the lists were read), and
  // a page of 200 nodes, of 200 live sessions, and the models on offer
  // (how they are read now).
  std::vector<double> whole_read, nodes_page, sessions_page, models_read;
  for (int r = 0; r < std::max(o.reps, 3); ++r) {
    check_stop();
    // Each read after the pool served a while, as a poll finds it (and not
    // right after another read, whose garbage the allocator would be
    // sorting through when the next asks for memory).
    auto serve = [&] {
      auto c0 = cp.commands;
      while (cp.commands - c0 < 3000)
        cp.cycle();
    };
    pb::StateQuery q;
    q.set_limit(200);
    q.set_after(node_name("n", static_cast<uint64_t>(r) * 997 % o.queue_nodes));
    auto page_ms = [&](pb::StateQuery::What what, int want) {
      serve();
      q.set_what(what);
      auto t0 = clock::now();
      auto page = cp.ps.read(q).SerializeAsString();
      auto ms = ms_since(t0);
      pb::StatePage p;
      p.ParseFromString(page);
      if (p.nodes_size() + p.sessions_size() + p.models_size() < want)
        throw std::runtime_error("snapshot: a page of the lists came short");
      return ms;
    };
    nodes_page.push_back(page_ms(pb::StateQuery::NODES, 200));
    q.set_after("q" + std::to_string(r));
    sessions_page.push_back(page_ms(pb::StateQuery::SESSIONS, 200));
    models_read.push_back(page_ms(pb::StateQuery::MODELS, 1));
    serve();
    auto t = clock::now();
    auto whole = cp.ps.snapshot().SerializeAsString();
    whole_read.push_back(ms_since(t));
    if (whole.empty())
      throw std::runtime_error("snapshot: the whole state came empty");
  }
  nlohmann::json j;
  j["api_reads"] = {{"whole_state_ms", median(whole_read)},
                    {"nodes_page_200_ms", median(nodes_page)},
                    {"sessions_page_200_ms", median(sessions_page)},
                    {"models_ms", median(models_read)}};
  note("snapshot: a list of the HTTP API stops the supervisor for: the whole "
       "state %.1f ms; a page of 200 nodes %.3f ms, of 200 live sessions "
       "%.3f ms; the models %.3f ms",
       median(whole_read), median(nodes_page), median(sessions_page),
       median(models_read));
  j["nodes"] = o.queue_nodes;
  j["queued"] = o.queue_sessions;
  j["commands_between"] = every;
  j["records_changed"] = median(changed);
  j["bytes"] = median(bytes);
  j["stop_ms"] = median(stop);
  j["copied_ahead"] = {{"records_left", median(changed_ahead)},
                       {"stop_ms", median(stop_ahead)},
                       {"copy_ahead_ms_between", median(ahead_ms)}};
  j["restored"] = {{"message_ms", median(message)},
                   {"serialize_ms", median(serialize)},
                   {"restore_check_ms", median(restore_check)},
                   {"writer_ms", before}};
  j["from_copy"] = {{"check_ms", median(check)},
                    {"encode_ms", median(encode)},
                    {"writer_ms", after}};
  j["ratio_writer_from_copy_to_restored"] = after / before;
  note("snapshot: copying ahead after every 32 commands: %.0f records left, "
       "stop %.2f ms (%.1f ms spent copying ahead between two snapshots)",
       median(changed_ahead), median(stop_ahead), median(ahead_ms));
  note("snapshot: %u nodes, %u queued, %.1f MB, %.0f records changed: stop "
       "%.2f ms; writer %.1f ms (message %.1f, serialize %.1f, restore and "
       "check %.1f), from the copy %.1f ms (check %.1f, encode %.1f): %.2f x",
       o.queue_nodes, o.queue_sessions, median(bytes) / 1e6, median(changed),
       median(stop), before, median(message), median(serialize),
       median(restore_check), after, median(check), median(encode),
       after / before);
  return j;
}

// -------------------------------------------------------------------- check

nlohmann::json check_speed(const options& o) {
  // Histories of n sessions served one after another on 100 nodes, as a
  // supervisor stores them (entries with the archive records they wrote),
  // then check_history over the whole of each: entries per second.
  nlohmann::json out = nlohmann::json::array();
  for (auto n : o.check_sessions) {
    temp_tree tree{"check"};
    auto& dir = tree.path;
    uint64_t entries = 0;
    {
      auto storage = open_store(dir);
      cycling_pool cp{o.pool, 0};  // every command below is logged
      std::vector<pb::LogEntry> batch;
      std::vector<pb::SessionRecord> archived;
      auto log = [&](const pb::Command& c) {
        auto r = cp.ps.apply(c, cp.now);
        if (!r.changed)
          return;
        auto& e = batch.emplace_back();
        e.set_index(++entries);
        e.set_now(cp.now);
        *e.mutable_command() = c;
        for (auto& a : r.archived)
          archived.push_back(std::move(a));
        cp.take_tests(r);
      };
      pb::Command conf;
      conf.mutable_configure()->set_params_json(to_json(o.pool));
      // The history opens as an oracle's does: its parameters, its nodes.
      log(conf);
      for (uint32_t i = 0; i < 100; ++i)
        log(register_cmd(node_name("n", i)));
      for (auto& [nd, t] : cp.tests)
        log(pass_cmd(nd, t));
      cp.tests.clear();
      for (uint64_t i = 0; i < n; ++i) {
        if (i % 4096 == 0)
          check_stop();
        auto sid = "s" + std::to_string(i);
        ++cp.now;
        log(submit_cmd(sid));
        log(end_cmd(sid));
        auto tests = std::move(cp.tests);
        cp.tests.clear();
        for (auto& [nd, t] : tests)
          log(pass_cmd(nd, t));
        if (batch.size() >= 4096) {
          if (auto s = storage->append(batch, archived, false); !s.ok())
            throw std::runtime_error(s.error);
          batch.clear();
          archived.clear();
        }
      }
      if (auto s = storage->append(batch, archived, true); !s.ok())
        throw std::runtime_error(s.error);
    }
    auto storage = open_store(dir);
    auto t0 = clock::now();
    auto rep = check_history(*storage, 1, &stop_requested);
    auto secs = seconds_since(t0);
    check_stop();
    if (!rep.load_error.empty() || !rep.violations.empty())
      throw std::runtime_error(
        "check: the history does not check: "
        + (rep.load_error.empty() ? rep.violations.front().second.detail
                                  : rep.load_error));
    if (rep.sessions_archived != n || rep.entries != entries)
      throw std::runtime_error("check: checked another history than written");
    nlohmann::json j;
    j["sessions"] = n;
    j["entries"] = entries;
    j["seconds"] = secs;
    j["entries_per_s"] = entries / secs;
    note("check: %llu sessions, %llu entries: %.0f entries/s",
         static_cast<unsigned long long>(n),
         static_cast<unsigned long long>(entries), entries / secs);
    out.push_back(j);
  }
  return out;
}

/// What a supervisor histogram counted between two of its readings (bucket
/// bounds and counts), noted as one line under `what`; `unit` "ms" for
/// times, or what else its bounds count.
nlohmann::json histogram_delta(const nlohmann::json& before,
                               const nlohmann::json& after, const char* what,
                               const std::string& unit = "ms") {
  auto bounds = after["bounds"].get<std::vector<double>>();
  auto c1 = after["counts"].get<std::vector<uint64_t>>();
  auto c0 = before["counts"].get<std::vector<uint64_t>>();
  std::vector<uint64_t> delta;
  std::string line;
  for (size_t k = 0; k < c1.size(); ++k) {
    delta.push_back(c1[k] - c0[k]);
    std::string bound = ">";
    if (k < bounds.size())
      bound = "<=" + (unit == "ms" ? std::to_string(bounds[k]).substr(0, 5)
                                   : std::to_string(static_cast<uint64_t>(bounds[k])));
    line += bound + ":" + std::to_string(delta.back()) + " ";
  }
  note("%s, per bucket (%s): %s", what, unit.c_str(), line.c_str());
  return {{unit == "ms" ? "bounds_ms" : "bounds", bounds}, {"counts", delta}};
}

// ------------------------------------------------------------------ durable

/// The grants of an open loop in their three parts (sink::parts_ms): each
/// part's median and 99th percentile, and each part's mean over the slowest
/// 1 % of the grants (by the three together): which part the tail is in.
struct grant_parts {
  std::array<double, 3> p50{}, p99{}, slowest_mean{};
  /// From the driver's submission to the grant heard (the last two parts
  /// together): the pool's own latency, without the bench's sender.
  double from_submission_p50 = 0, from_submission_p99 = 0;
};

grant_parts summarize_parts(const std::vector<std::array<double, 3>>& v) {
  grant_parts s;
  if (v.empty())
    return s;
  std::vector<double> sums, from_submission;
  sums.reserve(v.size());
  from_submission.reserve(v.size());
  for (auto& p : v) {
    sums.push_back(p[0] + p[1] + p[2]);
    from_submission.push_back(p[1] + p[2]);
  }
  s.from_submission_p50 = quantile(from_submission, 0.5);
  s.from_submission_p99 = quantile(std::move(from_submission), 0.99);
  for (size_t k = 0; k < 3; ++k) {
    std::vector<double> x;
    x.reserve(v.size());
    for (auto& p : v)
      x.push_back(p[k]);
    s.p50[k] = quantile(x, 0.5);
    s.p99[k] = quantile(std::move(x), 0.99);
  }
  auto cut = quantile(sums, 0.99);
  size_t n = 0;
  for (size_t i = 0; i < v.size(); ++i)
    if (sums[i] >= cut) {
      for (size_t k = 0; k < 3; ++k)
        s.slowest_mean[k] += v[i][k];
      ++n;
    }
  for (auto& m : s.slowest_mean)
    m /= static_cast<double>(n);
  return s;
}

/// The durable section's closed and open loops, on a pool that is gone when
/// it returns.
nlohmann::json durable_loops(const options& o) {
  durable_pool dp{"durable", o.nodes, o.pool, 0, 0, o.copy_ahead,
                  o.caf_moderate_polls};
  check_stop();
  dp.out->driver_requests = o.driver_requests;
  auto idle = dp.idle_cpu_ms_per_s(2);
  note("durable: idle, the process used %.1f ms of CPU per second (idle CAF "
       "workers poll %zu times before they sleep)", idle, dp.moderate_polls);
  auto sat = dp.saturate(o.clients, o.reps, o.seconds, o.warmup);
  auto cps = median(sat);
  note("durable: %.0f cycles/s at saturation (%u clients)", cps, o.clients);
  nlohmann::json j;
  j["cycles_per_s"] = cps;
  j["cycles_per_s_reps"] = sat;
  j["clients"] = o.clients;
  j["nodes"] = o.nodes;
  j["sync"] = true;
  j["entries_per_commit"] = dp.entries_per_commit;
  j["copy_ahead_per_commit"] = dp.copy_ahead_per_commit;
  j["caf_moderate_polls"] = dp.moderate_polls;
  j["driver_requests"] = o.driver_requests;
  j["idle_cpu_ms_per_s"] = idle;
  note("durable: %.1f entries per synced group commit", dp.entries_per_commit);
  nlohmann::json curve = nlohmann::json::array();
  // Two binaries compared at the same offered rates need the same base.
  auto base = o.load_base > 0 ? o.load_base : cps;
  j["load_base_per_s"] = base;
  for (auto load : o.loads) {
    std::vector<double> p50, p99, p999, got;
    std::array<std::vector<double>, 3> part_p50, part_p99, part_slow;
    std::vector<double> sub_p50, sub_p99;
    uint64_t shed = 0;
    nlohmann::json backlog = nlohmann::json::array();
    auto before = dp.stats()["histograms"];
    for (int r = 0; r < o.reps; ++r) {
      auto [lat, achieved] =
        dp.offer_measured("durable", load * base, o.seconds, o.warmup, 1000 * r + 1);
      p50.push_back(quantile(lat, 0.5));
      p99.push_back(quantile(lat, 0.99));
      p999.push_back(quantile(lat, 0.999));
      got.push_back(achieved);
      auto parts = summarize_parts(dp.last_parts);
      for (size_t k = 0; k < 3; ++k) {
        part_p50[k].push_back(parts.p50[k]);
        part_p99[k].push_back(parts.p99[k]);
        part_slow[k].push_back(parts.slowest_mean[k]);
      }
      sub_p50.push_back(parts.from_submission_p50);
      sub_p99.push_back(parts.from_submission_p99);
      shed += dp.last_shed;
      backlog.push_back(dp.last_backlog);
      note("durable: load %.0f%%, repetition %d: at most %llu sessions queued, "
           "%llu messages at the supervisor, %llu at the driver",
           load * 100, r + 1,
           static_cast<unsigned long long>(dp.last_backlog["max_queued"].get<uint64_t>()),
           static_cast<unsigned long long>(
             dp.last_backlog["max_supervisor_mailbox"].get<uint64_t>()),
           static_cast<unsigned long long>(
             dp.last_backlog["max_driver_mailbox"].get<uint64_t>()));
    }
    nlohmann::json c;
    c["load"] = load;
    c["backlog"] = backlog;
    c["shed"] = shed;  // submissions refused as overloaded, all repetitions
    c["offered_per_s"] = load * base;
    c["achieved_per_s"] = median(got);
    c["p50_ms"] = median(p50);
    c["p99_ms"] = median(p99);
    c["p999_ms"] = median(p999);
    note("durable: load %.0f%%: achieved %.0f cycles/s, p50 %.3f ms, p99 %.3f ms, "
         "p99.9 %.3f ms, %llu submissions shed (overloaded)",
         load * 100, c["achieved_per_s"].get<double>(), c["p50_ms"].get<double>(),
         c["p99_ms"].get<double>(), c["p999_ms"].get<double>(),
         static_cast<unsigned long long>(shed));
    // Where a grant's time goes, hop by hop (medians over the repetitions).
    static const char* part_names[3] = {"to_driver", "to_apply", "apply_to_grant"};
    nlohmann::json parts;
    for (size_t k = 0; k < 3; ++k)
      parts[part_names[k]] = {{"p50_ms", median(part_p50[k])},
                              {"p99_ms", median(part_p99[k])},
                              {"slowest_1pct_mean_ms", median(part_slow[k])}};
    parts["from_submission"] = {{"p50_ms", median(sub_p50)},
                                {"p99_ms", median(sub_p99)}};
    c["grant_parts"] = parts;
    note("durable: load %.0f%%: a grant's parts, p50 / p99 / mean over the "
         "slowest 1 %% (ms): arrival to the driver's submission %.3f / %.3f / "
         "%.3f; to the supervisor's apply %.3f / %.3f / %.3f; apply to the "
         "grant heard %.3f / %.3f / %.3f; from the submission to the grant "
         "heard, p50 %.3f, p99 %.3f",
         load * 100, median(part_p50[0]), median(part_p99[0]),
         median(part_slow[0]), median(part_p50[1]), median(part_p99[1]),
         median(part_slow[1]), median(part_p50[2]), median(part_p99[2]),
         median(part_slow[2]), median(sub_p50), median(sub_p99));
    // Where a grant's time goes: the group commits (write and sync); the
    // supervisor's stops for snapshots (copying the live state); and what
    // those copies held, the live sessions (queued and active) at each.
    auto pct = std::to_string(static_cast<int>(load * 100 + 0.5));
    auto label = [&](const char* what) { return "durable: load " + pct + "%: " + what; };
    auto after = dp.stats()["histograms"];
    c["commit_latency"] = histogram_delta(before["commit_latency_ms"],
                                          after["commit_latency_ms"],
                                          label("group commits").c_str());
    c["snapshot_copy"] = histogram_delta(before["snapshot_copy_ms"],
                                         after["snapshot_copy_ms"],
                                         label("snapshot copies").c_str());
    c["snapshot_live_sessions"] = histogram_delta(
      before["snapshot_live_sessions"], after["snapshot_live_sessions"],
      label("live sessions at the snapshots").c_str(), "sessions");
    curve.push_back(c);
    auto key = "grant_at_" + pct;
    if (load == 0.5 || load == 0.9)
      j[key] = {{"p50_ms", c["p50_ms"]}, {"p99_ms", c["p99_ms"]},
                {"p999_ms", c["p999_ms"]},
                {"offered_per_s", c["offered_per_s"]},
                {"achieved_per_s", c["achieved_per_s"]}};
  }
  j["curve"] = curve;
  if (!o.plot_dir.empty()) {
    // For the plot of throughput against clients: saturation with 1 to 128
    // concurrent clients, on the same pool, one after the other.
    nlohmann::json by = nlohmann::json::array();
    for (uint32_t c : {1u, 2u, 4u, 8u, 16u, 32u, 64u, 128u}) {
      check_stop();
      auto x = dp.saturate(c, o.reps, o.seconds, o.warmup);
      by.push_back({{"clients", c}, {"cycles_per_s", median(x)},
                    {"cycles_per_s_reps", x}});
      note("durable: %.0f cycles/s with %u clients", median(x), c);
    }
    j["by_clients"] = by;
  }
  j["sessions_served"] = dp.out->submitted.load();
  return j;
}

/// A long saturation run on a pool of its own: what the pool holds in
/// memory (live records, the window of recent ids, resident memory) at
/// its start and its end, and resident memory every 250 ms in between.
/// Ended sessions are archived, so none of it may grow with the sessions
/// served. Two things fill up first, by design: the window of recent ids
/// keeps each id for session_id_retention (5 minutes by default), and
/// RocksDB's memtables fill and empty as they are flushed. So this pool
/// keeps ids for `flat_retention_s`, and serves at saturation that long
/// and 2 s more before the run starts (its window full); and the run is
/// judged by the peaks of resident memory in its two halves (at
/// saturation the log's memtable was flushed 20 times in a 60 s run), not
/// by two samples that may fall on either side of a flush.
nlohmann::json durable_flat(const options& o) {
  auto p = o.pool;
  p.session_id_retention_ms = static_cast<int64_t>(o.flat_retention_s * 1000);
  durable_pool dp{"flat", o.nodes, p, 0, 0, o.copy_ahead, o.caf_moderate_polls};
  check_stop();
  auto warmup = o.flat_retention_s + 2;
  dp.saturate(o.clients, 1, warmup, 0);
  check_stop();
  auto sample = [&] {
    auto s = dp.stats();
    malloc_trim(0);
    nlohmann::json x;
    x["live_nodes"] = s["live_nodes"];
    x["live_sessions"] = s["live_sessions"];
    x["sessions_accepted"] = s["sessions_accepted"];
    x["records_copied_ahead"] = s["records_copied_ahead"];
    x["recent_ids"] = s["recent_ids"];
    x["store"] = s["store"];
    x["store_memory_mb"] = s["store_memory_bytes"].get<double>() / 1048576.0;
    x["recent_ids_mb"] = s["recent_ids_bytes"].get<double>() / 1048576.0;
    x["rss_mb"] = rss_bytes() / 1048576.0;
    // Memory malloc holds free: what resident memory counts beyond what
    // is in use.
    x["malloc_free_mb"] = malloc_free_bytes() / 1048576.0;
    return x;
  };
  auto start = sample();
  note("durable: the long run starts (%.0f s at saturation)", o.flat_seconds);
  // Resident memory every 250 ms through the run, by its time in it. The
  // sampler stops and is joined however the run ends: a Ctrl-C ends it
  // with an exception (sleep_unless_stopped).
  struct rss_sampler {
    std::vector<std::pair<double, double>> samples;  // (s into the run, MB)
    std::atomic<bool> running{true};
    std::thread thread{[this] {
      auto t0 = clock::now();
      while (running.load()) {
        samples.emplace_back(seconds_since(t0), rss_bytes() / 1048576.0);
        std::this_thread::sleep_for(std::chrono::milliseconds(250));
      }
    }};
    void stop() {
      running = false;
      if (thread.joinable())
        thread.join();
    }
    ~rss_sampler() { stop(); }
  } sampler;
  auto flat = dp.saturate(o.clients, 1, o.flat_seconds, 0);
  sampler.stop();
  auto& rss = sampler.samples;
  auto end = sample();
  double peak_first = 0, peak_second = 0;
  for (auto& [t, mb] : rss) {
    auto& peak = t < o.flat_seconds / 2 ? peak_first : peak_second;
    peak = std::max(peak, mb);
  }
  nlohmann::json j = {{"seconds", o.flat_seconds}, {"cycles_per_s", flat.front()},
                      {"retention_s", o.flat_retention_s}, {"warmup_s", warmup},
                      {"start", start}, {"end", end}, {"rss_samples", rss.size()},
                      {"rss_peak_first_half_mb", peak_first},
                      {"rss_peak_second_half_mb", peak_second}};
  note("durable: %.0f s at saturation (a pool of its own keeping ids %.3g s, "
       "served %.3g s first): sessions accepted %llu -> %llu, live sessions "
       "%llu -> %llu, RSS %.1f -> %.1f MB, peak %.1f MB in the first half "
       "and %.1f MB in the second",
       o.flat_seconds, o.flat_retention_s, warmup,
       start["sessions_accepted"].get<unsigned long long>(),
       end["sessions_accepted"].get<unsigned long long>(),
       start["live_sessions"].get<unsigned long long>(),
       end["live_sessions"].get<unsigned long long>(),
       start["rss_mb"].get<double>(), end["rss_mb"].get<double>(), peak_first,
       peak_second);
  if (end["store"].is_object()) {
    auto d = [&](const char* k) {
      return static_cast<unsigned long long>(end["store"][k].get<uint64_t>()
                                             - start["store"][k].get<uint64_t>());
    };
    note("durable: of the resident memory, the window of recent ids went "
         "%.1f -> %.1f MB, RocksDB's memtables, table readers and block "
         "cache %.1f -> %.1f MB, and what malloc holds free %.1f -> %.1f MB",
         start["recent_ids_mb"].get<double>(), end["recent_ids_mb"].get<double>(),
         start["store_memory_mb"].get<double>(),
         end["store_memory_mb"].get<double>(),
         start["malloc_free_mb"].get<double>(), end["malloc_free_mb"].get<double>());
    note("durable: during it, RocksDB flushed the log's memtable %llu times "
         "and snapshots %llu times, and compacted %llu times (%.1f MB written)",
         d("log_flushes"), d("snapshot_flushes"), d("compactions"),
         d("compaction_bytes_written") / 1048576.0);
  }
  return j;
}

nlohmann::json durable(const options& o) {
  auto j = durable_loops(o);
  check_stop();
  j["flat"] = durable_flat(o);
  return j;
}

// --------------------------------------------------------------- replicated

nlohmann::json replicated(const options& o) {
  durable_pool dp{"replicated", o.nodes, o.pool, 3, o.raft_snapshot_threshold, -1,
                  o.caf_moderate_polls};
  check_stop();
  dp.out->driver_requests = o.driver_requests;
  auto idle = dp.idle_cpu_ms_per_s(2);
  note("replicated: idle, the process (three members) used %.1f ms of CPU per "
       "second", idle);
  auto sat = dp.saturate(o.clients, o.reps, o.seconds, o.warmup);
  auto cps = median(sat);
  note("replicated: %.0f cycles/s at saturation over 3 members (%u clients)",
       cps, o.clients);
  nlohmann::json j;
  j["members"] = 3;
  j["idle_cpu_ms_per_s"] = idle;
  j["caf_moderate_polls"] = dp.moderate_polls;
  j["driver_requests"] = o.driver_requests;
  j["cycles_per_s"] = cps;
  j["cycles_per_s_reps"] = sat;
  j["clients"] = o.clients;
  j["nodes"] = o.nodes;
  j["entries_per_commit"] = dp.entries_per_commit;
  std::vector<double> p50, p99, p999;
  auto commits_before = dp.stats()["histograms"]["commit_latency_ms"];
  for (int r = 0; r < o.reps; ++r) {
    auto [lat, achieved] =
      dp.offer_measured("replicated", 0.5 * cps, o.seconds, o.warmup, 1000 * r + 7);
    p50.push_back(quantile(lat, 0.5));
    p99.push_back(quantile(lat, 0.99));
    p999.push_back(quantile(lat, 0.999));
  }
  j["grant_at_50"] = {{"p50_ms", median(p50)}, {"p99_ms", median(p99)},
                      {"p999_ms", median(p999)},
                      {"offered_per_s", 0.5 * cps}};
  note("replicated: load 50%%: p50 %.3f ms, p99 %.3f ms, p99.9 %.3f ms",
       median(p50), median(p99), median(p999));
  // Where a grant's time goes: from the supervisor's proposal to raft's
  // commit, over the half-load runs.
  j["commit_latency_at_50"] = histogram_delta(
    commits_before, dp.stats()["histograms"]["commit_latency_ms"],
    "replicated: proposal to commit at 50%");
  // A plain oracle could be a one-member group instead of keeping its own
  // RocksDB log: the same cycle through a group of one, for the comparison
  // with `durable` (bench.cpp puts the two side by side).
  check_stop();
  {
    durable_pool one{"replicated-1", o.nodes, o.pool, 1, o.raft_snapshot_threshold,
                     -1, o.caf_moderate_polls};
    check_stop();
    // Windows of at least 1.5 s: the group snapshots about every second at
    // these rates, and CI runs (beside other tests) saw 0.5 s windows with
    // no cycle at all, sometimes two of three.
    auto s1 = one.saturate(o.clients, o.reps, std::max(o.seconds, 1.5), o.warmup);
    j["one_member"] = {{"cycles_per_s", median(s1)},
                       {"cycles_per_s_reps", s1},
                       {"entries_per_commit", one.entries_per_commit}};
    note("replicated: %.0f cycles/s at saturation with one member",
         median(s1));
  }
  return j;
}

// -------------------------------------------------------------------- scale

nlohmann::json scale_point(const options& o, uint32_t nodes) {
  durable_pool dp{"scale", nodes, o.pool};
  check_stop();
  auto sat = dp.saturate(o.clients, o.reps, o.seconds, o.warmup);
  nlohmann::json j;
  j["nodes"] = nodes;
  j["cycles_per_s"] = median(sat);
  j["cycles_per_s_reps"] = sat;
  j["bytes_per_node"] =
    static_cast<double>(dp.rss_after - dp.rss_before) / nodes;
  j["bytes_per_node_untrimmed"] =
    static_cast<double>(dp.rss_untrimmed - dp.rss_before) / nodes;
  j["rss_before_mb"] = dp.rss_before / 1048576.0;
  j["rss_after_mb"] = dp.rss_after / 1048576.0;
  j["admit_s"] = dp.admit_s;
  return j;
}

nlohmann::json scale(const options& o) {
  // Every size in a fresh process, so that memory freed by the sections
  // before it cannot hide the growth.
  nlohmann::json out = nlohmann::json::array();
  for (auto n : o.scale_nodes) {
    auto dir = make_temp_dir("bench-scale-out");
    auto log = dir + "/out";
    std::vector<std::string> args{
      "bench",   "--scale-point",           std::to_string(n),
      "--reps",  std::to_string(o.reps),    "--seconds",
      std::to_string(o.seconds),            "--clients",
      std::to_string(o.clients),            "--json"};
    for (auto& [k, v] : o.pool_flags) {
      auto flag = k;
      std::replace(flag.begin(), flag.end(), '_', '-');
      args.push_back("--" + flag);
      args.push_back(v);
    }
    child_process run{args, log, bench_child(self_exe())};
    auto st = run.finish(std::chrono::minutes(15), stop_requested);
    std::ifstream in{log};
    std::string line, last;
    while (std::getline(in, line))
      if (!line.empty() && line[0] == '{')
        last = line;
    remove_tree(dir);
    check_stop();
    if (st != 0 || last.empty())
      throw std::runtime_error("scale: the run with " + std::to_string(n)
                               + " nodes failed (status "
                               + std::to_string(st) + ")");
    auto j = nlohmann::json::parse(last);
    note("scale: %u nodes: %.0f cycles/s, %.0f bytes/node", n,
         j["cycles_per_s"].get<double>(), j["bytes_per_node"].get<double>());
    out.push_back(j);
  }
  return out;
}

// ------------------------------------------------------------------- remote

namespace {

/// Clients of a whole oracle: submit sessions (one task each) through the
/// session queue and count the nodes that pass their re-validation.
struct remote_state {
  caf::actor sessions;
  std::shared_ptr<sink> out;
  std::unordered_map<std::string, int64_t> waiting;
  std::unordered_set<std::string> mine;  // sessions not ended yet
  std::unordered_set<std::string> revalidating;
  uint64_t next = 0;
  bool closed = false;
  static inline const char* name = "bench_remote_client";
};

using remote_ptr = caf::stateful_actor<remote_state>*;

void remote_submit(remote_ptr self) {
  auto sid = "r" + std::to_string(self->state.next++);
  self->state.waiting.emplace(sid, now_ns());
  self->state.mine.insert(sid);
  auto out = self->state.out;
  self->request(self->state.sessions, caf::infinite, submit_atom::value,
                submit_cmd(sid).submit_session().SerializeAsString())
    .then([](accepted_atom) {}, [out](caf::error&) { ++out->refused; });
}

caf::behavior remote_client(remote_ptr self, caf::actor sessions,
                            std::shared_ptr<sink> out) {
  self->state.sessions = sessions;
  self->state.out = out;
  return {
    [=](go_atom, uint32_t clients) {
      self->state.closed = true;
      for (uint32_t i = 0; i < clients; ++i)
        remote_submit(self);
    },
    [=](halt_atom) { self->state.closed = false; },
    [=](inflight_atom) -> uint64_t {
      return self->state.mine.size() + self->state.revalidating.size();
    },
    [=](events_atom, const event_batch& batch) {
      auto& st = self->state;
      if (!batch)
        return;
      auto t = now_ns();
      for (auto& e : batch->events()) {
        if (e.has_node_reserved()) {
          auto i = st.waiting.find(e.node_reserved().session_id());
          if (i != st.waiting.end()) {
            ++st.out->granted;
            if (st.out->record) {
              std::lock_guard<std::mutex> g{st.out->mx};
              st.out->latencies_ms.push_back((t - i->second) / 1e6);
            }
            st.waiting.erase(i);
          }
        } else if (e.has_test_requested()) {
          if (e.test_requested().kind() == pb::REVALIDATION)
            st.revalidating.insert(e.test_requested().node_id());
        } else if (e.has_test_finished()) {
          auto& f = e.test_finished();
          if (st.revalidating.erase(f.node_id()) && f.passed())
            ++st.out->cycles;
          else if (f.passed())
            ++st.out->admitted;
        } else if (e.has_session_ended()) {
          if (st.mine.erase(e.session_ended().session_id()) && st.closed)
            remote_submit(self);
        }
      }
    },
  };
}

} // namespace

nlohmann::json remote(const options& o) {
  auto dir = make_temp_dir("bench-remote");
  auto log = dir + "/miner.log";
  actor_config cfg;
  auto sys = std::make_unique<caf::actor_system>(cfg);
  supervisor_config sc;
  sc.pool = o.pool;
  sc.storage = open_store(dir + "/data");
  sc.sync = true;
  auto h = start_oracle(*sys, sc);
  auto port = sys->middleman().publish(h.gateway, 0, "127.0.0.1", true);
  if (!port) {
    stop_oracle(h);
    throw std::runtime_error("remote: cannot listen on 127.0.0.1: "
                             + sys->render(port.error()));
  }
  auto out = std::make_shared<sink>();
  auto cl = sys->spawn(remote_client, h.sessions, out);
  caf::anon_send(h.supervisor, subscribe_atom::value, cl);
  child_process miner{{"--log-level", "error", "miner", "--oracle",
                       "127.0.0.1:" + std::to_string(*port), "--nodes",
                       std::to_string(o.remote_nodes), "--id-prefix", "rm"},
                      log, bench_child(self_exe())};
  nlohmann::json j;
  std::string error;
  bool stopped = false;
  try {
    auto t0 = clock::now();
    while (out->admitted < o.remote_nodes) {
      check_stop();
      if (seconds_since(t0) > 120)
        throw std::runtime_error("remote: only "
                                 + std::to_string(out->admitted.load()) + " of "
                                 + std::to_string(o.remote_nodes)
                                 + " miner nodes passed admission in 120 s");
      if (!miner.running())
        throw std::runtime_error("remote: the miner process exited (see "
                                 + log + ")");
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    caf::anon_send(cl, go_atom::value, o.remote_clients);
    sleep_unless_stopped(o.warmup);
    out->take_latencies();
    out->record = true;
    auto xs = repeat(o.reps, [&](int) {
      auto c0 = out->cycles.load();
      auto t1 = clock::now();
      sleep_unless_stopped(o.seconds);
      return (out->cycles.load() - c0) / seconds_since(t1);
    });
    out->record = false;
    caf::anon_send(cl, halt_atom::value);
    auto lat = out->take_latencies();
    j["cycles_per_s"] = median(xs);
    j["cycles_per_s_reps"] = xs;
    j["nodes"] = o.remote_nodes;
    j["clients"] = o.remote_clients;
    j["grant_p50_ms"] = quantile(lat, 0.5);
    j["grant_p99_ms"] = quantile(lat, 0.99);
    note("remote: %.0f cycles/s (%u miner nodes, %u clients)",
         j["cycles_per_s"].get<double>(), o.remote_nodes, o.remote_clients);
  } catch (const std::exception& e) {
    error = e.what();
  } catch (const interrupted&) {
    stopped = true;
  }
  end_child(miner, std::chrono::seconds(10));
  caf::anon_send_exit(cl, caf::exit_reason::user_shutdown);
  stop_oracle(h);
  {
    caf::scoped_actor self{*sys};
    self->wait_for(h.supervisor);
  }
  sys.reset();
  if (!error.empty())
    throw std::runtime_error(error);
  remove_tree(dir);
  if (stopped)
    throw interrupted{};
  return j;
}

} // namespace nodepool::cli::bench
