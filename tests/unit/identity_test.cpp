// Node keys, allow-lists, join tokens and the signed-registration check.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <sys/stat.h>

#include "identity.hpp"

namespace nodepool {
namespace {

std::string temp_file(const std::string& tag, const std::string& text = {}) {
  auto path = ::testing::TempDir() + "nodepool-" + tag + "-" + std::to_string(::getpid());
  if (!text.empty())
    std::ofstream(path) << text;
  return path;
}

pb::Register reg(const std::string& id, const node_key* k) {
  pb::Register r;
  r.set_node_id(id);
  r.add_models("llama-3-8b");
  if (k)
    r.set_public_key(k->public_key());
  return r;
}

pb::Register signed_reg(const std::string& id, const node_key& k,
                        const std::string& nonce, const std::string& token = {}) {
  auto r = reg(id, &k);
  r.set_nonce(nonce);
  r.set_signature(k.sign(registration_message(id, k.public_key(), nonce)));
  r.set_join_token(token);
  return r;
}

TEST(node_key, signs_and_verifies_and_survives_a_file) {
  auto k = node_key::generate();
  EXPECT_EQ(k.public_key().size(), 32u);
  auto sig = k.sign("hello");
  EXPECT_TRUE(verify_signature(k.public_key(), "hello", sig));
  EXPECT_FALSE(verify_signature(k.public_key(), "hellO", sig));
  auto other = node_key::generate();
  EXPECT_NE(other.public_key(), k.public_key());
  EXPECT_FALSE(verify_signature(other.public_key(), "hello", sig));
  EXPECT_FALSE(verify_signature(k.public_key(), "hello", sig.substr(1)));

  auto path = temp_file("key");
  k.save(path);
  struct stat st{};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto back = node_key::load(path);
  EXPECT_EQ(back.public_key(), k.public_key());
  EXPECT_TRUE(verify_signature(k.public_key(), "x", back.sign("x")));
  // Written over a file readable by all (keygen --force), it is private.
  ASSERT_EQ(::chmod(path.c_str(), 0644), 0);
  other.save(path);
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(node_key::load(path).public_key(), other.public_key());
  std::remove(path.c_str());
}

TEST(node_key, a_bad_key_file_is_a_clear_error) {
  auto path = temp_file("badkey", "not a key\n");
  try {
    node_key::load(path);
    FAIL() << "loaded a key from garbage";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("no readable PEM private key"),
              std::string::npos) << e.what();
  }
  std::remove(path.c_str());
  EXPECT_THROW(node_key::load("/nonexistent/key"), std::runtime_error);
}

TEST(allow_list, reads_keys_and_names_the_bad_line) {
  auto a = node_key::generate(), b = node_key::generate();
  auto path = temp_file("allow", "# miners of rack 1\n" + to_hex(a.public_key())
                                   + " rack1-a\n\n" + to_hex(b.public_key()) + "\n");
  admission_policy p;
  load_allow_list(path, p);
  EXPECT_EQ(p.allowed_keys.size(), 2u);
  EXPECT_TRUE(p.allowed_keys.count(a.public_key()));
  EXPECT_FALSE(p.open());
  auto bad = temp_file("allow-bad", to_hex(a.public_key()) + "\nabc123\n");
  try {
    load_allow_list(bad, p);
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(":2: expected a 64-digit hex"),
              std::string::npos) << e.what();
  }
  auto tokens = temp_file("tokens", "short\n");
  EXPECT_THROW(load_join_tokens(tokens, p), std::runtime_error);
  for (auto& f : {path, bad, tokens})
    std::remove(f.c_str());
  EXPECT_EQ(make_join_token().size(), 48u);
  EXPECT_NE(make_join_token(), make_join_token());
}

TEST(authenticator, open_pool_admits_keyless_nodes_but_keyed_ones_prove_it) {
  authenticator auth;
  std::string nonce;
  EXPECT_FALSE(auth.check(1, reg("n1", nullptr), nonce));
  EXPECT_TRUE(nonce.empty());
  auto k = node_key::generate();
  EXPECT_FALSE(auth.check(1, reg("n1", &k), nonce));
  ASSERT_EQ(nonce.size(), 32u);
  EXPECT_FALSE(auth.check(1, signed_reg("n1", k, nonce), nonce));
  EXPECT_TRUE(nonce.empty());  // admitted
}

