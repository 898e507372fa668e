#pragma once
// The records one command names: its own node or session, and every node
// and session its events name. With the records the pool noted while
// applying it (note_node, note_session: a session that lost a node to a
// NodeDown is named by no event) they are every record the command changed:
// what check_after() checks and what freeze() copies again (the randomized
// test PoolRandomized.AFrozenSnapshotIsTheWholeStateForSeeds1To200 finds a
// record missed by either list alone). Three rare commands are not covered and
// count as touching everything: a Configure re-ranks the whole pool, and a
// Recover or a TakeOver (once per restart or leader change) restarts the
// queue timeout of every queued session and the wait of every node.

#include "pool_state.hpp"

namespace nodepool {

inline bool touches_everything(const pb::Command& cmd) {
  return cmd.has_configure() || cmd.has_recover() || cmd.has_take_over();
}

/// Calls `node(id)` and `session(id)` for each record `cmd` touched (with
/// repeats); not for a command that touches_everything().
template <class NodeFn, class SessionFn>
void for_each_touched(const pb::Command& cmd, const apply_result& r,
                      NodeFn&& node, SessionFn&& session) {
  switch (cmd.kind_case()) {
    case pb::Command::kRegister: node(cmd.register_().node_id()); break;
    case pb::Command::kHeartbeat: node(cmd.heartbeat().node_id()); break;
    case pb::Command::kTestResult: node(cmd.test_result().node_id()); break;
    case pb::Command::kNodeDown: node(cmd.node_down().node_id()); break;
    case pb::Command::kAdminNode: node(cmd.admin_node().node_id()); break;
    case pb::Command::kSubmitSession:
      session(cmd.submit_session().session_id());
      break;
    case pb::Command::kEndSession: session(cmd.end_session().session_id()); break;
    case pb::Command::kTaskDone:
      session(cmd.task_done().session_id());
      for (auto& o : cmd.task_done().outcomes())
        node(o.node_id());
      break;
    default:
      break;
  }
  for (auto& e : r.events) {
    switch (e.kind_case()) {
      case pb::Event::kNodeStateChanged:
        node(e.node_state_changed().node_id());
        break;
      case pb::Event::kTestRequested: node(e.test_requested().node_id()); break;
      case pb::Event::kTestFinished: node(e.test_finished().node_id()); break;
      case pb::Event::kNodeReserved:
        node(e.node_reserved().node_id());
        session(e.node_reserved().session_id());
        break;
      case pb::Event::kNodeReleased:
        node(e.node_released().node_id());
        session(e.node_released().session_id());
        break;
      case pb::Event::kSessionAccepted:
        session(e.session_accepted().session_id());
        break;
      case pb::Event::kSessionStarted:
        session(e.session_started().session_id());
        break;
      case pb::Event::kSessionEnded: session(e.session_ended().session_id()); break;
      default:
        break;
    }
  }
}

} // namespace nodepool
