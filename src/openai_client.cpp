#include "openai_client.hpp"

#include <httplib.h>
#include <nlohmann/json.hpp>

namespace nodepool {

openai_client::openai_client(openai_config cfg) : cfg_(std::move(cfg)) {
  while (!cfg_.base_url.empty() && cfg_.base_url.back() == '/')
    cfg_.base_url.pop_back();
}

std::optional<std::string> openai_client::complete(const std::string& prompt,
                                                   std::string& err) const {
  httplib::Client cli{cfg_.base_url};
  if (!cli.is_valid()) {
    err = "bad inference server URL '" + cfg_.base_url + "'";
    return std::nullopt;
  }
  auto secs = cfg_.timeout_ms / 1000;
  auto usecs = (cfg_.timeout_ms % 1000) * 1000;
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
  auto res = cli.Post("/v1/chat/completions", req.dump(), "application/json");
  if (!res) {
    err = "inference server " + cfg_.base_url + ": "
          + httplib::to_string(res.error());
    return std::nullopt;
  }
  if (res->status != 200) {
    err = "inference server answered HTTP " + std::to_string(res->status);
    return std::nullopt;
  }
  auto body = nlohmann::json::parse(res->body, nullptr, false);
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
  return choice["message"]["content"].get<std::string>();
}

} // namespace nodepool
