#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>

namespace httplib {
class Client;
}

namespace nodepool {

/// Ends the requests of the clients that share it, from another thread (a
/// process's signal handling): once cancel_all() is called, a request under
/// way fails at once (its socket is shut down) and a new one fails before
/// it starts. A miner process hands one to all its nodes, so that Ctrl-C
/// does not wait for an inference server's answers.
class request_canceller {
public:
  /// Fails every request from now on; returns once none is under way (at
  /// most about a second: a request between its start and its connection
  /// is shut down as soon as it connects).
  void cancel_all();
  bool cancelled() const { return cancelled_.load(); }

private:
  friend class openai_client;
  bool enter(httplib::Client* c);  // false once cancelled
  void leave(httplib::Client* c);
  std::atomic<bool> cancelled_{false};
  std::mutex m_;
  std::set<httplib::Client*> in_flight_;
};

/// Where an `openai` inference backend sends its prompts: any server with an
/// OpenAI-compatible chat completions endpoint (llama.cpp's server, vLLM,
/// Ollama, ...).
struct openai_config {
  std::string base_url;  // "http://127.0.0.1:8080", ".../v1" or "https://..."
  std::string model;     // sent as "model"
  std::string api_key;   // sent as a Bearer token when not empty
  /// The whole request's limit (connect, send, the answer's last byte); a
  /// server that sends its answer a byte at a time does not stretch it.
  int64_t timeout_ms = 30000;
  /// The answer's body, decompressed, is refused past this size.
  uint64_t max_body_bytes = 4u << 20;
  /// Requests a node sends at once (one worker thread each): a server with
  /// parallel slots (llama.cpp's --parallel, vLLM) answers a test's
  /// questions side by side instead of one after another.
  uint32_t parallel = 1;
  /// Shared by the clients that one signal must stop (may be null).
  std::shared_ptr<request_canceller> canceller;
};

/// A blocking client for POST {base_url}/v1/chat/completions. One prompt in,
/// the first choice's message content out. Deterministic requests
/// (temperature 0), so that healthy redundant nodes can agree.
class openai_client {
public:
  explicit openai_client(openai_config cfg);

  /// The model's answer, or nothing with the reason in `err` (connection
  /// refused, HTTP status, a body that is not a completion, too big or too
  /// slow, cancelled).
  /// `max_tokens` > 0 is sent as the answer's limit; the completion tokens
  /// the server reports (usage.completion_tokens) go to `tokens` when given
  /// (0 when it reports none).
  /// `within_ms` > 0 bounds this request below `timeout_ms` (what is left
  /// of a test's or a task's deadline).
  std::optional<std::string> complete(const std::string& prompt,
                                      std::string& err, uint32_t max_tokens = 0,
                                      uint32_t* tokens = nullptr,
                                      int64_t within_ms = 0) const;

  const openai_config& config() const { return cfg_; }

private:
  openai_config cfg_;
};

} // namespace nodepool
