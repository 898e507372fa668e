// The supervisor as a cluster's leader, over a replicated log whose
// proposals commit when the test says: what a slow commit does to the
// answers held behind it.
#include "fixture.hpp"

#include "actors/supervisor.hpp"
#include "member_archive.hpp"
#include "replica.hpp"
#include "replication.hpp"
#include "storage.hpp"

namespace nodepool::testing {
namespace {

/// One member that leads term 1; a proposal waits until commit_all().
class held_log final : public replicated_log {
public:
  explicit held_log(state_machine& sm) : sm_(sm) {}

  void propose(std::string entry, done_fn done) override {
    held_.emplace_back(std::move(entry), std::move(done));
  }

  /// Commits every proposal held, in order: applied, then answered.
  void commit_all() {
    auto h = std::move(held_);
    held_.clear();
    for (auto& [entry, done] : h) {
      sm_.apply(entry);
      ++index_;
      done(propose_status::committed, index_);
    }
  }

  size_t held() const { return held_.size(); }

  log_status status() const override {
    log_status s;
    s.id = 1;
    s.role = log_role::leader;
    s.term = 1;
    s.leader_id = 1;
    s.ready = true;
    s.commit_index = s.applied_index = index_;
    s.last_index = index_ + held_.size();
    s.members.push_back({1, "127.0.0.1:1", log_member::kind::voter, true});
    return s;
  }

  void stop() override {}

private:
  state_machine& sm_;
  std::vector<std::pair<std::string, done_fn>> held_;
  uint64_t index_ = 0;
};

class cluster_supervisor : public actor_test {
protected:
  void SetUp() override {
    archive_ = std::shared_ptr<store>(make_memory_store());
    rep_ = member_replica(archive_, true, [](const std::string& e) {
      ADD_FAILURE() << "archive: " << e;
    });
    machine_ = std::make_shared<replica_machine>(*rep_, deferred_);
    log_ = std::make_shared<held_log>(*machine_);
    supervisor_config sc;
    sc.pool = fast_params();
    sc.storage = archive_;
    sc.sim_time = true;
    sc.async_snapshots = false;
    sc.cluster_log = log_;
    sc.replica = machine_;
    sc.roles = std::make_shared<role_relay>();
    sup_ = spawn_supervisor(*sys_, sc);
    spawned_.push_back(sup_);
    sc.roles->publish(log_->status());  // a ready leader of term 1
    sched_->run();
    log_->commit_all();  // what it proposed on taking over (its parameters)
    sched_->run();
  }

  /// Submits session `id` from an actor of its own; its answer, when it
  /// comes, goes to `answers` ("accepted" or the refusal's code).
  void submit(const std::string& id,
              std::shared_ptr<std::vector<std::string>> answers) {
    pb::Command c;
    c.mutable_submit_session()->set_session_id(id);
    c.mutable_submit_session()->set_model("m");
    send(c, std::move(answers));
  }

  /// Sends `c`, lets every proposal commit, and returns the answer.
  std::string answer(const pb::Command& c) {
    auto a = std::make_shared<std::vector<std::string>>();
    send(c, a);
    sched_->run();
    log_->commit_all();
    sched_->run();
    return a->empty() ? std::string{"(none)"} : a->front();
  }
  std::string answer(const std::string& submitted_id) {
    pb::Command c;
    c.mutable_submit_session()->set_session_id(submitted_id);
    c.mutable_submit_session()->set_model("m");
    return answer(c);
  }

  void send(const pb::Command& c,
            std::shared_ptr<std::vector<std::string>> answers) {
    auto cmd = std::make_shared<pb::Command>(c);
    auto sup = sup_;
    auto sys = sys_.get();
    sys_->spawn([=](caf::event_based_actor* self) {
      self->request(sup, caf::infinite, cmd_atom::value, cmd)
        .then([=](accepted_atom) { answers->push_back("accepted"); },
              [=](caf::error& e) {
                answers->push_back(read_refusal(*sys, e).first);
              });
    });
  }

