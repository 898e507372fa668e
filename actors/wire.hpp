#pragma once

// Small helpers shared by the oracle actors for building wire messages.
#include <string>

#include "nodepool.pb.h"
#include "refusal.hpp"

namespace nodepool {

/// A refusal for a miner: the code both as the enum it branches on and as
/// text (what miners of before the enum read).
inline std::string refusal_bytes(pb::RefusalCode code,
                                 const std::string& detail) {
  pb::OracleMsg m;
  m.mutable_refusal()->set_kind(code);
  m.mutable_refusal()->set_code(refusal_name(code));
  m.mutable_refusal()->set_detail(detail);
  return m.SerializeAsString();
}

} // namespace nodepool
