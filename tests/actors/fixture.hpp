#pragma once

// Deterministic actor tests: CAF's test_coordinator runs every actor on the
// test's thread; nothing happens until run(), and timers fire only when the
// test advances the clock.
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <caf/all.hpp>
#include <gtest/gtest.h>

#include "actors/config.hpp"
#include "actors/local.hpp"
#include "actors/node.hpp"
#include "actors/oracle.hpp"
#include "pool_state.hpp"
#include "recovery.hpp"

namespace nodepool::testing {

/// What a probe actor heard from the oracle, decoded.
struct probe_log {
  std::vector<pb::OracleMsg> received;
  std::vector<std::string> refusal_codes() const {
    std::vector<std::string> out;
    for (auto& m : received)
      if (m.has_refusal())
        out.push_back(m.refusal().code());
    return out;
  }
};

/// A command for the supervisor, as the oracle's actors build it
/// (local.hpp): a node's registration (model "m") or a new session for
/// that model. Each is sent once (the supervisor takes its content).
inline local_command registration(const std::string& node) {
  return make_command([&](pb::Command& c) {
    c.mutable_register_()->set_node_id(node);
    c.mutable_register_()->add_models("m");
  });
}
inline local_command submission(const std::string& session) {
  return make_command([&](pb::Command& c) {
    c.mutable_submit_session()->set_session_id(session);
    c.mutable_submit_session()->set_model("m");
  });
}

class actor_test : public ::testing::Test {
protected:
  actor_test() {
    cfg_.testing();
    sys_ = std::make_unique<caf::actor_system>(cfg_);
    sched_ = &dynamic_cast<caf::scheduler::test_coordinator&>(sys_->scheduler());
  }

  ~actor_test() override {
    sched_->run();
    for (auto& a : spawned_)
      caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
    sched_->run();
  }

  /// Pool parameters small enough that whole lifecycles fit in a few
  /// simulated seconds.
  static params fast_params() {
    params p;
    p.test_deadline_ms = 500;
    p.task_phase_timeout_ms = 200;
    p.heartbeat_interval_ms = 100;
    p.heartbeat_timeout_ms = 500;
    p.quarantine_backoff_ms = 1000;
    p.quarantine_backoff_max_ms = 4000;
    p.tick_interval_ms = 50;
    p.tasks_before_release = 3;
    p.idle_threshold_ms = 5000;
    return p;
  }

  oracle_handles start(params p, std::shared_ptr<store> st = nullptr) {
    if (!st)
      st = std::shared_ptr<store>(make_memory_store());
    store_ = st;
    supervisor_config sc;
    sc.pool = std::move(p);
    sc.storage = st;
    sc.sim_time = true;
    sc.async_snapshots = async_snapshots_;  // off: deterministic under the test scheduler
    sc.admission = admission_;
    sc.tests = tests_;
    sc.max_batch_commands = max_batch_commands_;
    sc.max_backlog = max_backlog_;
    sc.kept_copy_from = kept_copy_from_;
    sc.copy_ahead_leave = copy_ahead_leave_;
    sc.clock_skew_ms = clock_skew_;
    sc.observer = observer_;
    oracle_ = start_oracle(*sys_, sc);
    for (auto& a : {oracle_.supervisor, oracle_.gateway, oracle_.validator,
                    oracle_.sessions})
      spawned_.push_back(a);
    sched_->run();
    return oracle_;
  }

  caf::actor add_node(const std::string& id, behaviour b = behaviour::healthy,
                      uint64_t seed = 1) {
    node_config nc;
    nc.id = id;
    nc.kind = b;
    nc.seed = seed;
    return add_node(std::move(nc));
  }

  /// A node actor of any configuration, connected to the oracle.
  caf::actor add_node(node_config nc) {
    nc.deadline_hint_ms = 500;
    auto n = spawn_node(*sys_, std::move(nc), oracle_.gateway);
    spawned_.push_back(n);
    return n;
  }

  /// Runs every pending message, then advances the clock in `step`s for
  /// `total`, running after each step.
  void run_for(std::chrono::milliseconds total,
               std::chrono::milliseconds step = std::chrono::milliseconds(10)) {
    sched_->run();
    for (auto t = std::chrono::milliseconds(0); t < total; t += step) {
      sched_->advance_time(step);
      sched_->run();
    }
  }

  /// Sends a request and runs until its answer is in. Returns the text
  /// answer, or "error:<code>" for a refusal / error.
  template <class... Ts>
  std::string ask(const caf::actor& whom, Ts... xs) {
    auto out = std::make_shared<std::string>("<no answer>");
    auto sys = sys_.get();
    auto asker = sys_->spawn([=](caf::event_based_actor* self) {
      self->request(whom, caf::infinite, xs...)
        .then([=](const std::string& s) { *out = s; },
              [=](caf::error& e) {
                *out = "error:" + read_refusal(*sys, e).first;
              });
    });
    sched_->run();
    return *out;
  }

