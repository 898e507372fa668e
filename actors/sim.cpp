// The seeded simulation (see sim.hpp). One run:
//   - an oracle (supervisor, gateway, validator, session queue) over a store;
//   - 5..10 node actors, each behind a `link` actor that stands for its
//     network connection and drops, delays, duplicates and reorders messages
//     in both directions;
//   - clients submitting sessions, retrying those whose answer they missed;
//   - a fault schedule: miners killed, restarted and silenced, the oracle
//     crashed at a random message (or right after a durable write, before
//     anyone heard of it) and restarted from its store, power cuts (the
//     memory store loses what was not synced, and a cut during a write
//     loses that batch whole), clock jumps.
// Faults stop after `fault_window`; the pool then has `settle` to finish.
// I1-I5 are checked after every command the supervisor applies; at the end
// every acknowledged session must be stored and every stored session ended,
// and the stored history must replay without a violation.
#include "actors/sim.hpp"
#include "actors/sim_parts.hpp"

#include <filesystem>
#include <optional>
#include <sstream>

#include <caf/all.hpp>
#include <unistd.h>

#include "actors/config.hpp"
#include "actors/node.hpp"
#include "actors/oracle.hpp"
#include "pool_state.hpp"
#include "random.hpp"
#include "recovery.hpp"

namespace nodepool {

namespace {

using namespace sim_parts;
using namespace std::chrono_literals;
using ms = std::chrono::milliseconds;

constexpr int step_ms = 20;
constexpr int fault_steps = 500;    // faults during the first 10 s
constexpr int submit_steps = 600;   // sessions arrive during the first 12 s
constexpr int total_steps = 1000;   // then 8 s more of quiet
constexpr int settle_steps = 240;   // and 12 s more in 50 ms steps

/// A store that says it wrote session submissions and did not (see
/// sim_options::lossy_store).
class lossy_store : public forwarding_store {
public:
  using forwarding_store::forwarding_store;
  status append(const std::vector<pb::LogEntry>& entries,
                const std::vector<pb::SessionRecord>& archived,
                bool sync) override {
    auto kept = entries;  // a submission becomes a tick in the same place
    for (auto& e : kept)
      if (e.command().has_submit_session())
        e.mutable_command()->mutable_tick();
    return inner_->append(kept, archived, sync);
  }
  using forwarding_store::append;
  status save_snapshot_bytes(uint64_t, std::string) override { return status{}; }
};

class simulation {
public:
  simulation(uint64_t seed, const sim_options& opt)
    : seed_(seed), opt_(opt), rng_(mix64(seed ^ 0x5157ull)),
      clock_rng_(mix64(seed ^ 0xc10cull)) {
    cfg_.testing();
    sys_ = std::make_unique<caf::actor_system>(cfg_);
    sched_ = &dynamic_cast<caf::scheduler::test_coordinator&>(sys_->scheduler());
    log_->tracing = opt.trace;
    res_.seed = seed;
  }

  ~simulation() {
    shutdown();
    if (!dir_.empty()) {
      store_.reset();
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
    }
  }