TEST(authenticator, closed_pool_refuses_what_it_does_not_know) {
  auto allowed = node_key::generate(), stranger = node_key::generate();
  admission_policy p;
  p.allowed_keys.insert(allowed.public_key());
  p.join_tokens.insert("operator-token-0001");
  authenticator auth{p};
  std::string nonce;

  auto no = auth.check(1, reg("n1", nullptr), nonce);
  ASSERT_TRUE(no);
  EXPECT_EQ(no->name(), "key_required");

  ASSERT_FALSE(auth.check(1, reg("n1", &allowed), nonce));
  EXPECT_FALSE(auth.check(1, signed_reg("n1", allowed, nonce), nonce));

  ASSERT_FALSE(auth.check(2, reg("n2", &stranger), nonce));
  no = auth.check(2, signed_reg("n2", stranger, nonce), nonce);
  ASSERT_TRUE(no);
  EXPECT_EQ(no->name(), "key_not_allowed");
  EXPECT_NE(no->detail.find(to_hex(stranger.public_key())), std::string::npos);

  ASSERT_FALSE(auth.check(2, reg("n2", &stranger), nonce));
  no = auth.check(2, signed_reg("n2", stranger, nonce, "wrong-token-000000"), nonce);
  ASSERT_TRUE(no);
  EXPECT_EQ(no->name(), "key_not_allowed");

  ASSERT_FALSE(auth.check(2, reg("n2", &stranger), nonce));
  EXPECT_FALSE(auth.check(2, signed_reg("n2", stranger, nonce, "operator-token-0001"),
                          nonce));
}

// An allow-list that names no key (its last one commented out) admits no
// one: before, an empty list was the same as none, and opened the pool.
TEST(authenticator, an_empty_allow_list_admits_no_one) {
  auto path = temp_file("allow-empty", "# rack 1, retired\n# deadbeef\n\n");
  auto tokens = temp_file("tokens-empty", "# none yet\n");
  for (bool use_tokens : {false, true}) {
    admission_policy p;
    if (use_tokens)
      load_join_tokens(tokens, p);
    else
      load_allow_list(path, p);
    EXPECT_FALSE(p.open());
    authenticator auth{p};
    std::string nonce;
    auto no = auth.check(1, reg("n1", nullptr), nonce);
    ASSERT_TRUE(no);
    EXPECT_EQ(no->name(), "key_required");
    auto k = node_key::generate();
    ASSERT_FALSE(auth.check(2, reg("n2", &k), nonce));
    no = auth.check(2, signed_reg("n2", k, nonce), nonce);
    ASSERT_TRUE(no);
    EXPECT_EQ(no->name(), "key_not_allowed");
  }
  std::remove(path.c_str());
  std::remove(tokens.c_str());
}

TEST(authenticator, signatures_are_good_once_on_their_own_connection) {
  auto k = node_key::generate(), thief = node_key::generate();
  authenticator auth;
  std::string nonce;
  ASSERT_FALSE(auth.check(1, reg("n1", &k), nonce));
  auto proof = signed_reg("n1", k, nonce);
  // Replayed on another connection: that connection was given no nonce, or
  // another one.
  auto no = auth.check(2, proof, nonce);
  ASSERT_TRUE(no);
  EXPECT_EQ(no->name(), "bad_nonce");
  std::string other;
  ASSERT_FALSE(auth.check(2, reg("n1", &k), other));
  no = auth.check(2, proof, other);
  ASSERT_TRUE(no);
  EXPECT_EQ(no->name(), "bad_nonce");
  // Used once on its own connection, then replayed there.
  EXPECT_FALSE(auth.check(1, proof, nonce));
  no = auth.check(1, proof, nonce);
  ASSERT_TRUE(no);
  EXPECT_EQ(no->name(), "bad_nonce");
  // A signature by another key, or over another node id, does not verify.
  ASSERT_FALSE(auth.check(3, reg("n1", &k), nonce));
  auto forged = signed_reg("n1", thief, nonce);
  forged.set_public_key(k.public_key());
  no = auth.check(3, forged, nonce);
  ASSERT_TRUE(no);
  EXPECT_EQ(no->name(), "bad_signature");
  ASSERT_FALSE(auth.check(3, reg("n9", &k), nonce));
  auto renamed = signed_reg("n1", k, nonce);
  renamed.set_node_id("n9");
  no = auth.check(3, renamed, nonce);
  ASSERT_TRUE(no);
  EXPECT_EQ(no->name(), "bad_signature");
  // The connection goes: its nonce goes with it.
  ASSERT_FALSE(auth.check(4, reg("n1", &k), nonce));
  auth.forget(4);
  no = auth.check(4, signed_reg("n1", k, nonce), nonce);
  ASSERT_TRUE(no);
  EXPECT_EQ(no->name(), "bad_nonce");
}

TEST(authenticator, a_short_key_is_refused) {
  authenticator auth;
  pb::Register r;
  r.set_node_id("n1");
  r.set_public_key("short");
  std::string nonce;
  auto no = auth.check(1, r, nonce);
  ASSERT_TRUE(no);
  EXPECT_EQ(no->name(), "bad_key");
}

TEST(hex, round_trips_and_refuses_bad_text) {
  std::string raw("\x00\x01\xfe\xff", 4);
  EXPECT_EQ(to_hex(raw), "0001feff");
  EXPECT_EQ(from_hex("0001FEff"), raw);
  EXPECT_FALSE(from_hex("abc"));
  EXPECT_FALSE(from_hex("zz"));
}

} // namespace
} // namespace nodepool
