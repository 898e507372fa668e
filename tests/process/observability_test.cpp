// What operators watch, from a real oracle with real miners: /metrics
// checked by Prometheus's own promtool, the dashboard in headless Chromium,
// and the JSON log lines.
#include <algorithm>
#include <gtest/gtest.h>

#include <csignal>
#include <filesystem>
#include <sstream>

#include "process/api_pool.hpp"

namespace nodepool::testing {
namespace {

bool have(const std::string& cmd) {
  return run_shell("command -v " + cmd + " >/dev/null").first == 0;
}

/// The value of one sample line (`name{labels}` exactly) in a scrape.
double sample(const std::string& text, const std::string& series) {
  auto i = text.find("\n" + series + " ");
  if (i == std::string::npos)
    return -1;
  return std::stod(text.substr(i + series.size() + 2));
}

/// Three healthy nodes and one that answers wrong (kept out after its test).
struct watched_pool : api_pool {
  explicit watched_pool(const std::string& d, std::vector<std::string> extra = {})
    : api_pool(d, 4, std::move(extra), {"--behaviour", "healthy:3,wrong:1"}) {}
  json settled() {
    return wait_status(
      [](const json& j) {
        auto& s = j["nodes"]["by_state"];
        return s["ephemeral"] == 3
               && s["quarantined"].get<int>() + s["retired"].get<int>() == 1;
      },
      30s);
  }
};

TEST(observability, metrics_pass_promtool_and_match_the_status) {
  if (!have("promtool"))
    GTEST_SKIP() << "promtool is not installed (tools/test installs Debian's "
                    "prometheus package)";
  auto dir = temp_dir("obs-metrics");
  cleanup tidy{dir};
  watched_pool p{dir};
  ASSERT_GT(p.port, 0) << p.oracle->errors();
  auto st = p.settled();
  ASSERT_EQ(st["nodes"]["by_state"]["ephemeral"], 3) << st.dump();
  auto c = p.client();
  auto made = c.Post("/api/v1/sessions",
                     R"({"model":"llama-3-8b","max_nodes":1,"redundancy":1})",
                     "application/json");
  ASSERT_TRUE(made && made->status == 201) << (made ? made->body : "no answer");
  st = p.wait_status([](const json& j) { return j["sessions"]["active"] == 1; },
                     30s);
  ASSERT_EQ(st["sessions"]["active"], 1) << st.dump();
  // The scrape agrees with /api/v1/status read just before and just after
  // it (a live pool: nodes are retested now and then; retried until the
  // two reads agree).
  std::string body, content_type;
  int code = 0;
  json before, after;
  for (int k = 0; k < 50; ++k) {
    before = json::parse(c.Get("/api/v1/status")->body);
    auto m = c.Get("/metrics");
    ASSERT_TRUE(m);
    code = m->status;
    body = m->body;
    content_type = m->get_header_value("Content-Type");
    after = json::parse(c.Get("/api/v1/status")->body);
    if (before["nodes"] == after["nodes"] && before["sessions"] == after["sessions"]
        && before["tests"] == after["tests"])
      break;
  }
  ASSERT_EQ(code, 200) << body;
  EXPECT_EQ(content_type, "text/plain; version=0.0.4; charset=utf-8");
  auto text = "\n" + body;
  for (auto state : {"registered", "testing", "ephemeral", "reserved",
                     "revalidating", "quarantined", "retired", "lost"})
    EXPECT_EQ(sample(text, std::string{"nodepool_nodes{state=\""} + state + "\"}"),
              after["nodes"]["by_state"][state].get<double>())
      << state;
  EXPECT_EQ(sample(text, "nodepool_sessions{state=\"active\"}"),
            after["sessions"]["active"].get<double>());
  EXPECT_EQ(sample(text, "nodepool_sessions_accepted_total"),
            after["sessions"]["accepted"].get<double>());
  EXPECT_EQ(sample(text, "nodepool_tests_total{result=\"failed\"}"),
            after["tests"]["failed"].get<double>());
  EXPECT_EQ(sample(text, "nodepool_reservations_total"), 1);
  EXPECT_EQ(sample(text, "nodepool_grant_latency_seconds_count"), 1);
  EXPECT_GE(sample(text, "nodepool_group_commit_commands_count"), 1);
  EXPECT_GE(sample(text, "nodepool_commit_latency_seconds_count"), 1);
  // No snapshot is due yet in so short a run: the family is there, empty.
  EXPECT_EQ(sample(text, "nodepool_snapshot_copy_seconds_count"), 0);
  EXPECT_GE(sample(text, "nodepool_http_requests_total{route=\"/api/v1/status\","
                         "status=\"200\"}"),
            2);
  EXPECT_EQ(sample(text, "nodepool_http_requests_total{route=\"/api/v1/sessions\","
                         "status=\"201\"}"),
            1);
  EXPECT_EQ(sample(text, "nodepool_miners_connected"), 4);
  // An idle pool: nothing waits at its supervisor (-1 would be no sample).
  EXPECT_GE(sample(text, "nodepool_supervisor_mailbox_messages"), 0);
  EXPECT_LT(sample(text, "nodepool_supervisor_mailbox_messages"), 100);
  // No snapshot was due, so none was put off (-1 would be no sample).
  EXPECT_EQ(sample(text, "nodepool_snapshots_deferred_total"), 0);
  {
    std::ofstream f{dir + "/metrics.txt"};
    f << body;
  }
  auto [rc, out] = run_shell("promtool check metrics < " + dir + "/metrics.txt");
  EXPECT_EQ(rc, 0) << out;
  // The same check refuses a broken exposition, so passing it means something.
  {
    std::ofstream f{dir + "/broken.txt"};
    f << "# TYPE x counter\nx{a=\"1\" 2\n";
  }
  auto [brc, bout] = run_shell("promtool check metrics < " + dir + "/broken.txt");
  EXPECT_NE(brc, 0) << bout;
}

TEST(observability, the_dashboard_in_headless_chromium_shows_what_the_api_says) {
  std::string npm = NODEPOOL_NPM_DIR;
  if (!std::filesystem::exists("/usr/bin/chromium"))
    GTEST_SKIP() << "/usr/bin/chromium is not installed (tools/test installs it)";
  if (!std::filesystem::exists(npm + "/node_modules/playwright-core/package.json"))
    GTEST_SKIP() << "playwright-core is not in " << npm << " (tools/test installs it)";
  auto dir = temp_dir("obs-dashboard");
  cleanup tidy{dir};
  // Keep-alive comments every second: the page then takes 3 s of silence
  // for a connection gone half-open.
  watched_pool p{dir, {"--http-events-keepalive-ms", "1000"}};
  ASSERT_GT(p.port, 0) << p.oracle->errors();
  auto st = p.settled();
  ASSERT_EQ(st["nodes"]["by_state"]["ephemeral"], 3) << st.dump();
  // Where the README's screenshot comes from: the build folder keeps it.
  auto shot = std::filesystem::path(npm).parent_path() / "dashboard.png";
  auto [rc, out] = run_shell("NODEPOOL_NPM_DIR=" + npm + " timeout 180 node "
                             + std::string{NODEPOOL_SOURCE_DIR}
                             + "/tests/dashboard/dashboard.mjs http://127.0.0.1:"
                             + std::to_string(p.port) + " " + admin_key + " "
                             + shot.string() + " "
                             + std::to_string(p.oracle->pid()));
  ASSERT_EQ(rc, 0) << out;
  auto j = last_json_line(out);
  ASSERT_TRUE(j.is_object()) << out;
  EXPECT_TRUE(j["wrong_key_refused"].get<bool>());
  EXPECT_TRUE(j["stored_key"].get<bool>());
  EXPECT_FALSE(j["login_after_reload"].get<bool>());
  EXPECT_GT(j["events_received"].get<int>(), 0) << out;
  EXPECT_EQ(j["miner_rows"], 4) << out;
  // Latency: "—" while not measured (0 ms was shown as the fastest).
  ASSERT_EQ(j["latency"].size(), 4u) << out;
  for (auto& [ms, cell] : j["latency"].get<std::vector<std::pair<double, std::string>>>())
    if (ms == 0) {
      EXPECT_EQ(cell, "—") << out;
    } else {
      EXPECT_NE(cell.find(" ms"), std::string::npos) << out;
    }
  // Seen: every node in the pool is connected and heard from; the table
  // says how long ago.
  ASSERT_EQ(j["seen"].size(), 4u) << out;
  int heard = 0;
  for (auto& [ms, cell] : j["seen"].get<std::vector<std::pair<int64_t, std::string>>>())
    if (ms == 0) {
      EXPECT_EQ(cell, "—") << out;
    } else {
      ++heard;
      EXPECT_NE(cell.find("s ago"), std::string::npos) << out;
    }
  EXPECT_GE(heard, 3) << out;
  EXPECT_EQ(j["matched"]["nodes-total"], 4) << out;
  // The node kept out is listed with why (its reason as /api/v1/miners
  // gives it: a failed test, or its deadline passed on a loaded machine).
  ASSERT_FALSE(j.value("kept_reason", std::string{}).empty()) << out;
  EXPECT_NE(j.value("kept_out", std::string{}).find(j["kept_reason"].get<std::string>()),
            std::string::npos)
    << out;
  EXPECT_EQ(j["members"], "single oracle") << out;
  EXPECT_TRUE(j["external_requests"].empty()) << out;
  EXPECT_TRUE(std::filesystem::file_size(shot) > 10000) << shot;
  // Told to wait 5 s, the page did (its miners are polled every 2 s).
  EXPECT_GE(j.value("retry_after_waited_ms", 0), 4900) << out;
  // Two rows a page (?rows=2): the first two miners in id order, then the
  // next two; the oracle was asked for two at a time, never for all.
  auto ids = j["all_ids"].get<std::vector<std::string>>();
  ASSERT_EQ(ids.size(), 4u) << out;
  EXPECT_TRUE(std::is_sorted(ids.begin(), ids.end())) << out;
  EXPECT_EQ(j["page1"], nlohmann::json(std::vector<std::string>{ids[0], ids[1]})) << out;
  EXPECT_EQ(j["page1_count"], "1–2 of 4") << out;
  EXPECT_EQ(j["page2"], nlohmann::json(std::vector<std::string>{ids[2], ids[3]})) << out;
  EXPECT_EQ(j["page2_count"], "3–4 of 4") << out;
  ASSERT_FALSE(j["miner_queries"].empty()) << out;
  for (auto& q : j["miner_queries"])
    EXPECT_EQ(q.get<std::string>().rfind("?limit=2", 0), 0u) << out;
  // The oracle stopped (SIGSTOP): its stream went silent without closing,
  // and the page said so and dropped it; followed again once it went on.
  EXPECT_EQ(j.value("silent_state", std::string{}), "reconnecting") << out;
  EXPECT_NE(j.value("silent_error", std::string{}).find("silent for 3 s"),
            std::string::npos)
    << out;
  EXPECT_TRUE(j.value("live_again", false)) << out;
}

TEST(observability, json_logs_are_one_object_per_line_with_one_per_event) {
  auto dir = temp_dir("obs-logs");
  cleanup tidy{dir};
  auto args = oracle_args(dir + "/db");
  args.insert(args.begin(), {"--log-level", "info", "--log-format", "json"});
  child oracle{args, dir + "/oracle.out"};
  ASSERT_TRUE(oracle.wait_for_output("listening on", 20s)) << oracle.errors();
  auto target = "127.0.0.1:" + listening_port(oracle.output());
  child miner{{"miner", "--oracle", target, "--nodes", "2", "--id-prefix", "lg"},
              dir + "/miner.out"};
  ASSERT_TRUE(miner.wait_for_output("connected", 20s)) << miner.errors();
  // Both admitted: each one's move to ephemeral is logged.
  auto admitted = [&] {
    auto e = oracle.errors();
    return e.find("\"node_id\":\"lg-0\",\"reason\":\"passed test\",\"to\":\"ephemeral\"")
             != std::string::npos
           && e.find("\"node_id\":\"lg-1\",\"reason\":\"passed test\",\"to\":\"ephemeral\"")
                != std::string::npos;
  };
  for (int i = 0; i < 200 && !admitted(); ++i)
    std::this_thread::sleep_for(50ms);
  miner.signal(SIGTERM);
  miner.wait_exit(20s);
  oracle.signal(SIGTERM);
  EXPECT_EQ(oracle.wait_exit(20s), 0);
  auto err = oracle.errors();
  EXPECT_TRUE(admitted()) << err;
  std::istringstream in{err};
  std::string line;
  int lines = 0, events = 0;
  std::set<std::string> types;
  while (std::getline(in, line)) {
    if (line.empty())
      continue;
    ++lines;
    auto j = json::parse(line, nullptr, false);
    ASSERT_TRUE(j.is_object()) << "not a JSON line: " << line;
    EXPECT_TRUE(j.contains("ts") && j.contains("level") && j.contains("component"))
      << line;
    if (j["component"] == "events") {
      ++events;
      types.insert(j["event"].get<std::string>());
    } else {
      EXPECT_TRUE(j.contains("msg")) << line;
    }
  }
  EXPECT_GE(events, 6) << err;
  for (auto t : {"node_state_changed", "test_requested", "test_finished"})
    EXPECT_EQ(types.count(t), 1u) << t << " not logged: " << err;
  EXPECT_GT(lines, events) << "other records are JSON lines too";
}

} // namespace
} // namespace nodepool::testing
