// Bad input from miners: every kind gets a clear error to the sender, is
// counted, and changes no state.
#include "bank.hpp"
#include "digest.hpp"
#include "fixture.hpp"

#include <limits>
#include <sstream>

#include <nlohmann/json.hpp>
#include <spdlog/sinks/ostream_sink.h>

#include "log.hpp"

using namespace std::chrono_literals;

namespace nodepool::testing {
namespace {

class bad_input : public actor_test {
protected:
  void SetUp() override {
    auto p = fast_params();
    p.heartbeat_timeout_ms = 60000;  // the probe sends no heartbeats
    start(p);
    log_ = std::make_shared<probe_log>();
    probe_ = probe(log_);
  }

  void send(const pb::MinerMsg& m) { send_raw(m.SerializeAsString()); }
  void send_raw(const std::string& bytes) {
    caf::anon_send(probe_, send_atom::value, bytes);
    sched_->run();
  }

  pb::MinerMsg reg(const std::string& id) {
    pb::MinerMsg m;
    m.set_node_id(id);
    m.mutable_register_()->set_node_id(id);
    m.mutable_register_()->add_models("llama-3-8b");
    return m;
  }

  /// Registers the probe as `id` and answers its admission test.
  void admit(const std::string& id) {
    send(reg(id));
    auto test = last_of(&pb::OracleMsg::has_test);
    ASSERT_TRUE(test.has_test());
    send(answers(id, test.test()));
    ASSERT_EQ(state().node(id)->state(), pb::EPHEMERAL);
  }

  /// What a node with the model answers to `t` (the bank's answers).
  static pb::MinerMsg answers(const std::string& id, const pb::CognitiveTest& t) {
    pb::MinerMsg a;
    a.set_node_id(id);
    a.mutable_test_answers()->set_test_id(t.test_id());
    a.mutable_test_answers()->set_nonce(t.nonce());
    for (auto& c : t.challenges())
      a.mutable_test_answers()->add_answers(sim_knowledge::builtin()->answer(c.prompt()));
    return a;
  }

  pb::OracleMsg last_of(bool (pb::OracleMsg::*has)() const) {
    for (auto i = log_->received.rbegin(); i != log_->received.rend(); ++i)
      if (((*i).*has)())
        return *i;
    return {};
  }

  std::string last_refusal() {
    auto codes = log_->refusal_codes();
    return codes.empty() ? "<none>" : codes.back();
  }

  /// Refusals the gateway decided, and those the pool did: each is
  /// counted once, where it was decided.
  uint64_t counted(const std::string& code) {
    auto j = nlohmann::json::parse(ask(oracle_.gateway, stats_atom::value));
    return j["refused"].value(code, uint64_t{0});
  }
  uint64_t counted_by_pool(const std::string& code) {
    auto j = nlohmann::json::parse(ask(oracle_.supervisor, stats_atom::value));
    return j["refusals"].value(code, uint64_t{0});
  }

  std::string snapshot_bytes() {
    return ask(oracle_.supervisor, state_atom::value);
  }

