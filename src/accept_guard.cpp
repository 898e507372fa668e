// See accept_guard.hpp.
#include "accept_guard.hpp"

#include <fcntl.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <mutex>
#include <thread>

#include "libc_next.hpp"
#include "log.hpp"

namespace nodepool {
namespace {

using accept_fn = int (*)(int, sockaddr*, socklen_t*);

accept_fn libc_accept() {
  static libc_next<accept_fn> f{"accept"};
  return f.get();
}

thread_local bool shedding = false;

struct reserve {
  std::mutex mu;
  int fd = -1;
  std::atomic<uint64_t> shed{0};

  void take() {
    if (fd < 0)
      fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  }
};

reserve& the_reserve() {
  static reserve r;
  return r;
}

/// accept() failed with `err` (EMFILE or ENFILE) on a shedding thread.
int shed(int listener, int err) {
  auto& r = the_reserve();
  std::lock_guard<std::mutex> g{r.mu};
  if (r.fd < 0) {
    r.take();  // maybe one is free again
    if (r.fd < 0) {
      // No reserve to give up: the connection stays queued. Slow the
      // retries down rather than spin (1 ms each; rare: the reserve is
      // taken back at once after every shed).
      ::usleep(1000);
      errno = err;
      return -1;
    }
  }
  ::close(r.fd);
  r.fd = -1;
  int c = libc_accept()(listener, nullptr, nullptr);
  if (c >= 0) {
    ::close(c);
    auto n = ++r.shed;
    if (n == 1 || n % 100 == 0)
      log("net")->warn("out of file descriptors: closed a connection as soon as it "
                       "was accepted ({} so far; its peer may retry later)", n);
  }
  r.take();
  errno = EAGAIN;
  return -1;
}

/// Connections accepted on a shedding thread, until their peer has spoken
/// or their time is up. A descriptor is known by its inode too: once its
/// owner closed it, the number may name another file.
struct watch {
  struct entry {
    int fd;
    dev_t dev;
    ino_t ino;
    std::chrono::steady_clock::time_point due;
  };
  std::mutex mu;
  std::condition_variable wake;
  std::deque<entry> entries;  // in the order they are due
  std::chrono::milliseconds limit{10000};
  std::atomic<uint64_t> closed{0};
  bool stopping = false;
  std::thread thread;
  /// Made before this (see shed_when_out_of_descriptors), so that spdlog's
  /// registry outlives the thread, which this joins when the program ends.
  std::shared_ptr<spdlog::logger> net_log = log("net");

  void add(int fd) {
    struct stat st {};
    if (::fstat(fd, &st) != 0)
      return;
    std::lock_guard<std::mutex> g{mu};
    if (!thread.joinable())
      thread = std::thread([this] { run(); });
    entries.push_back({fd, st.st_dev, st.st_ino, std::chrono::steady_clock::now() + limit});
    wake.notify_one();
  }

  void run() {
    std::unique_lock<std::mutex> g{mu};
    while (!stopping) {
      if (entries.empty()) {
        wake.wait(g);
        continue;
      }
      auto e = entries.front();
      if (wake.wait_until(g, e.due, [&] { return stopping; }))
        break;
      if (std::chrono::steady_clock::now() < e.due)
        continue;
      entries.pop_front();
      check(e);
    }
  }

  void check(const entry& e) {
    struct stat st {};
    if (::fstat(e.fd, &st) != 0 || st.st_dev != e.dev || st.st_ino != e.ino)
      return;  // closed meanwhile
    struct tcp_info info {};
    socklen_t len = sizeof info;
    if (::getsockopt(e.fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0
        || len < offsetof(struct tcp_info, tcpi_bytes_received) + sizeof info.tcpi_bytes_received
        || info.tcpi_bytes_received > 0)
      return;
    auto n = ++closed;  // counted before its peer can see it
    ::shutdown(e.fd, SHUT_RDWR);
    if (n == 1 || n % 100 == 0)
      net_log->warn("closed a connection whose peer said nothing in {} ms ({} so far)",
                    limit.count(), n);
  }

  ~watch() {
    {
      std::lock_guard<std::mutex> g{mu};
      stopping = true;
    }
    wake.notify_one();
    if (thread.joinable())
      thread.join();
  }
};

watch& the_watch() {
  static watch w;
  return w;
}

} // namespace

void shed_when_out_of_descriptors(std::chrono::milliseconds silence_limit) {
  // spdlog's registry first: statics are destroyed in the reverse order of
  // their making, and the watch's thread may log until it is joined.
  log("net");
  libc_accept();
  {
    auto& r = the_reserve();
    std::lock_guard<std::mutex> g{r.mu};
    r.take();
  }
  {
    auto& w = the_watch();
    std::lock_guard<std::mutex> g{w.mu};
    w.limit = silence_limit;
  }
  shedding = true;
}

uint64_t connections_shed() { return the_reserve().shed.load(); }

uint64_t connections_silent_closed() { return the_watch().closed.load(); }

uint64_t open_descriptors() {
  std::error_code ec;
  uint64_t n = 0;
  for (std::filesystem::directory_iterator i{"/proc/self/fd", ec}, end; !ec && i != end;
       i.increment(ec))
    ++n;
  return n > 0 ? n - 1 : 0;  // the directory's own
}

uint64_t descriptor_limit() {
  rlimit l{};
  if (::getrlimit(RLIMIT_NOFILE, &l) != 0)
    return 0;
  return l.rlim_cur;
}

uint64_t raise_descriptor_limit() {
  rlimit l{};
  if (::getrlimit(RLIMIT_NOFILE, &l) == 0 && l.rlim_cur < l.rlim_max) {
    l.rlim_cur = l.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &l);
  }
  return descriptor_limit();
}

} // namespace nodepool

extern "C" int accept(int fd, sockaddr* __restrict addr, socklen_t* __restrict len) {
  int c = nodepool::libc_accept()(fd, addr, len);
  if (!nodepool::shedding)
    return c;
  if (c < 0 && (errno == EMFILE || errno == ENFILE))
    return nodepool::shed(fd, errno);
  if (c >= 0)
    nodepool::the_watch().add(c);
  return c;
}
