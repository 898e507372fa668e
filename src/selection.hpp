#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "nodepool.pb.h"

namespace nodepool {

/// Picks which of the suitable pool nodes a session gets. Strategies must be
/// deterministic given the random source they are handed, so that a replayed
/// command log picks the same nodes.
class selection_strategy {
public:
  using random_source = std::function<uint64_t()>;
  virtual ~selection_strategy() = default;
  /// Returns up to `count` ids out of `candidates`, best first.
  virtual std::vector<std::string>
  pick(std::vector<const pb::NodeRecord*> candidates, size_t count,
       const random_source& rnd) const = 0;
};

/// Highest reputation first (then higher level); equal ones in random order.
std::unique_ptr<selection_strategy> make_reputation_selection();
/// Uniformly random among the suitable nodes.
std::unique_ptr<selection_strategy> make_random_selection();
/// Lowest task latency (EWMA) first; nodes not yet measured after the
/// measured ones; equal ones in random order.
std::unique_ptr<selection_strategy> make_latency_selection();
/// By name ("reputation", "random" or "latency"); nullptr for an unknown
/// name.
std::unique_ptr<selection_strategy> make_selection(const std::string& name);

} // namespace nodepool
