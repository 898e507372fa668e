// The whole single-oracle lifecycle under the test coordinator.
#include "fixture.hpp"

#include "actors/local.hpp"

#include <nlohmann/json.hpp>

using namespace std::chrono_literals;

namespace nodepool::testing {
namespace {

class lifecycle : public actor_test {};

TEST_F(lifecycle, healthy_nodes_pass_admission_and_serve_sessions) {
  start(fast_params());
  for (int i = 0; i < 4; ++i)
    add_node("n" + std::to_string(i), behaviour::healthy, i + 1);
  run_for(200ms);
  auto s = state();
  EXPECT_EQ(s.count_by_state()[pb::EPHEMERAL], 4u);
  EXPECT_EQ(s.tests_passed(), 4u);
  for (int i = 0; i < 6; ++i)
    EXPECT_EQ(submit(session_req("s" + std::to_string(i), 4, 2)), "accepted");
  run_for(5s);
  s = state();
  auto counts = s.session_counts();
  EXPECT_EQ(counts[pb::COMPLETED], 6u);
  EXPECT_TRUE(s.check_invariants().empty());
  // Every node went through re-validation after its sessions and is back.
  EXPECT_GT(s.tests_passed(), 4u);
  EXPECT_EQ(s.count_by_state()[pb::EPHEMERAL], 4u);
  // Sessions measured how fast the nodes served (sim replies take 2-32 ms
  // of simulated time per phase).
  size_t measured = 0;
  for (auto& [id, n] : s.nodes())
    if (n.latency_ms() > 0) {
      ++measured;
      EXPECT_LT(n.latency_ms(), 1000) << id;
    }
  EXPECT_GE(measured, 2u);
}

TEST_F(lifecycle, wrong_nodes_are_quarantined_then_retired) {
  auto p = fast_params();
  p.max_strikes = 3;
  start(p);
  auto bad = add_node("bad", behaviour::wrong, 7);
  run_for(200ms);
  EXPECT_EQ(state().node("bad")->state(), pb::QUARANTINED);
  // Backoff 1 s, 2 s: two more failed retests retire it.
  run_for(5s);
  auto s = state();
  EXPECT_EQ(s.node("bad")->state(), pb::RETIRED);
  EXPECT_EQ(s.tests_failed(), 3u);
  // The miner was told and its node actor left.
  EXPECT_EQ(ask(bad, stats_atom::value).rfind("error:", 0), 0u);
}

TEST_F(lifecycle, slow_node_fails_by_deadline) {
  start(fast_params());
  add_node("slow", behaviour::slow, 3);
  run_for(700ms);
  auto s = state();
  EXPECT_EQ(s.node("slow")->state(), pb::QUARANTINED);
  EXPECT_TRUE(s.node("slow")->last_test_failed());
}

TEST_F(lifecycle, a_slow_node_with_right_answers_fails_too_slow) {
  auto p = fast_params();
  p.test_latency_ms = "200";  // under the 500 ms deadline: room to be slow
  start(p);
  add_node("slow", behaviour::slow, 3);
  add_node("fast", behaviour::healthy, 4);
  run_for(700ms);
  auto s = state();
  EXPECT_EQ(s.node("fast")->state(), pb::EPHEMERAL);
  ASSERT_EQ(s.node("slow")->state(), pb::QUARANTINED);
  // Answered (in 350 ms, between bound and deadline), and right: too slow.
  EXPECT_EQ(s.node("slow")->state_reason().rfind("too_slow: answered in 35", 0), 0u)
    << s.node("slow")->state_reason();
}

TEST_F(lifecycle, miners_without_the_model_never_enter_the_pool) {
  auto p = fast_params();
  p.max_strikes = 3;
  start(p);
  // Healthy nodes and two cheats in one miner: a hand-written solver, and
  // a copycat that replays what its healthy neighbours answered.
  auto tape = std::make_shared<answer_tape>();
  auto node = [&](const std::string& id, behaviour b, uint64_t seed) {
    node_config nc;
    nc.id = id;
    nc.kind = b;
    nc.seed = seed;
    nc.tape = tape;
    add_node(std::move(nc));
  };
  for (int i = 0; i < 3; ++i)
    node("h" + std::to_string(i), behaviour::healthy, i + 1);
  run_for(100ms);
  ASSERT_FALSE(tape->answers.empty()) << "the healthy nodes wrote nothing to copy";
  node("solver", behaviour::solver, 8);
  node("copycat", behaviour::copycat, 9);
  // Long enough for every retest of the cheats (backoff 1 s, 2 s) and
  // re-validations of the healthy nodes after sessions.
  for (int i = 0; i < 4; ++i)
    EXPECT_EQ(submit(session_req("s" + std::to_string(i), 2, 1)), "accepted");
  run_for(6s);
  auto s = state();
  for (auto id : {"solver", "copycat"}) {
    EXPECT_EQ(s.node(id)->state(), pb::RETIRED) << id;
    EXPECT_EQ(s.node(id)->passed_at(), 0) << id << " passed a test";
  }
  for (int i = 0; i < 3; ++i)
    EXPECT_EQ(s.node("h" + std::to_string(i))->state(), pb::EPHEMERAL);
  EXPECT_EQ(s.session_counts()[pb::COMPLETED], 4u);
  EXPECT_TRUE(s.check_invariants().empty());
}

TEST_F(lifecycle, the_same_right_answers_to_other_questions_are_no_replay) {
  // A bank whose every question has the answer "yes": nodes asked
  // different questions answer alike, and rightly.
  tests_.bank = std::make_shared<const challenge_bank>(challenge_bank::parse(
    R"({"id":"a","level":0,"grade":"exact","prompt":"Is water wet? Yes or no.","answer":"yes"}
{"id":"b","level":0,"grade":"exact","prompt":"Is fire hot? Yes or no.","answer":"yes"}
{"id":"c","level":0,"grade":"exact","prompt":"Is ice cold? Yes or no.","answer":"yes"}
{"id":"d","level":0,"grade":"exact","prompt":"Is snow white? Yes or no.","answer":"yes"})",
    "yes.jsonl"));
  auto p = fast_params();
  p.challenges_per_test = 2;
  p.peer_share = 0;
  start(p);
  auto knows = std::make_shared<const sim_knowledge>(*tests_.bank);
  for (int i = 0; i < 6; ++i) {
    node_config nc;
    nc.id = "y" + std::to_string(i);
    nc.seed = i + 1;
    nc.knowledge = knows;
    add_node(std::move(nc));
  }
  run_for(300ms);
  auto s = state();
  // Six nodes, two of four questions each: some were asked other
  // questions than an earlier node and sent the same ["yes","yes"].
  EXPECT_EQ(s.count_by_state()[pb::EPHEMERAL], 6u);
  EXPECT_EQ(s.tests_passed(), 6u);
}

TEST_F(lifecycle, crashed_node_is_lost_and_its_session_requeued) {
  start(fast_params());
  add_node("c", behaviour::crash, 11);
  run_for(200ms);
  // The crashing node is the only one in the pool: it gets the session
  // (and dies on its first task, seed 11 gives it six messages).
  EXPECT_EQ(submit(session_req("long", 40, 1)), "accepted");
  add_node("h", behaviour::healthy, 12);
  run_for(10s);
  auto s = state();
  EXPECT_EQ(s.node("c")->state(), pb::LOST);
  EXPECT_EQ(session_state("long"), pb::COMPLETED);
  EXPECT_TRUE(s.check_invariants().empty());
  // The stored history shows c serving the session, then the session back
  // in the queue after the crash (it had no node left), then served by h.
  pool_state replay;
  bool c_served = false, requeued = false;
  ASSERT_TRUE(store_->scan(1, [&](const pb::LogEntry& e) {
    replay.apply(e.command(), e.now());
    auto* c = replay.node("c");
    if (c && c->session_id() == "long")
      c_served = true;
    auto* l = replay.session("long");
    if (c_served && l && l->state() == pb::QUEUED)
      requeued = true;
  }).ok());
  EXPECT_TRUE(c_served);
  EXPECT_TRUE(requeued);
}

TEST_F(lifecycle, heartbeat_loss_is_detected_without_a_down_message) {
  start(fast_params());
  auto n = add_node("quiet", behaviour::healthy, 5);
  run_for(200ms);
  ASSERT_EQ(state().node("quiet")->state(), pb::EPHEMERAL);
  // Suspend the node's heartbeats: it stays alive (no down_msg) but silent.
  caf::anon_send(n, connect_atom::value, caf::actor{});
  run_for(1s);
  EXPECT_EQ(state().node("quiet")->state(), pb::LOST);
}

// A miner restarted while its old connection still looks alive is refused
// with node_id_in_use. Once the oracle gives up on the old connection (here:
// heartbeats missed), the new node actor must get in; it must not wait
// unregistered forever.
TEST_F(lifecycle, node_refused_as_in_use_registers_once_the_old_one_is_gone) {
  start(fast_params());
  auto old = add_node("twin", behaviour::healthy, 1);
  run_for(200ms);
  ASSERT_EQ(state().node("twin")->state(), pb::EPHEMERAL);
  caf::anon_send(old, connect_atom::value, caf::actor{});  // silent, not down
  auto fresh = add_node("twin", behaviour::healthy, 2);
  run_for(3s);
  auto s = state();
  EXPECT_EQ(s.node("twin")->state(), pb::EPHEMERAL);
  auto stats = nlohmann::json::parse(ask(fresh, stats_atom::value));
  EXPECT_TRUE(stats["registered"].get<bool>()) << stats.dump();
  EXPECT_GE(stats["refusals"].value("node_id_in_use", 0), 1) << stats.dump();
}

// The supervisor publishes a commit's events before it answers the
// commands in it, and on a multi-core scheduler the validator can turn a
// TestRequested into a test for the gateway before the gateway has heard
// that the node's registration was accepted. That test must still reach the
// node: a new node must not fail its admission test (and take a strike)
// because the gateway had not bound it yet. Reproduced deterministically
// with a stand-in supervisor that holds its answer.
TEST_F(lifecycle, test_sent_while_the_registration_commits_reaches_the_node) {
  // A supervisor that holds its answers until told: the gateway's commands
  // come with tickets (actors/tickets.hpp).
  auto held = std::make_shared<std::vector<std::pair<caf::actor, uint64_t>>>();
  auto sup = sys_->spawn([=](caf::event_based_actor* self) -> caf::behavior {
    return {
      [=](cmd_atom, const local_command&, uint64_t ticket) {
        held->emplace_back(caf::actor_cast<caf::actor>(self->current_sender()),
                           ticket);
      },
      [=](accepted_atom) {
        for (auto& [to, ticket] : *held)
          self->send(to, answer_atom::value, ticket, pb::REFUSAL_NONE,
                     std::string{});
        held->clear();
      },
    };
  });
  spawned_.push_back(sup);
  auto log = register_through_gateway_over(sup, "early", "llama-3-8b");
  ASSERT_EQ(held->size(), 1u);
  // What the validator sends on TestRequested, ahead of the answer.
  pb::OracleMsg test;
  test.mutable_test()->set_test_id(1);
  test.mutable_test()->set_deadline_ms(500);
  caf::scoped_actor{*sys_}->send(oracle_.gateway, send_atom::value,
                                 std::string{"early"}, test.SerializeAsString());
  sched_->run();
  caf::anon_send(sup, accepted_atom::value);
  sched_->run();
  bool got_test = false, got_registered = false;
  for (auto& m : log->received) {
    got_test = got_test || m.has_test();
    got_registered = got_registered || m.has_registered();
  }
  EXPECT_TRUE(got_registered);
  EXPECT_TRUE(got_test);
  auto stats = nlohmann::json::parse(ask(oracle_.gateway, stats_atom::value));
  EXPECT_EQ(stats["undeliverable"].get<uint64_t>(), 0u);
}

// While one connection's registration of a node id is being committed,
// another connection may not register the same id: both would end up bound
// and the first could act as the node.
TEST_F(lifecycle, two_connections_cannot_register_one_id_at_once) {
  start(fast_params());
  auto la = std::make_shared<probe_log>(), lb = std::make_shared<probe_log>();
  auto a = probe(la), b = probe(lb);
  pb::MinerMsg reg;
  reg.set_node_id("dup");
  reg.mutable_register_()->set_node_id("dup");
  reg.mutable_register_()->add_models("llama-3-8b");
  // Both land in the gateway's mailbox before the supervisor answers.
  caf::anon_send(a, send_atom::value, reg.SerializeAsString());
  caf::anon_send(b, send_atom::value, reg.SerializeAsString());
  sched_->run();
  auto registered = [](const probe_log& l) {
    for (auto& m : l.received)
      if (m.has_registered())
        return true;
    return false;
  };
  EXPECT_TRUE(registered(*la));
  EXPECT_FALSE(registered(*lb));
  EXPECT_EQ(lb->refusal_codes(), std::vector<std::string>{"node_id_in_use"});
  auto stats = nlohmann::json::parse(ask(oracle_.gateway, stats_atom::value));
  EXPECT_EQ(stats["connected"].get<uint64_t>(), 1u);
}

} // namespace
} // namespace nodepool::testing

// Idle scheduler workers stop polling sooner than CAF's default would let
// them (actors/config.hpp): the key is the one CAF's scheduler reads, and a
// system started from the configuration runs actors.
TEST(actor_config_test, idle_workers_poll_less_than_cafs_default_before_sleeping) {
  nodepool::actor_config cfg{false};
  EXPECT_EQ(caf::get_or(cfg, "work-stealing.moderate-poll-attempts", size_t{0}),
            nodepool::moderate_poll_attempts);
  EXPECT_LT(nodepool::moderate_poll_attempts,
            caf::defaults::work_stealing::moderate_poll_attempts);
  caf::actor_system sys{cfg};
  auto echo = sys.spawn([]() -> caf::behavior {
    return {[](int x) { return x + 1; }};
  });
  caf::scoped_actor self{sys};
  int got = 0;
  self->request(echo, std::chrono::seconds(30), 41)
    .receive([&](int y) { got = y; }, [&](caf::error&) {});
  EXPECT_EQ(got, 42);
  caf::anon_send_exit(echo, caf::exit_reason::user_shutdown);
}
