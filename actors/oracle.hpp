#pragma once

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>

#include <chrono>
#include <functional>
#include <map>

#include "actors/supervisor.hpp"

namespace nodepool {

/// The actors of one oracle host.
///
///   miners --(miner_atom)--> gateway --cmd--> supervisor --events--+
///                              |  ^                                |
///              answers / task  v  | send                           v
///                       validator, session_queue --> session actors
struct oracle_handles {
  caf::actor supervisor;
  caf::actor gateway;     // what miners talk to (published on a port)
  caf::actor validator;
  caf::actor sessions;    // the session queue: clients submit here
  caf::actor backfill;    // cluster members: copies archive gaps from peers
};

/// The archive backfill of a cluster member (actors/backfill.cpp).
struct backfill_config {
  std::shared_ptr<store> storage;
  uint64_t self = 0;                        // this member's id
  std::map<uint64_t, std::string> members;  // id -> client address
  /// Simulation: a peer's gateway by id (empty when it is down). Unset, a
  /// peer is reached at its address over the network.
  std::function<caf::actor(uint64_t)> peer;
  std::chrono::milliseconds interval{1000};
};
caf::actor spawn_backfill(caf::actor_system& sys, backfill_config cfg);

/// Spawns and wires the oracle actors over `cfg.storage`.
oracle_handles start_oracle(caf::actor_system& sys, supervisor_config cfg);

/// Stops all of them, ahead of the messages waiting in their mailboxes.
void stop_oracle(const oracle_handles& h);

// The pieces, for tests that wire them by hand.
caf::actor spawn_gateway(caf::actor_system& sys, caf::actor supervisor,
                         const params& pool, bool sim_time,
                         admission_policy admission = {});
caf::actor spawn_validator(caf::actor_system& sys, caf::actor supervisor,
                           caf::actor gateway, const params& pool,
                           bool sim_time, test_config tests = {});
caf::actor spawn_session_queue(caf::actor_system& sys, caf::actor supervisor,
                               caf::actor gateway, const params& pool,
                               bool sim_time);

} // namespace nodepool
