#pragma once
// The part of I1-I5 (DESIGN.md) that a node or a session record shows by
// itself and through the records it names, with no index of the pool. Two
// users: pool_state's checks (which add what its indexes must agree with,
// invariants.cpp), and the check of a snapshot's records on the snapshot
// writer's thread (which has only the records: pool_state::frozen::check,
// check_snapshot).

#include <algorithm>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "pool_state.hpp"

namespace nodepool::record_checks {

inline void add(std::vector<violation>& out, const char* inv,
                std::string detail) {
  out.push_back(violation{inv, std::move(detail)});
}

inline bool valid_node_state(pb::NodeState st) {
  return st >= pb::REGISTERED && st <= pb::LOST;
}

/// Calls `f(model)` once for each model a node lists, a model listed twice
/// once (a node lists a few: no set is built, as the counts by model do).
template <class F>
void for_each_distinct_model(const pb::NodeRecord& n, F&& f) {
  auto& ms = n.models();
  for (int i = 0; i < ms.size(); ++i)
    if (std::find(ms.begin(), ms.begin() + i, ms[i]) == ms.begin() + i)
      f(ms[i]);
}

/// I5 (a known state), I1 (a reserved node belongs to the one active session
/// that lists it; no other node names a session), I2 (earned within the
/// ephemeral window) and I3 (a failed node is out of the pool). `session_of`
/// maps an id to the live session, or null. False when the node has no
/// known state (nothing else about it is checked then).
template <class SessionOf>
bool check_node(const pb::NodeRecord& n, int64_t ephemeral_window_ms,
                const SessionOf& session_of, std::vector<violation>& out) {
  auto& nid = n.id();
  if (!valid_node_state(n.state())) {
    add(out, "I5", "node " + nid + " has no state");
    return false;
  }
  if (n.state() == pb::RESERVED) {
    const pb::SessionRecord* s = session_of(n.session_id());
    if (!s || s->state() != pb::ACTIVE
        || std::count(s->nodes().begin(), s->nodes().end(), nid) != 1)
      add(out, "I1", "node " + nid + " reserved for '" + n.session_id()
                       + "' which does not list it once as an active session");
    if (n.passed_at() == 0 || n.passed_at() < n.reset_at())
      add(out, "I2", "node " + nid + " reserved without a test passed since "
                       "its last registration, release or loss");
    else if (n.reserved_at() - n.ephemeral_at()
             > (n.reserved_window_ms() > 0 ? n.reserved_window_ms()
                                           : ephemeral_window_ms))
      add(out, "I2", "node " + nid + " reserved after its ephemeral window");
  } else if (!n.session_id().empty()) {
    add(out, "I1", "node " + nid + " is " + to_string(n.state())
                     + " but names session " + n.session_id());
  }
  bool in_pool = n.state() == pb::EPHEMERAL || n.state() == pb::RESERVED;
  if (n.last_test_failed() && in_pool)
    add(out, "I3", "node " + nid + " failed its last test but is "
                     + to_string(n.state()));
  return true;
}

/// I4 (a live session is queued with no node, or active with some) and I1
/// (every node it lists, once, is reserved for it: a node listed by two
/// sessions names only one of them, so the other is caught here). `node_of`
/// maps an id to the node, or null.
template <class NodeOf>
void check_session(const pb::SessionRecord& s, const NodeOf& node_of,
                   std::vector<violation>& out) {
  auto& sid = s.id();
  switch (s.state()) {
    case pb::QUEUED:
      if (s.nodes_size() > 0)
        add(out, "I1", "session " + sid + " is queued but holds nodes");
      break;
    case pb::ACTIVE:
      if (s.nodes_size() == 0)
        add(out, "I4", "session " + sid + " is active with no node");
      break;
    case pb::COMPLETED:
    case pb::FAILED:
      add(out, "I4", "session " + sid + " has ended but is still live");
      break;
    default:
      add(out, "I4", "session " + sid + " has no state");
  }
  auto listed = [&](const std::string& nid) {
    const pb::NodeRecord* n = node_of(nid);
    if (!n || n->state() != pb::RESERVED || n->session_id() != sid)
      add(out, "I1", "session " + sid + " lists node " + nid
                       + " which is not reserved for it");
  };
  if (s.nodes_size() <= 1) {  // the common case: no set to build
    for (auto& nid : s.nodes())
      listed(nid);
    return;
  }
  std::set<std::string> seen;
  for (auto& nid : s.nodes()) {
    if (!seen.insert(nid).second)
      add(out, "I1", "session " + sid + " lists node " + nid + " twice");
    listed(nid);
  }
}

/// I4, nothing lost: the live sessions and those that ended add up to the
/// sessions ever accepted.
inline void check_accepted(uint64_t live, uint64_t completed, uint64_t failed,
                           uint64_t accepted, std::vector<violation>& out) {
  auto known = live + completed + failed;
  if (known != accepted)
    add(out, "I4", std::to_string(accepted) + " sessions accepted but "
                     + std::to_string(known)
                     + " known (live, completed or failed)");
}

} // namespace nodepool::record_checks

namespace nodepool::record_checks {

/// A snapshot's parameters (the defaults, if they do not decode: what a
/// restore would keep).
params params_of(const pb::Snapshot& snap);

/// I5 for the tests: none waits to be sent while fewer than the limit are
/// in flight (a place left free would hold the waiting ones back for good).
inline void check_tests(uint64_t sent, uint64_t waiting, uint32_t limit,
                        std::vector<violation>& out) {
  if (waiting > 0 && (limit == 0 || sent < limit))
    add(out, "I5", std::to_string(waiting) + " tests wait to be sent while "
                     + std::to_string(sent) + " are in flight, of at most "
                     + (limit == 0 ? std::string{"any number"} : std::to_string(limit)));
}

/// Every record of a snapshot against the records it names, and the
/// sessions accounted for. `nodes` and `sessions` are ranges, `rec(x)`
/// gives the record of one of their elements.
template <class Nodes, class Sessions, class Rec, class NodeOf, class SessionOf>
void check_snapshot_records(const pb::Snapshot& scalars, const params& p,
                            const Nodes& nodes, const Sessions& sessions,
                            const Rec& rec, const NodeOf& node_of,
                            const SessionOf& session_of,
                            std::vector<violation>& out) {
  uint64_t sent = 0, waiting = 0;
  for (auto& x : nodes) {
    check_node(rec(x), p.ephemeral_window_ms, session_of, out);
    sent += test_sent(rec(x)) ? 1 : 0;
    waiting += test_waiting(rec(x)) ? 1 : 0;
  }
  check_tests(sent, waiting, p.max_tests_in_flight, out);
  uint64_t live = 0;
  for (auto& x : sessions) {
    check_session(rec(x), node_of, out);
    ++live;
  }
  check_accepted(live, scalars.sessions_completed(), scalars.sessions_failed(),
                 scalars.next_session_seq() - 1, out);
}

} // namespace nodepool::record_checks
