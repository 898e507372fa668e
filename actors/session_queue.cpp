// The session queue: where clients submit sessions, and the owner of the
// session actors. The queue order itself lives in PoolState; this actor
// turns acceptance into a durable reply and SessionStarted into an actor.
#include <set>

#include <caf/all.hpp>
#include <nlohmann/json.hpp>

#include "actors/config.hpp"
#include "actors/oracle.hpp"
#include "actors/session.hpp"
#include "actors/wire.hpp"
#include "log.hpp"

namespace nodepool {

namespace {

struct session_queue_state {
  caf::actor supervisor;
  caf::actor gateway;
  params pool;
  bool sim_time = false;
  std::map<std::string, caf::actor> running;      // session id -> actor
  std::set<caf::actor_addr> linked;               // session actors alive
  std::map<std::string, std::string> node_owner;  // node id -> session id
  uint64_t completed = 0;
  uint64_t failed = 0;
  static inline const char* name = "session_queue";
};

using self_ptr = caf::stateful_actor<session_queue_state>*;

void forward(self_ptr self, const std::string& sid, const pb::Event& e) {
  auto i = self->state.running.find(sid);
  if (i != self->state.running.end())
    self->send(i->second, events_atom::value, e.SerializeAsString());
}

void on_event(self_ptr self, const pb::Event& e) {
  auto& st = self->state;
  switch (e.kind_case()) {
    case pb::Event::kSessionStarted: {
      auto& s = e.session_started();
      for (auto& n : s.nodes())
        st.node_owner[n] = s.session_id();
      if (st.running.count(s.session_id()))
        forward(self, s.session_id(), e);
      else {
        auto a = spawn_session(self->system(), self, st.supervisor,
                               st.gateway, st.pool, st.sim_time, s);
        // Linked: the session actors go down with the queue (a crashed
        // oracle leaves none behind); see the exit handler for the converse.
        self->link_to(a);
        st.linked.insert(a.address());
        st.running[s.session_id()] = a;
      }
      break;
    }
    case pb::Event::kNodeReserved: {
      auto& r = e.node_reserved();
      st.node_owner[r.node_id()] = r.session_id();
      forward(self, r.session_id(), e);
      break;
    }
    case pb::Event::kNodeReleased: {
      auto& r = e.node_released();
      st.node_owner.erase(r.node_id());
      forward(self, r.session_id(), e);
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
      forward(self, sid, e);
      break;
    }
    case pb::Event::kSessionEnded: {
      auto& s = e.session_ended();
      forward(self, s.session_id(), e);
      st.running.erase(s.session_id());
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
    return {
      // A client's request: (submit_atom, SubmitSession bytes). The answer
      // comes from the supervisor once the session is durable:
      // (accepted_atom), or an error read by read_refusal().
      [=](submit_atom, const std::string& bytes) -> caf::result<void> {
        pb::SubmitSession s;
        if (!s.ParseFromString(bytes)) {
          auto rp = self->make_response_promise();
          rp.deliver(make_refusal("malformed",
                                  "session request does not decode"));
          return rp;
        }
        auto cmd = command_bytes(
          [&](pb::Command& c) { *c.mutable_submit_session() = s; });
        auto rp = self->make_response_promise();
        self->request(self->state.supervisor, caf::infinite, cmd_atom::value, cmd)
          .then([rp](accepted_atom) mutable { rp.deliver(accepted_atom::value); },
                [rp](caf::error& err) mutable { rp.deliver(std::move(err)); });
        return rp;
      },
      [=](events_atom, const std::string& bytes) {
        pb::EventBatch batch;
        if (!batch.ParseFromString(bytes))
          return;
        for (auto& e : batch.events())
          on_event(self, e);
      },
      [=](task_atom, const std::string& node, const std::string& sid,
          const std::string& bytes) {
        auto i = self->state.running.find(sid);
        if (i == self->state.running.end()) {
          self->send(self->state.gateway, refused_atom::value, node,
                     std::string{"unknown_session"},
                     "no running session '" + sid + "'");
          return;
        }
        self->send(i->second, task_atom::value, node, sid, bytes);
      },
      [=](reply_atom, caf::actor who) { self->send(who, reply_atom::value); },
      // The supervisor's term as leader ended: the running sessions were its
      // soft state (the committed pool has them, and the next leader
      // requeues them). Their actors stop; nothing of theirs is acted on.
      [=](reset_atom) {
        auto& st = self->state;
        for (auto& [id, a] : st.running)
          self->send_exit(a, caf::exit_reason::user_shutdown);
        st.running.clear();
        st.node_owner.clear();
      },
      [=](stats_atom) -> std::string {
        nlohmann::json j;
        j["running"] = self->state.running.size();
        j["completed"] = self->state.completed;
        j["failed"] = self->state.failed;
        return j.dump();
      },
    };
  });
}

} // namespace nodepool
