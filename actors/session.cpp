#include "actors/session.hpp"

#include <deque>
#include <optional>
#include <limits>

#include <caf/all.hpp>

#include "actors/config.hpp"
#include "actors/local.hpp"
#include "actors/wire.hpp"
#include "log.hpp"
#include "task_round.hpp"

namespace nodepool {

namespace {

/// A client's prompt waiting for its answer (interactive sessions).
struct pending_prompt {
  pb::PromptRequest req;
  caf::response_promise rp;
  uint64_t seq = 0;
  int64_t deadline = 0;   // answer by then (now_ms), or "timeout"
  bool answered = false;  // timed out: the task still runs, nobody waits
};

/// At most this many prompts wait per session; more are refused (busy).
constexpr size_t max_waiting_prompts = 16;

struct session_state {
  caf::actor queue;
  caf::actor supervisor;
  caf::actor gateway;
  params pool;
  bool sim_time = false;
  std::string id;
  std::string model;
  uint32_t redundancy = 1;
  uint32_t max_tasks = 1;
  uint32_t task_no = 0;        // the task being run (= tasks done)
  std::vector<std::string> nodes;
  bool running = false;
  bool reporting = false;      // TaskDone sent, waiting for the answer
  uint64_t attempt = 0;        // tells stale timeouts apart
  task_round round;            // the current attempt, on its nodes
  bool interactive = false;     // tasks are the client's prompts
  std::deque<pending_prompt> prompts;  // front() is the one running
  uint64_t prompt_seq = 0;
  // One timeout message pending at a time, for the earliest deadline (a
  // task's phase or a prompt's): a message per task phase would live its
  // whole delay after the task ended, and at thousands of tasks a second
  // that is what would fill the memory.
  uint64_t timer_gen = 0;  // the one that counts; older ones are ignored
  int64_t timer_at = 0;    // when it fires (now_ms), 0: none
  /// The pool ended the session (its reason) while a TaskDone waited for
  /// its answer. The supervisor publishes a commit's events before it
  /// answers, and the events come by the queue: the answer, and the prompt
  /// it answers, are still on their way. The actor ends once it came.
  std::optional<std::string> ended;
  static inline const char* name = "session";
};

using self_ptr = caf::stateful_actor<session_state>*;

void refuse(self_ptr self, const std::string& node, pb::RefusalCode code,
            const std::string& detail) {
  self->send(self->state.gateway, refused_atom::value, node, code, detail);
}

void start_task(self_ptr self);
void arm(self_ptr self);

/// Prompts still waiting hear that the session ended, and the actor ends.
void end_session(self_ptr self, const std::string& reason) {
  auto& st = self->state;
  for (auto& p : st.prompts)
    if (!p.answered)
      p.rp.deliver(make_refusal(pb::REFUSAL_SESSION_ENDED,
                                "session " + st.id + " ended (" + reason + ")"));
  st.prompts.clear();
  self->quit();
}

void finish_task(self_ptr self) {
  auto& st = self->state;
  st.reporting = true;
  st.round.judge(st.pool.embedding_threshold);
  // The answer a client gets: the first output that agreed with the others.
  pb::PromptAnswer answer;
  answer.set_session_id(st.id);
  answer.set_task_no(st.task_no);
  answer.set_model(st.model);
  answer.set_nodes(static_cast<uint32_t>(st.round.parts().size()));
  for (auto& p : st.round.parts())
    if (!p.failed && p.outcome == pb::OK) {
      if (answer.agreeing() == 0)
        answer.set_output(p.output);
      answer.set_agreeing(answer.agreeing() + 1);
    }
  auto cmd = make_command([&](pb::Command& c) {
    auto* t = c.mutable_task_done();
    t->set_session_id(st.id);
    t->set_task_no(st.task_no);
    for (auto& p : st.round.parts()) {
      auto* o = t->add_outcomes();
      o->set_node_id(p.node);
      o->set_outcome(p.outcome);
      if (p.outcome == pb::OK)
        o->set_latency_ms(static_cast<uint32_t>(std::max<int64_t>(1, p.latency_ms)));
    }
  });
  auto attempt = st.attempt;
  self->request(st.supervisor, caf::infinite, cmd_atom::value, cmd)
    .then(
      [=](accepted_atom) {
        auto& st = self->state;
        if (attempt != st.attempt)
          return;
        st.reporting = false;
        st.running = false;
        st.round = {};
        ++st.task_no;
        // The outcome is durable: the client hears the answer now.
        if (st.interactive && !st.prompts.empty()) {
          auto& p = st.prompts.front();
          if (!p.answered) {
            if (answer.agreeing() > 0)
              p.rp.deliver(answer.SerializeAsString());
            else
              p.rp.deliver(make_refusal(
                pb::REFUSAL_NO_ANSWER, "none of the session's "
                               + std::to_string(answer.nodes())
                               + " nodes committed an answer in time"));
          }
          st.prompts.pop_front();
        }
        if (st.ended)
          return end_session(self, *st.ended);
        // Go on only after the events of this commit (nodes released by it)
        // have come through the queue: a bounce off it orders the two.
        self->send(st.queue, reply_atom::value, self);
      },
      [=](caf::error& err) {
        auto [code, detail] = read_refusal(self->system(), err);
        auto& st = self->state;
        if (attempt != st.attempt)
          return;
        if (st.ended)
          return end_session(self, *st.ended);
        // The membership changed under the task (a node was lost or
        // released meanwhile): run the task again on the nodes it has now.
        log("session")->debug("session {} task {} refused: {} ({})", st.id,
                              st.task_no, code, detail);
        st.reporting = false;
        st.running = false;
        st.round = {};
        start_task(self);
      });
}

void check_done(self_ptr self) {
  auto& st = self->state;
  if (!st.running || st.reporting || !st.round.done())
    return;
  if (st.round.parts().empty()) {
    st.running = false;
    start_task(self);
    return;
  }
  finish_task(self);
}

void start_task(self_ptr self) {
  auto& st = self->state;
  if (st.running || st.nodes.empty() || st.task_no >= st.max_tasks)
    return;
  if (st.interactive && st.prompts.empty())
    return;  // waits for the client's next prompt
  st.running = true;
  ++st.attempt;
  std::vector<std::string> on;
  auto n = std::min<size_t>(st.redundancy, st.nodes.size());
  for (size_t i = 0; i < n; ++i)
    on.push_back(st.nodes[(st.task_no + i) % st.nodes.size()]);
  st.round = task_round{st.task_no, on, now_ms(self, st.sim_time),
                        st.pool.task_phase_timeout_ms};
  pb::OracleMsg m;
  auto* t = m.mutable_task();
  t->set_session_id(st.id);
  t->set_task_no(st.task_no);
  if (st.interactive) {
    auto& r = st.prompts.front().req;
    t->set_prompt(r.prompt());
    t->set_max_tokens(r.max_tokens());
    t->set_temperature(r.temperature());
    t->set_top_p(r.top_p());
  } else
    t->set_prompt("Session " + st.id + " task " + std::to_string(st.task_no)
                  + ": summarise why tested nodes matter for "
                  + (st.model.empty() ? std::string{"any model"} : st.model)
                  + ".");
  t->set_phase_timeout_ms(st.pool.task_phase_timeout_ms);
  auto bytes = m.SerializeAsString();
  for (auto& node : on)
    self->send(st.gateway, send_atom::value, node, bytes);
  arm(self);
}

/// The earliest deadline still ahead: of the running task's next phase
/// (ack by T, precommit by 2T, commit by 3T after it was sent), or of a
/// prompt waiting for its answer.
int64_t next_deadline(self_ptr self) {
  auto& st = self->state;
  int64_t next = std::numeric_limits<int64_t>::max();
  if (st.running && !st.reporting)
    next = st.round.next_deadline().value_or(next);
  for (auto& p : st.prompts)
    if (!p.answered && p.deadline > 0)
      next = std::min(next, p.deadline);
  return next;
}

void arm(self_ptr self) {
  auto& st = self->state;
  auto next = next_deadline(self);
  if (next == std::numeric_limits<int64_t>::max())
    return;
  if (st.timer_at != 0 && st.timer_at <= next)
    return;  // the one pending fires first, and arms the next
  st.timer_at = next;
  auto delay = std::max<int64_t>(1, next - now_ms(self, st.sim_time));
  self->delayed_send(self, std::chrono::milliseconds(delay), timeout_atom::value,
                     ++st.timer_gen);
}

/// A session opened for one prompt whose prompt was given up before its task
/// ran: it asks the pool to end it (failed), instead of holding its nodes
/// for a prompt that will not come.
void end_opened_session(self_ptr self, const std::string& why) {
  auto& st = self->state;
  auto cmd = make_command([&](pb::Command& c) {
    auto* x = c.mutable_end_session();
    x->set_session_id(st.id);
    x->set_failed(true);
    x->set_reason("its only prompt " + why);
  });
  self->request(st.supervisor, caf::infinite, cmd_atom::value, cmd)
    .then([](accepted_atom) {}, [](caf::error&) {});
}

/// What is due now: task phases that passed (their laggards fail with
/// TIMEOUT) and prompts past their deadline ("timeout" to the client).
void expire(self_ptr self) {
  auto& st = self->state;
  auto now = now_ms(self, st.sim_time);
  if (st.running && !st.reporting) {
    st.round.expire(now);
    check_done(self);
  }
  std::deque<pending_prompt> keep;
  for (size_t i = 0; i < st.prompts.size(); ++i) {
    auto& p = st.prompts[i];
    if (!p.answered && p.deadline > 0 && now >= p.deadline) {
      p.rp.deliver(make_refusal(pb::REFUSAL_TIMEOUT, "no answer within "
                                  + std::to_string(p.req.timeout_ms()) + " ms"));
      p.answered = true;
      // Not started yet: it never runs. Running: it finishes (the nodes
      // did the work) and its answer is dropped.
      if (i > 0 || !st.running) {
        if (p.req.ends_session())
          end_opened_session(self, "timed out before its task ran");
        continue;
      }
    }
    keep.push_back(std::move(p));
  }
  st.prompts.swap(keep);
}

void node_left(self_ptr self, const std::string& node) {
  auto& st = self->state;
  st.nodes.erase(std::remove(st.nodes.begin(), st.nodes.end(), node),
                 st.nodes.end());
  if (st.reporting)
    return;  // the refusal of the TaskDone restarts the task
  if (st.round.drop(node))
    check_done(self);
}

void on_event(self_ptr self, const pb::Event& e) {
  auto& st = self->state;
  if (e.has_session_started()) {
    auto& s = e.session_started();
    st.nodes.assign(s.nodes().begin(), s.nodes().end());
    if (st.running && !st.reporting && st.task_no == s.tasks_done()) {
      // Already running this task on nodes reserved in the same commit
      // (their NodeReserved came first): keep that attempt.
      st.round.keep_only(st.nodes);
      check_done(self);
      return;
    }
    st.task_no = s.tasks_done();
    st.running = false;
    st.reporting = false;
    ++st.attempt;
    start_task(self);
  } else if (e.has_node_reserved()) {
    auto& id = e.node_reserved().node_id();
    if (std::find(st.nodes.begin(), st.nodes.end(), id) == st.nodes.end())
      st.nodes.push_back(id);
    start_task(self);
  } else if (e.has_node_released()) {
    node_left(self, e.node_released().node_id());
  } else if (e.has_node_state_changed()) {
    node_left(self, e.node_state_changed().node_id());
  } else if (e.has_session_ended()) {
    if (st.reporting)
      st.ended = e.session_ended().reason();
    else
      end_session(self, e.session_ended().reason());
  }
}

void on_miner(self_ptr self, const std::string& node, const pb::MinerMsg& m) {
  auto& st = self->state;
  if (std::find(st.nodes.begin(), st.nodes.end(), node) == st.nodes.end()) {
    refuse(self, node, pb::REFUSAL_NOT_IN_SESSION,
           "node " + node + " does not serve session " + st.id);
    return;
  }
  // Between attempts (reporting, or none running) every task message is
  // late.
  std::optional<refusal> no;
  if (st.running && !st.reporting)
    no = st.round.on(node, m, now_ms(self, st.sim_time));
  else
    no = refusal{pb::REFUSAL_STALE_TASK,
                 "task " + std::to_string(task_round::task_of(m))
                   + " is not waiting for this node"};
  if (no)
    refuse(self, node, no->code, no->detail + " (session " + st.id + ")");
  check_done(self);
}

} // namespace

caf::actor spawn_session(caf::actor_system& sys, caf::actor queue,
                         caf::actor supervisor, caf::actor gateway,
                         const params& pool, bool sim_time,
                         const pb::SessionStarted& start) {
  return sys.spawn([=](self_ptr self) -> caf::behavior {
    auto& st = self->state;
    st.queue = queue;
    self->link_to(queue);  // sessions go down with their queue
    st.supervisor = supervisor;
    st.gateway = gateway;
    st.pool = pool;
    st.sim_time = sim_time;
    st.id = start.session_id();
    st.model = start.model();
    st.redundancy = std::max<uint32_t>(1, start.redundancy());
    st.max_tasks = start.max_tasks();
    st.interactive = start.interactive();
    // Stopped from outside (the queue's term as leader ended, or the queue
    // went down): a prompt still waiting hears why; without this its
    // promise would die with the actor, unanswered.
    self->set_exit_handler([=](caf::exit_msg& m) {
      auto& st = self->state;
      for (auto& p : st.prompts)
        if (!p.answered)
          p.rp.deliver(make_refusal(pb::REFUSAL_NOT_LEADER, "this oracle stopped leading"));
      st.prompts.clear();
      self->quit(std::move(m.reason));
    });
    pb::Event e;
    *e.mutable_session_started() = start;
    on_event(self, e);
    return {
      [=](events_atom, const event_ref& e) {
        if (e)
          on_event(self, *e);
      },
      [=](task_atom, const std::string& node, const std::string&,
          const std::string& bytes) {
        pb::MinerMsg m;
        if (!m.ParseFromString(bytes)) {
          refuse(self, node, pb::REFUSAL_MALFORMED, "task message does not decode");
          return;
        }
        on_miner(self, node, m);
      },
      [=](reply_atom) { start_task(self); },
      // A client's prompt (interactive sessions): PromptRequest bytes ->
      // PromptAnswer bytes once the task's outcome is durable, or a refusal.
      [=](prompt_atom, const std::string& bytes) -> caf::result<std::string> {
        auto& st = self->state;
        pb::PromptRequest r;
        if (!r.ParseFromString(bytes))
          return make_refusal(pb::REFUSAL_MALFORMED, "prompt request does not decode");
        if (!st.interactive)
          return make_refusal(pb::REFUSAL_NOT_INTERACTIVE,
                              "session " + st.id
                                + " runs generated tasks, not prompts");
        if (st.task_no + st.prompts.size() >= st.max_tasks)
          return make_refusal(pb::REFUSAL_MAX_TASKS_REACHED,
                              "session " + st.id + " allows "
                                + std::to_string(st.max_tasks) + " tasks");
        if (st.prompts.size() >= max_waiting_prompts)
          return make_refusal(pb::REFUSAL_BUSY, "session " + st.id + " already has "
                                        + std::to_string(st.prompts.size())
                                        + " prompts waiting");
        auto& p = st.prompts.emplace_back();
        p.req = std::move(r);
        p.rp = self->make_response_promise();
        p.seq = ++st.prompt_seq;
        if (p.req.timeout_ms() > 0)
          p.deadline = now_ms(self, st.sim_time) + p.req.timeout_ms();
        auto rp = p.rp;
        start_task(self);
        arm(self);
        return rp;
      },
      [=](timeout_atom, uint64_t gen) {
        auto& st = self->state;
        if (gen != st.timer_gen)
          return;  // an earlier deadline replaced it
        st.timer_at = 0;
        expire(self);
        arm(self);
      },
    };
  });
}

} // namespace nodepool
