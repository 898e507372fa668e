#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>

#include "http/router.hpp"

namespace nodepool {

/// The HTTP API's way into the pool: asks an oracle's gateway (state,
/// archive, submissions, prompts) on behalf of a request, with a small
/// actor per request, so an HTTP thread never waits for an actor. Operator
/// commands and snapshots go to the supervisor.
/// How a cluster member reaches another member's gateway ("host:port");
/// may block (it runs on a detached actor).
using connect_fn = std::function<caf::expected<caf::actor>(const std::string&)>;

/// Told the address of a leader's gateway that was reached before and no
/// longer answers on its connection (for drop_connections).
using forget_fn = std::function<void(const std::string&)>;

/// On a cluster member that does not lead, writes (sessions, prompts) go
/// to the leader's gateway through `connect` (unset: refused not_leader);
/// reads are served from this member's committed state. The leader's
/// gateway is kept; unless it answered within the last second, it is asked
/// who leads (within the read timeout, at most 2 s) before a write is given
/// to it again: when it does not answer, `forget` is told its address and
/// `connect` reaches it anew.
std::shared_ptr<http::pool_api> make_pool_api(
  caf::actor_system& sys, caf::actor gateway, caf::actor supervisor,
  connect_fn connect,
  std::chrono::milliseconds read_timeout = std::chrono::seconds(10),
  forget_fn forget = {});

/// Follows the supervisor's events (those it publishes once durable: on a
/// cluster, the leader's) into `feed`, each as event_json() with its
/// batch's "time", while the feed is watched (it subscribes when someone
/// starts watching and unsubscribes at the first heartbeat nobody does);
/// sends the feed's heartbeat every `heartbeat`.
caf::actor spawn_event_relay(
  caf::actor_system& sys, caf::actor supervisor,
  std::shared_ptr<http::event_feed> feed,
  std::chrono::milliseconds heartbeat = std::chrono::seconds(15));

} // namespace nodepool