  std::shared_ptr<probe_log> log_;
  caf::actor probe_;
};

TEST_F(bad_input, garbage_bytes_are_refused_and_change_nothing) {
  auto before = snapshot_bytes();
  send_raw(std::string("\xff\x13garbage\x00\x01", 11));
  EXPECT_EQ(last_refusal(), "malformed");
  EXPECT_EQ(counted("malformed"), 1u);
  send_raw("");  // decodes, but carries nothing
  EXPECT_EQ(counted("malformed"), 2u);
  EXPECT_EQ(snapshot_bytes(), before);
}

TEST_F(bad_input, a_flood_of_refusals_is_summarised_in_the_log_and_counted_in_full) {
  // What the gateway logs, caught beside its usual sink.
  std::ostringstream lines;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(lines);
  auto gw_log = log("gateway");
  gw_log->sinks().push_back(sink);
  struct unhook {
    std::shared_ptr<spdlog::logger> l;
    ~unhook() { l->sinks().pop_back(); }
  } tidy{gw_log};
  auto count = [&](const std::string& what) {
    size_t n = 0;
    for (size_t i = lines.str().find(what); i != std::string::npos;
         i = lines.str().find(what, i + 1))
      ++n;
    return n;
  };
  auto before = snapshot_bytes();
  for (int i = 0; i < 100; ++i)
    send_raw(std::string("\xff\x13garbage", 9));
  // Every one is refused to the sender and counted; five are logged.
  EXPECT_EQ(counted("malformed"), 100u);
  EXPECT_EQ(log_->refusal_codes().size(), 100u);
  EXPECT_EQ(count("refused message from node"), 5u) << lines.str();
  EXPECT_EQ(count("more messages"), 0u);
  // When the interval ends, one line says how many were not logged.
  run_for(std::chrono::milliseconds(10000), std::chrono::milliseconds(1000));
  EXPECT_EQ(count("refused 95 more messages from"), 1u) << lines.str();
  // A new interval logs again.
  send_raw(std::string("\xff\x13garbage", 9));
  EXPECT_EQ(count("refused message from node"), 6u) << lines.str();
  EXPECT_EQ(snapshot_bytes(), before);
}

TEST_F(bad_input, a_message_without_a_sender_is_refused_and_changes_nothing) {
  // What a connection torn down mid-message can deliver: no sender to
  // answer, to bind a node to or to monitor.
  auto before = snapshot_bytes();
  caf::anon_send(oracle_.gateway, miner_atom::value,
                 reg("nobody").SerializeAsString());
  sched_->run();
  EXPECT_EQ(counted("no_sender"), 1u);
  EXPECT_EQ(snapshot_bytes(), before);
  EXPECT_EQ(state().node("nobody"), nullptr);
}

// The gateway's handle is published to miners and clients. The messages
// only the oracle's own actors send it (its routes, what to send a node,
// the term to stamp, a node's refusal) are refused from anyone else: here
// sender-less, as a remote peer can send them (a remote peer's own actor:
// process test api.a_peer_cannot_drive_the_gateways_own_messages).
TEST_F(bad_input, the_oracles_own_messages_are_refused_from_outside) {
  // Routes to nowhere and a term no leader will reach.
  caf::anon_send(oracle_.gateway, connect_atom::value, caf::actor{}, caf::actor{});
  caf::anon_send(oracle_.gateway, lead_atom::value,
                 std::numeric_limits<uint64_t>::max());
  sched_->run();
  EXPECT_EQ(counted("internal_message"), 2u);
  // The routes are the oracle's still: the node is tested and admitted,
  // and nothing it hears carries a term.
  admit("p1");
  for (auto& m : log_->received)
    EXPECT_EQ(m.term(), 0u);
  // Words put in the oracle's mouth reach no node.
  auto before = snapshot_bytes();
  auto heard = log_->received.size();
  pb::OracleMsg quit;
  quit.mutable_refusal()->set_code("retired");
  quit.mutable_refusal()->set_kind(pb::REFUSAL_RETIRED);
  caf::anon_send(oracle_.gateway, send_atom::value, std::string{"p1"},
                 quit.SerializeAsString());
  caf::anon_send(oracle_.gateway, refused_atom::value, std::string{"p1"},
                 pb::REFUSAL_RETIRED, std::string{"forged"});
  // The same with the code as text (the form before the enum): a message
  // of no form the gateway takes.
  caf::anon_send(oracle_.gateway, refused_atom::value, std::string{"p1"},
                 std::string{"retired"}, std::string{"forged"});
  sched_->run();
  EXPECT_EQ(log_->received.size(), heard);
  EXPECT_EQ(counted("internal_message"), 4u);
  EXPECT_EQ(counted("unexpected_message"), 1u);
  EXPECT_EQ(counted("retired"), 0u);
  EXPECT_EQ(snapshot_bytes(), before);
}

// A registration the pool refuses leaves nothing behind once its sender is
// gone: the gateway watches every connection from its first registration.
TEST_F(bad_input, refused_registrations_leave_nothing_once_their_senders_are_gone) {
  std::vector<caf::actor> peers;
  for (int i = 0; i < 50; ++i) {
    auto log = std::make_shared<probe_log>();
    peers.push_back(probe(log));
    caf::anon_send(peers.back(), send_atom::value,
                   miner_registration("bad id " + std::to_string(i), "llama-3-8b"));
  }
  sched_->run();
  EXPECT_EQ(counted_by_pool("bad_node_id"), 50u);
  EXPECT_EQ(counted("bad_node_id"), 0u);  // not twice
  auto known = [&] {
    auto j = nlohmann::json::parse(ask(oracle_.gateway, stats_atom::value));
    return j["connections_known"].get<uint64_t>();
  };
  EXPECT_EQ(known(), 50u);
  for (auto& p : peers)
    caf::anon_send_exit(p, caf::exit_reason::user_shutdown);
  sched_->run();
  EXPECT_EQ(known(), 0u);
}

TEST_F(bad_input, messages_before_registration_are_refused) {
  pb::MinerMsg hb;
  hb.set_node_id("ghost");
  hb.mutable_heartbeat()->set_node_id("ghost");
  auto before = snapshot_bytes();
  send(hb);
  EXPECT_EQ(last_refusal(), "not_registered");
  EXPECT_EQ(counted("not_registered"), 1u);
  EXPECT_EQ(snapshot_bytes(), before);
}

TEST_F(bad_input, a_node_cannot_act_for_another) {
  add_node("victim");
  run_for(100ms);
  admit("p1");
  auto before = state();
  pb::MinerMsg hb;
  hb.set_node_id("victim");
  hb.mutable_heartbeat()->set_node_id("victim");
  send(hb);
  EXPECT_EQ(last_refusal(), "not_your_node");
  // Naming itself outside but another node inside is refused too.
  hb.set_node_id("p1");
  send(hb);
  EXPECT_EQ(last_refusal(), "not_your_node");
  // And it may not register a second identity on the same connection.
  send(reg("victim"));
  EXPECT_EQ(last_refusal(), "node_id_in_use");
  EXPECT_EQ(counted("not_your_node"), 2u);
  auto after = state();
  EXPECT_EQ(after.node("victim")->last_heartbeat(),
            before.node("victim")->last_heartbeat());
  EXPECT_EQ(after.node("victim")->state(), before.node("victim")->state());
}

TEST_F(bad_input, acks_results_and_releases_for_another_node_are_refused) {
  add_node("victim");
  run_for(100ms);
  admit("p1");
  auto before = snapshot_bytes();
  std::vector<pb::MinerMsg> forged(5);
  forged[0].mutable_task_ack()->set_session_id("s1");
  forged[1].mutable_task_precommit()->set_session_id("s1");
  forged[2].mutable_task_commit()->set_session_id("s1");
  forged[3].mutable_test_answers()->set_test_id(1);
  forged[4].mutable_heartbeat()->set_node_id("victim");  // a release: draining
  forged[4].mutable_heartbeat()->set_mode(pb::DRAINING);
  for (auto& m : forged) {
    m.set_node_id("victim");
    send(m);
    EXPECT_EQ(last_refusal(), "not_your_node") << m.ShortDebugString();
  }
  EXPECT_EQ(counted("not_your_node"), forged.size());
  EXPECT_EQ(snapshot_bytes(), before);
}

TEST_F(bad_input, unknown_session_is_refused) {
  admit("p2");
  pb::MinerMsg ack;
  ack.set_node_id("p2");
  ack.mutable_task_ack()->set_session_id("no-such-session");
  auto before = snapshot_bytes();
  send(ack);
  EXPECT_EQ(last_refusal(), "unknown_session");
  EXPECT_EQ(counted("unknown_session"), 1u);
  EXPECT_EQ(snapshot_bytes(), before);
}

TEST_F(bad_input, reveal_that_misses_its_hash_is_refused_and_punished) {
  admit("p3");
  // Enough other nodes that the panic guard allows a quarantine.
  for (int i = 0; i < 3; ++i)
    add_node("h" + std::to_string(i), behaviour::healthy, i + 1);
  ASSERT_EQ(submit(session_req("s-reveal", 1, 1)), "accepted");
  auto task = last_of(&pb::OracleMsg::has_task);
  ASSERT_TRUE(task.has_task());
  auto sid = task.task().session_id();
  auto no = task.task().task_no();
  pb::MinerMsg m;
  m.set_node_id("p3");
  m.mutable_task_ack()->set_session_id(sid);
  m.mutable_task_ack()->set_task_no(no);
  send(m);
  m.mutable_task_precommit()->set_session_id(sid);
  m.mutable_task_precommit()->set_task_no(no);
  m.mutable_task_precommit()->set_output_hash(sha256_hex("the real output"));
  send(m);
  m.mutable_task_commit()->set_session_id(sid);
  m.mutable_task_commit()->set_task_no(no);
  m.mutable_task_commit()->set_output("a different output");
  send(m);
  EXPECT_EQ(last_refusal(), "reveal_mismatch");
  EXPECT_EQ(counted("reveal_mismatch"), 1u);
  auto s = state();
  // The pool counted the task as a MISMATCH: the node left the pool.
  EXPECT_EQ(s.node("p3")->state(), pb::QUARANTINED);
  EXPECT_TRUE(s.check_invariants().empty());
}

TEST_F(bad_input, test_answers_after_the_deadline_are_refused) {
  send(reg("p4"));
  auto test = last_of(&pb::OracleMsg::has_test);
  ASSERT_TRUE(test.has_test());
  run_for(std::chrono::milliseconds(test.test().deadline_ms() + 200));
  auto before = state();
  ASSERT_EQ(before.node("p4")->state(), pb::QUARANTINED);
  send(answers("p4", test.test()));
  EXPECT_EQ(last_refusal(), "after_deadline");
  EXPECT_EQ(counted("after_deadline"), 1u);
  EXPECT_EQ(state().node("p4")->state(), pb::QUARANTINED);
}

// ------------------------------------------------ cheats at cognitive tests

TEST_F(bad_input, answers_without_the_tests_nonce_are_a_replay_and_pass_nothing) {
  send(reg("r1"));
  auto test = last_of(&pb::OracleMsg::has_test);
  ASSERT_TRUE(test.has_test());
  ASSERT_EQ(test.test().nonce().size(), 32u);
  // Right answers, but written without the test in hand: no nonce, or a
  // made-up one.
  auto a = answers("r1", test.test());
  a.mutable_test_answers()->clear_nonce();
  send(a);
  EXPECT_EQ(last_refusal(), "replay");
  a.mutable_test_answers()->set_nonce(std::string(32, '0'));
  send(a);
  EXPECT_EQ(counted("replay"), 2u);
  EXPECT_EQ(state().node("r1")->state(), pb::TESTING);  // changed nothing
  // The test runs out: the node is kept out.
  run_for(std::chrono::milliseconds(test.test().deadline_ms() + 200));
  EXPECT_EQ(state().node("r1")->state(), pb::QUARANTINED);
}

TEST_F(bad_input, answers_copied_from_another_node_fail) {
  admit("honest");
  auto honest = last_of(&pb::OracleMsg::has_test);
  auto copied = answers("honest", honest.test());
  // The copier: a miner of its own (another connection).
  auto log2 = std::make_shared<probe_log>();
  auto copier = probe(log2);
  auto send2 = [&](const pb::MinerMsg& m) {
    caf::anon_send(copier, send_atom::value, m.SerializeAsString());
    sched_->run();
  };
  send2(reg("copier"));
  pb::OracleMsg test;
  for (auto& m : log2->received)
    if (m.has_test())
      test = m;
  ASSERT_TRUE(test.has_test());
  ASSERT_NE(test.test().test_id(), honest.test().test_id());
  // The other node's message as it was: its test id, its nonce.
  auto as_is = copied;
  as_is.set_node_id("copier");
  send2(as_is);
  ASSERT_FALSE(log2->refusal_codes().empty());
  EXPECT_EQ(log2->refusal_codes().back(), "stale_test");
  EXPECT_EQ(state().node("copier")->state(), pb::TESTING);
  // The same answers under the copier's own test, to other questions
  // (chosen with the oracles' secret for its id): a replay, refused.
  auto under_own = copied;
  under_own.set_node_id("copier");
  under_own.mutable_test_answers()->set_test_id(test.test().test_id());
  under_own.mutable_test_answers()->set_nonce(test.test().nonce());
  send2(under_own);
  EXPECT_EQ(log2->refusal_codes().back(), "replay");
  EXPECT_EQ(counted("replay"), 1u);
  EXPECT_EQ(state().node("copier")->state(), pb::TESTING);
  // An answer added past the questions asked changes nothing: still a copy.
  auto padded = under_own;
  padded.mutable_test_answers()->add_answers("one more");
  send2(padded);
  EXPECT_EQ(log2->refusal_codes().back(), "replay");
  EXPECT_EQ(counted("replay"), 2u);
  EXPECT_EQ(state().node("copier")->state(), pb::TESTING);
  // One answer changed: no longer a copy, so graded, and wrong.
  under_own.mutable_test_answers()->set_answers(0, "something else");
  send2(under_own);
  auto s = state();
  auto n = s.node("copier");
  EXPECT_EQ(n->state(), pb::QUARANTINED);
  EXPECT_EQ(n->state_reason().rfind("failed test", 0), 0u) << n->state_reason();
}

TEST_F(bad_input, a_hand_written_solver_fails_the_test) {
  send(reg("solver"));
  auto test = last_of(&pb::OracleMsg::has_test);
  pb::MinerMsg a;
  a.set_node_id("solver");
  a.mutable_test_answers()->set_test_id(test.test().test_id());
  a.mutable_test_answers()->set_nonce(test.test().nonce());
  for (auto& c : test.test().challenges())
    a.mutable_test_answers()->add_answers(sim_backend::arithmetic_solver(c.prompt()));
  send(a);
  EXPECT_EQ(state().node("solver")->state(), pb::QUARANTINED);
}

TEST_F(bad_input, an_answer_far_over_the_size_limit_is_refused) {
  send(reg("big"));
  auto test = last_of(&pb::OracleMsg::has_test);
  auto a = answers("big", test.test());
  a.mutable_test_answers()->set_answers(0, std::string(1 << 20, 'x'));
  auto before = state().node("big")->state();
  send(a);
  EXPECT_EQ(last_refusal(), "answer_too_large");
  EXPECT_EQ(counted("answer_too_large"), 1u);
  EXPECT_EQ(state().node("big")->state(), before);
  // The right answers still count while the test is in flight.
  send(answers("big", test.test()));
  EXPECT_EQ(state().node("big")->state(), pb::EPHEMERAL);
}

TEST_F(bad_input, task_result_after_the_phase_deadline_is_refused) {
  admit("p5");
  for (int i = 0; i < 3; ++i)
    add_node("h" + std::to_string(i), behaviour::healthy, i + 1);
  ASSERT_EQ(submit(session_req("s-late", 2, 1)), "accepted");
  auto task = last_of(&pb::OracleMsg::has_task);
  ASSERT_TRUE(task.has_task());
  // Let every phase deadline pass without an answer: a forced end.
  run_for(std::chrono::milliseconds(task.task().phase_timeout_ms() * 3 + 50));
  pb::MinerMsg m;
  m.set_node_id("p5");
  m.mutable_task_ack()->set_session_id(task.task().session_id());
  m.mutable_task_ack()->set_task_no(task.task().task_no());
  send(m);
  auto code = last_refusal();
  EXPECT_TRUE(code == "after_deadline" || code == "not_in_session"
              || code == "unknown_session")
    << code;
  auto s = state();
  EXPECT_EQ(s.node("p5")->state(), pb::QUARANTINED);  // TIMEOUT outcome
}

TEST_F(bad_input, forged_test_result_for_a_stale_test_is_refused) {
  admit("p6");
  pb::MinerMsg a;
  a.set_node_id("p6");
  a.mutable_test_answers()->set_test_id(12345);
  a.mutable_test_answers()->add_answers("1");
  auto before = snapshot_bytes();
  send(a);
  EXPECT_EQ(last_refusal(), "no_test_in_flight");
  EXPECT_EQ(snapshot_bytes(), before);
}

} // namespace
} // namespace nodepool::testing