  sim_result run() {
    draw_parameters();
    if (!open_store())
      return finish();
    start_oracle_now();
    spawn_miners();
    int crashes = 0;
    for (int step = 0; step < total_steps && ok(); ++step) {
      log_->now = static_cast<int64_t>(step) * step_ms;
      if (step == fault_steps) {
        net_->on = false;
        log_->note("faults_end");
      }
      if (step < submit_steps && submitted_ < sessions_wanted_
          && rng_.chance(0.06))
        submit(next_session());
      if (step % 25 == 0)
        resubmit_unknown();
      std::optional<uint64_t> crash_at;
      if (step < fault_steps) {
        inject_miner_faults();
        if (oracle_up_ && crashes < 2 && rng_.chance(0.0025)) {
          ++crashes;
          crash_at = 1 + rng_.below(8);
        }
        if (oracle_up_ && crashes < 2 && !*crash_armed_
            && rng_.chance(0.0025)) {
          ++crashes;
          *crash_armed_ = true;  // the next group commit dies after its write
          // ... and, half the time, the machine with it, mid-write.
          *tear_armed_ = rng_.chance(0.5);
        }
        if (oracle_up_ && crashes < 2 && rng_.chance(0.0015)) {
          ++crashes;
          kill_oracle("power cut");
          cut_power(false);
        }
        if (rng_.chance(0.002)) {
          auto d = 1000 + static_cast<int64_t>(rng_.below(5000));
          // Half the time the whole machine pauses (every clock moves on
          // together); half the time the oracle's own clock jumps ahead of
          // the miners' and clients' (its deadlines come early). Drawn
          // apart: the rest of the schedule stays what it was.
          if (clock_rng_.chance(0.5)) {
            log_->note("clock_jump", "oracle clock forward " + std::to_string(d) + "ms");
            *skew_ += d;
          } else {
            log_->note("clock_jump", "forward " + std::to_string(d) + "ms");
            sched_->advance_time(ms(d));
          }
        }
        if (rng_.chance(0.002)) {
          auto d = 500 + static_cast<int64_t>(rng_.below(3000));
          log_->note("clock_jump", "oracle clock back " + std::to_string(d) + "ms");
          *skew_ -= d;
        }
      }
      if (step % 100 == 50)
        restore_miners();
      if (!oracle_up_ && down_steps_-- <= 0)
        restart_oracle();
      sched_->advance_time(ms(step_ms));
      drain(crash_at);
    }
    // Quiet: every miner that can come back does, and the pool settles.
    if (ok()) {
      net_->on = false;
      if (!oracle_up_)
        restart_oracle();
      restore_miners();
      for (int i = 0; i < settle_steps && ok(); ++i) {
        sched_->advance_time(ms(50));
        drain(std::nullopt);
        if (!oracle_up_)
          restart_oracle();
      }
    }
    if (ok())
      verify();
    return finish();
  }

private:
  bool ok() const { return res_.violations.empty(); }

  void violation(std::string inv, std::string detail) {
    if (!ok())
      return;
    res_.violations.push_back({seed_, std::move(inv), std::move(detail)});
  }

  void draw_parameters() {
    auto d = draw_run(rng_, seed_, *net_, true);
    p_ = d.pool;
    if (opt_.tests_in_flight > 0)
      p_.max_tests_in_flight = opt_.tests_in_flight;
    sessions_wanted_ = d.sessions_wanted;
  }


  bool open_store() {
    if (opt_.store == "memory") {
      store_ = std::shared_ptr<store>(make_memory_store());
      if (opt_.lossy_store)
        store_ = std::make_shared<lossy_store>(store_);
      return true;
    }
    dir_ = opt_.data_root + "/nodepool-sim-" + std::to_string(::getpid()) + "-"
           + std::to_string(seed_);
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
    return reopen_store();
  }

  bool reopen_store() {
    if (dir_.empty())
      return true;
    store_.reset();
    status s;
    auto db = open_rocksdb_store(dir_, s);
    if (!db) {
      violation("harness", "cannot open " + dir_ + ": " + s.error);
      return false;
    }
    store_ = std::shared_ptr<store>(std::move(db));
    return true;
  }

  void start_oracle_now() {
    supervisor_config sc;
    sc.pool = p_;
    sc.storage = store_;
    sc.sim_time = true;
    // With the memory store the machine's power is cut too, so every group
    // commit is synced; a RocksDB directory sees process crashes only.
    sc.sync = opt_.store == "memory" && opt_.sync;
    sc.clock_skew_ms = skew_;
    auto armed = crash_armed_;
    auto log = log_;
    auto died = supervisor_died_;
    sc.crash_after_write = [armed, log, died] {
      if (!*armed)
        return false;
      *armed = false;
      *died = true;
      log->note("oracle_crash_after_write");
      return true;
    };
    sc.async_snapshots = false;  // a seed must replay the same
    // The copy kept between snapshots, however small the pool: every crash
    // then loads a snapshot made from it, and the final replay of the store
    // must still give the live state.
    sc.kept_copy_from = 0;
    // Some of each snapshot's copying done ahead, after group commits, and
    // some left to its stop: both ways in every seed.
    sc.copy_ahead_per_commit = 4;
    sc.copy_ahead_leave = 2;
    sc.observer = [this](const pool_state& ps, const pb::Command& cmd,
                         const apply_result& r) {
      ++res_.commands;
      if (!ok())
        return;
      // The records the command touched after every command, the whole
      // state every 64th (and in verify()).
      auto vs = res_.commands % 64 == 0 ? ps.check_invariants()
                                        : ps.check_after(cmd, r);
      if (res_.commands == opt_.fail_at_command)
        vs.push_back({"I4", "broken on purpose (fail_at_command)"});
      if (!vs.empty())
        violation(vs.front().invariant,
                  vs.front().detail + " after " + cmd.ShortDebugString());
      // Tests of nodes without the model, and how many they passed.
      for (auto& e : r.events)
        if (e.has_node_forgotten())
          ++res_.nodes_forgotten;
        else if (e.has_test_finished())
          for (auto& m : miners_)
            if (m.id == e.test_finished().node_id()
                && (m.kind == behaviour::solver || m.kind == behaviour::copycat)) {
              ++res_.cheat_tests;
              res_.cheat_passes += e.test_finished().passed() ? 1 : 0;
            }
    };
    oracle_ = start_oracle(*sys_, sc);
    oracle_up_ = true;
    sched_->run();
  }

