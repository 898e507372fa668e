// Shared by the libFuzzer targets: the framing of multi-message inputs, a
// pool with a few registered nodes and sessions, and the checks that turn a
// broken property into a crash libFuzzer reports.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/stubs/logging.h>
#include <google/protobuf/wire_format_lite.h>

#include "pool_state.hpp"

namespace nodepool::fuzz {

/// Protobuf's complaints about invalid UTF-8 in string fields are expected
/// here by the million; they are silenced (the parse still fails).
inline const bool protobuf_quiet = [] {
  google::protobuf::SetLogHandler(nullptr);
  return true;
}();

/// One field of a framed input: `field` is the protobuf field number; `bytes`
/// holds a length-delimited field's content, `value` a varint field's value.
struct frame {
  uint32_t field = 0;
  std::string bytes;
  uint64_t value = 0;
  bool is_varint = false;
};

/// Splits an input written as the fields of a protobuf message (what
/// make_seeds writes: field 1 = a serialized message, field 2 = a varint,
/// ...). Stops at the first field that does not decode; at most `max`
/// frames, so that one input stays cheap.
inline std::vector<frame> frames(const uint8_t* data, size_t size,
                                 size_t max = 64) {
  using google::protobuf::internal::WireFormatLite;
  std::vector<frame> out;
  google::protobuf::io::CodedInputStream in{data, static_cast<int>(size)};
  while (out.size() < max) {
    auto tag = in.ReadTag();
    if (tag == 0)
      break;
    frame f;
    f.field = WireFormatLite::GetTagFieldNumber(tag);
    auto type = WireFormatLite::GetTagWireType(tag);
    if (type == WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
      uint32_t len = 0;
      if (!in.ReadVarint32(&len) || !in.ReadString(&f.bytes, len))
        break;
    } else if (type == WireFormatLite::WIRETYPE_VARINT) {
      if (!in.ReadVarint64(&f.value))
        break;
      f.is_varint = true;
    } else {
      break;
    }
    out.push_back(std::move(f));
  }
  return out;
}

[[noreturn]] inline void fail(const std::string& what) {
  std::fprintf(stderr, "fuzz property broken: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

inline std::string describe(const std::vector<violation>& vs) {
  std::string s;
  for (auto& v : vs)
    s += "\n  " + v.invariant + ": " + v.detail;
  return s;
}

/// Aborts when the pool breaks any of I1..I5.
inline void require_invariants(const pool_state& pool, const std::string& ctx) {
  auto vs = pool.check_invariants();
  if (!vs.empty())
    fail("invariants broken " + ctx + ":" + describe(vs));
}

/// Applies one command and checks what every command must keep: I1..I5
/// hold afterwards, and a refused command changed nothing and reported no
/// event.
inline apply_result apply_checked(pool_state& pool, const pb::Command& c,
                                  int64_t now) {
  auto before = pool.snapshot().SerializeAsString();
  auto r = pool.apply(c, now);
  require_invariants(pool, "after {" + c.ShortDebugString() + "} at t="
                             + std::to_string(now));
  if (r.refused && (r.changed || !r.events.empty()
                    || pool.snapshot().SerializeAsString() != before))
    fail("refused command {" + c.ShortDebugString() + "} ("
         + r.refused->name() + ") changed something");
  return r;
}

/// Parameters of the pool the command targets start from: heartbeats never
/// time out on their own (a tick in the input still moves the clock).
inline params base_params() {
  params p;
  p.heartbeat_timeout_ms = 1'000'000'000;
  // Two tests at a time: a third node asked for one waits, so inputs
  // reach the queue of tests to send.
  p.max_tests_in_flight = 2;
  return p;
}

/// A pool with nodes n1..n4 admitted (n4 also serves model "x"), node n5
/// still in its admission test, session s1 (model m, 2 nodes) active and
/// s2 (model "zz", no node serves it) queued.
/// Built once and returned as a snapshot, restored per input.
inline const pb::Snapshot& base_snapshot() {
  static const pb::Snapshot snap = [] {
    pool_state pool{base_params()};
    int64_t now = 1000;
    auto reg = [&](const std::string& id, std::vector<std::string> models) {
      pb::Command c;
      c.mutable_register_()->set_node_id(id);
      c.mutable_register_()->set_public_key("key-" + id);
      for (auto& m : models)
        c.mutable_register_()->add_models(m);
      auto r = apply_checked(pool, c, now += 10);
      for (auto& e : r.events)
        if (e.has_test_requested())
          return e.test_requested().test_id();
      fail("base pool: no test requested for " + id);
    };
    auto pass = [&](const std::string& id, uint64_t test_id) {
      pb::Command c;
      auto* t = c.mutable_test_result();
      t->set_node_id(id);
      t->set_test_id(test_id);
      t->set_correct(5);
      t->set_total(5);
      apply_checked(pool, c, now += 10);
    };
    for (auto id : {"n1", "n2", "n3"})
      pass(id, reg(id, {"m"}));
    pass("n4", reg("n4", {"m", "x"}));
    reg("n5", {"m"});
    auto submit = [&](const std::string& sid, const std::string& model,
                      uint32_t n) {
      pb::Command c;
      auto* s = c.mutable_submit_session();
      s->set_session_id(sid);
      s->set_model(model);
      s->set_min_nodes(1);
      s->set_max_nodes(n);
      s->set_redundancy(1);
      s->set_client("fuzz");
      apply_checked(pool, c, now += 10);
    };
    submit("s1", "m", 2);
    submit("s2", "zz", 1);
    return pool.snapshot();
  }();
  return snap;
}

/// A fresh pool in the base state.
inline void reset_to_base(pool_state& pool) {
  pool.restore(base_snapshot());
  require_invariants(pool, "after restoring the base pool");
}

} // namespace nodepool::fuzz
