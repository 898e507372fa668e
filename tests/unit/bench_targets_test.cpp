// The targets one bench run judges by itself: each from its own figure,
// and only at the size the target was set for.
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "cli/bench_targets.hpp"

namespace nodepool::cli::bench {
namespace {

using json = nlohmann::json;

/// name -> (measured, met)
std::map<std::string, std::pair<double, bool>> judged(const json& report) {
  std::map<std::string, std::pair<double, bool>> out;
  for (auto& t : judge_targets(report)) {
    EXPECT_TRUE(t["target"].is_string() && !t["target"].get<std::string>().empty());
    EXPECT_TRUE(out.emplace(t["name"].get<std::string>(),
                            std::make_pair(t["measured"].get<double>(),
                                           t["met"].get<bool>()))
                  .second)
      << "twice: " << t.dump();
  }
  return out;
}

TEST(BenchTargets, EachIsJudgedByItsOwnFigureOnEitherSideOfItsBound) {
  json r;
  r["redis"] = {{"ratio_nodepool_to_always", 3.0}, {"ratio_nodepool_to_everysec", 1.0}};
  r["durable"] = {{"grant_at_50", {{"p99_ms", 1.0}}}, {"clients", 32}};
  r["replicated"] = {{"ratio_to_durable", 0.49}};
  r["etcd"] = {{"ratio_replicated_to_etcd", 10.0}};
  auto t = judged(r);
  ASSERT_EQ(t.size(), 5u);
  EXPECT_EQ(t["durable_to_redis_always"], std::make_pair(3.0, true));
  EXPECT_EQ(t["durable_to_redis_everysec"], std::make_pair(1.0, false));  // "more than"
  EXPECT_EQ(t["durable_grant_p99_at_half_load_ms"], std::make_pair(1.0, true));
  EXPECT_EQ(t["replicated_to_durable"], std::make_pair(0.49, false));
  EXPECT_EQ(t["replicated_to_etcd"], std::make_pair(10.0, true));

  r["redis"]["ratio_nodepool_to_always"] = 2.99;
  r["redis"]["ratio_nodepool_to_everysec"] = 1.01;
  r["durable"]["grant_at_50"]["p99_ms"] = 1.01;
  r["replicated"]["ratio_to_durable"] = 0.5;
  t = judged(r);
  EXPECT_FALSE(t["durable_to_redis_always"].second);
  EXPECT_TRUE(t["durable_to_redis_everysec"].second);
  EXPECT_FALSE(t["durable_grant_p99_at_half_load_ms"].second);
  EXPECT_TRUE(t["replicated_to_durable"].second);
}

TEST(BenchTargets, SizeBoundTargetsAreJudgedOnlyAtTheirSize) {
  json r;
  r["queue"] = {{"deep", {{"nodes", 10000}, {"queued", 2000}}},
                {"ratio_deep_to_small", 1.2}};
  r["scale"] = json::array({{{"nodes", 10000}, {"bytes_per_node", 100}}});
  r["recovery"] = {{"nodes", 10000}, {"queued_sessions", 1000}, {"serving_s", 0.1}};
  r["check"] = json::array({{{"sessions", 2000}, {"entries_per_s", 200000}},
                            {{"sessions", 20000}, {"entries_per_s", 210000}}});
  r["failover"] = {{"kills", 2}, {"election_timeout_ms", 400}, {"max_ms", 100},
                   {"median_ms", 90}, {"no_grant_within_30s", 0}};
  r["rotation"] = {{"rotations", 2}, {"median_pause_ms", 10}};
  r["durable"] = {{"clients", 32},
                  {"flat", {{"seconds", 3},
                            {"start", {{"live_sessions", 0}, {"rss_mb", 100}}},
                            {"end", {{"live_sessions", 0}, {"rss_mb", 100}}},
                            {"rss_peak_first_half_mb", 200},
                            {"rss_peak_second_half_mb", 200}}}};
  EXPECT_TRUE(judged(r).empty()) << judge_targets(r).dump();

  r["queue"]["deep"] = {{"nodes", 100000}, {"queued", 10000}};
  r["scale"].push_back({{"nodes", 100000}, {"bytes_per_node", 2049}});
  r["recovery"] = {{"nodes", 100000}, {"queued_sessions", 10000}, {"serving_s", 1.0}};
  r["check"].push_back({{"sessions", 1000000}, {"entries_per_s", 99000}});
  r["failover"]["kills"] = 20;
  r["failover"]["max_ms"] = 1600;
  r["rotation"]["rotations"] = 10;
  r["durable"]["flat"]["seconds"] = 60;
  // Judged by the halves' peaks, not by the two samples at the ends
  // (which could fall on either side of a memtable's flush).
  r["durable"]["flat"]["end"] = {{"live_sessions", 33}, {"rss_mb", 150}};
  r["durable"]["flat"]["rss_peak_second_half_mb"] = 221;
  auto t = judged(r);
  EXPECT_EQ(t["queue_deep_to_small"], std::make_pair(1.2, true));
  EXPECT_EQ(t["bytes_per_node_at_100k"], std::make_pair(2049.0, false));
  EXPECT_EQ(t["recovery_serving_s"], std::make_pair(1.0, false));  // "under 1 s"
  EXPECT_EQ(t["check_entries_per_s"], std::make_pair(99000.0, false));
  EXPECT_EQ(t["failover_max_ms_default"], std::make_pair(1600.0, false));
  EXPECT_EQ(t["rotation_median_pause_ms"], std::make_pair(10.0, true));
  EXPECT_EQ(t["durable_live_sessions_after_60s"], std::make_pair(33.0, false));
  EXPECT_EQ(t["durable_rss_second_half_to_first"], std::make_pair(1.105, false));
  r["durable"]["flat"]["rss_peak_second_half_mb"] = 219;
  EXPECT_EQ(judged(r)["durable_rss_second_half_to_first"],
            std::make_pair(1.095, true));
  // A run cut short has no second half to compare: not judged, not passed.
  r["durable"]["flat"]["rss_peak_second_half_mb"] = 0;
  EXPECT_EQ(judged(r).count("durable_rss_second_half_to_first"), 0u);
  EXPECT_EQ(t.count("failover_median_ms_tuned"), 0u);  // default timeout
}

TEST(BenchTargets, CheckMustBeFlatAndTunedFailoverIsJudgedByItsMedian) {
  json r;
  // Fast enough everywhere, but the slowest is under half the fastest.
  r["check"] = json::array({{{"sessions", 10000}, {"entries_per_s", 450000}},
                            {{"sessions", 1000000}, {"entries_per_s", 200000}}});
  r["failover"] = {{"kills", 20}, {"election_timeout_ms", 100}, {"max_ms", 900},
                   {"median_ms", 250}, {"no_grant_within_30s", 0}};
  r["etcd"] = {{"failover", {{"kills", 20}, {"election_timeout_ms", 100},
                             {"median_ms", 500}}}};
  auto t = judged(r);
  EXPECT_EQ(t["check_entries_per_s"], std::make_pair(200000.0, false));
  EXPECT_EQ(t["failover_median_ms_tuned"], std::make_pair(250.0, true));
  EXPECT_EQ(t["failover_to_etcd"], std::make_pair(0.5, true));
  EXPECT_EQ(t.count("failover_max_ms_default"), 0u);
  // etcd measured with another election timeout: no comparison.
  r["etcd"]["failover"]["election_timeout_ms"] = 400;
  EXPECT_EQ(judged(r).count("failover_to_etcd"), 0u);
}

} // namespace
} // namespace nodepool::cli::bench
