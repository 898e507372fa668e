// I1..I5 of DESIGN.md. Two entry points over the same per-record checks:
// check_invariants() visits the whole state (at snapshots and at the end of
// a history); check_after() visits what one command touched, so checking a
// history after every entry costs time linear in its length.
#include "pool_state.hpp"
#include "record_checks.hpp"
#include "touched.hpp"

#include <algorithm>
#include <set>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "selection.hpp"

namespace nodepool {

using record_checks::add;
using record_checks::valid_node_state;

void pool_state::check_node(const pb::NodeRecord& n,
                            std::vector<violation>& out) const {
  // What the record shows (I1, I2, I3, I5: record_checks.hpp)...
  auto session_of = [&](const std::string& id) { return live_session(id); };
  if (!record_checks::check_node(n, params_.ephemeral_window_ms, session_of,
                                 out))
    return;
  // ... and what the indexes must agree with: I3, the pool index holds
  // exactly the ephemeral nodes, under their current rank and key.
  check_indexes(n, out);
  auto e = entry_of(n);
  bool pooled = n.state() == pb::EPHEMERAL;
  if (pooled != (pool_.count(e) == 1))
    add(out, "I3", "pool index disagrees with the state, rank or key of node "
                     + n.id());
  record_checks::for_each_distinct_model(n, [&](const std::string& m) {
    if (pooled != (pool_for(m).count(e) == 1))
      add(out, "I3", "the pool index of model " + m
                       + " disagrees with the state, rank or key of node "
                       + n.id());
  });
}

void pool_state::check_session(const pb::SessionRecord& s,
                               std::vector<violation>& out) const {
  auto node_of = [&](const std::string& id) { return node(id); };
  record_checks::check_session(s, node_of, out);
  // Its place in the queue (its class) and its timers.
  check_indexes(s, out);
  if (live_session(s.id()) != &s)
    add(out, "I4", "the live sessions by id do not lead to session " + s.id());
}

void pool_state::check_ended(const pb::SessionRecord& s,
                             std::vector<violation>& out) const {
  // I4: an archived session has a known fate and has left the pool.
  if (s.state() != pb::COMPLETED && s.state() != pb::FAILED)
    add(out, "I4", "session " + s.id() + " was archived while "
                     + to_string(s.state()));
  if (s.state() == pb::FAILED && s.reason().empty())
    add(out, "I4", "session " + s.id() + " failed without a reason");
  if (s.nodes_size() > 0)
    add(out, "I1", "session " + s.id() + " ended but holds nodes");
  if (live_session(s.id()))
    add(out, "I4", "session " + s.id() + " ended but is still live");
}

void pool_state::check_counters(std::vector<violation>& out) const {
  // I5 conservation: the per-state counts add up to the nodes.
  uint64_t sum = 0;
  for (auto c : counts_)
    sum += c;
  if (sum != nodes_.size())
    add(out, "I5", "counts add up to " + std::to_string(sum) + ", not "
                     + std::to_string(nodes_.size()));
  if (pool_.size() != counts_[pb::EPHEMERAL])
    add(out, "I3", "pool index holds " + std::to_string(pool_.size())
                     + " nodes, " + std::to_string(counts_[pb::EPHEMERAL])
                     + " are ephemeral");
  // I4 nothing lost: every accepted session is queued, active or ended.
  if (queued_ + active_ != sessions_.size())
    add(out, "I4", std::to_string(sessions_.size()) + " live sessions but "
                     + std::to_string(queued_) + " queued and "
                     + std::to_string(active_) + " active");
  // The indexes hold as many records as they index.
  if (node_index_.size() != nodes_.size())
    add(out, "I5", "the index by id holds " + std::to_string(node_index_.size())
                     + " nodes, " + std::to_string(nodes_.size()) + " are known");
  // O(1): the order as it stands and the sessions admitted since it was
  // last read (check_invariants() reads it, and checks each entry).
  auto in_order = session_order_.size() + fresh_sessions_.size();
  if (in_order != sessions_.size())
    add(out, "I4", "the sessions in id order are "
                     + std::to_string(in_order) + ", "
                     + std::to_string(sessions_.size()) + " are live");
  if (session_due_.size() != sessions_.size()
      || session_timers_.size() != sessions_.size())
    add(out, "I4", "session timers hold " + std::to_string(session_due_.size())
                     + " sessions, " + std::to_string(sessions_.size())
                     + " are live");
  if (heads_.size() > classes_.size())  // each class's own: see check_indexes
    add(out, "I4", "the queue's class heads disagree with its classes");
  record_checks::check_accepted(sessions_.size(), sessions_completed_,
                                sessions_failed_, sessions_accepted(), out);
  record_checks::check_tests(tests_in_flight_, test_queue_.size(),
                             params_.max_tests_in_flight, out);
  if (tests_in_flight_ + test_queue_.size()
      > counts_[pb::TESTING] + counts_[pb::REVALIDATING])
    add(out, "I5", std::to_string(tests_in_flight_) + " tests in flight and "
                     + std::to_string(test_queue_.size()) + " waiting, but "
                     + std::to_string(counts_[pb::TESTING] + counts_[pb::REVALIDATING])
                     + " nodes testing or revalidating");
}

std::vector<violation> pool_state::check_records(
  const std::vector<std::string>& node_ids,
  const std::vector<std::string>& session_ids,
  const std::vector<pb::SessionRecord>& archived) const {
  std::vector<violation> out;
  std::set<std::string> sids{session_ids.begin(), session_ids.end()};
  std::set<std::string> nids{node_ids.begin(), node_ids.end()};
  for (auto& id : nids)
    if (auto* n = node(id)) {
      check_node(*n, out);
      if (!n->session_id().empty())
        sids.insert(n->session_id());
    }
  for (auto& id : sids)
    if (auto* s = session(id))
      check_session(*s, out);
  for (auto& s : archived)
    check_ended(s, out);
  check_counters(out);
  return out;
}

std::vector<violation> pool_state::check_after(const pb::Command& cmd,
                                               const apply_result& r) const {
  // Rare commands that may change every record are checked whole.
  if (touches_everything(cmd))
    return check_invariants();
  std::vector<std::string> nids, sids;
  for_each_touched(
    cmd, r, [&](const std::string& id) { nids.push_back(id); },
    [&](const std::string& id) { sids.push_back(id); });
  for (auto* n : last_noted_nodes_)
    nids.push_back(n->id());
  for (auto* s : last_noted_sessions_)
    sids.push_back(s->id());
  return check_records(nids, sids, r.archived);
}

std::vector<violation> pool_state::check_invariants() const {
  std::vector<violation> out;
  for (auto& [nid, n] : nodes_)
    check_node(n, out);
  for (auto& [sid, s] : sessions_)
    check_session(s, out);
  check_counters(out);
  // The models' pool indexes hold no one else: as many entries as the
  // ephemeral nodes serve models (check_node saw each of those), none empty.
  uint64_t served = 0, held = 0;
  for (auto& [nid, n] : nodes_)
    if (n.state() == pb::EPHEMERAL)
      record_checks::for_each_distinct_model(n, [&](auto&) { ++served; });
  for (auto& [m, idx] : pool_by_model_) {
    held += idx.size();
    if (idx.empty())
      add(out, "I3", "the pool index of model " + m + " is kept empty");
  }
  if (held != served)
    add(out, "I3", "the models' pool indexes hold " + std::to_string(held)
                     + " entries, the ephemeral nodes serve "
                     + std::to_string(served) + " models");
  // The indexes hold exactly the live sessions of their kind.
  uint64_t active = 0;
  for (auto& [sid, s] : sessions_)
    active += s.state() == pb::ACTIVE ? 1 : 0;
  if (active != active_)
    add(out, "I4", std::to_string(active) + " sessions are active, "
                     + std::to_string(active_) + " counted");
  // Members are pointers: only live records are looked into.
  std::unordered_set<const pb::SessionRecord*> live;
  for (auto& [sid, s] : sessions_)
    live.insert(&s);
  for (auto& k : ordered_sessions())  // as many as live (check_counters)
    if (!live.count(k.rec)) {
      add(out, "I4", "the sessions in id order hold one that is not live");
      break;
    }
  for (auto& [key, c] : classes_)
    for (auto& [seq, rec] : c.members) {
      if (!live.count(rec)) {
        add(out, "I4", "the queue holds a session that is not live, at place "
                         + std::to_string(seq));
        continue;
      }
      auto& s = *rec;
      class_key own{s.model(), s.min_level(), s.min_nodes()};
      if (s.state() != pb::QUEUED || s.seq() != seq || own < key || key < own)
        add(out, "I4", "queue holds " + s.id() + " which is not queued in that place");
    }
  // The queue's classes hold exactly the queued sessions; the counts by
  // model and level match a recount.
  size_t classed = 0;
  for (auto& [key, c] : classes_)
    classed += c.members.size();
  if (classed != queued_)
    add(out, "I4", std::to_string(classed) + " sessions in queue classes, "
                     + std::to_string(queued_) + " queued");
  size_t timed = 0, sent = 0, waiting = 0;
  for (auto& [nid, n] : nodes_) {
    timed += node_due(n) != never ? 1 : 0;
    sent += test_sent(n) ? 1 : 0;
    waiting += test_waiting(n) ? 1 : 0;
  }
  if (sent != tests_in_flight_ || waiting != test_queue_.size())
    add(out, "I5", std::to_string(tests_in_flight_) + " tests counted in flight and "
                     + std::to_string(test_queue_.size()) + " waiting, but "
                     + std::to_string(sent) + " and " + std::to_string(waiting)
                     + " nodes have one");
  if (timed != node_timers_.size())
    add(out, "I2", std::to_string(node_timers_.size()) + " node timers for "
                     + std::to_string(timed) + " nodes with a deadline");
  {
    // Keyed by views of the nodes' own strings: a few models, many nodes.
    std::unordered_map<std::string_view, level_counts> recount_m;
    level_counts recount_any;
    for (auto& [nid, n] : nodes_) {
      auto lv = std::min<uint32_t>(n.level(), 5);
      bool alive = counts_as_alive(n);
      bool avail = counts_as_available(n);
      record_checks::for_each_distinct_model(n, [&](const std::string& m) {
        auto& c = recount_m[m];
        c.alive[lv] += alive;
        c.available[lv] += avail;
      });
      recount_any.alive[lv] += alive;
      recount_any.available[lv] += avail;
    }
    bool same = recount_any.alive == any_->alive
                && recount_any.available == any_->available;
    for (auto& [m, c] : by_model_) {
      auto r = recount_m.find(m);
      level_counts zero;
      auto& want = r == recount_m.end() ? zero : r->second;
      same = same && want.alive == c.alive && want.available == c.available;
    }
    for (auto& [m, c] : recount_m)
      same = same && by_model_.count(std::string{m}) == 1;
    if (!same)
      add(out, "I5", "node counts by model and level disagree with a recount");
  }
  // I5: the maintained counts match a recount.
  std::array<uint64_t, 9> recount{};
  for (auto& [nid, n] : nodes_)
    if (valid_node_state(n.state()))
      ++recount[n.state()];
  for (size_t i = 0; i < counts_.size(); ++i)
    if (counts_[i] != recount[i])
      add(out, "I5", "count of " + to_string(static_cast<pb::NodeState>(i))
                       + " is " + std::to_string(counts_[i]) + " but "
                       + std::to_string(recount[i]) + " nodes are in it");
  return out;
}

params record_checks::params_of(const pb::Snapshot& snap) {
  params p;
  if (!snap.params_json().empty()) {
    std::string err;
    auto q = params_from_json(snap.params_json(), p, err);
    if (err.empty() && make_selection(q.selection))
      p = std::move(q);
  }
  return p;
}

std::vector<violation> check_snapshot(const pb::Snapshot& snap) {
  std::vector<violation> out;
  // By id, each id once (a restore would keep one record of an id given
  // twice, and lose the other).
  std::unordered_map<std::string_view, const pb::NodeRecord*> nodes;
  std::unordered_map<std::string_view, const pb::SessionRecord*> sessions;
  nodes.reserve(snap.nodes_size());
  sessions.reserve(snap.sessions_size());
  for (auto& n : snap.nodes())
    if (!nodes.emplace(n.id(), &n).second)
      add(out, "I5", "node " + n.id() + " is in the snapshot twice");
  for (auto& s : snap.sessions())
    if (!sessions.emplace(s.id(), &s).second)
      add(out, "I4", "session " + s.id() + " is in the snapshot twice");
  auto node_of = [&](const std::string& id) -> const pb::NodeRecord* {
    auto i = nodes.find(id);
    return i == nodes.end() ? nullptr : i->second;
  };
  auto session_of = [&](const std::string& id) -> const pb::SessionRecord* {
    auto i = sessions.find(id);
    return i == sessions.end() ? nullptr : i->second;
  };
  record_checks::check_snapshot_records(
    snap, record_checks::params_of(snap), snap.nodes(),
    snap.sessions(), [](auto& r) -> auto& { return r; }, node_of, session_of,
    out);
  return out;
}

} // namespace nodepool
