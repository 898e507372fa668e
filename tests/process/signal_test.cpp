// SIGINT and SIGTERM: the demo (while it serves, while it checks its
// history), a second signal, `sim` and `bench` end promptly and cleanly,
// and a data directory left behind is resumable.
#include <memory>
#include <nlohmann/json.hpp>
#include <set>

#include "proc.hpp"

using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace nodepool::testing {
namespace {

/// A signalled command must end within a second; the bound is wider so that
/// a loaded machine does not fail the test, and still catches a command
/// that ignores the signal (it would run on for many seconds).
constexpr auto bound = 5s;

/// Sends `sig` and waits for the exit; the exit status, or a failure and
/// -1000 if the child was still running after `bound`.
int signal_and_wait(child& c, int sig) {
  c.signal(sig);
  auto rc = c.wait_exit(bound);
  if (rc == -1000)
    ADD_FAILURE() << "still running " << bound.count() << " s after signal "
                  << sig << ": " << c.errors();
  return rc;
}

/// The names in a directory (none if it cannot be read).
std::vector<std::string> names_in(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (auto& e : fs::directory_iterator(dir, ec))
    out.push_back(e.path().filename().string());
  return out;
}

/// Polls `done` every 20 ms until it holds or `limit` passes.
template <class F>
bool wait_until(F&& done, std::chrono::milliseconds limit) {
  auto end = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > end)
      return false;
    std::this_thread::sleep_for(20ms);
  }
  return true;
}

/// `nodepool check` over a data directory (invariants at the end only, to
/// be quick): what a resumed run would find.
void expect_checkable(const std::string& db, const std::string& out) {
  auto [rc, text] = run({"check", "--data-dir", db, "--stride", "1000000",
                         "--json"},
                        out);
  EXPECT_EQ(rc, 0) << text << read_file(out + ".err");
  auto j = last_json_line(text);
  ASSERT_TRUE(j.is_object()) << text;
  EXPECT_GT(j["entries"].get<int>(), 0);
  EXPECT_TRUE(j["violations"].empty()) << text;
}

// Waiting for the accepted sessions to end takes this demo about 6 s on
// the 2-core machine; the signal comes within milliseconds of the line that
// starts that phase.
std::vector<std::string> serving_args(const std::string& db) {
  return {"demo", "--json", "--sessions", "300", "--nodes", "10",
          "--seed", "5", "--data-dir", db};
}

/// Starts that demo and waits until it is waiting for its sessions to end.
std::unique_ptr<child> serving_demo(const std::string& dir,
                                    const std::string& out) {
  auto demo = std::make_unique<child>(serving_args(dir + "/db"), out);
  EXPECT_TRUE(demo->wait_for_errors("waiting for them to end", 60s))
    << demo->errors();
  return demo;
}

TEST(signals, sigterm_while_the_demo_serves_ends_it_and_a_rerun_resumes) {
  auto dir = temp_dir("sig-serve");
  cleanup tidy{dir};
  {
    auto demo = serving_demo(dir, dir + "/first.out");
    ASSERT_FALSE(::testing::Test::HasFailure());
    EXPECT_EQ(signal_and_wait(*demo, SIGTERM), 143) << demo->errors();
    auto err = demo->errors();
    EXPECT_NE(err.find("interrupted by SIGTERM"), std::string::npos) << err;
    EXPECT_NE(err.find("--data-dir " + dir + "/db"), std::string::npos) << err;
    EXPECT_EQ(err.find("checking the stored history"), std::string::npos)
      << err;
    EXPECT_EQ(demo->output(), "") << "no report for an interrupted run";
  }
  auto [rc, out] = run(serving_args(dir + "/db"), dir + "/second.out", 120s);
  ASSERT_EQ(rc, 0) << out << read_file(dir + "/second.out.err");
  auto j = last_json_line(out);
  ASSERT_TRUE(j.is_object()) << out;
  // Every session was accepted before the signal: the rerun submits none.
  EXPECT_EQ(j["sessions"]["resumed"].get<int>(), 300);
  EXPECT_EQ(j["sessions"]["accepted"].get<int>(), 300);
  EXPECT_EQ(j["sessions"]["lost"].get<int>(), 0);
  EXPECT_EQ(j["sessions"]["completed"].get<int>()
              + j["sessions"]["failed"].get<int>(),
            300);
  EXPECT_TRUE(j["violations"].empty()) << j["violations"].dump();
}

