// The validator: turns TestRequested events into cognitive tests sent to the
// node, grades the answers and reports the score as a TestResult command.
// Whether that score passes, and what follows, is the pool's decision.
#include <caf/all.hpp>

#include "actors/config.hpp"
#include "actors/oracle.hpp"
#include "actors/wire.hpp"
#include "cognitive.hpp"
#include "log.hpp"

namespace nodepool {

namespace {

struct pending_test {
  uint64_t test_id = 0;
  int64_t deadline = 0;
  std::vector<challenge> challenges;
};

struct validator_state {
  caf::actor supervisor;
  caf::actor gateway;
  params pool;
  bool sim_time = false;
  std::map<std::string, pending_test> pending;  // node id -> test in flight
  std::map<std::string, uint64_t> expired;      // node id -> last test ended
                                                // unanswered (late answers)
  static inline const char* name = "validator";
};

using self_ptr = caf::stateful_actor<validator_state>*;

void refuse(self_ptr self, const std::string& node, const std::string& code,
            const std::string& detail) {
  self->send(self->state.gateway, refused_atom::value, node, code, detail);
}

void on_events(self_ptr self, const pb::EventBatch& batch) {
  auto& st = self->state;
  for (auto& e : batch.events()) {
    if (e.has_test_requested()) {
      auto& t = e.test_requested();
      auto& p = st.pending[t.node_id()];
      p.test_id = t.test_id();
      p.deadline = t.deadline();
      p.challenges = make_challenges(t.test_id(), t.node_id(),
                                     st.pool.challenges_per_test, t.level());
      pb::OracleMsg m;
      auto* ct = m.mutable_test();
      ct->set_test_id(t.test_id());
      ct->set_deadline_ms(std::max<int64_t>(0, t.deadline() - batch.now()));
      for (auto& c : p.challenges) {
        auto* x = ct->add_challenges();
        x->set_id(c.id);
        x->set_prompt(c.prompt);
      }
      self->send(st.gateway, send_atom::value, t.node_id(),
                 m.SerializeAsString());
    } else if (e.has_test_finished()) {
      auto i = st.pending.find(e.test_finished().node_id());
      if (i != st.pending.end() && i->second.test_id == e.test_finished().test_id()) {
        // Still pending when the pool ended it: its deadline passed.
        st.expired[i->first] = i->second.test_id;
        st.pending.erase(i);
      }
    } else if (e.has_node_state_changed()
               && e.node_state_changed().to() == pb::LOST) {
      st.pending.erase(e.node_state_changed().node_id());
    } else if (e.has_node_state_changed()
               && e.node_state_changed().to() == pb::RETIRED) {
      // Tell the miner: its node will not be tested again.
      auto& c = e.node_state_changed();
      refuse(self, c.node_id(), "retired", c.reason());
      st.pending.erase(c.node_id());
    }
  }
}

} // namespace

caf::actor spawn_validator(caf::actor_system& sys, caf::actor supervisor,
                           caf::actor gateway, const params& pool,
                           bool sim_time) {
  return sys.spawn([=](self_ptr self) -> caf::behavior {
    self->state.supervisor = supervisor;
    self->state.gateway = gateway;
    self->state.pool = pool;
    self->state.sim_time = sim_time;
    return {
      [=](events_atom, const std::string& bytes) {
        pb::EventBatch batch;
        if (batch.ParseFromString(bytes))
          on_events(self, batch);
      },
      // The leader's term ended: tests in flight were its soft state.
      [=](reset_atom) {
        self->state.pending.clear();
        self->state.expired.clear();
      },
      [=](answers_atom, const std::string& node, const std::string& bytes) {
        auto& st = self->state;
        pb::TestAnswers a;
        if (!a.ParseFromString(bytes)) {
          refuse(self, node, "malformed", "answers do not decode");
          return;
        }
        auto i = st.pending.find(node);
        auto x = st.expired.find(node);
        if (i == st.pending.end() && x != st.expired.end()
            && x->second == a.test_id()) {
          refuse(self, node, "after_deadline",
                 "answers to test " + std::to_string(a.test_id())
                   + " came after its deadline");
          return;
        }
        if (i == st.pending.end()) {
          refuse(self, node, "no_test_in_flight",
                 "no test is waiting for answers from " + node);
          return;
        }
        if (a.test_id() != i->second.test_id) {
          refuse(self, node, "stale_test",
                 "answers for test " + std::to_string(a.test_id())
                   + " but test " + std::to_string(i->second.test_id)
                   + " is in flight");
          return;
        }
        if (now_ms(self, st.sim_time) > i->second.deadline) {
          refuse(self, node, "after_deadline",
                 "answers came after the test deadline");
          return;
        }
        std::vector<std::string> answers(a.answers().begin(),
                                         a.answers().end());
        auto correct = grade(i->second.challenges, answers);
        auto total = static_cast<uint32_t>(i->second.challenges.size());
        auto test_id = i->second.test_id;
        st.pending.erase(i);
        auto cmd = command_bytes([&](pb::Command& c) {
          auto* r = c.mutable_test_result();
          r->set_node_id(node);
          r->set_test_id(test_id);
          r->set_correct(correct);
          r->set_total(total);
        });
        self->request(st.supervisor, caf::infinite, cmd_atom::value, cmd)
          .then([](accepted_atom) {},
                [=](caf::error& err) {
                  auto [code, detail] = read_refusal(self->system(), err);
                  refuse(self, node, code, detail);
                });
      },
    };
  });
}

} // namespace nodepool
