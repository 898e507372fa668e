#pragma once

// Pieces shared by the seeded simulations (sim.cpp: one oracle;
// sim_cluster.cpp: a replicated pool): the fault log, the miners' network
// links that drop, delay, duplicate and reorder, and what a miner and a
// client are in a run.
#include <cstdint>
#include <map>
#include <memory>
#include <sstream>
#include <string>

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>

#include "actors/node.hpp"
#include "params.hpp"
#include "random.hpp"

namespace nodepool::sim_parts {

/// Injected faults: counts by kind and, when tracing, one line each.
struct fault_log {
  bool tracing = false;
  int64_t now = 0;  // simulated ms since start
  std::map<std::string, uint64_t> counts;
  std::ostringstream lines;
  void note(const std::string& kind, const std::string& what = {}) {
    ++counts[kind];
    if (tracing)
      lines << "  t=" << now << "ms " << kind << (what.empty() ? "" : " ")
            << what << "\n";
  }
};

/// Probabilities of the network faults of every link, drawn per seed.
struct net_faults {
  bool on = true;
  double drop = 0, delay = 0, duplicate = 0, reorder = 0;
};

/// A miner's connection to a gateway: an actor between the node and the
/// gateway that carries (miner_atom / oracle_atom, bytes) both ways with the
/// faults of `net`; it quits when either end goes.
caf::actor spawn_link(caf::actor_system& sys, caf::actor node,
                      caf::actor gateway, std::string id, uint64_t seed,
                      std::shared_ptr<net_faults> net,
                      std::shared_ptr<fault_log> log);

/// The pool parameters of a run, and its network's fault rates and session
/// count, drawn from `rng` in a fixed order. `snapshot_every` is drawn for
/// one oracle only (a cluster's snapshots are raft's).
struct run_draw {
  params pool;
  uint64_t sessions_wanted = 0;
};
run_draw draw_run(seeded_rng& rng, uint64_t seed, net_faults& net,
                  bool snapshot_every);

/// The next session a simulated client submits: id "s<n>".
pb::SubmitSession next_session(seeded_rng& rng, uint64_t n);

/// A simulated miner's node, for its `lives`-th start in run `seed`.
node_config miner_node(const std::string& id, behaviour kind, uint64_t seed,
                       uint32_t lives, const params& pool);

/// What a client knows of a session it submitted.
enum class answer { pending, accepted, unknown, refused };

/// What a client makes of a refused or failed submission: accepted by an
/// earlier try (duplicate_session), unknown (the oracle is gone, not the
/// leader, or silent: try again), or refused.
answer classify_refusal(caf::actor_system& sys, const caf::error& e);

/// One simulated miner node and its current connection.
struct miner_slot {
  std::string id;
  behaviour kind;
  caf::actor node;
  caf::actor link;
  bool alive = false;
  bool silent = false;
  uint32_t lives = 0;
};


} // namespace nodepool::sim_parts
