// Writes the seed corpus of the fuzz targets (tests/fuzz/corpus/<target>/)
// from real serialized messages: commands against the fuzz targets' base
// pool, a command log and snapshots of a small oracle run, miner messages,
// the deployed TOML file and the parameters' JSON.
//
//   fuzz_seeds OUT_DIR [DEPLOY_TOML]
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "fuzz_common.hpp"

using namespace nodepool;
namespace fs = std::filesystem;

namespace {

fs::path out_dir;

void write(const std::string& target, const std::string& name,
           const std::string& bytes) {
  auto dir = out_dir / target;
  fs::create_directories(dir);
  std::ofstream f{dir / name, std::ios::binary};
  f << bytes;
}

/// Framing read by fuzz::frames().
struct framed {
  std::string out;
  void varint(uint64_t v) {
    while (v >= 0x80) {
      out.push_back(static_cast<char>((v & 0x7f) | 0x80));
      v >>= 7;
    }
    out.push_back(static_cast<char>(v));
  }
  framed& bytes(uint32_t field, const std::string& b) {
    varint(field << 3 | 2);
    varint(b.size());
    out += b;
    return *this;
  }
  framed& msg(uint32_t field, const google::protobuf::Message& m) {
    return bytes(field, m.SerializeAsString());
  }
  framed& num(uint32_t field, uint64_t v) {
    varint(field << 3);
    varint(v);
    return *this;
  }
};

pb::Command reg(const std::string& id, const std::string& key = "") {
  pb::Command c;
  c.mutable_register_()->set_node_id(id);
  c.mutable_register_()->set_public_key(key.empty() ? "key-" + id : key);
  c.mutable_register_()->add_models("m");
  return c;
}
pb::Command result(const std::string& id, uint64_t test, uint32_t correct) {
  pb::Command c;
  auto* t = c.mutable_test_result();
  t->set_node_id(id);
  t->set_test_id(test);
  t->set_correct(correct);
  t->set_total(5);
  return c;
}
pb::Command submit(const std::string& sid, const std::string& model,
                   uint32_t max) {
  pb::Command c;
  auto* s = c.mutable_submit_session();
  s->set_session_id(sid);
  s->set_model(model);
  s->set_min_nodes(1);
  s->set_max_nodes(max);
  s->set_redundancy(1);
  s->set_client("client-1");
  return c;
}
pb::Command task_done(const pb::SessionRecord& s, uint32_t no,
                      pb::TaskOutcome o) {
  pb::Command c;
  auto* t = c.mutable_task_done();
  t->set_session_id(s.id());
  t->set_task_no(no);
  for (auto& n : s.nodes()) {
    auto* x = t->add_outcomes();
    x->set_node_id(n);
    x->set_outcome(o);
    x->set_latency_ms(120);
  }
  return c;
}
pb::Command end(const std::string& sid, bool failed) {
  pb::Command c;
  c.mutable_end_session()->set_session_id(sid);
  c.mutable_end_session()->set_failed(failed);
  if (failed)
    c.mutable_end_session()->set_reason("client gave up");
  return c;
}
pb::Command hb(const std::string& id, pb::NodeMode mode) {
  pb::Command c;
  c.mutable_heartbeat()->set_node_id(id);
  c.mutable_heartbeat()->set_mode(mode);
  return c;
}
pb::Command down(const std::string& id) {
  pb::Command c;
  c.mutable_node_down()->set_node_id(id);
  c.mutable_node_down()->set_reason("connection down");
  return c;
}
pb::Command tick() {
  pb::Command c;
  c.mutable_tick();
  return c;
}
pb::Command recover_cmd() {
  pb::Command c;
  c.mutable_recover();
  return c;
}
pb::Command configure(const params& p) {
  pb::Command c;
  c.mutable_configure()->set_params_json(to_json(p));
  return c;
}

void command_seeds() {
  pool_state base{fuzz::base_params()};
  fuzz::reset_to_base(base);
  auto& s1 = *base.session("s1");
  auto n5_test = base.node("n5")->test_id();
  write("fuzz_command", "submit", submit("s3", "m", 2).SerializeAsString());
  write("fuzz_command", "pass_n5",
        result("n5", n5_test, 5).SerializeAsString());
  write("fuzz_command", "fail_n5",
        result("n5", n5_test, 1).SerializeAsString());
  write("fuzz_command", "tasks_then_end",
        framed{}
          .msg(1, task_done(s1, 1, pb::OK))
          .num(2, 500)
          .msg(1, task_done(s1, 2, pb::OK))
          .msg(1, end("s1", false))
          .num(2, 1000)
          .msg(1, tick())
          .out);
  write("fuzz_command", "outlier_timeout",
        framed{}
          .msg(1, task_done(s1, 1, pb::OUTLIER))
          .msg(1, task_done(s1, 2, pb::TIMEOUT))
          .msg(1, end("s2", true))
          .out);
  write("fuzz_command", "membership",
        framed{}
          .msg(1, reg("n6"))
          .msg(1, hb("n1", pb::BUSY))
          .msg(1, down("n2"))
          .num(2, 360'000)
          .msg(1, tick())
          .msg(1, reg("n2"))
          .msg(1, reg("n1", "other-key"))
          .out);
  auto p = fuzz::base_params();
  p.selection = "latency";
  p.max_strikes = 2;
  write("fuzz_command", "configure_recover",
        framed{}
          .msg(1, configure(p))
          .msg(1, recover_cmd())
          .msg(1, tick())
          .msg(1, submit("s3", "x", 3))
          .out);
}

/// A small oracle run: its log entries and snapshots at a few points.
void storage_seeds() {
  pool_state pool;
  std::vector<pb::LogEntry> log;
  std::vector<pb::Snapshot> snaps;
  int64_t now = 1'700'000'000'000;
  auto apply = [&](const pb::Command& c) {
    auto r = pool.apply(c, now);
    if (r.changed) {
      pb::LogEntry e;
      e.set_index(log.size() + 1);
      e.set_now(now);
      *e.mutable_command() = c;
      log.push_back(e);
    }
    now += 50;
    return r;
  };
  auto test_of = [](const apply_result& r) -> uint64_t {
    for (auto& e : r.events)
      if (e.has_test_requested())
        return e.test_requested().test_id();
    return 0;
  };
  auto snap = [&] {
    auto s = pool.snapshot();
    s.set_last_index(log.size());
    snaps.push_back(s);
  };
  apply(recover_cmd());
  apply(configure(params{}));
  for (auto id : {"a1", "a2", "a3", "a4"}) {
    auto t = test_of(apply(reg(id)));
    apply(result(id, t, id == std::string{"a4"} ? 1 : 5));
  }
  snap();
  apply(submit("c1", "m", 2));
  apply(submit("c2", "m", 2));
  apply(hb("a1", pb::DRAINING));
  apply(task_done(*pool.session("c1"), 1, pb::OK));
  snap();
  apply(task_done(*pool.session("c1"), 2, pb::MISMATCH));
  apply(end("c1", false));
  apply(down("a2"));
  now += 400'000;
  apply(tick());
  snap();
  fuzz::require_invariants(pool, "in the seed run");

  framed all;
  for (auto& e : log)
    all.msg(2, e);
  write("fuzz_storage", "log_only", all.out);
  framed with_snap;
  with_snap.msg(1, snaps[1]);
  for (auto& e : log)
    with_snap.msg(2, e);
  write("fuzz_storage", "log_and_snapshot", with_snap.out);
  framed gap;
  for (size_t i = 0; i < log.size(); ++i) {
    if (i == 5)
      gap.num(3, 1);
    gap.msg(2, log[i]);
  }
  write("fuzz_storage", "log_with_gap", gap.out);
  framed cut;
  cut.msg(1, snaps[0]);
  for (size_t i = 0; i < 8; ++i)
    cut.bytes(2, i == 7 ? log[i].SerializeAsString().substr(0, 9)
                        : log[i].SerializeAsString());
  write("fuzz_storage", "torn_entry", cut.out);

  for (size_t i = 0; i < snaps.size(); ++i)
    write("fuzz_snapshot", "run_" + std::to_string(i),
          snaps[i].SerializeAsString());
  write("fuzz_snapshot", "base", fuzz::base_snapshot().SerializeAsString());

  // fuzz_replica: the same history as a leader's batches (three commands
  // each, terms 1 then 2), and a snapshot followed by the batches after it.
  auto batches = [&](size_t from) {
    framed f;
    pb::LogBatch b;
    for (size_t i = from; i < log.size(); ++i) {
      b.set_term(i < log.size() / 2 ? 1 : 2);
      *b.add_entries() = log[i];
      if (b.entries_size() == 3 || i + 1 == log.size()) {
        f.msg(1, b);
        b.Clear();
      }
    }
    return f.out;
  };
  write("fuzz_replica", "batches", batches(0));
  auto s1 = snaps[1];
  s1.set_last_now(log[s1.last_index() - 1].now());
  s1.set_last_term(1);
  framed restore_then;
  restore_then.msg(2, s1);
  write("fuzz_replica", "snapshot_then_batches",
        restore_then.out + batches(s1.last_index()));
}

pb::MinerMsg miner(const std::string& id) {
  pb::MinerMsg m;
  m.set_node_id(id);
  return m;
}

void miner_seeds() {
  auto r = miner("m1");
  r.mutable_register_()->set_node_id("m1");
  r.mutable_register_()->set_public_key("key-m1");
  r.mutable_register_()->add_models("m");
  auto r2 = r;
  r2.set_node_id("n1");
  r2.mutable_register_()->set_node_id("n1");
  r2.mutable_register_()->set_public_key("key-n1");
  auto h = miner("m1");
  h.mutable_heartbeat()->set_node_id("m1");
  h.mutable_heartbeat()->set_mode(pb::BUSY);
  auto h0 = h;
  h0.mutable_heartbeat()->set_mode(pb::AVAILABLE);
  auto other = miner("m1");
  other.mutable_heartbeat()->set_node_id("n2");
  auto a = miner("m1");
  a.mutable_test_answers()->set_test_id(6);
  a.mutable_test_answers()->add_answers("Paris");
  auto ack = miner("n1");
  ack.mutable_task_ack()->set_session_id("s1");
  ack.mutable_task_ack()->set_task_no(1);
  auto pre = miner("n1");
  pre.mutable_task_precommit()->set_session_id("s1");
  pre.mutable_task_precommit()->set_output_hash(std::string(64, 'a'));
  auto com = miner("n1");
  com.mutable_task_commit()->set_session_id("s1");
  com.mutable_task_commit()->set_output("output");
  write("fuzz_miner_msg", "register", r.SerializeAsString());
  write("fuzz_miner_msg", "register_heartbeats",
        framed{}.msg(1, r).msg(1, h).num(2, 2000).msg(1, h0).msg(1, other)
          .msg(1, a).out);
  write("fuzz_miner_msg", "two_connections",
        framed{}
          .msg(1, r)
          .num(3, 1)
          .msg(1, r2)
          .msg(1, r)
          .msg(1, ack)
          .msg(1, pre)
          .msg(1, com)
          .num(4, 0)
          .num(2, 60'000)
          .num(3, 0)
          .msg(1, r)
          .out);
}

void config_seeds(const std::string& toml_path) {
  if (!toml_path.empty()) {
    std::ifstream f{toml_path, std::ios::binary};
    std::stringstream ss;
    ss << f.rdbuf();
    write("fuzz_config", "deploy.toml", ss.str());
  }
  write("fuzz_config", "small.toml",
        "[oracle]\nport = 4242\n\n[pool]\npass_mark = 0.75\n"
        "selection = \"latency\"\nmax_strikes = 3\n");
  write("fuzz_config", "defaults.json", to_json(params{}));
  write("fuzz_config", "partial.json",
        "{\"heartbeat_interval_ms\": 500, \"panic_share\": 0.25, "
        "\"selection\": \"random\"}");
  write("fuzz_config", "override", "quarantine_backoff_ms=45000");
}

} // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: fuzz_seeds OUT_DIR [DEPLOY_TOML]\n";
    return 2;
  }
  out_dir = argv[1];
  command_seeds();
  storage_seeds();
  miner_seeds();
  config_seeds(argc > 2 ? argv[2] : "");
  return 0;
}
