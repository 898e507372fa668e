// A session actor on its own, with hand-made peers: the order in which the
// supervisor's answer and the queue's events reach it is the test's choice.
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "actors/local.hpp"
#include "actors/session.hpp"
#include "digest.hpp"
#include "fixture.hpp"

namespace nodepool::testing {
namespace {

class session_actor : public actor_test {
protected:
  /// Peers: the queue ignores what it hears; the gateway counts the tasks
  /// sent; the supervisor keeps each command's promise for the test.
  void SetUp() override {
    queue_ = sys_->spawn([](caf::event_based_actor*) -> caf::behavior {
      return {[](reply_atom, const caf::actor&) {}};
    });
    auto sent = sent_;
    gateway_ = sys_->spawn([sent](caf::event_based_actor*) -> caf::behavior {
      return {
        [sent](send_atom, const std::string&, const std::string&) { ++*sent; },
        [](refused_atom, const std::string&, pb::RefusalCode,
           const std::string&) {},
      };
    });
    auto held = held_;
    auto commands = commands_;
    supervisor_ = sys_->spawn([held, commands](caf::event_based_actor* self) -> caf::behavior {
      return {
        [=](cmd_atom, const local_command& c) {
          commands->push_back(*c);
          *held = self->make_response_promise();
          return *held;
        },
        // The test's verdict on the command held ("accept", or a refusal's
        // code), delivered from the supervisor's own context.
        [=](const std::string& verdict) {
          if (verdict == "accept")
            held->deliver(accepted_atom::value);
          else
            held->deliver(make_refusal(refusal_code(verdict), "refused by the test"));
        },
      };
    });
    for (auto& a : {queue_, gateway_, supervisor_})
      spawned_.push_back(a);
  }

  caf::actor start_session(const std::string& id, int nodes = 1) {
    pb::SessionStarted s;
    s.set_session_id(id);
    s.set_redundancy(static_cast<uint32_t>(nodes));
    s.set_max_tasks(1);
    s.set_interactive(true);
    for (int i = 1; i <= nodes; ++i)
      s.add_nodes("n" + std::to_string(i));
    auto a = spawn_session(*sys_, queue_, supervisor_, gateway_, fast_params(),
                           true, s);
    spawned_.push_back(a);
    sched_->run();
    return a;
  }

  /// Asks `session` for a prompt's answer; the answer lands in the result.
  std::shared_ptr<std::string> prompt(const caf::actor& session,
                                      bool ends_session = false,
                                      int64_t timeout_ms = 0) {
    auto out = std::make_shared<std::string>("<no answer>");
    pb::PromptRequest r;
    r.set_prompt("say yes");
    r.set_ends_session(ends_session);
    r.set_timeout_ms(timeout_ms);
    auto bytes = r.SerializeAsString();
    auto sys = sys_.get();
    sys_->spawn([=](caf::event_based_actor* self) {
      self->request(session, caf::infinite, prompt_atom::value, bytes)
        .then([=](const std::string& s) {
                pb::PromptAnswer a;
                *out = a.ParseFromString(s) ? "answer:" + a.output() : "garbled";
              },
              [=](caf::error& e) { *out = "error:" + read_refusal(*sys, e).first; });
    });
    sched_->run();
    return out;
  }

  /// Node `node` runs the task: ack, precommit, commit of `text`.
  void node_answers(const caf::actor& session, const std::string& id,
                    const std::string& text, const std::string& node = "n1") {
    pb::MinerMsg ack, pre, commit;
    ack.mutable_task_ack()->set_session_id(id);
    pre.mutable_task_precommit()->set_session_id(id);
    pre.mutable_task_precommit()->set_output_hash(sha256_hex(text));
    commit.mutable_task_commit()->set_session_id(id);
    commit.mutable_task_commit()->set_output(text);
    for (auto* m : {&ack, &pre, &commit})
      caf::anon_send(session, task_atom::value, node, id, m->SerializeAsString());
    sched_->run();
  }

  static event_ref ended_event(const std::string& id) {
    auto e = std::make_shared<pb::Event>();
    e->mutable_session_ended()->set_session_id(id);
    e->mutable_session_ended()->set_state(pb::COMPLETED);
    return e;
  }

