// `nodepool sessions`: the archive of ended sessions, read from a stopped
// oracle's data directory and from a running oracle.
#include <filesystem>

#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "proc.hpp"

using namespace std::chrono_literals;

namespace nodepool::testing {
namespace {

std::vector<nlohmann::json> json_lines(const std::string& out) {
  std::vector<nlohmann::json> xs;
  std::istringstream in{out};
  std::string line;
  while (std::getline(in, line))
    if (!line.empty())
      xs.push_back(nlohmann::json::parse(line, nullptr, false));
  return xs;
}

/// Runs `nodepool sessions ARGS --json` and returns its lines; the exit
/// status goes to `rc`.
std::vector<nlohmann::json> sessions_json(std::vector<std::string> args,
                                          const std::string& out, int& rc) {
  args.insert(args.begin(), "sessions");
  args.push_back("--json");
  auto [code, text] = run(std::move(args), out);
  rc = code;
  return json_lines(text);
}

TEST(sessions, the_archive_of_a_data_directory_lists_every_ended_session) {
  auto dir = temp_dir("sessions");
  cleanup tidy{dir};
  auto db = dir + "/db";
  auto [rc, out] = run({"demo", "--json", "--sessions", "60", "--nodes", "12",
                        "--data-dir", db},
                       dir + "/demo.out", 120s);
  ASSERT_EQ(rc, 0) << read_file(dir + "/demo.out.err");
  auto demo = last_json_line(out);
  auto ended = demo["sessions"]["completed"].get<int>()
               + demo["sessions"]["failed"].get<int>();
  ASSERT_EQ(ended, 60);

  auto [rc2, all] = run({"sessions", "--data-dir", db, "--json"},
                        dir + "/all.out");
  ASSERT_EQ(rc2, 0) << read_file(dir + "/all.out.err");
  auto xs = json_lines(all);
  ASSERT_EQ(xs.size(), 60u) << all;
  std::set<std::string> ids;
  int64_t last_end = 0;
  for (auto& x : xs) {
    ASSERT_TRUE(x.is_object()) << all;
    ids.insert(x["id"].get<std::string>());
    auto st = x["state"].get<std::string>();
    EXPECT_TRUE(st == "completed" || st == "failed") << x.dump();
    EXPECT_TRUE(x["nodes"].empty()) << "an ended session holds no node";
    // In the order they ended.
    EXPECT_GE(x["ended_at"].get<int64_t>(), last_end);
    last_end = x["ended_at"].get<int64_t>();
  }
  EXPECT_EQ(ids.size(), 60u);
  EXPECT_EQ(ids.count("demo-000042"), 1u);

  // --since keeps the later ones, --limit cuts the list.
  auto mid = xs[30]["ended_at"].get<int64_t>();
  int rc3 = -1;
  auto ys = sessions_json({"--data-dir", db, "--since", std::to_string(mid)},
                          dir + "/later.out", rc3);
  ASSERT_EQ(rc3, 0);
  // Sessions that ended in the same millisecond as xs[30] count too.
  size_t later = 0;
  for (auto& x : xs)
    if (x["ended_at"].get<int64_t>() >= mid) ++later;
  EXPECT_GE(later, 30u);
  EXPECT_EQ(ys.size(), later);
  for (auto& y : ys)
    EXPECT_GE(y["ended_at"].get<int64_t>(), mid);
  int rc4 = -1;
  auto five = sessions_json({"--data-dir", db, "--limit", "5"},
                            dir + "/five.out", rc4);
  ASSERT_EQ(rc4, 0);
  EXPECT_EQ(five.size(), 5u);

  // One by id; an unknown id is an error that names it.
  int rc5 = -1;
  auto o = sessions_json({"--data-dir", db, "--id", "demo-000042"},
                         dir + "/one.out", rc5);
  ASSERT_EQ(rc5, 0) << read_file(dir + "/one.out.err");
  ASSERT_EQ(o.size(), 1u);
  EXPECT_EQ(o[0]["id"], "demo-000042");
  auto [rc6, none] = run({"sessions", "--data-dir", db, "--id", "nosuch"},
                         dir + "/none.out");
  EXPECT_EQ(rc6, 1);
  EXPECT_NE(read_file(dir + "/none.out.err").find("nosuch"),
            std::string::npos);

  // `check --sessions` accounts for every session ever accepted.
  auto [rc7, chk] = run({"check", "--data-dir", db, "--json", "--sessions"},
                        dir + "/check.out");
  ASSERT_EQ(rc7, 0) << chk;
  auto c = last_json_line(chk);
  EXPECT_EQ(c["session_states"].size(), 60u);
  EXPECT_EQ(c["sessions"]["archived"].get<int>(), 60);
  EXPECT_TRUE(c["violations"].empty()) << c["violations"].dump();
}

TEST(sessions, a_running_oracle_answers_from_its_archive) {
  auto dir = temp_dir("sessions-live");
  cleanup tidy{dir};
  child oracle{oracle_args(dir + "/db"), dir + "/oracle.out"};
  ASSERT_TRUE(oracle.wait_for_output("listening on", 20s)) << oracle.errors();
  auto target = "127.0.0.1:" + listening_port(oracle.output());
  child miner{{"miner", "--oracle", target, "--nodes", "3", "--behaviour",
               "healthy:3", "--deadline-hint-ms", "1000"},
              dir + "/miner.out"};
  ASSERT_TRUE(miner.wait_for_output("connected", 20s)) << miner.errors();
  auto [rc, out] = run({"submit", "--oracle", target, "--sessions", "8",
                        "--prefix", "live", "--max-tasks", "1"},
                       dir + "/submit.out");
  ASSERT_EQ(rc, 0) << out;
  // Ask until all eight have ended (each answer is a fresh process).
  std::vector<nlohmann::json> xs;
  auto until = std::chrono::steady_clock::now() + 60s;
  while (std::chrono::steady_clock::now() < until) {
    int rc2 = -1;
    xs = sessions_json({"--oracle", target}, dir + "/sessions.out", rc2);
    ASSERT_EQ(rc2, 0) << read_file(dir + "/sessions.out.err");
    if (xs.size() >= 8)
      break;
    std::this_thread::sleep_for(200ms);
  }
  ASSERT_EQ(xs.size(), 8u);
  for (auto& x : xs)
    EXPECT_EQ(x["id"].get<std::string>().rfind("live-", 0), 0u) << x.dump();
  // The oracle caps one answer at --limit.
  int rc3 = -1;
  auto two = sessions_json({"--oracle", target, "--limit", "2"},
                           dir + "/two.out", rc3);
  ASSERT_EQ(rc3, 0);
  EXPECT_EQ(two.size(), 2u);
  // A resubmission of an ended id is a duplicate: `submit` reports it as
  // stored already, and no ninth session appears.
  auto [rc4, again] = run({"submit", "--oracle", target, "--sessions", "1",
                           "--prefix", "live", "--max-tasks", "1"},
                          dir + "/again.out");
  EXPECT_NE(again.find("already stored"), std::string::npos) << again;
  int rc5 = -1;
  auto after = sessions_json({"--oracle", target}, dir + "/after.out", rc5);
  ASSERT_EQ(rc5, 0);
  EXPECT_EQ(after.size(), 8u);
  // The running oracle's data directory is read beside it: the commands
  // that inspect one open it to read only, and need not its lock.
  int rc6 = -1;
  auto beside = sessions_json({"--data-dir", dir + "/db"}, dir + "/beside.out", rc6);
  ASSERT_EQ(rc6, 0) << read_file(dir + "/beside.out.err");
  EXPECT_EQ(beside.size(), 8u);
}

TEST(sessions, inspecting_a_directory_changes_nothing_in_it) {
  // A mistyped path is not made a store: `check` and `sessions` say there
  // is none, and leave the directory as it was.
  auto dir = temp_dir("sessions-empty");
  cleanup tidy{dir};
  auto empty = dir + "/empty";
  std::filesystem::create_directories(empty);
  for (auto cmd : {"check", "sessions"}) {
    auto [rc, out] = run({cmd, "--data-dir", empty}, dir + "/" + cmd + ".out");
    EXPECT_NE(rc, 0) << cmd << ": " << out;
    EXPECT_NE(read_file(dir + "/" + cmd + ".out.err").find("no nodepool store"),
              std::string::npos)
      << cmd << ": " << read_file(dir + "/" + cmd + ".out.err");
    EXPECT_TRUE(std::filesystem::is_empty(empty)) << cmd << " wrote in " << empty;
  }
}

} // namespace
} // namespace nodepool::testing
