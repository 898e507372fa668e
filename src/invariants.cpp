// I1..I5 of DESIGN.md, checked on one state. `nodepool check` runs this after
// every entry of a stored history; tests run it after every command.
#include "pool_state.hpp"

#include <algorithm>

namespace nodepool {

std::vector<violation> pool_state::check_invariants() const {
  std::vector<violation> out;
  auto add = [&](const char* inv, std::string detail) {
    out.push_back(violation{inv, std::move(detail)});
  };
  // I1 exclusive: node <-> session links agree both ways, once each.
  std::map<std::string, std::string> holder;
  for (auto& [sid, s] : sessions_) {
    if (s.state() != pb::ACTIVE && s.nodes_size() > 0)
      add("I1", "session " + sid + " is " + to_string(s.state())
                  + " but holds nodes");
    for (auto& nid : s.nodes()) {
      auto [it, fresh] = holder.emplace(nid, sid);
      if (!fresh)
        add("I1", "node " + nid + " held by " + it->second + " and " + sid);
      auto* n = node(nid);
      if (!n || n->state() != pb::RESERVED || n->session_id() != sid)
        add("I1", "session " + sid + " lists node " + nid
                    + " which is not reserved for it");
    }
  }
  for (auto& [nid, n] : nodes_) {
    if (n.state() == pb::RESERVED) {
      auto h = holder.find(nid);
      if (h == holder.end() || h->second != n.session_id())
        add("I1", "node " + nid + " reserved for '" + n.session_id()
                    + "' which does not list it");
    } else if (!n.session_id().empty()) {
      add("I1", "node " + nid + " is " + to_string(n.state())
                  + " but names session " + n.session_id());
    }
  }
  // I2 earned: a reserved node passed a test after its last reset and
  // within the ephemeral window.
  for (auto& [nid, n] : nodes_) {
    if (n.state() != pb::RESERVED)
      continue;
    if (n.passed_at() == 0 || n.passed_at() < n.reset_at())
      add("I2", "node " + nid + " reserved without a test passed since "
                  "its last registration, release or loss");
    else if (n.reserved_at() - n.ephemeral_at() > params_.ephemeral_window_ms)
      add("I2", "node " + nid + " reserved after its ephemeral window");
  }
  // I3 kept out: failed nodes are not in the pool.
  for (auto& [nid, n] : nodes_) {
    bool in_pool = n.state() == pb::EPHEMERAL || n.state() == pb::RESERVED;
    if (n.last_test_failed() && in_pool)
      add("I3", "node " + nid + " failed its last test but is "
                  + to_string(n.state()));
    if ((n.state() == pb::EPHEMERAL) != (pool_.count(entry_of(n)) == 1))
      add("I3", "pool index disagrees with the state, rank or key of node "
                  + nid);
  }
  if (pool_.size() != counts_[pb::EPHEMERAL])
    add("I3", "pool index holds " + std::to_string(pool_.size())
                + " nodes, " + std::to_string(counts_[pb::EPHEMERAL])
                + " are ephemeral");
  // I4 nothing lost: every accepted session has a known fate.
  if (sessions_.size() != next_session_seq_ - 1)
    add("I4", std::to_string(next_session_seq_ - 1) + " sessions accepted but "
                + std::to_string(sessions_.size()) + " known");
  for (auto& [sid, s] : sessions_) {
    switch (s.state()) {
      case pb::QUEUED:
        if (queue_.count(s.seq()) == 0)
          add("I4", "session " + sid + " is queued but not in the queue");
        break;
      case pb::ACTIVE:
        if (s.nodes_size() == 0)
          add("I4", "session " + sid + " is active with no node");
        break;
      case pb::COMPLETED:
        break;
      case pb::FAILED:
        if (s.reason().empty())
          add("I4", "session " + sid + " failed without a reason");
        break;
      default:
        add("I4", "session " + sid + " has no state");
    }
  }
  // The active index holds exactly the ACTIVE sessions (counted here, the
  // membership of each listed one checked below: no lookup per session).
  size_t active = 0;
  for (auto& [sid, s] : sessions_)
    active += s.state() == pb::ACTIVE ? 1 : 0;
  if (active != active_.size())
    add("I4", std::to_string(active) + " sessions are active but the index "
                "holds " + std::to_string(active_.size()));
  for (auto& [sid, rec] : active_) {
    auto* s = session(sid);
    if (!s || s != rec || s->state() != pb::ACTIVE)
      add("I4", "active index holds " + sid + " which is not active");
  }
  for (auto& [seq, sid] : queue_) {
    auto* s = session(sid);
    if (!s || s->state() != pb::QUEUED || s->seq() != seq)
      add("I4", "queue holds " + sid + " which is not queued in that place");
  }
  // I5 conservation: the maintained counts match a recount and add up.
  std::array<uint64_t, 9> recount{};
  for (auto& [nid, n] : nodes_) {
    auto st = static_cast<size_t>(n.state());
    if (st == 0 || st >= recount.size())
      add("I5", "node " + nid + " has no state");
    else
      ++recount[st];
  }
  uint64_t sum = 0;
  for (size_t i = 0; i < counts_.size(); ++i) {
    sum += counts_[i];
    if (counts_[i] != recount[i])
      add("I5", "count of " + to_string(static_cast<pb::NodeState>(i)) + " is "
                  + std::to_string(counts_[i]) + " but "
                  + std::to_string(recount[i]) + " nodes are in it");
  }
  if (sum != nodes_.size())
    add("I5", "counts add up to " + std::to_string(sum) + ", not "
                + std::to_string(nodes_.size()));
  return out;
}

} // namespace nodepool
