// The replicated pool on libraft's own deterministic test cluster
// (raft_fixture: fake clock, fake network, in-memory disks): elections,
// partitions, a killed leader, log divergence and snapshot install, with
// the pool's replica as every member's state machine and a seeded workload
// proposed by whoever leads. After every scenario the replicas are compared
// byte for byte, and with the leader's own (speculative) state.
#include <gtest/gtest.h>

#include <functional>

#include <cstdio>

#include <map>
#include <optional>
#include <set>
#include <vector>

extern "C" {
#include <raft.h>
#include <raft/fixture.h>
}

#include "proposer.hpp"
#include "raft/raft_member.hpp"
#include "replica.hpp"
#include "support/pool_workload.hpp"

namespace nodepool {
namespace {

using testing::pool_workload;

/// A member's state machine as raft sees it: the replica's, except that
/// while `spoil` is set the snapshots it takes are bytes no replica takes
/// (the leader of a broken build, or a corrupted disk), and while
/// `lenient` is set its check passes whatever it is given (a check and a
/// restore that disagree).
class spoiling_machine final : public state_machine {
public:
  explicit spoiling_machine(replica_machine& m) : m_(m) {}
  bool spoil = false;
  bool lenient = false;
  void apply(std::string_view e) override { m_.apply(e); }
  void catch_up() override { m_.catch_up(); }
  std::string snapshot() override { return snapshot_later()(); }
  std::function<std::string()> snapshot_later() override {
    auto job = m_.snapshot_later();
    if (!spoil)
      return job;
    return [job = std::move(job)] {
      auto bytes = job();
      // Cut short in the middle of a record: it no longer decodes.
      bytes.resize(bytes.size() / 2);
      bytes += '\xff';
      return bytes;
    };
  }
  bool restore(std::string_view b, std::string& e) override {
    return m_.restore(b, e);
  }
  bool check(std::string_view b, std::string& e) const override {
    return lenient || m_.check(b, e);
  }
  std::string broken() const override { return m_.broken(); }

private:
  replica_machine& m_;
};

/// The network below the guard, as a wire: while `flip_snapshots` is set,
/// a byte in the middle of every InstallSnapshot's data (the receiver's
/// copy: raft_fixture copies messages) changes on its way in.
struct wire_tap {
  using start_fn = int (*)(struct raft_io*, unsigned, raft_io_tick_cb,
                           raft_io_recv_cb);
  static inline bool flip_snapshots = false;
  static inline uint64_t flipped = 0;
  static inline std::map<struct raft_io*, start_fn> starts;
  static inline std::map<struct raft_io*, raft_io_recv_cb> recvs;

  /// Before the guard is attached to `io`.
  static void tap(struct raft_io* io) {
    starts[io] = io->start;
    io->start = [](struct raft_io* io, unsigned ms, raft_io_tick_cb tick,
                   raft_io_recv_cb recv) {
      recvs[io] = recv;
      return starts.at(io)(io, ms, tick, [](struct raft_io* io,
                                            struct raft_message* m) {
        if (flip_snapshots && m->type == RAFT_IO_INSTALL_SNAPSHOT
            && m->install_snapshot.data.len > 0) {
          auto& d = m->install_snapshot.data;
          static_cast<unsigned char*>(d.base)[d.len / 2] ^= 0x01;
          ++flipped;
        }
        recvs.at(io)(io, m);
      });
    };
  }
};

class fixture_cluster {
public:
  struct member {
    std::unique_ptr<replica> rep;
    std::unique_ptr<replica_machine> sm;
    std::unique_ptr<spoiling_machine> sp;
    std::unique_ptr<raft_member> m;
    std::map<std::string, int> archived;  // session id -> times archived
    std::vector<pb::SessionRecord> records;
    /// Copied by the backfill. The backfill copies by time, up to the
    /// gap's last `now`, so it may copy a record that an entry after the
    /// gap, with that same `now`, archives here as well: the archive keys
    /// records by id, so the second write of it is the same record again.
    std::set<std::string> backfilled_ids;
    uint64_t backfilled = 0;
  };

  /// `tap`: messages pass a wire_tap below the guard.
  fixture_cluster(unsigned n, uint64_t seed, bool guard = true, bool tap = false)
      : work_(seed), ms_(n) {
    EXPECT_EQ(raft_fixture_initialize(&f_), 0);
    for (unsigned i = 0; i < n; ++i) {
      auto& x = ms_[i];
      x.rep = std::make_unique<replica>(
        [this, i](std::vector<pb::SessionRecord>& ended) {
          for (auto& s : ended) {
            ++ms_[i].archived[s.id()];
            ms_[i].records.push_back(s);
          }
        },
        true);
      x.sm = std::make_unique<replica_machine>(*x.rep);
      x.sp = std::make_unique<spoiling_machine>(*x.sm);
      x.m = std::make_unique<raft_member>(*x.sp, guard);
      EXPECT_EQ(raft_fixture_grow(&f_, x.m->fsm()), 0);
      if (tap)
        wire_tap::tap(raft_fixture_get(&f_, i)->io);
      x.m->attach(raft_fixture_get(&f_, i));
      x.m->on_role_change([this, i](const log_status& st) { on_role(i, st); });
    }
    struct raft_configuration conf;
    EXPECT_EQ(raft_fixture_configuration(&f_, n, &conf), 0);
    EXPECT_EQ(raft_fixture_bootstrap(&f_, &conf), 0);
    raft_configuration_close(&conf);
    EXPECT_EQ(raft_fixture_start(&f_), 0);
  }

  ~fixture_cluster() { raft_fixture_close(&f_); }

  unsigned size() const { return static_cast<unsigned>(ms_.size()); }
  member& at(unsigned i) { return ms_[i]; }
  struct raft_fixture* fixture() { return &f_; }
  std::optional<unsigned> leader() const {
    if (lead_)
      return lead_index_;
    return std::nullopt;
  }
  const proposer* leader_state() const { return lead_ ? &*lead_ : nullptr; }
  const std::set<std::string>& acked() const { return acked_; }
  uint64_t leader_changes() const { return leader_changes_; }
  uint64_t lost_batches() const { return lost_; }

  void step() {
    raft_fixture_step(&f_);
    for (auto& x : ms_)
      x.m->poll();
    backfill();
  }

  /// What an oracle does after installing a snapshot: copies the archive
  /// records of the gap from a peer that has them (here any member whose
  /// archive reaches past the gap).
  void backfill() {
    for (unsigned i = 0; i < size(); ++i)
      for (auto& g : ms_[i].rep->take_archive_gaps())
        for (unsigned j = 0; j < size(); ++j) {
          if (j == i || ms_[j].rep->archived_index() < g.to_index)
            continue;
          for (auto& r : ms_[j].records)
            if (r.ended_at() >= g.from_now && r.ended_at() <= g.to_now
                && !ms_[i].archived.count(r.id())
                && ms_[i].backfilled_ids.insert(r.id()).second) {
              ms_[i].records.push_back(r);
              ++ms_[i].backfilled;
            }
          break;
        }
  }

  /// Snapshots every 16 entries, keeping 4 behind: a member cut off
  /// soon needs a snapshot to catch up.
  void snapshot_often() {
    for (unsigned i = 0; i < size(); ++i) {
      raft_set_snapshot_threshold(raft_fixture_get(&f_, i), 16);
      raft_set_snapshot_trailing(raft_fixture_get(&f_, i), 4);
    }
  }

