// See raft_aio.hpp. libraft's io_destroy is a hidden function that calls
// libc's `syscall(__NR_io_destroy, ctx)` through the dynamic linker; a
// definition of `syscall` in the executable comes first in its lookup, so
// it reaches this one, which forwards every other call to libc's. The
// context is destroyed on a thread of its own, in order: libraft has no
// request left on it when it closes it (a segment closes once its writes
// are done), and nothing reads the destroy's result but a log line.
#include "raft/raft_aio.hpp"
#include "libc_next.hpp"

#include <sys/syscall.h>

#include <atomic>
#include <condition_variable>
#include <cstdarg>
#include <deque>
#include <mutex>
#include <thread>

namespace nodepool {
namespace {

using syscall_fn = long (*)(long, ...);

syscall_fn libc_syscall() {
  static libc_next<syscall_fn> f{"syscall"};
  return f.get();
}

struct destroyer {
  std::mutex mu;
  std::condition_variable wake, idle;
  std::deque<long> contexts;
  bool busy = false;
  std::atomic<uint64_t> handed{0};

  destroyer() {
    std::thread{[this] { run(); }}.detach();
  }

  void hand(long ctx) {
    {
      std::lock_guard<std::mutex> g{mu};
      contexts.push_back(ctx);
    }
    ++handed;
    wake.notify_one();
  }

  void drain() {
    std::unique_lock<std::mutex> l{mu};
    idle.wait(l, [this] { return contexts.empty() && !busy; });
  }

  [[noreturn]] void run() {
    for (;;) {
      long ctx = 0;
      {
        std::unique_lock<std::mutex> l{mu};
        busy = false;
        idle.notify_all();
        wake.wait(l, [this] { return !contexts.empty(); });
        ctx = contexts.front();
        contexts.pop_front();
        busy = true;
      }
      libc_syscall()(SYS_io_destroy, ctx);
    }
  }
};

destroyer& the_destroyer() {
  // Never destroyed: its thread may still be destroying at exit.
  static auto* d = new destroyer;
  return *d;
}

} // namespace

uint64_t deferred_aio_destroys() { return the_destroyer().handed.load(); }

void drain_aio_destroys() { the_destroyer().drain(); }

void keep_aio_interposer() { libc_syscall(); }

} // namespace nodepool

extern "C" long syscall(long number, ...) noexcept {
  va_list ap;
  va_start(ap, number);
  long a[6];
  for (auto& x : a)
    x = va_arg(ap, long);
  va_end(ap);
  if (number == SYS_io_destroy) {
    nodepool::the_destroyer().hand(a[0]);
    return 0;
  }
  return nodepool::libc_syscall()(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}
