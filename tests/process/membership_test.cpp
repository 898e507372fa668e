// Membership of a running cluster: members added (as non-voters, caught up,
// then voters) and removed (the leader hands over first) under load, with
// real oracle processes, `nodepool ctl members` and the HTTP API.
#ifndef CPPHTTPLIB_OPENSSL_SUPPORT
#define CPPHTTPLIB_OPENSSL_SUPPORT
#endif
#include <httplib.h>

#include <fstream>
#include <set>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cluster_config.hpp"
#include "proc.hpp"

using namespace nodepool::testing;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

/// Five members' addresses on loopback; cluster files naming the first `n`.
class Membership : public ::testing::Test {
protected:
  void SetUp() override {
    dir_ = temp_dir("members");
    clean_.dir = dir_;
    for (uint64_t i = 1; i <= 5; ++i) {
      nodepool::cluster_member m;
      m.id = i;
      m.raft = "127.0.0.1:" + std::to_string(nodepool::free_loopback_port());
      m.address = "127.0.0.1:" + std::to_string(nodepool::free_loopback_port());
      m.http = "127.0.0.1:" + std::to_string(nodepool::free_loopback_port());
      ms_.push_back(m);
    }
    write(3, dir_ + "/three.toml");
    write(5, dir_ + "/five.toml");
  }

  void write(unsigned n, const std::string& path) {
    std::ofstream f{path};
    // Named: the member list changes, the cluster does not.
    f << "cluster_id = \"growing\"\n";
    for (unsigned i = 0; i < n; ++i)
      f << "[[member]]\nid = " << ms_[i].id << "\nraft = \"" << ms_[i].raft
        << "\"\naddress = \"" << ms_[i].address << "\"\nhttp = \"" << ms_[i].http
        << "\"\n";
    f << "[raft]\nelection_timeout_ms = 1000\nheartbeat_timeout_ms = 100\n"
         "snapshot_threshold = 128\nsnapshot_trailing = 32\n"
         "[tests]\nsecret_file = \"" << dir_ << "/test_secret\"\n";
  }

  /// Member `i` (1-based) from `file`; `join`: a new member of a running
  /// cluster.
  void start(int i, const std::string& file, bool join) {
    std::vector<std::string> a{"oracle", "--cluster", file, "--id", std::to_string(i),
                               "--data-dir", dir_ + "/m" + std::to_string(i)};
    if (join)
      a.push_back("--join");
    for (auto& f : fast_pool_flags())
      a.push_back(f);
    oracle_[i] = std::make_unique<child>(a, dir_ + "/oracle" + std::to_string(i) + ".out");
    ASSERT_TRUE(oracle_[i]->wait_for_output("HTTP API on", 20s)) << oracle_[i]->errors();
  }

  json get(int i, const std::string& path) {
    auto hp = nodepool::split_host_port(ms_[i - 1].http);
    httplib::Client c{hp->first, hp->second};
    c.set_read_timeout(10, 0);
    auto r = c.Get(path.c_str());
    return r ? json::parse(r->body, nullptr, false) : json{};
  }

  /// The leader as member `i` sees it, waiting up to 20 s for one.
  int leader_seen_by(int i) {
    for (int k = 0; k < 200; ++k) {
      auto m = get(i, "/api/v1/members");
      if (m.is_object() && m.value("leader_id", 0) > 0)
        return m["leader_id"].get<int>();
      std::this_thread::sleep_for(100ms);
    }
    return 0;
  }

  /// `nodepool ctl --url <member i's API> ARGS`: (exit status, stdout+stderr).
  std::pair<int, std::string> ctl(int i, std::vector<std::string> args) {
    std::vector<std::string> a{"ctl", "--url", "http://" + ms_[i - 1].http,
                               "--timeout", "120"};
    a.insert(a.end(), args.begin(), args.end());
    // Right after a hand-over no leader may be known for a moment: the
    // answer is 503 not_leader, "retry shortly", and an operator retries.
    std::pair<int, std::string> r;
    for (int k = 0; k < 20; ++k) {
      auto out = dir_ + "/ctl" + std::to_string(++ctl_runs_) + ".out";
      auto [rc, o] = run(a, out, 150s);
      r = {rc, o + read_file(out + ".err")};
      if (r.second.find("503 not_leader") == std::string::npos)
        break;
      std::this_thread::sleep_for(300ms);
    }
    return r;
  }