  caf::actor queue_, gateway_, supervisor_;
  std::shared_ptr<int> sent_ = std::make_shared<int>(0);
  std::shared_ptr<std::vector<pb::Command>> commands_ =
    std::make_shared<std::vector<pb::Command>>();
  std::shared_ptr<caf::response_promise> held_ =
    std::make_shared<caf::response_promise>();
};

// The commit that ends the session (its last task done) is published before
// the supervisor answers the TaskDone, and its events come through the
// queue: the session's end may reach the actor first. The prompt that task
// answered still gets its answer.
TEST_F(session_actor, the_last_prompt_is_answered_when_the_end_comes_before_the_ack) {
  auto s = start_session("s1");
  auto answer = prompt(s);
  EXPECT_EQ(*sent_, 1);  // the task went to n1
  node_answers(s, "s1", "yes");
  ASSERT_TRUE(held_->pending()) << "no TaskDone reached the supervisor";
  caf::anon_send(s, events_atom::value, ended_event("s1"));
  sched_->run();
  EXPECT_EQ(*answer, "<no answer>");  // it waits for the TaskDone's answer
  caf::anon_send(supervisor_, std::string{"accept"});
  sched_->run();
  EXPECT_EQ(*answer, "answer:yes");
}

// Control: when the session ends with no TaskDone in flight, a prompt still
// waiting hears at once that the session ended.
TEST_F(session_actor, a_waiting_prompt_hears_of_the_end_when_nothing_is_reported) {
  auto s = start_session("s2");
  auto answer = prompt(s);
  EXPECT_FALSE(held_->pending());
  caf::anon_send(s, events_atom::value, ended_event("s2"));
  sched_->run();
  EXPECT_EQ(*answer, "error:session_ended");
}

// The queue stops its session actors when its oracle's term as leader
// ends: a prompt waiting in one hears so (CAF delivers nothing for a
// promise its actor dies holding).
TEST_F(session_actor, a_waiting_prompt_hears_when_the_actor_is_stopped) {
  auto s = start_session("s9");
  auto answer = prompt(s);
  EXPECT_EQ(*sent_, 1);  // its task is out
  caf::anon_send_exit(s, caf::exit_reason::user_shutdown);
  sched_->run();
  EXPECT_EQ(*answer, "error:not_leader");
}

// The TaskDone refused (a node left meanwhile) after the session ended: the
// prompt hears that the session ended, not nothing.
TEST_F(session_actor, a_refused_report_after_the_end_ends_the_prompt) {
  auto s = start_session("s3");
  auto answer = prompt(s);
  node_answers(s, "s3", "yes");
  ASSERT_TRUE(held_->pending());
  caf::anon_send(s, events_atom::value, ended_event("s3"));
  sched_->run();
  caf::anon_send(supervisor_, std::string{"unknown_session"});
  sched_->run();
  EXPECT_EQ(*answer, "error:session_ended");
}

/// The EndSession commands among those the supervisor was sent.
std::vector<pb::EndSession> ends(const std::vector<pb::Command>& cs) {
  std::vector<pb::EndSession> out;
  for (auto& c : cs)
    if (c.has_end_session())
      out.push_back(c.end_session());
  return out;
}

// A session opened for one prompt (the OpenAI front) whose prompt timed out
// before its task ran (its node left first) asks the pool to end it, failed;
// a session opened by a client for many prompts does not (control).
TEST_F(session_actor, a_session_opened_for_one_prompt_ends_when_it_is_given_up) {
  for (bool opened_for_it : {true, false}) {
    commands_->clear();
    auto id = std::string{opened_for_it ? "once" : "many"};
    auto s = start_session(id);
    auto answer = prompt(s, opened_for_it, 300);
    auto left = std::make_shared<pb::Event>();
    left->mutable_node_released()->set_node_id("n1");
    left->mutable_node_released()->set_session_id(id);
    caf::anon_send(s, events_atom::value, event_ref{left});
    run_for(std::chrono::milliseconds(400));
    EXPECT_EQ(*answer, "error:timeout") << id;
    auto e = ends(*commands_);
    if (opened_for_it) {
      ASSERT_EQ(e.size(), 1u);
      EXPECT_EQ(e[0].session_id(), id);
      EXPECT_TRUE(e[0].failed());
      EXPECT_NE(e[0].reason().find("timed out"), std::string::npos) << e[0].reason();
    } else {
      EXPECT_TRUE(e.empty());
    }
  }
}

// The same in the queue: a prompt held for a session that never started (no
// node for it) times out, and the session it was opened for ends, failed;
// another session's held prompt leaves its session queued.
TEST_F(actor_test, a_queued_session_opened_for_one_prompt_ends_with_its_timeout) {
  start(fast_params());
  for (auto [id, opened_for_it] : {std::pair{"once", true}, {"many", false}}) {
    auto req = session_req(id, 1);
    req.set_interactive(true);
    ASSERT_EQ(submit(req), "accepted");
    pb::PromptRequest r;
    r.set_session_id(id);
    r.set_prompt("anyone?");
    r.set_timeout_ms(200);
    r.set_ends_session(opened_for_it);
    auto out = std::make_shared<std::string>("<no answer>");
    auto sys = sys_.get();
    auto whom = oracle_.sessions;
    auto bytes = r.SerializeAsString();
    sys_->spawn([=](caf::event_based_actor* self) {
      self->request(whom, caf::infinite, prompt_atom::value, bytes)
        .then([=](const std::string&) { *out = "answer"; },
              [=](caf::error& e) { *out = "error:" + read_refusal(*sys, e).first; });
    });
    run_for(std::chrono::milliseconds(400));
    EXPECT_EQ(*out, "error:timeout") << id;
  }
  EXPECT_EQ(session_state("once"), pb::FAILED);
  EXPECT_EQ(session_state("many"), pb::QUEUED);
}

// A client's prompt runs on the session's redundant nodes like any task: the
// answer is the output they agree on, and a node whose output disagrees is
// reported an outlier (the pool then lowers its reputation).
TEST_F(session_actor, a_prompt_answer_is_the_agreed_output_and_the_odd_node_an_outlier) {
  auto s = start_session("s4", 3);
  auto answer = prompt(s);
  EXPECT_EQ(*sent_, 3);
  const std::string agreed = "Tested miner nodes keep the inference pool honest and busy.";
  node_answers(s, "s4", agreed, "n1");
  node_answers(s, "s4", "Bananas grow in bunches on tall tropical plants.", "n2");
  node_answers(s, "s4", agreed, "n3");
  ASSERT_EQ(commands_->size(), 1u);
  ASSERT_TRUE(commands_->front().has_task_done());
  std::map<std::string, pb::TaskOutcome> outcome;
  for (auto& o : commands_->front().task_done().outcomes())
    outcome[o.node_id()] = o.outcome();
  EXPECT_EQ(outcome["n1"], pb::OK);
  EXPECT_EQ(outcome["n2"], pb::OUTLIER);
  EXPECT_EQ(outcome["n3"], pb::OK);
  caf::anon_send(supervisor_, std::string{"accept"});
  sched_->run();
  EXPECT_EQ(*answer, "answer:" + agreed);
}

} // namespace
} // namespace nodepool::testing
