#pragma once

#include <string>
#include <vector>

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>

#include "nodepool.pb.h"
#include "params.hpp"

namespace nodepool {

/// Spawns the actor that runs one session's tasks on its reserved nodes.
///
/// Each task goes to `redundancy` of the session's nodes and runs through
/// phases with a deadline each (task_phase_timeout_ms):
///
///     sent --ack--> acked --precommit(hash)--> precommitted --commit(output)--> done
///       \_____________ deadline passed: TIMEOUT (forced end) _____________/
///                                   reveal != hash: MISMATCH
///
/// When every node is done or failed, the outputs that committed are compared
/// by embedding cosine similarity; outliers are reported as OUTLIER. The
/// session sends the outcomes as a TaskDone command and the pool decides what
/// they mean (reputation, release, quarantine, completion).
///
/// Messages: (events_atom, event_ref) about its session, forwarded by the
/// session queue (a pointer into the supervisor's shared batch, local.hpp);
/// (task_atom, node_id, session_id, MinerMsg bytes) from nodes.
caf::actor spawn_session(caf::actor_system& sys, caf::actor queue,
                         caf::actor supervisor, caf::actor gateway,
                         const params& pool, bool sim_time,
                         const pb::SessionStarted& start);

} // namespace nodepool
