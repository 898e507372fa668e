// Three oracles on loopback as one replicated pool (real processes, real
// Raft over TCP, real disks), a miner process that follows the leader and a
// submitter that retries at the leader. The leader is killed with SIGKILL
// three times under load and restarted each time: every acknowledged
// session must be completed, on every member, with no invariant broken on
// any replica (each checks I1-I5 on every committed command).
#include <httplib.h>

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <poll.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <filesystem>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <unistd.h>

#include "proc.hpp"
#include "cluster_config.hpp"

using namespace nodepool::testing;

namespace {


class Cluster : public ::testing::Test {
protected:
  void SetUp() override {
    dir_ = temp_dir("cluster");
    clean_.dir = dir_;
    write_file();
  }

  /// (Re)writes the cluster file: `timing` then `more` in its [raft] table.
  void write_file(const std::string& more = "",
                  const std::string& timing =
                    "election_timeout_ms = 500\nheartbeat_timeout_ms = 50\n") {
    auto ms = nodepool::write_loopback_cluster(
      dir_ + "/cluster.toml", 3,
      "[raft]\n" + timing + "snapshot_threshold = 256\nsnapshot_trailing = 64\n"
        + more);
    for (int i = 1; i <= 3; ++i) {
      addr_[i] = ms[i - 1].address;
      http_addr_[i] = ms[i - 1].http;
      raft_[i] = nodepool::split_host_port(ms[i - 1].raft)->second;
    }
  }

  std::string all() const {
    return addr_[1] + "," + addr_[2] + "," + addr_[3];
  }

  void start(int i, std::vector<std::string> extra = {"--http", "off"}) {
    std::vector<std::string> a = global_;
    for (auto& f : {std::string{"oracle"}, std::string{"--cluster"}, dir_ + "/cluster.toml",
                    std::string{"--id"}, std::to_string(i), std::string{"--data-dir"},
                    dir_ + "/m" + std::to_string(i)})
      a.push_back(f);
    for (auto& f : fast_pool_flags())
      a.push_back(f);
    a.insert(a.end(), extra.begin(), extra.end());
    oracle_[i] = std::make_unique<child>(
      a, dir_ + "/oracle" + std::to_string(i) + "-" + std::to_string(++runs_)
           + ".out");
    ASSERT_TRUE(oracle_[i]->wait_for_output("listening on", std::chrono::seconds(20)))
      << oracle_[i]->errors();
  }

  void disk_fills_on_member_2(bool leading);

  nlohmann::json status(int i) {
    auto [rc, out] = run({"status", "--oracle", addr_[i], "--json"},
                         dir_ + "/status.out", std::chrono::seconds(20));
    if (rc != 0)
      return {};
    return last_json_line(out);
  }

  /// The member that is the ready leader, 0 if none now; member `skip` is
  /// not asked (a stopped process would hold the question).
  int leader(int skip = 0) {
    for (int i = 1; i <= 3; ++i) {
      if (i == skip || !oracle_[i] || !oracle_[i]->running())
        continue;
      auto j = status(i);
      if (j.is_object() && j.contains("cluster")
          && j["cluster"].value("role", "") == "leader"
          && j["cluster"].value("ready", false))
        return i;
    }
    return 0;
  }

