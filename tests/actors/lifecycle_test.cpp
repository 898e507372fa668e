// The whole single-oracle lifecycle under the test coordinator.
#include "fixture.hpp"

using namespace std::chrono_literals;

namespace nodepool::testing {
namespace {

class lifecycle : public actor_test {};

TEST_F(lifecycle, healthy_nodes_pass_admission_and_serve_sessions) {
  start(fast_params());
  for (int i = 0; i < 4; ++i)
    add_node("n" + std::to_string(i), behaviour::healthy, i + 1);
  run_for(200ms);
  auto s = state();
  EXPECT_EQ(s.count_by_state()[pb::EPHEMERAL], 4u);
  EXPECT_EQ(s.tests_passed(), 4u);
  for (int i = 0; i < 6; ++i)
    EXPECT_EQ(submit(session_req("s" + std::to_string(i), 4, 2)), "accepted");
  run_for(5s);
  s = state();
  auto counts = s.session_counts();
  EXPECT_EQ(counts[pb::COMPLETED], 6u);
  EXPECT_TRUE(s.check_invariants().empty());
  // Every node went through re-validation after its sessions and is back.
  EXPECT_GT(s.tests_passed(), 4u);
  EXPECT_EQ(s.count_by_state()[pb::EPHEMERAL], 4u);
}

TEST_F(lifecycle, wrong_nodes_are_quarantined_then_retired) {
  auto p = fast_params();
  p.max_strikes = 3;
  start(p);
  add_node("bad", behaviour::wrong, 7);
  run_for(200ms);
  EXPECT_EQ(state().node("bad")->state(), pb::QUARANTINED);
  // Backoff 1 s, 2 s: two more failed retests retire it.
  run_for(5s);
  auto s = state();
  EXPECT_EQ(s.node("bad")->state(), pb::RETIRED);
  EXPECT_EQ(s.tests_failed(), 3u);
}

TEST_F(lifecycle, slow_node_fails_by_deadline) {
  start(fast_params());
  add_node("slow", behaviour::slow, 3);
  run_for(700ms);
  auto s = state();
  EXPECT_EQ(s.node("slow")->state(), pb::QUARANTINED);
  EXPECT_TRUE(s.node("slow")->last_test_failed());
}

TEST_F(lifecycle, crashed_node_is_lost_and_its_session_requeued) {
  start(fast_params());
  add_node("c", behaviour::crash, 11);
  add_node("h", behaviour::healthy, 12);
  run_for(200ms);
  EXPECT_EQ(submit(session_req("long", 40, 1)), "accepted");
  run_for(10s);
  auto s = state();
  EXPECT_EQ(s.node("c")->state(), pb::LOST);
  EXPECT_EQ(s.session("long")->state(), pb::COMPLETED);
  EXPECT_TRUE(s.check_invariants().empty());
}

TEST_F(lifecycle, heartbeat_loss_is_detected_without_a_down_message) {
  start(fast_params());
  auto n = add_node("quiet", behaviour::healthy, 5);
  run_for(200ms);
  ASSERT_EQ(state().node("quiet")->state(), pb::EPHEMERAL);
  // Suspend the node's heartbeats: it stays alive (no down_msg) but silent.
  caf::anon_send(n, connect_atom::value, caf::actor{});
  run_for(1s);
  EXPECT_EQ(state().node("quiet")->state(), pb::LOST);
}

} // namespace
} // namespace nodepool::testing
