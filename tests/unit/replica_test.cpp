// The committed pool of one oracle (src/replica.hpp), the leader's
// speculative side (src/proposer.hpp) and the single-member log: batches in,
// state out; bad batches refused whole.
#include <gtest/gtest.h>

#include "member_archive.hpp"
#include "proposer.hpp"
#include "replica.hpp"
#include "replication.hpp"
#include "support/pool_workload.hpp"

namespace nodepool {
namespace {

using testing::pool_workload;

/// A leader from an empty pool: its proposer (term `term`, starting with a
/// Configure) driven by the seeded workload.
struct leader_run {
  replica base;
  proposer p;
  pool_workload w;
  int64_t clock;

  explicit leader_run(uint64_t seed, uint64_t term = 1, int64_t start = 1000)
      : p{base, term}, w{seed}, clock{start} {
    auto c = pool_workload::configure();
    p.apply(c, clock);
  }

  /// `batches` group commits of `per` commands each, as log entries.
  std::vector<std::string> batches(int batches, int per) {
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
};

TEST(Replica, FollowsTheLeaderBatchByBatch) {
  replica follower{{}, true};
  leader_run l{11};
  for (auto& b : l.batches(300, 6)) {
    auto o = follower.apply(b);
    ASSERT_TRUE(o.ok) << o.error;
    ASSERT_TRUE(o.violations.empty()) << o.violations.front().detail;
  }
  EXPECT_EQ(follower.last_index(), l.p.last_index());
  EXPECT_EQ(follower.pool().snapshot().SerializeAsString(),
            l.p.pool().snapshot().SerializeAsString());
  EXPECT_GT(follower.pool().sessions_accepted(), 100u);
  EXPECT_TRUE(follower.pool().check_invariants().empty());
}

TEST(Replica, RefusesBadBatchesWholeAndChangesNothing) {
  leader_run l{12, 3};
  auto good = l.batches(20, 5);
  auto clock = l.clock;
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
  for (auto& b : leader_run{13}.batches(100, 6))
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
  EXPECT_EQ(b.restores_refused(), 3u);
}

// A member keeps its copy of the live records and copies changes ahead
// after each batch (some left to each Raft snapshot): every frozen snapshot
// is still the whole committed state, byte for byte.
TEST(Replica, CopyingAheadAfterBatchesKeepsEverySnapshotWhole) {
  replica a;
  a.set_kept_copy_from(0);
  a.set_copy_ahead(3, 2);
  leader_run l{17};
  int frozen = 0;
  for (auto& b : l.batches(300, 6)) {
    ASSERT_TRUE(a.apply(b).ok);
    if (a.last_index() % 5 == 0) {
      auto bytes = a.freeze().encode();
      ASSERT_EQ(bytes, a.snapshot_bytes()) << "at entry " << a.last_index();
      ++frozen;
    }
  }
  EXPECT_GT(frozen, 10);
  EXPECT_GT(a.copied_ahead(), 100u);
  // The setting survives a snapshot install.
  replica b;
  b.set_kept_copy_from(0);
  b.set_copy_ahead(3, 0);
  std::string err;
  ASSERT_TRUE(b.restore(a.snapshot_bytes(), err)) << err;
  b.freeze();
  auto before = b.copied_ahead();
  for (auto& x : l.batches(20, 6))
    ASSERT_TRUE(b.apply(x).ok);
  EXPECT_GT(b.copied_ahead(), before);
  EXPECT_EQ(b.freeze().encode(), b.snapshot_bytes());
}

TEST(Replica, ArchivesEndedSessionsOnceWhenTheirBatchApplies) {
  std::map<std::string, int> archived;
  replica r{[&](std::vector<pb::SessionRecord>& ended) {
    for (auto& s : ended)
      ++archived[s.id()];
  }};
  for (auto& b : leader_run{14}.batches(300, 6))
    ASSERT_TRUE(r.apply(b).ok);
  auto ended = r.pool().sessions_accepted() - r.pool().sessions().size();
  EXPECT_GT(ended, 20u);
  EXPECT_EQ(archived.size(), ended);
  for (auto& [id, n] : archived)
    EXPECT_EQ(n, 1) << id;
}

// A member's archive (member_archive.hpp): its position follows every
// batch; a snapshot install past it records a gap durably; a member
// restarting on the same store resumes at the position, so its own
// snapshot leaves no gap; the gap is pending (and lowers what the archive
// vouches for) until it is marked filled.
TEST(MemberArchive, RecordsItsPositionAndTheGapsASnapshotLeaves) {
  auto st = std::shared_ptr<store>(make_memory_store());
  std::vector<std::string> errors;
  auto on_error = [&](const std::string& e) { errors.push_back(e); };
  leader_run lead{15};
  auto bs = lead.batches(200, 6);
  auto a = member_replica(st, true, on_error);
  for (size_t i = 0; i < 120; ++i)
    ASSERT_TRUE(a->apply(bs[i]).ok);
  EXPECT_EQ(archive_complete_through(*st, a->archived_index()), a->last_index());

  // The same store, a restart: its own snapshot (taken at the position)
  // leaves no gap.
  auto again = member_replica(st, true, on_error);
  std::string err;
  ASSERT_TRUE(again->restore(a->snapshot_bytes(), err)) << err;
  std::vector<pending_gap> gaps;
  ASSERT_TRUE(pending_gaps(*st, gaps).ok());
  EXPECT_TRUE(gaps.empty());

  // A peer's snapshot from further on: the entries it skips ended
  // sessions this archive never saw.
  replica peer;
  for (auto& b : bs)
    ASSERT_TRUE(peer.apply(b).ok);
  ASSERT_TRUE(again->restore(peer.snapshot_bytes(), err)) << err;
  ASSERT_TRUE(pending_gaps(*st, gaps).ok());
  ASSERT_EQ(gaps.size(), 1u);
  EXPECT_EQ(gaps[0].gap.from_index, a->last_index() + 1);
  EXPECT_EQ(gaps[0].gap.to_index, peer.last_index());
  EXPECT_EQ(gaps[0].gap.from_now, a->last_now());
  EXPECT_EQ(gaps[0].gap.to_now, peer.last_now());
  EXPECT_EQ(archive_complete_through(*st, again->archived_index()),
            a->last_index());
  // A restart before the copy: the gap is still there.
  auto third = member_replica(st, true, on_error);
  ASSERT_TRUE(pending_gaps(*st, gaps).ok());
  EXPECT_EQ(gaps.size(), 1u);
  ASSERT_TRUE(gap_filled(*st, gaps[0]).ok());
  ASSERT_TRUE(pending_gaps(*st, gaps).ok());
  EXPECT_TRUE(gaps.empty());
  EXPECT_EQ(archive_complete_through(*st, again->archived_index()),
            peer.last_index());
  EXPECT_TRUE(errors.empty());
}

// Raft may drop the entries its snapshot covers, so the records they
// archived must survive a power cut once the snapshot was taken: the
// member's state machine syncs the archive before it hands raft a
// snapshot. Without that, a member restarting from this snapshot after a
// cut would resume past records it lost (a gap no peer may be able to
// fill: found by `nodepool sim --oracles 3`, seed 9187).
TEST(MemberArchive, ASnapshotMakesWhatItCoversDurable) {
  auto st = std::shared_ptr<store>(make_memory_store());
  auto a = member_replica(st, true, [](const std::string&) {});
  replica_machine m{*a};
  auto bs = leader_run{16}.batches(200, 6);
  for (size_t i = 0; i < 120; ++i)
    m.apply(bs[i]);
  auto ended = a->pool().sessions_accepted() - a->pool().sessions().size();
  ASSERT_GT(ended, 5u);
  auto snap = m.snapshot();
  auto at_snapshot = a->last_index();
  for (size_t i = 120; i < 150; ++i)  // after the snapshot: not synced
    m.apply(bs[i]);
  power_cut(*st);
  auto again = member_replica(st, true, [](const std::string&) {});
  EXPECT_EQ(again->archived_index(), at_snapshot);
  size_t kept = 0;
  st->scan_archive(0, [&](const pb::SessionRecord&) {
    ++kept;
    return true;
  });
  EXPECT_EQ(kept, ended);
  // Restarting from that snapshot leaves no gap.
  std::string err;
  ASSERT_TRUE(again->restore(snap, err)) << err;
  std::vector<pending_gap> gaps;
  ASSERT_TRUE(pending_gaps(*st, gaps).ok());
  EXPECT_TRUE(gaps.empty());
}

// A deferred machine (as a cluster member runs it) only keeps what raft
// applies; catch_up applies it in order, and every look at the state (with,
// a snapshot, a restore) applies what is pending first: no reader sees the
// replica behind what raft applied.
TEST(ReplicaMachine, ADeferredMachineAppliesOnCatchUpOrBeforeAnyLook) {
  auto bs = leader_run{17}.batches(60, 6);
  replica direct;
  for (auto& b : bs)
    ASSERT_TRUE(direct.apply(b).ok);

  replica r;
  replica_machine m{r, true};
  m.apply(bs[0]);
  m.apply(bs[1]);
  EXPECT_EQ(r.last_index(), 0u);  // kept, not applied
  EXPECT_EQ(m.pending(), 2u);
  m.catch_up();
  EXPECT_EQ(m.pending(), 0u);
  EXPECT_EQ(r.batches_applied(), 2u);

  // A look through `with` sees what was kept.
  m.apply(bs[2]);
  auto seen = m.with([](replica& x) { return x.batches_applied(); });
  EXPECT_EQ(seen, 3u);
  EXPECT_EQ(m.pending(), 0u);

  // So does a snapshot, in both of its forms.
  for (size_t i = 3; i < 30; ++i)
    m.apply(bs[i]);
  auto job = m.snapshot_later();
  EXPECT_EQ(m.pending(), 0u);
  pb::Snapshot snap;
  ASSERT_TRUE(snap.ParseFromString(job()));
  EXPECT_EQ(snap.last_index(), r.last_index());
  m.apply(bs[30]);
  pb::Snapshot whole;
  ASSERT_TRUE(whole.ParseFromString(m.snapshot()));
  EXPECT_EQ(r.batches_applied(), 31u);

  // The rest, then the same state as a replica fed directly.
  for (size_t i = 31; i < bs.size(); ++i)
    m.apply(bs[i]);
  m.catch_up();
  EXPECT_EQ(r.snapshot_bytes(), direct.snapshot_bytes());
  EXPECT_EQ(r.batches_refused(), 0u);
}

// A log that skips entries (as libraft 0.15 loads one after a snapshot
// install cut short twice: raft_member.cpp, 12.): `follows` names the first
// batch that is not the next one due, at start; while running, the first
// such batch breaks the machine, which applies nothing after it, not even
// the batch that was due.
TEST(ReplicaMachine, ALogThatSkipsEntriesIsSeenAtStartAndBreaksTheMachine) {
  auto bs = leader_run{19}.batches(40, 6);
  ASSERT_GE(bs.size(), 30u);
  replica r;
  replica_machine m{r, true};
  for (size_t i = 0; i < 10; ++i)
    m.apply(bs[i]);
  m.catch_up();
  auto at = r.last_index();

  std::vector<std::string_view> rest(bs.begin() + 10, bs.end());
  size_t bad = 99;
  EXPECT_EQ(m.follows(rest, bad), "");
  // Undecodable batches are refused on apply and change nothing: skipped.
  std::vector<std::string_view> noisy{"junk", bs[10], "", bs[11]};
  EXPECT_EQ(m.follows(noisy, bad), "");
  std::vector<std::string_view> skipping{bs[10], bs[11], bs[14], bs[15]};
  auto why = m.follows(skipping, bad);
  EXPECT_EQ(bad, 2u);
  EXPECT_NE(why.find("where"), std::string::npos) << why;
  std::vector<std::string_view> again{bs[9], bs[10]};  // already applied
  EXPECT_NE(m.follows(again, bad), "");
  EXPECT_EQ(bad, 0u);
  EXPECT_EQ(r.last_index(), at) << "follows changed the state";

  EXPECT_EQ(m.broken(), "");
  m.apply(bs[12]);  // 10 and 11 missing
  m.catch_up();
  EXPECT_NE(m.broken(), "");
  EXPECT_EQ(r.last_index(), at);
  m.apply(bs[10]);
  m.apply(bs[11]);
  m.catch_up();
  EXPECT_EQ(r.last_index(), at) << "a broken machine applied more";
  EXPECT_EQ(r.batches_refused(), 1u);

  // A batch refused for another reason (a deposed leader's) does not break
  // it: the state can still take the next entry.
  replica r2;
  replica_machine m2{r2};
  auto later = leader_run{19, 3}.batches(2, 6);
  m2.apply(later[0]);
  m2.apply(leader_run{19, 2}.batches(1, 6)[0]);
  EXPECT_EQ(r2.batches_refused(), 1u);
  EXPECT_EQ(m2.broken(), "");
  m2.apply(later[1]);
  EXPECT_EQ(r2.batches_applied(), 2u);
}

// A snapshot installed over kept entries: they are applied (and what they
// end archived) before the state is replaced.
TEST(ReplicaMachine, ARestoreAppliesWhatWasKeptFirst) {
  auto bs = leader_run{18}.batches(120, 6);
  replica leader;
  for (auto& b : bs)
    ASSERT_TRUE(leader.apply(b).ok);
  auto snap = leader.snapshot_bytes();

  size_t archived = 0;
  replica r{[&](std::vector<pb::SessionRecord>& ended) { archived += ended.size(); }};
  replica_machine m{r, true};
  for (size_t i = 0; i < 80; ++i)
    m.apply(bs[i]);
  ASSERT_EQ(archived, 0u);
  std::string err;
  ASSERT_TRUE(m.restore(snap, err)) << err;
  EXPECT_GT(archived, 0u);  // the kept entries ended sessions on the way
  EXPECT_EQ(m.pending(), 0u);
  EXPECT_EQ(r.snapshot_bytes(), snap);
  EXPECT_EQ(r.batches_applied(), 80u);
}

/// A memory store whose metadata (and so a member's archive position) can
/// be made to fail, as a full or broken disk would.
struct meta_failing_store : forwarding_store {
  meta_failing_store() : forwarding_store(make_memory_store()) {}
  bool keeps_meta = true;  // false: a store without metadata at all
  bool fail_meta = false;  // true: metadata writes fail from now on
  status put_meta(const std::string& k, const std::string& v, bool s) override {
    if (!keeps_meta)
      return store::put_meta(k, v, s);
    if (fail_meta)
      return status::fail("disk full");
    return inner_->put_meta(k, v, s);
  }
  status archive_with_meta(const std::vector<pb::SessionRecord>& a,
                           const std::string& k, const std::string& v,
                           bool s) override {
    if (!keeps_meta)
      return store::archive_with_meta(a, k, v, s);
    if (fail_meta)
      return status::fail("disk full");
    return inner_->archive_with_meta(a, k, v, s);
  }
  status erase_meta(const std::string& k, bool s) override {
    return keeps_meta ? inner_->erase_meta(k, s) : store::erase_meta(k, s);
  }
  status scan_meta(const std::string& p,
                   const std::function<bool(const std::string&, const std::string&)>& f)
    override {
    return keeps_meta ? inner_->scan_meta(p, f) : store::scan_meta(p, f);
  }
};

// A store without metadata (a test double) cannot keep a member's archive:
// the member hears of it through its error function, and its archive
// vouches for nothing.
TEST(MemberArchive, AStoreThatCannotKeepThePositionIsAnError) {
  auto st = std::make_shared<meta_failing_store>();
  st->keeps_meta = false;
  std::vector<std::string> errors;
  auto r = member_replica(st, false,
                          [&](const std::string& e) { errors.push_back(e); });
  for (auto& b : leader_run{16}.batches(5, 6))
    r->apply(b);
  ASSERT_FALSE(errors.empty());
  EXPECT_NE(errors[0].find("keeps no metadata"), std::string::npos) << errors[0];
  EXPECT_EQ(errors.size(), 1u);  // once: the position then stays put
  EXPECT_GT(r->last_index(), 0u);
  EXPECT_EQ(r->archived_index(), 0u);
}

// Once a write of a member's archive failed, the records of that batch may
// be missing: what the archive vouches for (archive_complete_through, the
// bound of every archive answer) stays at the last batch written whole,
// however far the member applies after it.
TEST(MemberArchive, AFailedArchiveWriteStopsWhatTheArchiveVouchesFor) {
  auto st = std::make_shared<meta_failing_store>();
  std::vector<std::string> errors;
  auto r = member_replica(st, false,
                          [&](const std::string& e) { errors.push_back(e); });
  auto bs = leader_run{17}.batches(60, 6);
  for (size_t i = 0; i < 30; ++i)
    ASSERT_TRUE(r->apply(bs[i]).ok);
  auto whole = r->last_index();
  EXPECT_EQ(archive_complete_through(*st, r->archived_index()), whole);
  EXPECT_FALSE(r->archive_broken());
  st->fail_meta = true;
  ASSERT_TRUE(r->apply(bs[30]).ok);
  st->fail_meta = false;  // the disk recovers: the position still stays
  for (size_t i = 31; i < bs.size(); ++i)
    ASSERT_TRUE(r->apply(bs[i]).ok);
  EXPECT_GT(r->last_index(), whole);
  EXPECT_TRUE(r->archive_broken());
  EXPECT_EQ(r->archived_index(), whole);
  EXPECT_EQ(archive_complete_through(*st, r->archived_index()), whole);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].find("disk full"), std::string::npos) << errors[0];
}

// The same when a snapshot install leaves a gap that cannot be recorded:
// the position stays before the gap, in memory and on disk, so neither
// this member nor a peer's backfill takes the skipped records as kept.
TEST(MemberArchive, AGapThatCannotBeRecordedStopsWhatTheArchiveVouchesFor) {
  auto st = std::make_shared<meta_failing_store>();
  std::vector<std::string> errors;
  auto r = member_replica(st, false,
                          [&](const std::string& e) { errors.push_back(e); });
  auto bs = leader_run{18}.batches(60, 6);
  replica peer;
  for (size_t i = 0; i < bs.size(); ++i) {
    ASSERT_TRUE(peer.apply(bs[i]).ok);
    if (i < 30) {
      ASSERT_TRUE(r->apply(bs[i]).ok);
    }
  }
  auto whole = r->last_index();
  st->fail_meta = true;
  std::string err;
  ASSERT_TRUE(r->restore(peer.snapshot_bytes(), err)) << err;
  EXPECT_EQ(r->last_index(), peer.last_index());
  EXPECT_TRUE(r->archive_broken());
  EXPECT_EQ(archive_complete_through(*st, r->archived_index()), whole);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].find("gap"), std::string::npos) << errors[0];
  // The disk recovers and a restart reads the position: still before the gap.
  st->fail_meta = false;
  auto again = member_replica(st, false, [](const std::string&) {});
  EXPECT_EQ(again->archived_index(), whole);
}

