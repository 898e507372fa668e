// The committed pool of one oracle (src/replica.hpp), the leader's
// speculative side (src/proposer.hpp) and the single-member log: batches in,
// state out; bad batches refused whole.
#include <gtest/gtest.h>

#include "proposer.hpp"
#include "replica.hpp"
#include "replication.hpp"
#include "support/pool_workload.hpp"

namespace nodepool {
namespace {

using testing::pool_workload;

/// Drives a proposer with the workload for `batches` group commits of
/// `per` commands; returns the batches.
std::vector<std::string> produce(proposer& p, pool_workload& w, int batches,
                                 int per, int64_t& clock) {
  std::vector<std::string> out;
  for (int b = 0; b < batches; ++b) {
    for (int k = 0; k < per; ++k) {
      auto c = w.next(p.pool());
      p.apply(c, clock += 7);
    }
    if (p.has_pending())
      out.push_back(p.take_batch());
  }
  return out;
}

TEST(Replica, FollowsTheLeaderBatchByBatch) {
  replica leader_base, follower{{}, true};
  proposer p{leader_base, 1};
  pool_workload w{11};
  int64_t clock = 1000;
  auto first = pool_workload::configure();
  p.apply(first, clock);
  for (auto& b : produce(p, w, 300, 6, clock)) {
    auto o = follower.apply(b);
    ASSERT_TRUE(o.ok) << o.error;
    ASSERT_TRUE(o.violations.empty()) << o.violations.front().detail;
  }
  EXPECT_EQ(follower.last_index(), p.last_index());
  EXPECT_EQ(follower.pool().snapshot().SerializeAsString(),
            p.pool().snapshot().SerializeAsString());
  EXPECT_GT(follower.pool().sessions_accepted(), 100u);
  EXPECT_TRUE(follower.pool().check_invariants().empty());
}

TEST(Replica, RefusesBadBatchesWholeAndChangesNothing) {
  replica base;
  proposer p{base, 3};
  pool_workload w{12};
  int64_t clock = 1000;
  auto conf = pool_workload::configure();
  p.apply(conf, clock);
  auto good = produce(p, w, 20, 5, clock);
  replica r;
  for (auto& b : good)
    ASSERT_TRUE(r.apply(b).ok);
  auto before = r.snapshot_bytes();
  auto refused_before = r.batches_refused();

  // Garbage, and nothing at all.
  EXPECT_FALSE(r.apply(std::string{"\xff\xff\xff garbage", 12}).ok);
  EXPECT_FALSE(r.apply(std::string{}).ok);
  // A gap in the numbering.
  pb::LogBatch gap;
  gap.set_term(3);
  auto* e = gap.add_entries();
  e->set_index(r.last_index() + 2);
  e->set_now(clock + 10);
  e->mutable_command()->mutable_tick();
  auto o = r.apply(gap);
  EXPECT_FALSE(o.ok);
  EXPECT_NE(o.error.find("was due"), std::string::npos) << o.error;
  // A deposed leader's term.
  pb::LogBatch stale = gap;
  stale.set_term(2);
  stale.mutable_entries(0)->set_index(r.last_index() + 1);
  o = r.apply(stale);
  EXPECT_FALSE(o.ok);
  EXPECT_NE(o.error.find("deposed"), std::string::npos) << o.error;
  // Time running backwards.
  pb::LogBatch back = stale;
  back.set_term(3);
  back.mutable_entries(0)->set_now(r.last_now() - 1);
  o = r.apply(back);
  EXPECT_FALSE(o.ok);
  EXPECT_NE(o.error.find("back in time"), std::string::npos) << o.error;
  // A valid first entry followed by a bad one: nothing of it applies.
  pb::LogBatch half;
  half.set_term(3);
  auto* a = half.add_entries();
  a->set_index(r.last_index() + 1);
  a->set_now(clock + 20);
  a->mutable_command()->mutable_tick();
  auto* b = half.add_entries();
  b->set_index(r.last_index() + 2);
  b->set_now(clock + 21);  // no command
  EXPECT_FALSE(r.apply(half).ok);

  EXPECT_EQ(r.snapshot_bytes(), before);
  EXPECT_EQ(r.batches_refused(), refused_before + 6);
}

TEST(Replica, ReportsACommandRefusedOnApplyAsDivergence) {
  replica r;
  pb::LogBatch b;
  b.set_term(1);
  auto* e = b.add_entries();
  e->set_index(1);
  e->set_now(5);
  e->mutable_command()->mutable_heartbeat()->set_node_id("nobody");
  auto o = r.apply(b);
  EXPECT_TRUE(o.ok);
  ASSERT_EQ(o.violations.size(), 1u);
  EXPECT_EQ(o.violations[0].invariant, "replica");
  EXPECT_EQ(r.violations().size(), 1u);
}

TEST(Replica, SnapshotRestoresTheSameStateAndRefusesABrokenOne) {
  replica a;
  proposer p{a, 1};
  pool_workload w{13};
  int64_t clock = 1000;
  auto conf = pool_workload::configure();
  p.apply(conf, clock);
  for (auto& b : produce(p, w, 100, 6, clock))
    ASSERT_TRUE(a.apply(b).ok);
  replica b;
  std::string err;
  ASSERT_TRUE(b.restore(a.snapshot_bytes(), err)) << err;
  EXPECT_EQ(b.snapshot_bytes(), a.snapshot_bytes());
  EXPECT_EQ(b.last_index(), a.last_index());
  EXPECT_EQ(b.last_term(), 1u);

  // A snapshot from a peer that breaks I5/I1 is refused; state unchanged.
  auto snap = a.snapshot();
  ASSERT_GT(snap.nodes_size(), 0);
  snap.mutable_nodes(0)->set_state(pb::RESERVED);
  snap.mutable_nodes(0)->set_session_id("no-such-session");
  auto before = b.snapshot_bytes();
  EXPECT_FALSE(b.restore(snap.SerializeAsString(), err));
  EXPECT_FALSE(err.empty());
  EXPECT_EQ(b.snapshot_bytes(), before);
  EXPECT_FALSE(b.restore(std::string{"\x08\xff", 2}, err));
  EXPECT_FALSE(b.restore(std::string{}, err));
  EXPECT_EQ(b.snapshot_bytes(), before);
}

TEST(Replica, ArchivesEndedSessionsOnceWhenTheirBatchApplies) {
  std::map<std::string, int> archived;
  replica r{[&](std::vector<pb::SessionRecord>& ended) {
    for (auto& s : ended)
      ++archived[s.id()];
  }};
  replica base;
  proposer p{base, 1};
  pool_workload w{14};
  int64_t clock = 1000;
  auto conf = pool_workload::configure();
  p.apply(conf, clock);
  for (auto& b : produce(p, w, 300, 6, clock))
    ASSERT_TRUE(r.apply(b).ok);
  auto ended = r.pool().sessions_accepted() - r.pool().sessions().size();
  EXPECT_GT(ended, 20u);
  EXPECT_EQ(archived.size(), ended);
  for (auto& [id, n] : archived)
    EXPECT_EQ(n, 1) << id;
}

TEST(Proposer, StartsFromTheCommittedStateAndNeverGoesBackInTime) {
  replica r;
  proposer p{r, 1};
  pool_workload w{15};
  int64_t clock = 5000;
  auto conf = pool_workload::configure();
  p.apply(conf, clock);
  for (auto& b : produce(p, w, 50, 6, clock))
    ASSERT_TRUE(r.apply(b).ok);
  proposer next{r, 2};
  EXPECT_EQ(next.last_index(), r.last_index());
  EXPECT_EQ(next.pool().snapshot().SerializeAsString(),
            r.pool().snapshot().SerializeAsString());
  // A clock behind the log's time: the command is applied at the log's.
  auto c = pool_workload{16}.next(next.pool());
  next.apply(c, 0);
  if (next.has_pending()) {
    ASSERT_TRUE(r.apply(next.take_batch()).ok);
    EXPECT_GE(r.last_now(), clock);
  }
}

struct counting_machine final : state_machine {
  std::vector<std::string> applied;
  void apply(std::string_view e) override { applied.emplace_back(e); }
  std::string snapshot() override { return {}; }
  bool restore(std::string_view, std::string&) override { return true; }
};

TEST(MemoryLog, CommitsAtOnceAndIsLeaderFromTheStart) {
  counting_machine sm;
  std::vector<log_status> roles;
  memory_log l{sm, [&](const log_status& s) { roles.push_back(s); }};
  propose_status got = propose_status::failed;
  l.propose("early", [&](propose_status s, uint64_t) { got = s; });
  EXPECT_EQ(got, propose_status::not_leader);
  l.start();
  ASSERT_EQ(roles.size(), 1u);
  EXPECT_TRUE(roles[0].ready);
  uint64_t index = 0;
  l.propose("one", [&](propose_status s, uint64_t i) {
    got = s;
    index = i;
  });
  EXPECT_EQ(got, propose_status::committed);
  EXPECT_EQ(index, 1u);
  EXPECT_EQ(sm.applied, std::vector<std::string>{"one"});
  EXPECT_EQ(l.status().applied_index, 1u);
}

} // namespace
} // namespace nodepool