TEST(signals, sigterm_while_the_demo_checks_ends_it_and_leaves_a_sound_store) {
  // The check of a few thousand entries takes milliseconds; the demo's
  // test hook pauses it for half a second per 1024 entries, so that the
  // signal sent when the check starts surely arrives while it runs.
  auto dir = temp_dir("sig-check");
  cleanup tidy{dir};
  ::setenv("NODEPOOL_TEST_CHECK_DELAY_MS", "500", 1);
  child demo{{"demo", "--json", "--sessions", "400", "--nodes", "40",
              "--seed", "5", "--data-dir", dir + "/db"},
             dir + "/demo.out"};
  ::unsetenv("NODEPOOL_TEST_CHECK_DELAY_MS");
  ASSERT_TRUE(demo.wait_for_errors("checking the stored history", 120s))
    << demo.errors();
  EXPECT_EQ(signal_and_wait(demo, SIGTERM), 143) << demo.errors();
  auto err = demo.errors();
  EXPECT_NE(err.find("interrupted by SIGTERM"), std::string::npos) << err;
  EXPECT_NE(err.find("history is unchecked"), std::string::npos) << err;
  EXPECT_EQ(demo.output(), "") << "an unchecked run reports nothing";
  expect_checkable(dir + "/db", dir + "/check.out");
}

// `demo --serve`: the Ctrl-C that ends the serving is the serving's; one
// during the check that follows is the check's first, which stops it
// cleanly (before, it was taken for a second signal: an exit at once).
TEST(signals, sigint_after_serving_stops_the_check_cleanly) {
  auto dir = temp_dir("sig-serve-check");
  cleanup tidy{dir};
  ::setenv("NODEPOOL_TEST_CHECK_DELAY_MS", "500", 1);
  child demo{{"demo", "--sessions", "400", "--nodes", "40", "--seed", "5",
              "--data-dir", dir + "/db", "--http", "off", "--serve"},
             dir + "/demo.out"};
  ::unsetenv("NODEPOOL_TEST_CHECK_DELAY_MS");
  ASSERT_TRUE(demo.wait_for_errors("until Ctrl-C", 120s)) << demo.errors();
  demo.signal(SIGINT);
  ASSERT_TRUE(demo.wait_for_errors("checking the stored history", 60s))
    << demo.errors();
  EXPECT_EQ(signal_and_wait(demo, SIGINT), 130) << demo.errors();
  auto err = demo.errors();
  EXPECT_EQ(err.find("second signal"), std::string::npos) << err;
  EXPECT_NE(err.find("interrupted by SIGINT"), std::string::npos) << err;
  EXPECT_NE(err.find("history is unchecked"), std::string::npos) << err;
  expect_checkable(dir + "/db", dir + "/check.out");
}

TEST(signals, a_second_signal_exits_at_once) {
  auto dir = temp_dir("sig-twice");
  cleanup tidy{dir};
  auto demo = serving_demo(dir, dir + "/demo.out");
  ASSERT_FALSE(::testing::Test::HasFailure());
  // Both signals are pending when the process continues, so the second
  // arrives before any cleanup could have run, whichever is delivered first.
  demo->signal(SIGSTOP);
  demo->signal(SIGINT);
  demo->signal(SIGTERM);
  auto rc = signal_and_wait(*demo, SIGCONT);
  EXPECT_TRUE(rc == 130 || rc == 143) << rc << " " << demo->errors();
  auto err = demo->errors();
  EXPECT_NE(err.find("second signal: exiting at once"), std::string::npos)
    << err;
  EXPECT_EQ(err.find("interrupted by"), std::string::npos)
    << "the clean shutdown ran: " << err;
  // Left as after a crash, which the store recovers from.
  expect_checkable(dir + "/db", dir + "/check.out");
}

TEST(signals, sigint_ends_sim_and_its_workers_and_leaves_no_file) {
  auto dir = temp_dir("sig-sim");
  cleanup tidy{dir};
  auto root = dir + "/root";
  fs::create_directories(root);
  child sim{{"sim", "--seeds", "1..1000000", "--jobs", "2", "--store",
             "rocksdb", "--data-root", root},
            dir + "/sim.out"};
  // Workers write "nodepool-sim-out-*" and keep a store per seed in
  // "nodepool-sim-<worker pid>-<seed>": wait until a seed has finished and
  // the workers are known.
  std::set<pid_t> workers;
  bool finished_one = false;
  ASSERT_TRUE(wait_until(
    [&] {
      for (auto& name : names_in(root)) {
        if (name.rfind("nodepool-sim-out-", 0) == 0)
          finished_one = finished_one
                         || read_file(root + "/" + name).find('{')
                              != std::string::npos;
        else if (name.rfind("nodepool-sim-", 0) == 0)
          workers.insert(std::stoi(name.substr(13)));
      }
      return (finished_one && !workers.empty()) || !sim.running();
    },
    60s));
  ASSERT_TRUE(finished_one && !workers.empty()) << sim.errors();
  EXPECT_EQ(signal_and_wait(sim, SIGINT), 130) << sim.errors();
  auto err = sim.errors();
  EXPECT_NE(err.find("interrupted by SIGINT"), std::string::npos) << err;
  EXPECT_NE(err.find("of 1000000 seeds ran"), std::string::npos) << err;
  EXPECT_NE(sim.output().find("0 violations"), std::string::npos)
    << sim.output();
  for (auto pid : workers)
    EXPECT_NE(::kill(pid, 0), 0) << "worker " << pid << " still there";
  auto left = names_in(root);
  EXPECT_TRUE(left.empty()) << left.front();
}