namespace nodepool::testing {
namespace {

TEST_F(bad_input, outlier_output_among_redundant_nodes_loses_reputation) {
  admit("odd");
  for (int i = 0; i < 2; ++i)
    add_node("h" + std::to_string(i), behaviour::healthy, i + 1);
  run_for(std::chrono::milliseconds(100));
  ASSERT_EQ(state().count_by_state()[pb::EPHEMERAL], 3u);
  auto rep_before = state().node("odd")->reputation();
  ASSERT_EQ(submit(session_req("s-odd", 1, 3)), "accepted");
  auto task = last_of(&pb::OracleMsg::has_task);
  ASSERT_TRUE(task.has_task());
  auto sid = task.task().session_id();
  auto no = task.task().task_no();
  std::string mine = "a completely unrelated answer about cooking pasta";
  pb::MinerMsg m;
  m.set_node_id("odd");
  m.mutable_task_ack()->set_session_id(sid);
  m.mutable_task_ack()->set_task_no(no);
  send(m);
  m.mutable_task_precommit()->set_session_id(sid);
  m.mutable_task_precommit()->set_task_no(no);
  m.mutable_task_precommit()->set_output_hash(sha256_hex(mine));
  send(m);
  m.mutable_task_commit()->set_session_id(sid);
  m.mutable_task_commit()->set_task_no(no);
  m.mutable_task_commit()->set_output(mine);
  send(m);
  run_for(std::chrono::milliseconds(100));
  auto s = state();
  ASSERT_EQ(session_state("s-odd"), pb::COMPLETED);
  EXPECT_LT(s.node("odd")->reputation(), rep_before);
  EXPECT_GT(s.node("h0")->reputation(), rep_before);
  EXPECT_FALSE(s.node("odd")->recent().empty());
  EXPECT_FALSE(s.node("odd")->recent(s.node("odd")->recent_size() - 1));
}

// A node that registers again is AVAILABLE as far as the gateway knows, so
// the gateway forwards its next heartbeat only if that says otherwise. The
// pool must agree, or a node that was BUSY before it registered again stays
// BUSY in the pool for good and is never handed to a session.
TEST_F(bad_input, a_node_registering_again_is_available_again) {
  admit("m1");
  pb::MinerMsg hb;
  hb.set_node_id("m1");
  hb.mutable_heartbeat()->set_node_id("m1");
  hb.mutable_heartbeat()->set_mode(pb::BUSY);
  send(hb);
  ASSERT_EQ(state().node("m1")->mode(), pb::BUSY);
  admit("m1");  // the miner restarted its node: register, pass the test
  hb.mutable_heartbeat()->set_mode(pb::AVAILABLE);
  send(hb);
  EXPECT_EQ(state().node("m1")->mode(), pb::AVAILABLE);
  ASSERT_EQ(submit(session_req("s-mode", 1, 1)), "accepted");
  EXPECT_EQ(state().session("s-mode")->state(), pb::ACTIVE);
}

} // namespace
} // namespace nodepool::testing