  /// Submits a session; returns "accepted" or "error:<code>".
  std::string submit(const pb::SubmitSession& s) {
    auto out = std::make_shared<std::string>("<no answer>");
    auto sys = sys_.get();
    auto whom = oracle_.sessions;
    auto bytes = s.SerializeAsString();
    sys_->spawn([=](caf::event_based_actor* self) {
      self->request(whom, caf::infinite, submit_atom::value, bytes)
        .then([=](accepted_atom) { *out = "accepted"; },
              [=](caf::error& e) {
                *out = "error:" + read_refusal(*sys, e).first;
              });
    });
    sched_->run();
    return *out;
  }

  static pb::SubmitSession session_req(const std::string& id,
                                       uint32_t max_tasks = 3,
                                       uint32_t redundancy = 1) {
    pb::SubmitSession s;
    s.set_session_id(id);
    s.set_model("llama-3-8b");
    s.set_min_nodes(1);
    s.set_max_nodes(std::max<uint32_t>(redundancy, 1));
    s.set_redundancy(redundancy);
    s.set_max_tasks(max_tasks);
    return s;
  }

  /// What a miner sends to register node `node` for `model`.
  static std::string miner_registration(const std::string& node,
                                        const std::string& model) {
    pb::MinerMsg m;
    m.set_node_id(node);
    m.mutable_register_()->set_node_id(node);
    m.mutable_register_()->add_models(model);
    return m.SerializeAsString();
  }

  /// The supervisor's current state.
  pool_state state() {
    pb::Snapshot snap;
    snap.ParseFromString(ask(oracle_.supervisor, state_atom::value));
    pool_state ps{params_for_state_};
    ps.restore(snap);
    return ps;
  }

  /// A session's state: live in the pool, else as archived (unspecified
  /// when neither knows it).
  pb::SessionState session_state(const std::string& id) {
    auto ps = state();
    if (auto* r = ps.session(id))
      return r->state();
    std::optional<pb::SessionRecord> a;
    if (store_->archived(id, a).ok() && a)
      return a->state();
    return pb::SESSION_STATE_UNSPECIFIED;
  }

  /// The code of the refusal an actor stopped with (a node that left), ""
  /// while it runs.
  std::string exit_code_of(const caf::actor& a) {
    auto why = std::make_shared<std::string>();
    auto sys = sys_.get();
    auto watcher = sys_->spawn([=](caf::event_based_actor* self) -> caf::behavior {
      self->monitor(a);
      self->set_down_handler([=](caf::down_msg& dm) {
        *why = read_refusal(*sys, dm.reason).first;
        self->quit();
      });
      return {[](int) {}};
    });
    spawned_.push_back(watcher);
    sched_->run();
    return *why;
  }

  /// A probe: an actor that sends raw bytes to the gateway as a miner would
  /// and records what the oracle answers.
  caf::actor probe(std::shared_ptr<probe_log> log) {
    auto a = sys_->spawn([=](caf::event_based_actor* self) -> caf::behavior {
      return {
        [=](oracle_atom, const std::string& bytes) {
          pb::OracleMsg m;
          m.ParseFromString(bytes);
          // Every refusal carries its code both ways: the enum miners
          // branch on, and its text for miners of before it.
          if (m.has_refusal()) {
            EXPECT_NE(m.refusal().kind(), pb::REFUSAL_NONE) << m.ShortDebugString();
            EXPECT_EQ(refusal_name(m.refusal().kind()), m.refusal().code())
              << m.ShortDebugString();
          }
          log->received.push_back(m);
        },
        [=](send_atom, const std::string& bytes) {
          self->send(oracle_.gateway, miner_atom::value, bytes);
        },
      };
    });
    spawned_.push_back(a);
    return a;
  }

  /// A gateway over `sup` (a stand-in for the oracle's supervisor) as the
  /// oracle's gateway, and a probe miner that has registered `node` for
  /// `model` through it; returns what the probe hears.
  std::shared_ptr<probe_log> register_through_gateway_over(
    caf::actor sup, const std::string& node, const std::string& model) {
    oracle_.gateway = spawn_gateway(*sys_, sup, fast_params(), true);
    spawned_.push_back(oracle_.gateway);
    auto log = std::make_shared<probe_log>();
    caf::anon_send(probe(log), send_atom::value, miner_registration(node, model));
    sched_->run();
    return log;
  }

  actor_config cfg_{false};
  std::unique_ptr<caf::actor_system> sys_;
  caf::scheduler::test_coordinator* sched_;
  oracle_handles oracle_;
  std::shared_ptr<store> store_;
  std::vector<caf::actor> spawned_;
  params params_for_state_;
  admission_policy admission_;  // who start() lets register
  test_config tests_;  // the bank and secret of the next start()
  size_t max_batch_commands_ = supervisor_config{}.max_batch_commands;
  size_t max_backlog_ = supervisor_config{}.max_backlog;
  size_t kept_copy_from_ = supervisor_config{}.kept_copy_from;
  size_t copy_ahead_leave_ = supervisor_config{}.copy_ahead_leave;
  bool async_snapshots_ = false;  // the next start()'s; see supervisor_config
  std::shared_ptr<int64_t> clock_skew_;  // the next start()'s supervisor's
  decltype(supervisor_config::observer) observer_;  // likewise
};

} // namespace nodepool::testing