  int wait_leader() {
    for (int k = 0; k < 200; ++k) {
      if (int l = leader())
        return l;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return 0;
  }

  std::string dir_;
  cleanup clean_;
  std::string addr_[4];
  std::string http_addr_[4];
  uint16_t raft_[4] = {};
  std::unique_ptr<child> oracle_[4];
  int runs_ = 0;
  std::vector<std::string> global_{"--log-level", "info"};  // options before the subcommand
};

TEST_F(Cluster, LeaderKilledThreeTimesUnderLoadLosesNothing) {
  for (int i = 1; i <= 3; ++i)
    start(i);
  ASSERT_GT(wait_leader(), 0) << "no leader elected";
  std::vector<std::string> ma{"--log-level", "info", "miner", "--oracle", all(), "--nodes", "6",
                              "--id-prefix", "m", "--connect-timeout", "60"};
  child miner{ma, dir_ + "/miner.out"};
  const int total = 400;
  child submit{{"--log-level", "info", "submit", "--oracle", all(), "--sessions", std::to_string(total),
                "--prefix", "k", "--interval-ms", "15", "--max-tasks", "2",
                "--connect-timeout", "60"},
               dir_ + "/submit.out"};
  for (int kill = 1; kill <= 3; ++kill) {
    // Let some load through, then kill whoever leads.
    auto want = std::to_string(kill * total / 5);
    ASSERT_TRUE(submit.wait_for_output("accepted k-" + want,
                                       std::chrono::seconds(90)))
      << submit.output() << submit.errors();
    int l = wait_leader();
    ASSERT_GT(l, 0);
    oracle_[l]->signal(SIGKILL);
    oracle_[l]->wait_exit(std::chrono::seconds(10));
    ASSERT_GT(wait_leader(), 0) << "no leader after killing member " << l;
    start(l);  // back as a follower: it catches up
  }
  ASSERT_EQ(submit.wait_exit(std::chrono::seconds(180)), 0)
    << submit.output() << submit.errors();
  EXPECT_NE(submit.errors().find("submitted: " + std::to_string(total)
                                 + " accepted, 0 refused"),
            std::string::npos)
    << submit.errors();
  // Every acknowledged session completes, and every member holds the same,
  // its archive included (a member that installed a snapshot copies the
  // sessions ended below it from a peer, a little later).
  bool done = false;
  nlohmann::json last[4];
  for (int k = 0; k < 600 && !done; ++k) {
    done = true;
    for (int i = 1; i <= 3 && done; ++i) {
      last[i] = status(i);
      done = last[i].is_object() && last[i].contains("sessions")
             && last[i]["sessions"].value("completed", 0) == total
             && last[i]["sessions"].value("accepted", 0) == total
             && last[i]["cluster"].value("archive_complete_through", uint64_t{0})
                  >= last[i].value("last_index", uint64_t{1});
    }
    done = done && last[1]["last_index"] == last[2]["last_index"]
           && last[2]["last_index"] == last[3]["last_index"];
    if (!done)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  for (int i = 1; i <= 3; ++i) {
    EXPECT_EQ(last[i]["sessions"].value("completed", -1), total)
      << "member " << i << ": " << last[i].dump();
    EXPECT_EQ(last[i]["sessions"].value("failed", -1), 0) << last[i].dump();
    EXPECT_EQ(last[i]["cluster"].value("violations", -1), 0) << last[i].dump();
    EXPECT_EQ(last[i]["cluster"].value("batches_refused", -1), 0)
      << last[i].dump();
    EXPECT_EQ(last[i]["cluster"].value("snapshots_refused", -1), 0)
      << last[i].dump();
  }
  EXPECT_EQ(last[1]["last_index"], last[2]["last_index"]);
  EXPECT_EQ(last[1]["last_index"], last[3]["last_index"]);
  // Given every member, status shows each one's view: one leader, one term.
  {
    auto [rc, out] = run({"status", "--oracle", all(), "--json"},
                         dir_ + "/status-all.out", std::chrono::seconds(30));
    ASSERT_EQ(rc, 0) << out;
    auto j = last_json_line(out);
    ASSERT_TRUE(j.is_object() && j.contains("members")) << out;
    ASSERT_EQ(j["members"].size(), 3u) << out;
    int leaders = 0;
    for (auto& m : j["members"]) {
      EXPECT_TRUE(m.value("reachable", false)) << m.dump();
      leaders += m.value("role", "") == "leader";
      EXPECT_EQ(m["term"], j["members"][0]["term"]) << out;
      EXPECT_GT(m.value("applied_index", 0), 0) << m.dump();
      EXPECT_EQ(m.value("refused_peers", -1), 0) << m.dump();
      EXPECT_EQ(m.value("snapshots_refused", -1), 0) << m.dump();
      EXPECT_TRUE(m["raft_guard"].is_object()
                  && m["raft_guard"].contains("commits_raised"))
        << m.dump();
    }
    EXPECT_EQ(leaders, 1) << out;
  }
  // Three leaders killed: three more elections after the first (term 2).
  EXPECT_GE(last[1]["cluster"].value("term", 0), 5) << last[1].dump();
  miner.signal(SIGTERM);
  EXPECT_EQ(miner.wait_exit(std::chrono::seconds(20)), 0) << miner.errors();
  for (int i = 1; i <= 3; ++i) {
    oracle_[i]->signal(SIGTERM);
    EXPECT_EQ(oracle_[i]->wait_exit(std::chrono::seconds(20)), 0)
      << "member " << i << ": " << oracle_[i]->errors();
  }
  // Every member's data directory, checked as stored: its last snapshot and
  // every entry after it replay with I1-I5 intact, all three reach the same
  // state, and each archive holds every session.
  nlohmann::json chk[4];
  for (int i = 1; i <= 3; ++i) {
    auto [rc, out] = run({"check", "--data-dir", dir_ + "/m" + std::to_string(i),
                          "--json"},
                         dir_ + "/check.out", std::chrono::seconds(60));
    EXPECT_EQ(rc, 0) << out;
    chk[i] = last_json_line(out);
    ASSERT_TRUE(chk[i].is_object()) << out;
    EXPECT_TRUE(chk[i]["violations"].empty()) << out;
    // The commands after the member's last snapshot were replayed (none
    // when that snapshot fell on the last entry, on all three at once: seen
    // once in this session's runs; with a snapshot every 256 entries, about
    // 1 run in 256 by that reckoning).
    if (chk[i]["member"].value("last_index", 0)
        > chk[i]["member"].value("snapshot_index", 0)) {
      EXPECT_GT(chk[i]["entries"].get<int>(), 0) << out;
    }
    EXPECT_EQ(chk[i]["sessions"].value("ever_accepted", -1), total) << out;
    EXPECT_EQ(chk[i]["sessions"].value("archived", -1), total)
      << "member " << i << ": " << out;
  }
  // Members that stopped at the same entry hold the same state (one may
  // have gone on a little: those stopping last could still commit).
  for (int i = 1; i <= 3; ++i)
    for (int k = i + 1; k <= 3; ++k)
      if (chk[i]["last_index"] == chk[k]["last_index"]) {
        EXPECT_EQ(chk[i]["member"]["state_digest"], chk[k]["member"]["state_digest"])
          << "members " << i << " and " << k;
      }
  // A member whose log does not read is reported, and nothing is concluded.
  auto bad = dir_ + "/m1-damaged";
  std::filesystem::copy(dir_ + "/m1", bad, std::filesystem::copy_options::recursive);
  // The closed segment holding the newest entries (FIRST-LAST); or, when the
  // last snapshot covers every entry (the segments are then history that
  // is rightly not read), that snapshot.
  bool all_in_snapshot = chk[1]["member"].value("last_index", 0)
                         == chk[1]["member"].value("snapshot_index", 0);
  std::filesystem::path newest;
  for (auto& f : std::filesystem::directory_iterator(bad + "/raft")) {
    auto name = f.path().filename().string();
    bool segment = name.size() == 33 && name[16] == '-';
    bool snapshot = name.rfind("snapshot-", 0) == 0
                    && f.path().extension() != ".meta";
    auto last = [](const std::string& n) {  // snapshot-TERM-INDEX-TIME
      auto a = n.find('-', 9);
      return std::stoull(n.substr(a + 1, n.find('-', a + 1) - a - 1));
    };
    if (all_in_snapshot ? snapshot && (newest.empty()
                                       || last(name) > last(newest.filename().string()))
                        : segment && (newest.empty()
                                      || name > newest.filename().string()))
      newest = f.path();
  }
  ASSERT_FALSE(newest.empty());
  {
    std::fstream seg{newest, std::ios::in | std::ios::out | std::ios::binary};
    seg.seekp(static_cast<std::streamoff>(std::filesystem::file_size(newest) / 2));
    seg.write("garbage-garbage-garbage-garbage!", 32);
  }
  auto [rc, out] = run_shell(std::string(NODEPOOL_BIN) + " check --data-dir "
                             + bad);
  EXPECT_NE(rc, 0) << out;
  EXPECT_TRUE(out.find("a segment is damaged") != std::string::npos
              || out.find("cannot load") != std::string::npos)
    << out;
}

// Bad input from outside a running cluster: an oracle started with an id
// that is already running, garbage sent to a member's Raft port, and a data
// directory of another cluster. Each is refused with a clear error, and the
// cluster goes on serving with nothing lost.
TEST_F(Cluster, RefusesADuplicateMemberGarbageAndAnotherClustersData) {
  for (int i = 1; i <= 3; ++i)
    start(i);
  ASSERT_GT(wait_leader(), 0);
  // Member 1 again, on another data directory: its Raft address is taken.
  {
    std::vector<std::string> a{"oracle", "--cluster", dir_ + "/cluster.toml",
                               "--id", "1", "--data-dir", dir_ + "/dup",
                               "--port", "0"};
    auto [rc, out] = run(a, dir_ + "/dup.out", std::chrono::seconds(20));
    EXPECT_NE(rc, 0);
    auto err = read_file(dir_ + "/dup.out.err");
    EXPECT_NE(err.find("cannot start the replicated log"), std::string::npos)
      << err;
    EXPECT_TRUE(oracle_[1]->running()) << "the running member 1 went down";
  }
  // Garbage on member 2's Raft port.
  for (int k = 0; k < 3; ++k) {
    int s = connect_loopback(raft_[2]);
    ASSERT_GE(s, 0);
    std::string junk(4096, '\0');
    for (size_t i = 0; i < junk.size(); ++i)
      junk[i] = static_cast<char>((i * 7919 + k * 31) & 0xff);
    (void)!::write(s, junk.data(), junk.size());
    ::close(s);
  }
  auto [rc, out] = run({"--log-level", "info", "submit", "--oracle", all(), "--sessions", "20",
                        "--prefix", "g", "--connect-timeout", "30"},
                       dir_ + "/submit.out", std::chrono::seconds(60));
  EXPECT_EQ(rc, 0) << read_file(dir_ + "/submit.out.err");
  for (int i = 1; i <= 3; ++i)
    EXPECT_TRUE(oracle_[i]->running()) << "member " << i << " went down";
  bool agreed = false;
  for (int k = 0; k < 100 && !agreed; ++k) {
    auto a = status(1), b = status(2), c = status(3);
    agreed = a.contains("sessions") && b.contains("sessions")
             && c.contains("sessions")
             && a["sessions"].value("accepted", 0) == 20
             && a["last_index"] == b["last_index"]
             && b["last_index"] == c["last_index"];
    if (!agreed)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(agreed);
  // Member 3 stopped, then started with another cluster's file on its
  // data directory (other members, other addresses): refused. (The same
  // member list given a name later is this cluster, named: accepted.)
  oracle_[3]->signal(SIGTERM);
  ASSERT_EQ(oracle_[3]->wait_exit(std::chrono::seconds(20)), 0);
  nodepool::write_loopback_cluster(dir_ + "/other-members.toml", 3, "");
  {
    std::ofstream f{dir_ + "/other.toml"};
    f << "cluster_id = \"other\"\n" << read_file(dir_ + "/other-members.toml");
  }
  auto [rc3, out3] = run({"oracle", "--cluster", dir_ + "/other.toml", "--id",
                          "3", "--data-dir", dir_ + "/m3"},
                         dir_ + "/other.out", std::chrono::seconds(20));
  EXPECT_NE(rc3, 0);
  EXPECT_NE(read_file(dir_ + "/other.out.err").find("belongs to cluster"),
            std::string::npos)
    << read_file(dir_ + "/other.out.err");
}

// Member 2's disk fills up under load: it stops with a clear error (it
// cannot keep its archive or its log); the two others go on and lose
// nothing; once space is back, it starts again, catches up, and its data
// directory checks clean with every session archived. `leading`: member 2
// leads when its disk fills, and another member must take over (what
// stops it first on this tmpfs is usually the archive's free-space check;
// a failed write to the log stops it too, see raft_member.cpp), else it
// follows.
void Cluster::disk_fills_on_member_2(bool leading) {
  small_disk disk{dir_ + "/m2", "256m"};
  if (!disk.mounted)
    GTEST_SKIP() << disk.why;
  int l = 0;
  if (leading) {
    for (int i = 1; i <= 3; ++i)
      start(i, {});
    l = wait_leader();
    ASSERT_GT(l, 0) << "no leader elected";
    if (l != 2) {
      auto [rc, out] = run({"ctl", "--url", "http://" + http_addr_[l], "--json",
                            "transfer-leader", "--to", "2"},
                           dir_ + "/transfer.out");
      ASSERT_EQ(rc, 0) << read_file(dir_ + "/transfer.out.err");
      for (int k = 0; k < 100 && l != 2; ++k) {
        l = leader();
        if (l != 2)
          std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      ASSERT_EQ(l, 2) << out;
    }
  } else {
    start(1);
    start(3);
    l = wait_leader();
    ASSERT_TRUE(l == 1 || l == 3) << "no leader among members 1 and 3";
    start(2);
  }
  child miner{{"miner", "--oracle", all(), "--nodes", "4", "--id-prefix", "m",
               "--connect-timeout", "60"},
              dir_ + "/miner.out"};
  auto [rc0, out0] = run({"--log-level", "info", "submit", "--oracle", all(), "--sessions", "30",
                          "--prefix", "a", "--max-tasks", "1",
                          "--connect-timeout", "60"},
                         dir_ + "/submit-first.out", std::chrono::seconds(90));
  ASSERT_EQ(rc0, 0) << read_file(dir_ + "/submit-first.out.err");
  disk.fill();
  // How much it takes to reach a full disk depends on what RocksDB had
  // preallocated: submit rounds until member 2 has stopped.
  int total = 0;
  int code = -1000;
  for (int round = 0; round < 8 && code == -1000; ++round) {
    auto name = "submit" + std::to_string(round);
    auto [rc, out] = run({"--log-level", "info", "submit", "--oracle", all(), "--sessions", "300",
                          "--prefix", "b" + std::to_string(round),
                          "--max-tasks", "1", "--interval-ms", "5",
                          "--connect-timeout", "60"},
                         dir_ + "/" + name + ".out", std::chrono::seconds(120));
    ASSERT_EQ(rc, 0) << read_file(dir_ + "/" + name + ".out.err");
    total += 300;
    code = oracle_[2]->wait_exit(std::chrono::seconds(10));
  }
  // Member 2 noticed, said why, and stopped.
  EXPECT_EQ(code, 1) << oracle_[2]->errors();
  auto err = oracle_[2]->errors();
  EXPECT_NE(err.find("stopping"), std::string::npos) << err;
  EXPECT_TRUE(err.find("archive") != std::string::npos
              || err.find("replicated log stopped") != std::string::npos
              || err.find("a write to the replicated log") != std::string::npos)
    << err;
  EXPECT_TRUE(oracle_[1]->running() && oracle_[3]->running());
  if (leading) {
    // Another member leads, and granted the sessions submitted since.
    l = wait_leader();
    EXPECT_TRUE(l == 1 || l == 3) << "no leader after member 2 stopped";
  }
  // Space again: it starts, catches up, and holds what the others hold.
  disk.unfill();
  start(2, leading ? std::vector<std::string>{} : std::vector<std::string>{"--http", "off"});
  bool caught_up = false;
  nlohmann::json s2;
  for (int k = 0; k < 300 && !caught_up; ++k) {
    ASSERT_TRUE(oracle_[2]->running()) << oracle_[2]->errors();
    s2 = status(2);
    auto s1 = status(l);
    caught_up = s2.contains("sessions") && s1.contains("sessions")
                && s2["sessions"].value("completed", 0) == total + 30
                && s2["last_index"] == s1["last_index"]
                && s2["cluster"].value("archive_complete_through", uint64_t{0})
                     >= s2["last_index"].get<uint64_t>();
    if (!caught_up)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(caught_up) << s2.dump();
  miner.signal(SIGTERM);
  miner.wait_exit(std::chrono::seconds(20));
  for (int i = 1; i <= 3; ++i) {
    oracle_[i]->signal(SIGTERM);
    EXPECT_EQ(oracle_[i]->wait_exit(std::chrono::seconds(20)), 0)
      << "member " << i << ": " << oracle_[i]->errors();
  }
  auto [crc, cout] = run({"check", "--data-dir", dir_ + "/m2", "--json"},
                         dir_ + "/check2.out", std::chrono::seconds(60));
  EXPECT_EQ(crc, 0) << cout;
  auto c = last_json_line(cout);
  ASSERT_TRUE(c.is_object()) << cout;
  EXPECT_TRUE(c["violations"].empty()) << cout;
  EXPECT_EQ(c["sessions"].value("archived", -1), total + 30) << cout;
}

TEST_F(Cluster, AFollowerWhoseDiskIsFullStopsAndCatchesUpLater) {
  disk_fills_on_member_2(false);
}

TEST_F(Cluster, ALeaderWhoseDiskIsFullStopsAnotherLeadsAndItCatchesUpLater) {
  disk_fills_on_member_2(true);
}

TEST_F(Cluster, RotatesLeadershipOnScheduleInIdOrderAndLosesNothing) {
  // A long election timeout: on a loaded machine a follower must not stand
  // for election on its own in the middle of the test's rotations.
  write_file("rotation_interval_ms = 2500\n",
             "election_timeout_ms = 1000\nheartbeat_timeout_ms = 100\n");
  for (int i = 1; i <= 3; ++i)
    start(i);
  int first = wait_leader();
  ASSERT_GT(first, 0) << "no leader elected";
  child miner{{"miner", "--oracle", all(), "--nodes", "4", "--id-prefix", "r",
               "--connect-timeout", "60"},
              dir_ + "/miner.out"};
  const int total = 300;
  child submit{{"--log-level", "info", "submit", "--oracle", all(), "--sessions", std::to_string(total),
                "--prefix", "rot", "--interval-ms", "20", "--max-tasks", "1",
                "--connect-timeout", "60"},
               dir_ + "/submit.out"};
  // Who led each term, as each member says when it begins to lead ("leading
  // term T"): exact however loaded the machine is (asking the members in
  // turn, a question can take longer than a window, and a leader missed
  // looked like a hand-over out of order).
  auto leaders_by_term = [&] {
    static const std::regex leading{"leading term ([0-9]+) from entry"};
    std::map<uint64_t, int> by_term;
    for (int i = 1; i <= 3; ++i) {
      auto text = oracle_[i]->errors();
      for (std::sregex_iterator m{text.begin(), text.end(), leading}, e; m != e; ++m)
        by_term[std::stoull((*m)[1])] = i;
    }
    std::vector<int> out;
    for (auto& [term, who] : by_term)
      if (out.empty() || out.back() != who)
        out.push_back(who);
    return out;
  };
  std::vector<int> leaders;
  auto end = std::chrono::steady_clock::now() + std::chrono::seconds(25);
  while (std::chrono::steady_clock::now() < end && leaders.size() < 4) {
    leaders = leaders_by_term();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_GE(leaders.size(), 4u) << "fewer than three rotations in 25 s";
  // In id order. A hand-over the next member cannot take goes to the one
  // after (and a loaded machine can cause an election): one such change
  // is allowed, not more.
  int out_of_order = 0;
  std::string seen;
  for (size_t k = 0; k < leaders.size(); ++k) {
    seen += std::to_string(leaders[k]) + " ";
    if (k > 0 && leaders[k] != leaders[k - 1] % 3 + 1)
      ++out_of_order;
  }
  EXPECT_LE(out_of_order, 1) << "leaders in turn: " << seen;
  // Under load, nothing lost: every session the client was told of ended,
  // on every member.
  EXPECT_EQ(submit.wait_exit(std::chrono::seconds(120)), 0) << submit.errors();
  nlohmann::json st;
  for (int k = 0; k < 300; ++k) {
    st = status(leader() ? leader() : 1);
    if (st.is_object() && st["sessions"].value("completed", 0) == total)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(st["sessions"].value("completed", 0), total) << st.dump();
  int rotations = 0;
  for (int i = 1; i <= 3; ++i) {
    auto s = status(i);
    rotations += s["cluster"].value("rotations", 0);
  }
  EXPECT_GE(rotations, 3);
  miner.signal(SIGTERM);
  miner.wait_exit(std::chrono::seconds(20));
}

TEST_F(Cluster, ALeaderAskedToStopHandsLeadershipOverFirst) {
  for (int i = 1; i <= 3; ++i)
    start(i);
  int l = wait_leader();
  ASSERT_GT(l, 0) << "no leader elected";
  auto before = status(l)["cluster"].value("term", uint64_t{0});
  oracle_[l]->signal(SIGTERM);
  EXPECT_EQ(oracle_[l]->wait_exit(std::chrono::seconds(20)), 0)
    << oracle_[l]->errors();
  auto err = oracle_[l]->errors();
  EXPECT_NE(err.find("handed leadership to member"), std::string::npos) << err;
  // It named the member it handed over to: another one, which led then
  // (on a loaded machine a later election may move it on: not asserted).
  std::smatch m;
  ASSERT_TRUE(std::regex_search(err, m, std::regex{"handed leadership to member ([0-9]+)"}))
    << err;
  int to = std::stoi(m[1]);
  EXPECT_TRUE(to >= 1 && to <= 3 && to != l) << err;
  int n = wait_leader();
  ASSERT_GT(n, 0);
  EXPECT_NE(n, l);
  EXPECT_GT(status(n)["cluster"].value("term", uint64_t{0}), before);
}

// The hand-over at stop waits [raft] stop_handover_ms at most, then the
// leader stops whatever came of it (a signal ends an oracle within a
// second). With 1 ms, nothing can be done in time: the leader says so
// instead of naming a member, ends cleanly, and the others elect a leader
// on their own.
TEST_F(Cluster, ALeaderStopsOnceItsHandOverTimeIsUp) {
  write_file("stop_handover_ms = 1\n");
  for (int i = 1; i <= 3; ++i)
    start(i);
  int l = wait_leader();
  ASSERT_GT(l, 0) << "no leader elected";
  oracle_[l]->signal(SIGTERM);
  EXPECT_EQ(oracle_[l]->wait_exit(std::chrono::seconds(20)), 0)
    << oracle_[l]->errors();
  auto err = oracle_[l]->errors();
  EXPECT_EQ(err.find("handed leadership to member"), std::string::npos) << err;
  EXPECT_NE(err.find("within 1 ms"), std::string::npos) << err;
  int n = wait_leader();
  ASSERT_GT(n, 0);
  EXPECT_NE(n, l);
}

TEST_F(Cluster, RefusesAMemberNotInTheFileAndAMissingId) {
  auto [rc, out] = run({"oracle", "--cluster", dir_ + "/cluster.toml", "--id",
                        "9", "--data-dir", dir_ + "/x"},
                       dir_ + "/bad.out");
  EXPECT_NE(rc, 0);
  EXPECT_NE(read_file(dir_ + "/bad.out.err").find("member 9 is not in"),
            std::string::npos)
    << read_file(dir_ + "/bad.out.err");
  auto [rc2, out2] = run({"oracle", "--cluster", dir_ + "/cluster.toml",
                          "--data-dir", dir_ + "/y"},
                         dir_ + "/bad2.out");
  EXPECT_NE(rc2, 0);
  EXPECT_NE(read_file(dir_ + "/bad2.out.err").find("--id is required"),
            std::string::npos);
}

/// The HTTP port an oracle printed ("HTTP API on http://H:P/...").
int printed_http_port(const std::string& out) {
  auto i = out.find("HTTP API on ");
  if (i == std::string::npos)
    return 0;
  auto colon = out.find(':', out.find("//", i));
  return std::stoi(out.substr(colon + 1));
}

// Raft between oracles over mutual TLS, with the certificate the oracles
// show miners: one CA signs every certificate; members 1 and 2 hold an
// oracle's (its common name begins with "oracle") and form the majority;
// member 3 holds a miner's from the same CA, which may not speak Raft: its
// handshakes fail both ways and it never joins in (it learns no leader and
// applies nothing).
/// A CA and, for each name in `names` (its common name), a certificate it
/// signed, in `dir`; "" or what openssl said.
std::string make_certificates(const std::string& dir, const std::string& names) {
  auto [rc, out] = run_shell(
    "cd " + dir + " && openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca "
    "-keyout ca.key -out ca.pem 2>&1 && for n in " + names + "; do openssl req -newkey "
    "rsa:2048 -nodes -subj /CN=$n -keyout $n.key -out $n.csr 2>&1 && openssl x509 -req -in "
    "$n.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -out $n.pem 2>&1; done");
  return rc == 0 ? "" : out;
}

/// The TLS flags of certificate `name` made by make_certificates in `dir`.
std::vector<std::string> tls_files(const std::string& dir, const std::string& name) {
  return {"--tls-cert", dir + "/" + name + ".pem", "--tls-key", dir + "/" + name + ".key",
          "--tls-ca", dir + "/ca.pem"};
}

std::vector<std::string> with(std::vector<std::string> a, const std::vector<std::string>& t) {
  a.insert(a.end(), t.begin(), t.end());
  return a;
}

TEST_F(Cluster, RaftBetweenOraclesIsTlsAndOnlyOraclesCertificatesSpeakIt) {
  ASSERT_EQ(make_certificates(dir_, "oracle-a miner-a"), "");
  auto ours = tls_files(dir_, "oracle-a"), theirs = tls_files(dir_, "miner-a");
  start(1, with({"--http", "off"}, ours));
  // A peer that connects and never says a word is closed after the 5 s
  // handshake limit (checked at the end: the rest takes longer).
  int idle = connect_loopback(raft_[1]);
  ASSERT_GE(idle, 0);
  auto idle_since = std::chrono::steady_clock::now();
  start(2, with({"--http", "off"}, ours));
  start(3, with({"--http", "off"}, theirs));
  auto view = [&](int i, const std::vector<std::string>& t) {
    auto [rc, out] = run(with({"status", "--oracle", addr_[i], "--json"}, t),
                         dir_ + "/tls-status.out", std::chrono::seconds(20));
    auto j = last_json_line(out);
    return rc == 0 && j.is_object() ? j : nlohmann::json{};
  };
  int l = 0;
  for (int k = 0; k < 200 && l == 0; ++k) {
    for (int i = 1; i <= 2; ++i) {
      auto j = view(i, ours);
      if (j.is_object() && j["cluster"].value("role", "") == "leader"
          && j["cluster"].value("ready", false))
        l = i;
    }
    if (l == 0)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_GT(l, 0) << "members 1 and 2 elected no leader over TLS: "
                  << oracle_[1]->errors() << oracle_[2]->errors();
  child miner{with({"miner", "--oracle", addr_[1] + "," + addr_[2], "--nodes", "2",
                    "--connect-timeout", "60"},
                   ours),
              dir_ + "/miner.out"};
  auto [src, sout] = run(with({"submit", "--oracle", addr_[1] + "," + addr_[2], "--sessions",
                               "20", "--max-tasks", "1", "--connect-timeout", "60"},
                              ours),
                         dir_ + "/submit.out", std::chrono::seconds(120));
  EXPECT_EQ(src, 0) << read_file(dir_ + "/submit.out.err");
  for (int i = 1; i <= 2; ++i) {
    nlohmann::json j;
    for (int k = 0; k < 200; ++k) {
      j = view(i, ours);
      if (j.is_object() && j["sessions"].value("completed", 0) == 20)
        break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    EXPECT_EQ(j["sessions"].value("completed", 0), 20) << "member " << i << ": " << j.dump();
  }
  // Member 3 holds a miner's certificate: no Raft message reached it.
  auto three = view(3, ours);
  ASSERT_TRUE(three.is_object());
  EXPECT_EQ(three["cluster"].value("leader_id", 0), 0) << three.dump();
  EXPECT_EQ(three["sessions"].value("accepted", 0), 0) << three.dump();
  auto logs = oracle_[1]->errors() + oracle_[2]->errors() + oracle_[3]->errors();
  EXPECT_NE(logs.find("TLS between oracles: a handshake"), std::string::npos) << logs;
  // The idle peer: its end reads as closed (0 bytes) by 8 s after it
  // connected.
  auto left = std::chrono::seconds(8) - (std::chrono::steady_clock::now() - idle_since);
  pollfd p{idle, POLLIN, 0};
  int ready = ::poll(&p, 1, std::max<int>(
    0, static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(left).count())));
  char byte;
  EXPECT_TRUE(ready == 1 && ::read(idle, &byte, 1) == 0)
    << "a silent peer still holds a connection to the TLS tunnel";
  ::close(idle);
  miner.signal(SIGTERM);
  miner.wait_exit(std::chrono::seconds(20));
}

// Out of file descriptors, the TLS tunnel between oracles says so, waits
// 100 ms between attempts (the connection stays in the listen queue, so
// retrying at once would spin its thread), and accepts the peer once
// descriptors are back.
TEST_F(Cluster, OutOfDescriptorsTheTlsTunnelBacksOffAndThenAccepts) {
  ASSERT_EQ(make_certificates(dir_, "oracle-a"), "");
  start(1, with({"--http", "off"}, tls_files(dir_, "oracle-a")));
  descriptor_squeeze squeeze{oracle_[1]->pid()};
  ASSERT_TRUE(squeeze.squeezed);
  int peer = connect_loopback(raft_[1]);
  ASSERT_GE(peer, 0);
  const std::string failed = "TLS between oracles: accepting a connection failed";
  bool said = oracle_[1]->wait_for_errors(failed, std::chrono::seconds(10));
  std::this_thread::sleep_for(std::chrono::seconds(1));
  ASSERT_TRUE(squeeze.restore());
  ASSERT_TRUE(said) << squeeze.open_fds << " descriptors open: " << oracle_[1]->errors();
  auto errors = oracle_[1]->errors();
  EXPECT_NE(errors.find("Too many open files"), std::string::npos) << errors;
  // The first error and every 100th are logged: one line in a second of
  // attempts 100 ms apart (a thread that spins logs hundreds).
  size_t lines = 0;
  for (auto at = errors.find(failed); at != std::string::npos;
       at = errors.find(failed, at + 1))
    ++lines;
  EXPECT_EQ(lines, 1u) << errors;
  // Accepted now: a peer that does not speak TLS fails its handshake.
  ASSERT_EQ(::write(peer, "not TLS\r\n\r\n", 11), 11);
  EXPECT_TRUE(oracle_[1]->wait_for_errors("a handshake with a peer that connected failed",
                                          std::chrono::seconds(10)))
    << oracle_[1]->errors();
  ::close(peer);
  EXPECT_TRUE(oracle_[1]->running());
}

// A leader whose process dies closes its connections at once: the followers
// stand at their next tick instead of waiting out a (here long) election
// timeout. A leader that is only stopped (SIGSTOP) closes nothing, and the
// followers wait the timeout, as Raft says (the control).
TEST_F(Cluster, AKilledLeaderIsReplacedBeforeTheElectionTimeout) {
  write_file("", "election_timeout_ms = 6000\nheartbeat_timeout_ms = 100\n");
  global_ = {"--log-level", "info"};  // each member says when it stands
  for (int i = 1; i <= 3; ++i)
    start(i);
  int l = wait_leader();
  ASSERT_GT(l, 0) << "no leader elected";
  // Stopped: nobody stands within 3 s (the timeout is 6 s).
  oracle_[l]->signal(SIGSTOP);
  auto stopped_at = std::chrono::steady_clock::now();
  bool other = false;
  while (std::chrono::steady_clock::now() - stopped_at < std::chrono::seconds(3) && !other) {
    other = leader(l) > 0;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_FALSE(other) << "a follower stood within 3 s of a silent leader";
  oracle_[l]->signal(SIGCONT);
  for (int k = 0; k < 100 && leader() == 0; ++k)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  l = leader();
  ASSERT_GT(l, 0);
  // Killed: another member leads well before the election timeout.
  oracle_[l]->signal(SIGKILL);
  auto killed_at = std::chrono::steady_clock::now();
  int next = 0;
  while (std::chrono::steady_clock::now() - killed_at < std::chrono::seconds(20)) {
    if ((next = leader(l)) > 0)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
              std::chrono::steady_clock::now() - killed_at).count();
  ASSERT_TRUE(next > 0 && next != l) << "no new leader within 20 s";
  std::printf("leader %d killed: member %d led %lld ms later (election timeout 6000 ms)\n",
              l, next, static_cast<long long>(ms));
  EXPECT_LT(ms, 6000) << "the followers waited for the election timeout";
  // Both followers saw the hang-up; the lower id stood at once and the
  // other a quarter of the timeout later, so they did not split the vote.
  int low = 0;
  for (int m = 1; m <= 3; ++m) {
    if (m == l)
      continue;
    low = low ? low : m;
    auto said = "the connection from leader " + std::to_string(l) + " closed; standing "
                "for election in " + (m == low ? "0" : "1500") + " ms";
    for (int k = 0; k < 50 && oracle_[m]->errors().find(said) == std::string::npos; ++k)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_NE(oracle_[m]->errors().find(said), std::string::npos)
      << "member " << m << " did not say: " << said << "\n" << oracle_[m]->errors();
  }
}

// One member of three, alone: no leader can be elected, so writes are 503
// (not_leader, "retry shortly") while reads still answer from what it holds.
TEST_F(Cluster, AMemberWithoutAQuorumAnswersWritesWith503) {
  start(1, {});
  ASSERT_TRUE(oracle_[1]->wait_for_output("HTTP API on", std::chrono::seconds(20)));
  int port = printed_http_port(oracle_[1]->output());
  ASSERT_GT(port, 0) << oracle_[1]->output();
  httplib::Client c{"127.0.0.1", port};
  for (auto path : {"/api/v1/sessions", "/api/v1/completions/nobody"}) {
    auto r = c.Post(path, R"({"session_id":"alone","prompt":"anyone?"})",
                    "application/json");
    ASSERT_TRUE(r) << path;
    EXPECT_EQ(r->status, 503) << path << ": " << r->body;
    auto j = nlohmann::json::parse(r->body, nullptr, false);
    EXPECT_EQ(j["error"]["code"], "not_leader") << r->body;
  }
  auto r = c.Get("/api/v1/status");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
}

TEST_F(Cluster, EveryMemberServesTheApiAndFollowersPassWritesToTheLeader) {
  // Each member's API listens where the cluster file says (http = ...).
  int http[4] = {};
  for (int i = 1; i <= 3; ++i) {
    start(i, {});
    ASSERT_TRUE(oracle_[i]->wait_for_output("HTTP API on", std::chrono::seconds(20)));
    http[i] = printed_http_port(oracle_[i]->output());
    ASSERT_EQ("127.0.0.1:" + std::to_string(http[i]), http_addr_[i])
      << oracle_[i]->output();
  }
  int l = wait_leader();
  ASSERT_GT(l, 0) << "no leader elected";
  int f = l % 3 + 1;  // a follower
  child miner{{"miner", "--oracle", all(), "--nodes", "3", "--connect-timeout", "60"},
              dir_ + "/miner.out"};
  auto get = [&](int i, const std::string& path) {
    httplib::Client c{"127.0.0.1", http[i]};
    auto r = c.Get(path.c_str());
    return r ? nlohmann::json::parse(r->body, nullptr, false) : nlohmann::json{};
  };
  auto post = [&](int i, const std::string& path, const std::string& body) {
    httplib::Client c{"127.0.0.1", http[i]};
    c.set_read_timeout(60, 0);
    auto r = c.Post(path.c_str(), body, "application/json");
    if (!r)
      return std::make_pair(0, nlohmann::json{});
    return std::make_pair(r->status, nlohmann::json::parse(r->body, nullptr, false));
  };
  // Wait for the nodes, as the follower sees them (reads are local).
  nlohmann::json st;
  for (int k = 0; k < 300; ++k) {
    st = get(f, "/api/v1/status");
    if (st.is_object() && st["nodes"]["by_state"]["ephemeral"] == 3)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_EQ(st["nodes"]["by_state"]["ephemeral"], 3) << st.dump();
  EXPECT_EQ(st["oracle"]["role"], "follower") << st.dump();
  EXPECT_GT(st["index"].get<uint64_t>(), 0u);
  // A session and a completion sent to the follower: served by the leader.
  auto [c1, s1] = post(f, "/api/v1/sessions",
                       R"({"session_id":"via-follower","redundancy":2,"max_nodes":2,"max_tasks":1})");
  ASSERT_EQ(c1, 201) << s1.dump();
  auto [c2, a2] = post(f, "/api/v1/completions/via-follower",
                       R"({"prompt":"asked a follower","timeout":30})");
  ASSERT_EQ(c2, 200) << a2.dump();
  EXPECT_NE(a2["choices"][0]["text"].get<std::string>().find("asked a follower"),
            std::string::npos);
  EXPECT_EQ(a2["agreeing"], 2);
  // Every member holds the ended session once it committed.
  for (int i = 1; i <= 3; ++i) {
    nlohmann::json s;
    for (int k = 0; k < 100; ++k) {
      s = get(i, "/api/v1/sessions/via-follower");
      if (s.is_object() && s.value("state", "") == "completed")
        break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    EXPECT_EQ(s.value("state", ""), "completed") << "member " << i << ": " << s.dump();
  }
  // /metrics on each member: its view of the log, one leader among them,
  // and the session counted on every member (what committed).
  int leaders = 0;
  for (int i = 1; i <= 3; ++i) {
    httplib::Client c{"127.0.0.1", http[i]};
    auto r = c.Get("/metrics");
    ASSERT_TRUE(r && r->status == 200) << "member " << i;
    auto& t = r->body;
    EXPECT_NE(t.find("\nnodepool_raft_term "), std::string::npos) << t;
    EXPECT_NE(t.find("\nnodepool_raft_leader_id " + std::to_string(l) + "\n"),
              std::string::npos)
      << "member " << i << ": " << t;
    leaders += t.find("\nnodepool_raft_is_leader 1\n") != std::string::npos;
    EXPECT_NE(t.find("\nnodepool_raft_refused_total{what=\"snapshot\"} 0\n"),
              std::string::npos)
      << "member " << i << ": " << t;
    EXPECT_NE(t.find("\nnodepool_raft_guard_total{action=\"commits_raised\"} "),
              std::string::npos)
      << "member " << i << ": " << t;
    EXPECT_NE(t.find("\nnodepool_sessions_ended_total{outcome=\"completed\"} 1\n"),
              std::string::npos)
      << "member " << i << ": " << t;
  }
  EXPECT_EQ(leaders, 1);
  // Operators' commands are not passed on: the follower sends the client
  // to the leader's API (307, the same method, body and key).
  {
    httplib::Client c{"127.0.0.1", http[f]};
    auto r = c.Post("/api/v1/admin/miners/miner-0/drain", "{}", "application/json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 307) << r->body;
    EXPECT_EQ(r->get_header_value("Location"),
              "http://" + http_addr_[l] + "/api/v1/admin/miners/miner-0/drain");
  }
  auto [c3, out3] = run({"ctl", "--url", "http://127.0.0.1:" + std::to_string(http[f]),
                         "--json", "drain", "miner-0"},
                        dir_ + "/ctl-drain.out");
  EXPECT_EQ(c3, 0) << read_file(dir_ + "/ctl-drain.out.err");
  auto miners = get(l, "/api/v1/miners");
  bool drained = false;
  for (auto& m : miners["miners"])
    drained |= m["node_id"] == "miner-0" && m.value("drained", false);
  EXPECT_TRUE(drained) << miners.dump();
  // When each node was last heard from is known to the leader's gateway
  // alone: a follower asks it.
  auto via_follower = get(f, "/api/v1/miners");
  int heard = 0;
  for (auto& m : via_follower["miners"])
    heard += m.contains("last_seen");
  EXPECT_GE(heard, 1) << via_follower.dump();
  EXPECT_FALSE(via_follower.contains("last_seen_unavailable")) << via_follower.dump();

  // Leadership handed over by hand, asked of a follower (sent to the
  // leader), to that follower.
  auto members = get(f, "/api/v1/members");
  ASSERT_EQ(members["members"].size(), 3u) << members.dump();
  EXPECT_EQ(members["leader_id"], l) << members.dump();
  auto [c4, out4] = run({"ctl", "--url", "http://127.0.0.1:" + std::to_string(http[f]),
                         "--json", "transfer-leader", "--to", std::to_string(f)},
                        dir_ + "/ctl-transfer.out");
  EXPECT_EQ(c4, 0) << read_file(dir_ + "/ctl-transfer.out.err");
  int now_leads = 0;
  for (int k = 0; k < 100 && now_leads != f; ++k) {
    now_leads = leader();
    if (now_leads != f)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(now_leads, f) << out4;
  // The pool goes on under its new leader, asked through the old one.
  auto [c5, s5] = post(l, "/api/v1/sessions",
                       R"({"session_id":"after-transfer","max_tasks":1})");
  EXPECT_EQ(c5, 201) << s5.dump();
  auto [c6, a6] = post(l, "/api/v1/completions/after-transfer",
                       R"({"prompt":"still there?","timeout":30})");
  EXPECT_EQ(c6, 200) << a6.dump();
  // The leader hangs (SIGSTOP): a follower still serves its miners' list,
  // within the 8 s the dashboard waits, without the times only the leader
  // knows, and says why.
  oracle_[f]->signal(SIGSTOP);
  {
    httplib::Client c{"127.0.0.1", http[l]};
    c.set_read_timeout(8, 0);
    auto r = c.Get("/api/v1/miners");
    oracle_[f]->signal(SIGCONT);
    ASSERT_TRUE(r) << "no answer within 8 s";
    EXPECT_EQ(r->status, 200) << r->body;
    auto j = nlohmann::json::parse(r->body, nullptr, false);
    EXPECT_EQ(j["miners"].size(), 3u) << r->body;
    EXPECT_TRUE(j.contains("last_seen_unavailable")) << r->body;
  }
  miner.signal(SIGTERM);
}

/// The dashboard of a member, in headless Chromium: the members and which
/// one leads, besides what a single oracle's shows (see
/// tests/dashboard/dashboard.mjs).
TEST_F(Cluster, TheDashboardShowsTheMembersAndTheLeader) {
  std::string npm = NODEPOOL_NPM_DIR;
  if (!std::filesystem::exists("/usr/bin/chromium")
      || !std::filesystem::exists(npm + "/node_modules/playwright-core/package.json"))
    GTEST_SKIP() << "Chromium or playwright-core is not installed (tools/test "
                    "installs both)";
  int http[4] = {};
  for (int i = 1; i <= 3; ++i) {
    start(i, {});
    ASSERT_TRUE(oracle_[i]->wait_for_output("HTTP API on", std::chrono::seconds(20)));
    http[i] = printed_http_port(oracle_[i]->output());
  }
  int l = wait_leader();
  ASSERT_GT(l, 0) << "no leader elected";
  child miner{{"miner", "--oracle", all(), "--nodes", "3", "--connect-timeout", "60"},
              dir_ + "/miner.out"};
  nlohmann::json st;
  for (int k = 0; k < 300; ++k) {
    httplib::Client c{"127.0.0.1", http[l]};
    auto r = c.Get("/api/v1/status");
    st = r ? nlohmann::json::parse(r->body, nullptr, false) : nlohmann::json{};
    if (st.is_object() && st["nodes"]["by_state"]["ephemeral"] == 3)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_EQ(st["nodes"]["by_state"]["ephemeral"], 3) << st.dump();
  // The leader's page: its events are live (a follower publishes none).
  auto [rc, out] = run_shell("NODEPOOL_NPM_DIR=" + npm + " timeout 180 node "
                             + std::string{NODEPOOL_SOURCE_DIR}
                             + "/tests/dashboard/dashboard.mjs http://127.0.0.1:"
                             + std::to_string(http[l]) + " - " + dir_
                             + "/cluster-dashboard.png");
  ASSERT_EQ(rc, 0) << out;
  auto j = last_json_line(out);
  ASSERT_TRUE(j.is_object()) << out;
  EXPECT_FALSE(j["asked_for_key"].get<bool>());
  ASSERT_EQ(j["member_items"].size(), 3u) << out;
  // One member marked as leader (the one that led when the page last
  // looked: on a loaded machine it may have changed since `l`).
  int leaders = 0;
  std::set<int> ids;
  for (auto& m : j["member_items"]) {
    ids.insert(m[0].get<int>());
    leaders += m[1].get<bool>();
  }
  EXPECT_EQ(ids, (std::set<int>{1, 2, 3})) << out;
  EXPECT_EQ(leaders, 1) << out;
  EXPECT_EQ(j["miner_rows"], 3) << out;
  miner.signal(SIGTERM);
  miner.wait_exit(std::chrono::seconds(20));
}

// A member's parameters start from the cluster file's [pool]: its own
// --config (here holding only its HTTP table) adds to them, and used to
// drop them (the member that led then set the pool's defaults for all).
TEST(ClusterFile, AMembersConfigFileDoesNotDropTheClustersPoolTable) {
  auto dir = temp_dir("cluster-pool");
  cleanup tidy{dir};
  auto ms = nodepool::write_loopback_cluster(
    dir + "/one.toml", 1,
    "[pool]\ntest_deadline_ms = 1234\n[raft]\nelection_timeout_ms = 500\n"
    "heartbeat_timeout_ms = 50\n");
  {
    std::ofstream f{dir + "/host.toml"};
    f << "[http]\nlisten = \"off\"\n";
  }
  child o{{"oracle", "--cluster", dir + "/one.toml", "--id", "1", "--config",
           dir + "/host.toml", "--data-dir", dir + "/m1"},
          dir + "/oracle.out"};
  ASSERT_TRUE(o.wait_for_output("listening on", std::chrono::seconds(20))) << o.errors();
  bool leading = false;
  for (int k = 0; k < 100 && !leading; ++k) {
    auto [rc, out] = run({"status", "--oracle", ms[0].address, "--json"},
                         dir + "/status.out", std::chrono::seconds(20));
    auto j = rc == 0 ? last_json_line(out) : nlohmann::json{};
    leading = j.is_object() && j.contains("cluster")
              && j["cluster"].value("role", "") == "leader"
              && j["cluster"].value("ready", false);
    if (!leading)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(leading) << o.errors();
  o.signal(SIGTERM);
  ASSERT_EQ(o.wait_exit(std::chrono::seconds(20)), 0) << o.errors();
  auto [rc, out] = run({"check", "--data-dir", dir + "/m1", "--json"}, dir + "/check.out");
  auto j = last_json_line(out);
  ASSERT_TRUE(j.is_object()) << out << read_file(dir + "/check.out.err");
  EXPECT_EQ(j["params"]["test_deadline_ms"].get<int64_t>(), 1234) << j["params"].dump();
}

} // namespace
