#pragma once

// The pool's events for people watching: the most recent ones (bounded),
// and live streams of Server-Sent Events to whoever follows them. It knows
// HTTP replies and JSON, not actors: whoever hears the pool's events calls
// publish(), from any thread.

#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include <nlohmann/json.hpp>

#include "http/server.hpp"

namespace nodepool::http {

class event_feed {
 public:
  /// Keeps the last `keep` events; at most `max_streams` live streams.
  explicit event_feed(size_t keep = 1000, size_t max_streams = 64)
    : keep_(keep), max_streams_(max_streams) {}

  /// Numbers the events (seq, from 1) and sends each to every stream.
  void publish(std::vector<nlohmann::json> events);

  /// Up to `limit` kept events with seq > after, oldest first.
  std::vector<nlohmann::json> recent(uint64_t after, size_t limit) const;

  /// Starts a stream on `r`: the kept events after `after`, then every new
  /// one. False (nothing sent) when max_streams are open.
  bool follow(const std::shared_ptr<reply>& r, uint64_t after);

  /// A comment line to every stream (so a client that left is noticed and
  /// dropped, and proxies keep the stream open); drops closed streams.
  void heartbeat();

  /// Ends every stream (the API is stopping).
  void close_all();

  size_t streams() const;
  uint64_t published() const;

  /// One event as an SSE frame: "id: SEQ\ndata: JSON\n\n".
  static std::string frame(const nlohmann::json& e);

 private:
  void prune();  // with mu_ held

  size_t keep_;
  size_t max_streams_;
  mutable std::mutex mu_;
  std::deque<nlohmann::json> ring_;
  uint64_t next_seq_ = 1;
  std::vector<std::shared_ptr<reply>> streams_;
};

} // namespace nodepool::http
