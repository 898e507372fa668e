// The HTTP server on a real socket, for what only the socket shows.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>

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

} // namespace

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
