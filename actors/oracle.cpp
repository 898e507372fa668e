#include "actors/oracle.hpp"

#include <optional>

#include <caf/all.hpp>

#include "actors/config.hpp"

namespace nodepool {

oracle_handles start_oracle(caf::actor_system& sys, supervisor_config cfg) {
  oracle_handles h;
  auto pool = cfg.pool;
  auto sim = cfg.sim_time;
  auto admission = cfg.admission;
  auto tests = cfg.tests;
  std::optional<backfill_config> bf;
  if (cfg.cluster_log) {
    bf.emplace();
    bf->storage = cfg.storage;
    bf->self = cfg.cluster_log->status().id;
    bf->members = cfg.member_addresses;
    bf->peer = cfg.peer_gateway;
  }
  h.supervisor = spawn_supervisor(sys, std::move(cfg));
  h.gateway = spawn_gateway(sys, h.supervisor, pool, sim, std::move(admission));
  h.validator = spawn_validator(sys, h.supervisor, h.gateway, pool, sim, tests);
  h.sessions = spawn_session_queue(sys, h.supervisor, h.gateway, pool, sim);
  // From an actor of this process: the gateway takes its routes from no
  // one else (its handle is published).
  caf::scoped_actor{sys}->send(h.gateway, connect_atom::value, h.validator,
                               h.sessions);
  caf::anon_send(h.supervisor, subscribe_atom::value, h.validator);
  caf::anon_send(h.supervisor, subscribe_atom::value, h.sessions);
  // The gateway stamps messages to miners with the term (fencing).
  caf::anon_send(h.supervisor, cluster_atom::value, h.gateway);
  if (bf)
    h.backfill = spawn_backfill(sys, std::move(*bf));
  return h;
}

void stop_oracle(const oracle_handles& h) {
  // Ahead of what waits in their mailboxes (CAF's anon_send_exit queues
  // behind it): an oracle asked to stop under a backlog of miners' and
  // clients' messages stops at once instead of working through it. What
  // the supervisor had not applied was never acknowledged; what it
  // acknowledged is on disk.
  for (auto& a : {h.gateway, h.validator, h.sessions, h.supervisor, h.backfill})
    if (a)
      caf::anon_send<caf::message_priority::high>(
        a, caf::exit_msg{a->address(), caf::exit_reason::user_shutdown});
}

} // namespace nodepool
