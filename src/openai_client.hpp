#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace nodepool {

/// Where an `openai` inference backend sends its prompts: any server with an
/// OpenAI-compatible chat completions endpoint (llama.cpp's server, vLLM,
/// Ollama, ...).
struct openai_config {
  std::string base_url;  // "http://127.0.0.1:8080", ".../v1" or "https://..."
  std::string model;     // sent as "model"
  std::string api_key;   // sent as a Bearer token when not empty
  int64_t timeout_ms = 30000;
};

/// A blocking client for POST {base_url}/v1/chat/completions. One prompt in,
/// the first choice's message content out. Deterministic requests
/// (temperature 0), so that healthy redundant nodes can agree.
class openai_client {
public:
  explicit openai_client(openai_config cfg);

  /// The model's answer, or nothing with the reason in `err` (connection
  /// refused, HTTP status, a body that is not a completion).
  /// `max_tokens` > 0 is sent as the answer's limit; the completion tokens
  /// the server reports (usage.completion_tokens) go to `tokens` when given
  /// (0 when it reports none).
  std::optional<std::string> complete(const std::string& prompt,
                                      std::string& err, uint32_t max_tokens = 0,
                                      uint32_t* tokens = nullptr) const;

  const openai_config& config() const { return cfg_; }

private:
  openai_config cfg_;
};

} // namespace nodepool
