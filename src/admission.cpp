// Admission: registration, return from LOST, and the start of every test.
#include "pool_state.hpp"

#include <algorithm>

#include "bounds.hpp"

namespace nodepool {

void pool_state::apply_register(const pb::Register& c, int64_t now,
                                apply_result& out) {
  if (!bounds::valid_id(c.node_id())) {
    out.refused = refusal{pb::REFUSAL_BAD_NODE_ID,
                          "node id must be 1..128 chars of [A-Za-z0-9-_.:]"};
    return;
  }
  if (c.models_size() == 0) {
    out.refused = refusal{pb::REFUSAL_NO_MODELS, "a node must serve at least one model"};
    return;
  }
  // The gateway refuses these first; a log written otherwise (or a peer's)
  // is held to the same bounds. An empty name would also read as "any
  // model" in the queue's counts on one side of a snapshot and not the other.
  if (!bounds::valid_models(c.models())) {
    out.refused = refusal{pb::REFUSAL_BAD_MODELS, bounds::models_rule()};
    return;
  }
  auto* found = live_node(c.node_id());
  if (!found) {
    auto& n = nodes_[c.node_id()];
    n.set_id(c.node_id());
    node_index_.insert(&n);  // under its id, set just above
    n.set_public_key(c.public_key());
    *n.mutable_models() = c.models();
    n.set_reputation(0.5);
    n.set_added_at(now);
    n.set_reset_at(now);
    n.set_last_heartbeat(now);
    set_state(n, pb::REGISTERED, "registered", out);
    start_test(n, pb::ADMISSION, now, out);
    return;
  }
  auto& n = *found;
  if (!n.public_key().empty() && n.public_key() != c.public_key()) {
    out.refused = refusal{pb::REFUSAL_KEY_MISMATCH,
                          "node " + n.id() + " is registered with another key"};
    return;
  }
  if (n.state() == pb::RETIRED) {
    out.refused = refusal{pb::REFUSAL_RETIRED, "node " + n.id() + " was retired after "
                                       + std::to_string(n.strikes())
                                       + " consecutive failures"};
    return;
  }
  // In the pool, it moves to the indexes of the models it now serves (the
  // same list: it stays where it is, at no cost).
  bool same = std::equal(n.models().begin(), n.models().end(),
                         c.models().begin(), c.models().end());
  bool move = !same && n.state() == pb::EPHEMERAL;
  if (move)
    pool_remove(n);
  if (!same)
    *n.mutable_models() = c.models();
  if (move)
    pool_add(n);
  n.set_last_heartbeat(now);
  // A node that registers starts out available, which is also what the
  // gateway assumes: it forwards a heartbeat only when its mode differs from
  // the last one it saw, so a mode left over from before would stick.
  n.set_mode(pb::AVAILABLE);
  if (n.rejoin_by() > 0 && n.state() != pb::LOST) {
    // Back after a change of leader, in time: it keeps its state. A test
    // in flight is sent again (the old one went to the old leader); an
    // active session resumes once all its nodes are back.
    n.set_rejoin_by(0);
    if (n.state() == pb::TESTING || n.state() == pb::REVALIDATING) {
      start_test(n, n.test_kind(), now, out);
      return;
    }
    note_node(n);
    out.changed = true;
    if (n.state() == pb::RESERVED)
      if (auto* s = live_session(n.session_id()))
        maybe_resume(*s, out);
    return;
  }
  if (test_sent(n)) {
    // A test is not redrawn by registering again: the one under way
    // counts as failed (a miner could otherwise read its questions and
    // ask for others until it drew a set it can answer).
    fail_test(n, "abandoned", "registered again during its test", now, out);
    return;
  }
  if (test_waiting(n)) {
    // Its test has not been sent: it keeps its place in the queue.
    note_node(n);  // its models may have changed
    out.changed = true;
    return;
  }
  if (n.state() == pb::QUARANTINED) {
    // A miner restart does not shorten its quarantine.
    note_node(n);  // its models may have changed
    out.changed = true;
    return;
  }
  if (n.state() == pb::LOST && n.last_test_failed()
      && now < n.quarantine_until()) {
    // Nor does going away and coming back.
    set_state(n, pb::QUARANTINED, "returned within its quarantine", out);
    return;
  }
  // Whatever it was doing, a node that registers again (miner restart,
  // return from LOST) is tested before it serves.
  if (n.state() == pb::RESERVED)
    lose(n, "registered again", now, out);
  n.set_reset_at(now);
  start_test(n, pb::ADMISSION, now, out);
}

namespace {

const char* test_why(pb::TestKind kind) {
  return kind == pb::ADMISSION      ? "admission test"
         : kind == pb::REVALIDATION ? "re-validation"
                                    : "retest";
}

} // namespace

void pool_state::start_test(pb::NodeRecord& n, pb::TestKind kind, int64_t now,
                            apply_result& out) {
  // A test sent again (the node back after a change of leader) keeps its
  // place among those in flight; a re-validation never waits (its node has
  // just served, and the pool is short of it); the rest wait behind those
  // already waiting once max_tests_in_flight are out.
  bool had_place = test_sent(n);
  auto limit = params_.max_tests_in_flight;
  bool wait = !had_place && kind != pb::REVALIDATION && limit > 0
              && (tests_in_flight_ >= limit || !test_queue_.empty());
  auto id = next_test_id_++;
  n.set_test_id(id);
  n.set_test_kind(kind);
  n.set_test_deadline(wait ? 0 : now + params_.test_deadline_ms);
  auto to = kind == pb::REVALIDATION ? pb::REVALIDATING : pb::TESTING;
  if (wait) {
    set_state(n, to,
              std::string{test_why(kind)} + ", waiting to be sent (max_tests_in_flight)",
              out);
    out.changed = true;  // a test asked for again from TESTING has no event
    return;
  }
  set_state(n, to, test_why(kind), out);
  test_requested(n, out);
}

void pool_state::send_test(pb::NodeRecord& n, int64_t now, apply_result& out) {
  n.set_test_deadline(now + params_.test_deadline_ms);
  n.set_state_reason(test_why(n.test_kind()));
  note_node(n);  // out of the queue, among the tests in flight
  test_requested(n, out);
}

void pool_state::test_requested(const pb::NodeRecord& n, apply_result& out) {
  out.events.emplace_back();
  auto* t = out.events.back().mutable_test_requested();
  t->set_node_id(n.id());
  t->set_test_id(n.test_id());
  t->set_deadline(n.test_deadline());
  t->set_kind(n.test_kind());
  t->set_level(n.level());
  *t->mutable_models() = n.models();
}

void pool_state::send_waiting_tests(int64_t now, apply_result& out) {
  auto limit = params_.max_tests_in_flight;
  while (!test_queue_.empty() && (limit == 0 || tests_in_flight_ < limit)) {
    auto* n = live_node(test_queue_.begin()->second->id());
    if (!n)  // a drifted index: the invariant checks report it
      break;
    send_test(*n, now, out);
  }
}

} // namespace nodepool
