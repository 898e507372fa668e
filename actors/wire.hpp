#pragma once

// Small helpers shared by the oracle actors for building wire messages.
#include <string>

#include "nodepool.pb.h"

namespace nodepool {

inline std::string refusal_bytes(const std::string& code,
                                 const std::string& detail) {
  pb::OracleMsg m;
  m.mutable_refusal()->set_code(code);
  m.mutable_refusal()->set_detail(detail);
  return m.SerializeAsString();
}

} // namespace nodepool