  void kill_oracle(const std::string& why) {
    for (auto& a : {oracle_.gateway, oracle_.validator, oracle_.sessions,
                    oracle_.supervisor})
      caf::anon_send_exit(a, caf::exit_reason::kill);
    oracle_up_ = false;
    down_steps_ = static_cast<int>(rng_.below(10));
    if (!why.empty())
      log_->note("oracle_crash", why);
  }

  /// The machine loses power: what the store did not sync is gone (the
  /// memory store models this; a RocksDB directory cannot be cut here).
  void cut_power(bool tear_last) {
    if (opt_.store != "memory")
      return;
    auto lost = power_cut(*store_, tear_last);
    log_->note(tear_last ? "power_cut_mid_write" : "power_cut",
               std::to_string(lost) + " entries lost");
  }

  void restart_oracle() {
    sched_->run();  // the dead release what they held (the store among it)
    if (!reopen_store())
      return;
    log_->note("oracle_restart");
    start_oracle_now();
    for (auto& m : miners_)
      if (m.alive && !m.silent)
        connect(m);
  }

  /// Runs every message; a crash due in this step happens after the
  /// `crash_at`-th, a crash after a write right after that write.
  void drain(std::optional<uint64_t> crash_at) {
    uint64_t n = 0;
    while (sched_->try_run_once()) {
      ++n;
      if (*supervisor_died_) {
        *supervisor_died_ = false;
        kill_oracle("");
        if (*tear_armed_) {
          *tear_armed_ = false;
          cut_power(true);
        }
      } else if (crash_at && n == *crash_at && oracle_up_) {
        kill_oracle("after message " + std::to_string(n));
      }
    }
  }

  void spawn_miners() {
    auto n = 5 + rng_.below(6);
    for (size_t i = 0; i < n; ++i) {
      miner_slot m;
      m.id = "m" + std::to_string(i);
      // Any behaviour, the cheats without a model (solver, copycat) too.
      m.kind = i < opt_.healthy_nodes ? behaviour::healthy
                                      : static_cast<behaviour>(rng_.below(8));
      if (m.kind != behaviour::healthy)
        log_->note("behaviour_" + to_string(m.kind), m.id);
      miners_.push_back(m);
    }
    res_.nodes = miners_.size();
    for (auto& m : miners_)
      if (m.kind == behaviour::copycat && !tape_)
        tape_ = std::make_shared<answer_tape>();
    for (auto& m : miners_)
      start_miner(m);
    sched_->run();
  }

  void start_miner(miner_slot& m) {
    auto nc = miner_node(m.id, m.kind, seed_, m.lives++, p_);
    nc.tape = tape_;  // copycats replay what healthy nodes answered (if any)
    m.node = spawn_node(*sys_, std::move(nc),
                        caf::actor{});
    m.alive = true;
    m.silent = false;
    if (oracle_up_)
      connect(m);
  }

  /// A fresh connection from the miner to the current gateway.
  void connect(miner_slot& m) {
    if (m.link)
      caf::anon_send_exit(m.link, caf::exit_reason::kill);
    m.link = spawn_link(*sys_, m.node, oracle_.gateway, m.id, rng_.next(),
                        net_, log_);
    caf::anon_send(m.node, connect_atom::value, m.link);
    m.silent = false;
  }

