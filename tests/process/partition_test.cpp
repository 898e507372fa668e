// Partitions with real networking: three oracles and a miner process, each
// in a network namespace of its own (deploy/netns-cluster), and links that
// go down. Needs root and `ip netns`; skipped, with the reason, elsewhere.
#ifndef CPPHTTPLIB_OPENSSL_SUPPORT
#define CPPHTTPLIB_OPENSSL_SUPPORT
#endif
#include <httplib.h>

#include <unistd.h>

#include <fstream>
#include <future>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "proc.hpp"

using namespace nodepool::testing;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

const std::string key = "np_admin_key_for_the_partition_test";

class Partition : public ::testing::Test {
protected:
  void SetUp() override {
    dir_ = temp_dir("partition");
    clean_.dir = dir_;
    auto pid = static_cast<unsigned>(getpid());
    env_ = "NETNS_PREFIX=p" + std::to_string(pid % 100000) + " NETNS_SUBNET=10.78."
           + std::to_string(pid % 250) + " ";
    subnet_ = "10.78." + std::to_string(pid % 250);
    script_ = std::string{NODEPOOL_SOURCE_DIR} + "/deploy/netns-cluster";
    if (geteuid() != 0)
      GTEST_SKIP() << "partitions need root (ip netns); this test runs as uid "
                   << geteuid();
    auto [wrc, where] = run_shell("command -v ip");
    if (wrc != 0)
      GTEST_SKIP() << "partitions need iproute2 (ip)";
    ip_ = where.substr(0, where.find('\n'));
    auto [rc, out] = net("up 3");
    if (rc != 0) {
      net("down");
      GTEST_SKIP() << "network namespaces are not available here: " << out;
    }
    up_ = true;
    prefix_ = "p" + std::to_string(pid % 100000);
    std::ofstream{dir_ + "/keys"} << key << " admin\n";
    std::ofstream f{dir_ + "/cluster.toml"};
    f << "cluster_id = \"netns\"\n";
    for (int i = 1; i <= 3; ++i)
      f << "[[member]]\nid = " << i << "\nraft = \"" << ip(i) << ":7101\"\naddress = \""
        << ip(i) << ":4241\"\nhttp = \"" << ip(i) << ":5010\"\n";
    f << "[raft]\nelection_timeout_ms = 1000\nheartbeat_timeout_ms = 100\n"
         "[tests]\nsecret_file = \"" << dir_ << "/test_secret\"\n";
  }

  void TearDown() override {
    for (auto& o : oracle_)
      o.reset();
    miner_.reset();
    if (up_)
      net("down");
  }

  std::pair<int, std::string> net(const std::string& args) {
    return run_shell(env_ + script_ + " " + args + " 2>&1");
  }
  std::string ip(int i) const { return subnet_ + "." + std::to_string(i); }
  std::string ns(const std::string& name) const { return prefix_ + name; }
  std::string oracles() const {
    return ip(1) + ":4241," + ip(2) + ":4241," + ip(3) + ":4241";
  }

  void start(int i) {
    std::vector<std::string> a{"netns", "exec", ns("o" + std::to_string(i)), NODEPOOL_BIN,
                               "oracle", "--cluster", dir_ + "/cluster.toml", "--id",
                               std::to_string(i), "--data-dir",
                               dir_ + "/m" + std::to_string(i), "--api-keys",
                               dir_ + "/keys"};
    for (auto& f : fast_pool_flags())
      a.push_back(f);
    oracle_[i] = std::make_unique<child>(a, dir_ + "/oracle" + std::to_string(i) + ".out",
                                         ip_);
    ASSERT_TRUE(oracle_[i]->wait_for_output("HTTP API on", 20s)) << oracle_[i]->errors();
  }

  /// GET `path` of member i's API from the host (empty when unreachable).
  json get(int i, const std::string& path) {
    httplib::Client c{ip(i), 5010};
    c.set_connection_timeout(1, 0);
    c.set_read_timeout(3, 0);
    c.set_bearer_token_auth(key.c_str());
    auto r = c.Get(path.c_str());
    return r && r->status == 200 ? json::parse(r->body, nullptr, false) : json{};
  }

