// A session actor on its own, with hand-made peers: the order in which the
// supervisor's answer and the queue's events reach it is the test's choice.
#include <memory>
#include <optional>
#include <string>

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
        [](refused_atom, const std::string&, const std::string&,
           const std::string&) {},
      };
    });
    auto held = held_;
    supervisor_ = sys_->spawn([held](caf::event_based_actor* self) -> caf::behavior {
      return {
        [=](cmd_atom, const std::string&) {
          *held = self->make_response_promise();
          return *held;
        },
        // The test's verdict on the command held ("accept", or a refusal's
        // code), delivered from the supervisor's own context.
        [=](const std::string& verdict) {
          if (verdict == "accept")
            held->deliver(accepted_atom::value);
          else
            held->deliver(make_refusal(verdict, "refused by the test"));
        },
      };
    });
    for (auto& a : {queue_, gateway_, supervisor_})
      spawned_.push_back(a);
  }

  caf::actor start_session(const std::string& id) {
    pb::SessionStarted s;
    s.set_session_id(id);
    s.set_redundancy(1);
    s.set_max_tasks(1);
    s.set_interactive(true);
    s.add_nodes("n1");
    auto a = spawn_session(*sys_, queue_, supervisor_, gateway_, fast_params(),
                           true, s);
    spawned_.push_back(a);
    sched_->run();
    return a;
  }

  /// Asks `session` for a prompt's answer; the answer lands in the result.
  std::shared_ptr<std::string> prompt(const caf::actor& session) {
    auto out = std::make_shared<std::string>("<no answer>");
    pb::PromptRequest r;
    r.set_prompt("say yes");
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

  /// Node n1 runs the task: ack, precommit, commit of `text`.
  void node_answers(const caf::actor& session, const std::string& id,
                    const std::string& text) {
    pb::MinerMsg ack, pre, commit;
    ack.mutable_task_ack()->set_session_id(id);
    pre.mutable_task_precommit()->set_session_id(id);
    pre.mutable_task_precommit()->set_output_hash(sha256_hex(text));
    commit.mutable_task_commit()->set_session_id(id);
    commit.mutable_task_commit()->set_output(text);
    for (auto* m : {&ack, &pre, &commit})
      caf::anon_send(session, task_atom::value, std::string{"n1"}, id,
                     m->SerializeAsString());
    sched_->run();
  }

  static std::string ended_event(const std::string& id) {
    pb::Event e;
    e.mutable_session_ended()->set_session_id(id);
    e.mutable_session_ended()->set_state(pb::COMPLETED);
    return e.SerializeAsString();
  }

  caf::actor queue_, gateway_, supervisor_;
  std::shared_ptr<int> sent_ = std::make_shared<int>(0);
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

} // namespace
} // namespace nodepool::testing
