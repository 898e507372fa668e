// An oracle restarted over the same store: everything accepted survives, and
// nodes that were reserved or under test at the crash are tested again.
#include "fixture.hpp"
#include "recovery.hpp"

using namespace std::chrono_literals;

namespace nodepool::testing {
namespace {

class recovery : public actor_test {
protected:
  /// Simulates a crash: the oracle's actors vanish without a word.
  void crash_oracle() {
    for (auto& a : {oracle_.gateway, oracle_.validator, oracle_.sessions,
                    oracle_.supervisor})
      caf::anon_send_exit(a, caf::exit_reason::kill);
    sched_->run();
  }
};

TEST_F(recovery, restart_keeps_sessions_and_retests_busy_nodes) {
  auto st = std::shared_ptr<store>(make_memory_store());
  start(fast_params(), st);
  std::vector<caf::actor> nodes;
  for (int i = 0; i < 3; ++i)
    nodes.push_back(add_node("n" + std::to_string(i), behaviour::healthy, i + 1));
  run_for(200ms);
  for (int i = 0; i < 5; ++i)
    ASSERT_EQ(submit(session_req("r" + std::to_string(i), 50, 1)), "accepted");
  run_for(100ms);
  auto before = state();
  ASSERT_GT(before.count_by_state()[pb::RESERVED], 0u);
  crash_oracle();
  // What is durable is exactly what was acknowledged: replay it directly.
  pool_state replayed;
  recovered info;
  ASSERT_TRUE(nodepool::recover(*st, replayed, info).ok());
  for (int i = 0; i < 5; ++i) {
    auto id = "r" + std::to_string(i);
    std::optional<pb::SessionRecord> ended;
    ASSERT_TRUE(st->archived(id, ended).ok());
    EXPECT_TRUE(replayed.session(id) || ended) << id;
  }
  // Restart on the same store; the nodes reconnect to the new gateway.
  start(fast_params(), st);
  auto after = state();
  EXPECT_TRUE(after.check_invariants().empty());
  EXPECT_EQ(after.count_by_state()[pb::RESERVED], 0u);
  EXPECT_EQ(after.count_by_state()[pb::EPHEMERAL], 0u);
  EXPECT_EQ(after.count_by_state()[pb::LOST], 3u);
  for (auto& [id, s] : after.sessions())
    EXPECT_TRUE(s.state() == pb::QUEUED || s.state() == pb::COMPLETED) << id;
  for (auto& n : nodes)
    caf::anon_send(n, connect_atom::value, oracle_.gateway);
  run_for(200ms);
  after = state();
  // Back through an admission test before serving again.
  EXPECT_GE(after.tests_passed(), before.tests_passed() + 3);
  run_for(20s);
  after = state();
  EXPECT_EQ(after.session_counts()[pb::COMPLETED], 5u);
  EXPECT_TRUE(after.check_invariants().empty());
  auto hist = check_history(*st);
  EXPECT_TRUE(hist.violations.empty());
  EXPECT_EQ(hist.sessions_accepted, 5u);
}

TEST_F(recovery, unacknowledged_commands_are_not_half_applied) {
  // The supervisor replies only after its group commit: everything a client
  // was told is durable, and the store never holds a partial batch.
  auto st = std::shared_ptr<store>(make_memory_store());
  start(fast_params(), st);
  ASSERT_EQ(submit(session_req("only", 1, 1)), "accepted");
  auto last = st->last_index();
  pool_state replayed;
  recovered info;
  ASSERT_TRUE(nodepool::recover(*st, replayed, info).ok());
  EXPECT_EQ(info.last_index, last);
  ASSERT_NE(replayed.session("only"), nullptr);
  EXPECT_EQ(replayed.session("only")->state(), pb::QUEUED);
}

} // namespace
} // namespace nodepool::testing
