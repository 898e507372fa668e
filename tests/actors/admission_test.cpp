// Signed admission through the real gateway: keys on the allow-list and
// join-token holders get in; unknown keys, bad proofs and replays are
// refused, counted and change nothing; a refused node actor is told why and
// stops.
#include "fixture.hpp"
#include "identity.hpp"

#include <nlohmann/json.hpp>

using namespace std::chrono_literals;

namespace nodepool::testing {
namespace {

class admission : public actor_test {
protected:
  void SetUp() override {
    allowed_ = std::make_shared<node_key>(node_key::generate());
    stranger_ = std::make_shared<node_key>(node_key::generate());
    admission_.allowed_keys.insert(allowed_->public_key());
    admission_.join_tokens.insert("operator-token-0001");
    auto p = fast_params();
    p.heartbeat_timeout_ms = 60000;  // probes send no heartbeats
    start(p);
  }

  caf::actor keyed_node(const std::string& id, std::shared_ptr<node_key> k,
                        const std::string& token = {}) {
    node_config nc;
    nc.id = id;
    nc.key = k;
    nc.join_token = token;
    return add_node(std::move(nc));
  }

  uint64_t counted(const std::string& code) {
    auto j = nlohmann::json::parse(ask(oracle_.gateway, stats_atom::value));
    return j["refused"].value(code, uint64_t{0});
  }

  std::shared_ptr<node_key> allowed_, stranger_;
};

TEST_F(admission, an_allowed_key_registers_and_serves) {
  keyed_node("k1", allowed_);
  run_for(1s);
  auto s = state();
  ASSERT_NE(s.node("k1"), nullptr);
  EXPECT_EQ(s.node("k1")->state(), pb::EPHEMERAL);
  EXPECT_EQ(s.node("k1")->public_key(), allowed_->public_key());
  ASSERT_EQ(submit(session_req("x1", 2)), "accepted");
  run_for(2s);
  EXPECT_EQ(session_state("x1"), pb::COMPLETED);
}

TEST_F(admission, a_join_token_admits_an_unknown_key) {
  keyed_node("t1", stranger_, "operator-token-0001");
  run_for(1s);
  auto s = state();
  ASSERT_NE(s.node("t1"), nullptr);
  EXPECT_EQ(s.node("t1")->state(), pb::EPHEMERAL);
  // The token proves the right to join; the log keeps only the key.
  bool token_in_log = false;
  store_->scan(1, [&](const pb::LogEntry& e) {
    if (e.command().has_register_()
        && (!e.command().register_().join_token().empty()
            || !e.command().register_().signature().empty()))
      token_in_log = true;
  });
  EXPECT_FALSE(token_in_log);
}

// A node whose id or models are out of bounds would be refused again at
// every registration: it stops, with the reason, instead of retrying for
// good (before, it registered again every few seconds, refused at debug
// level, while its miner said it was connected).
TEST_F(admission, a_node_id_or_model_out_of_bounds_stops_its_node) {
  auto bad_id = keyed_node("bad id", allowed_);
  node_config nc;
  nc.id = "k2";
  nc.key = allowed_;
  nc.models = {std::string(129, 'm')};
  auto bad_model = add_node(std::move(nc));
  run_for(1s);
  EXPECT_EQ(exit_code_of(bad_id), "bad_node_id");
  EXPECT_EQ(exit_code_of(bad_model), "bad_models");
  EXPECT_EQ(state().node("bad id"), nullptr);
  EXPECT_EQ(state().node("k2"), nullptr);
}

TEST_F(admission, an_unknown_key_is_refused_and_its_node_stops) {
  auto before = ask(oracle_.supervisor, state_atom::value);
  auto n = keyed_node("u1", stranger_);
  auto w = keyed_node("u2", stranger_, "not-the-token-0000");
  auto kl = keyed_node("u3", nullptr);  // no key at all
  run_for(1s);
  EXPECT_EQ(exit_code_of(n), "key_not_allowed");
  EXPECT_EQ(exit_code_of(w), "key_not_allowed");
  EXPECT_EQ(exit_code_of(kl), "key_required");
  EXPECT_EQ(counted("key_not_allowed"), 2u);
  EXPECT_EQ(counted("key_required"), 1u);
  EXPECT_EQ(ask(oracle_.supervisor, state_atom::value), before);
}

TEST_F(admission, forged_and_replayed_proofs_are_refused) {
  auto log = std::make_shared<probe_log>();
  auto p = probe(log);
  auto send = [&](const pb::MinerMsg& m) {
    caf::anon_send(p, send_atom::value, m.SerializeAsString());
    sched_->run();
  };
  pb::MinerMsg m;
  m.set_node_id("f1");
  auto* r = m.mutable_register_();
  r->set_node_id("f1");
  r->add_models("llama-3-8b");
  r->set_public_key(allowed_->public_key());
  send(m);
  ASSERT_FALSE(log->received.empty());
  ASSERT_TRUE(log->received.back().has_nonce());
  auto nonce = log->received.back().nonce().nonce();
  // Signed by someone without the allowed key's private half.
  r->set_nonce(nonce);
  r->set_signature(stranger_->sign(registration_message("f1", allowed_->public_key(), nonce)));
  send(m);
  EXPECT_EQ(log->refusal_codes().back(), "bad_signature");
  // Start over for a fresh nonce, and sign it with the right key.
  pb::MinerMsg plain = m;
  plain.mutable_register_()->clear_nonce();
  plain.mutable_register_()->clear_signature();
  send(plain);
  ASSERT_TRUE(log->received.back().has_nonce());
  nonce = log->received.back().nonce().nonce();
  r->set_nonce(nonce);
  r->set_signature(allowed_->sign(registration_message("f1", allowed_->public_key(), nonce)));
  send(m);
  run_for(100ms);
  EXPECT_EQ(state().node("f1")->public_key(), allowed_->public_key());
  // The node disconnects; someone who recorded its proof replays it on a
  // connection of their own.
  caf::anon_send_exit(p, caf::exit_reason::kill);
  run_for(100ms);
  auto before = ask(oracle_.supervisor, state_atom::value);
  auto log2 = std::make_shared<probe_log>();
  auto p2 = probe(log2);
  caf::anon_send(p2, send_atom::value, m.SerializeAsString());
  sched_->run();
  ASSERT_FALSE(log2->refusal_codes().empty());
  EXPECT_EQ(log2->refusal_codes().back(), "bad_nonce");
  EXPECT_EQ(counted("bad_nonce"), 1u);
  EXPECT_EQ(counted("bad_signature"), 1u);
  EXPECT_EQ(ask(oracle_.supervisor, state_atom::value), before);
}

TEST_F(admission, a_registered_id_cannot_be_taken_with_another_key) {
  auto first = keyed_node("k1", allowed_);
  run_for(1s);
  ASSERT_EQ(state().node("k1")->state(), pb::EPHEMERAL);
  // The first node goes away; someone with a token and another key tries
  // the same id: the pool keeps the id bound to its first key.
  auto before_key = state().node("k1")->public_key();
  caf::anon_send_exit(first, caf::exit_reason::kill);
  run_for(100ms);
  auto n = keyed_node("k1", stranger_, "operator-token-0001");
  run_for(1s);
  EXPECT_EQ(exit_code_of(n), "key_mismatch");
  EXPECT_EQ(state().node("k1")->public_key(), before_key);
}

} // namespace
} // namespace nodepool::testing
