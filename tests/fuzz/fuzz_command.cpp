// Commands as they reach the pool supervisor from outside (clients, miners
// through the gateway, session and validator actors): each is decoded with
// ParseFromString and applied to a pool that holds a few nodes and sessions.
// After every command I1..I5 must hold and a refused command must have
// changed nothing.
//
// Input: the fields of a protobuf message; field 1 (bytes) = one serialized
// pb::Command, field 2 (varint) = milliseconds the clock moves before the
// next command (capped at one day). Without any field 1 the whole input is
// taken as one serialized command.
#include "fuzz_common.hpp"

using namespace nodepool;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  pool_state pool{fuzz::base_params()};
  fuzz::reset_to_base(pool);
  int64_t now = pool.last_now() + 100;
  auto fs = fuzz::frames(data, size);
  std::vector<std::string> cmds;
  for (auto& f : fs)
    if (f.field == 1 && !f.is_varint)
      cmds.push_back(f.bytes);
  if (cmds.empty())
    fs = {fuzz::frame{1, std::string(reinterpret_cast<const char*>(data), size)}};
  for (auto& f : fs) {
    if (f.field == 2 && f.is_varint) {
      now += static_cast<int64_t>(f.value % 86'400'000);
      continue;
    }
    if (f.field != 1 || f.is_varint)
      continue;
    pb::Command c;
    if (!c.ParseFromString(f.bytes))
      continue;  // the supervisor refuses it as malformed
    fuzz::apply_checked(pool, c, now);
    now += 10;
  }
  // The state must survive a snapshot round trip unchanged.
  auto snap = pool.snapshot();
  pool_state again{fuzz::base_params()};
  again.restore(snap);
  fuzz::require_invariants(again, "after a snapshot round trip");
  if (again.snapshot().SerializeAsString() != snap.SerializeAsString())
    fuzz::fail("snapshot round trip changed the state");
  return 0;
}