  /// Steps, with a group commit every 4 steps, until `done`; false if it
  /// is not after `max` steps.
  bool step_until(const std::function<bool()>& done, unsigned max = 3000) {
    for (unsigned s = 0; s < max && !done(); ++s) {
      step();
      if (s % 4 == 0)
        drain(8);
    }
    return done();
  }

  /// Steps until a leader is ready; false after `max` steps.
  bool step_until_leader(unsigned max = 20000) {
    for (unsigned i = 0; i < max && !lead_; ++i)
      step();
    return lead_.has_value();
  }

  /// Steps (without proposing) until a member other than `old` leads.
  bool step_until_new_leader(unsigned old, unsigned max = 100000) {
    for (unsigned i = 0; i < max; ++i) {
      if (lead_ && lead_index_ != old)
        return true;
      step();
    }
    return false;
  }

  /// One group commit of the leader: `n` commands from the workload,
  /// proposed as one entry.
  void drain(size_t n) {
    if (!lead_)
      return;
    std::vector<std::string> submitted;
    for (size_t k = 0; k < n; ++k) {
      auto cmd = work_.next(lead_->pool());
      std::string sid;
      if (cmd.has_submit_session())
        sid = cmd.submit_session().session_id();
      auto r = lead_->apply(cmd, static_cast<int64_t>(raft_fixture_time(&f_)));
      if (!sid.empty() && r.changed && !r.refused)
        submitted.push_back(sid);
    }
    if (!lead_->has_pending())
      return;
    auto term = lead_->term();
    auto i = lead_index_;
    ms_[i].m->propose(lead_->take_batch(),
                      [this, submitted, term, i](propose_status s, uint64_t) {
                        if (s == propose_status::committed) {
                          acked_.insert(submitted.begin(), submitted.end());
                          return;
                        }
                        ++lost_;
                        // The speculative state holds what did not commit:
                        // drop it (the next term starts from the replica).
                        if (lead_ && lead_index_ == i && lead_->term() == term)
                          lead_.reset();
                      });
  }

  /// Steps `steps` times with a drain every `every` steps.
  void run(unsigned steps, unsigned every = 4, size_t per_drain = 8) {
    for (unsigned s = 0; s < steps; ++s) {
      step();
      if (s % every == 0)
        drain(per_drain);
    }
  }

  void partition(unsigned i, unsigned j) {
    raft_fixture_disconnect(&f_, i, j);
    raft_fixture_disconnect(&f_, j, i);
  }
  void heal_all() {
    for (unsigned i = 0; i < size(); ++i) {
      if (!raft_fixture_alive(&f_, i))
        raft_fixture_revive(&f_, i);
      for (unsigned j = 0; j < size(); ++j)
        if (i != j) {
          raft_fixture_reconnect(&f_, i, j);
          raft_fixture_desaturate(&f_, i, j);
        }
    }
  }
  void isolate(unsigned i) {
    for (unsigned j = 0; j < size(); ++j)
      if (j != i)
        partition(i, j);
  }

  /// Heals everything, lets a leader commit a last entry, and steps until
  /// every member applied all of it. False when that does not happen.
  bool settle(unsigned max = 200000, bool report = true) {
    heal_all();
    if (!step_until_leader(max))
      return false;
    // Traffic goes on for a while after the heal (new entries are what
    // makes a follower drop a deposed leader's extra entries), then stops.
    run(2000);
    if (!step_until_leader(max))
      return false;
    for (unsigned s = 0; s < max; ++s) {
      step();
      if (!lead_)
        continue;
      auto* lr = raft_fixture_get(&f_, lead_index_);
      auto last = raft_last_index(lr);
      bool all = raft_last_applied(lr) == last;
      for (unsigned i = 0; i < size() && all; ++i)
        all = raft_last_applied(raft_fixture_get(&f_, i)) == last;
      if (all)
        return true;
    }
    for (unsigned i = 0; i < size() && report; ++i) {
      auto* r = raft_fixture_get(&f_, i);
      auto st = ms_[i].m->status();
      ADD_FAILURE() << "member " << i << ": " << to_string(st.role)
                    << " term " << st.term << " ready " << st.ready
                    << " applied " << raft_last_applied(r) << " last "
                    << raft_last_index(r) << " commit " << r->commit_index
                    << " alive " << raft_fixture_alive(&f_, i)
                    << " replica " << ms_[i].rep->last_index()
                    << " refused " << ms_[i].rep->batches_refused();
      if (raft_state(r) == RAFT_LEADER)
        for (unsigned j = 0; j < r->configuration.n; ++j) {
          auto& p = r->leader_state.progress[j];
          ADD_FAILURE() << "  progress of " << r->configuration.servers[j].id
                        << ": state " << p.state << " next " << p.next_index
                        << " match " << p.match_index << " snapshot "
                        << p.snapshot_index << " recent " << p.recent_recv;
        }
    }
    return false;
  }

  /// Resubmits a session whose outcome was unknown: the pool must either
  /// accept it (it had not committed) or refuse it as a duplicate.
  std::string resubmit(const std::string& sid) {
    if (!lead_)
      return "no leader";
    pb::Command c;
    auto* s = c.mutable_submit_session();
    s->set_session_id(sid);
    s->set_model("m");
    s->set_min_nodes(1);
    s->set_max_nodes(1);
    s->set_max_tasks(1);
    auto r = lead_->apply(c, static_cast<int64_t>(raft_fixture_time(&f_)));
    if (r.refused)
      return r.refused->name();
    if (lead_->has_pending()) {
      auto i = lead_index_;
      auto term = lead_->term();
      ms_[i].m->propose(lead_->take_batch(),
                        [this, sid, i, term](propose_status st, uint64_t) {
                          if (st == propose_status::committed)
                            acked_.insert(sid);
                          else if (lead_ && lead_index_ == i
                                   && lead_->term() == term)
                            lead_.reset();
                        });
    }
    return "accepted";
  }

  /// Every replica equal to every other, and to the leader's state; no
  /// violation anywhere; every acknowledged session on every replica, live
  /// or archived, and none archived twice.
  void expect_consistent() {
    ASSERT_TRUE(lead_.has_value());
    auto ref = ms_[0].rep->snapshot_bytes();
    for (unsigned i = 0; i < size(); ++i) {
      auto& r = *ms_[i].rep;
      EXPECT_EQ(r.snapshot_bytes(), ref) << "replica " << i << " differs";
      EXPECT_TRUE(r.violations().empty())
        << "replica " << i << ": " << r.violations().front().invariant << " "
        << r.violations().front().detail;
      EXPECT_TRUE(r.pool().check_invariants().empty()) << "replica " << i;
      EXPECT_EQ(r.batches_refused(), 0u) << "replica " << i;
      for (auto& sid : acked_)
        EXPECT_TRUE(r.pool().session(sid) || ms_[i].archived.count(sid)
                    || ms_[i].backfilled_ids.count(sid))
          << "acknowledged session " << sid << " lost on replica " << i;
      for (auto& [sid, n] : ms_[i].archived)
        EXPECT_EQ(n, 1) << sid << " archived " << n << " times on " << i;
    }
    // The leader's speculative state, with nothing in flight, is the
    // committed one.
    auto lead = lead_->pool().snapshot();
    auto committed = ms_[lead_index_].rep->pool().snapshot();
    EXPECT_EQ(lead.SerializeAsString(), committed.SerializeAsString());
    EXPECT_EQ(lead_->last_index(), ms_[lead_index_].rep->last_index());
  }

private:
  void on_role(unsigned i, const log_status& st) {
    if (st.ready) {
      lead_.emplace(*ms_[i].rep, st.term);
      lead_index_ = i;
      ++leader_changes_;
    } else if (lead_ && lead_index_ == i) {
      lead_.reset();
    }
  }

