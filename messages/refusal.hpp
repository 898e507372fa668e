#pragma once

// Refusal codes (pb::RefusalCode, nodepool.proto) and their texts. Inside
// the oracle a refusal carries the enum; its text is made at the edges: a
// miner's or client's Refusal message (both, for peers of before the
// enum), the HTTP API's JSON, metrics' labels, logs.
#include <string>
#include <string_view>

#include "nodepool.pb.h"

namespace nodepool {

/// The code's text: its name in lower case without "REFUSAL_" (REFUSAL_RETIRED
/// is "retired"). Empty for REFUSAL_NONE and for a value this build does
/// not know (a peer's newer code).
const std::string& refusal_name(pb::RefusalCode code);

/// The code a text names (the inverse of refusal_name); REFUSAL_NONE for a
/// text that names none.
pb::RefusalCode refusal_code(std::string_view text);

/// Why something was refused (a command by the pool, a registration by the
/// authenticator, a miner's task message by its round): `code` is what
/// miners and clients branch on, its text made where it leaves the oracle;
/// `detail` is for humans.
struct refusal {
  pb::RefusalCode code = pb::REFUSAL_NONE;
  std::string detail;
  const std::string& name() const { return refusal_name(code); }
};

} // namespace nodepool
