// The gateway: the one actor miners talk to. It decodes what they send,
// binds each node id to the connection that registered it, refuses anything
// malformed or sent on another node's behalf, and routes the rest.
//
// It is also the pool's failure detector, like a monitor with a timeout: a
// connection that goes down, or that stays silent longer than
// heartbeat_timeout, becomes a NodeDown command. Heartbeats themselves stay
// here as soft state; only a change of the node's mode reaches the log, so
// the log holds decisions, not a record of every second of every node.
#include <algorithm>

#include <caf/all.hpp>
#include <nlohmann/json.hpp>

#include "actors/config.hpp"
#include "actors/local.hpp"
#include "actors/oracle.hpp"
#include "actors/tickets.hpp"
#include "actors/wire.hpp"
#include "bounds.hpp"
#include "identity.hpp"
#include "log.hpp"

namespace nodepool {

namespace {

struct gateway_state {
  caf::actor supervisor;
  caf::actor validator;
  caf::actor sessions;
  params pool;
  std::map<caf::actor_addr, std::string> by_addr;  // connection -> node id
  std::map<std::string, caf::actor> by_node;       // node id -> connection
  std::map<std::string, int64_t> last_seen;        // node id -> time (ms)
  std::map<std::string, int> mode;                 // node id -> last mode sent
  // Registrations sent to the supervisor and not yet answered: node id ->
  // connection. The commit's events (the admission test) may reach us
  // before its answer does.
  std::map<std::string, caf::actor> registering;
  // Signed admission: nonces are given per connection.
  authenticator auth;
  std::map<caf::actor_addr, uint64_t> conn_ids;
  uint64_t next_conn = 1;
  bool sim_time = false;
  std::map<std::string, uint64_t> refused;         // refusal code -> count
  uint64_t received = 0;
  uint64_t undeliverable = 0;
  // The last term this oracle led (never lowered): every message to a
  // miner carries it, so a node can refuse a deposed leader's.
  uint64_t term = 0;
  // Commands sent to the supervisor and not answered yet.
  command_tickets tickets;
  // A flood of refusals from one miner: a few lines per interval, then one
  // summary; every refusal is still counted in `refused`.
  log_limiter refusal_log;
  bool log_tick_pending = false;
  static inline const char* name = "gateway";
};

using self_ptr = caf::stateful_actor<gateway_state>*;

/// Forgets a connection's node and reports it down to the pool. `id` is a
/// copy: callers pass a string owned by the maps this function erases from.
void node_down(self_ptr self, std::string id, const std::string& why) {
  auto& st = self->state;
  auto i = st.by_node.find(id);
  if (i != st.by_node.end()) {
    self->demonitor(i->second);
    if (auto c = st.conn_ids.find(i->second.address()); c != st.conn_ids.end()) {
      st.auth.forget(c->second);
      st.conn_ids.erase(c);
    }
    st.by_addr.erase(i->second.address());
    st.by_node.erase(i);
  }
  st.last_seen.erase(id);
  st.mode.erase(id);
  log("gateway")->info("node {} down: {}", id, why);
  st.tickets.send(self, st.supervisor, make_command([&](pb::Command& c) {
                    c.mutable_node_down()->set_node_id(id);
                    c.mutable_node_down()->set_reason(why);
                  }));
}

/// `bytes` (a serialized OracleMsg) with its term set: Protobuf takes the
/// last value of a field, so appending the field is enough.
std::string with_term(const std::string& bytes, uint64_t term) {
  std::string out = bytes;
  out.push_back(static_cast<char>(0x80));  // field 16, varint: tag 128
  out.push_back(static_cast<char>(0x01));
  do {
    auto b = static_cast<uint8_t>(term & 0x7f);
    term >>= 7;
    out.push_back(static_cast<char>(term ? b | 0x80 : b));
  } while (term);
  return out;
}

/// Refuses a node's message: counted (unless the pool decided it, and
/// counted it: `counted_by_pool`), logged (a flood summarised), and told to
/// the miner.
void refuse(self_ptr self, const caf::actor& to, const std::string& node,
            pb::RefusalCode code, const std::string& detail,
            bool counted_by_pool = false) {
  auto& st = self->state;
  if (!counted_by_pool)
    ++st.refused[refusal_name(code)];
  // Keyed by the miner's connection: one miner may try many node ids.
  auto source = to ? caf::to_string(to.address()) : "node '" + node + "'";
  if (st.refusal_log.allow(source, now_ms(self, st.sim_time)))
    log("gateway")->warn("refused message from node '{}': {} ({})", node,
                         refusal_name(code), detail);
  else if (!st.log_tick_pending) {
    st.log_tick_pending = true;
    self->delayed_send(self,
                       std::chrono::milliseconds(st.refusal_log.interval_ms()),
                       log_atom::value);
  }
  if (to)
    self->send(to, oracle_atom::value, refusal_bytes(code, detail));
}

/// Whether the message at hand comes from an actor of this process. The
/// gateway's handle is published to miners and clients; the messages the
/// oracle's own actors send it (whom it routes to, what it sends a node,
/// the term it stamps, a node's refusal) are refused from anyone else, and
/// counted, and change nothing.
bool from_inside(self_ptr self, const char* what) {
  auto& s = self->current_sender();
  if (s && s->node() == self->node())
    return true;
  refuse(self, caf::actor_cast<caf::actor>(s), "?", pb::REFUSAL_INTERNAL_MESSAGE,
         std::string{"'"} + what + "' is the oracle's own message");
  return false;
}

/// Asks `whom` and answers the request at hand with what it says. The
/// answer comes from the gateway itself: were it delegated, the answering
/// actor's address would reach the client, and with it a way around the
/// gateway's checks.
template <class Answer, class... Ts>
caf::response_promise relay(self_ptr self, const caf::actor& whom, Ts... xs) {
  auto rp = self->make_response_promise();
  self->request(whom, caf::infinite, std::move(xs)...)
    .then([rp](Answer& a) mutable { rp.deliver(std::move(a)); },
          [rp](caf::error& e) mutable { rp.deliver(std::move(e)); });
  return rp;
}

/// Sends a command for a node and reports a refusal back to that node.
void command_for(self_ptr self, caf::actor node, const std::string& node_id,
                 local_command cmd) {
  self->state.tickets.send(self, self->state.supervisor, std::move(cmd),
                           [=](pb::RefusalCode code, const std::string& detail) {
                             if (code != pb::REFUSAL_NONE)
                               refuse(self, node, node_id, code, detail, true);
                           });
}

void on_register(self_ptr self, caf::actor sender, const pb::MinerMsg& m) {
  auto& st = self->state;
  auto id = m.node_id();
  if (m.register_().node_id() != id) {
    refuse(self, sender, id, pb::REFUSAL_NOT_YOUR_NODE,
           "registration names node '" + m.register_().node_id()
             + "' but the message is from '" + id + "'");
    return;
  }
  // The models go to the log and the node's record: bounded.
  if (!bounds::valid_models(m.register_().models())) {
    refuse(self, sender, id, pb::REFUSAL_BAD_MODELS, bounds::models_rule());
    return;
  }
  auto bound = st.by_node.find(id);
  auto pending = st.registering.find(id);
  if ((bound != st.by_node.end() && bound->second != sender)
      || (pending != st.registering.end() && pending->second != sender)) {
    refuse(self, sender, id, pb::REFUSAL_NODE_ID_IN_USE,
           "node '" + id + "' is connected elsewhere");
    return;
  }
  auto prev = st.by_addr.find(sender.address());
  if (prev != st.by_addr.end() && prev->second != id) {
    refuse(self, sender, id, pb::REFUSAL_NOT_YOUR_NODE,
           "this connection is node '" + prev->second + "'");
    return;
  }
  // Proof of the key, against the oracle's allow-list / join tokens.
  auto& conn = st.conn_ids[sender.address()];
  if (conn == 0) {
    conn = st.next_conn++;
    // Watched from its first registration, refused or not: its entry (and
    // its nonce) go when it does.
    self->monitor(sender);
  }
  std::string challenge;
  if (auto no = st.auth.check(conn, m.register_(), challenge)) {
    refuse(self, sender, id, no->code, no->detail);
    return;
  }
  if (!challenge.empty()) {
    pb::OracleMsg n;
    n.mutable_nonce()->set_nonce(challenge);
    self->send(sender, oracle_atom::value, n.SerializeAsString());
    return;
  }
  auto cmd = make_command([&](pb::Command& c) {
    *c.mutable_register_() = m.register_();
    // The proof stays here: the log keeps the key, not the nonce, the
    // signature or a token.
    c.mutable_register_()->clear_nonce();
    c.mutable_register_()->clear_signature();
    c.mutable_register_()->clear_join_token();
  });
  st.registering[id] = sender;
  auto done = [=] {
    auto i = self->state.registering.find(id);
    if (i != self->state.registering.end() && i->second == sender)
      self->state.registering.erase(i);
  };
  st.tickets.send(
    self, st.supervisor, cmd,
    [=](pb::RefusalCode code, const std::string& detail) {
        done();
        if (code != pb::REFUSAL_NONE) {
          refuse(self, sender, id, code, detail, true);
          return;
        }
        auto& st = self->state;
        st.by_addr[sender.address()] = id;
        st.by_node[id] = sender;
        st.last_seen[id] = now_ms(self, st.sim_time);
        st.mode[id] = pb::AVAILABLE;
        pb::OracleMsg reply;
        reply.mutable_registered()->set_node_id(id);
        reply.mutable_registered()->set_heartbeat_interval_ms(
          st.pool.heartbeat_interval_ms);
        self->send(sender, oracle_atom::value, reply.SerializeAsString());
        log("gateway")->info("node {} registered", id);
    });
}

} // namespace

caf::actor spawn_gateway(caf::actor_system& sys, caf::actor supervisor,
                         const params& pool, bool sim_time,
                         admission_policy admission) {
  return sys.spawn([supervisor, pool, sim_time,
                    admission = std::move(admission)](self_ptr self) -> caf::behavior {
    self->state.auth = authenticator{admission};
    self->state.supervisor = supervisor;
    self->state.pool = pool;
    self->state.sim_time = sim_time;
    // Commands wait on the supervisor's answers: if it stops, they are
    // answered here instead.
    self->monitor(supervisor);
    self->set_down_handler([=](caf::down_msg& dm) {
      auto& st = self->state;
      if (st.tickets.on_down(dm, st.supervisor))
        return;
      auto c = st.conn_ids.find(dm.source);
      if (c != st.conn_ids.end()) {
        st.auth.forget(c->second);
        st.conn_ids.erase(c);
      }
      auto i = st.by_addr.find(dm.source);
      if (i == st.by_addr.end())
        return;
      node_down(self, i->second, "connection down");
    });
    // A message of no form the gateway takes (a peer of another version,
    // or a forger's: the text-coded refusals and answers of before the
    // enum among them): refused, counted and logged as the others, where
    // CAF's default would drop it with a line on stderr.
    self->set_default_handler(
      [self](caf::scheduled_actor*, caf::message_view&) -> caf::result<caf::message> {
        refuse(self, caf::actor_cast<caf::actor>(self->current_sender()), "?",
               pb::REFUSAL_UNEXPECTED_MESSAGE,
               "a message of no form the oracle takes");
        return caf::sec::unexpected_message;
      });
    self->send(self, beat_atom::value);
    return {
      // The supervisor's answer to a command sent with a ticket.
      [=](answer_atom, uint64_t ticket, pb::RefusalCode code,
          const std::string& detail) {
        self->state.tickets.answered(self, self->state.supervisor, ticket, code,
                                     detail);
      },
      // Silence check, every heartbeat interval.
      [=](beat_atom) {
        auto& st = self->state;
        auto now = now_ms(self, st.sim_time);
        std::vector<std::string> silent;
        for (auto& [id, t] : st.last_seen)
          if (now - t > st.pool.heartbeat_timeout_ms)
            silent.push_back(id);
        for (auto& id : silent)
          node_down(self, id, "heartbeat missed");
        self->delayed_send(self,
                           std::chrono::milliseconds(st.pool.heartbeat_interval_ms),
                           beat_atom::value);
      },
      [=](connect_atom, caf::actor validator, caf::actor sessions) {
        if (!from_inside(self, "connect"))
          return;
        self->state.validator = std::move(validator);
        self->state.sessions = std::move(sessions);
      },
      [=](miner_atom, const std::string& bytes) {
        auto& st = self->state;
        ++st.received;
        auto sender = caf::actor_cast<caf::actor>(self->current_sender());
        if (!sender) {
          // Nobody to answer, bind a node to or monitor (a connection torn
          // down mid-message can deliver this): counted and dropped.
          refuse(self, sender, "?", pb::REFUSAL_NO_SENDER,
                 "a miner message without a sender");
          return;
        }
        pb::MinerMsg m;
        if (!m.ParseFromString(bytes)
            || m.kind_case() == pb::MinerMsg::KIND_NOT_SET) {
          refuse(self, sender, "?", pb::REFUSAL_MALFORMED,
                 "message does not decode as a MinerMsg");
          return;
        }
        if (m.has_register_()) {
          on_register(self, sender, m);
          return;
        }
        auto bound = st.by_addr.find(sender.address());
        if (bound == st.by_addr.end()) {
          refuse(self, sender, m.node_id(), pb::REFUSAL_NOT_REGISTERED,
                 "register before sending anything else");
          return;
        }
        if (bound->second != m.node_id()) {
          refuse(self, sender, m.node_id(), pb::REFUSAL_NOT_YOUR_NODE,
                 "this connection is node '" + bound->second
                   + "'; it may not act for '" + m.node_id() + "'");
          return;
        }
        st.last_seen[m.node_id()] = now_ms(self, st.sim_time);
        switch (m.kind_case()) {
          case pb::MinerMsg::kHeartbeat: {
            if (m.heartbeat().node_id() != m.node_id()) {
              refuse(self, sender, m.node_id(), pb::REFUSAL_NOT_YOUR_NODE,
                     "heartbeat names another node");
              return;
            }
            // Liveness is noted above; the pool hears only of a new mode.
            if (st.mode[m.node_id()] != m.heartbeat().mode()) {
              st.mode[m.node_id()] = m.heartbeat().mode();
              command_for(self, sender, m.node_id(),
                          make_command([&](pb::Command& c) {
                            *c.mutable_heartbeat() = m.heartbeat();
                          }));
            }
            break;
          }
          case pb::MinerMsg::kTestAnswers:
            self->send(st.validator, answers_atom::value, m.node_id(),
                       m.test_answers().SerializeAsString());
            break;
          default: {
            std::string sid;
            if (m.has_task_ack())
              sid = m.task_ack().session_id();
            else if (m.has_task_precommit())
              sid = m.task_precommit().session_id();
            else
              sid = m.task_commit().session_id();
            self->send(st.sessions, task_atom::value, m.node_id(), sid, bytes);
          }
        }
      },
      [=](send_atom, const std::string& node_id, const std::string& bytes) {
        if (!from_inside(self, "send"))
          return;
        auto& st = self->state;
        auto out = st.term > 0 ? with_term(bytes, st.term) : bytes;
        auto i = st.by_node.find(node_id);
        if (i != st.by_node.end()) {
          self->send(i->second, oracle_atom::value, std::move(out));
          return;
        }
        // Not bound yet: its registration may be committed, not answered.
        auto r = st.registering.find(node_id);
        if (r != st.registering.end()) {
          self->send(r->second, oracle_atom::value, std::move(out));
          return;
        }
        ++st.undeliverable;
      },
      [=](lead_atom, uint64_t term) {
        if (!from_inside(self, "lead"))
          return;
        self->state.term = std::max(self->state.term, term);
      },
      // Refusals decided by the validator or a session: counted here with
      // the gateway's own, then sent to the node.
      [=](refused_atom, const std::string& node_id, pb::RefusalCode code,
          const std::string& detail) {
        if (!from_inside(self, "refused"))
          return;
        auto i = self->state.by_node.find(node_id);
        refuse(self, i == self->state.by_node.end() ? caf::actor{} : i->second,
               node_id, code, detail);
      },
      // A command of the validator's the pool refused: counted there.
      [=](refused_atom, const std::string& node_id, pb::RefusalCode code,
          const std::string& detail, bool) {
        if (!from_inside(self, "refused"))
          return;
        auto i = self->state.by_node.find(node_id);
        refuse(self, i == self->state.by_node.end() ? caf::actor{} : i->second,
               node_id, code, detail, true);
      },
      // Clients share the miners' port: session requests go to the queue,
      // state queries to the supervisor; the answer goes straight back.
      [=](submit_atom, const std::string& bytes) -> caf::result<void> {
        return relay<accepted_atom>(self, self->state.sessions,
                                    submit_atom::value, bytes);
      },
      // A client's prompt for an interactive session (the HTTP API).
      [=](prompt_atom, const std::string& bytes) -> caf::result<std::string> {
        return relay<std::string>(self, self->state.sessions,
                                  prompt_atom::value, bytes);
      },
      [=](archive_atom, const std::string& query) -> caf::result<std::string> {
        return relay<std::string>(self, self->state.supervisor,
                                  archive_atom::value, query);
      },
      [=](state_atom) -> caf::result<std::string> {
        return relay<std::string>(self, self->state.supervisor,
                                  state_atom::value);
      },
      [=](state_atom, const std::string& query) -> caf::result<std::string> {
        return relay<std::string>(self, self->state.supervisor,
                                  state_atom::value, query);
      },
      [=](cluster_atom) -> caf::result<std::string> {
        return relay<std::string>(self, self->state.supervisor,
                                  cluster_atom::value);
      },
      [=](log_atom) {
        auto& st = self->state;
        st.log_tick_pending = false;
        for (auto& x : st.refusal_log.due(now_ms(self, st.sim_time)))
          log("gateway")->warn("refused {} more messages from {} in the last "
                               "{} s without a line each (all are counted in "
                               "nodepool_refusals_total)",
                               x.suppressed, x.key,
                               st.refusal_log.interval_ms() / 1000);
        if (st.refusal_log.holding()) {
          st.log_tick_pending = true;
          self->delayed_send(
            self, std::chrono::milliseconds(st.refusal_log.interval_ms()),
            log_atom::value);
        }
      },
      // When each of the nodes named (one id per line) was last heard from
      // (registration, heartbeat, any message): {node id: ms since the
      // epoch}, for those heard from. Only the leader's gateway has nodes;
      // a follower's answers {}.
      [=](seen_atom, const std::string& ids) -> std::string {
        nlohmann::json j = nlohmann::json::object();
        auto& seen = self->state.last_seen;
        for (size_t at = 0; at < ids.size();) {
          auto end = ids.find('\n', at);
          if (end == std::string::npos)
            end = ids.size();
          if (auto i = seen.find(ids.substr(at, end - at)); i != seen.end())
            j[i->first] = i->second;
          at = end + 1;
        }
        return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
      },
      [=](stats_atom) -> std::string {
        auto& st = self->state;
        nlohmann::json j;
        j["received"] = st.received;
        j["connected"] = st.by_node.size();
        j["connections_known"] = st.conn_ids.size();
        j["undeliverable"] = st.undeliverable;
        j["refused"] = st.refused;
        if (auto n = st.tickets.foreign())
          j["refused"]["answer_not_from_supervisor"] = n;
        return j.dump();
      },
    };
  });
}

} // namespace nodepool
