// Commands a busy pool sees, drawn from what the pool holds now: nodes
// register and answer their tests, clients submit sessions, sessions run
// their tasks and end, time passes. Seeded; used where a test needs a
// realistic, valid stream of commands (the replication tests).
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "params.hpp"
#include "pool_state.hpp"

namespace nodepool::testing {

class pool_workload {
public:
  explicit pool_workload(uint64_t seed, size_t max_nodes = 12)
      : rng_(seed), max_nodes_(max_nodes) {}

  /// Parameters the stream is meant for (no heartbeats needed).
  static params pool_params() {
    params p;
    p.heartbeat_timeout_ms = 1'000'000'000;
    return p;
  }

  /// The first command of a fresh pool.
  static pb::Command configure() {
    pb::Command c;
    c.mutable_configure()->set_params_json(to_json(pool_params()));
    return c;
  }

  /// One command that makes sense against `p` (it may still be refused,
  /// e.g. a session for which no node is free yet stays queued).
  pb::Command next(const pool_state& p) {
    pb::Command c;
    auto roll = pick(100);
    if (p.nodes().size() < max_nodes_ && roll < 15) {
      auto* r = c.mutable_register_();
      auto id = "n" + std::to_string(next_node_++);
      r->set_node_id(id);
      r->set_public_key("key-" + id);
      r->add_models("m");
      return c;
    }
    if (roll < 45) {
      // A node under test answers it, nine times in ten correctly.
      for (auto& [id, n] : p.nodes())
        if ((n.state() == pb::TESTING || n.state() == pb::REVALIDATING)
            && pick(3) == 0) {
          auto* t = c.mutable_test_result();
          t->set_node_id(id);
          t->set_test_id(n.test_id());
          t->set_total(5);
          t->set_correct(pick(10) == 0 ? 0 : 5);
          return c;
        }
    }
    if (roll < 75) {
      // An active session finishes a task, or ends.
      for (auto& [id, s] : p.sessions())
        if (s.state() == pb::ACTIVE && pick(2) == 0) {
          if (s.tasks_done() >= 2 || pick(4) == 0) {
            c.mutable_end_session()->set_session_id(id);
            c.mutable_end_session()->set_failed(pick(10) == 0);
            return c;
          }
          auto* t = c.mutable_task_done();
          t->set_session_id(id);
          t->set_task_no(s.tasks_done() + 1);
          for (auto& nid : s.nodes()) {
            auto* o = t->add_outcomes();
            o->set_node_id(nid);
            o->set_outcome(pick(8) == 0 ? pb::OUTLIER : pb::OK);
            o->set_latency_ms(static_cast<uint32_t>(50 + pick(100)));
          }
          return c;
        }
    }
    if (roll < 92) {
      auto* s = c.mutable_submit_session();
      s->set_session_id(next_session_id());
      s->set_model("m");
      s->set_min_nodes(1);
      s->set_max_nodes(1 + static_cast<uint32_t>(pick(2)));
      s->set_max_tasks(3);
      s->set_client("workload");
      return c;
    }
    if (roll < 95 && !p.nodes().empty()) {
      // A node goes away now and then.
      auto it = p.nodes().begin();
      std::advance(it, static_cast<long>(pick(p.nodes().size())));
      c.mutable_node_down()->set_node_id(it->first);
      c.mutable_node_down()->set_reason("workload");
      return c;
    }
    c.mutable_tick();
    return c;
  }

  std::string next_session_id() {
    return "s" + std::to_string(next_session_++);
  }

  uint64_t pick(uint64_t n) {
    return std::uniform_int_distribution<uint64_t>{0, n - 1}(rng_);
  }

private:
  std::mt19937_64 rng_;
  size_t max_nodes_;
  uint64_t next_node_ = 0;
  uint64_t next_session_ = 0;
};

} // namespace nodepool::testing
