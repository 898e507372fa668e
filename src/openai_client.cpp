#include "openai_client.hpp"

#include <chrono>
#include <thread>

#include <httplib.h>
#include <nlohmann/json.hpp>

namespace nodepool {

namespace {

/// Splits "http://host:port/prefix" into the origin and the path to POST
/// to. OpenAI clients usually take a base URL ending in /v1; both
/// "http://h:8000" and "http://h:8000/v1" reach /v1/chat/completions.
std::pair<std::string, std::string> split_url(std::string url) {
  while (!url.empty() && url.back() == '/')
    url.pop_back();
  auto scheme = url.find("://");
  auto slash = url.find('/', scheme == std::string::npos ? 0 : scheme + 3);
  std::string origin = url, path;
  if (slash != std::string::npos) {
    origin = url.substr(0, slash);
    path = url.substr(slash);
  }
  auto ends_v1 = path.size() >= 3 && path.compare(path.size() - 3, 3, "/v1") == 0;
  return {origin, path + (ends_v1 ? "" : "/v1") + "/chat/completions"};
}

} // namespace

void request_canceller::cancel_all() {
  cancelled_ = true;
  // A client shut down before it has connected has nothing to shut: it is
  // shut down again until it has left.
  for (int i = 0; i < 100; ++i) {
    {
      std::lock_guard<std::mutex> g{m_};
      if (in_flight_.empty())
        return;
      for (auto* c : in_flight_)
        c->stop();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

bool request_canceller::enter(httplib::Client* c) {
  std::lock_guard<std::mutex> g{m_};
  if (cancelled_)
    return false;
  in_flight_.insert(c);
  return true;
}

void request_canceller::leave(httplib::Client* c) {
  std::lock_guard<std::mutex> g{m_};
  in_flight_.erase(c);
}

openai_client::openai_client(openai_config cfg) : cfg_(std::move(cfg)) {}

std::optional<std::string> openai_client::complete(const std::string& prompt,
                                                   std::string& err,
                                                   uint32_t max_tokens,
                                                   uint32_t* tokens,
                                                   int64_t within_ms) const {
  if (tokens)
    *tokens = 0;
  auto [origin, endpoint] = split_url(cfg_.base_url);
  httplib::Client cli{origin};
  if (!cli.is_valid()) {
    err = "bad inference server URL '" + cfg_.base_url + "'";
    return std::nullopt;
  }
  auto limit_ms = within_ms > 0 ? std::min(within_ms, cfg_.timeout_ms)
                                : cfg_.timeout_ms;
  auto secs = limit_ms / 1000;
  auto usecs = (limit_ms % 1000) * 1000;
  cli.set_connection_timeout(secs, usecs);
  cli.set_read_timeout(secs, usecs);
  cli.set_write_timeout(secs, usecs);
  if (!cfg_.api_key.empty())
    cli.set_bearer_token_auth(cfg_.api_key);
  nlohmann::json req{
    {"model", cfg_.model},
    {"temperature", 0},
    {"messages", nlohmann::json::array({{{"role", "user"}, {"content", prompt}}})},
  };
  if (max_tokens > 0)
    req["max_tokens"] = max_tokens;
  auto* canceller = cfg_.canceller.get();
  if (canceller && !canceller->enter(&cli)) {
    err = "inference server " + cfg_.base_url + ": cancelled (stopping)";
    return std::nullopt;
  }
  struct leave_on_return {
    request_canceller* c;
    httplib::Client* cli;
    ~leave_on_return() {
      if (c)
        c->leave(cli);
    }
  } leave{canceller, &cli};
  // The body is read here, not by the library: its size and the time since
  // the start are checked at every piece (the library's timeouts are per
  // read, and it would keep a body of any size).
  auto deadline = std::chrono::steady_clock::now()
                  + std::chrono::milliseconds(limit_ms);
  std::string answer;
  bool too_big = false, too_slow = false;
  httplib::Request rq;
  rq.method = "POST";
  rq.path = endpoint;
  rq.body = req.dump();
  rq.set_header("Content-Type", "application/json");
  rq.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    if (answer.size() + n > cfg_.max_body_bytes) {
      too_big = true;
      return false;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      too_slow = true;
      return false;
    }
    answer.append(data, n);
    return true;
  };
  auto res = cli.send(rq);
  if (canceller && canceller->cancelled()) {
    err = "inference server " + cfg_.base_url + ": cancelled (stopping)";
    return std::nullopt;
  }
  if (too_big) {
    err = "inference server " + cfg_.base_url + ": answer over "
          + std::to_string(cfg_.max_body_bytes) + " bytes";
    return std::nullopt;
  }
  // The library's read timeout ends a server that has not begun to answer
  // by the deadline: the same reason, said the same way.
  if (!res && std::chrono::steady_clock::now() >= deadline)
    too_slow = true;
  if (too_slow) {
    err = "inference server " + cfg_.base_url + ": no whole answer within "
          + std::to_string(limit_ms) + " ms";
    return std::nullopt;
  }
  if (!res) {
    err = "inference server " + cfg_.base_url + ": "
          + httplib::to_string(res.error());
    return std::nullopt;
  }
  if (res->status != 200) {
    err = "inference server answered HTTP " + std::to_string(res->status);
    return std::nullopt;
  }
  auto body = nlohmann::json::parse(answer, nullptr, false);
  if (body.is_discarded() || !body.is_object() || !body.contains("choices")
      || !body["choices"].is_array() || body["choices"].empty()) {
    err = "inference server answered something that is not a completion";
    return std::nullopt;
  }
  auto& choice = body["choices"][0];
  if (!choice.contains("message") || !choice["message"].is_object()
      || !choice["message"].contains("content")
      || !choice["message"]["content"].is_string()) {
    err = "completion has no message content";
    return std::nullopt;
  }
  if (tokens && body.contains("usage") && body["usage"].is_object()) {
    auto& u = body["usage"];
    if (u.contains("completion_tokens") && u["completion_tokens"].is_number_unsigned())
      *tokens = static_cast<uint32_t>(
        std::min<uint64_t>(u["completion_tokens"].get<uint64_t>(), UINT32_MAX));
  }
  return choice["message"]["content"].get<std::string>();
}

} // namespace nodepool