  /// The members as member `i` lists them: id -> role ("voter", ...),
  /// once it lists `n` of them (it may apply the change a moment after the
  /// leader answered), or as it lists them after 10 s.
  std::map<int, std::string> roles(int i, size_t n) {
    std::map<int, std::string> out;
    for (int k = 0; k < 100; ++k) {
      out.clear();
      auto m = get(i, "/api/v1/members");
      if (m.is_object())
        for (auto& x : m["members"])
          out[x["id"].get<int>()] = x.value("role", "?");
      bool settled = out.size() == n;
      for (auto& [id, role] : out)
        settled &= role == "voter";
      if (settled)
        break;
      std::this_thread::sleep_for(100ms);
    }
    return out;
  }

  std::string dir_;
  cleanup clean_;
  std::vector<nodepool::cluster_member> ms_;
  std::unique_ptr<child> oracle_[6];
  int ctl_runs_ = 0;
};

TEST_F(Membership, GrowsFromThreeToFiveAndBackUnderLoadLosingNothing) {
  for (int i = 1; i <= 3; ++i)
    start(i, dir_ + "/three.toml", false);
  int first = leader_seen_by(1);
  ASSERT_GT(first, 0) << "no leader elected";
  std::string three = ms_[0].address + "," + ms_[1].address + "," + ms_[2].address;
  child miner{{"miner", "--oracle", three, "--nodes", "4", "--connect-timeout", "60"},
              dir_ + "/miner.out"};
  const int total = 400;
  child submit{{"submit", "--oracle", three, "--sessions", std::to_string(total),
                "--prefix", "grow", "--interval-ms", "25", "--max-tasks", "1",
                "--connect-timeout", "60"},
               dir_ + "/submit.out"};
  // Members 4 and 5 start empty (--join) and are added while sessions flow:
  // each as a non-voter until it caught up, then a voter.
  for (int i = 4; i <= 5; ++i) {
    start(i, dir_ + "/five.toml", true);
    auto& m = ms_[i - 1];
    auto [rc, out] = ctl(1 + (i % 3), {"--json", "members", "add", std::to_string(i),
                                       m.raft, "--address", m.address, "--http", m.http});
    ASSERT_EQ(rc, 0) << out;
  }
  auto r = roles(1, 5);
  ASSERT_EQ(r.size(), 5u);
  for (auto& [id, role] : r)
    EXPECT_EQ(role, "voter") << "member " << id;
  // The new members hold the pool: sessions committed before they joined
  // (by snapshot) and after.
  for (int k = 0; k < 100; ++k) {
    auto s = get(5, "/api/v1/status");
    if (s.is_object() && s["sessions"].value("accepted", 0) > 0)
      break;
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_GT(get(5, "/api/v1/status")["sessions"].value("accepted", 0), 0);

  // Bad input changes nothing: an id already there; a member that is down
  // as the target of a transfer.
  {
    auto [rc, out] = ctl(2, {"members", "add", "4", ms_[3].raft, "--address",
                             ms_[3].address});
    EXPECT_EQ(rc, 1) << out;
    EXPECT_NE(out.find("already in the cluster"), std::string::npos) << out;
  }

  // Back to three: the leader first (it hands leadership over, then the new
  // leader removes it), then one of the first three.
  int l = leader_seen_by(4);
  ASSERT_GT(l, 0);
  ASSERT_LE(l, 5);
  int via = l == 5 ? 4 : 5;  // asked through a member that stays
  {
    auto [rc, out] = ctl(via, {"--json", "members", "remove", std::to_string(l)});
    ASSERT_EQ(rc, 0) << out;
  }
  std::vector<int> removed{l};
  int second = l == 1 ? 2 : 1;
  {
    auto [rc, out] = ctl(via, {"--json", "members", "remove", std::to_string(second)});
    ASSERT_EQ(rc, 0) << out;
  }
  removed.push_back(second);
  std::set<int> left{1, 2, 3, 4, 5};
  for (int x : removed)
    left.erase(x);
  int asked = *left.rbegin();
  r = roles(asked, 3);
  EXPECT_EQ(r.size(), 3u);
  for (int x : removed)
    EXPECT_EQ(r.count(x), 0u) << "member " << x << " is still listed";
  // The removed members stop; the three left keep serving.
  for (int x : removed) {
    oracle_[x]->signal(SIGTERM);
    EXPECT_EQ(oracle_[x]->wait_exit(30s), 0) << oracle_[x]->errors();
  }

  // A member that is down: not a transfer's target, and not one whose
  // removal would leave the others without a quorum.
  int down = *left.begin();
  int live = *left.rbegin();
  oracle_[down]->signal(SIGSTOP);
  int leader_now = 0;
  for (int k = 0; k < 100 && (leader_now == 0 || leader_now == down); ++k) {
    leader_now = leader_seen_by(live);
    if (leader_now == down)
      std::this_thread::sleep_for(100ms);
  }
  ASSERT_NE(leader_now, down);
  std::this_thread::sleep_for(1500ms);  // longer than an election timeout
  int third = 0;
  for (int x : left)
    if (x != down && x != leader_now)
      third = x;
  {
    auto [rc, out] = ctl(live, {"transfer-leader", "--to", std::to_string(down)});
    EXPECT_NE(rc, 0) << out;
    EXPECT_NE(out.find("has not been heard from"), std::string::npos) << out;
    auto [rc2, out2] = ctl(live, {"members", "remove", std::to_string(third)});
    EXPECT_EQ(rc2, 1) << out2;
    EXPECT_NE(out2.find("no quorum"), std::string::npos) << out2;
  }
  oracle_[down]->signal(SIGCONT);
  EXPECT_EQ(roles(live, 3).size(), 3u);

  // Nothing lost: every session the client was told of ended, on each
  // member left.
  EXPECT_EQ(submit.wait_exit(180s), 0) << submit.errors();
  for (int x : left) {
    json st;
    for (int k = 0; k < 300; ++k) {
      st = get(x, "/api/v1/status");
      if (st.is_object() && st["sessions"].value("completed", 0) == total)
        break;
      std::this_thread::sleep_for(100ms);
    }
    EXPECT_EQ(st["sessions"].value("completed", 0), total) << "member " << x << ": "
                                                          << st.dump();
  }
  miner.signal(SIGTERM);
  miner.wait_exit(20s);
  for (int x : left) {
    oracle_[x]->signal(SIGTERM);
    EXPECT_EQ(oracle_[x]->wait_exit(30s), 0) << oracle_[x]->errors();
  }
}

// An add cut short by a hand-over leaves a standby; adding the same
// member again at the same address takes it on from there, and adding it
// at another address is refused.
TEST_F(Membership, AnAddCutShortIsTakenUpByAddingAgain) {
  for (int i = 1; i <= 3; ++i)
    start(i, dir_ + "/three.toml", false);
  int l = leader_seen_by(1);
  ASSERT_GT(l, 0) << "no leader elected";
  auto& m4 = ms_[3];
  auto url = [&](int i) { return "http://" + ms_[i - 1].http; };
  // Member 4 is not running: it cannot catch up, so the add waits.
  child add{{"ctl", "--url", url(l), "--timeout", "120", "members", "add", "4", m4.raft,
             "--address", m4.address, "--http", m4.http},
            dir_ + "/add1.out"};
  std::string role;
  for (int k = 0; k < 100 && role != "standby"; ++k) {
    std::this_thread::sleep_for(100ms);
    auto members = get(l, "/api/v1/members");
    for (auto& x : members["members"])
      if (x.value("id", 0) == 4)
        role = x.value("role", "");
  }
  ASSERT_EQ(role, "standby") << get(l, "/api/v1/members").dump() << read_file(dir_ + "/add1.out.err");
  {
    auto [rc, out] = ctl(l, {"transfer-leader"});
    ASSERT_EQ(rc, 0) << out;
  }
  EXPECT_EQ(add.wait_exit(30s), 1);
  auto said = read_file(dir_ + "/add1.out") + read_file(dir_ + "/add1.out.err");
  EXPECT_NE(said.find("stays a non-voter"), std::string::npos) << said;
  auto r = roles(1, 4);
  EXPECT_EQ(r[4], "standby");

  // Elsewhere: refused, nothing changes.
  auto& m5 = ms_[4];
  {
    auto [rc, out] = ctl(1, {"members", "add", "4", m5.raft, "--address", m5.address});
    EXPECT_EQ(rc, 1) << out;
    EXPECT_NE(out.find("already a non-voter"), std::string::npos) << out;
  }
  // Started, and added again: it catches up and votes.
  start(4, dir_ + "/five.toml", true);
  {
    auto [rc, out] = ctl(2, {"--json", "members", "add", "4", m4.raft, "--address",
                             m4.address, "--http", m4.http});
    ASSERT_EQ(rc, 0) << out;
  }
  r = roles(1, 4);
  ASSERT_EQ(r.size(), 4u);
  for (auto& [id, role] : r)
    EXPECT_EQ(role, "voter") << "member " << id;
  // It holds the cluster's state: its API answers the status the others do.
  EXPECT_TRUE(get(4, "/api/v1/status").is_object());
}

} // namespace