  /// Member i's own view of the log, asked from inside its namespace (it
  /// may be cut off from the host).
  json view_inside(int i) {
    auto [rc, out] = run_shell(ip_ + " netns exec " + ns("o" + std::to_string(i)) + " "
                               + NODEPOOL_BIN + " status --oracle " + ip(i)
                               + ":4241 --json 2>/dev/null");
    auto j = last_json_line(out);
    return rc == 0 && j.is_object() ? j["cluster"] : json{};
  }

  /// The leader the members other than `not` agree on (0: none yet).
  int leader(int not_ = 0) {
    for (int i = 1; i <= 3; ++i) {
      if (i == not_)
        continue;
      auto m = get(i, "/api/v1/members");
      if (m.is_object() && m.value("leader_id", 0) > 0 && m["leader_id"] != not_)
        return m["leader_id"].get<int>();
    }
    return 0;
  }

  int wait_leader(int not_ = 0, std::chrono::seconds limit = 20s) {
    auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
      if (int l = leader(not_))
        return l;
      std::this_thread::sleep_for(100ms);
    }
    return 0;
  }

  std::string dir_, env_, subnet_, script_, ip_, prefix_;
  cleanup clean_;
  bool up_ = false;
  std::unique_ptr<child> oracle_[4];
  std::unique_ptr<child> miner_;
};

