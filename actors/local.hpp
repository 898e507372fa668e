#pragma once

// Messages that stay inside one process: decoded once, at the edge, and
// passed whole between the oracle's actors from then on.
//
// Events: every subscriber of the supervisor (the validator, the session
// queue, the HTTP API's feed, the demo's and the bench's drivers) lives in
// the oracle's process, so a group commit's events go out as one immutable
// batch that all of them share: nothing is encoded for them and none
// decodes it again. The session queue hands each session actor the events
// about it as pointers into that batch.
//
// Commands: the actors that build commands for the supervisor (gateway,
// validator, session queue, sessions, the HTTP API, the bench's driver)
// hand them over as built; the supervisor moves each into its log entry,
// where it is encoded once. What another process sends (a miner's or a
// client's bytes) is decoded where it arrives, by the gateway or the
// session queue, which build the command; the supervisor takes no bytes.
#include <memory>
#include <utility>

#include <caf/allowed_unsafe_message_type.hpp>

#include "nodepool.pb.h"

namespace nodepool {

/// (events_atom, event_batch): one group commit's events, as published.
using event_batch = std::shared_ptr<const pb::EventBatch>;
/// (events_atom, event_ref): one event, keeping its batch alive.
using event_ref = std::shared_ptr<const pb::Event>;

/// Takes `b`'s events (leaving it empty) into a batch to publish.
inline event_batch share_events(pb::EventBatch& b) {
  auto out = std::make_shared<pb::EventBatch>();
  out->Swap(&b);
  return out;
}

/// Event `i` of `b`, sharing `b`'s ownership.
inline event_ref event_of(const event_batch& b, int i) {
  return event_ref{b, &b->events(i)};
}

/// (cmd_atom, local_command[, ticket]): a command for the supervisor, sent
/// to it alone. The supervisor takes its content (into the log entry), so
/// the sender keeps no use of it.
using local_command = std::shared_ptr<pb::Command>;

/// A command filled by `fill`, ready to send.
template <class Fill>
local_command make_command(Fill&& fill) {
  auto c = std::make_shared<pb::Command>();
  fill(*c);
  return c;
}

} // namespace nodepool

// Passed between actors of one process only: never encoded (a peer in
// another process that subscribed would receive nothing it can read).
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(nodepool::event_batch)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(nodepool::event_ref)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(nodepool::local_command)
// A refusal's code between the oracle's actors (a command's answer, a
// refusal the gateway passes on to a miner); its text is made where it
// leaves the process (refusal_name).
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(nodepool::pb::RefusalCode)
