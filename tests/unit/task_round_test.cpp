// One task's round on its nodes (ack, precommit, commit by T, 2T, 3T),
// without actors: messages and time in, refusals and outcomes out.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "digest.hpp"
#include "task_round.hpp"

namespace nodepool {
namespace {

constexpr int64_t t0 = 1000;
constexpr int64_t T = 500;

pb::MinerMsg ack(uint32_t task) {
  pb::MinerMsg m;
  m.mutable_task_ack()->set_task_no(task);
  return m;
}

pb::MinerMsg precommit(uint32_t task, const std::string& output) {
  pb::MinerMsg m;
  m.mutable_task_precommit()->set_task_no(task);
  m.mutable_task_precommit()->set_output_hash(sha256_hex(output));
  return m;
}

pb::MinerMsg commit(uint32_t task, const std::string& output) {
  pb::MinerMsg m;
  m.mutable_task_commit()->set_task_no(task);
  m.mutable_task_commit()->set_output(output);
  return m;
}

std::string code(const std::optional<refusal>& r) {
  return r ? r->name() : std::string{"taken"};
}

const task_round::part& part_of(const task_round& r, const std::string& node) {
  for (auto& p : r.parts())
    if (p.node == node)
      return p;
  throw std::runtime_error("no part for " + node);
}

/// Takes `node` through its three phases with `output`, at `at`.
void answer(task_round& r, const std::string& node, const std::string& output,
            int64_t at) {
  ASSERT_EQ(code(r.on(node, ack(3), at)), "taken");
  ASSERT_EQ(code(r.on(node, precommit(3, output), at)), "taken");
  ASSERT_EQ(code(r.on(node, commit(3, output), at)), "taken");
}

TEST(TaskRound, ThreePhasesInOrderCommitAnOutputWithItsLatency) {
  task_round r{3, {"a", "b"}, t0, T};
  EXPECT_FALSE(r.done());
  EXPECT_EQ(r.next_deadline(), t0 + T);
  answer(r, "a", "forty-two", t0 + 120);
  EXPECT_FALSE(r.done());  // b has not answered
  EXPECT_EQ(r.next_deadline(), t0 + T);
  auto& a = part_of(r, "a");
  EXPECT_EQ(a.phase, 3);
  EXPECT_EQ(a.output, "forty-two");
  EXPECT_EQ(a.latency_ms, 120);
  EXPECT_EQ(a.outcome, pb::OK);
  answer(r, "b", "forty-two", t0 + 300);
  EXPECT_TRUE(r.done());
  EXPECT_FALSE(r.next_deadline());
}

TEST(TaskRound, MessagesOutOfOrderAreRefusedAndChangeNothing) {
  task_round r{3, {"a"}, t0, T};
  EXPECT_EQ(code(r.on("a", precommit(3, "x"), t0)), "out_of_order");
  EXPECT_EQ(code(r.on("a", commit(3, "x"), t0)), "out_of_order");
  EXPECT_EQ(part_of(r, "a").phase, 0);
  EXPECT_EQ(code(r.on("a", ack(3), t0)), "taken");
  EXPECT_EQ(code(r.on("a", ack(3), t0)), "out_of_order");
  pb::MinerMsg short_hash;
  short_hash.mutable_task_precommit()->set_task_no(3);
  short_hash.mutable_task_precommit()->set_output_hash("abc");
  EXPECT_EQ(code(r.on("a", short_hash, t0)), "out_of_order");
  EXPECT_EQ(code(r.on("a", commit(3, "x"), t0)), "out_of_order");
  EXPECT_EQ(part_of(r, "a").phase, 1);
  EXPECT_FALSE(part_of(r, "a").failed);
  // Another task's message, or a node the task was not sent to.
  EXPECT_EQ(code(r.on("a", precommit(2, "x"), t0)), "stale_task");
  EXPECT_EQ(code(r.on("z", ack(3), t0)), "stale_task");
  EXPECT_EQ(part_of(r, "a").phase, 1);
}

TEST(TaskRound, AnOutputThatIsNotTheOneCommittedToFailsTheNode) {
  task_round r{3, {"a", "b"}, t0, T};
  EXPECT_EQ(code(r.on("a", ack(3), t0)), "taken");
  EXPECT_EQ(code(r.on("a", precommit(3, "promised"), t0)), "taken");
  EXPECT_EQ(code(r.on("a", commit(3, "delivered"), t0)), "reveal_mismatch");
  EXPECT_TRUE(part_of(r, "a").failed);
  EXPECT_EQ(part_of(r, "a").outcome, pb::MISMATCH);
  // Failed: whatever it sends now is too late.
  EXPECT_EQ(code(r.on("a", commit(3, "promised"), t0)), "after_deadline");
  answer(r, "b", "promised", t0 + 10);
  EXPECT_TRUE(r.done());
}

// Each phase's deadline fails the nodes still short of it, and only those.
TEST(TaskRound, EachPhasesDeadlineFailsTheNodesShortOfIt) {
  task_round r{3, {"silent", "acks", "precommits", "answers"}, t0, T};
  EXPECT_EQ(code(r.on("acks", ack(3), t0 + 1)), "taken");
  EXPECT_EQ(code(r.on("precommits", ack(3), t0 + 1)), "taken");
  EXPECT_EQ(code(r.on("precommits", precommit(3, "y"), t0 + 1)), "taken");
  answer(r, "answers", "y", t0 + 2);
  r.expire(t0 + T - 1);
  EXPECT_FALSE(part_of(r, "silent").failed);  // one millisecond early
  r.expire(t0 + T);
  EXPECT_TRUE(part_of(r, "silent").failed);
  EXPECT_EQ(part_of(r, "silent").outcome, pb::TIMEOUT);
  EXPECT_FALSE(part_of(r, "acks").failed);
  EXPECT_EQ(r.next_deadline(), t0 + 2 * T);
  EXPECT_EQ(code(r.on("silent", ack(3), t0 + T)), "after_deadline");
  r.expire(t0 + 2 * T);
  EXPECT_TRUE(part_of(r, "acks").failed);
  EXPECT_FALSE(part_of(r, "precommits").failed);
  EXPECT_EQ(r.next_deadline(), t0 + 3 * T);
  EXPECT_FALSE(r.done());
  r.expire(t0 + 3 * T);
  EXPECT_TRUE(part_of(r, "precommits").failed);
  EXPECT_FALSE(part_of(r, "answers").failed);
  EXPECT_TRUE(r.done());
  EXPECT_FALSE(r.next_deadline());
}

TEST(TaskRound, ANodeThatLeavesTakesItsPartAlong) {
  task_round r{3, {"a", "b", "c"}, t0, T};
  answer(r, "a", "same", t0 + 5);
  EXPECT_TRUE(r.drop("b"));
  EXPECT_FALSE(r.drop("b"));
  EXPECT_FALSE(r.done());
  EXPECT_FALSE(r.keep_only({"a", "c"}));
  EXPECT_TRUE(r.keep_only({"a"}));
  EXPECT_TRUE(r.done());
  ASSERT_EQ(r.parts().size(), 1u);
  EXPECT_EQ(r.parts()[0].node, "a");
  EXPECT_EQ(code(r.on("c", ack(3), t0 + 6)), "stale_task");
  EXPECT_TRUE(r.drop("a"));
  EXPECT_TRUE(r.done());  // nothing left to wait for
}

TEST(TaskRound, AnOutputTheOthersDisagreeWithIsAnOutlier) {
  task_round r{3, {"a", "b", "c", "late"}, t0, T};
  std::string same = "Tested nodes keep the answers of the pool honest.";
  answer(r, "a", same, t0 + 1);
  answer(r, "b", same, t0 + 1);
  answer(r, "c", "zq xv kw jj pp", t0 + 1);
  r.expire(t0 + T);
  ASSERT_TRUE(r.done());
  r.judge(0.85);
  EXPECT_EQ(part_of(r, "a").outcome, pb::OK);
  EXPECT_EQ(part_of(r, "b").outcome, pb::OK);
  EXPECT_EQ(part_of(r, "c").outcome, pb::OUTLIER);
  EXPECT_EQ(part_of(r, "late").outcome, pb::TIMEOUT);  // failed, not judged
}

} // namespace
} // namespace nodepool
