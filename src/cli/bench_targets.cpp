#include "cli/bench_targets.hpp"

#include <algorithm>
#include <optional>

namespace nodepool::cli::bench {

/// The targets a run can judge by itself, each with the figure it is
/// judged on: what BENCHMARKS.md's table of targets lists, for the
/// sections and sizes this run measured (a target set at 100k nodes is
/// judged only by a run at 100k nodes; one over 20 kills only by 20).
nlohmann::json judge_targets(const nlohmann::json& r) {
  nlohmann::json out = nlohmann::json::array();
  auto add = [&](const char* name, const char* target, double measured,
                 bool met) {
    out.push_back({{"name", name}, {"target", target},
                   {"measured", measured}, {"met", met}});
  };
  using ptr = nlohmann::json::json_pointer;
  auto num = [&](const char* p) -> std::optional<double> {
    ptr at{p};
    if (!r.contains(at) || !r[at].is_number())
      return std::nullopt;
    return r[at].get<double>();
  };
  if (auto x = num("/redis/ratio_nodepool_to_always"))
    add("durable_to_redis_always", "durable cycles/s >= 3 x Redis appendfsync always", *x,
        *x >= 3);
  if (auto x = num("/redis/ratio_nodepool_to_everysec"))
    add("durable_to_redis_everysec", "durable cycles/s > Redis appendfsync everysec", *x,
        *x > 1);
  if (auto x = num("/durable/grant_at_50/p99_ms"))
    add("durable_grant_p99_at_half_load_ms", "grant p99 at 50 % load <= 1 ms (in-process)",
        *x, *x <= 1);
  auto flat_s = num("/durable/flat/seconds");
  if (flat_s && *flat_s >= 60) {
    auto& f = r["durable"]["flat"];
    auto live = f["end"]["live_sessions"].get<double>();
    add("durable_live_sessions_after_60s", "live sessions flat over 60 s of saturation "
        "(at most the clients' at the end)", live,
        live <= r["durable"]["clients"].get<double>());
    // Peaks of the two halves: RocksDB's memtables fill and empty within
    // each, so two single samples could fall on either side of a flush.
    // A half without samples has no peak to compare: not judged (its 0
    // would pass).
    auto first = f["rss_peak_first_half_mb"].get<double>();
    auto second = f["rss_peak_second_half_mb"].get<double>();
    if (first > 0 && second > 0)
      add("durable_rss_second_half_to_first", "RSS flat over 60 s of saturation, "
          "the window of ids full (peak of the second half within 10 % of the "
          "first's)", second / first, second / first <= 1.1);
  }
  if (r.contains("queue") && r["queue"]["deep"]["nodes"].get<double>() >= 100000
      && r["queue"]["deep"]["queued"].get<double>() >= 10000) {
    auto x = r["queue"]["ratio_deep_to_small"].get<double>();
    add("queue_deep_to_small", "100k nodes + 10k unservable queued cost no more per "
        "command than 1k nodes with none", x, x >= 1);
  }
  if (r.contains("check") && r["check"].is_array() && !r["check"].empty()) {
    double lo = 0, hi = 0, biggest = 0;
    for (auto& c : r["check"]) {
      auto e = c["entries_per_s"].get<double>();
      lo = lo == 0 ? e : std::min(lo, e);
      hi = std::max(hi, e);
      biggest = std::max(biggest, c["sessions"].get<double>());
    }
    if (biggest >= 1000000)
      add("check_entries_per_s", "check >= 100k entries/s at every history size, flat "
          "(slowest at least half the fastest)", lo, lo >= 100000 && lo * 2 >= hi);
  }
  if (r.contains("scale") && r["scale"].is_array())
    for (auto& s : r["scale"])
      if (s["nodes"].get<double>() >= 100000) {
        auto x = s["bytes_per_node"].get<double>();
        add("bytes_per_node_at_100k", "<= 2 KB per node at 100k nodes", x, x <= 2048);
      }
  if (r.contains("recovery") && r["recovery"]["nodes"].get<double>() >= 100000
      && r["recovery"]["queued_sessions"].get<double>() >= 10000) {
    auto x = r["recovery"]["serving_s"].get<double>();
    add("recovery_serving_s", "serving < 1 s after SIGKILL at 100k nodes + 10k queued",
        x, x < 1);
  }
  if (auto x = num("/replicated/ratio_to_durable"))
    add("replicated_to_durable", "replicated (3 members) >= 0.5 x durable, same run", *x,
        *x >= 0.5);
  auto kills = num("/failover/kills");
  auto election = num("/failover/election_timeout_ms");
  if (kills && *kills >= 20 && election) {
    auto& f = r["failover"];
    if (*election >= 400) {
      auto x = f["max_ms"].get<double>();
      add("failover_max_ms_default", "granting again within 1.5 s of every leader kill, "
          "default settings", x, x <= 1500 && f["no_grant_within_30s"].get<double>() == 0);
    } else {
      auto x = f["median_ms"].get<double>();
      add("failover_median_ms_tuned", "failover median <= 300 ms with tuned timeouts", x,
          x <= 300);
    }
    auto etcd_median = num("/etcd/failover/median_ms");
    auto etcd_election = num("/etcd/failover/election_timeout_ms");
    auto etcd_kills = num("/etcd/failover/kills");
    if (etcd_median && etcd_election && *etcd_election == *election && etcd_kills
        && *etcd_kills >= 20) {
      auto x = f["median_ms"].get<double>() / *etcd_median;
      add("failover_to_etcd", "failover median below etcd's, same election timeout "
          "(ratio)", x, x < 1);
    }
  }
  auto rotations = num("/rotation/rotations");
  if (rotations && *rotations >= 10) {
    auto x = r["rotation"]["median_pause_ms"].get<double>();
    add("rotation_median_pause_ms", "scheduled rotation: grants pause < 100 ms (median)",
        x, x < 100);
  }
  if (auto x = num("/etcd/ratio_replicated_to_etcd"))
    add("replicated_to_etcd", "replicated >= 10 x etcd's cycles/s", *x, *x >= 10);
  return out;
}

} // namespace nodepool::cli::bench