namespace nodepool::testing {
namespace {

TEST_F(bad_input, heartbeats_stay_out_of_the_log_but_a_new_mode_goes_in) {
  admit("hb");
  auto before = store_->last_index();
  pb::MinerMsg hb;
  hb.set_node_id("hb");
  hb.mutable_heartbeat()->set_node_id("hb");
  hb.mutable_heartbeat()->set_mode(pb::AVAILABLE);
  for (int i = 0; i < 20; ++i) {
    send(hb);
    run_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(store_->last_index(), before);  // liveness is soft state
  hb.mutable_heartbeat()->set_mode(pb::DRAINING);
  send(hb);
  send(hb);  // the same mode again adds nothing
  EXPECT_EQ(store_->last_index(), before + 1);
  EXPECT_EQ(state().node("hb")->mode(), pb::DRAINING);
}

TEST_F(bad_input, models_out_of_bounds_are_refused_at_registration) {
  // A node's models go to the log and its record: at most 64, each named
  // by 1..128 characters.
  auto before = snapshot_bytes();
  auto many = reg("many");
  for (int i = 0; i < 64; ++i)
    many.mutable_register_()->add_models("m" + std::to_string(i));
  send(many);  // 65 models
  EXPECT_EQ(last_refusal(), "bad_models");
  auto long_name = reg("long");
  long_name.mutable_register_()->add_models(std::string(129, 'x'));
  send(long_name);
  EXPECT_EQ(last_refusal(), "bad_models");
  auto empty = reg("empty");
  empty.mutable_register_()->add_models("");
  send(empty);
  EXPECT_EQ(counted("bad_models"), 3u);
  EXPECT_EQ(snapshot_bytes(), before);
  // At the bounds, a node is taken.
  auto ok = reg("ok");
  for (int i = 0; i < 63; ++i) {
    auto name = std::to_string(i);
    name.resize(128, 'a');
    ok.mutable_register_()->add_models(name);
  }
  send(ok);
  EXPECT_NE(state().node("ok"), nullptr);
}

TEST_F(bad_input, a_session_whose_model_or_client_is_too_long_is_refused) {
  auto before = snapshot_bytes();
  auto s = session_req("s-long");
  s.set_model(std::string(129, 'm'));
  EXPECT_EQ(submit(s), "error:bad_field");
  s.set_model("llama-3-8b");
  s.set_client(std::string(257, 'c'));
  EXPECT_EQ(submit(s), "error:bad_field");
  s.set_client("c");
  s.set_reserve_period_ms(std::numeric_limits<int64_t>::max());
  EXPECT_EQ(submit(s), "error:bad_field");
  s.set_reserve_period_ms(0);
  EXPECT_EQ(snapshot_bytes(), before);
  auto j = nlohmann::json::parse(ask(oracle_.sessions, stats_atom::value));
  EXPECT_EQ(j["refused"]["bad_field"], 3u);
  s.set_client(std::string(256, 'c'));
  s.set_model(std::string(128, 'm'));
  EXPECT_EQ(submit(s), "accepted");
}

TEST_F(bad_input, a_prompt_refused_as_busy_ends_the_session_opened_for_it) {
  // 4096 prompts wait for sessions that have not started: the next is
  // refused, and told so (it once waited for an answer that never came).
  // The session opened for that prompt alone is ended, not left to hold
  // nodes for a prompt that will not come.
  ASSERT_EQ(submit(session_req("opened")), "accepted");  // queued: no nodes
  auto answers = std::make_shared<std::vector<std::string>>();
  auto sys = sys_.get();
  auto queue = oracle_.sessions;
  auto prompt = [](const std::string& sid, bool ends) {
    pb::PromptRequest p;
    p.set_session_id(sid);
    p.set_prompt("hi");
    p.set_timeout_ms(60000);
    p.set_ends_session(ends);
    return p.SerializeAsString();
  };
  auto waiting = prompt("not-started", false);
  auto last = prompt("opened", true);
  sys_->spawn([=](caf::event_based_actor* self) {
    for (int i = 0; i < 4096; ++i)
      self->request(queue, caf::infinite, prompt_atom::value, waiting)
        .then([=](const std::string&) { answers->push_back("answered early"); },
              [=](caf::error&) { answers->push_back("refused early"); });
  });
  sched_->run();
  sys_->spawn([=](caf::event_based_actor* self) {
    self->request(queue, caf::infinite, prompt_atom::value, last)
      .then([=](const std::string&) { answers->push_back("answered"); },
            [=](caf::error& e) { answers->push_back(read_refusal(*sys, e).first); });
  });
  sched_->run();
  ASSERT_EQ(*answers, std::vector<std::string>{"busy"});
  EXPECT_EQ(session_state("opened"), pb::FAILED);
}

} // namespace
} // namespace nodepool::testing

// ----------------------------------------------------- cross-checks, tokens

namespace nodepool::testing {
namespace {

/// A miner of its own (a connection of its own) that registers nodes and
/// answers their tests.
struct test_miner {
  std::shared_ptr<probe_log> log = std::make_shared<probe_log>();
  caf::actor a;
};

class cross_checks : public bad_input {
protected:
  const challenge_bank& bank() const {
    return tests_.bank ? *tests_.bank : *challenge_bank::builtin();
  }

