// The indexes behind a command's cost: counts of nodes by model and level,
// timers by due time, queued sessions by what they need, and the active
// sessions short of nodes. Each is updated where the records change and
// verified against them by the invariant checks (check_indexes).
#include "pool_state.hpp"
#include "record_checks.hpp"

#include <algorithm>

namespace nodepool {

namespace {

uint32_t level_slot(uint32_t level) { return std::min<uint32_t>(level, 5); }

/// Nodes counted at `min_level` or above.
uint64_t at_or_above(const std::array<uint64_t, 6>& by_level, uint32_t min_level) {
  uint64_t sum = 0;
  for (auto lv = level_slot(min_level); lv < 6; ++lv)
    sum += by_level[lv];
  return sum;
}

} // namespace

bool counts_as_alive(const pb::NodeRecord& n) {
  return n.state() != pb::RETIRED && n.state() != pb::LOST
         && n.state() != pb::NODE_STATE_UNSPECIFIED;
}

bool counts_as_available(const pb::NodeRecord& n) {
  // A node not back from a change of leader cannot be sent a task yet.
  // A drained node is not reserved again until an operator undrains it.
  return n.state() == pb::EPHEMERAL && n.mode() == pb::AVAILABLE
         && n.rejoin_by() == 0 && !n.drained();
}

bool test_sent(const pb::NodeRecord& n) {
  return (n.state() == pb::TESTING || n.state() == pb::REVALIDATING)
         && n.test_deadline() != 0;
}

bool test_waiting(const pb::NodeRecord& n) {
  return (n.state() == pb::TESTING || n.state() == pb::REVALIDATING)
         && n.test_deadline() == 0 && n.test_id() != 0 && n.rejoin_by() == 0;
}

int64_t pool_state::node_due(const pb::NodeRecord& n) const {
  auto base = node_state_due(n);
  if (n.rejoin_by() > 0 && n.state() != pb::RETIRED && n.state() != pb::LOST)
    return std::min(base, n.rejoin_by());
  return base;
}

int64_t pool_state::node_state_due(const pb::NodeRecord& n) const {
  switch (n.state()) {
    case pb::TESTING:
    case pb::REVALIDATING:
      // Failed once now > deadline; a test not sent yet has none.
      return n.test_deadline() == 0 ? never : n.test_deadline() + 1;
    case pb::QUARANTINED:
      return n.quarantine_until();
    case pb::LOST:
      return params_.lost_retention_ms > 0
               ? n.reset_at() + params_.lost_retention_ms
               : never;
    case pb::RETIRED:
      // Retired by an operator: reset_at is then. By its strikes: the
      // deadline of its last test, which failed before it or at the first
      // tick past it.
      return params_.retired_retention_ms > 0
               ? std::max(n.reset_at(), n.test_deadline())
                   + params_.retired_retention_ms
               : never;
    case pb::EPHEMERAL:
      return n.ephemeral_at() + params_.ephemeral_window_ms + 1;
    case pb::RESERVED: {
      int64_t period = params_.reserve_period_ms;
      auto* s = live_session(n.session_id());
      if (s && s->reserve_period_ms() > 0)
        period = s->reserve_period_ms();
      return n.reserved_at() + period + 1;
    }
    default:
      return never;
  }
}

int64_t pool_state::idle_limit(const pb::SessionRecord& s) const {
  return params_.idle_threshold_ms
         + (s.interactive() ? 3 * params_.task_phase_timeout_ms : 0);
}

int64_t pool_state::session_due(const pb::SessionRecord& s) const {
  switch (s.state()) {
    case pb::ACTIVE:
      return s.last_activity() + idle_limit(s) + 1;
    case pb::QUEUED:
      return s.last_activity() + params_.queue_timeout_ms + 1;
    default:
      return never;
  }
}

void pool_state::note_node(const pb::NodeRecord& n) {
  auto& a = node_aux_[&n];
  // Take back what the node was counted as, count what it is now.
  auto apply_counts = [&](int sign) {
    auto lv = level_slot(a.level);
    for (auto* c : a.models) {
      c->alive[lv] += sign * (a.alive ? 1 : 0);
      c->available[lv] += sign * (a.available ? 1 : 0);
    }
    any_->alive[lv] += sign * (a.alive ? 1 : 0);
    any_->available[lv] += sign * (a.available ? 1 : 0);
  };
  apply_counts(-1);
  a.level = n.level();
  a.alive = counts_as_alive(n);
  a.available = counts_as_available(n);
  a.models.clear();
  for (auto& m : n.models()) {
    auto [at, added] = by_model_.try_emplace(m);
    auto* c = &at->second;
    if (added)  // queued classes of a model no node had: they count it
                // now, and join the walk of the heads
      for (auto k = classes_.lower_bound({m, 0, 0});
           k != classes_.end() && k->first.model == m; ++k) {
        k->second.counts = c;
        heads_.insert({k->second.members.begin()->first, &*k});
      }
    if (std::find(a.models.begin(), a.models.end(), c) == a.models.end())
      a.models.push_back(c);
  }
  apply_counts(+1);
  // Its place among the tests sent or waiting.
  bool sent = test_sent(n);
  if (sent != a.test_sent) {
    sent ? ++tests_in_flight_ : --tests_in_flight_;
    a.test_sent = sent;
  }
  uint64_t wait = test_waiting(n) ? n.test_id() : 0;
  if (wait != a.waiting_test) {
    if (a.waiting_test != 0)
      test_queue_.erase(a.waiting_test);
    if (wait != 0)  // test ids only grow: the end is the hint
      test_queue_.emplace_hint(test_queue_.end(), wait, &n);
    a.waiting_test = wait;
  }
  noted_nodes_.push_back(&n);
}

void pool_state::note_session(const pb::SessionRecord& s) {
  bool is_short = s.state() == pb::ACTIVE
                  && static_cast<uint32_t>(s.nodes_size()) < s.redundancy();
  if (is_short)
    short_.insert(s.id());
  else
    short_.erase(s.id());
  noted_sessions_.push_back(&s);
}

void pool_state::flush_notes() {
  for (auto* n : noted_nodes_) {
    auto& a = node_aux_.at(n);  // note_node made it
    auto due = node_due(*n);
    if (due == a.due)
      continue;
    if (a.due != never)
      node_timers_.erase(a.timer);
    a.due = due;
    if (due != never)
      a.timer = node_timers_.emplace_hint(node_timers_.end(), due, n);
  }
  last_noted_nodes_.swap(noted_nodes_);  // for check_after, note_changed
  noted_nodes_.clear();
  for (auto* s : noted_sessions_) {
    auto due = session_due(*s);
    auto old = session_due_.find(s);
    if (old != session_due_.end()) {
      if (old->second.due == due)
        continue;
      session_timers_.erase(old->second.at);
      if (due == never) {
        session_due_.erase(old);
        continue;
      }
      old->second = {due, session_timers_.emplace_hint(session_timers_.end(), due, s)};
    } else if (due != never) {
      session_due_.emplace(
        s, session_timer{due, session_timers_.emplace_hint(session_timers_.end(), due, s)});
    }
  }
  last_noted_sessions_.swap(noted_sessions_);
  noted_sessions_.clear();
}

void pool_state::unschedule(const pb::SessionRecord& s) {
  auto old = session_due_.find(&s);
  if (old == session_due_.end())
    return;
  session_timers_.erase(old->second.at);
  session_due_.erase(old);
}

void pool_state::enqueue(pb::SessionRecord& s) {
  auto [it, added] =
    classes_.try_emplace(class_key{s.model(), s.min_level(), s.min_nodes()});
  auto& c = it->second;
  if (added)
    c.counts = counts_for(s.model());
  auto before = c.members.size();
  // A new session comes last in its class: the end is the hint.
  auto at = c.members.emplace_hint(c.members.end(), s.seq(), &s);
  if (c.members.size() == before)
    return;  // already queued
  ++queued_;
  c.entered.insert(s.last_activity());
  if (at != c.members.begin() || !c.counts)
    return;  // the class keeps its head and its place among the heads
  if (before > 0)
    heads_.erase({std::next(at)->first, nullptr});
  heads_.insert({s.seq(), &*it});
}

void pool_state::dequeue(const pb::SessionRecord& s) {
  auto it = classes_.find(class_key{s.model(), s.min_level(), s.min_nodes()});
  if (it == classes_.end())
    return;  // not queued (or a drifted index: the invariant checks report it)
  auto& c = it->second;
  auto m = c.members.find(s.seq());
  if (m == c.members.end())
    return;
  bool head = m == c.members.begin() && c.counts;
  if (head)
    heads_.erase({s.seq(), nullptr});
  c.members.erase(m);
  --queued_;
  if (auto e = c.entered.find(s.last_activity()); e != c.entered.end())
    c.entered.erase(e);
  if (c.members.empty())
    classes_.erase(it);
  else if (head)
    heads_.insert({c.members.begin()->first, &*it});
}

void pool_state::rebuild_indexes() {
  by_model_.clear();
  *any_ = {};
  node_aux_.clear();
  node_timers_.clear();
  session_timers_.clear();
  session_due_.clear();
  classes_.clear();
  heads_.clear();
  short_.clear();
  queued_ = 0;
  test_queue_.clear();
  tests_in_flight_ = 0;
  for (auto& [id, n] : nodes_)
    note_node(n);
  for (auto& [id, s] : sessions_) {
    if (s.state() == pb::QUEUED)
      enqueue(s);
    note_session(s);
  }
  flush_notes();
}

const pool_state::level_counts*
pool_state::counts_for(const std::string& model) const {
  if (model.empty())
    return any_.get();
  auto m = by_model_.find(model);
  return m == by_model_.end() ? nullptr : &m->second;
}

uint64_t pool_state::available_bound(const level_counts* c,
                                     uint32_t min_level) const {
  return c ? at_or_above(c->available, min_level) : 0;
}

bool pool_state::could_ever_serve(const level_counts* c, uint32_t min_level,
                                  uint32_t min_nodes) const {
  return c && at_or_above(c->alive, min_level) >= min_nodes;
}

void pool_state::check_indexes(const pb::NodeRecord& n,
                               std::vector<violation>& out) const {
  if (live_node(n.id()) != &n)
    out.push_back({"I5", "node " + n.id() + " is not its own entry in the index by id"});
  auto a = node_aux_.find(&n);
  if (a == node_aux_.end()) {
    out.push_back({"I5", "node " + n.id() + " is missing from the counts"});
    return;
  }
  auto& x = a->second;
  size_t models = 0;
  record_checks::for_each_distinct_model(n, [&](auto&) { ++models; });
  if (x.level != n.level() || x.alive != counts_as_alive(n)
      || x.available != counts_as_available(n) || x.models.size() != models)
    out.push_back({"I5", "node " + n.id()
                           + " is counted under another level, model or "
                             "state than its own"});
  if (x.test_sent != test_sent(n))
    out.push_back({"I5", "node " + n.id()
                           + (x.test_sent ? " is counted among the tests in flight"
                                          : " is missing from the tests in flight")});
  uint64_t wait = test_waiting(n) ? n.test_id() : 0;
  auto q = wait != 0 ? test_queue_.find(wait) : test_queue_.end();
  if (x.waiting_test != wait
      || (wait != 0 && (q == test_queue_.end() || q->second != &n)))
    out.push_back({"I5", "the queue of tests to send disagrees with node "
                           + n.id()});
  if (wait != 0 && n.test_kind() == pb::REVALIDATION)
    out.push_back({"I5", "the re-validation of node " + n.id()
                           + " waits to be sent"});
  auto due = node_due(n);
  if (x.due != due || (due != never && node_timers_.count({due, &n}) == 0))
    out.push_back({"I2", "the timer of node " + n.id()
                           + " disagrees with its deadline"});
}

void pool_state::check_indexes(const pb::SessionRecord& s,
                               std::vector<violation>& out) const {
  auto due = session_due(s);
  auto d = session_due_.find(&s);
  if (d == session_due_.end() || d->second.due != due
      || session_timers_.count({due, &s}) == 0)
    out.push_back({"I4", "the timer of session " + s.id()
                           + " disagrees with its last activity"});
  bool is_short = s.state() == pb::ACTIVE
                  && static_cast<uint32_t>(s.nodes_size()) < s.redundancy();
  if (is_short != (short_.count(s.id()) == 1))
    out.push_back({"I4", "the index of sessions short of nodes disagrees "
                         "with session " + s.id()});
  if (s.state() == pb::QUEUED) {
    auto c = classes_.find(class_key{s.model(), s.min_level(), s.min_nodes()});
    if (c == classes_.end() || c->second.members.count(s.seq()) == 0
        || c->second.members.at(s.seq()) != &s)
      out.push_back({"I4", "queued session " + s.id()
                             + " is missing from its class"});
    else if (c->second.counts != counts_for(s.model()))
      out.push_back({"I4", "the class of queued session " + s.id()
                             + " reads other counts than its model's"});
    else if (c->second.members.begin()->second == &s
             && (heads_.count({s.seq(), nullptr}) == 1) != (c->second.counts != nullptr))
      out.push_back({"I4", "the class of queued session " + s.id()
                             + (c->second.counts ? " is missing from the heads"
                                                 : " is among the heads with no node of its model")});
  }
}

} // namespace nodepool