TEST_F(Partition, ALeaderCutOffStepsDownAndRejoinsAndAMinerFindsItsLeaderAgain) {
  for (int i = 1; i <= 3; ++i)
    start(i);
  int l = wait_leader();
  ASSERT_GT(l, 0) << "no leader elected";
  miner_ = std::make_unique<child>(
    std::vector<std::string>{"netns", "exec", ns("m"), NODEPOOL_BIN, "miner", "--oracle",
                             oracles(), "--nodes", "4", "--connect-timeout", "60"},
    dir_ + "/miner.out", ip_);
  const int total = 500;
  child submit{{"submit", "--oracle", oracles(), "--sessions", std::to_string(total),
                "--prefix", "net", "--interval-ms", "30", "--max-tasks", "1",
                "--connect-timeout", "60"},
               dir_ + "/submit.out"};
  auto completed = [&](int i) {
    auto s = get(i, "/api/v1/status");
    return s.is_object() ? s["sessions"].value("completed", 0) : -1;
  };
  for (int k = 0; k < 200 && completed(l) < 20; ++k)
    std::this_thread::sleep_for(100ms);
  ASSERT_GE(completed(l), 20) << get(l, "/api/v1/status").dump();

  // 1. The leader's link goes down. A write sent to it from its own side of
  // the cut cannot commit; it stops leading within its election timeout
  // (libraft's check of a contact quorum) and the majority elects another.
  ASSERT_EQ(net("cut o" + std::to_string(l)).first, 0);
  auto cut_at = std::chrono::steady_clock::now();
  auto orphan = std::async(std::launch::async, [&] {
    return run_shell(ip_ + " netns exec " + ns("o" + std::to_string(l))
                     + " curl -s -m 15 -H 'Authorization: Bearer " + key
                     + "' -d '{\"session_id\":\"orphan\"}' http://" + ip(l)
                     + ":5010/api/v1/sessions");
  });
  int stepped_down_ms = -1;
  for (int k = 0; k < 100; ++k) {
    auto v = view_inside(l);
    if (v.is_object() && v.value("role", "") != "leader") {
      stepped_down_ms = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                           std::chrono::steady_clock::now() - cut_at)
                                           .count());
      break;
    }
    std::this_thread::sleep_for(50ms);
  }
  // Check-quorum runs once per election timeout (1 s): it steps down after
  // one to two of them while still cut off. How long it took is reported,
  // not bounded: the figure includes the questions, which are slow under
  // load (4,908 ms once in a full test run, against 3.5 s allowed then), and
  // the 100 questions above bound the wait anyway.
  ASSERT_GE(stepped_down_ms, 0) << "the cut-off leader still leads";
  int l2 = wait_leader(l);
  ASSERT_GT(l2, 0) << "the majority elected no leader";
  ASSERT_NE(l2, l);
  int before = completed(l2);
  for (int k = 0; k < 100 && completed(l2) <= before + 10; ++k)
    std::this_thread::sleep_for(100ms);
  EXPECT_GT(completed(l2), before + 10) << "the majority does not serve";
  auto [orc, oout] = orphan.get();
  std::printf("member %d cut off: stepped down after %d ms; member %d leads; the "
              "write sent to the cut-off leader got: %s\n",
              l, stepped_down_ms, l2, oout.empty() ? "(no answer)" : oout.c_str());
  EXPECT_EQ(oout.find("\"state\":\"queued\""), std::string::npos)
    << "a write the cut-off leader could not commit was acknowledged: " << oout;
  // The leader had taken the write into its log: only a proposal still in
  // flight when leadership goes is answered "outcome is unknown" (a write
  // that reaches a member that no longer leads is refused as not_leader
  // without it). So the 404s below are an entry truncated, not one that
  // never reached a log.
  EXPECT_NE(oout.find("outcome is unknown"), std::string::npos)
    << "the write did not reach the cut-off leader's log: " << oout;

  // 2. The link comes back: the old leader follows the new one, and the
  // entry it could not commit is gone (from it too).
  ASSERT_EQ(net("heal o" + std::to_string(l)).first, 0);
  json v;
  for (int k = 0; k < 100; ++k) {
    v = get(l, "/api/v1/members");
    if (v.is_object() && v.value("role", "") == "follower" && v.value("leader_id", 0) > 0)
      break;
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(v.value("role", ""), "follower") << v.dump();
  for (int i = 1; i <= 3; ++i) {
    httplib::Client c{ip(i), 5010};
    c.set_bearer_token_auth(key.c_str());
    auto r = c.Get("/api/v1/sessions/orphan");
    ASSERT_TRUE(r) << "member " << i;
    EXPECT_EQ(r->status, 404) << "member " << i << ": " << r->body;
  }

  // 3. The miner loses the route to the leader, not to the followers: its
  // nodes cannot reach it; once the route is back they are served again.
  int l3 = wait_leader();
  ASSERT_GT(l3, 0);
  ASSERT_EQ(net("block m " + ip(l3)).first, 0);
  std::this_thread::sleep_for(3s);  // past the heartbeat timeout (1.5 s)
  ASSERT_EQ(net("unblock m " + ip(l3)).first, 0);
  json st;
  for (int k = 0; k < 300; ++k) {
    st = get(l3, "/api/v1/status");
    auto& by = st["nodes"]["by_state"];
    if (st.is_object() && by.value("ephemeral", 0) + by.value("reserved", 0) == 4)
      break;
    std::this_thread::sleep_for(100ms);
  }
  auto& by = st["nodes"]["by_state"];
  EXPECT_EQ(by.value("ephemeral", 0) + by.value("reserved", 0), 4) << st.dump();

  // Nothing lost: every session the client was told of completed, on every
  // member; and each member's log passes the full check (no node reserved
  // twice, I1-I5).
  EXPECT_EQ(submit.wait_exit(240s), 0) << submit.errors();
  for (int i = 1; i <= 3; ++i) {
    int c = 0;
    for (int k = 0; k < 300 && (c = completed(i)) != total; ++k)
      std::this_thread::sleep_for(100ms);
    EXPECT_EQ(c, total) << "member " << i;
  }
  miner_->signal(SIGTERM);
  miner_->wait_exit(20s);
  for (int i = 1; i <= 3; ++i) {
    oracle_[i]->signal(SIGTERM);
    EXPECT_EQ(oracle_[i]->wait_exit(30s), 0) << oracle_[i]->errors();
    auto [rc, out] = run({"check", "--data-dir", dir_ + "/m" + std::to_string(i), "--json"},
                         dir_ + "/check" + std::to_string(i) + ".out", 120s);
    EXPECT_EQ(rc, 0) << "member " << i << ": " << out;
  }
}

} // namespace
