#pragma once

// A fake OpenAI-compatible inference server on loopback, for tests of the
// `openai` backend: a real HTTP server in a thread of the test process.
#include <httplib.h>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

namespace nodepool::testing {

/// An OpenAI-compatible server in a thread; `handler` answers
/// /v1/chat/completions.
class fake_server {
public:
  explicit fake_server(httplib::Server::Handler handler) {
    svr_.Post("/v1/chat/completions", std::move(handler));
    port_ = svr_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { svr_.listen_after_bind(); });
    // stop() only ends a loop that has started.
    while (!svr_.is_running())
      std::this_thread::yield();
  }
  ~fake_server() {
    svr_.stop();
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

private:
  httplib::Server svr_;
  int port_ = 0;
  std::thread thread_;
};

/// The prompt of a chat completion request (its first message).
inline std::string prompt_of(const httplib::Request& req) {
  return nlohmann::json::parse(req.body)["messages"][0]["content"].get<std::string>();
}

inline std::string completion(const std::string& content) {
  nlohmann::json j{{"choices",
                    nlohmann::json::array(
                      {{{"message", {{"role", "assistant"}, {"content", content}}}}})}};
  return j.dump();
}

} // namespace nodepool::testing
