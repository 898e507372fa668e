// SIGKILL a real oracle under load, restart it on the same data directory,
// and check that nothing accepted was lost and I1-I5 held throughout.
#include <nlohmann/json.hpp>
#include <set>

#include "proc.hpp"

using namespace std::chrono_literals;

namespace nodepool::testing {
namespace {

std::set<std::string> accepted_ids(const std::string& out) {
  std::set<std::string> ids;
  std::istringstream in{out};
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("accepted ", 0) == 0) {
      auto rest = line.substr(9);
      ids.insert(rest.substr(0, rest.find(' ')));
    }
  return ids;
}

TEST(kill, oracle_killed_under_load_loses_nothing) {
  auto dir = temp_dir("kill");
  cleanup tidy{dir};
  auto db = dir + "/db";
  auto oracle = std::make_unique<child>(oracle_args(db), dir + "/oracle0.out");
  ASSERT_TRUE(oracle->wait_for_output("listening on", 20s)) << oracle->errors();
  auto port = listening_port(oracle->output());
  auto target = "127.0.0.1:" + port;
  child miner{{"miner", "--oracle", target, "--nodes", "8", "--behaviour",
               "healthy", "--connect-timeout", "60"},
              dir + "/miner.out"};
  const int total = 150;
  child submit{{"submit", "--oracle", target, "--sessions",
                std::to_string(total), "--prefix", "k", "--max-tasks", "2",
                "--interval-ms", "15", "--connect-timeout", "60"},
               dir + "/submit.out"};
  // Kill the oracle twice while sessions are being submitted and served.
  for (int round = 1; round <= 2; ++round) {
    auto before = accepted_ids(submit.output()).size();
    auto end = std::chrono::steady_clock::now() + 30s;
    while (accepted_ids(submit.output()).size() < before + 30
           && std::chrono::steady_clock::now() < end && submit.running())
      std::this_thread::sleep_for(10ms);
    oracle->signal(SIGKILL);
    EXPECT_EQ(oracle->wait_exit(10s), -SIGKILL);
    oracle = std::make_unique<child>(
      oracle_args(db, port), dir + "/oracle" + std::to_string(round) + ".out");
    ASSERT_TRUE(oracle->wait_for_output("listening on", 30s))
      << oracle->errors();
  }
  ASSERT_EQ(submit.wait_exit(120s), 0) << submit.errors();
  auto ids = accepted_ids(submit.output());
  EXPECT_EQ(ids.size(), static_cast<size_t>(total));
  // Wait until the restarted oracle has finished every session.
  nlohmann::json st;
  auto end = std::chrono::steady_clock::now() + 90s;
  while (std::chrono::steady_clock::now() < end) {
    auto [rc, out] = run({"status", "--oracle", target, "--json"},
                         dir + "/status.out", 20s);
    if (rc == 0) {
      st = nlohmann::json::parse(out.substr(0, out.find('\n')), nullptr, false);
      if (!st.is_discarded()
          && st["sessions"]["completed"].get<int>()
                 + st["sessions"]["failed"].get<int>()
               >= total)
        break;
    }
    std::this_thread::sleep_for(250ms);
  }
  miner.signal(SIGTERM);
  miner.wait_exit(20s);
  oracle->signal(SIGKILL);  // a last crash, at rest
  oracle->wait_exit(10s);
  auto [rc, out] = run({"check", "--data-dir", db, "--json", "--sessions"},
                       dir + "/check.out");
  EXPECT_EQ(rc, 0) << out;
  auto c = nlohmann::json::parse(out.substr(0, out.find('\n')), nullptr, false);
  ASSERT_FALSE(c.is_discarded()) << out;
  EXPECT_TRUE(c["violations"].empty()) << out;
  auto& states = c["session_states"];
  for (auto& id : ids) {
    ASSERT_TRUE(states.contains(id)) << "accepted session " << id << " lost";
    EXPECT_EQ(states[id].get<std::string>(), "completed") << id;
  }
  EXPECT_EQ(c["sessions"]["completed"].get<int>(), total);
}

// The oracle's disk fills up under load: the group commit that fails stops
// the oracle with the reason (nothing it could not store was acknowledged);
// with space again it restarts on the same directory, and every session it
// acknowledged is there and completes.
TEST(kill, oracle_whose_disk_fills_up_stops_and_loses_nothing) {
  auto dir = temp_dir("fulldisk");
  cleanup tidy{dir};
  small_disk disk{dir + "/db", "256m"};
  if (!disk.mounted)
    GTEST_SKIP() << disk.why;
  auto db = dir + "/db";
  auto oracle = std::make_unique<child>(oracle_args(db), dir + "/oracle0.out");
  ASSERT_TRUE(oracle->wait_for_output("listening on", 20s)) << oracle->errors();
  auto port = listening_port(oracle->output());
  auto target = "127.0.0.1:" + port;
  child miner{{"miner", "--oracle", target, "--nodes", "4", "--behaviour",
               "healthy", "--connect-timeout", "120"},
              dir + "/miner.out"};
  const int total = 200;
  child submit{{"submit", "--oracle", target, "--sessions",
                std::to_string(total), "--prefix", "f", "--max-tasks", "1",
                "--interval-ms", "10", "--connect-timeout", "120"},
               dir + "/submit.out"};
  auto end = std::chrono::steady_clock::now() + 30s;
  while (accepted_ids(submit.output()).size() < 20
         && std::chrono::steady_clock::now() < end)
    std::this_thread::sleep_for(10ms);
  disk.fill();
  EXPECT_EQ(oracle->wait_exit(60s), 1) << oracle->errors();
  EXPECT_NE(oracle->errors().find("group commit failed: disk full"),
            std::string::npos)
    << oracle->errors();
  disk.unfill();
  oracle = std::make_unique<child>(oracle_args(db, port), dir + "/oracle1.out");
  ASSERT_TRUE(oracle->wait_for_output("listening on", 30s)) << oracle->errors();
  ASSERT_EQ(submit.wait_exit(120s), 0) << submit.errors();
  auto ids = accepted_ids(submit.output());
  EXPECT_EQ(ids.size(), static_cast<size_t>(total));
  nlohmann::json st;
  end = std::chrono::steady_clock::now() + 90s;
  while (std::chrono::steady_clock::now() < end) {
    auto [rc, out] = run({"status", "--oracle", target, "--json"},
                         dir + "/status.out", 20s);
    st = last_json_line(out);
    if (rc == 0 && st.is_object()
        && st["sessions"]["completed"].get<int>() >= total)
      break;
    std::this_thread::sleep_for(250ms);
  }
  miner.signal(SIGTERM);
  miner.wait_exit(20s);
  oracle->signal(SIGTERM);
  EXPECT_EQ(oracle->wait_exit(30s), 0) << oracle->errors();
  auto [rc, out] = run({"check", "--data-dir", db, "--json", "--sessions"},
                       dir + "/check.out");
  EXPECT_EQ(rc, 0) << out;
  auto c = last_json_line(out);
  ASSERT_TRUE(c.is_object()) << out;
  EXPECT_TRUE(c["violations"].empty()) << out;
  for (auto& id : ids)
    EXPECT_EQ(c["session_states"].value(id, "absent"), "completed") << id;
}

} // namespace
} // namespace nodepool::testing
