#pragma once

// The miner side: node actors that a miner process embeds in its own CAF
// actor system. Link the `nodepool_miner` library, spawn one node actor per
// model instance, hand it the oracle's gateway (local, or remote from
// connect_oracle) and it registers, heartbeats, answers cognitive tests and
// serves tasks. See actors/examples/embedded_miner.cpp.
#include <chrono>
#include <memory>
#include <mutex>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>
#include <caf/expected.hpp>

#include "bank.hpp"
#include "identity.hpp"
#include "openai_client.hpp"
#include "sim_backend.hpp"

namespace nodepool {

/// What nodes of the `copycat` behaviour copy: the last answers another
/// node of the same process gave to its test (a miner replaying answers
/// seen elsewhere).
struct answer_tape {
  std::mutex m;
  std::vector<std::string> answers;
};

struct node_config {
  std::string id;
  std::vector<std::string> models{"llama-3-8b"};
  behaviour kind = behaviour::healthy;  // of the `sim` inference backend
  uint64_t seed = 1;
  /// Phase / test deadline the `slow` behaviour overshoots.
  int64_t deadline_hint_ms = 5000;
  /// The node's key (nodepool keygen): it registers with the public half
  /// and signs the oracle's nonce. Without one, only an open oracle admits
  /// the node.
  std::shared_ptr<const node_key> key;
  /// Presented with the key when it is not on the oracle's allow-list.
  std::string join_token;
  /// A registration with no answer (lost on the way, or its answer was) is
  /// sent again after this long.
  int64_t register_timeout_ms = 5000;
  /// When set, the node answers tests and serves tasks with this
  /// OpenAI-compatible inference server (the `openai` backend) instead of
  /// the `sim` backend.
  std::optional<openai_config> openai;
  /// The `sim` backend's "model": the bank's answers (the builtin bank's
  /// when null).
  std::shared_ptr<const sim_knowledge> knowledge;
  /// Shared by the nodes of one process: healthy nodes write their test
  /// answers there, `copycat` ones replay them.
  std::shared_ptr<answer_tape> tape;
};

/// Spawns a node actor and registers it with `gateway`. The actor:
///   (oracle_atom, OracleMsg bytes)  what the oracle sends it
///   (connect_atom, actor)           switch to another gateway and register
///   (stats_atom) -> JSON text       what it did and what it was refused
/// It exits when the oracle refuses it for good (retired, key mismatch).
caf::actor spawn_node(caf::actor_system& sys, node_config cfg,
                      caf::actor gateway);

/// Resolves the gateway of the oracle at host:port over CAF's middleman
/// (over TLS when the actor system was configured with use_tls()). A host
/// that does not accept a TCP connection within half a second (down, or cut
/// off) is an error at once, before the middleman is asked.
caf::expected<caf::actor> connect_oracle(
  caf::actor_system& sys, const std::string& host, uint16_t port,
  std::chrono::milliseconds timeout = std::chrono::seconds(10));

/// The gateway of the oracle that leads, among `oracles` ("host:port" each:
/// a single oracle, or the members of a cluster). Each reachable oracle is
/// asked who leads (cluster_atom) and the answer is followed; a single
/// oracle leads itself. An error when none is reachable or none knows a
/// ready leader yet (during an election): callers retry.
caf::expected<caf::actor> connect_leader(
  caf::actor_system& sys, const std::vector<std::string>& oracles,
  std::chrono::milliseconds timeout = std::chrono::seconds(2));

/// Whether `gateway` belongs to the ready leader of its cluster (or to a
/// single oracle); false when it cannot say within `timeout`.
bool is_leader(caf::actor_system& sys, const caf::actor& gateway,
               std::chrono::milliseconds timeout = std::chrono::seconds(2));

/// Shuts down (never closes: the descriptors stay CAF's) every TCP
/// connection of this process to host:port, so that the next one starts
/// with a new handshake; for a peer that takes requests on a connection and
/// no longer answers on it. Returns how many.
size_t drop_connections(const std::string& host, uint16_t port);

/// Splits "h1:p1,h2:p2" into its parts.
std::vector<std::string> split_oracles(const std::string& list);

} // namespace nodepool
