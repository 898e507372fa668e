#pragma once

// The libc definition of a function this program defines too (an
// interposer, which calls on to it): looked up once, on first use.

#include <dlfcn.h>

#include <atomic>

namespace nodepool {

template <class Fn>
class libc_next {
public:
  explicit libc_next(const char* name) : name_(name) {}
  Fn get() {
    auto p = f_.load(std::memory_order_acquire);
    if (!p) {
      p = reinterpret_cast<Fn>(dlsym(RTLD_NEXT, name_));
      f_.store(p, std::memory_order_release);
    }
    return p;
  }

private:
  const char* name_;
  std::atomic<Fn> f_{nullptr};
};

} // namespace nodepool
