#pragma once

#include <cstdint>
#include <utility>

namespace nodepool {

/// The project's one pseudo-random generator: splitmix64. Its whole state is
/// one integer, so a snapshot or a seed carries it exactly, and the same seed
/// gives the same sequence with any compiler or standard library.
class seeded_rng {
public:
  explicit seeded_rng(uint64_t seed = 0) : state_(seed) {}

  uint64_t next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  uint64_t operator()() { return next(); }
  /// Uniform enough in [0, n) for n far below 2^64.
  uint64_t below(uint64_t n) { return next() % n; }
  /// True with probability p.
  bool chance(double p) { return static_cast<double>(below(1000000)) < p * 1e6; }

  uint64_t state() const { return state_; }

private:
  uint64_t state_;
};

/// The splitmix64 finaliser alone: a well-mixed hash of one integer.
inline uint64_t mix64(uint64_t x) { return seeded_rng{x}.next(); }

/// Fisher-Yates with a caller's generator (std::shuffle's result depends on
/// the standard library; this does not).
template <class Vec, class Rng>
void shuffle(Vec& xs, Rng&& rnd) {
  for (size_t i = xs.size(); i > 1; --i)
    std::swap(xs[i - 1], xs[rnd() % i]);
}

} // namespace nodepool
