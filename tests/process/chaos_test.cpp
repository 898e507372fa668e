// `nodepool chaos` as a real process: it starts an oracle, miners and
// submitters, SIGKILLs and SIGSTOPs them on a seeded schedule, and must
// report (and exit 0 for) a run in which nothing accepted was lost. Also:
// bad flags are refused before anything starts, and no child process
// outlives the runner, whether it is interrupted or killed.
#include <nlohmann/json.hpp>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <csignal>
#include <regex>

#include <unistd.h>

#include "proc.hpp"

using namespace std::chrono_literals;

namespace nodepool::testing {
namespace {

TEST(chaos, faults_are_injected_and_nothing_accepted_is_lost) {
  auto dir = temp_dir("chaos");
  cleanup tidy{dir};
  // 12 s of faults, one every 0.8 s on average: the schedule of seed 7 has
  // kills and stops of both the oracle and the miners.
  auto [rc, out] = run({"chaos", "--duration", "12", "--seed", "7", "--json",
                        "--miners", "2", "--nodes", "3",
                        "--fault-interval-ms", "800", "--settle-timeout", "40",
                        "--dir", dir + "/run", "--plot", dir + "/plot"},
                       dir + "/chaos.out", 150s);
  auto errors = read_file(dir + "/chaos.out.err");
  auto j = last_json_line(out);
  ASSERT_TRUE(j.is_object()) << out << errors;
  EXPECT_EQ(rc, 0) << errors;
  EXPECT_EQ(j["seed"].get<uint64_t>(), 7u);
  EXPECT_NE(errors.find("repeat    nodepool chaos --duration 12 --seed 7 --oracles 1 "
                        "--miners 2 --nodes 3"),
            std::string::npos) << errors;
  auto& f = j["faults"];
  EXPECT_GT(j["kills"].get<int>(), 0) << errors;
  EXPECT_EQ(j["kills"].get<int>(),
            f["oracle_kills"].get<int>() + f["miner_kills"].get<int>());
  EXPECT_EQ(j["stops"].get<int>(),
            f["oracle_stops"].get<int>() + f["miner_stops"].get<int>());
  // Every kill was followed by a start of the same role.
  EXPECT_GE(j["restarts"]["oracle"].get<int>(), f["oracle_kills"].get<int>());
  EXPECT_GE(j["restarts"]["miners"].get<int>(), f["miner_kills"].get<int>());
  auto& s = j["sessions"];
  EXPECT_GT(s["accepted"].get<int>(), 0) << errors;
  EXPECT_EQ(s["lost"].get<int>(), 0) << s.dump();
  EXPECT_EQ(s["completed"].get<int>() + s["failed"].get<int>(),
            s["accepted"].get<int>());
  EXPECT_TRUE(j["violations"].is_array());
  EXPECT_TRUE(j["violations"].empty()) << j["violations"].dump();
  EXPECT_TRUE(j["errors"].empty()) << j["errors"].dump();
  EXPECT_GT(j["history_entries"].get<int>(), 0);
  // --plot: one mark per fault injected, and as many grants over time as
  // sessions started (every accepted one that completed did).
  std::ifstream faults{dir + "/plot/chaos_faults.dat"};
  std::string line;
  int marks = 0;
  while (std::getline(faults, line))
    marks += !line.empty() && line[0] != '#';
  EXPECT_EQ(marks, j["kills"].get<int>() + j["stops"].get<int>());
  std::ifstream grants{dir + "/plot/chaos_grants.dat"};
  double t = 0, n = 0, sum = 0;
  std::getline(grants, line);  // the header
  while (grants >> t >> n)
    sum += n;
  EXPECT_GE(sum, s["completed"].get<double>());
  EXPECT_LE(sum, s["accepted"].get<double>());
  EXPECT_GT(std::filesystem::file_size(dir + "/plot/chaos_queue.dat"), 40u);
  if (run_shell("command -v gnuplot").first == 0) {
    EXPECT_GT(std::filesystem::file_size(dir + "/plot/chaos.png"), 10000u) << errors;
  }
}

// A replicated pool of 3 oracles: leaders and followers are killed and
// stopped (the runner asks the members who leads), and every member's data
// directory must hold every acknowledged session, ended, with I1-I5 intact.
TEST(chaos, a_cluster_whose_leaders_are_killed_loses_nothing) {
  auto dir = temp_dir("chaos-cluster");
  cleanup tidy{dir};
  auto [rc, out] = run({"chaos", "--oracles", "3", "--duration", "15", "--seed",
                        "11", "--json", "--miners", "2", "--nodes", "3",
                        "--fault-interval-ms", "600", "--settle-timeout", "60",
                        "--dir", dir + "/run"},
                       dir + "/chaos.out", 200s);
  auto errors = read_file(dir + "/chaos.out.err");
  auto j = last_json_line(out);
  ASSERT_TRUE(j.is_object()) << out << errors;
  EXPECT_EQ(rc, 0) << errors;
  EXPECT_EQ(j["oracles"].get<int>(), 3);
  auto& f = j["faults"];
  EXPECT_GT(f["leader_kills"].get<int>() + f["leader_stops"].get<int>(), 0)
    << errors;
  EXPECT_EQ(f["leader_kills"].get<int>() + f["follower_kills"].get<int>(),
            f["oracle_kills"].get<int>());
  EXPECT_EQ(f["leader_stops"].get<int>() + f["follower_stops"].get<int>(),
            f["oracle_stops"].get<int>());
  EXPECT_GE(j["leader_changes"].get<int>(), 1) << errors;
  auto& s = j["sessions"];
  EXPECT_GT(s["accepted"].get<int>(), 0) << errors;
  EXPECT_EQ(s["lost"].get<int>(), 0) << s.dump();
  EXPECT_EQ(s["completed"].get<int>() + s["failed"].get<int>(),
            s["accepted"].get<int>());
  EXPECT_TRUE(j["violations"].empty()) << j["violations"].dump();
  EXPECT_TRUE(j["errors"].empty()) << j["errors"].dump();
  EXPECT_GT(j["history_entries"].get<int>(), 0);
  // Settled: no session left, and every member's archive complete through
  // the leader's index then (asked of each member before the stop).
  EXPECT_TRUE(j["settled"].get<bool>()) << errors;
  ASSERT_TRUE(j["archive_target_index"].is_number()) << j.dump();
  EXPECT_GT(j["archive_target_index"].get<int>(), 0);
  EXPECT_NE(errors.find("settled: every member's archive holds every session"),
            std::string::npos) << errors;
}

/// Why `--partitions` cannot run here (not root, no ip netns), or empty.
std::string netns_unavailable() {
  if (geteuid() != 0)
    return "--partitions needs root (ip netns)";
  auto probe = "npt" + std::to_string(getpid() % 100000);
  auto [rc, out] = run_shell("ip netns add " + probe + " 2>&1 && ip netns del " + probe);
  return rc == 0 ? std::string{} : "network namespaces are not available here: " + out;
}

// --partitions: the members and the miners in network namespaces of their
// own, and links cut as faults (a member's, the miners'), besides kills and
// stops. Needs root and ip netns; skipped with the reason elsewhere.
TEST(chaos, partitions_cut_real_links_and_lose_nothing) {
  if (auto why = netns_unavailable(); !why.empty())
    GTEST_SKIP() << why;
  auto dir = temp_dir("chaos-partitions");
  cleanup tidy{dir};
  auto [rc, out] = run({"chaos", "--oracles", "3", "--partitions", "--duration", "15",
                        "--seed", "7", "--json", "--miners", "2", "--nodes", "3",
                        "--fault-interval-ms", "600", "--settle-timeout", "60",
                        "--dir", dir + "/run"},
                       dir + "/chaos.out", 200s);
  auto errors = read_file(dir + "/chaos.out.err");
  auto j = last_json_line(out);
  ASSERT_TRUE(j.is_object()) << out << errors;
  EXPECT_EQ(rc, 0) << errors;
  auto& f = j["faults"];
  EXPECT_GT(f["oracle_cuts"].get<int>() + f["miner_cuts"].get<int>(), 0) << f.dump();
  EXPECT_EQ(j["cuts"].get<int>(), f["oracle_cuts"].get<int>() + f["miner_cuts"].get<int>());
  EXPECT_NE(errors.find("cut the link of"), std::string::npos) << errors;
  // The command it prints draws this schedule again: with its cuts.
  EXPECT_NE(errors.find("repeat    nodepool chaos --duration 15 --seed 7 --oracles 3 "
                        "--partitions --miners 2"),
            std::string::npos) << errors;
  auto& s = j["sessions"];
  EXPECT_GT(s["accepted"].get<int>(), 0) << errors;
  EXPECT_EQ(s["lost"].get<int>(), 0) << s.dump();
  EXPECT_EQ(s["completed"].get<int>() + s["failed"].get<int>(), s["accepted"].get<int>());
  EXPECT_TRUE(j["violations"].empty()) << j["violations"].dump();
  EXPECT_TRUE(j["errors"].empty()) << j["errors"].dump();
  EXPECT_TRUE(j["settled"].get<bool>()) << errors;
  EXPECT_GT(j["archive_target_index"].get<int>(), 0) << j.dump();
  // Its namespaces went with it.
  auto at = errors.find("network namespaces nc");
  ASSERT_NE(at, std::string::npos) << errors;
  auto prefix = errors.substr(at + 19, errors.find('o', at + 21) - at - 19);
  auto [lrc, left] = run_shell("ip netns list | grep -c '^" + prefix + "' || true");
  EXPECT_EQ(left.substr(0, 1), "0") << prefix << ": " << left;
}

// A second Ctrl-C exits at once and leaves the namespaces: it says how to
// remove them, and that command does.
TEST(chaos, a_second_signal_says_how_to_remove_the_namespaces_left) {
  if (auto why = netns_unavailable(); !why.empty())
    GTEST_SKIP() << why;
  auto dir = temp_dir("chaos-second");
  cleanup tidy{dir};
  child c{{"chaos", "--oracles", "3", "--partitions", "--duration", "60", "--seed", "3",
           "--miners", "1", "--nodes", "2", "--dir", dir + "/run"},
          dir + "/chaos.out"};
  ASSERT_TRUE(c.wait_for_errors("network namespaces nc", 60s)) << c.errors();
  // Two signals at once (two kinds: two pending SIGINTs would be one).
  c.signal(SIGINT);
  c.signal(SIGTERM);
  auto rc = c.wait_exit(20s);
  EXPECT_TRUE(rc == 128 + SIGINT || rc == 128 + SIGTERM) << rc << c.errors();
  auto errors = c.errors();
  auto at = errors.find("remove them with: ");
  ASSERT_NE(at, std::string::npos) << errors;
  auto line = errors.substr(at + 18, errors.find('\n', at) - at - 18);
  auto prefix = line.substr(13, line.find(' ') - 13);  // NETNS_PREFIX=...
  ASSERT_EQ(line.rfind("NETNS_PREFIX=nc", 0), 0u) << line;
  auto [lrc, left] = run_shell("ip netns list | grep -c '^" + prefix + "' || true");
  EXPECT_NE(left.substr(0, 1), "0") << "nothing was left behind to remove";
  // The printed command removes them.
  auto [drc, dout] = run_shell("cd " + std::string{NODEPOOL_SOURCE_DIR} + " && " + line
                               + " 2>&1");
  EXPECT_EQ(drc, 0) << dout;
  auto [lrc2, left2] = run_shell("ip netns list | grep -c '^" + prefix + "' || true");
  EXPECT_EQ(left2.substr(0, 1), "0") << prefix << ": " << left2;
}

TEST(chaos, bad_flags_are_refused_before_anything_starts) {
  auto dir = temp_dir("chaos-flags");
  cleanup tidy{dir};
  struct bad_case {
    std::vector<std::string> args;
    std::string says;
  };
  std::filesystem::create_directories(dir + "/full");
  std::ofstream{dir + "/full/file"} << "x";
  std::vector<bad_case> cases{
    {{"chaos"}, "--duration"},
    {{"chaos", "--duration", "-3"}, "--duration"},
    {{"chaos", "--duration", "soon"}, "--duration"},
    {{"chaos", "--duration", "5", "--miners", "0"}, "--miners"},
    {{"chaos", "--duration", "5", "--oracles", "2"}, "--oracles"},
    {{"chaos", "--duration", "5", "--partitions"}, "--partitions"},
    {{"chaos", "--duration", "5", "--seed", "x"}, "--seed"},
    {{"chaos", "--duration", "5", "--no-such-flag"}, "--no-such-flag"},
    {{"chaos", "--duration", "5", "--dir", dir + "/full"}, "not empty"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    auto out = dir + "/bad" + std::to_string(i) + ".out";
    child c{cases[i].args, out};
    auto rc = c.wait_exit(30s);
    EXPECT_NE(rc, 0) << cases[i].says;
    EXPECT_NE(rc, -1000) << "did not end: " << cases[i].says;
    EXPECT_NE(c.errors().find(cases[i].says), std::string::npos)
      << cases[i].says << ": " << c.errors();
    // Refused before the first child process was started.
    EXPECT_EQ(c.errors().find("start oracle"), std::string::npos)
      << c.errors();
  }
}

/// Pids of every process the runner said it started, and its oracle's port.
std::pair<std::vector<pid_t>, std::string> started(const std::string& err) {
  std::vector<pid_t> pids;
  std::regex pid_re{R"(\(pid ([0-9]+)\))"};
  for (std::sregex_iterator i{err.begin(), err.end(), pid_re}, end; i != end;
       ++i)
    pids.push_back(static_cast<pid_t>(std::stol((*i)[1])));
  std::smatch m;
  std::string port;
  if (std::regex_search(err, m, std::regex{R"(listening on 127\.0\.0\.1:([0-9]+))"}))
    port = m[1];
  return {pids, port};
}

/// Processes (not zombies) whose command line names `port` or `dir`: the
/// oracle, miners, submitters and status calls of one chaos run, not the
/// runner.
std::vector<std::pair<pid_t, std::string>> left_behind(const std::string& port,
                                                       const std::string& dir) {
  std::vector<std::pair<pid_t, std::string>> found;
  for (auto& e : std::filesystem::directory_iterator{"/proc"}) {
    auto name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos)
      continue;
    auto cmd = read_file(e.path().string() + "/cmdline");
    std::replace(cmd.begin(), cmd.end(), '\0', ' ');
    if (cmd.find(" chaos ") != std::string::npos)
      continue;  // the runner itself
    if (cmd.find("127.0.0.1:" + port) != std::string::npos
        || cmd.find(dir) != std::string::npos)
      found.emplace_back(static_cast<pid_t>(std::stol(name)), cmd);
  }
  return found;
}

/// Starts a long chaos run, waits until its miners run, then ends the
/// runner with `sig`; no child of it may survive.
void no_child_survives(int sig) {
  auto dir = temp_dir("chaos-end");
  cleanup tidy{dir};
  auto run_dir = dir + "/run";
  child c{{"chaos", "--duration", "120", "--seed", "3", "--miners", "2",
           "--nodes", "2", "--dir", run_dir},
          dir + "/chaos.out"};
  auto end = std::chrono::steady_clock::now() + 30s;
  while (std::chrono::steady_clock::now() < end && c.running()
         && c.errors().find("start miner1") == std::string::npos)
    std::this_thread::sleep_for(20ms);
  ASSERT_NE(c.errors().find("start miner1"), std::string::npos) << c.errors();
  std::this_thread::sleep_for(1s);  // submitters running too
  auto [pids, port] = started(c.errors());
  ASSERT_FALSE(port.empty()) << c.errors();
  ASSERT_GE(pids.size(), 3u) << c.errors();
  ASSERT_FALSE(left_behind(port, run_dir).empty())
    << "the check below would see nothing";
  c.signal(sig);
  auto rc = c.wait_exit(60s);
  if (sig == SIGINT)
    EXPECT_EQ(rc, 130) << c.errors();
  else
    EXPECT_EQ(rc, -sig);
  // The kernel delivers the parent-death signal at once; give the killed
  // children a moment to be gone.
  std::vector<std::pair<pid_t, std::string>> alive;
  auto until = std::chrono::steady_clock::now() + 10s;
  do {
    alive = left_behind(port, run_dir);
    if (alive.empty())
      break;
    std::this_thread::sleep_for(50ms);
  } while (std::chrono::steady_clock::now() < until);
  for (auto& [pid, cmd] : alive) {
    ADD_FAILURE() << "left behind: " << pid << " " << cmd;
    ::kill(pid, SIGKILL);  // not left to the next test either
  }
}

TEST(chaos, an_interrupted_run_leaves_no_process_behind) {
  no_child_survives(SIGINT);
}

TEST(chaos, a_killed_runner_leaves_no_process_behind) {
  no_child_survives(SIGKILL);
}

} // namespace
} // namespace nodepool::testing
