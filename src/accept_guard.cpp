// See accept_guard.hpp.
#include "accept_guard.hpp"

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <filesystem>
#include <mutex>

#include "log.hpp"

namespace nodepool {
namespace {

using accept_fn = int (*)(int, sockaddr*, socklen_t*);

accept_fn libc_accept() {
  static std::atomic<accept_fn> f{nullptr};
  auto p = f.load(std::memory_order_acquire);
  if (!p) {
    p = reinterpret_cast<accept_fn>(dlsym(RTLD_NEXT, "accept"));
    f.store(p, std::memory_order_release);
  }
  return p;
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

} // namespace

void shed_when_out_of_descriptors() {
  libc_accept();
  {
    auto& r = the_reserve();
    std::lock_guard<std::mutex> g{r.mu};
    r.take();
  }
  shedding = true;
}

uint64_t connections_shed() { return the_reserve().shed.load(); }

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
  if (c < 0 && nodepool::shedding && (errno == EMFILE || errno == ENFILE))
    return nodepool::shed(fd, errno);
  return c;
}
