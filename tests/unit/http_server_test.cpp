// The HTTP server on a real socket, for what only the socket shows.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <cerrno>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "http/server.hpp"

using namespace nodepool::http;
using namespace std::chrono_literals;

namespace {

/// Sends `text` to 127.0.0.1:`port` and reads until the server closes.
std::string exchange(uint16_t port, const std::string& text) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string got;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0
      && ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size())) {
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char buf[4096];
    for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;)
      got.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return got;
}

/// A client on a real socket, read with a deadline.
class client {
 public:
  explicit client(uint16_t port) : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ok_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    timeval tv{5, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~client() { close(); }
  bool ok() const { return ok_; }
  bool send(const std::string& text) {
    return ::write(fd_, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  }
  /// Reads until `got` holds `want` (true), or the server closes or 5 s
  /// pass (false).
  bool read_until(const std::string& want) {
    char buf[4096];
    while (got.find(want) == std::string::npos) {
      auto n = ::read(fd_, buf, sizeof buf);
      if (n <= 0)
        return false;
      got.append(buf, static_cast<size_t>(n));
    }
    return true;
  }
  /// Reads until the server closes (true) or 5 s pass (false).
  bool read_to_end() {
    char buf[4096];
    for (;;) {
      auto n = ::read(fd_, buf, sizeof buf);
      if (n == 0)
        return true;
      if (n < 0)
        return errno == ECONNRESET;
      got.append(buf, static_cast<size_t>(n));
    }
  }
  void close() {
    if (fd_ >= 0)
      ::close(fd_);
    fd_ = -1;
  }
  std::string got;

 private:
  int fd_;
  bool ok_ = false;
};

/// Replies the handler keeps, unanswered, for the test to answer.
struct held_replies {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::shared_ptr<reply>> replies;

  void hold(std::shared_ptr<reply> r) {
    std::lock_guard<std::mutex> g{mu};
    replies.push_back(std::move(r));
    cv.notify_all();
  }
  /// Waits (5 s at most) until `n` are held.
  bool wait_for(size_t n) {
    std::unique_lock<std::mutex> g{mu};
    return cv.wait_for(g, 5s, [&] { return replies.size() >= n; });
  }
  std::shared_ptr<reply> at(size_t i) {
    std::lock_guard<std::mutex> g{mu};
    return replies.at(i);
  }
};

template <class F>
bool eventually(F done) {
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (!done() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(5ms);
  return done();
}

const std::string get_held = "GET /held HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
const std::string get_now = "GET /now HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

/// A server whose handler answers /now at once and holds the rest.
struct test_server {
  held_replies held;
  std::shared_ptr<server_counters> counters = std::make_shared<server_counters>();
  std::unique_ptr<server> s;

  explicit test_server(server_config cfg = {}) {
    cfg.port = 0;
    cfg.threads = 1;
    cfg.counters = counters;
    s = std::make_unique<server>(cfg, [this](request q, std::shared_ptr<reply> r) {
      if (q.path == "/now") {
        response a;
        a.body = "now";
        return r->send(std::move(a));
      }
      held.hold(std::move(r));
    });
    EXPECT_EQ(s->start(), "");
  }
  ~test_server() { s->stop(); }
  uint16_t port() const { return s->port(); }
};

} // namespace

// A client that leaves while its request waits for the handler (a
// completion the pool has not answered yet) is seen at once: its
// connection closes, the reply says closed(), the request is counted as
// abandoned, and its place among the connections is free again. Before,
// nothing was read until the answer came, up to the prompt's timeout.
TEST(HttpServer, AClientThatLeavesWhileItsRequestWaitsIsSeenAtOnce) {
  test_server t;
  client c{t.port()};
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c.send(get_held));
  ASSERT_TRUE(t.held.wait_for(1));
  EXPECT_FALSE(t.held.at(0)->closed());
  EXPECT_EQ(t.counters->open.load(), 1);
  c.close();
  EXPECT_TRUE(eventually([&] { return t.held.at(0)->closed(); }));
  EXPECT_EQ(t.counters->abandoned.load(), 1u);
  EXPECT_TRUE(eventually([&] { return t.counters->open.load() == 0; }));
  // The answer that comes after does nothing.
  response late;
  t.held.at(0)->send(late);
}

// Past max_connections, a new connection is told so (503, before it sends
// anything) and closed; it is counted. A place given back (a client that
// left while its request waited) is taken by the next one.
TEST(HttpServer, PastTheMostConnectionsANewOneIsAnswered503) {
  server_config cfg;
  cfg.max_connections = 2;
  test_server t{cfg};
  client a{t.port()}, b{t.port()};
  ASSERT_TRUE(a.send(get_held));
  ASSERT_TRUE(b.send(get_held));
  ASSERT_TRUE(t.held.wait_for(2));
  client over{t.port()};
  ASSERT_TRUE(over.ok());
  EXPECT_TRUE(over.read_to_end());
  EXPECT_EQ(over.got.rfind("HTTP/1.1 503", 0), 0u) << over.got;
  EXPECT_NE(over.got.find("too_many_connections"), std::string::npos) << over.got;
  EXPECT_NE(over.got.find("Retry-After: 1"), std::string::npos) << over.got;
  EXPECT_EQ(t.counters->over_capacity.load(), 1u);
  EXPECT_EQ(t.counters->open.load(), 2);
  a.close();
  ASSERT_TRUE(eventually([&] { return t.counters->open.load() == 1; }));
  client next{t.port()};
  ASSERT_TRUE(next.send(get_now));
  EXPECT_TRUE(next.read_until("now")) << next.got;
  EXPECT_EQ(next.got.rfind("HTTP/1.1 200", 0), 0u) << next.got;
}

// While a request waits, the bytes of the next one (a pipelined request)
// are read and kept: both are answered, in order, on the one connection.
TEST(HttpServer, ARequestSentWhileTheLastOneWaitsIsAnsweredAfterIt) {
  test_server t;
  client c{t.port()};
  ASSERT_TRUE(c.send(get_held));
  ASSERT_TRUE(t.held.wait_for(1));
  ASSERT_TRUE(c.send(get_now));
  std::this_thread::sleep_for(50ms);  // let it arrive first (either order passes)
  response first;
  first.body = "first";
  t.held.at(0)->send(first);
  EXPECT_TRUE(c.read_until("now")) << c.got;
  auto one = c.got.find("first"), two = c.got.find("now");
  EXPECT_NE(one, std::string::npos) << c.got;
  EXPECT_LT(one, two) << c.got;
}

// A connection answered while it was watched for its client leaving still
// closes after the idle timeout when nothing more comes.
TEST(HttpServer, AnAnsweredConnectionStillClosesWhenIdle) {
  server_config cfg;
  cfg.idle_timeout = 1s;
  test_server t{cfg};
  client c{t.port()};
  ASSERT_TRUE(c.send(get_held));
  ASSERT_TRUE(t.held.wait_for(1));
  response r;
  r.body = "done";
  t.held.at(0)->send(r);
  ASSERT_TRUE(c.read_until("done")) << c.got;
  EXPECT_TRUE(c.read_to_end()) << "not closed within 5 s";
  EXPECT_TRUE(eventually([&] { return t.counters->open.load() == 0; }));
}

// An upgrade request the WebSocket handshake refuses (no Sec-WebSocket-Key)
// is answered 400, and what the handler gave for the socket's messages is
// let go: it holds the reply, which holds the connection, which would hold
// it back for good.
TEST(HttpServer, AFailedWebSocketHandshakeLetsGoOfItsHandler) {
  auto token = std::make_shared<int>(1);
  std::weak_ptr<int> watch = token;
  server_config cfg;
  cfg.port = 0;
  cfg.threads = 1;
  server s{cfg, [token](request, std::shared_ptr<reply> rep) {
             rep->accept_websocket([rep, token](std::string) {});
           }};
  ASSERT_EQ(s.start(), "");
  token.reset();  // only the handler (and what it gives away) holds it now
  auto got = exchange(s.port(), "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                "Connection: Upgrade\r\nUpgrade: websocket\r\n"
                                "Sec-WebSocket-Version: 13\r\n\r\n");
  EXPECT_EQ(got.rfind("HTTP/1.1 400", 0), 0u) << got;
  // The handler itself still holds one; the connection's must be gone.
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (watch.use_count() > 1 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(10ms);
  EXPECT_EQ(watch.use_count(), 1);
  s.stop();
}