  /// The prompts of the bank's peer items (no reference: cross-checked).
  std::set<std::string> peer_prompts() const {
    std::set<std::string> out;
    for (auto& it : bank().items())
      if (it.grade == grade_mode::peer)
        out.insert(it.prompt);
    return out;
  }

  test_miner miner() {
    test_miner m;
    m.a = probe(m.log);
    return m;
  }

  void send_as(test_miner& m, const pb::MinerMsg& msg) {
    caf::anon_send(m.a, send_atom::value, msg.SerializeAsString());
    sched_->run();
  }

  /// Registers `id` with `models` and answers its test: the bank's answers
  /// to graded items; to peer items the sim's (what every healthy node
  /// says), or `peer_text` if given. Returns the peer prompts it was asked.
  std::set<std::string> take_test(test_miner& m, const std::string& id,
                                  const std::vector<std::string>& models,
                                  const std::string& peer_text = {}) {
    pb::MinerMsg r;
    r.set_node_id(id);
    r.mutable_register_()->set_node_id(id);
    for (auto& x : models)
      r.mutable_register_()->add_models(x);
    auto before = m.log->received.size();
    send_as(m, r);
    pb::OracleMsg test;
    for (auto i = before; i < m.log->received.size(); ++i)
      if (m.log->received[i].has_test())
        test = m.log->received[i];
    EXPECT_TRUE(test.has_test()) << id;
    auto peers = peer_prompts();
    sim_knowledge knows{bank()};
    std::set<std::string> asked;
    pb::MinerMsg a;
    a.set_node_id(id);
    a.mutable_test_answers()->set_test_id(test.test().test_id());
    a.mutable_test_answers()->set_nonce(test.test().nonce());
    for (auto& c : test.test().challenges()) {
      bool peer = peers.count(c.prompt()) > 0;
      if (peer)
        asked.insert(c.prompt());
      a.mutable_test_answers()->add_answers(
        peer && !peer_text.empty() ? peer_text
                                   : knows.answer(c.prompt()));
    }
    send_as(m, a);
    return asked;
  }

