// The accept guard (src/accept_guard.hpp) on real loopback sockets: a
// connection whose peer says nothing is shut down once its time is up, one
// whose peer spoke is left alone, and a descriptor closed by its owner and
// reused for another socket before the check is never touched.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "accept_guard.hpp"

namespace nodepool {
namespace {

struct listener {
  int fd = -1;
  uint16_t port = 0;
  listener() {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(fd, 16), 0);
    socklen_t len = sizeof a;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
  }
  ~listener() { ::close(fd); }
  int connect() const {
    int s = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    return s;
  }
};

/// Whether `fd` reads as the end of the stream within `ms`.
bool ended(int fd, int ms) {
  pollfd p{fd, POLLIN, 0};
  char b;
  return ::poll(&p, 1, ms) == 1 && ::read(fd, &b, 1) == 0;
}

TEST(AcceptGuard, ShutsDownWhatSaysNothingAndLeavesTheRestAndReusedDescriptorsAlone) {
  // On a thread of its own: the guard is per thread.
  std::thread t([] {
    shed_when_out_of_descriptors(std::chrono::milliseconds(200));
    listener l;
    auto before = connections_silent_closed();
    // 1. Accepted, then closed by its owner; its number is taken by a
    //    socket pair before the check.
    int c1 = l.connect();
    int a1 = ::accept(l.fd, nullptr, nullptr);
    ASSERT_GE(a1, 0);
    // 2. A peer that speaks.
    int c2 = l.connect();
    int a2 = ::accept(l.fd, nullptr, nullptr);
    ASSERT_GE(a2, 0);
    ASSERT_EQ(::write(c2, "hello", 5), 5);
    // 3. A peer that says nothing (due last: the others are checked first).
    int c3 = l.connect();
    int a3 = ::accept(l.fd, nullptr, nullptr);
    ASSERT_GE(a3, 0);
    ::close(a1);
    // Another TCP socket that has received nothing takes its number (a
    // connection this side opened: not watched).
    int c4 = l.connect();
    if (c4 != a1) {  // another thread took the lowest number meanwhile
      ASSERT_EQ(::dup2(c4, a1), a1);
      ::close(c4);
      c4 = a1;
    }
    // The silent one is shut down: its peer sees the end.
    EXPECT_TRUE(ended(c3, 10000));
    EXPECT_EQ(connections_silent_closed(), before + 1);
    // The one that spoke is untouched, and so is the socket that took the
    // first one's number (shut down, it would read as ended and refuse to
    // send).
    ASSERT_EQ(::write(a2, "x", 1), 1);
    char b = 0;
    ASSERT_EQ(::read(c2, &b, 1), 1);
    EXPECT_EQ(b, 'x');
    EXPECT_FALSE(ended(c4, 0));
    EXPECT_EQ(::send(c4, "y", 1, MSG_NOSIGNAL), 1);
    for (int fd : {c1, c2, c3, c4, a2, a3})
      ::close(fd);
  });
  t.join();
}

TEST(AcceptGuard, OtherThreadsAreNotWatched) {
  // A guarded thread with a short limit accepts one silent connection
  // (the control: it is shut down); this thread accepts another, at the
  // same time, which is left alone.
  listener l;
  auto before = connections_silent_closed();
  int guarded_peer = -1, guarded = -1;
  std::thread t([&] {
    shed_when_out_of_descriptors(std::chrono::milliseconds(100));
    guarded_peer = l.connect();
    guarded = ::accept(l.fd, nullptr, nullptr);
  });
  t.join();
  ASSERT_GE(guarded, 0);
  int c = l.connect();
  int a = ::accept(l.fd, nullptr, nullptr);
  ASSERT_GE(a, 0);
  EXPECT_TRUE(ended(guarded_peer, 10000));
  // Well past the limit, this thread's connection still stands.
  EXPECT_FALSE(ended(c, 500));
  EXPECT_EQ(connections_silent_closed(), before + 1);
  for (int fd : {a, c, guarded, guarded_peer})
    ::close(fd);
}

} // namespace
} // namespace nodepool
