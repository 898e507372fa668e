#pragma once

#include <chrono>
#include <memory>

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>

#include "http/router.hpp"

namespace nodepool {

/// The HTTP API's way into the pool: asks an oracle's gateway (state,
/// archive, submissions, prompts) on behalf of a request, with a small
/// actor per request, so an HTTP thread never waits for an actor. Operator
/// commands and snapshots go to the supervisor.
std::shared_ptr<http::pool_api> make_pool_api(
  caf::actor_system& sys, caf::actor gateway, caf::actor supervisor,
  std::chrono::milliseconds read_timeout = std::chrono::seconds(10));

} // namespace nodepool
