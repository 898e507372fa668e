// Signed admission with real processes: keygen, an oracle with an
// allow-list and join tokens, miners with and without an admitted key.
#include <fstream>
#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include "proc.hpp"

using namespace std::chrono_literals;

namespace nodepool::testing {
namespace {

std::string first_word(const std::string& s) { return s.substr(0, s.find(' ')); }

TEST(admission_cli, keygen_writes_a_private_key_and_prints_the_public_one) {
  auto dir = temp_dir("keygen");
  cleanup tidy{dir};
  auto [rc, out] = run({"keygen", "--out", dir + "/a.key"}, dir + "/k.out");
  ASSERT_EQ(rc, 0) << out;
  EXPECT_EQ(first_word(out).size(), 64u) << out;
  struct stat st{};
  ASSERT_EQ(::stat((dir + "/a.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_NE(read_file(dir + "/a.key").find("BEGIN PRIVATE KEY"), std::string::npos);
  // A key is not overwritten by accident.
  auto [rc2, out2] = run_shell(std::string(NODEPOOL_BIN) + " keygen --out " + dir
                               + "/a.key");
  EXPECT_NE(rc2, 0);
  EXPECT_NE(out2.find("refusing to overwrite"), std::string::npos) << out2;
  auto [rc3, tok] = run({"keygen", "--join-token"}, dir + "/t.out");
  EXPECT_EQ(rc3, 0);
  EXPECT_EQ(tok.size(), 49u) << tok;  // 48 hex digits and a newline
}

TEST(admission_cli, only_allowed_keys_and_token_holders_get_in) {
  auto dir = temp_dir("admit");
  cleanup tidy{dir};
  auto [rc1, pub] = run({"keygen", "--out", dir + "/ok.key"}, dir + "/k1.out");
  auto [rc2, _] = run({"keygen", "--out", dir + "/stranger.key"}, dir + "/k2.out");
  ASSERT_EQ(rc1 + rc2, 0);
  std::ofstream(dir + "/allow.txt") << "# admitted miners\n" << pub;
  std::ofstream(dir + "/tokens.txt") << "operator-token-0001\n";
  child oracle{oracle_args(dir + "/db", "0",
                           {"--allow", dir + "/allow.txt", "--join-tokens",
                            dir + "/tokens.txt"}),
               dir + "/oracle.out"};
  ASSERT_TRUE(oracle.wait_for_output("listening on", 20s)) << oracle.errors();
  auto target = "127.0.0.1:" + listening_port(oracle.output());

  // Unknown key: told why, exits 3 (every node sent away for good: the
  // service unit does not restart it).
  auto [rc, out] = run_shell(std::string(NODEPOOL_BIN) + " miner --oracle " + target
                             + " --key " + dir + "/stranger.key --id-prefix bad"
                             + " --connect-timeout 10");
  EXPECT_EQ(rc, 3) << out;
  EXPECT_NE(out.find("key_not_allowed"), std::string::npos) << out;
  // No key at all.
  auto [rcn, outn] = run_shell(std::string(NODEPOOL_BIN) + " miner --oracle "
                               + target + " --id-prefix none --connect-timeout 10");
  EXPECT_EQ(rcn, 3);
  EXPECT_NE(outn.find("key_required"), std::string::npos) << outn;

  // The allowed key, and the stranger with a token, serve until --duration.
  child good{{"miner", "--oracle", target, "--key", dir + "/ok.key", "--id-prefix",
              "good", "--duration", "3"},
             dir + "/good.out"};
  child token{{"miner", "--oracle", target, "--key", dir + "/stranger.key",
               "--join-token", "operator-token-0001", "--id-prefix", "tok",
               "--duration", "3"},
              dir + "/tok.out"};
  EXPECT_EQ(good.wait_exit(30s), 0) << good.errors();
  EXPECT_EQ(token.wait_exit(30s), 0) << token.errors();
  auto [rcs, status] = run({"status", "--oracle", target, "--json"},
                           dir + "/status.out");
  ASSERT_EQ(rcs, 0);
  auto j = last_json_line(status);
  ASSERT_FALSE(j.is_discarded()) << status;
  EXPECT_EQ(j["nodes"]["total"], 2) << status;  // good-0 and tok-0 only
}

TEST(admission_cli, a_bad_allow_list_stops_the_oracle_with_the_line) {
  auto dir = temp_dir("allowbad");
  cleanup tidy{dir};
  std::ofstream(dir + "/allow.txt") << "not-a-key\n";
  auto [rc, out] = run_shell(std::string(NODEPOOL_BIN) + " oracle --data-dir " + dir
                             + "/db --port 0 --allow " + dir + "/allow.txt");
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("allow.txt:1: expected a 64-digit hex"), std::string::npos)
    << out;
}

// The port for miners and clients authenticates its clients by TLS alone:
// listening beyond loopback without it is said at the start, and only
// then.
TEST(admission_cli, a_port_open_beyond_loopback_without_tls_is_named) {
  auto dir = temp_dir("openport");
  cleanup tidy{dir};
  const std::string warning = "without TLS: anyone who reaches it may submit";
  child open{oracle_args(dir + "/open", "0", {"--host", "0.0.0.0"}),
             dir + "/open.out"};
  ASSERT_TRUE(open.wait_for_output("listening on", 20s)) << open.errors();
  ASSERT_TRUE(open.wait_for_errors(warning, 10s)) << open.errors();
  EXPECT_NE(open.errors().find("listens on 0.0.0.0:" + listening_port(open.output())),
            std::string::npos) << open.errors();
  child local{oracle_args(dir + "/local", "0"), dir + "/local.out"};
  ASSERT_TRUE(local.wait_for_output("listening on", 20s)) << local.errors();
  EXPECT_EQ(local.errors().find(warning), std::string::npos) << local.errors();
}

} // namespace
} // namespace nodepool::testing
