// The session queue: where clients submit sessions, and the owner of the
// session actors. The queue order itself lives in PoolState; this actor
// turns acceptance into a durable reply and SessionStarted into an actor.
#include <set>

#include <caf/all.hpp>
#include <nlohmann/json.hpp>

#include "actors/config.hpp"
#include "actors/local.hpp"
#include "actors/oracle.hpp"
#include "actors/session.hpp"
#include "actors/tickets.hpp"
#include "actors/wire.hpp"
#include "bounds.hpp"
#include "log.hpp"

namespace nodepool {

namespace {

struct session_queue_state {
  caf::actor supervisor;
  caf::actor gateway;
  params pool;
  bool sim_time = false;
  command_tickets tickets;  // commands to the supervisor, not answered yet
  std::map<std::string, caf::actor> running;      // session id -> actor
  std::set<caf::actor_addr> linked;               // session actors alive
  std::map<std::string, std::string> node_owner;  // node id -> session id
  uint64_t completed = 0;
  uint64_t failed = 0;
  std::map<std::string, uint64_t> refused;  // client requests, by code
  /// Prompts for sessions not started yet (queued in the pool), by session:
  /// sent on once its actor exists, refused if it ends first.
  struct held_prompt {
    std::string bytes;
    caf::response_promise rp;
    uint64_t seq = 0;
  };
  std::map<std::string, std::vector<held_prompt>> held;
  size_t held_count = 0;
  uint64_t held_seq = 0;
  static inline const char* name = "session_queue";
};

using self_ptr = caf::stateful_actor<session_queue_state>*;

void forward(self_ptr self, const std::string& sid, const event_ref& e) {
  auto i = self->state.running.find(sid);
  if (i != self->state.running.end())
    self->send(i->second, events_atom::value, e);
}

/// Hands a prompt to a session's actor; the answer goes to `rp`.
void pass_prompt(self_ptr self, const caf::actor& session,
                 const std::string& bytes, caf::response_promise rp) {
  self->request(session, caf::infinite, prompt_atom::value, bytes)
    .then([rp](const std::string& answer) mutable { rp.deliver(answer); },
          [rp](caf::error& err) mutable {
            if (err == caf::sec::request_receiver_down)
              rp.deliver(make_refusal(pb::REFUSAL_SESSION_ENDED,
                                      "the session ended before answering"));
            else
              rp.deliver(std::move(err));
          });
}

/// The prompt `bytes` was given up before its task ran: a session opened for
/// it alone is ended (failed), as the pool decides on an EndSession.
void end_if_opened_for(self_ptr self, const std::string& bytes,
                       const std::string& why) {
  pb::PromptRequest r;
  if (!r.ParseFromString(bytes) || !r.ends_session())
    return;
  auto cmd = make_command([&](pb::Command& c) {
    auto* x = c.mutable_end_session();
    x->set_session_id(r.session_id());
    x->set_failed(true);
    x->set_reason("its only prompt " + why);
  });
  self->state.tickets.send(self, self->state.supervisor, cmd);
}

void release_held(self_ptr self, const std::string& sid) {
  auto& st = self->state;
  auto h = st.held.find(sid);
  if (h == st.held.end())
    return;
  auto r = st.running.find(sid);
  for (auto& p : h->second) {
    if (r != st.running.end())
      pass_prompt(self, r->second, p.bytes, p.rp);
    else
      p.rp.deliver(make_refusal(pb::REFUSAL_SESSION_ENDED,
                                "session " + sid + " ended before it started"));
  }
  st.held_count -= h->second.size();
  st.held.erase(h);
}

void on_event(self_ptr self, const event_ref& ep) {
  auto& st = self->state;
  auto& e = *ep;
  switch (e.kind_case()) {
    case pb::Event::kSessionStarted: {
      auto& s = e.session_started();
      for (auto& n : s.nodes())
        st.node_owner[n] = s.session_id();
      if (st.running.count(s.session_id()))
        forward(self, s.session_id(), ep);
      else {
        auto a = spawn_session(self->system(), self, st.supervisor,
                               st.gateway, st.pool, st.sim_time, s);
        // Linked: the session actors go down with the queue (a crashed
        // oracle leaves none behind); see the exit handler for the converse.
        self->link_to(a);
        st.linked.insert(a.address());
        st.running[s.session_id()] = a;
      }
      release_held(self, s.session_id());
      break;
    }
    case pb::Event::kNodeReserved: {
      auto& r = e.node_reserved();
      st.node_owner[r.node_id()] = r.session_id();
      forward(self, r.session_id(), ep);
      break;
    }
    case pb::Event::kNodeReleased: {
      auto& r = e.node_released();
      st.node_owner.erase(r.node_id());
      forward(self, r.session_id(), ep);
      break;
    }
    case pb::Event::kNodeStateChanged: {
      auto& c = e.node_state_changed();
      if (c.from() != pb::RESERVED)
        break;
      auto i = st.node_owner.find(c.node_id());
      if (i == st.node_owner.end())
        break;
      auto sid = i->second;
      st.node_owner.erase(i);
      forward(self, sid, ep);
      break;
    }
    case pb::Event::kSessionEnded: {
      auto& s = e.session_ended();
      forward(self, s.session_id(), ep);
      st.running.erase(s.session_id());
      release_held(self, s.session_id());
      if (s.state() == pb::COMPLETED)
        ++st.completed;
      else
        ++st.failed;
      break;
    }
    default:
      break;
  }
}

} // namespace

caf::actor spawn_session_queue(caf::actor_system& sys, caf::actor supervisor,
                               caf::actor gateway, const params& pool,
                               bool sim_time) {
  return sys.spawn([=](self_ptr self) -> caf::behavior {
    auto& st = self->state;
    st.supervisor = supervisor;
    st.gateway = gateway;
    st.pool = pool;
    st.sim_time = sim_time;
    // A session actor that ends, however it ends, is no reason for the
    // queue to go; any other exit request is.
    self->set_exit_handler([=](caf::exit_msg& em) {
      if (self->state.linked.erase(em.source) == 0 && em.reason)
        self->quit(em.reason);
    });
    // What waits on the supervisor's answers is answered here if it stops.
    self->state.tickets.watch(self, supervisor);
    return {
      // A client's request: (submit_atom, SubmitSession bytes). The answer
      // comes from the supervisor once the session is durable:
      // (accepted_atom), or an error read by read_refusal().
      [=](submit_atom, const std::string& bytes) -> caf::result<void> {
        pb::SubmitSession s;
        if (!s.ParseFromString(bytes)) {
          ++self->state.refused[refusal_name(pb::REFUSAL_MALFORMED)];
          auto rp = self->make_response_promise();
          rp.deliver(make_refusal(pb::REFUSAL_MALFORMED,
                                  "session request does not decode"));
          return rp;
        }
        // What goes to the log, the record and the archive is bounded
        // (as the HTTP API bounds it).
        if (s.model().size() > bounds::model || s.client().size() > bounds::client
            || s.reserve_period_ms() < 0
            || s.reserve_period_ms() > bounds::reserve_period_ms) {
          ++self->state.refused[refusal_name(pb::REFUSAL_BAD_FIELD)];
          auto rp = self->make_response_promise();
          rp.deliver(make_refusal(
            pb::REFUSAL_BAD_FIELD, s.model().size() > bounds::model
                           ? bounds::at_most("model", bounds::model)
                         : s.client().size() > bounds::client
                           ? bounds::at_most("client", bounds::client)
                           : bounds::reserve_period_range("reserve_period_ms")));
          return rp;
        }
        auto cmd = make_command(
          [&](pb::Command& c) { *c.mutable_submit_session() = s; });
        auto rp = self->make_response_promise();
        self->state.tickets.send(
          self, self->state.supervisor, cmd,
          [rp](pb::RefusalCode code, const std::string& detail) mutable {
            if (code == pb::REFUSAL_NONE)
              rp.deliver(accepted_atom::value);
            else
              rp.deliver(make_refusal(code, detail));
          });
        return rp;
      },
      // The supervisor's answer to a command sent with a ticket.
      [=](answer_atom, uint64_t ticket, pb::RefusalCode code,
          const std::string& detail) {
        self->state.tickets.answered(self, self->state.supervisor, ticket, code,
                                     detail);
      },
      [=](events_atom, const event_batch& batch) {
        if (!batch)
          return;
        for (int i = 0; i < batch->events_size(); ++i)
          on_event(self, event_of(batch, i));
      },
      [=](task_atom, const std::string& node, const std::string& sid,
          const std::string& bytes) {
        auto i = self->state.running.find(sid);
        if (i == self->state.running.end()) {
          self->send(self->state.gateway, refused_atom::value, node,
                     pb::REFUSAL_UNKNOWN_SESSION,
                     "no running session '" + sid + "'");
          return;
        }
        self->send(i->second, task_atom::value, node, sid, bytes);
      },
      [=](reply_atom, caf::actor who) { self->send(who, reply_atom::value); },
      // A client's prompt (PromptRequest bytes) for an interactive session:
      // answered by the session's actor with PromptAnswer bytes. A session
      // that is accepted but not started yet holds it until it starts (or
      // until the prompt's timeout). The caller checks that the session
      // exists; an id this oracle never started waits for its timeout.
      [=](prompt_atom, const std::string& bytes) -> caf::result<std::string> {
        auto& st = self->state;
        pb::PromptRequest r;
        if (!r.ParseFromString(bytes))
          return make_refusal(pb::REFUSAL_MALFORMED, "prompt request does not decode");
        auto rp = self->make_response_promise();
        if (auto i = st.running.find(r.session_id()); i != st.running.end()) {
          pass_prompt(self, i->second, bytes, rp);
          return rp;
        }
        if (st.held_count >= 4096) {
          end_if_opened_for(self, bytes, "was refused: too many prompts wait "
                                         "for sessions to start");
          // Through the promise: once made, it holds the request, and a
          // value returned instead would reach nobody.
          rp.deliver(make_refusal(pb::REFUSAL_BUSY, "too many prompts wait for sessions "
                                          "to start"));
          return rp;
        }
        auto seq = ++st.held_seq;
        st.held[r.session_id()].push_back({bytes, rp, seq});
        ++st.held_count;
        auto timeout = r.timeout_ms() > 0 ? r.timeout_ms() : 600000;
        self->delayed_send(self, std::chrono::milliseconds(timeout),
                           timeout_atom::value, r.session_id(), seq);
        return rp;
      },
      [=](timeout_atom, const std::string& sid, uint64_t seq) {
        auto& st = self->state;
        auto h = st.held.find(sid);
        if (h == st.held.end())
          return;
        auto& v = h->second;
        for (auto i = v.begin(); i != v.end(); ++i)
          if (i->seq == seq) {
            i->rp.deliver(make_refusal(
              pb::REFUSAL_TIMEOUT, "session " + sid + " did not start in time"));
            end_if_opened_for(self, i->bytes, "timed out before the session started");
            v.erase(i);
            --st.held_count;
            break;
          }
        if (v.empty())
          st.held.erase(h);
      },
      // The supervisor's term as leader ended: the running sessions were its
      // soft state (the committed pool has them, and the next leader
      // requeues them). Their actors stop; nothing of theirs is acted on.
      [=](reset_atom) {
        auto& st = self->state;
        for (auto& [id, a] : st.running)
          self->send_exit(a, caf::exit_reason::user_shutdown);
        st.running.clear();
        for (auto& [sid, v] : st.held)
          for (auto& p : v)
            p.rp.deliver(make_refusal(pb::REFUSAL_NOT_LEADER,
                                      "this oracle stopped leading"));
        st.held.clear();
        st.held_count = 0;
        st.node_owner.clear();
      },
      [=](stats_atom) -> std::string {
        nlohmann::json j;
        j["running"] = self->state.running.size();
        j["completed"] = self->state.completed;
        j["failed"] = self->state.failed;
        j["prompts_waiting_for_start"] = self->state.held_count;
        j["foreign_answers"] = self->state.tickets.foreign();
        j["refused"] = self->state.refused;
        return j.dump();
      },
    };
  });
}

} // namespace nodepool