  bool deferred_ = false;  // the replica applies at raft's catch-up
  std::shared_ptr<store> archive_;
  std::shared_ptr<replica> rep_;
  std::shared_ptr<replica_machine> machine_;
  std::shared_ptr<held_log> log_;
  caf::actor sup_;
};

TEST_F(cluster_supervisor, a_refusal_behind_a_slow_commit_is_sent_once_it_commits) {
  // A client asks for s1; its entry is proposed and its commit is slow.
  auto first = std::make_shared<std::vector<std::string>>();
  submit("s1", first);
  sched_->run();
  ASSERT_EQ(log_->held(), 1u);
  EXPECT_TRUE(first->empty()) << "answered before its entry committed";
  // It asks again meanwhile (its request timed out): a duplicate, which
  // reveals the first, so it waits behind that entry. No other command
  // comes after it: the pool is quiet.
  auto again = std::make_shared<std::vector<std::string>>();
  submit("s1", again);
  sched_->run();
  EXPECT_TRUE(again->empty()) << "the refusal left before what it reveals";
  EXPECT_EQ(log_->held(), 1u) << "a refusal changes nothing to propose";
  // The entry commits: both answers go out, in order, with nothing else
  // asked of the supervisor.
  log_->commit_all();
  sched_->run();
  ASSERT_EQ(*first, std::vector<std::string>{"accepted"});
  ASSERT_EQ(*again, std::vector<std::string>{"duplicate_session"});
  // And the next question, in a quiet pool, is answered at once.
  auto third = std::make_shared<std::vector<std::string>>();
  submit("s1", third);
  sched_->run();
  EXPECT_EQ(*third, std::vector<std::string>{"duplicate_session"});
  EXPECT_EQ(log_->held(), 0u);
}

TEST_F(cluster_supervisor, a_member_whose_archive_has_a_gap_refuses_ids_it_cannot_check) {
  // This member installed a snapshot: the sessions that entries 2..40
  // ended, from the pool's time 1,000,000 on, are on the peers' archives
  // only, until the backfill copies them.
  auto t0 = sim_time_base_ms;
  ASSERT_TRUE(record_gap(*archive_, {2, 40, t0, t0 + 500}).ok());
  // An id that ended in the gap is still in the pool's window for the
  // window's length after the gap began: a new id is safe to take.
  EXPECT_EQ(answer("fresh1"), "accepted");
  // Past that, an id that ended in the gap may have left the window too:
  // a new id could be one of them, and is refused until the gap is copied.
  sched_->advance_time(std::chrono::milliseconds(
    fast_params().session_id_retention_ms));
  sched_->run();
  log_->commit_all();
  sched_->run();
  EXPECT_EQ(answer("fresh2"), "unavailable");
  EXPECT_EQ(log_->held(), 0u) << "a refusal changes nothing to propose";
  // What the member can check is answered as before: an id the pool
  // knows, and one in its own archive.
  EXPECT_EQ(answer("fresh1"), "duplicate_session");
  pb::SessionRecord old;
  old.set_id("old1");
  old.set_model("m");
  old.set_state(pb::COMPLETED);
  old.set_ended_at(t0 - 1000);
  ASSERT_TRUE(archive_->append({}, {old}, true).ok());
  EXPECT_EQ(answer("old1"), "duplicate_session");
  // The backfill copied the gap: new ids are taken again.
  std::vector<pending_gap> gaps;
  ASSERT_TRUE(pending_gaps(*archive_, gaps).ok());
  ASSERT_EQ(gaps.size(), 1u);
  ASSERT_TRUE(gap_filled(*archive_, gaps.front()).ok());
  EXPECT_EQ(answer("fresh2"), "accepted");
}

pb::Command end_of(const std::string& id) {
  pb::Command c;
  c.mutable_end_session()->set_session_id(id);
  return c;
}

TEST_F(cluster_supervisor, an_id_ended_by_an_entry_in_flight_is_refused_past_the_window) {
  // The leader ended session "x" in an entry that has not committed, so
  // its record is in no archive yet; then the clock passes the window and
  // a later command lets the id go from it.
  ASSERT_EQ(answer("x"), "accepted");
  auto answers = std::make_shared<std::vector<std::string>>();
  send(end_of("x"), answers);
  sched_->run();
  ASSERT_EQ(log_->held(), 1u);
  sched_->advance_time(std::chrono::milliseconds(
    fast_params().session_id_retention_ms + 1));
  sched_->run();
  submit("other", answers);
  sched_->run();
  submit("x", answers);
  sched_->run();
  log_->commit_all();
  sched_->run();
  EXPECT_EQ(*answers, (std::vector<std::string>{"accepted", "accepted",
                                                "duplicate_session"}));
  std::optional<pb::SessionRecord> rec;
  ASSERT_TRUE(archive_->archived("x", rec).ok());
  ASSERT_TRUE(rec.has_value());
  EXPECT_EQ(rec->state(), pb::COMPLETED);
}

/// The replica applies what raft committed at raft's next catch-up, after
/// the leader heard of the commit (as an oracle's does).
class cluster_supervisor_deferred : public cluster_supervisor {
protected:
  cluster_supervisor_deferred() { deferred_ = true; }
};

TEST_F(cluster_supervisor_deferred, an_id_whose_commit_the_replica_has_not_applied_is_refused) {
  ASSERT_EQ(answer("x"), "accepted");
  ASSERT_EQ(answer(end_of("x")), "accepted");
  // Committed, but raft's thread has not caught the replica up: the
  // record is not in this member's archive yet.
  std::optional<pb::SessionRecord> rec;
  ASSERT_TRUE(archive_->archived("x", rec).ok());
  ASSERT_FALSE(rec.has_value());
  sched_->advance_time(std::chrono::milliseconds(
    fast_params().session_id_retention_ms + 1));
  sched_->run();
  ASSERT_EQ(answer("other"), "accepted");
  EXPECT_EQ(answer("x"), "duplicate_session");
  ASSERT_TRUE(archive_->archived("x", rec).ok());
  EXPECT_TRUE(rec.has_value()) << "the lookup caught the replica up";
}

TEST_F(cluster_supervisor, removing_the_last_voter_is_refused_and_the_operator_told) {
  auto out = std::make_shared<std::string>("<no answer>");
  auto sup = sup_;
  auto sys = sys_.get();
  sys_->spawn([=](caf::event_based_actor* self) {
    self->request(sup, caf::infinite, member_atom::value, std::string{"remove"},
                  uint64_t{1}, std::string{})
      .then([=](const std::string&) { *out = "done"; },
            [=](caf::error& e) { *out = read_refusal(*sys, e).first; });
  });
  sched_->run();
  EXPECT_EQ(*out, "membership_refused");
}

} // namespace
} // namespace nodepool::testing