  void inject_miner_faults() {
    auto& m = miners_[rng_.below(miners_.size())];
    if (m.alive && rng_.chance(0.004)) {
      log_->note("miner_kill", m.id);
      caf::anon_send_exit(m.node, caf::exit_reason::kill);
      m.alive = false;
      return;
    }
    if (m.alive && !m.silent && rng_.chance(0.004)) {
      log_->note("miner_silence", m.id);
      caf::anon_send(m.node, connect_atom::value, caf::actor{});
      m.silent = true;
    }
  }

  /// Dead miners restart (except the `crash` kind, which stays dead) and
  /// silent ones reconnect.
  void restore_miners() {
    if (!oracle_up_)
      return;
    for (auto& m : miners_) {
      if (!m.alive && m.kind != behaviour::crash) {
        log_->note("miner_restart", m.id);
        start_miner(m);
      } else if (m.alive && m.silent) {
        connect(m);
      }
    }
  }

  pb::SubmitSession next_session() {
    return sim_parts::next_session(rng_, submitted_++);
  }


  void submit(const pb::SubmitSession& s) {
    requests_[s.session_id()] = s;
    answers_[s.session_id()] = answer::pending;
    if (!oracle_up_) {
      answers_[s.session_id()] = answer::unknown;
      return;
    }
    auto bytes = s.SerializeAsString();
    auto id = s.session_id();
    auto whom = oracle_.sessions;
    auto answers = answers_ptr_;
    auto* sys = sys_.get();
    if (opt_.deaf_clients) {
      caf::anon_send(whom, submit_atom::value, bytes);
      return;
    }
    sys_->spawn([=](caf::event_based_actor* self) {
      self->request(whom, ms(3000), submit_atom::value, bytes)
        .then([=](accepted_atom) { (*answers)[id] = answer::accepted; },
              [=](caf::error& e) {
                // Already stored (duplicate_session): an earlier try got
                // through and its answer was lost; the client now knows.
                (*answers)[id] = classify_refusal(*sys, e);
              });
    });
  }

  void resubmit_unknown() {
    if (!oracle_up_)
      return;
    for (auto& [id, a] : answers_)
      if (a == answer::unknown) {
        log_->note("client_retry", id);
        submit(requests_[id]);
      }
  }

  void verify() {
    auto snap_bytes = std::make_shared<std::string>();
    auto whom = oracle_.supervisor;
    sys_->spawn([=](caf::event_based_actor* self) {
      self->request(whom, caf::infinite, state_atom::value)
        .then([=](const std::string& s) { *snap_bytes = s; });
    });
    sched_->run();
    pb::Snapshot snap;
    if (snap_bytes->empty() || !snap.ParseFromString(*snap_bytes)) {
      violation("oracle_down", "the supervisor is not running at the end");
      return;
    }
    pool_state ps;
    ps.restore(snap);
    // Every submission has its final answer after the quiet: accepted, or
    // refused for a reason the client is told (a pool that answered none,
    // or answered "try again" for good, would otherwise pass).
    for (auto& [id, a] : answers_)
      if (a == answer::unknown || a == answer::pending)
        violation("liveness", "session " + id + " never got an answer");
    for (auto& [id, a] : answers_) {
      if (a != answer::accepted)
        continue;
      ++res_.accepted;
      std::optional<pb::SessionRecord> ended;
      if (auto s = store_->archived(id, ended); !s.ok())
        violation("history", "archive lookup of " + id + ": " + s.error);
      if (ps.session(id) || ended)
        continue;
      ++res_.lost;
      violation("lost", "session " + id + " was acknowledged and is not stored");
    }
    store_->scan_archive(0, [&](const pb::SessionRecord& r) {
      ++(r.state() == pb::COMPLETED ? res_.completed : res_.failed);
      return true;
    });
    for (auto& rec : snap.sessions()) {
      if (answers_[rec.id()] == answer::accepted)
        ++res_.lost;
      violation("liveness", "session " + rec.id() + " is still "
                              + to_string(rec.state()) + " after "
                              + std::to_string(settle_steps * 50) + "ms of quiet");
    }
    if (auto vs = ps.check_invariants(); !vs.empty())
      violation(vs.front().invariant, vs.front().detail + " at the end");
    // The store alone must give back exactly the live state.
    pool_state replayed;
    recovered info;
    if (auto s = recover(*store_, replayed, info); !s.ok()) {
      violation("history", "the store does not load: " + s.error);
      return;
    }
    auto a = replayed.snapshot();
    a.set_last_index(info.last_index);
    if (a.SerializeAsString() != snap.SerializeAsString())
      violation("history", "replaying the store gives another state than the "
                           "live one (last index "
                             + std::to_string(info.last_index) + " vs "
                             + std::to_string(snap.last_index()) + ")");
    auto hist = check_history(*store_);
    if (!hist.load_error.empty())
      violation("history", hist.load_error);
    else if (!hist.violations.empty())
      violation("history", "entry " + std::to_string(hist.violations.front().first)
                             + ": " + hist.violations.front().second.invariant
                             + " " + hist.violations.front().second.detail);
  }