  struct raft_fixture f_ {};
  pool_workload work_;
  std::vector<member> ms_;
  std::optional<proposer> lead_;
  unsigned lead_index_ = 0;
  uint64_t leader_changes_ = 0;
  uint64_t lost_ = 0;
  std::set<std::string> acked_;
};

TEST(RaftFixture, ThreeReplicasApplyTheSameBatches) {
  fixture_cluster c{3, 1};
  ASSERT_TRUE(c.step_until_leader());
  c.run(2000);
  ASSERT_TRUE(c.settle());
  c.expect_consistent();
  EXPECT_GT(c.acked().size(), 50u);
  EXPECT_GT(c.at(0).rep->pool().nodes().size(), 5u);
  EXPECT_GT(c.at(0).rep->batches_applied(), 100u);
}

TEST(RaftFixture, FiveReplicasApplyTheSameBatches) {
  fixture_cluster c{5, 2};
  ASSERT_TRUE(c.step_until_leader());
  c.run(2000);
  ASSERT_TRUE(c.settle());
  c.expect_consistent();
  EXPECT_GT(c.acked().size(), 50u);
}

TEST(RaftFixture, PartitionedLeaderLosesWhatDidNotCommit) {
  fixture_cluster c{3, 3};
  ASSERT_TRUE(c.step_until_leader());
  c.run(500);
  auto old = *c.leader();
  auto old_last = c.leader_state()->last_index();
  // Cut the leader off; it keeps proposing on its side of the partition.
  c.isolate(old);
  for (int k = 0; k < 20; ++k) {
    c.drain(8);
    c.step();
  }
  // Its proposals cannot commit; the majority elects another leader.
  ASSERT_TRUE(c.step_until_new_leader(old));
  c.run(500);
  ASSERT_TRUE(c.settle());
  c.expect_consistent();
  EXPECT_GT(c.lost_batches(), 0u);
  EXPECT_GE(c.leader_changes(), 2u);
  // The old leader's uncommitted entries were discarded: the numbering
  // went on from what had committed, on every replica alike.
  EXPECT_GT(c.at(old).rep->last_index(), old_last);
}

TEST(RaftFixture, KilledLeaderIsReplacedAndCatchesUp) {
  fixture_cluster c{3, 4};
  ASSERT_TRUE(c.step_until_leader());
  c.run(400);
  auto old = *c.leader();
  raft_fixture_kill(c.fixture(), old);
  ASSERT_TRUE(c.step_until_new_leader(old));
  c.run(800);
  ASSERT_TRUE(c.settle());  // revives the old leader
  c.expect_consistent();
}

/// Cuts member `lag` off while the others go on and compact their logs
/// past what it holds, so that it can only catch up by a snapshot.
/// Returns the leader.
unsigned leave_behind(fixture_cluster& c, unsigned& lag) {
  c.snapshot_often();
  EXPECT_TRUE(c.step_until_leader());
  c.run(100);
  auto lead = *c.leader();
  lag = (lead + 1) % c.size();
  c.isolate(lag);
  c.run(3000);
  // The others compact their logs past what `lag` has: a snapshot is
  // serialized on the I/O's worker, so compaction comes a few steps after
  // the entries were applied.
  auto* lr = raft_fixture_get(c.fixture(), *c.leader());
  auto lag_last = raft_last_index(raft_fixture_get(c.fixture(), lag));
  for (int s = 0; s < 5000 && lr->log.snapshot.last_index <= lag_last; ++s)
    c.step();
  EXPECT_GT(lr->log.snapshot.last_index, lag_last);
  return *c.leader();
}

TEST(RaftFixture, LaggingFollowerCatchesUpBySnapshot) {
  fixture_cluster c{3, 5};
  unsigned lag = 0;
  leave_behind(c, lag);
  ASSERT_FALSE(::testing::Test::HasFailure());
  ASSERT_TRUE(c.settle());
  c.expect_consistent();
  EXPECT_GT(c.at(lag).rep->restores(), 0u)
    << "the lagging follower should have installed a snapshot";
  // The sessions that ended in the entries it skipped came from a peer's
  // archive (expect_consistent checked it holds every one).
  EXPECT_GT(c.at(lag).backfilled, 0u);
}

// A leader's snapshot that does not decode: libraft 0.15 would write it,
// drop the follower's log below it, and only then hear the refusal, with
// no way back (raft_member.cpp, 7.). The guard asks the replica's check
// first: the follower stays as it was, counts the refusals, and takes the
// leader's next, good snapshot.
TEST(RaftFixture, ASnapshotThatDoesNotPassTheCheckNeverReachesRaft) {
  fixture_cluster c{3, 11};
  unsigned lag = 0;
  for (unsigned i = 0; i < 3; ++i)
    c.at(i).sp->spoil = true;
  auto lead = leave_behind(c, lag);
  auto* lagr = raft_fixture_get(c.fixture(), lag);
  auto applied = raft_last_applied(lagr);
  auto pool_index = c.at(lag).rep->last_index();
  c.heal_all();
  c.run(3000);  // the leader sends its snapshot, again after a timeout
  EXPECT_GT(snapshots_refused_of(lagr->io), 0u);
  EXPECT_EQ(c.at(lag).rep->restores(), 0u);
  EXPECT_EQ(c.at(lag).rep->restores_refused(), 0u);
  EXPECT_EQ(raft_last_applied(lagr), applied);
  EXPECT_EQ(c.at(lag).rep->last_index(), pool_index);
  EXPECT_LT(lagr->log.snapshot.last_index,
            raft_fixture_get(c.fixture(), lead)->log.snapshot.last_index);
  auto st = c.at(lag).m->status();
  EXPECT_EQ(st.restore_error, "");
  EXPECT_EQ(st.snapshots_refused, snapshots_refused_of(lagr->io));
  EXPECT_NE(st.role, log_role::unavailable);
  EXPECT_TRUE(c.at(lag).rep->pool().check_invariants().empty());
  // The leaders' snapshots are good again: the next one brings it in.
  for (unsigned i = 0; i < 3; ++i)
    c.at(i).sp->spoil = false;
  ASSERT_TRUE(c.settle());
  c.expect_consistent();
  EXPECT_GT(c.at(lag).rep->restores(), 0u);
}

// A snapshot whose bytes changed on the wire (raft_uv_tcp sends it with
// TCP's checksum alone): it may still decode and hold every invariant, but
// its digest no longer matches, so the guard drops it before raft sees it,
// as a snapshot the check refuses. The next one, sent intact, goes in.
TEST(RaftFixture, ASnapshotChangedOnTheWireIsRefusedByItsDigest) {
  wire_tap::flip_snapshots = true;
  wire_tap::flipped = 0;
  fixture_cluster c{3, 11, true, true};
  unsigned lag = 0;
  leave_behind(c, lag);
  auto* lagr = raft_fixture_get(c.fixture(), lag);
  auto applied = raft_last_applied(lagr);
  c.heal_all();
  c.run(3000);
  EXPECT_GT(wire_tap::flipped, 0u);
  EXPECT_EQ(snapshots_refused_of(lagr->io), wire_tap::flipped);
  EXPECT_EQ(c.at(lag).rep->restores(), 0u);
  EXPECT_EQ(c.at(lag).rep->restores_refused(), 0u);
  EXPECT_EQ(raft_last_applied(lagr), applied);
  auto st = c.at(lag).m->status();
  EXPECT_EQ(st.restore_error, "");
  EXPECT_NE(st.role, log_role::unavailable);
  wire_tap::flip_snapshots = false;
  ASSERT_TRUE(c.settle());
  c.expect_consistent();
  EXPECT_GT(c.at(lag).rep->restores(), 0u);
}

// A snapshot that passes the check but is not restored (the check and the
// restore disagree): the member cannot go on from what libraft left, so it
// stops taking part, says why, and the others go on without it.
TEST(RaftFixture, ASnapshotPassedButNotRestoredStopsTheMember) {
  fixture_cluster c{3, 12};
  unsigned lag = 0;
  for (unsigned i = 0; i < 3; ++i) {
    c.at(i).sp->spoil = true;
    c.at(i).sp->lenient = true;
  }
  leave_behind(c, lag);
  auto* lagr = raft_fixture_get(c.fixture(), lag);
  c.heal_all();
  c.step_until([&] { return !c.at(lag).m->status().restore_error.empty(); });
  auto st = c.at(lag).m->status();
  EXPECT_NE(st.restore_error.find("does not decode"), std::string::npos)
    << st.restore_error;
  EXPECT_EQ(st.role, log_role::unavailable);
  EXPECT_EQ(c.at(lag).rep->restores(), 0u);
  EXPECT_EQ(c.at(lag).rep->restores_refused(), 1u);
  auto applied = raft_last_applied(lagr);
  auto pool_index = c.at(lag).rep->last_index();
  // It neither applies what follows nor answers; the two others commit.
  auto acked = c.acked().size();
  c.run(3000);
  EXPECT_GT(c.acked().size(), acked);
  EXPECT_EQ(raft_last_applied(lagr), applied);
  EXPECT_EQ(c.at(lag).rep->last_index(), pool_index);
  EXPECT_EQ(c.at(lag).rep->restores_refused(), 1u);
  EXPECT_TRUE(c.at(lag).rep->pool().check_invariants().empty());
  ASSERT_TRUE(c.leader().has_value());
  auto lead = *c.leader();
  ASSERT_NE(lead, lag);
  auto other = 3 - lead - lag;
  // The two others agree once the last entry applied on both.
  for (int s = 0; s < 20000; ++s) {
    if (raft_last_applied(raft_fixture_get(c.fixture(), other))
        == raft_last_index(raft_fixture_get(c.fixture(), lead)))
      break;
    c.step();
  }
  EXPECT_EQ(c.at(other).rep->snapshot_bytes(), c.at(lead).rep->snapshot_bytes());
}

// The same on the leader: it stops proposing at once (its supervisor is
// told it no longer leads), and the two others elect and commit.
TEST(RaftFixture, ALeaderWhoseStateStopsFollowingItsLogStepsDown) {
  fixture_cluster c{3, 15};
  ASSERT_TRUE(c.step_until_leader());
  c.run(200);
  auto lead = *c.leader();
  auto old = c.at(lead).rep->snapshot_bytes();
  c.run(400);
  ASSERT_EQ(*c.leader(), lead);
  std::string err;
  ASSERT_TRUE(c.at(lead).sm->restore(old, err)) << err;
  c.step_until([&] { return !c.at(lead).m->status().apply_error.empty(); });
  auto st = c.at(lead).m->status();
  ASSERT_NE(st.apply_error, "");
  EXPECT_EQ(st.role, log_role::unavailable);
  EXPECT_FALSE(c.leader() == lead) << "its listener still takes it for the leader";
  ASSERT_TRUE(c.step_until_new_leader(lead));
  auto acked = c.acked().size();
  c.run(2000);
  EXPECT_GT(c.acked().size(), acked) << "the two others stopped committing";
  EXPECT_NE(*c.leader(), lead);
}

// libraft 0.15 refuses appends while a leadership transfer is under way,
// and a transfer that times out leaves the leader leading the same term. A
// proposal refused there ends the term's proposals (what the proposer built
// on it would leave a gap in the pool's indexes), and once the transfer is
// over a new barrier tells the listener again that the member leads: it
// starts over from the committed state and commits again.
TEST(RaftFixture, AProposalRefusedWhileLeadingStartsTheProposalsOver) {
  fixture_cluster c{3, 14};
  ASSERT_TRUE(c.step_until_leader());
  c.run(200);
  auto lead = *c.leader();
  auto* lr = raft_fixture_get(c.fixture(), lead);
  auto term = lr->current_term;
  auto target = (lead + 1) % c.size();
  c.partition(lead, target);  // the transfer cannot end
  struct raft_transfer treq {};
  ASSERT_EQ(raft_transfer(lr, &treq, target + 1, [](struct raft_transfer*) {}), 0);
  auto lost = c.lost_batches();
  c.drain(8);
  ASSERT_EQ(c.lost_batches(), lost + 1) << "the proposal was not refused";
  EXPECT_FALSE(c.leader().has_value());
  for (unsigned s = 0; s < 20000 && lr->transfer != nullptr; ++s)
    c.step();
  ASSERT_EQ(lr->transfer, nullptr) << "the transfer did not end";
  c.heal_all();
  auto acked = c.acked().size();
  c.run(3000);
  ASSERT_EQ(raft_state(lr), RAFT_LEADER);
  EXPECT_EQ(lr->current_term, term) << "a new term: not the case under test";
  EXPECT_TRUE(c.leader().has_value()) << "the member leads but was never told so";
  EXPECT_GT(c.acked().size(), acked) << "nothing committed after the transfer";
  ASSERT_TRUE(c.settle());
  c.expect_consistent();
  for (unsigned i = 0; i < c.size(); ++i)
    EXPECT_EQ(c.at(i).m->status().apply_error, "");
}

// A member whose state can no longer follow its log (raft_member.cpp, 12.:
// here its state is set back behind raft's back, as a log loaded at the
// wrong indexes leaves it): the first entry that is not the one due stops
// it for good. It says why, answers and votes no more, takes no snapshot,
// and the two others go on.
TEST(RaftFixture, AMemberWhoseStateStopsFollowingItsLogStopsTakingPart) {
  fixture_cluster c{3, 13};
  c.snapshot_often();
  ASSERT_TRUE(c.step_until_leader());
  c.run(200);
  auto lead = *c.leader();
  auto f = (lead + 1) % c.size();
  auto old = c.at(f).rep->snapshot_bytes();
  auto old_index = c.at(f).rep->last_index();
  c.run(600);
  ASSERT_GT(c.at(f).rep->last_index(), old_index);
  std::string err;
  ASSERT_TRUE(c.at(f).sm->restore(old, err)) << err;
  ASSERT_EQ(c.at(f).rep->last_index(), old_index);
  auto* fr = raft_fixture_get(c.fixture(), f);
  c.step_until([&] { return !c.at(f).m->status().apply_error.empty(); });
  auto st = c.at(f).m->status();
  EXPECT_NE(st.apply_error.find("was due"), std::string::npos) << st.apply_error;
  EXPECT_EQ(st.role, log_role::unavailable);
  EXPECT_EQ(c.at(f).rep->last_index(), old_index);
  auto held = raft_last_index(fr);
  auto snapshot_at = fr->log.snapshot.last_index;
  auto acked = c.acked().size();
  c.run(3000);
  EXPECT_GT(c.acked().size(), acked) << "the two others stopped committing";
  EXPECT_EQ(raft_last_index(fr), held) << "it went on taking entries";
  EXPECT_EQ(fr->log.snapshot.last_index, snapshot_at) << "it took a snapshot";
  EXPECT_EQ(c.at(f).rep->last_index(), old_index);
  EXPECT_EQ(c.at(f).rep->batches_refused(), 1u);
}

// The guard's eighth hole (raft_member.cpp): a 0.15 leader counts a quorum
// only at its own last stored entry, which runs ahead of the followers'
// answers while proposals keep coming. With one of three members down, the
// commit index stood still for as long as the proposals went on.
TEST(RaftFixture, TwoOfThreeKeepCommittingWhileProposalsKeepComing) {
  fixture_cluster c{3, 13};
  ASSERT_TRUE(c.step_until_leader());
  c.run(200);
  auto lead = *c.leader();
  auto down = (lead + 1) % 3;
  raft_fixture_kill(c.fixture(), down);
  auto* lr = raft_fixture_get(c.fixture(), lead);
  auto before = lr->commit_index;
  auto acked = c.acked().size();
  c.run(3000, 8);  // a drain every 8 steps, never a pause
  ASSERT_EQ(c.leader(), std::optional<unsigned>{lead});
  // Without the guard's count: not one session acknowledged, the commit
  // index at 2 with 427 entries in the log (seed 13).
  EXPECT_GT(c.acked().size(), acked + 1000);
  // The commit index follows the entries: what is not committed yet is
  // what is still being written, not all the entries since the kill.
  EXPECT_GT(lr->commit_index, before + 200);
  EXPECT_LT(raft_last_index(lr) - lr->commit_index, 150u)
    << "commit " << lr->commit_index << " last " << raft_last_index(lr);
  EXPECT_GT(commits_raised_of(lr->io), 0u);
  EXPECT_EQ(c.at(lead).m->status().guard.commits_raised, commits_raised_of(lr->io));
  ASSERT_TRUE(c.settle());
  c.expect_consistent();
}

TEST(RaftFixture, ResubmissionAfterLostLeadershipIsAtMostOnce) {
  fixture_cluster c{3, 6};
  ASSERT_TRUE(c.step_until_leader());
  c.run(300);
  auto old = *c.leader();
  // Submissions whose batch the old leader sent to one follower only: the
  // outcome is unknown to the client when the leader goes.
  std::vector<std::string> ids;
  for (int k = 0; k < 5; ++k)
    ids.push_back("retry-" + std::to_string(k));
  for (auto& id : ids)
    EXPECT_EQ(c.resubmit(id), "accepted");
  raft_fixture_kill(c.fixture(), old);
  ASSERT_TRUE(c.step_until_new_leader(old));
  // The client retries each: accepted again only if it had not committed.
  for (auto& id : ids) {
    auto got = c.resubmit(id);
    EXPECT_TRUE(got == "accepted" || got == "duplicate_session") << got;
  }
  ASSERT_TRUE(c.settle());
  c.expect_consistent();
  for (auto& id : ids)
    EXPECT_TRUE(c.at(0).rep->pool().session(id)
                || c.at(0).archived.count(id)
                || c.at(0).backfilled_ids.count(id))
      << id;
}

// Seeded schedules of faults (partitions, of any member and of the leader;
// kills; one-way loss) while the leader proposes; after healing,
// every replica must agree and hold every acknowledged session. A failing
// seed reproduces with NODEPOOL_RAFT_SEED=N and the test's filter.
/// Runs one seeded schedule; the cluster is left as the schedule left it.
void schedule(fixture_cluster& c, uint64_t seed, bool one_way_loss) {
  auto n = c.size();
  pool_workload dice{seed * 7919};
  ASSERT_TRUE(c.step_until_leader());
  for (unsigned s = 0; s < 3000; ++s) {
    c.step();
    if (s % 4 == 0)
      c.drain(6);
    if (dice.pick(100) != 0)
      continue;
    auto i = static_cast<unsigned>(dice.pick(n));
    auto j = static_cast<unsigned>(dice.pick(n));
    switch (dice.pick(6)) {
      case 0: if (i != j) c.partition(i, j); break;
      case 1:
        if (i != j && one_way_loss)
          raft_fixture_saturate(c.fixture(), i, j);
        break;
      case 2: c.isolate(i); break;
      case 3: if (c.leader()) c.isolate(*c.leader()); break;
      case 4: raft_fixture_kill(c.fixture(), i); break;
      default: c.heal_all(); break;
    }
  }
}

void random_faults(bool one_way_loss, uint64_t first, uint64_t last) {
  if (auto* s = std::getenv("NODEPOOL_RAFT_SEED"))
    first = last = std::stoull(s);
  for (uint64_t seed = first; seed <= last; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    unsigned n = seed % 3 == 0 ? 5 : 3;
    fixture_cluster c{n, seed};
    schedule(c, seed, one_way_loss);
    ASSERT_TRUE(c.settle());
    c.expect_consistent();
    if (::testing::Test::HasFailure())
      break;
  }
}

// Partitions between members, of any member, and of the leader.
TEST(RaftFixture, RandomPartitions) { random_faults(false, 1, 30); }

// The same with one-way message loss (raft_fixture_saturate) as well.
TEST(RaftFixture, RandomPartitionsAndOneWayLoss) {
  random_faults(true, 31, 60);
}

// The negative control of raft_member's guard: without it, libraft 0.15
// breaks log matching on some of the seeds with one-way loss (a leader commits an entry
// a majority does not hold; a follower that applied it later shuts down on
// "conflicting terms", or never catches up).
TEST(RaftFixture, WithoutTheGuardLibraftBreaksLogMatching) {
  std::vector<uint64_t> broken;
  for (uint64_t seed = 31; seed <= 60 && broken.empty(); ++seed) {
    fixture_cluster c{seed % 3 == 0 ? 5u : 3u, seed, false};
    schedule(c, seed, seed > 30);
    bool ok = c.settle(200000, false);
    for (unsigned i = 0; i < c.size(); ++i)
      ok = ok && raft_state(raft_fixture_get(c.fixture(), i))
                   != RAFT_UNAVAILABLE;
    if (!ok)
      broken.push_back(seed);
  }
  EXPECT_FALSE(broken.empty())
    << "libraft kept log matching on 30 seeds without the guard: is the "
       "guard still needed?";
  if (!broken.empty())
    std::printf("without the guard, seed %llu breaks\n",
                static_cast<unsigned long long>(broken.front()));
}

/// The guard's eleventh hole end to end. A leader cut off from both others
/// goes on appending alone: the longest log, of its term. The other two
/// elect twice, and each winner dies (or is cut off) before any entry of
/// its term reaches the third: the third is two terms ahead of the deposed
/// leader with a shorter log of the same last term. With the second winner
/// dead, the deposed leader and the third refuse each other's pre-votes,
/// one for its term, the other for its log. Whether the two elect again
/// within `steps`; `shape` says what the pair looked like ("" when the
/// cluster did not take that shape).
struct pre_vote_deadlock {
  bool elected = false;
  std::string shape;
};
pre_vote_deadlock two_that_refuse_each_other(bool guard, unsigned steps) {
  pre_vote_deadlock out;
  fixture_cluster c{3, 11, guard};
  auto* f = c.fixture();
  for (unsigned i = 0; i < 3; ++i)
    raft_set_pre_vote(raft_fixture_get(f, i), true);
  if (!c.step_until_leader())
    return out;
  c.run(400);
  auto l = *c.leader();
  auto* rl = raft_fixture_get(f, l);
  c.isolate(l);
  for (int k = 0; k < 5; ++k) {
    c.drain(4);
    for (int s = 0; s < 20; ++s)
      c.step();
  }
  // Steps raft alone until one of the other two leads; then, before
  // raft_member proposes anything for it, `then(winner)`.
  auto on_election = [&](auto then) -> std::optional<unsigned> {
    for (unsigned s = 0; s < 100000; ++s) {
      raft_fixture_step(f);
      for (unsigned i = 0; i < 3; ++i)
        if (i != l && raft_state(raft_fixture_get(f, i)) == RAFT_LEADER) {
          then(i);
          return i;
        }
      for (unsigned i = 0; i < 3; ++i)
        c.at(i).m->poll();
    }
    return std::nullopt;
  };
  auto w = on_election([&](unsigned i) { raft_fixture_kill(f, i); });
  if (!w)
    return out;
  unsigned x = 3 - l - *w;
  // The first winner comes back cut off from the third, and steps down
  // when it hears no majority; then the two elect again (its log is the
  // more up to date by its term's entry, so it wins) and it dies.
  c.partition(*w, x);
  raft_fixture_revive(f, *w);
  auto* rw = raft_fixture_get(f, *w);
  for (unsigned s = 0; s < 100000 && raft_state(rw) == RAFT_LEADER; ++s)
    c.step();
  raft_fixture_reconnect(f, *w, x);
  raft_fixture_reconnect(f, x, *w);
  auto second = on_election([&](unsigned i) { raft_fixture_kill(f, i); });
  if (!second || *second != *w)
    return out;
  auto* rx = raft_fixture_get(f, x);
  raft_fixture_reconnect(f, l, x);
  raft_fixture_reconnect(f, x, l);
  out.shape = "deposed leader: term " + std::to_string(rl->current_term)
              + ", last entry " + std::to_string(raft_last_index(rl))
              + "; the other: term " + std::to_string(rx->current_term)
              + ", last entry " + std::to_string(raft_last_index(rx));
  for (unsigned s = 0; s < steps && !out.elected; ++s) {
    c.step();
    out.elected = raft_state(rl) == RAFT_LEADER || raft_state(rx) == RAFT_LEADER;
  }
  return out;
}

TEST(RaftGuard, TwoMembersThatRefuseEachOthersPreVotesElectWithTheGuard) {
  auto without = two_that_refuse_each_other(false, 200000);
  ASSERT_FALSE(without.shape.empty()) << "the cluster did not take the shape";
  EXPECT_FALSE(without.elected) << without.shape;
  auto with = two_that_refuse_each_other(true, 200000);
  ASSERT_FALSE(with.shape.empty()) << "the cluster did not take the shape";
  EXPECT_TRUE(with.elected) << with.shape;
  std::printf("%s\n", with.shape.c_str());
}

/// A raft_io whose send and start only record what reaches them: the guard
/// alone, between libraft's callers and the transport.
struct recording_io {
  static inline int sent = 0;
  static inline raft_io_recv_cb recv = nullptr;
  struct raft_io io {};
  recording_io() {
    sent = 0;
    io.send = [](struct raft_io*, struct raft_io_send*, const struct raft_message*,
                 raft_io_send_cb) {
      ++sent;
      return 0;
    };
    io.start = [](struct raft_io*, unsigned, raft_io_tick_cb,
                  raft_io_recv_cb r) {
      recv = r;
      return 0;
    };
    io.time = [](struct raft_io*) -> raft_time { return 1; };
  }
};

/// Does nothing: the guard's tests apply no entry.
struct idle_machine final : state_machine {
  void apply(std::string_view) override {}
  std::string snapshot() override { return {}; }
  bool restore(std::string_view, std::string&) override { return true; }
};

// The guard's fourth hole (raft_member.cpp): libraft 0.15 answers a
// snapshot it finished writing as a follower even when it is a candidate by
// then, reading the candidate's fields as the leader's address, and
// raft_uv's strlen on it crashed an oracle (chaos, seed 58). Such an answer,
// sent outside the receiving of a message, is dropped; answers sent while
// a message is received, and a follower's answer to its leader, go out.
TEST(RaftGuard, AnAnswerToALeaderNoLongerFollowedIsDropped) {
  static struct raft r {};
  recording_io rec;
  r.io = &rec.io;
  idle_machine sm;
  raft_member m{sm};
  m.attach(&r);
  ASSERT_EQ(rec.io.start(&rec.io, 100, nullptr, [](struct raft_io* io,
                                                   struct raft_message*) {
    // raft answering the message it receives, whatever its role.
    struct raft_message answer {};
    answer.type = RAFT_IO_APPEND_ENTRIES_RESULT;
    answer.server_id = 2;
    answer.server_address = const_cast<char*>("127.0.0.1:2");
    struct raft_io_send req {};
    EXPECT_EQ(io->send(io, &req, &answer, nullptr), 0);
  }), 0);
  struct raft_message garbled {};
  garbled.type = RAFT_IO_APPEND_ENTRIES_RESULT;
  garbled.server_id = 0x5555deadbeef;                       // a vote array
  garbled.server_address = reinterpret_cast<char*>(0x101);  // two flags
  struct raft_io_send req {};
  for (auto role : {RAFT_CANDIDATE, RAFT_LEADER}) {
    r.state = static_cast<unsigned short>(role);
    EXPECT_EQ(rec.io.send(&rec.io, &req, &garbled, nullptr), RAFT_CANCELED);
  }
  EXPECT_EQ(recording_io::sent, 0);
  EXPECT_EQ(unaddressed_results_of(&rec.io), 2u);
  // A follower that knows no leader (a newer term began) has no one to
  // answer either.
  r.state = RAFT_FOLLOWER;
  struct raft_message nobody {};
  nobody.type = RAFT_IO_APPEND_ENTRIES_RESULT;
  EXPECT_EQ(rec.io.send(&rec.io, &req, &nobody, nullptr), RAFT_CANCELED);
  EXPECT_EQ(recording_io::sent, 0);
  // Controls: a follower answering its leader; a candidate answering, while
  // it receives it, the message of a stale leader.
  struct raft_message fine {};
  fine.type = RAFT_IO_APPEND_ENTRIES_RESULT;
  fine.server_id = 2;
  fine.server_address = const_cast<char*>("127.0.0.1:2");
  EXPECT_EQ(rec.io.send(&rec.io, &req, &fine, nullptr), 0);
  EXPECT_EQ(recording_io::sent, 1);
  r.state = RAFT_CANDIDATE;
  struct raft_message stale {};
  stale.type = RAFT_IO_REQUEST_VOTE;
  stale.server_id = 2;
  recording_io::recv(&rec.io, &stale);
  EXPECT_EQ(recording_io::sent, 2);
  EXPECT_EQ(unaddressed_results_of(&rec.io), 3u);
}

// The guard's fifth hole (raft_member.cpp): libraft 0.15 takes entries sent
// at or below a follower's snapshot for new ones and crashed on them (sim,
// seed 3591). They are taken off; the message then starts at the snapshot.
TEST(RaftGuard, EntriesAtOrBelowTheSnapshotAreTakenOff) {
  static struct raft r {};
  r = {};
  r.log.snapshot.last_index = 24;
  r.log.snapshot.last_term = 2;
  recording_io rec;
  r.io = &rec.io;
  idle_machine sm;
  raft_member m{sm};
  m.attach(&r);
  // What raft is handed: prev, prev term, and the entries' terms; it frees
  // the entries as libraft does.
  static std::vector<std::vector<uint64_t>> seen;
  seen.clear();
  ASSERT_EQ(rec.io.start(&rec.io, 100, nullptr, [](struct raft_io*,
                                                   struct raft_message* msg) {
    auto& a = msg->append_entries;
    std::vector<uint64_t> x{a.prev_log_index, a.prev_log_term};
    for (unsigned k = 0; k < a.n_entries; ++k)
      x.push_back(a.entries[k].term);
    seen.push_back(x);
    if (a.n_entries > 0)
      raft_free(a.entries[0].batch);
    raft_free(a.entries);
  }), 0);
  // Entries from index `first`, `n` of them, term = 1 up to 24 and 3 past it,
  // in one batch as a decoded message has them.
  auto send = [&](raft_index prev, raft_term prev_term, unsigned n) {
    struct raft_message msg {};
    msg.type = RAFT_IO_APPEND_ENTRIES;
    msg.server_id = 3;
    auto& a = msg.append_entries;
    a.term = 3;
    a.prev_log_index = prev;
    a.prev_log_term = prev_term;
    a.n_entries = n;
    a.entries = static_cast<struct raft_entry*>(raft_malloc(std::max(1u, n) * sizeof(raft_entry)));
    auto* batch = static_cast<char*>(raft_malloc(8 * std::max(1u, n)));
    for (unsigned k = 0; k < n; ++k) {
      auto index = prev + 1 + k;
      a.entries[k] = {};
      a.entries[k].term = index <= 24 ? 1 : 3;
      a.entries[k].type = RAFT_COMMAND;
      a.entries[k].buf.base = batch + 8 * k;
      a.entries[k].buf.len = 8;
      a.entries[k].batch = batch;
    }
    if (n == 0)
      raft_free(batch);
    recording_io::recv(&rec.io, &msg);
  };
  send(0, 0, 25);   // 1..25: only 25 is left, after the snapshot
  send(10, 1, 5);   // 11..15: nothing is left
  send(24, 2, 2);   // 25..26: untouched (the control)
  send(30, 3, 0);   // a heartbeat past the snapshot: untouched
  ASSERT_EQ(seen.size(), 4u);
  EXPECT_EQ(seen[0], (std::vector<uint64_t>{24, 2, 3}));
  EXPECT_EQ(seen[1], (std::vector<uint64_t>{24, 2}));
  EXPECT_EQ(seen[2], (std::vector<uint64_t>{24, 2, 3, 3}));
  EXPECT_EQ(seen[3], (std::vector<uint64_t>{30, 3}));
  EXPECT_EQ(trimmed_to_snapshot_of(&rec.io), 2u);
}

// The guard's eighth and ninth holes, on a leader raft does not drive: what
// an answer from a follower does to the commit index before raft sees it.
TEST(RaftGuard, ALeaderCommitsWhatAMajorityHoldsAndNoOlderTermByCounting) {
  static struct raft r {};
  r = {};
  static struct raft_server servers[3];
  static struct raft_progress progress[3];
  static struct raft_entry entries[16];
  for (unsigned i = 0; i < 3; ++i) {
    servers[i] = {};
    servers[i].id = i + 1;
    servers[i].role = RAFT_VOTER;
    progress[i] = {};
  }
  r.id = 1;
  r.state = RAFT_LEADER;
  r.configuration.servers = servers;
  r.configuration.n = 3;
  r.leader_state.progress = progress;
  r.log.entries = entries;
  r.log.size = 16;
  r.log.front = 0;
  r.log.back = 10;  // entries 1..10
  recording_io rec;
  r.io = &rec.io;
  idle_machine sm;
  raft_member m{sm};
  m.attach(&r);
  // What raft is handed: the answer's last index.
  static std::vector<raft_index> seen;
  seen.clear();
  ASSERT_EQ(rec.io.start(&rec.io, 100, nullptr, [](struct raft_io*,
                                                   struct raft_message* msg) {
    seen.push_back(msg->append_entries_result.last_log_index);
  }), 0);
  auto answer = [&](raft_id from, raft_term term, raft_index last,
                    raft_index rejected = 0) {
    struct raft_message msg {};
    msg.type = RAFT_IO_APPEND_ENTRIES_RESULT;
    msg.server_id = from;
    msg.append_entries_result.term = term;
    msg.append_entries_result.last_log_index = last;
    msg.append_entries_result.rejected = rejected;
    recording_io::recv(&rec.io, &msg);
  };
  // 8. Entries 1..10 of this term (3), all stored here; follower 2 held
  // 4, follower 3 nothing.
  for (unsigned k = 0; k < 10; ++k)
    entries[k] = {}, entries[k].term = 3;
  r.current_term = 3;
  r.last_stored = 10;
  r.commit_index = 4;
  progress[0].match_index = 10;
  progress[1].match_index = 4;
  answer(2, 3, 7);
  EXPECT_EQ(r.commit_index, 7u);  // the leader and follower 2 hold 7
  answer(3, 2, 10);               // an older term's answer: not counted
  answer(3, 3, 10, 9);            // a rejection: not counted
  EXPECT_EQ(r.commit_index, 7u);
  r.last_stored = 8;              // the leader itself stored only to 8
  answer(3, 3, 12);               // past the leader's log: its last, 10
  EXPECT_EQ(r.commit_index, 8u);
  EXPECT_EQ(commits_raised_of(&rec.io), 2u);
  EXPECT_EQ(seen, (std::vector<raft_index>{7, 10, 10, 12}));
  // 9. A new leader (term 4) whose entries are all of term 3: no answer
  // may let raft count a majority at its last stored entry.
  seen.clear();
  r.current_term = 4;
  r.last_stored = 10;
  r.commit_index = 8;
  for (auto& p : progress)
    p.match_index = 0;
  progress[0].match_index = 10;
  answer(2, 4, 10);
  EXPECT_EQ(seen, (std::vector<raft_index>{9}));
  EXPECT_EQ(r.commit_index, 8u);
  EXPECT_EQ(old_term_capped_of(&rec.io), 1u);
  // Once it stored an entry of its own term (11), that one commits, and
  // the older ones with it.
  entries[10] = {};
  entries[10].term = 4;
  r.log.back = 11;
  r.last_stored = 11;
  progress[0].match_index = 11;
  answer(3, 4, 11);
  EXPECT_EQ(seen.back(), 11u);
  EXPECT_EQ(r.commit_index, 11u);
  EXPECT_EQ(old_term_capped_of(&rec.io), 1u);
}

/// An I/O whose appends complete when the test says, with the status it
/// says.
struct appending_io {
  static inline raft_io_append_cb pending = nullptr;
  static inline struct raft_io_append* pending_req = nullptr;
  static inline int sync_result = 0;
  struct raft_io io {};
  appending_io() {
    pending = nullptr;
    pending_req = nullptr;
    sync_result = 0;
    io.send = [](struct raft_io*, struct raft_io_send*, const struct raft_message*,
                 raft_io_send_cb) { return 0; };
    io.start = [](struct raft_io*, unsigned, raft_io_tick_cb, raft_io_recv_cb) {
      return 0;
    };
    io.append = [](struct raft_io*, struct raft_io_append* req, const struct raft_entry[],
                   unsigned, raft_io_append_cb cb) {
      if (sync_result != 0)
        return sync_result;
      pending = cb;
      pending_req = req;
      return 0;
    };
    io.time = [](struct raft_io*) -> raft_time { return 1; };
  }
  static void complete(int status) { pending(pending_req, status); }
};

// The guard's sixth hole (raft_member.cpp): a leader of libraft 0.15 whose
// disk write fails keeps leading with its log truncated in memory, and the
// next failure frees what it already freed (SIGSEGV in the cluster
// simulation once its disks failed writes). A failed write is kept from
// raft, and the member is unavailable from then on: it no longer leads or
// proposes, and says why.
TEST(RaftGuard, AFailedWriteToTheLogMakesTheMemberUnavailable) {
  static struct raft r {};
  appending_io a;
  r.io = &a.io;
  r.state = RAFT_LEADER;
  r.current_term = 3;
  idle_machine sm;
  raft_member m{sm};
  m.attach(&r);
  static int raft_heard = 0, last_status = -1;
  auto cb = [](struct raft_io_append*, int status) {
    ++raft_heard;
    last_status = status;
  };
  struct raft_io_append req {};
  // A write that succeeds reaches raft.
  ASSERT_EQ(a.io.append(&a.io, &req, nullptr, 0, cb), 0);
  appending_io::complete(0);
  EXPECT_EQ(raft_heard, 1);
  EXPECT_EQ(last_status, 0);
  EXPECT_EQ(write_error_of(&a.io), 0);
  EXPECT_EQ(m.status().role, log_role::leader);
  // One that fails does not; the member is unavailable.
  ASSERT_EQ(a.io.append(&a.io, &req, nullptr, 0, cb), 0);
  std::snprintf(a.io.errmsg, sizeof a.io.errmsg, "write segment: no space left on device");
  appending_io::complete(RAFT_IOERR);
  EXPECT_EQ(raft_heard, 1);
  EXPECT_EQ(write_error_of(&a.io), RAFT_IOERR);
  auto st = m.status();
  EXPECT_EQ(st.role, log_role::unavailable);
  EXPECT_NE(st.write_error.find(raft_strerror(RAFT_IOERR)), std::string::npos)
    << st.write_error;
  // What the I/O said of that write (raft never heard of it).
  EXPECT_NE(st.write_error.find("no space left on device"), std::string::npos)
    << st.write_error;
  propose_status said = propose_status::committed;
  m.propose("x", [&](propose_status s, uint64_t) { said = s; });
  EXPECT_EQ(said, propose_status::not_leader);
  // A write refused at once also counts (the first error is kept), and
  // raft hears of that one (its own return value).
  appending_io::sync_result = RAFT_NOSPACE;
  EXPECT_EQ(a.io.append(&a.io, &req, nullptr, 0, cb), RAFT_NOSPACE);
  EXPECT_EQ(write_error_of(&a.io), RAFT_IOERR);
  // Raft started again on that I/O (a restart) starts clean.
  raft_member again{sm};
  again.attach(&r);
  EXPECT_EQ(write_error_of(&a.io), 0);
  appending_io::sync_result = 0;
  r.state = RAFT_FOLLOWER;
  EXPECT_EQ(again.status().role, log_role::follower);
}

// The guard's tenth hole (raft_member.cpp): a 0.15 follower answers entries
// once written, with its last stored index, to whichever leader it knows
// then. When the term changed while they were being written, that answer
// would tell a new leader the follower holds its entries where it holds
// the old leader's: it is dropped. Written and answered in one term, it
// goes out.
TEST(RaftGuard, AnAnswerToEntriesWrittenInAnEarlierTermIsDropped) {
  static struct raft r {};
  r = {};
  appending_io a;
  static int sent = 0;
  sent = 0;
  a.io.send = [](struct raft_io*, struct raft_io_send*, const struct raft_message*,
                 raft_io_send_cb) {
    ++sent;
    return 0;
  };
  r.io = &a.io;
  r.state = RAFT_FOLLOWER;
  r.current_term = 5;
  idle_machine sm;
  raft_member m{sm};
  m.attach(&r);
  // raft's appendFollowerCb: answers the leader it knows.
  auto answer = [](struct raft_io_append*, int) {
    struct raft_message res {};
    res.type = RAFT_IO_APPEND_ENTRIES_RESULT;
    res.server_id = 2;
    res.server_address = const_cast<char*>("127.0.0.1:2");
    res.append_entries_result.term = r.current_term;
    res.append_entries_result.last_log_index = 12;
    struct raft_io_send req {};
    r.io->send(r.io, &req, &res, nullptr);
  };
  struct raft_io_append req {};
  ASSERT_EQ(a.io.append(&a.io, &req, nullptr, 0, answer), 0);
  appending_io::complete(0);
  EXPECT_EQ(sent, 1);  // the control: the same term
  ASSERT_EQ(a.io.append(&a.io, &req, nullptr, 0, answer), 0);
  r.current_term = 6;  // another leader took over meanwhile
  appending_io::complete(0);
  EXPECT_EQ(sent, 1);
  EXPECT_EQ(stale_answers_of(&a.io), 1u);
  // Entries written in term 6 are answered in term 6.
  ASSERT_EQ(a.io.append(&a.io, &req, nullptr, 0, answer), 0);
  appending_io::complete(0);
  EXPECT_EQ(sent, 2);
  EXPECT_EQ(stale_answers_of(&a.io), 1u);
}

// The guard's eleventh hole (raft_member.cpp): a 0.15 voter refuses a
// pre-vote whose term is below its own but answers with the term asked
// for, so the candidate never learns the higher one; a deposed leader with
// the longer log and a member with the higher term then refuse each other
// for good (cluster simulation, seeds 869 and 3955). The refusal goes out
// with the voter's term; every other answer to a vote as raft wrote it.
TEST(RaftGuard, APreVoteRefusedForItsTermIsAnsweredWithTheVotersTerm) {
  static struct raft r {};
  r = {};
  static std::vector<raft_request_vote_result> out;
  out.clear();
  struct raft_io io {};
  io.send = [](struct raft_io*, struct raft_io_send*, const struct raft_message* m,
               raft_io_send_cb) {
    out.push_back(m->request_vote_result);
    return 0;
  };
  io.start = [](struct raft_io*, unsigned, raft_io_tick_cb, raft_io_recv_cb) {
    return 0;
  };
  io.time = [](struct raft_io*) -> raft_time { return 1; };
  r.io = &io;
  r.state = RAFT_FOLLOWER;
  r.current_term = 5;
  idle_machine sm;
  raft_member m{sm};
  m.attach(&r);
  // recvRequestVote's answer: to a pre-vote, the term asked for.
  auto answer = [&](raft_term term, bool granted, raft_tribool pre_vote) {
    struct raft_message res {};
    res.type = RAFT_IO_REQUEST_VOTE_RESULT;
    res.server_id = 3;
    res.server_address = const_cast<char*>("127.0.0.1:3");
    res.request_vote_result.term = term;
    res.request_vote_result.vote_granted = granted;
    res.request_vote_result.pre_vote = pre_vote;
    struct raft_io_send req {};
    ASSERT_EQ(r.io->send(r.io, &req, &res, nullptr), 0);
  };
  answer(3, false, raft_tribool_true);   // refused: asked for 3, ours is 5
  answer(6, true, raft_tribool_true);    // granted: the term asked for
  answer(6, false, raft_tribool_true);   // refused for its log, not its term
  answer(5, false, raft_tribool_false);  // a real vote carries our term
  ASSERT_EQ(out.size(), 4u);
  EXPECT_EQ(out[0].term, 5u);
  EXPECT_FALSE(out[0].vote_granted);
  EXPECT_EQ(out[1].term, 6u);
  EXPECT_TRUE(out[1].vote_granted);
  EXPECT_EQ(out[2].term, 6u);
  EXPECT_EQ(out[3].term, 5u);
  EXPECT_EQ(pre_vote_terms_told_of(&io), 1u);
  EXPECT_EQ(guard_counts_of(&io).pre_vote_terms_told, 1u);
}

} // namespace
} // namespace nodepool
