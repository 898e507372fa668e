// `nodepool sim` as a user runs it: thousands of seeds with every kind of
// fault and no violation, byte-identical reruns whatever the worker count,
// and a failing seed that prints the one command reproducing it.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "proc.hpp"

namespace nodepool::testing {
namespace {

/// Runs `nodepool sim ARGS`; (exit code, stdout). The timing line on
/// stderr is left out: stdout alone is the reproducible report.
std::pair<int, std::string> sim(const std::string& args) {
  return run_shell("(" + std::string(NODEPOOL_BIN) + " sim " + args
                   + " 2>/dev/null)");
}

TEST(sim_cli, two_thousand_seeds_hold_every_invariant) {
  auto [rc, out] = sim("--seeds 1..2000 --json");
  ASSERT_EQ(rc, 0) << out;
  auto j = last_json_line(out);
  ASSERT_FALSE(j.is_discarded()) << out;
  EXPECT_EQ(j["runs"], 2000);
  EXPECT_TRUE(j["violations"].empty()) << j["violations"].dump();
  EXPECT_EQ(j["sessions"]["lost"], 0);
  EXPECT_GT(j["sessions"]["accepted"].get<int>(), 10000);
  for (auto kind : {"miner_kill", "miner_restart", "miner_silence", "msg_drop",
                    "msg_delay", "msg_duplicate", "msg_reorder", "oracle_crash",
                    "oracle_crash_after_write", "oracle_restart", "clock_jump",
                    "behaviour_slow", "behaviour_wrong", "behaviour_flaky",
                    "behaviour_garbage", "behaviour_crash"})
    EXPECT_GT(j["faults"].value(kind, 0), 0) << kind;
}

TEST(sim_cli, a_rerun_prints_the_same_bytes) {
  auto [rc1, one] = sim("--seeds 40..64 --trace --jobs 1");
  auto [rc2, two] = sim("--seeds 40..64 --trace --jobs 2");
  EXPECT_EQ(rc1, 0);
  EXPECT_EQ(rc2, 0);
  EXPECT_GT(one.size(), 1000u);
  EXPECT_EQ(one, two);
}

TEST(sim_cli, a_failing_seed_prints_the_command_that_reproduces_it) {
  // A store that loses what it acknowledged must be caught on every seed.
  auto [rc, out] = sim("--seeds 4..6 --lossy-store");
  EXPECT_EQ(rc, 1) << out;
  auto at = out.find("FAIL seed 5: ");
  ASSERT_NE(at, std::string::npos) << out;
  auto fail_line = out.substr(at, out.find('\n', at) - at);
  auto rep = out.find("reproduce: nodepool sim --seeds 5..5 --trace --lossy-store");
  ASSERT_NE(rep, std::string::npos) << out;
  auto [rc2, again] = sim("--seeds 5..5 --trace --lossy-store");
  EXPECT_EQ(rc2, 1);
  EXPECT_NE(again.find(fail_line), std::string::npos) << again;
  EXPECT_NE(again.find("seed 5: "), std::string::npos);  // the trace
}

TEST(sim_cli, bad_flags_are_refused_clearly) {
  auto [rc, out] = run_shell(std::string(NODEPOOL_BIN) + " sim --seeds 9..3");
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("--seeds: expected N or A..B"), std::string::npos) << out;
  auto [rc2, out2] = run_shell(std::string(NODEPOOL_BIN) + " sim --store tape");
  EXPECT_NE(rc2, 0);
  EXPECT_NE(out2.find("--store: memory or rocksdb"), std::string::npos) << out2;
}

} // namespace
} // namespace nodepool::testing