  /// `rounds` tests of node `id` on `models`, all passed: the peer prompts
  /// its references cover.
  std::set<std::string> pass_tests(test_miner& m, const std::string& id,
                                   const std::vector<std::string>& models,
                                   int rounds = 8) {
    std::set<std::string> all;
    for (int i = 0; i < rounds; ++i) {
      auto asked = take_test(m, id, models);
      all.insert(asked.begin(), asked.end());
      EXPECT_EQ(state().node(id)->state(), pb::EPHEMERAL) << id;
    }
    return all;
  }

  static bool covers(const std::set<std::string>& big, const std::set<std::string>& small) {
    return std::includes(big.begin(), big.end(), small.begin(), small.end());
  }

  static std::string nonsense() { return "zzz qqq the moon is made of green cheese"; }
};

// A miner that passes a few tests on a model no one else serves gives that
// model references of its own. Listed first beside a served model, that
// model must not be the one its answers are checked against (nothing to
// compare them with: no cross-check at all): only other nodes' references
// count.
TEST_F(cross_checks, a_model_only_its_own_node_serves_does_not_switch_off_the_cross_check) {
  auto h1 = miner(), h2 = miner(), cheat = miner();
  auto served = pass_tests(h1, "honest-1", {"llama-3-8b"});
  auto served2 = pass_tests(h2, "honest-2", {"llama-3-8b"});
  served.insert(served2.begin(), served2.end());
  auto own = pass_tests(cheat, "cheat", {"zz-private"});
  // Its answers to the peer items are now nonsense: checked against the
  // served model's references, they fail.
  auto asked = take_test(cheat, "cheat", {"zz-private", "llama-3-8b"}, nonsense());
  ASSERT_FALSE(asked.empty());
  ASSERT_TRUE(covers(served, asked) && covers(own, asked))
    << "the last test's peer items must have references of both models";
  auto s = state();
  auto n = s.node("cheat");
  EXPECT_EQ(n->state(), pb::QUARANTINED);
  EXPECT_NE(n->state_reason().find("cross_check"), std::string::npos) << n->state_reason();
}

// Model names come from miners: one inventing them fills the table of
// references. Past its bound a new pair takes the place of one with a
// single node behind it: a model served by several keeps its references,
// and a model that comes later is cross-checked too. (A bank of one peer
// item, in every test: one pair per model.)
class cross_checks_few_references : public cross_checks {
protected:
  void SetUp() override {
    tests_.bank = std::make_shared<const challenge_bank>(challenge_bank::parse(
      R"({"id":"a","level":0,"grade":"exact","prompt":"Is water wet? Yes or no.","answer":"yes"}
{"id":"b","level":0,"grade":"number","prompt":"What is 2 + 3?","answer":"5"}
{"id":"p","level":0,"grade":"peer","prompt":"Describe the sea in one sentence."})",
      "one-peer.jsonl"));
    tests_.max_reference_keys = 4;
    cross_checks::SetUp();
  }
};

TEST_F(cross_checks_few_references, invented_models_do_not_crowd_out_the_references) {
  auto h1 = miner(), h2 = miner(), junk = miner(), later = miner(), liar = miner();
  auto served = pass_tests(h1, "honest-1", {"llama-3-8b"}, 1);
  auto served2 = pass_tests(h2, "honest-2", {"llama-3-8b"}, 1);
  served.insert(served2.begin(), served2.end());
  for (int i = 0; i < 12; ++i)
    pass_tests(junk, "junk", {"junk-" + std::to_string(i)}, 1);
  auto m2 = pass_tests(later, "m2-first", {"m2"}, 1);
  // A node of the later model that answers nonsense is caught ...
  auto asked = take_test(liar, "m2-liar", {"m2"}, nonsense());
  ASSERT_TRUE(covers(m2, asked)) << "the test's peer items must have m2 references";
  {
    auto s = state();
    EXPECT_EQ(s.node("m2-liar")->state(), pb::QUARANTINED);
  }
  // ... and so is one of the model served from the start.
  auto liar2 = miner();
  asked = take_test(liar2, "llama-liar", {"llama-3-8b"}, nonsense());
  ASSERT_TRUE(covers(served, asked));
  auto s = state();
  auto n = s.node("llama-liar");
  EXPECT_EQ(n->state(), pb::QUARANTINED);
  EXPECT_NE(n->state_reason().find("cross_check"), std::string::npos) << n->state_reason();
}

// The tokens a node reports set its speed, which the pool holds against
// test_min_tokens_per_s: more than the questions allowed is refused (the
// test stays in flight) rather than taken as a fast node.
TEST_F(cross_checks, tokens_beyond_what_the_questions_allowed_are_refused) {
  auto m = miner();
  pb::MinerMsg r;
  r.set_node_id("fast");
  r.mutable_register_()->set_node_id("fast");
  r.mutable_register_()->add_models("llama-3-8b");
  send_as(m, r);
  pb::OracleMsg test;
  for (auto& x : m.log->received)
    if (x.has_test())
      test = x;
  ASSERT_TRUE(test.has_test());
  pb::MinerMsg a;
  a.set_node_id("fast");
  a.mutable_test_answers()->set_test_id(test.test().test_id());
  a.mutable_test_answers()->set_nonce(test.test().nonce());
  uint64_t allowed = 0;
  for (auto& c : test.test().challenges()) {
    a.mutable_test_answers()->add_answers(sim_knowledge::builtin()->answer(c.prompt()));
    allowed += c.max_tokens();
  }
  a.mutable_test_answers()->add_tokens(4000000000u);
  send_as(m, a);
  ASSERT_FALSE(m.log->refusal_codes().empty());
  EXPECT_EQ(m.log->refusal_codes().back(), "bad_tokens");
  EXPECT_EQ(counted("bad_tokens"), 1u);
  EXPECT_EQ(state().node("fast")->state(), pb::TESTING);
  // As many as allowed: taken.
  a.mutable_test_answers()->set_tokens(0, static_cast<uint32_t>(allowed));
  send_as(m, a);
  EXPECT_EQ(state().node("fast")->state(), pb::EPHEMERAL);
}

} // namespace
} // namespace nodepool::testing
