#pragma once

#include <memory>
#include <string>

#include "nodepool.pb.h"

namespace nodepool {

/// Where a node stands in a selection order: smaller first. Nodes of equal
/// rank are ordered by their `pool_key`, a random number the pool draws from
/// its own generator when the node enters the pool (and keeps in its
/// record), so ties are broken at random yet every replay of a stored
/// history picks the same nodes.
struct node_rank {
  double primary = 0;
  double secondary = 0;
  bool operator==(const node_rank& o) const {
    return primary == o.primary && secondary == o.secondary;
  }
};

/// How the pool orders its available nodes for reservation. The pool keeps
/// its available nodes in an index sorted by (rank, pool_key, id) and hands a
/// session the first suitable ones, so a reservation visits the nodes it
/// takes (and the unsuitable ones ranked before them), not the whole pool.
/// A rank may only depend on fields that do not change while a node is in
/// the pool (reputation, level and latency change on tests and tasks, which
/// happen outside it); `check_invariants` verifies the index.
class selection_strategy {
public:
  virtual ~selection_strategy() = default;
  virtual node_rank rank(const pb::NodeRecord& n) const = 0;
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
