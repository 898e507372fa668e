// Fencing (a cluster): every message from a leader's actors to a miner
// carries the leader's term, and a node refuses one older than a term it
// has already heard from (stale_term), so a deposed leader cut off by a
// partition cannot steer a node the new leader already reached.
#include <nlohmann/json.hpp>

#include "fixture.hpp"

namespace nodepool::testing {
namespace {

class fencing : public actor_test {};

/// A stand-in for a gateway: records what a node sends it.
struct recorder {
  std::vector<pb::MinerMsg> got;
};

TEST_F(fencing, a_node_refuses_a_lower_term_and_counts_it) {
  auto rec = std::make_shared<recorder>();
  auto gw = sys_->spawn([=](caf::event_based_actor*) -> caf::behavior {
    return {[=](miner_atom, const std::string& bytes) {
      pb::MinerMsg m;
      m.ParseFromString(bytes);
      rec->got.push_back(m);
    }};
  });
  spawned_.push_back(gw);
  node_config nc;
  nc.id = "n1";
  auto n = spawn_node(*sys_, nc, gw);
  spawned_.push_back(n);
  sched_->run();
  auto test = [&](uint64_t term, uint64_t test_id) {
    pb::OracleMsg m;
    m.set_term(term);
    m.mutable_test()->set_test_id(test_id);
    auto* c = m.mutable_test()->add_challenges();
    c->set_prompt("add 2 3");
    caf::anon_send(n, oracle_atom::value, m.SerializeAsString());
    run_for(std::chrono::milliseconds(2000));  // the backend's think time
  };
  auto answered = [&](uint64_t test_id) {
    for (auto& m : rec->got)
      if (m.has_test_answers() && m.test_answers().test_id() == test_id)
        return true;
    return false;
  };
  test(7, 1);
  EXPECT_TRUE(answered(1));
  test(3, 2);  // a deposed leader's
  EXPECT_FALSE(answered(2));
  test(7, 3);
  EXPECT_TRUE(answered(3));
  test(8, 4);
  EXPECT_TRUE(answered(4));
  test(7, 5);  // term 8 was seen since
  EXPECT_FALSE(answered(5));
  auto j = nlohmann::json::parse(ask(n, stats_atom::value));
  EXPECT_EQ(j["refusals"].value("stale_term", 0), 2);
  EXPECT_EQ(j.value("term", 0), 8);
}

TEST_F(fencing, the_gateway_stamps_what_it_sends_with_the_term_it_leads) {
  auto p = fast_params();
  p.heartbeat_timeout_ms = 60000;
  start(p);
  // What the supervisor tells the gateway when this member leads a term.
  caf::scoped_actor inside{*sys_};
  inside->send(oracle_.gateway, lead_atom::value, uint64_t{12});
  inside->send(oracle_.gateway, lead_atom::value, uint64_t{5});  // never lowered
  sched_->run();
  auto log = std::make_shared<probe_log>();
  auto pr = probe(log);
  caf::anon_send(pr, send_atom::value, miner_registration("p1", "llama-3-8b"));
  sched_->run();
  bool saw_test = false;
  for (auto& r : log->received)
    if (r.has_test()) {
      saw_test = true;
      EXPECT_EQ(r.term(), 12u);
    }
  EXPECT_TRUE(saw_test) << "the admission test never came";
}

} // namespace
} // namespace nodepool::testing