  sim_result finish() {
    res_.faults = log_->counts;
    res_.faults.erase("faults_end");
    res_.submitted = submitted_;
    if (opt_.trace)
      res_.trace = log_->lines.str();
    return res_;
  }

  void shutdown() {
    if (!sys_)
      return;
    sched_->run();
    for (auto& m : miners_) {
      if (m.node)
        caf::anon_send_exit(m.node, caf::exit_reason::kill);
      if (m.link)
        caf::anon_send_exit(m.link, caf::exit_reason::kill);
    }
    if (oracle_up_)
      kill_oracle("");
    sched_->run();
  }

  uint64_t seed_;
  sim_options opt_;
  seeded_rng rng_;
  seeded_rng clock_rng_;  // which way a forward clock jump goes
  actor_config cfg_{false};
  std::unique_ptr<caf::actor_system> sys_;
  caf::scheduler::test_coordinator* sched_ = nullptr;
  params p_;
  std::shared_ptr<store> store_;
  std::string dir_;
  oracle_handles oracle_;
  bool oracle_up_ = false;
  int down_steps_ = 0;
  std::shared_ptr<fault_log> log_ = std::make_shared<fault_log>();
  std::shared_ptr<net_faults> net_ = std::make_shared<net_faults>();
  std::shared_ptr<bool> crash_armed_ = std::make_shared<bool>(false);
  std::shared_ptr<bool> tear_armed_ = std::make_shared<bool>(false);
  std::shared_ptr<bool> supervisor_died_ = std::make_shared<bool>(false);
  std::shared_ptr<int64_t> skew_ = std::make_shared<int64_t>(0);
  std::vector<miner_slot> miners_;
  std::shared_ptr<answer_tape> tape_;  // only when a miner is a copycat
  uint64_t sessions_wanted_ = 0;
  uint64_t submitted_ = 0;
  std::map<std::string, pb::SubmitSession> requests_;
  std::shared_ptr<std::map<std::string, answer>> answers_ptr_ =
    std::make_shared<std::map<std::string, answer>>();
  std::map<std::string, answer>& answers_ = *answers_ptr_;
  sim_result res_;
};

} // namespace

sim_result run_sim(uint64_t seed, const sim_options& opt) {
  simulation s{seed, opt};
  return s.run();
}

std::string sim_repro_command(uint64_t seed, const sim_options& opt) {
  auto cmd = "nodepool sim --seeds " + std::to_string(seed) + ".."
             + std::to_string(seed) + " --trace";
  if (opt.oracles > 1)
    cmd += " --oracles " + std::to_string(opt.oracles);
  if (opt.store != "memory")
    cmd += " --store " + opt.store;
  if (opt.healthy_nodes != sim_options{}.healthy_nodes)
    cmd += " --healthy " + std::to_string(opt.healthy_nodes);
  if (opt.lossy_store)
    cmd += " --lossy-store";
  if (!opt.sync)
    cmd += " --no-sync";
  if (opt.lying_log)
    cmd += " --lying-log";
  if (!opt.raft_guard)
    cmd += " --no-raft-guard";
  if (!opt.restarts)
    cmd += " --no-restarts";
  if (opt.lying_disk)
    cmd += " --lying-disk";
  if (opt.tests_in_flight > 0)
    cmd += " --tests-in-flight " + std::to_string(opt.tests_in_flight);

  return cmd;
}

} // namespace nodepool
