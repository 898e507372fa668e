// Miner messages (pb::MinerMsg) as the gateway receives them: decoded with
// ParseFromString, checked the way actors/gateway.cpp checks them (a
// connection acts for one node only, a registration or heartbeat must name
// the sender), and registrations, changes of mode and dropped connections
// turned into the Command the gateway sends and applied to a pool that holds
// a few nodes and sessions. After every command I1..I5 must hold.
//
// Input: the fields of a protobuf message; field 1 (bytes) = one serialized
// pb::MinerMsg from the current connection, field 2 (varint) = milliseconds
// the clock moves, field 3 (varint) = switch to connection value % 4,
// field 4 (varint) = connection value % 4 goes down. Without any field 1 the
// whole input is one message from connection 0.
#include <array>
#include <map>

#include "fuzz_common.hpp"

using namespace nodepool;

namespace {

/// What the gateway keeps per connection and per node.
struct gateway {
  std::array<std::string, 4> by_conn;  // connection -> bound node ("" none)
  std::map<std::string, size_t> by_node;
  std::map<std::string, pb::NodeMode> mode;
  uint64_t refused = 0;

  void down(pool_state& pool, size_t conn, int64_t now) {
    auto id = by_conn[conn];
    if (id.empty())
      return;
    by_conn[conn].clear();
    by_node.erase(id);
    mode.erase(id);
    pb::Command c;
    c.mutable_node_down()->set_node_id(id);
    c.mutable_node_down()->set_reason("connection down");
    fuzz::apply_checked(pool, c, now);
  }

  void receive(pool_state& pool, size_t conn, const std::string& bytes,
               int64_t now) {
    pb::MinerMsg m;
    if (!m.ParseFromString(bytes)
        || m.kind_case() == pb::MinerMsg::KIND_NOT_SET) {
      ++refused;  // "malformed"
      return;
    }
    auto& id = m.node_id();
    if (m.has_register_()) {
      if (m.register_().node_id() != id) {
        ++refused;
        return;
      }
      auto b = by_node.find(id);
      if ((b != by_node.end() && b->second != conn)
          || (!by_conn[conn].empty() && by_conn[conn] != id)) {
        ++refused;
        return;
      }
      pb::Command c;
      *c.mutable_register_() = m.register_();
      auto r = fuzz::apply_checked(pool, c, now);
      if (r.refused) {
        ++refused;
        return;
      }
      by_conn[conn] = id;
      by_node[id] = conn;
      mode[id] = pb::AVAILABLE;
      return;
    }
    if (by_conn[conn].empty() || by_conn[conn] != id) {
      ++refused;  // "not_registered" / "not_your_node"
      return;
    }
    if (m.has_heartbeat()) {
      if (m.heartbeat().node_id() != id) {
        ++refused;
        return;
      }
      if (mode[id] != m.heartbeat().mode()) {
        mode[id] = m.heartbeat().mode();
        pb::Command c;
        *c.mutable_heartbeat() = m.heartbeat();
        fuzz::apply_checked(pool, c, now);
      }
    }
    // Test answers go to the validator and task messages to the session
    // actors; neither is a pool command.
  }
};

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  pool_state pool{fuzz::base_params()};
  fuzz::reset_to_base(pool);
  int64_t now = pool.last_now() + 100;
  auto fs = fuzz::frames(data, size);
  bool any = false;
  for (auto& f : fs)
    any = any || (f.field == 1 && !f.is_varint);
  if (!any)
    fs = {fuzz::frame{1, std::string(reinterpret_cast<const char*>(data), size)}};
  gateway gw;
  size_t conn = 0;
  for (auto& f : fs) {
    if (f.is_varint) {
      if (f.field == 2)
        now += static_cast<int64_t>(f.value % 86'400'000);
      else if (f.field == 3)
        conn = f.value % gw.by_conn.size();
      else if (f.field == 4)
        gw.down(pool, f.value % gw.by_conn.size(), now);
      continue;
    }
    if (f.field == 1)
      gw.receive(pool, conn, f.bytes, now);
    now += 10;
  }
  // Ticks at the end: tests time out, heartbeats are due.
  pb::Command tick;
  tick.mutable_tick();
  for (int i = 0; i < 3; ++i)
    fuzz::apply_checked(pool, tick, now += 60'000);
  return 0;
}