/// A client that only waits for an answer (here `ctl`, whose requests wait
/// up to --timeout) does not wait for it once signalled: it says so and
/// exits at once. The "oracle" is a socket that listens and never answers.
TEST(signals, sigint_ends_a_client_waiting_for_an_answer_at_once) {
  auto dir = temp_dir("sig-ctl");
  cleanup tidy{dir};
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(fd, 8), 0);
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len), 0);
  auto url = "http://127.0.0.1:" + std::to_string(ntohs(a.sin_port));
  child ctl{{"ctl", "--url", url, "--timeout", "600", "status"},
            dir + "/ctl.out"};
  // Its connection is waiting to be accepted: it has sent its request.
  pollfd p{fd, POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 60000), 1) << ctl.errors();
  EXPECT_EQ(signal_and_wait(ctl, SIGINT), 130) << ctl.errors();
  EXPECT_NE(ctl.errors().find("nodepool ctl: interrupted"), std::string::npos)
    << ctl.errors();
  ::close(fd);
}

/// SIGTERM ends the bench with 143, saying so, printing no report and
/// leaving nothing in its TMPDIR.
void expect_sigterm_ends_bench_cleanly(child& bench, const std::string& tmp) {
  EXPECT_EQ(signal_and_wait(bench, SIGTERM), 143) << bench.errors();
  EXPECT_NE(bench.errors().find("interrupted by SIGTERM"), std::string::npos)
    << bench.errors();
  EXPECT_EQ(bench.output(), "");
  auto left = names_in(tmp);
  EXPECT_TRUE(left.empty()) << left.front();
}

/// A bench started with `args` whose temporary files go under `tmp`: it
/// puts them under $TMPDIR, which the child inherits (this process's own
/// is put back at once).
std::unique_ptr<child> bench_with_tmpdir(const std::string& tmp,
                                         std::vector<std::string> args,
                                         const std::string& out) {
  fs::create_directories(tmp);
  const char* old = std::getenv("TMPDIR");
  std::string saved = old ? old : "";
  ::setenv("TMPDIR", tmp.c_str(), 1);
  args.insert(args.begin(), "bench");
  auto c = std::make_unique<child>(args, out);
  if (old)
    ::setenv("TMPDIR", saved.c_str(), 1);
  else
    ::unsetenv("TMPDIR");
  return c;
}

TEST(signals, sigterm_ends_bench_and_removes_its_temporary_files) {
  auto dir = temp_dir("sig-bench");
  cleanup tidy{dir};
  auto tmp = dir + "/tmp";
  auto b = bench_with_tmpdir(tmp, {"--only", "durable", "--nodes", "100", "--reps",
                                   "1", "--seconds", "600"},
                             dir + "/bench.out");
  auto& bench = *b;
  // The durable section's store exists: it is measuring.
  auto measuring = [&] {
    for (auto& name : names_in(tmp))
      if (name.rfind("nodepool-bench-durable-", 0) == 0)
        return true;
    return false;
  };
  ASSERT_TRUE(wait_until([&] { return measuring() || !bench.running(); }, 60s));
  ASSERT_TRUE(measuring()) << bench.errors();
  expect_sigterm_ends_bench_cleanly(bench, tmp);
}

// The durable section's long run samples resident memory on a thread of
// its own; a signal in the middle of the run ends the bench as promptly
// and as cleanly as anywhere else (the sampler is stopped and joined).
TEST(signals, sigterm_ends_bench_in_its_long_saturation_run) {
  auto dir = temp_dir("sig-bench-flat");
  cleanup tidy{dir};
  auto tmp = dir + "/tmp";
  auto b = bench_with_tmpdir(tmp, {"--only", "durable", "--nodes", "100", "--reps",
                                   "1", "--seconds", "0.2", "--loads", "0.5",
                                   "--flat-seconds", "600", "--flat-retention-s",
                                   "0.1"},
                             dir + "/bench.out");
  auto& bench = *b;
  auto in_run = [&] {
    return bench.errors().find("the long run starts") != std::string::npos;
  };
  ASSERT_TRUE(wait_until([&] { return in_run() || !bench.running(); }, 120s));
  ASSERT_TRUE(in_run()) << bench.errors();
  expect_sigterm_ends_bench_cleanly(bench, tmp);
}

} // namespace
} // namespace nodepool::testing