// An oracle never takes the gaps a replica noted (it records each one
// durably): the replica keeps only the newest few.
TEST(MemberArchive, TheGapsAReplicaNotesStayBounded) {
  auto st = std::make_shared<meta_failing_store>();
  auto r = member_replica(st, false, [](const std::string&) {});
  auto bs = leader_run{19}.batches(2 * replica::kept_gaps + 10, 6);
  replica peer;
  size_t restores = 0;
  for (auto& b : bs) {
    ASSERT_TRUE(peer.apply(b).ok);
    std::string err;
    ASSERT_TRUE(r->restore(peer.snapshot_bytes(), err)) << err;
    ++restores;
  }
  auto gaps = r->take_archive_gaps();
  EXPECT_GT(restores, replica::kept_gaps);
  ASSERT_EQ(gaps.size(), replica::kept_gaps);
  EXPECT_EQ(gaps.back().to_index, peer.last_index());
}

TEST(Proposer, StartsFromTheCommittedStateAndNeverGoesBackInTime) {
  replica r;
  leader_run l{15, 1, 5000};
  for (auto& b : l.batches(50, 6))
    ASSERT_TRUE(r.apply(b).ok);
  proposer next{r, 2};
  EXPECT_EQ(next.last_index(), r.last_index());
  EXPECT_EQ(next.pool().snapshot().SerializeAsString(),
            r.pool().snapshot().SerializeAsString());
  // A clock behind the log's time: the command is applied at the log's.
  auto log_now = r.last_now();
  pb::Command c;
  c.mutable_register_()->set_node_id("late-clock");
  c.mutable_register_()->set_public_key("k");
  c.mutable_register_()->add_models("m");
  auto res = next.apply(c, 0);
  ASSERT_FALSE(res.refused);
  ASSERT_TRUE(next.has_pending());
  auto o = r.apply(next.take_batch());
  ASSERT_TRUE(o.ok) << o.error;
  EXPECT_EQ(r.last_now(), log_now);
  EXPECT_EQ(r.last_term(), 2u);
  EXPECT_EQ(r.last_index(), next.last_index());
  EXPECT_FALSE(next.has_pending());
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
