// See sim_parts.hpp.
#include "actors/sim_parts.hpp"

#include <optional>

#include <caf/all.hpp>

#include "actors/config.hpp"
#include "random.hpp"

namespace nodepool::sim_parts {

namespace {

using ms = std::chrono::milliseconds;

struct link_state {
  caf::actor node;
  caf::actor gateway;
  std::string id;
  seeded_rng rng;
  std::shared_ptr<net_faults> net;
  std::shared_ptr<fault_log> log;
  std::optional<std::pair<bool, std::string>> held;  // (to gateway, bytes)
  static inline const char* name = "sim_link";
};

using link_ptr = caf::stateful_actor<link_state>*;

void link_send(link_ptr self, bool to_gateway, const std::string& bytes,
               int64_t delay_ms = 0) {
  auto& st = self->state;
  if (delay_ms > 0) {
    if (to_gateway)
      self->delayed_send(st.gateway, ms(delay_ms), miner_atom::value, bytes);
    else
      self->delayed_send(st.node, ms(delay_ms), oracle_atom::value, bytes);
  } else if (to_gateway) {
    self->send(st.gateway, miner_atom::value, bytes);
  } else {
    self->send(st.node, oracle_atom::value, bytes);
  }
}

void link_release(link_ptr self) {
  auto& st = self->state;
  if (st.held) {
    auto [g, b] = std::move(*st.held);
    st.held.reset();
    link_send(self, g, b);
  }
}

/// One message over the link, with whatever fault the dice decide.
void link_carry(link_ptr self, bool to_gateway, const std::string& bytes) {
  auto& st = self->state;
  auto& n = *st.net;
  auto dir = std::string(to_gateway ? "node->oracle " : "oracle->node ") + st.id;
  if (n.on) {
    if (st.rng.chance(n.drop)) {
      st.log->note("msg_drop", dir);
      return;
    }
    if (st.rng.chance(n.delay)) {
      auto d = 1 + static_cast<int64_t>(st.rng.below(400));
      st.log->note("msg_delay", dir + " by " + std::to_string(d) + "ms");
      link_send(self, to_gateway, bytes, d);
      return;
    }
    if (!st.held && st.rng.chance(n.reorder)) {
      st.log->note("msg_reorder", dir);
      st.held = std::make_pair(to_gateway, bytes);
      self->delayed_send(self, ms(60), flush_atom::value);
      return;
    }
    if (st.rng.chance(n.duplicate)) {
      st.log->note("msg_duplicate", dir);
      link_send(self, to_gateway, bytes);
    }
  }
  link_send(self, to_gateway, bytes);
  link_release(self);  // a held message comes after the one that passed it
}

caf::behavior link_actor(link_ptr self, caf::actor node, caf::actor gateway,
                         std::string id, uint64_t seed,
                         std::shared_ptr<net_faults> net,
                         std::shared_ptr<fault_log> log) {
  auto& st = self->state;
  st.node = node;
  st.gateway = gateway;
  st.id = std::move(id);
  st.rng = seeded_rng{seed};
  st.net = std::move(net);
  st.log = std::move(log);
  // The connection goes when either end goes.
  self->monitor(node);
  self->monitor(gateway);
  self->set_down_handler([=](caf::down_msg&) { self->quit(); });
  return {
    [=](miner_atom, const std::string& bytes) { link_carry(self, true, bytes); },
    [=](oracle_atom, const std::string& bytes) {
      link_carry(self, false, bytes);
    },
    [=](flush_atom) { link_release(self); },
  };
}

} // namespace

run_draw draw_run(seeded_rng& rng, uint64_t seed, net_faults& net,
                  bool snapshot_every) {
  run_draw d;
  auto& p = d.pool;
  p.test_deadline_ms = 500;
  p.task_phase_timeout_ms = 200;
  p.heartbeat_interval_ms = 100;
  p.heartbeat_timeout_ms = 500;
  p.quarantine_backoff_ms = 500;
  p.quarantine_backoff_max_ms = 2000;
  p.tick_interval_ms = 50;
  p.idle_threshold_ms = 5000;
  p.queue_timeout_ms = 8000;
  // A miner killed or cut off for 3 s is forgotten: runs forget nodes and
  // see them come back as new ones, on every member alike.
  p.lost_retention_ms = 3000;
  // A node retired 4 s ago is forgotten too: a miner still there registers
  // it again, as a new node, and is tested again.
  p.retired_retention_ms = 4000;
  p.tasks_before_release = 1 + static_cast<uint32_t>(rng.below(3));
  p.max_strikes = 3 + static_cast<uint32_t>(rng.below(3));
  if (snapshot_every)
    p.snapshot_every = 5 + rng.below(60);
  static const char* strategies[] = {"reputation", "random", "latency"};
  p.selection = strategies[rng.below(3)];
  p.seed = seed;
  auto scale = rng.below(3);  // some seeds have a calm network
  net.drop = 0.004 * scale;
  net.delay = 0.02 * scale;
  net.duplicate = 0.01 * scale;
  net.reorder = 0.01 * scale;
  d.sessions_wanted = 5 + rng.below(12);
  return d;
}

pb::SubmitSession next_session(seeded_rng& rng, uint64_t n) {
  pb::SubmitSession s;
  s.set_session_id("s" + std::to_string(n));
  s.set_model("llama-3-8b");
  auto red = 1 + static_cast<uint32_t>(rng.below(3));
  s.set_min_nodes(1);
  s.set_max_nodes(red);
  s.set_redundancy(red);
  s.set_max_tasks(1 + static_cast<uint32_t>(rng.below(4)));
  s.set_client("sim");
  return s;
}

node_config miner_node(const std::string& id, behaviour kind, uint64_t seed,
                       uint32_t lives, const params& pool) {
  node_config nc;
  nc.id = id;
  nc.kind = kind;
  nc.seed = mix64(seed * 1000 + lives * 37 + std::hash<std::string>{}(id) % 997);
  nc.deadline_hint_ms = pool.test_deadline_ms;
  nc.register_timeout_ms = 1000;
  return nc;
}

answer classify_refusal(caf::actor_system& sys, const caf::error& e) {
  auto code = refusal_code(read_refusal(sys, e).first);
  if (code == pb::REFUSAL_DUPLICATE_SESSION)
    return answer::accepted;
  if (code == pb::REFUSAL_UNAVAILABLE || code == pb::REFUSAL_NOT_LEADER
      || e == caf::sec::request_timeout || e == caf::sec::request_receiver_down)
    return answer::unknown;
  return answer::refused;
}

caf::actor spawn_link(caf::actor_system& sys, caf::actor node,
                      caf::actor gateway, std::string id, uint64_t seed,
                      std::shared_ptr<net_faults> net,
                      std::shared_ptr<fault_log> log) {
  return sys.spawn(link_actor, std::move(node), std::move(gateway),
                   std::move(id), seed, std::move(net), std::move(log));
}

} // namespace nodepool::sim_parts
