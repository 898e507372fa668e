#pragma once

// The supervisor's events inside one process. Every subscriber (the
// validator, the session queue, the HTTP API's feed, the demo's and the
// bench's drivers) lives in the oracle's process, so a group commit's
// events go out as one immutable batch that all of them share: nothing is
// encoded for them and none decodes it again. The session queue hands each
// session actor the events about it as pointers into that batch.
#include <memory>

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

} // namespace nodepool

// Passed between actors of one process only: never encoded (a peer in
// another process that subscribed would receive nothing it can read).
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(nodepool::event_batch)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(nodepool::event_ref)
