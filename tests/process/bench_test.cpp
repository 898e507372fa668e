// `nodepool bench --quick --json` as a smoke test: it runs every section
// (including a Redis server it starts itself and processes it kills) and
// reports every figure. Their size is for BENCHMARKS.md, not for a test.
#include <functional>
#include <nlohmann/json.hpp>

#include "proc.hpp"

using namespace std::chrono_literals;

namespace nodepool::testing {
namespace {

/// Every number under `j` (objects and arrays walked), with its path.
void each_number(const nlohmann::json& j, const std::string& path,
                 const std::function<void(const std::string&, double)>& f) {
  if (j.is_number()) {
    f(path, j.get<double>());
  } else if (j.is_object()) {
    for (auto& [k, v] : j.items())
      each_number(v, path + "." + k, f);
  } else if (j.is_array()) {
    for (size_t i = 0; i < j.size(); ++i)
      each_number(j[i], path + "[" + std::to_string(i) + "]", f);
  }
}

double at(const nlohmann::json& j, const nlohmann::json::json_pointer& p) {
  if (!j.contains(p) || !j.at(p).is_number())
    return -1;
  return j.at(p).get<double>();
}

TEST(bench, quick_run_reports_every_figure_positive) {
  auto dir = temp_dir("bench");
  cleanup tidy{dir};
  auto [rc, out] = run({"bench", "--quick", "--json"}, dir + "/bench.out", 300s);
  ASSERT_EQ(rc, 0) << out << read_file(dir + "/bench.out.err");
  auto j = last_json_line(out);
  ASSERT_FALSE(j.is_discarded()) << out;
  ASSERT_TRUE(j.is_object()) << out;

  for (auto key : {"state_machine", "durable", "remote", "redis", "scale",
                   "recovery"})
    ASSERT_TRUE(j.contains(key)) << "no " << key << " in " << j.dump();

  using ptr = nlohmann::json::json_pointer;
  for (auto p : {"/state_machine/commands_per_s", "/durable/cycles_per_s",
                 "/durable/entries_per_commit",
                 "/durable/grant_at_50/p50_ms", "/durable/grant_at_50/p99_ms",
                 "/durable/grant_at_50/p999_ms", "/durable/grant_at_90/p50_ms",
                 "/durable/grant_at_90/p99_ms", "/durable/grant_at_90/p999_ms",
                 "/remote/cycles_per_s", "/redis/always/cycles_per_s",
                 "/redis/everysec/cycles_per_s",
                 "/redis/ratio_nodepool_to_always",
                 "/redis/ratio_nodepool_to_everysec",
                 "/recovery/serving_s"})
    EXPECT_GT(at(j, ptr{p}), 0) << p << " missing or not positive in "
                                << j.dump();

  ASSERT_TRUE(j["scale"].is_array());
  ASSERT_GE(j["scale"].size(), 2u) << j["scale"].dump();
  for (auto& s : j["scale"]) {
    EXPECT_GT(at(s, ptr{"/nodes"}), 0) << s.dump();
    EXPECT_GT(at(s, ptr{"/cycles_per_s"}), 0) << s.dump();
    EXPECT_GT(at(s, ptr{"/bytes_per_node"}), 0) << s.dump();
  }
  ASSERT_TRUE(j["durable"]["curve"].is_array());
  EXPECT_GE(j["durable"]["curve"].size(), 2u);

  // Nothing in the six sections is zero or negative: counts, rates,
  // latencies, sizes and ratios alike.
  size_t numbers = 0;
  for (auto key : {"state_machine", "durable", "remote", "redis", "scale",
                   "recovery"})
    each_number(j[key], key, [&](const std::string& path, double x) {
      ++numbers;
      EXPECT_GT(x, 0) << path;
    });
  EXPECT_GT(numbers, 30u);
}

TEST(bench, unknown_section_is_refused_with_a_clear_error) {
  auto dir = temp_dir("bench-bad");
  cleanup tidy{dir};
  auto [rc, out] = run({"bench", "--only", "nosuch"}, dir + "/bench.out", 30s);
  EXPECT_NE(rc, 0);
  EXPECT_NE(read_file(dir + "/bench.out.err").find("nosuch"), std::string::npos)
    << read_file(dir + "/bench.out.err");
}

} // namespace
} // namespace nodepool::testing
