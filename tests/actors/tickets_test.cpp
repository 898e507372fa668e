// Commands sent to the supervisor with a ticket (actors/tickets.hpp): each
// answered once, by a message naming its ticket, when a request would have
// been answered; and answered by the sender's side if the supervisor stops.
#include "fixture.hpp"

#include <map>

#include <nlohmann/json.hpp>

#include "actors/local.hpp"
#include "actors/tickets.hpp"

namespace nodepool::testing {
namespace {

/// What a sender heard: per ticket, the refusal code ("" for accepted) and
/// how many entries the store held when it heard it.
struct heard {
  std::map<uint64_t, std::pair<std::string, uint64_t>> answers;
  size_t callbacks = 0;
};

/// An actor that sends `commands` to `sup` with tickets, in order, and
/// notes every answer in `out`.
struct ticket_sender_state {
  command_tickets tickets;
  static inline const char* name = "ticket_sender";
};

caf::behavior ticket_sender(caf::stateful_actor<ticket_sender_state>* self,
                            caf::actor sup, std::vector<local_command> commands,
                            std::shared_ptr<heard> out,
                            std::shared_ptr<store> st) {
  uint64_t ticket = 0;
  for (auto& c : commands) {
    ++ticket;
    self->state.tickets.send(self, sup, c,
                             [=](pb::RefusalCode code, const std::string&) {
                               ++out->callbacks;
                               out->answers[ticket] = {refusal_name(code),
                                                       st->last_index()};
                             });
  }
  return {
    [=](answer_atom, uint64_t t, pb::RefusalCode code,
        const std::string& detail) {
      self->state.tickets.answered(t, code, detail);
    },
  };
}

class tickets : public actor_test {
protected:
  /// A supervisor that takes ticketed commands and answers none.
  caf::actor mute_supervisor() {
    return sys_->spawn([](caf::event_based_actor*) -> caf::behavior {
      return {[](cmd_atom, const local_command&, uint64_t) {}};
    });
  }
};

TEST_F(tickets, each_command_is_answered_once_with_its_ticket_after_its_commit) {
  start(fast_params());
  auto out = std::make_shared<heard>();
  auto before = store_->last_index();
  // In one drain: a registration, a command of no kind, a submission and
  // the same submission again (a duplicate, which reveals the first).
  auto sender = sys_->spawn(ticket_sender, oracle_.supervisor,
                            std::vector<local_command>{registration("t1"),
                                                       std::make_shared<pb::Command>(),
                                                       submission("s1"),
                                                       submission("s1")},
                            out, store_);
  spawned_.push_back(sender);
  sched_->run();
  ASSERT_EQ(out->callbacks, 4u);
  ASSERT_EQ(out->answers.size(), 4u);
  // Tickets are 1, 2, 3, 4 in the order sent.
  EXPECT_EQ(out->answers[1].first, "");
  EXPECT_EQ(out->answers[2].first, "malformed");
  EXPECT_EQ(out->answers[3].first, "");
  EXPECT_EQ(out->answers[4].first, "duplicate_session");
  // Acceptances, and the refusal that reveals an accepted session, only
  // once what they answer for is stored.
  EXPECT_EQ(out->answers[1].second, before + 2);
  EXPECT_EQ(out->answers[3].second, before + 2);
  EXPECT_EQ(out->answers[4].second, before + 2);
  EXPECT_NE(state().session("s1"), nullptr);
}

TEST_F(tickets, thousands_in_flight_are_all_answered_and_forgotten) {
  max_batch_commands_ = 64;
  start(fast_params());
  std::vector<local_command> commands;
  for (int i = 0; i < 3000; ++i)
    commands.push_back(i % 3 == 0 ? registration("n" + std::to_string(i))
                                  : submission("s" + std::to_string(i)));
  auto out = std::make_shared<heard>();
  auto sender = sys_->spawn(ticket_sender, oracle_.supervisor, commands, out,
                            store_);
  spawned_.push_back(sender);
  sched_->run();
  EXPECT_EQ(out->callbacks, 3000u);
  EXPECT_EQ(out->answers.size(), 3000u);
  for (auto& [t, a] : out->answers)
    EXPECT_EQ(a.first, "") << "ticket " << t;
  EXPECT_EQ(state().nodes().size(), 1000u);
}

// The session queue answers a client's submission that the supervisor never
// will, once the supervisor is gone, and the gateway does the same for a
// miner's registration: neither waits for good.
TEST_F(tickets, a_stopped_supervisor_leaves_no_command_waiting) {
  auto mute = mute_supervisor();
  auto queue = spawn_session_queue(*sys_, mute, mute, fast_params(), true);
  spawned_.push_back(queue);
  auto codes = std::make_shared<std::vector<std::string>>();
  auto sys = sys_.get();
  pb::SubmitSession s;
  s.set_session_id("waits");
  s.set_model("m");
  sys_->spawn([=](caf::event_based_actor* self) {
    self->request(queue, caf::infinite, submit_atom::value, s.SerializeAsString())
      .then([=](accepted_atom) { codes->push_back("accepted"); },
            [=](caf::error& e) { codes->push_back(read_refusal(*sys, e).first); });
  });
  auto log = register_through_gateway_over(mute, "quiet", "m");
  EXPECT_TRUE(codes->empty());
  EXPECT_TRUE(log->refusal_codes().empty());
  caf::anon_send_exit(mute, caf::exit_reason::user_shutdown);
  sched_->run();
  ASSERT_EQ(codes->size(), 1u);
  EXPECT_EQ((*codes)[0], "unavailable");
  EXPECT_EQ(log->refusal_codes(), std::vector<std::string>{"unavailable"});
}

// An answer to the gateway that does not come from the supervisor (the
// gateway is published to miners, who may send it anything) is counted and
// changes nothing: the registration it names still waits for the real one.
TEST_F(tickets, an_answer_from_anyone_but_the_supervisor_is_refused) {
  auto mute = mute_supervisor();
  spawned_.push_back(mute);
  auto log = register_through_gateway_over(mute, "forger", "m");
  // The first ticket the gateway gave is 1: answered "accepted" by a peer.
  sys_->spawn([=](caf::event_based_actor* self) {
    self->send(oracle_.gateway, answer_atom::value, uint64_t{1}, pb::REFUSAL_NONE,
               std::string{});
  });
  sched_->run();
  for (auto& m : log->received)
    EXPECT_FALSE(m.has_registered()) << m.ShortDebugString();
  auto stats = nlohmann::json::parse(ask(oracle_.gateway, stats_atom::value));
  EXPECT_EQ(stats["refused"]["answer_not_from_supervisor"].get<uint64_t>(), 1u)
    << stats.dump();
  // The registration still waits for the supervisor: when it stops, it is
  // refused as unavailable.
  caf::anon_send_exit(mute, caf::exit_reason::user_shutdown);
  sched_->run();
  EXPECT_EQ(log->refusal_codes(), std::vector<std::string>{"unavailable"});
}

/// Stands in for an actor: what command_tickets sends, kept.
struct fake_self {
  std::vector<uint64_t> sent;
  void send(const caf::actor&, cmd_atom, const local_command&, uint64_t ticket) {
    sent.push_back(ticket);
  }
};

TEST(command_tickets, an_answer_runs_its_callback_once_and_strangers_are_ignored) {
  command_tickets t;
  fake_self self;
  std::vector<std::string> got;
  t.send(&self, caf::actor{}, registration("a"),
         [&](pb::RefusalCode c, const std::string&) {
    got.push_back("a:" + refusal_name(c));
  });
  t.send(&self, caf::actor{}, registration("b"));  // no callback: not kept
  t.send(&self, caf::actor{}, registration("c"),
         [&](pb::RefusalCode c, const std::string&) {
    got.push_back("c:" + refusal_name(c));
  });
  ASSERT_EQ(self.sent, (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_EQ(t.in_flight(), 2u);
  EXPECT_TRUE(t.answered(3, pb::REFUSAL_QUEUE_FULL, "x"));
  EXPECT_FALSE(t.answered(3, pb::REFUSAL_NONE, ""));   // answered already
  EXPECT_FALSE(t.answered(2, pb::REFUSAL_NONE, ""));   // sent without a callback
  EXPECT_FALSE(t.answered(99, pb::REFUSAL_NONE, ""));  // never sent
  EXPECT_EQ(got, (std::vector<std::string>{"c:queue_full"}));
  t.fail_all(pb::REFUSAL_UNAVAILABLE, "gone");
  EXPECT_EQ(got, (std::vector<std::string>{"c:queue_full", "a:unavailable"}));
  EXPECT_EQ(t.in_flight(), 0u);
  t.fail_all(pb::REFUSAL_UNAVAILABLE, "gone");  // nothing left to fail
  EXPECT_EQ(got.size(), 2u);
}

TEST(command_tickets, after_the_supervisor_stopped_nothing_is_sent_and_all_hear_so) {
  command_tickets t;
  fake_self self;
  caf::actor_system_config cfg;
  cfg.set("scheduler.max-threads", 1);
  caf::actor_system sys{cfg};
  auto sup = sys.spawn([]() -> caf::behavior { return {[](int) {}}; });
  auto other = sys.spawn([]() -> caf::behavior { return {[](int) {}}; });
  std::vector<std::string> got;
  auto note = [&](pb::RefusalCode c, const std::string&) {
    got.push_back(refusal_name(c));
  };
  t.send(&self, sup, registration("a"), note);
  // An answer from another actor is not taken.
  EXPECT_FALSE(t.answered(caf::actor_cast<caf::strong_actor_ptr>(other), sup, 1,
                          pb::REFUSAL_NONE, ""));
  EXPECT_TRUE(got.empty());
  EXPECT_TRUE(t.answered(caf::actor_cast<caf::strong_actor_ptr>(sup), sup, 1,
                         pb::REFUSAL_NONE, ""));
  EXPECT_EQ(got, std::vector<std::string>{""});
  t.send(&self, sup, registration("b"), note);
  caf::down_msg from_other{other.address(), caf::exit_reason::kill};
  EXPECT_FALSE(t.on_down(from_other, sup));
  EXPECT_EQ(t.in_flight(), 1u);
  caf::down_msg dm{sup.address(), caf::exit_reason::kill};
  EXPECT_TRUE(t.on_down(dm, sup));
  EXPECT_EQ(got, (std::vector<std::string>{"", "unavailable"}));
  // Sent after: not sent at all (CAF would drop it), answered at once.
  t.send(&self, sup, registration("c"), note);
  EXPECT_EQ(got, (std::vector<std::string>{"", "unavailable", "unavailable"}));
  EXPECT_EQ(self.sent, (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(t.in_flight(), 0u);
  caf::anon_send_exit(sup, caf::exit_reason::kill);
  caf::anon_send_exit(other, caf::exit_reason::kill);
}

} // namespace
} // namespace nodepool::testing
