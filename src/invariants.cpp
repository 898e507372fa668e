// I1..I5 of DESIGN.md. Two entry points over the same per-record checks:
// check_invariants() visits the whole state (at snapshots and at the end of
// a history); check_after() visits what one command touched, so checking a
// history after every entry costs time linear in its length.
#include "pool_state.hpp"
#include "touched.hpp"

#include <algorithm>
#include <set>
#include <unordered_set>

namespace nodepool {

namespace {

void add(std::vector<violation>& out, const char* inv, std::string detail) {
  out.push_back(violation{inv, std::move(detail)});
}

bool valid_node_state(pb::NodeState st) {
  return st >= pb::REGISTERED && st <= pb::LOST;
}

} // namespace

void pool_state::check_node(const pb::NodeRecord& n,
                            std::vector<violation>& out) const {
  auto& nid = n.id();
  // I5: a node is in exactly one known state.
  if (!valid_node_state(n.state())) {
    add(out, "I5", "node " + nid + " has no state");
    return;
  }
  // I1 exclusive: a reserved node belongs to one active session that lists
  // it; any other node belongs to none.
  if (n.state() == pb::RESERVED) {
    auto* s = live_session(n.session_id());
    if (!s || s->state() != pb::ACTIVE
        || std::count(s->nodes().begin(), s->nodes().end(), nid) != 1)
      add(out, "I1", "node " + nid + " reserved for '" + n.session_id()
                       + "' which does not list it once as an active session");
    // I2 earned: it passed a test after its last reset, within the window.
    if (n.passed_at() == 0 || n.passed_at() < n.reset_at())
      add(out, "I2", "node " + nid + " reserved without a test passed since "
                       "its last registration, release or loss");
    else if (n.reserved_at() - n.ephemeral_at() > params_.ephemeral_window_ms)
      add(out, "I2", "node " + nid + " reserved after its ephemeral window");
  } else if (!n.session_id().empty()) {
    add(out, "I1", "node " + nid + " is " + to_string(n.state())
                     + " but names session " + n.session_id());
  }
  check_indexes(n, out);
  // I3 kept out: a failed node is not in the pool, and the pool index
  // holds exactly the ephemeral nodes, under their current rank and key.
  bool in_pool = n.state() == pb::EPHEMERAL || n.state() == pb::RESERVED;
  if (n.last_test_failed() && in_pool)
    add(out, "I3", "node " + nid + " failed its last test but is "
                     + to_string(n.state()));
  if ((n.state() == pb::EPHEMERAL) != (pool_.count(entry_of(n)) == 1))
    add(out, "I3", "pool index disagrees with the state, rank or key of node "
                     + nid);
}

void pool_state::check_session(const pb::SessionRecord& s,
                               std::vector<violation>& out) const {
  auto& sid = s.id();
  switch (s.state()) {
    case pb::QUEUED: {
      // Its place in the queue: check_indexes (its class).
      if (s.nodes_size() > 0)
        add(out, "I1", "session " + sid + " is queued but holds nodes");
      break;
    }
    case pb::ACTIVE: {
      if (s.nodes_size() == 0)
        add(out, "I4", "session " + sid + " is active with no node");
      break;
    }
    case pb::COMPLETED:
    case pb::FAILED:
      add(out, "I4", "session " + sid + " has ended but is still live");
      break;
    default:
      add(out, "I4", "session " + sid + " has no state");
  }
  check_indexes(s, out);
  if (live_session(sid) != &s)
    add(out, "I4", "the live sessions by id do not lead to session " + sid);
  // I1: every node it lists is reserved for it (a node listed by two
  // sessions names only one of them, so the other is caught here).
  std::set<std::string> seen;
  for (auto& nid : s.nodes()) {
    if (!seen.insert(nid).second)
      add(out, "I1", "session " + sid + " lists node " + nid + " twice");
    auto* n = node(nid);
    if (!n || n->state() != pb::RESERVED || n->session_id() != sid)
      add(out, "I1", "session " + sid + " lists node " + nid
                       + " which is not reserved for it");
  }
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
  if (session_due_.size() != sessions_.size()
      || session_timers_.size() != sessions_.size())
    add(out, "I4", "session timers hold " + std::to_string(session_due_.size())
                     + " sessions, " + std::to_string(sessions_.size())
                     + " are live");
  if (heads_.size() != classes_.size())
    add(out, "I4", "the queue's class heads disagree with its classes");
  auto known = sessions_.size() + sessions_completed_ + sessions_failed_;
  if (known != sessions_accepted())
    add(out, "I4", std::to_string(sessions_accepted())
                     + " sessions accepted but " + std::to_string(known)
                     + " known (live, completed or failed)");
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
  size_t timed = 0;
  for (auto& [nid, n] : nodes_)
    timed += node_due(n) != INT64_MAX ? 1 : 0;
  if (timed != node_timers_.size())
    add(out, "I2", std::to_string(node_timers_.size()) + " node timers for "
                     + std::to_string(timed) + " nodes with a deadline");
  {
    std::map<std::string, level_counts> recount_m;
    level_counts recount_any;
    for (auto& [nid, n] : nodes_) {
      auto lv = std::min<uint32_t>(n.level(), 5);
      bool alive = counts_as_alive(n);
      bool avail = counts_as_available(n);
      std::set<std::string> ms{n.models().begin(), n.models().end()};
      for (auto& m : ms) {
        recount_m[m].alive[lv] += alive;
        recount_m[m].available[lv] += avail;
      }
      recount_any.alive[lv] += alive;
      recount_any.available[lv] += avail;
    }
    bool same = recount_any.alive == any_.alive
                && recount_any.available == any_.available;
    for (auto& [m, c] : by_model_) {
      auto r = recount_m.find(m);
      level_counts zero;
      auto& want = r == recount_m.end() ? zero : r->second;
      same = same && want.alive == c.alive && want.available == c.available;
    }
    for (auto& [m, c] : recount_m)
      same = same && by_model_.count(m) == 1;
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

} // namespace nodepool
