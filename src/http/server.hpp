#pragma once

// The oracle's HTTP/1.1 server (Boost.Beast), with or without TLS. It runs
// on threads of its own; a handler answers whenever it likes, from any
// thread (an actor's reply, say), so no request ever blocks the pool.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace nodepool::http {

struct request {
  std::string method;  // "GET", "POST", ...
  std::string target;  // as sent: "/api/v1/sessions?since=0"
  std::string path;    // the target before '?'
  std::map<std::string, std::string> query;    // decoded
  std::map<std::string, std::string> headers;  // names in lower case
  std::string body;
  std::string remote;  // the peer's address
  bool websocket = false;  // an upgrade request (see reply::accept_websocket)

  const std::string& header(const std::string& lower_name) const;
};

/// Splits a request's target into its path and decoded query; false if
/// its encoding is malformed.
bool split_target(const std::string& target, request& r);

struct response {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
};

/// How a handler answers one request: once with send(), or as a stream
/// (begin_stream, then chunks, then end), or, for an upgrade request, as a
/// WebSocket (accept_websocket, then messages, then end). Every call may
/// come from any thread; calls after the client went away do nothing.
class reply {
 public:
  virtual ~reply() = default;
  virtual void send(response r) = 0;
  virtual void begin_stream(response head) = 0;  // body ignored; chunked
  virtual void chunk(std::string data) = 0;
  virtual void end() = 0;
  /// WebSocket: `on_message` gets every text message the client sends;
  /// answers go out with chunk() (one message each); end() closes.
  virtual void accept_websocket(
    std::function<void(std::string)> on_message) = 0;
  /// True once the connection is gone (the client left, a write failed, a
  /// stream fell too far behind, or the server stopped): whoever keeps a
  /// reply to stream to may drop it.
  virtual bool closed() const { return false; }
};

using handler = std::function<void(request, std::shared_ptr<reply>)>;

/// What the server counts, shared with whoever shows it (GET /metrics).
struct server_counters {
  /// Connections it failed to accept (out of file descriptors, say).
  std::atomic<uint64_t> accept_errors{0};
  /// Connections turned away because max_connections were open (answered
  /// 503 over plain HTTP; closed at once under TLS).
  std::atomic<uint64_t> over_capacity{0};
  /// Requests whose client left before the answer began.
  std::atomic<uint64_t> abandoned{0};
  /// Connections open now (WebSockets included).
  std::atomic<int64_t> open{0};
};

struct server_config {
  std::string host = "127.0.0.1";
  uint16_t port = 5010;  // 0: any free port (see server::port)
  int threads = 2;
  size_t max_body = 1 << 20;  // larger bodies get 413
  std::chrono::seconds idle_timeout{60};  // a silent keep-alive connection
  /// Connections open at once, at most (each holds a descriptor and at most
  /// one request): past it a new one is answered 503 and closed.
  size_t max_connections = 4096;
  std::string tls_certificate;  // PEM chain; empty: plain HTTP
  std::string tls_key;          // PEM private key
  /// Null: its own.
  std::shared_ptr<server_counters> counters;
};

class server {
 public:
  server(server_config cfg, handler h);
  ~server();
  server(const server&) = delete;
  server& operator=(const server&) = delete;
  /// Binds and starts the threads. Returns what went wrong, or "".
  std::string start();
  /// The port it listens on (after start).
  uint16_t port() const;
  bool tls() const;
  /// Stops accepting and closes every connection; waits for the threads.
  void stop();
  struct impl;

 private:
  std::shared_ptr<impl> impl_;
};

/// Parses one whole request from `bytes` as the server does (Beast's parser,
/// the same limits). Returns what is wrong, or "" with `out` filled.
std::string parse_request(const std::string& bytes, request& out,
                          size_t max_body = 1 << 20);

/// Percent-decodes a URL component ('+' stays '+'). False if malformed.
bool url_decode(const std::string& in, std::string& out);

} // namespace nodepool::http
