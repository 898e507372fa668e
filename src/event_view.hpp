#pragma once

// A pool event as people read it: its type name and its fields, for the
// event log lines and the API's live event stream (the same names in both).

#include <nlohmann/json.hpp>

#include "log.hpp"
#include "nodepool.pb.h"

namespace nodepool {

/// {"type": "node_state_changed", "node_id": ..., "from": "testing", ...}
/// (states in lower case, as the API names them). An empty event gives
/// {"type": "unknown"}.
nlohmann::json event_json(const pb::Event& e);

/// The same fields as text (arrays joined with ','), without "type".
log_fields event_fields(const nlohmann::json& j);

} // namespace nodepool
