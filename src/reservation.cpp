// Sessions: acceptance, reservation of nodes, task outcomes and release.
#include "pool_state.hpp"

#include <algorithm>

#include "bounds.hpp"

namespace nodepool {

namespace {

/// I2: a node whose ephemeral window has run out is not handed out, even if
/// a command other than the tick that sends it to its retest comes first.
bool within_window(const pb::NodeRecord& n, int64_t now, const params& p) {
  return now - n.ephemeral_at() <= p.ephemeral_window_ms;
}

} // namespace

void pool_state::apply_submit(const pb::SubmitSession& c, int64_t now,
                              apply_result& out) {
  if (!bounds::valid_id(c.session_id())) {
    out.refused = refusal{pb::REFUSAL_BAD_SESSION_ID,
                          "session id must be 1..128 chars of [A-Za-z0-9-_.:]"};
    return;
  }
  if (live_session(c.session_id()) || recent_ids_.contains(c.session_id())) {
    out.refused = refusal{pb::REFUSAL_DUPLICATE_SESSION,
                          "session " + c.session_id() + " already exists"};
    return;
  }
  if (session_counts()[pb::QUEUED] >= params_.max_queued_sessions) {
    out.refused = refusal{pb::REFUSAL_QUEUE_FULL,
                          std::to_string(params_.max_queued_sessions)
                            + " sessions wait already (max_queued_sessions)"};
    return;
  }
  auto min_n = c.min_nodes() ? c.min_nodes() : params_.min_nodes;
  auto max_n = c.max_nodes() ? c.max_nodes() : std::max(params_.max_nodes, min_n);
  auto red = c.redundancy() ? c.redundancy() : std::min(params_.redundancy, max_n);
  if (min_n > max_n || red > max_n || max_n > 64) {
    out.refused = refusal{pb::REFUSAL_BAD_SESSION_SHAPE,
                          "need 1 <= min_nodes <= max_nodes <= 64 and "
                          "redundancy <= max_nodes"};
    return;
  }
  if (c.min_level() > params_.max_level) {
    out.refused = refusal{pb::REFUSAL_BAD_LEVEL, "min_level above the highest level"};
    return;
  }
  if (c.reserve_period_ms() < 0 || c.reserve_period_ms() > bounds::reserve_period_ms) {
    out.refused = refusal{pb::REFUSAL_BAD_RESERVE_PERIOD,
                          bounds::reserve_period_range("reserve_period")};
    return;
  }
  auto& s = *sessions_.try_emplace(c.session_id()).first;  // new: checked above
  s.set_id(c.session_id());
  order_session(s);
  s.set_model(c.model());
  s.set_min_nodes(min_n);
  s.set_max_nodes(max_n);
  s.set_redundancy(red);
  s.set_min_level(c.min_level());
  s.set_reserve_period_ms(c.reserve_period_ms());
  s.set_max_tasks(c.max_tasks() ? c.max_tasks() : 1);
  s.set_client(c.client());
  s.set_interactive(c.interactive());
  s.set_state(pb::QUEUED);
  s.set_submitted_at(now);
  s.set_last_activity(now);
  s.set_seq(next_session_seq_++);
  enqueue(s);
  note_session(s);
  out.events.emplace_back();
  out.events.back().mutable_session_accepted()->set_session_id(s.id());
}

bool pool_state::suitable(const pb::NodeRecord& n,
                          const pb::SessionRecord& s) const {
  // In the pool, available, and back after a change of leader (a task
  // sent to a node that has not reached the new leader would go nowhere).
  if (!counts_as_available(n))
    return false;
  if (n.level() < s.min_level())
    return false;
  if (s.model().empty())
    return true;
  return std::find(n.models().begin(), n.models().end(), s.model())
         != n.models().end();
}

uint32_t pool_state::reserve_for(pb::SessionRecord& s, uint32_t want,
                                 int64_t now, apply_result& out,
                                 const std::vector<const pb::SessionRecord*>& held) {
  // The pool is ordered by (rank, pool_key): the first suitable nodes in
  // that order are the best ranked ones. Within a group of equal rank the
  // walk starts at a point drawn now and wraps around, so which of equal
  // nodes comes first does not depend on how long they have been waiting.
  std::vector<std::string> picked;
  auto consider = [&](const pool_entry& e) {
    ++walk_steps_;
    auto& n = *e.node;
    if (suitable(n, s) && within_window(n, now, params_) && !held_for(n, held))
      picked.push_back(n.id());
    return picked.size() < want;
  };
  auto start = next_random();
  auto& pool = pool_for(s.model());
  for (auto group = pool.begin(); group != pool.end() && picked.size() < want;) {
    auto rank = group->rank;
    auto end = pool.upper_bound(pool_probe{rank, UINT64_MAX});
    auto from = pool.lower_bound(pool_probe{rank, start});
    bool more = true;
    for (auto i = from; more && i != end; ++i)
      more = consider(*i);
    for (auto i = group; more && i != from; ++i)
      more = consider(*i);
    group = end;
  }
  for (auto& id : picked) {
    auto& n = known(id);
    n.set_session_id(s.id());
    n.set_reserved_at(now);
    n.set_reserved_window_ms(params_.ephemeral_window_ms);
    n.set_tasks_served(0);
    // The session is in the record (session_id) and in the NodeReserved
    // event below: the reason names none, and costs no string built per
    // reservation.
    set_state(n, pb::RESERVED, "reserved", out);
    s.add_nodes(id);
    note_session(s);
    out.events.emplace_back();
    auto* r = out.events.back().mutable_node_reserved();
    r->set_node_id(id);
    r->set_session_id(s.id());
  }
  return static_cast<uint32_t>(picked.size());
}

bool pool_state::held_for(const pb::NodeRecord& n,
                          const std::vector<const pb::SessionRecord*>& held) const {
  for (auto* h : held)
    if (suitable(n, *h))
      return true;
  return false;
}

bool pool_state::servable_now(
  const pb::SessionRecord& s, int64_t now,
  const std::vector<const pb::SessionRecord*>& held) const {
  // A held session of the same model (or of any) that takes nodes of this
  // one's level or lower holds every node this one could use: no walk can
  // find one (the same answer as the walk below, in O(held)).
  for (auto* h : held)
    if (h->min_level() <= s.min_level()
        && (h->model().empty() || h->model() == s.model()))
      return false;
  uint32_t found = 0;
  for (auto& e : pool_for(s.model())) {
    ++walk_steps_;
    auto& n = *e.node;
    if (suitable(n, s) && within_window(n, now, params_) && !held_for(n, held)
        && ++found >= s.min_nodes())
      return true;
  }
  return false;
}

void pool_state::try_assign(int64_t now, apply_result& out) {
  if (pool_.empty())
    return;
  // Sessions already running but short of their redundancy come first: they
  // were accepted earlier than anything still queued.
  if (!short_.empty()) {
    std::vector<pb::SessionRecord*> tops;
    for (auto& id : short_)
      if (auto* s = live_session(id))
        tops.push_back(s);
    for (auto* sp : tops) {
      if (pool_.empty())
        return;
      auto& s = *sp;
      // The counts say in O(levels) whether any node could serve it: a
      // session short of a model none is free for costs no walk.
      if (s.state() == pb::ACTIVE
          && static_cast<uint32_t>(s.nodes_size()) < s.redundancy()
          && available_bound(counts_for(s.model()), s.min_level()) > 0)
        reserve_for(s, s.max_nodes() - s.nodes_size(), now, out);
    }
  }
  // Then the queue in acceptance order. A session whose needs cannot be met
  // now does not block the ones behind it, until it has waited half its
  // queue_timeout: from then on it holds the nodes it could use (nothing
  // behind it gets them), so a session that needs many nodes is not starved
  // by a stream of small ones. Sessions that want other nodes (another
  // model, say) are still served; one that no registered node could ever
  // serve holds nothing.
  //
  // The walk visits one session per class of needs (model, level, minimum
  // of nodes), its oldest: if it cannot be served, no other of its class
  // can, so a deep queue of unservable sessions costs one look per class.
  // A class holds nodes once any of its sessions has waited long enough.
  std::vector<const pb::SessionRecord*> held;
  for (auto h = heads_.begin(); h != heads_.end() && !pool_.empty();) {
    ++walk_steps_;
    auto seq = h->first;
    auto& [key, c] = *h->second;
    // The class's counts rule most classes out in O(levels) without a look
    // at a session; only one that could be served is checked against the
    // pool itself.
    auto free_now = available_bound(c.counts, key.min_level);
    if (free_now < key.min_nodes
        || !servable_now(*c.members.begin()->second, now, held)) {
      // A class no free node could serve holds nothing now (and none
      // becomes free during this walk): leaving it out of `held` spares
      // every node the walks below look at a question whose answer is no.
      if (free_now > 0
          && could_ever_serve(c.counts, key.min_level, key.min_nodes)
          && now - *c.entered.begin() > params_.queue_timeout_ms / 2)
        held.push_back(c.members.begin()->second);
      ++h;
      continue;
    }
    auto& s = *c.members.begin()->second;
    dequeue(s);  // before its activity changes (the class keeps entry times)
    auto& live = s;
    reserve_for(live, live.max_nodes(), now, out, held);
    set_session_state(live, pb::ACTIVE);
    if (live.started_at() == 0)
      live.set_started_at(now);
    live.set_last_activity(now);
    note_session(live);
    out.events.emplace_back();
    auto* st = out.events.back().mutable_session_started();
    st->set_session_id(live.id());
    *st->mutable_nodes() = live.nodes();
    st->set_redundancy(live.redundancy());
    st->set_max_tasks(live.max_tasks());
    st->set_tasks_done(live.tasks_done());
    st->set_model(live.model());
    st->set_interactive(live.interactive());
    // The class's next session (if any) has a later place: continue after
    // this one, in acceptance order.
    h = heads_.lower_bound({seq + 1, nullptr});
  }
}

pb::SessionRecord* pool_state::live_or_refuse(const std::string& id,
                                              apply_result& out) {
  if (auto* s = live_session(id))
    return s;
  // An id in the window ended recently: say so rather than "unknown".
  if (recent_ids_.contains(id))
    out.refused = refusal{pb::REFUSAL_SESSION_ENDED, "session " + id + " has ended"};
  else
    out.refused = refusal{pb::REFUSAL_UNKNOWN_SESSION, "no session " + id};
  return nullptr;
}

void pool_state::apply_task_done(const pb::TaskDone& c, int64_t now,
                                 apply_result& out) {
  auto* found = live_or_refuse(c.session_id(), out);
  if (!found)
    return;
  auto& s = *found;
  if (s.state() != pb::ACTIVE) {
    out.refused = refusal{pb::REFUSAL_SESSION_NOT_ACTIVE,
                          "session " + s.id() + " is " + to_string(s.state())};
    return;
  }
  if (c.task_no() != s.tasks_done()) {
    out.refused = refusal{pb::REFUSAL_STALE_TASK, "task " + std::to_string(c.task_no())
                                          + " is not the current one ("
                                          + std::to_string(s.tasks_done())
                                          + ")"};
    return;
  }
  if (c.outcomes_size() == 0) {
    out.refused = refusal{pb::REFUSAL_NO_OUTCOMES, "a task needs at least one outcome"};
    return;
  }
  std::set<std::string> seen;
  for (auto& o : c.outcomes()) {
    auto* n = live_node(o.node_id());
    if (!n || n->state() != pb::RESERVED
        || n->session_id() != s.id() || !seen.insert(o.node_id()).second) {
      out.refused = refusal{pb::REFUSAL_NODE_NOT_IN_SESSION,
                            "node " + o.node_id() + " is not reserved for "
                              + s.id()};
      return;
    }
  }
  s.set_tasks_done(s.tasks_done() + 1);
  s.set_last_activity(now);
  note_session(s);
  out.changed = true;
  // A finished session is marked first so that nodes leaving it below do
  // not send it back to the queue.
  bool finished = s.tasks_done() >= s.max_tasks();
  if (finished) {
    set_session_state(s, pb::COMPLETED);
    note_session(s);
  }
  uint64_t quarantined = counts_[pb::QUARANTINED];
  uint64_t alive = nodes_.size() - counts_[pb::RETIRED];
  for (auto& o : c.outcomes()) {
    auto& n = known(o.node_id());
    n.set_tasks_served(n.tasks_served() + 1);
    if (o.outcome() == pb::OK && o.latency_ms() > 0) {
      auto a = params_.reputation_alpha;
      n.set_latency_ms(n.latency_ms() == 0
                         ? o.latency_ms()
                         : (1 - a) * n.latency_ms() + a * o.latency_ms());
    }
    bool broken = o.outcome() == pb::TIMEOUT || o.outcome() == pb::MISMATCH;
    // Panic guard: a burst of session failures (a bad model update, a
    // network blip) must not empty the pool; past the share, failing
    // nodes are re-validated instead of quarantined outright.
    bool to_quarantine =
      broken && quarantined + 1 <= params_.panic_share * alive;
    if (!to_quarantine)  // quarantine() records the bad outcome itself
      record_outcome(n, o.outcome() == pb::OK);
    if (broken) {
      if (to_quarantine) {
        n.clear_session_id();
        detach(s, n.id(), now, out);
        n.set_reset_at(now);
        n.set_released_at(now);
        quarantine(n, o.outcome() == pb::TIMEOUT ? "task timeout"
                                                 : "reveal did not match hash",
                   now, out);
        ++quarantined;
      } else {
        release(n, "task failure (panic guard)", now, out);
      }
    } else if (n.tasks_served() >= params_.tasks_before_release) {
      release(n, "tasks_before_release", now, out);
    }
  }
  if (finished)
    end_session(s, pb::COMPLETED, "", now, out);
}

void pool_state::apply_end_session(const pb::EndSession& c, int64_t now,
                                   apply_result& out) {
  auto* found = live_or_refuse(c.session_id(), out);
  if (!found)
    return;
  auto& s = *found;
  if (c.failed() && c.reason().empty()) {
    out.refused = refusal{pb::REFUSAL_NO_REASON, "a failed session needs a reason"};
    return;
  }
  end_session(s, c.failed() ? pb::FAILED : pb::COMPLETED, c.reason(), now,
              out);
}

void pool_state::set_session_state(pb::SessionRecord& s, pb::SessionState to) {
  if (s.state() == pb::ACTIVE)
    --active_;
  if (to == pb::ACTIVE)
    ++active_;
  s.set_state(to);
}

void pool_state::end_session(pb::SessionRecord& s, pb::SessionState st,
                             const std::string& why, int64_t now,
                             apply_result& out) {
  if (s.state() == pb::QUEUED)
    dequeue(s);
  auto nodes = std::vector<std::string>(s.nodes().begin(), s.nodes().end());
  set_session_state(s, st);  // before releasing: no requeue of an ending session
  note_session(s);
  for (auto& id : nodes)
    release(known(id), "session ended", now, out);
  s.set_ended_at(now);
  s.set_reason(why);
  out.events.emplace_back();
  auto* e = out.events.back().mutable_session_ended();
  e->set_session_id(s.id());
  e->set_state(st);
  e->set_reason(why);
  archive(s, now, out);
}

void pool_state::archive(pb::SessionRecord& s, int64_t now,
                         apply_result& out) {
  // The record leaves the pool: memory and snapshots hold live sessions
  // only. The id stays in the window so a retry is refused without a
  // lookup; the record itself goes out with the command, to the archive.
  ++(s.state() == pb::COMPLETED ? sessions_completed_ : sessions_failed_);
  unschedule(s);
  // Noted earlier in this command: its timer is gone with it.
  noted_sessions_.erase(std::remove(noted_sessions_.begin(), noted_sessions_.end(), &s),
                        noted_sessions_.end());
  recent_ids_.add(s.id(), now + params_.session_id_retention_ms);
  unorder_session(s);
  auto id = s.id();
  out.archived.push_back(std::move(s));
  sessions_.erase(id);
}

void pool_state::release(pb::NodeRecord& n, const std::string& why,
                         int64_t now, apply_result& out) {
  auto sid = n.session_id();
  n.clear_session_id();
  n.set_tasks_served(0);
  n.set_released_at(now);
  n.set_reset_at(now);
  out.events.emplace_back();
  auto* r = out.events.back().mutable_node_released();
  r->set_node_id(n.id());
  r->set_session_id(sid);
  r->set_reason(why);
  if (auto* s = live_session(sid))
    detach(*s, n.id(), now, out);
  start_test(n, pb::REVALIDATION, now, out);
}

void pool_state::detach(pb::SessionRecord& s, const std::string& node_id,
                        int64_t now, apply_result& out) {
  // A node the session waited for after a change of leader (whatever takes
  // it away: retired, lost, down, released): once the others are back, the
  // session goes on without it (a new SessionStarted). One it did not wait
  // for leaves it running as it was (another would restart its task).
  auto* n = live_node(node_id);
  bool awaited = n && n->rejoin_by() > 0;
  auto* xs = s.mutable_nodes();
  auto i = std::find(xs->begin(), xs->end(), node_id);
  if (i != xs->end())
    xs->erase(i);
  note_session(s);
  // An active session never runs without nodes: it waits in the queue again,
  // in its original place, keeping the tasks it has done.
  if (s.state() == pb::ACTIVE && xs->empty())
    requeue(s, now, out);
  else if (awaited)
    maybe_resume(s, out);
}

void pool_state::requeue(pb::SessionRecord& s, int64_t now,
                         apply_result& out) {
  auto nodes = std::vector<std::string>(s.nodes().begin(), s.nodes().end());
  ++sessions_requeued_;
  set_session_state(s, pb::QUEUED);  // first, so detaching does not recurse
  // While queued, last_activity is when the session (re-)entered the queue:
  // queue_timeout counts from there, not from the first submission.
  s.set_last_activity(now);
  for (auto& id : nodes) {
    auto& n = known(id);
    n.clear_session_id();
    // A node taken from a requeued session goes back through re-validation.
    release(n, "session requeued", now, out);
  }
  s.clear_nodes();
  enqueue(s);
  note_session(s);
}

} // namespace nodepool
