// `nodepool demo` end to end, and its resumption after a SIGKILL.
#include <nlohmann/json.hpp>

#include "proc.hpp"

using namespace std::chrono_literals;

namespace nodepool::testing {
namespace {

nlohmann::json last_line_json(const std::string& out) {
  auto end = out.find_last_not_of('\n');
  auto start = out.rfind('\n', end);
  start = start == std::string::npos ? 0 : start + 1;
  return nlohmann::json::parse(out.substr(start, end - start + 1), nullptr,
                               false);
}

TEST(demo, default_run_reports_every_session_and_no_violation) {
  auto dir = temp_dir("demo");
  cleanup tidy{dir};
  auto [rc, out] = run({"demo", "--json", "--data-dir", dir + "/db"},
                       dir + "/demo.out", 120s);
  ASSERT_EQ(rc, 0) << out << read_file(dir + "/demo.out.err");
  auto j = last_line_json(out);
  ASSERT_FALSE(j.is_discarded()) << out;
  EXPECT_EQ(j["sessions"]["accepted"].get<int>(), 200);
  EXPECT_EQ(j["sessions"]["lost"].get<int>(), 0);
  EXPECT_EQ(j["sessions"]["completed"].get<int>()
              + j["sessions"]["failed"].get<int>(),
            200);
  EXPECT_TRUE(j["violations"].empty()) << j["violations"].dump();
  EXPECT_EQ(j["nodes"]["total"].get<int>(), 40);
  EXPECT_GT(j["elapsed_s"].get<double>(), 0.0);
}

/// The port of the HTTP API a demo printed on stderr (0: not yet).
int demo_api_port(child& demo) {
  auto err = demo.errors();
  const std::string tag = "HTTP API on http://127.0.0.1:";
  auto at = err.find(tag);
  return at == std::string::npos ? 0 : std::stoi(err.substr(at + tag.size()));
}

/// GET /api/v1/status of a demo's API (null when it does not answer).
nlohmann::json api_status(int port) {
  auto [rc, out] = run_shell("bash -c 'exec 3<>/dev/tcp/127.0.0.1/" + std::to_string(port)
                             + " && printf \"GET /api/v1/status HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n"
                               "Connection: close\\r\\n\\r\\n\" >&3 && cat <&3'");
  auto body = out.find("\r\n\r\n");
  if (rc != 0 || body == std::string::npos)
    return {};
  return nlohmann::json::parse(out.substr(body + 4), nullptr, false);
}

TEST(demo, resumes_after_sigkill_and_counts_all_sessions) {
  auto dir = temp_dir("demo-kill");
  cleanup tidy{dir};
  std::vector<std::string> args{"demo",           "--json",     "--sessions",
                                "1500",           "--nodes",    "30",
                                "--data-dir",     dir + "/db",  "--seed", "7",
                                "--http",         "127.0.0.1:0"};
  {
    // Killed once it has accepted some sessions (asked through its API),
    // however slow the machine.
    child first{args, dir + "/first.out"};
    ASSERT_TRUE(first.wait_for_errors("HTTP API on", 30s)) << first.errors();
    int port = demo_api_port(first);
    ASSERT_GT(port, 0) << first.errors();
    int accepted = 0;
    for (int k = 0; k < 600 && accepted < 100 && first.running(); ++k) {
      auto st = api_status(port);
      if (st.is_object())
        accepted = st["sessions"]["accepted"].get<int>();
      if (accepted < 100)
        std::this_thread::sleep_for(50ms);
    }
    ASSERT_GE(accepted, 100) << first.errors();
    ASSERT_TRUE(first.running()) << "demo ended before it could be killed";
    first.signal(SIGKILL);
    ASSERT_EQ(first.wait_exit(10s), -SIGKILL);
  }
  auto [rc, out] = run(args, dir + "/second.out", 180s);
  ASSERT_EQ(rc, 0) << out << read_file(dir + "/second.out.err");
  auto j = last_line_json(out);
  ASSERT_FALSE(j.is_discarded()) << out;
  EXPECT_GT(j["sessions"]["resumed"].get<int>(), 0);
  EXPECT_EQ(j["sessions"]["accepted"].get<int>(), 1500);
  EXPECT_EQ(j["sessions"]["lost"].get<int>(), 0);
  EXPECT_EQ(j["sessions"]["completed"].get<int>()
              + j["sessions"]["failed"].get<int>(),
            1500);
  EXPECT_TRUE(j["violations"].empty()) << j["violations"].dump();
}

/// `demo --serve`: after its sessions the pool and its HTTP API stay up (it
/// printed the URL and a curl line to paste) until Ctrl-C, then the demo
/// reports as usual.
TEST(demo, serve_keeps_the_api_up_until_ctrl_c) {
  auto dir = temp_dir("demo-serve");
  cleanup tidy{dir};
  child demo{{"demo", "--json", "--nodes", "6", "--sessions", "10", "--data-dir",
              dir + "/db", "--http", "127.0.0.1:0", "--serve"},
             dir + "/demo.out"};
  ASSERT_TRUE(demo.wait_for_errors("ended; serving", 120s)) << demo.errors();
  auto err = demo.errors();
  EXPECT_NE(err.find("curl -s http://127.0.0.1:"), std::string::npos) << err;
  auto port = demo_api_port(demo);
  ASSERT_GT(port, 0) << err;
  // The chat line it printed works as pasted.
  auto at = err.find("curl -s http://127.0.0.1:", err.find("/v1/chat/completions") - 60);
  ASSERT_NE(at, std::string::npos) << err;
  auto line = err.substr(at, err.find('\n', at) - at);
  ASSERT_NE(line.find("/v1/chat/completions"), std::string::npos) << line;
  auto [crc, answer] = run_shell(line);
  ASSERT_EQ(crc, 0) << line << "\n" << answer;
  auto chat = nlohmann::json::parse(answer, nullptr, false);
  EXPECT_NE(chat["choices"][0]["message"]["content"].get<std::string>().find("Hello pool"),
            std::string::npos) << answer;
  // Still serving: the status the API gives counts the demo's sessions (and
  // the chat's own session).
  auto body = api_status(port);
  ASSERT_TRUE(body.is_object());
  EXPECT_EQ(body["sessions"]["completed"].get<int>() + body["sessions"]["failed"].get<int>(),
            11) << body.dump();
  EXPECT_TRUE(demo.running());
  demo.signal(SIGINT);
  EXPECT_EQ(demo.wait_exit(60s), 0) << demo.errors();
  auto j = last_line_json(demo.output());
  ASSERT_TRUE(j.is_object()) << demo.output();
  EXPECT_EQ(j["sessions"]["lost"].get<int>(), 0);
  EXPECT_TRUE(j["violations"].empty());
}

} // namespace
} // namespace nodepool::testing
