// Unit tests of the pure pool state machine (src/pool_state.* and friends).
//
// Every command goes through `harness::apply`, which checks I1..I5 after it
// and, for a refused command, that nothing changed at all.
#include <random>
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <limits>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

#include "bounds.hpp"
#include "pool_state.hpp"
#include "random.hpp"
#include "bytes_of.hpp"

using namespace nodepool;

namespace {

// -- helpers ------------------------------------------------------------------

using nodepool::testing::bytes_of;

std::string describe(const std::vector<violation>& vs) {
  std::ostringstream os;
  for (auto& v : vs)
    os << "  " << v.invariant << ": " << v.detail << "\n";
  return os.str();
}

/// Live sessions in the order of their ids (the pool keeps them in a hash
/// map): random runs pick from this, so a restored pool sees the same picks.
std::vector<const pb::SessionRecord*> live_by_id(const pool_state& p) {
  std::vector<const pb::SessionRecord*> xs;
  for (auto& [id, s] : p.sessions())
    xs.push_back(&s);
  std::sort(xs.begin(), xs.end(),
            [](auto* a, auto* b) { return a->id() < b->id(); });
  return xs;
}

bool has_violation(const std::vector<violation>& vs, const std::string& inv) {
  return std::any_of(vs.begin(), vs.end(),
                     [&](const violation& v) { return v.invariant == inv; });
}

/// Default parameters, except that nodes never miss a heartbeat unless a
/// test asks for it.
params quiet() {
  params p;
  p.heartbeat_timeout_ms = 1'000'000'000;
  return p;
}

pb::Command reg_cmd(const std::string& id,
                    const std::vector<std::string>& models = {"m"},
                    const std::string& key = "") {
  pb::Command c;
  auto* r = c.mutable_register_();
  r->set_node_id(id);
  r->set_public_key(key.empty() ? "key-" + id : key);
  for (auto& m : models)
    r->add_models(m);
  return c;
}

pb::Command hb_cmd(const std::string& id, pb::NodeMode mode = pb::AVAILABLE) {
  pb::Command c;
  c.mutable_heartbeat()->set_node_id(id);
  c.mutable_heartbeat()->set_mode(mode);
  return c;
}

pb::Command result_cmd(const std::string& id, uint64_t test_id,
                       uint32_t correct, uint32_t total) {
  pb::Command c;
  auto* r = c.mutable_test_result();
  r->set_node_id(id);
  r->set_test_id(test_id);
  r->set_correct(correct);
  r->set_total(total);
  return c;
}

pb::Command submit_cmd(const std::string& id, const std::string& model = "m",
                       uint32_t min_nodes = 1, uint32_t max_nodes = 1,
                       uint32_t redundancy = 0, uint32_t max_tasks = 10,
                       uint32_t min_level = 0, int64_t reserve_period_ms = 0) {
  pb::Command c;
  auto* s = c.mutable_submit_session();
  s->set_session_id(id);
  s->set_model(model);
  s->set_min_nodes(min_nodes);
  s->set_max_nodes(max_nodes);
  s->set_redundancy(redundancy);
  s->set_max_tasks(max_tasks);
  s->set_min_level(min_level);
  s->set_reserve_period_ms(reserve_period_ms);
  s->set_client("tester");
  return c;
}

using outcomes = std::vector<std::pair<std::string, pb::TaskOutcome>>;

pb::Command task_cmd(const std::string& sid, uint32_t task_no,
                     const outcomes& os) {
  pb::Command c;
  auto* t = c.mutable_task_done();
  t->set_session_id(sid);
  t->set_task_no(task_no);
  for (auto& [id, o] : os) {
    auto* x = t->add_outcomes();
    x->set_node_id(id);
    x->set_outcome(o);
  }
  return c;
}

pb::Command end_cmd(const std::string& sid, bool failed = false,
                    const std::string& reason = "") {
  pb::Command c;
  c.mutable_end_session()->set_session_id(sid);
  c.mutable_end_session()->set_failed(failed);
  c.mutable_end_session()->set_reason(reason);
  return c;
}

pb::Command down_cmd(const std::string& id, const std::string& reason = "") {
  pb::Command c;
  c.mutable_node_down()->set_node_id(id);
  c.mutable_node_down()->set_reason(reason);
  return c;
}

pb::Command tick_cmd() {
  pb::Command c;
  c.mutable_tick();
  return c;
}

pb::Command recover_cmd() {
  pb::Command c;
  c.mutable_recover();
  return c;
}

// -- events -------------------------------------------------------------------

int count_events(const apply_result& r, pb::Event::KindCase k) {
  return static_cast<int>(std::count_if(
    r.events.begin(), r.events.end(),
    [&](const pb::Event& e) { return e.kind_case() == k; }));
}

const pb::NodeStateChanged* change_of(const apply_result& r,
                                      const std::string& id, pb::NodeState from,
                                      pb::NodeState to) {
  for (auto& e : r.events)
    if (e.has_node_state_changed()) {
      auto& x = e.node_state_changed();
      if (x.node_id() == id && x.from() == from && x.to() == to)
        return &x;
    }
  return nullptr;
}

/// The first event of one kind (`has`, `get`) whose `key` field is `id`.
template <class T>
const T* first_event(const apply_result& r, bool (pb::Event::*has)() const,
                     const T& (pb::Event::*get)() const,
                     const std::string& (T::*key)() const,
                     const std::string& id) {
  for (auto& e : r.events)
    if ((e.*has)() && ((e.*get)().*key)() == id)
      return &(e.*get)();
  return nullptr;
}

const pb::TestRequested* test_request(const apply_result& r,
                                      const std::string& id) {
  return first_event(r, &pb::Event::has_test_requested,
                     &pb::Event::test_requested, &pb::TestRequested::node_id,
                     id);
}

const pb::NodeReleased* release_of(const apply_result& r,
                                   const std::string& id) {
  return first_event(r, &pb::Event::has_node_released,
                     &pb::Event::node_released, &pb::NodeReleased::node_id,
                     id);
}

const pb::SessionEnded* end_of(const apply_result& r, const std::string& sid) {
  return first_event(r, &pb::Event::has_session_ended,
                     &pb::Event::session_ended, &pb::SessionEnded::session_id,
                     sid);
}

const pb::SessionStarted* start_of(const apply_result& r,
                                   const std::string& sid) {
  return first_event(r, &pb::Event::has_session_started,
                     &pb::Event::session_started,
                     &pb::SessionStarted::session_id, sid);
}

std::vector<std::string> reserved_in(const apply_result& r,
                                     const std::string& sid) {
  std::vector<std::string> out;
  for (auto& e : r.events)
    if (e.has_node_reserved() && e.node_reserved().session_id() == sid)
      out.push_back(e.node_reserved().node_id());
  return out;
}

std::vector<std::string> nodes_of(const pb::SessionRecord& s) {
  return {s.nodes().begin(), s.nodes().end()};
}

// -- harness ------------------------------------------------------------------

/// A pool, a clock and shortcuts. Every command is checked: invariants hold
/// after it, and a refused command changed nothing and reported nothing.
class harness {
public:
  explicit harness(params p = quiet()) : pool(std::move(p)) {
    pool.set_kept_copy_from(0);  // freeze() keeps its copy however small
  }

  pool_state pool;
  int64_t now = 1000;
  bool broken = false;

  /// Sessions that ended, as the pool handed them to the archive.
  std::map<std::string, pb::SessionRecord> archive;

  apply_result apply(const pb::Command& c) {
    auto before = bytes_of(pool.snapshot());
    auto r = pool.apply(c, now);
    // Both checks after every command: the one on what it touched and the
    // whole-state one.
    for (auto* which : {"touched", "whole"}) {
      auto vs = which[0] == 't' ? pool.check_after(c, r)
                                : pool.check_invariants();
      if (!vs.empty()) {
        broken = true;
        ADD_FAILURE() << "invariants (" << which << ") broken after {"
                      << c.ShortDebugString() << "} at t=" << now << ":\n"
                      << describe(vs);
      }
    }
    for (auto& a : r.archived) {
      if (pool.session(a.id()) || !archive.emplace(a.id(), a).second) {
        broken = true;
        ADD_FAILURE() << "session " << a.id()
                      << " archived twice or still live";
      }
    }
    if (r.refused) {
      if (!r.events.empty() || r.changed
          || bytes_of(pool.snapshot()) != before) {
        broken = true;
        ADD_FAILURE() << "refused command {" << c.ShortDebugString()
                      << "} (" << r.refused->name() << ") changed something";
      }
    }
    return r;
  }

  void restore(const pb::Snapshot& s) {
    pool.restore(s);
    auto vs = pool.check_invariants();
    EXPECT_TRUE(vs.empty()) << "after restore:\n" << describe(vs);
  }

  apply_result reg(const std::string& id,
                   const std::vector<std::string>& models = {"m"},
                   const std::string& key = "") {
    return apply(reg_cmd(id, models, key));
  }
  apply_result hb(const std::string& id, pb::NodeMode mode = pb::AVAILABLE) {
    return apply(hb_cmd(id, mode));
  }
  apply_result result(const std::string& id, uint32_t correct,
                      uint32_t total = 5) {
    return apply(result_cmd(id, node(id).test_id(), correct, total));
  }
  apply_result pass(const std::string& id) { return result(id, 5); }
  apply_result fail(const std::string& id) { return result(id, 0); }
  apply_result submit(const std::string& sid, const std::string& model = "m",
                      uint32_t min_nodes = 1, uint32_t max_nodes = 1,
                      uint32_t redundancy = 0, uint32_t max_tasks = 10,
                      uint32_t min_level = 0, int64_t period = 0) {
    return apply(submit_cmd(sid, model, min_nodes, max_nodes, redundancy,
                            max_tasks, min_level, period));
  }
  /// A task result for the session's current task.
  apply_result task(const std::string& sid, const outcomes& os) {
    return apply(task_cmd(sid, session(sid).tasks_done(), os));
  }
  apply_result end(const std::string& sid, bool failed = false,
                   const std::string& reason = "") {
    return apply(end_cmd(sid, failed, reason));
  }
  apply_result down(const std::string& id, const std::string& reason = "") {
    return apply(down_cmd(id, reason));
  }
  apply_result tick() { return apply(tick_cmd()); }
  apply_result recover() { return apply(recover_cmd()); }

  /// Registers a node and lets it pass its admission test.
  void admit(const std::string& id,
             const std::vector<std::string>& models = {"m"}) {
    auto r = reg(id, models);
    EXPECT_FALSE(r.refused) << id;
    r = pass(id);
    EXPECT_FALSE(r.refused) << id;
  }

  const pb::NodeRecord& node(const std::string& id) {
    if (auto* n = pool.node(id))
      return *n;
    ADD_FAILURE() << "no node " << id;
    static const pb::NodeRecord none;
    return none;
  }
  /// A live session, else its archived record.
  const pb::SessionRecord& session(const std::string& id) {
    if (auto* s = pool.session(id))
      return *s;
    if (auto a = archive.find(id); a != archive.end())
      return a->second;
    ADD_FAILURE() << "no session " << id;
    static const pb::SessionRecord none;
    return none;
  }
  pb::NodeState state(const std::string& id) { return node(id).state(); }
  pb::SessionState sstate(const std::string& id) {
    return session(id).state();
  }
  uint64_t count(pb::NodeState s) { return pool.count_by_state()[s]; }
};

#define EXPECT_REFUSED(expr, code_)                                          \
  do {                                                                       \
    auto r_ = (expr);                                                        \
    ASSERT_TRUE(r_.refused.has_value()) << "expected refusal " << (code_);   \
    EXPECT_EQ(r_.refused->name(), (code_));                                    \
    EXPECT_FALSE(r_.refused->detail.empty());                                \
    EXPECT_TRUE(r_.events.empty());                                          \
    EXPECT_FALSE(r_.changed);                                                \
  } while (0)

#define EXPECT_ACCEPTED(expr)                                                \
  do {                                                                       \
    auto r_ = (expr);                                                        \
    EXPECT_FALSE(r_.refused.has_value())                                     \
      << "refused: " << r_.refused->name() << " " << r_.refused->detail;       \
  } while (0)

// =============================================================================
// registration
// =============================================================================

TEST(PoolRegister, NewNodeGoesThroughRegisteredToAdmissionTest) {
  harness h;
  auto r = h.reg("n1", {"m", "x"});
  ASSERT_FALSE(r.refused);
  EXPECT_TRUE(r.changed);
  ASSERT_EQ(r.events.size(), 3u);
  ASSERT_TRUE(r.events[0].has_node_state_changed());
  EXPECT_EQ(r.events[0].node_state_changed().from(), pb::NODE_STATE_UNSPECIFIED);
  EXPECT_EQ(r.events[0].node_state_changed().to(), pb::REGISTERED);
  ASSERT_TRUE(r.events[1].has_node_state_changed());
  EXPECT_EQ(r.events[1].node_state_changed().from(), pb::REGISTERED);
  EXPECT_EQ(r.events[1].node_state_changed().to(), pb::TESTING);
  ASSERT_TRUE(r.events[2].has_test_requested());
  auto& t = r.events[2].test_requested();
  EXPECT_EQ(t.node_id(), "n1");
  EXPECT_EQ(t.test_id(), 1u);
  EXPECT_EQ(t.deadline(), 1000 + h.pool.config().test_deadline_ms);
  EXPECT_EQ(t.kind(), pb::ADMISSION);
  EXPECT_EQ(t.level(), 0u);

  auto& n = h.node("n1");
  EXPECT_EQ(n.state(), pb::TESTING);
  EXPECT_EQ(n.public_key(), "key-n1");
  EXPECT_EQ(n.models_size(), 2);
  EXPECT_DOUBLE_EQ(n.reputation(), 0.5);
  EXPECT_EQ(n.added_at(), 1000);
  EXPECT_EQ(n.reset_at(), 1000);
  EXPECT_EQ(n.last_heartbeat(), 1000);
  EXPECT_EQ(n.test_id(), 1u);
  EXPECT_EQ(n.test_kind(), pb::ADMISSION);
  EXPECT_EQ(h.count(pb::TESTING), 1u);
  EXPECT_EQ(h.count(pb::REGISTERED), 0u);
}

TEST(PoolRegister, RefusesBadNodeIds) {
  harness h;
  EXPECT_REFUSED(h.reg(""), "bad_node_id");
  EXPECT_REFUSED(h.reg("has space"), "bad_node_id");
  EXPECT_REFUSED(h.reg("a/b"), "bad_node_id");
  EXPECT_REFUSED(h.reg("caf\xc3\xa9"), "bad_node_id");
  EXPECT_REFUSED(h.reg(std::string(129, 'a')), "bad_node_id");
  EXPECT_TRUE(h.pool.nodes().empty());
  EXPECT_ACCEPTED(h.reg(std::string(128, 'a')));
  EXPECT_ACCEPTED(h.reg("A-z_0.9:x"));
}

TEST(PoolRegister, RefusesNodeWithoutModels) {
  harness h;
  EXPECT_REFUSED(h.reg("n1", {}), "no_models");
  EXPECT_EQ(h.pool.node("n1"), nullptr);
  // Also for a known node: its models stay.
  h.admit("n1");
  EXPECT_REFUSED(h.reg("n1", {}), "no_models");
  EXPECT_EQ(h.state("n1"), pb::EPHEMERAL);
}

// Models out of bounds are refused by the pool too (the gateway refuses
// them first): an empty name, one too long, too many.
TEST(PoolRegister, RefusesModelsOutOfBounds) {
  harness h;
  EXPECT_REFUSED(h.reg("n1", {""}), "bad_models");
  EXPECT_REFUSED(h.reg("n1", {"m", std::string(129, 'x')}), "bad_models");
  std::vector<std::string> many(65, "m");
  EXPECT_REFUSED(h.reg("n1", many), "bad_models");
  EXPECT_EQ(h.pool.node("n1"), nullptr);
  many.resize(64);
  EXPECT_ACCEPTED(h.reg("n1", many));
}

TEST(PoolRegister, RefusesAnotherKey) {
  harness h;
  h.reg("n1", {"m"}, "key-A");
  auto test_id = h.node("n1").test_id();
  EXPECT_REFUSED(h.reg("n1", {"m"}, "key-B"), "key_mismatch");
  EXPECT_EQ(h.node("n1").public_key(), "key-A");
  EXPECT_EQ(h.node("n1").test_id(), test_id);
}

TEST(PoolRegister, RefusesRetiredNodeEverywhere) {
  auto p = quiet();
  p.max_strikes = 1;
  harness h{p};
  h.reg("n1");
  h.fail("n1");
  ASSERT_EQ(h.state("n1"), pb::RETIRED);
  EXPECT_REFUSED(h.reg("n1"), "retired");
  EXPECT_REFUSED(h.hb("n1"), "not_connected");
  EXPECT_REFUSED(h.down("n1"), "not_connected");
  EXPECT_REFUSED(h.apply(result_cmd("n1", 1, 5, 5)), "no_test_in_flight");
  h.now += 100'000'000;
  auto r = h.tick();
  EXPECT_FALSE(r.changed);
  EXPECT_EQ(h.state("n1"), pb::RETIRED);
}

TEST(PoolRegister, FromLostStartsAdmissionTest) {
  harness h;
  h.admit("n1");
  h.now += 100;
  h.down("n1");
  ASSERT_EQ(h.state("n1"), pb::LOST);
  EXPECT_EQ(h.node("n1").reset_at(), h.now);
  h.now += 100;
  auto r = h.reg("n1", {"m", "x"});
  ASSERT_FALSE(r.refused);
  EXPECT_NE(change_of(r, "n1", pb::LOST, pb::TESTING), nullptr);
  auto* t = test_request(r, "n1");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->kind(), pb::ADMISSION);
  EXPECT_EQ(t->test_id(), 2u);
  auto& n = h.node("n1");
  EXPECT_EQ(n.reset_at(), h.now);
  EXPECT_EQ(n.last_heartbeat(), h.now);
  EXPECT_EQ(n.models_size(), 2);
  EXPECT_EQ(h.count(pb::LOST), 0u);
  EXPECT_EQ(h.count(pb::TESTING), 1u);
}

TEST(PoolRegister, FromEphemeralLeavesPoolUntilTested) {
  harness h;
  h.admit("n1");
  auto r = h.reg("n1");
  EXPECT_NE(change_of(r, "n1", pb::EPHEMERAL, pb::TESTING), nullptr);
  ASSERT_NE(test_request(r, "n1"), nullptr);
  EXPECT_EQ(test_request(r, "n1")->kind(), pb::ADMISSION);
  h.submit("s1");
  EXPECT_EQ(h.sstate("s1"), pb::QUEUED);  // n1 is not in the pool
  r = h.pass("n1");
  EXPECT_NE(start_of(r, "s1"), nullptr);
  EXPECT_EQ(h.sstate("s1"), pb::ACTIVE);
  EXPECT_EQ(h.state("n1"), pb::RESERVED);
}

TEST(PoolRegister, FromReservedDropsSessionAndRetests) {
  harness h;
  h.admit("n1");
  h.submit("s1");
  ASSERT_EQ(h.state("n1"), pb::RESERVED);
  h.now += 10;
  auto r = h.reg("n1");
  ASSERT_FALSE(r.refused);
  auto* lost = change_of(r, "n1", pb::RESERVED, pb::LOST);
  ASSERT_NE(lost, nullptr);
  EXPECT_EQ(lost->reason(), "registered again");
  EXPECT_NE(change_of(r, "n1", pb::LOST, pb::TESTING), nullptr);
  EXPECT_EQ(h.state("n1"), pb::TESTING);
  EXPECT_EQ(h.node("n1").session_id(), "");
  EXPECT_EQ(h.sstate("s1"), pb::QUEUED);
  EXPECT_EQ(h.session("s1").nodes_size(), 0);
  r = h.pass("n1");
  EXPECT_NE(start_of(r, "s1"), nullptr);
  EXPECT_EQ(h.sstate("s1"), pb::ACTIVE);
}

// A test is not redrawn by registering again during it: a miner could
// otherwise read its questions and ask for others until it drew a set it
// can answer. The test under way counts as failed.
TEST(PoolRegister, FromTestingFailsTheTestUnderWay) {
  harness h;
  h.reg("n1");
  auto r = h.reg("n1");
  EXPECT_EQ(test_request(r, "n1"), nullptr);
  EXPECT_NE(change_of(r, "n1", pb::TESTING, pb::QUARANTINED), nullptr);
  EXPECT_EQ(h.node("n1").strikes(), 1u);
  EXPECT_TRUE(h.node("n1").last_test_failed());
  EXPECT_EQ(h.pool.tests_failed(), 1u);
  EXPECT_REFUSED(h.apply(result_cmd("n1", 1, 5, 5)), "no_test_in_flight");
  // Registering again while quarantined changes nothing more.
  h.reg("n1");
  EXPECT_EQ(h.state("n1"), pb::QUARANTINED);
  EXPECT_EQ(h.node("n1").strikes(), 1u);
}

TEST(PoolRegister, FromRevalidatingFailsTheTestUnderWay) {
  harness h;
  h.admit("n1");
  h.submit("s1", "m", 1, 1, 0, /*max_tasks*/ 1);
  h.task("s1", {{"n1", pb::OK}});
  ASSERT_EQ(h.state("n1"), pb::REVALIDATING);
  auto r = h.reg("n1");
  EXPECT_EQ(test_request(r, "n1"), nullptr);
  EXPECT_NE(change_of(r, "n1", pb::REVALIDATING, pb::QUARANTINED), nullptr);
  EXPECT_EQ(h.node("n1").strikes(), 1u);
}

TEST(PoolRegister, FromQuarantinedKeepsTheQuarantine) {
  harness h;
  h.reg("n1");
  h.fail("n1");
  ASSERT_EQ(h.state("n1"), pb::QUARANTINED);
  auto until = h.node("n1").quarantine_until();
  h.now += 1000;
  auto r = h.reg("n1", {"m", "x"});
  ASSERT_FALSE(r.refused);
  EXPECT_TRUE(r.changed);
  EXPECT_TRUE(r.events.empty());
  EXPECT_EQ(h.state("n1"), pb::QUARANTINED);
  EXPECT_EQ(h.node("n1").quarantine_until(), until);
  EXPECT_EQ(h.node("n1").strikes(), 1u);
  EXPECT_EQ(h.node("n1").last_heartbeat(), h.now);
  EXPECT_EQ(h.node("n1").models_size(), 2);
}

// =============================================================================
// heartbeats
// =============================================================================

TEST(PoolHeartbeat, RefusesUnknownNode) {
  harness h;
  EXPECT_REFUSED(h.hb("ghost"), "unknown_node");
}

TEST(PoolHeartbeat, RefusesLostNode) {
  harness h;
  h.admit("n1");
  h.down("n1");
  EXPECT_REFUSED(h.hb("n1"), "not_connected");
}

TEST(PoolHeartbeat, RecordsTimeAndMode) {
  harness h;
  h.admit("n1");
  h.now += 300;
  auto r = h.hb("n1", pb::BUSY);
  ASSERT_FALSE(r.refused);
  EXPECT_TRUE(r.changed);
  EXPECT_TRUE(r.events.empty());
  EXPECT_EQ(h.node("n1").last_heartbeat(), h.now);
  EXPECT_EQ(h.node("n1").mode(), pb::BUSY);
}

// =============================================================================
// test results
// =============================================================================

TEST(PoolTestResult, PassEntersThePool) {
  harness h;
  h.reg("n1");
  h.now += 200;
  auto r = h.pass("n1");
  ASSERT_FALSE(r.refused);
  EXPECT_NE(change_of(r, "n1", pb::TESTING, pb::EPHEMERAL), nullptr);
  ASSERT_EQ(count_events(r, pb::Event::kTestFinished), 1);
  for (auto& e : r.events)
    if (e.has_test_finished()) {
      EXPECT_TRUE(e.test_finished().passed());
      EXPECT_EQ(e.test_finished().test_id(), 1u);
    }
  auto& n = h.node("n1");
  EXPECT_EQ(n.state(), pb::EPHEMERAL);
  EXPECT_EQ(n.passed_at(), h.now);
  EXPECT_EQ(n.ephemeral_at(), h.now);
  EXPECT_EQ(n.test_id(), 0u);
  EXPECT_EQ(n.strikes(), 0u);
  EXPECT_FALSE(n.last_test_failed());
  EXPECT_EQ(n.consecutive_passes(), 1u);
  EXPECT_EQ(h.pool.tests_passed(), 1u);
  EXPECT_EQ(h.pool.tests_failed(), 0u);
  EXPECT_EQ(h.count(pb::EPHEMERAL), 1u);
}

TEST(PoolTestResult, PassMarkIsInclusive) {
  harness h;  // pass mark 0.6
  h.reg("a");
  h.reg("b");
  h.result("a", 3, 5);
  h.result("b", 2, 5);
  EXPECT_EQ(h.state("a"), pb::EPHEMERAL);
  EXPECT_EQ(h.state("b"), pb::QUARANTINED);
}

/// The TestFinished event of a result, or null.
const pb::TestFinished* finished_of(const apply_result& r) {
  for (auto& e : r.events)
    if (e.has_test_finished())
      return &e.test_finished();
  return nullptr;
}

TEST(PoolTestResult, RightButSlowFailsTooSlowWithTheLevelsBound) {
  auto p = quiet();
  p.test_latency_ms = "1000,800";
  harness h{p};
  auto send = [&](const std::string& id, int64_t latency, uint32_t correct = 5,
                  uint32_t peer_correct = 0, uint32_t peer_total = 0,
                  uint64_t tokens = 0) {
    auto c = result_cmd(id, h.node(id).test_id(), correct, 5);
    c.mutable_test_result()->set_latency_ms(latency);
    c.mutable_test_result()->set_peer_correct(peer_correct);
    c.mutable_test_result()->set_peer_total(peer_total);
    c.mutable_test_result()->set_tokens(tokens);
    return h.apply(c);
  };
  h.reg("fast");
  h.reg("slow");
  h.reg("edge");
  EXPECT_TRUE(finished_of(send("fast", 999))->passed());
  EXPECT_TRUE(finished_of(send("edge", 1000))->passed());  // the bound holds
  auto r = send("slow", 1001);
  ASSERT_NE(finished_of(r), nullptr);
  EXPECT_FALSE(finished_of(r)->passed());
  EXPECT_EQ(finished_of(r)->reason(), "too_slow");
  EXPECT_EQ(h.state("slow"), pb::QUARANTINED);
  EXPECT_EQ(h.node("slow").state_reason().rfind("too_slow: answered in 1001 ms, "
                                                "bound 1000 ms at level 0", 0),
            0u)
    << h.node("slow").state_reason();
  // Wrong answers are named first, even when also slow.
  h.reg("both");
  EXPECT_EQ(finished_of(send("both", 5000, 1))->reason(), "wrong_answers");
  // Cross-checks: a node far from its peers fails, whatever its answers.
  h.reg("far");
  h.reg("near");
  h.reg("alone");
  EXPECT_EQ(finished_of(send("far", 10, 5, 0, 1))->reason(), "cross_check");
  EXPECT_TRUE(finished_of(send("near", 10, 5, 1, 1))->passed());
  EXPECT_TRUE(finished_of(send("alone", 10, 5, 0, 0))->passed());  // no peers yet
  // Throughput, where the backend reports tokens.
  p.test_min_tokens_per_s = 50;
  harness t{p};
  auto send_t = [&](const std::string& id, int64_t latency, uint64_t tokens) {
    auto c = result_cmd(id, t.node(id).test_id(), 5, 5);
    c.mutable_test_result()->set_latency_ms(latency);
    c.mutable_test_result()->set_tokens(tokens);
    return t.apply(c);
  };
  t.reg("t1");
  t.reg("t2");
  t.reg("t3");
  EXPECT_TRUE(finished_of(send_t("t1", 500, 25))->passed());   // 50 tokens/s
  EXPECT_EQ(finished_of(send_t("t2", 500, 24))->reason(), "too_slow");
  EXPECT_TRUE(finished_of(send_t("t3", 500, 0))->passed());    // not reported
}

TEST(PoolTestResult, HigherLevelsHaveTighterBounds) {
  auto p = quiet();
  p.test_latency_ms = "1000,800";
  p.promote_after = 1;
  harness h{p};
  h.reg("n");
  h.pass("n");  // level 1 now
  ASSERT_EQ(h.node("n").level(), 1u);
  EXPECT_EQ(test_latency_bound_ms(p, 0), 1000);
  EXPECT_EQ(test_latency_bound_ms(p, 1), 800);
  EXPECT_EQ(test_latency_bound_ms(p, 7), 800);  // the last holds above
  h.now += p.ephemeral_window_ms + 1;
  h.tick();
  ASSERT_EQ(h.state("n"), pb::TESTING) << "the ephemeral window ends in a retest";
  auto c = result_cmd("n", h.node("n").test_id(), 5, 5);
  c.mutable_test_result()->set_latency_ms(900);
  EXPECT_EQ(finished_of(h.apply(c))->reason(), "too_slow");
}

TEST(PoolTestResult, BadFiguresAreRefusedAndChangeNothing) {
  harness h{quiet()};
  h.reg("n");
  for (auto bad : {std::array<int64_t, 3>{2, 1, 0}, std::array<int64_t, 3>{0, 0, -1}}) {
    auto c = result_cmd("n", h.node("n").test_id(), 5, 5);
    c.mutable_test_result()->set_peer_correct(static_cast<uint32_t>(bad[0]));
    c.mutable_test_result()->set_peer_total(static_cast<uint32_t>(bad[1]));
    c.mutable_test_result()->set_latency_ms(bad[2]);
    auto r = h.apply(c);
    ASSERT_TRUE(r.refused);
    EXPECT_EQ(r.refused->name(), "bad_result");
    EXPECT_EQ(h.state("n"), pb::TESTING);
  }
}

TEST(PoolTestResult, FailQuarantinesWithDoublingBackoffCappedAtMax) {
  auto p = quiet();
  p.max_strikes = 10;
  p.quarantine_backoff_ms = 30000;
  p.quarantine_backoff_max_ms = 300000;
  harness h{p};
  h.reg("n1");
  const int64_t expected[] = {30000, 60000, 120000, 240000, 300000, 300000,
                              300000};
  for (size_t k = 0; k < std::size(expected); ++k) {
    SCOPED_TRACE("failure " + std::to_string(k + 1));
    auto r = h.fail("n1");
    ASSERT_FALSE(r.refused);
    auto* q = change_of(r, "n1", pb::TESTING, pb::QUARANTINED);
    ASSERT_NE(q, nullptr);
    EXPECT_EQ(q->reason(), "failed test: 0 of 5 right, pass mark 60%");
    auto& n = h.node("n1");
    EXPECT_EQ(n.state(), pb::QUARANTINED);
    EXPECT_EQ(n.quarantine_until(), h.now + expected[k]);
    EXPECT_EQ(n.strikes(), k + 1);
    EXPECT_EQ(n.quarantine_count(), k + 1);
    EXPECT_TRUE(n.last_test_failed());
    // Still quarantined one millisecond before the backoff has elapsed...
    auto until = n.quarantine_until();
    h.now = until - 1;
    r = h.tick();
    EXPECT_FALSE(r.changed);
    EXPECT_EQ(h.state("n1"), pb::QUARANTINED);
    // ... and retested once it has.
    h.now = until;
    r = h.tick();
    EXPECT_NE(change_of(r, "n1", pb::QUARANTINED, pb::TESTING), nullptr);
    ASSERT_NE(test_request(r, "n1"), nullptr);
    EXPECT_EQ(test_request(r, "n1")->kind(), pb::RETEST);
  }
  EXPECT_EQ(h.pool.tests_failed(), std::size(expected));
}

TEST(PoolTestResult, RetiredAfterMaxStrikes) {
  harness h;  // max_strikes 5
  h.reg("n1");
  for (uint32_t k = 1; k <= 5; ++k) {
    auto r = h.fail("n1");
    if (k < 5) {
      ASSERT_EQ(h.state("n1"), pb::QUARANTINED);
      h.now = h.node("n1").quarantine_until();
      h.tick();
      ASSERT_EQ(h.state("n1"), pb::TESTING);
    } else {
      auto* x = change_of(r, "n1", pb::TESTING, pb::RETIRED);
      ASSERT_NE(x, nullptr);
      EXPECT_NE(x->reason().find("retired after 5 strikes"), std::string::npos)
        << x->reason();
    }
  }
  EXPECT_EQ(h.state("n1"), pb::RETIRED);
  EXPECT_EQ(h.count(pb::RETIRED), 1u);
  EXPECT_EQ(h.count(pb::QUARANTINED), 0u);
}

TEST(PoolTestResult, PassResetsStrikesAndBackoff) {
  harness h;
  h.reg("n1");
  h.fail("n1");
  h.now = h.node("n1").quarantine_until();
  h.tick();
  h.fail("n1");
  EXPECT_EQ(h.node("n1").quarantine_until() - h.now, 60000);
  h.now = h.node("n1").quarantine_until();
  h.tick();
  h.pass("n1");
  EXPECT_EQ(h.node("n1").strikes(), 0u);
  EXPECT_FALSE(h.node("n1").last_test_failed());
  h.reg("n1");
  h.fail("n1");
  EXPECT_EQ(h.node("n1").strikes(), 1u);
  EXPECT_EQ(h.node("n1").quarantine_until() - h.now, 30000);
}

TEST(PoolTestResult, RefusesStaleTest) {
  harness h;
  h.reg("n1");
  EXPECT_REFUSED(h.apply(result_cmd("n1", 99, 5, 5)), "stale_test");
  EXPECT_REFUSED(h.apply(result_cmd("n1", 0, 5, 5)), "stale_test");
  EXPECT_EQ(h.state("n1"), pb::TESTING);
}

TEST(PoolTestResult, RefusesResultAfterDeadlineButAcceptsAtIt) {
  harness h;
  h.reg("late");
  h.reg("ontime");
  auto deadline = h.node("late").test_deadline();
  EXPECT_EQ(deadline, 1000 + h.pool.config().test_deadline_ms);
  h.now = deadline;
  EXPECT_ACCEPTED(h.pass("ontime"));
  h.now = deadline + 1;
  EXPECT_REFUSED(h.pass("late"), "after_deadline");
  EXPECT_EQ(h.state("late"), pb::TESTING);
  EXPECT_EQ(h.state("ontime"), pb::EPHEMERAL);
}

TEST(PoolTestResult, RefusesBadResult) {
  harness h;
  h.reg("n1");
  EXPECT_REFUSED(h.result("n1", 0, 0), "bad_result");
  EXPECT_REFUSED(h.result("n1", 6, 5), "bad_result");
  EXPECT_EQ(h.state("n1"), pb::TESTING);
}

TEST(PoolTestResult, RefusesWithoutTestInFlight) {
  harness h;
  h.admit("n1");
  EXPECT_REFUSED(h.apply(result_cmd("n1", 1, 5, 5)), "no_test_in_flight");
  h.reg("n2");
  h.fail("n2");
  EXPECT_REFUSED(h.apply(result_cmd("n2", 2, 5, 5)), "no_test_in_flight");
  h.down("n1");
  EXPECT_REFUSED(h.apply(result_cmd("n1", 1, 5, 5)), "no_test_in_flight");
}

TEST(PoolTestResult, RefusesUnknownNode) {
  harness h;
  EXPECT_REFUSED(h.apply(result_cmd("ghost", 1, 5, 5)), "unknown_node");
}

// =============================================================================
// levels and reputation
// =============================================================================

TEST(PoolLevels, PromotedAfterConsecutivePassesUpToMax) {
  auto p = quiet();
  p.promote_after = 3;
  p.max_level = 2;
  harness h{p};
  for (uint32_t i = 1; i <= 10; ++i) {
    auto r = h.reg("n1");
    ASSERT_NE(test_request(r, "n1"), nullptr);
    // The test is asked at the node's current level.
    EXPECT_EQ(test_request(r, "n1")->level(), std::min((i - 1) / 3, 2u));
    h.pass("n1");
    EXPECT_EQ(h.node("n1").level(), std::min(i / 3, 2u)) << "after pass " << i;
    EXPECT_EQ(h.node("n1").consecutive_passes(), i);
  }
}

TEST(PoolLevels, DemotedOnFailedTestAndOnBrokenTask) {
  auto p = quiet();
  p.promote_after = 1;
  harness h{p};
  h.admit("n1");
  h.reg("n1");
  h.pass("n1");
  h.reg("n1");
  h.pass("n1");
  ASSERT_EQ(h.node("n1").level(), 3u);
  h.reg("n1");
  h.fail("n1");
  EXPECT_EQ(h.node("n1").level(), 2u);
  EXPECT_EQ(h.node("n1").consecutive_passes(), 0u);
  h.now = h.node("n1").quarantine_until();
  h.tick();
  h.pass("n1");
  EXPECT_EQ(h.node("n1").level(), 3u);
  // A node that breaks a task is demoted too (quarantine path).
  h.admit("n2");
  h.admit("n3");
  h.submit("s1", "m", 1, 1);
  auto holder = h.session("s1").nodes(0);
  auto before = h.node(holder).level();
  h.task("s1", {{holder, pb::TIMEOUT}});
  EXPECT_EQ(h.state(holder), pb::QUARANTINED);
  EXPECT_EQ(h.node(holder).level(), before - 1);
  // Level 0 stays at 0.
  h.reg("z");
  h.fail("z");
  EXPECT_EQ(h.node("z").level(), 0u);
}

TEST(PoolReputation, IsAnEwmaOfOutcomes) {
  auto p = quiet();
  p.reputation_alpha = 0.25;
  p.recent_size = 3;
  harness h{p};
  double expect = 0.5;
  auto step = [&](bool good) { expect = 0.75 * expect + 0.25 * (good ? 1 : 0); };
  h.reg("n1");
  EXPECT_DOUBLE_EQ(h.node("n1").reputation(), 0.5);
  h.pass("n1");
  step(true);
  EXPECT_DOUBLE_EQ(h.node("n1").reputation(), expect);
  h.reg("n1");
  h.fail("n1");
  step(false);
  EXPECT_DOUBLE_EQ(h.node("n1").reputation(), expect);
  h.now = h.node("n1").quarantine_until();
  h.tick();
  h.pass("n1");
  step(true);
  h.reg("n1");
  h.pass("n1");
  step(true);
  EXPECT_DOUBLE_EQ(h.node("n1").reputation(), expect);
  // The ring buffer keeps the last recent_size outcomes, newest last.
  auto& rec = h.node("n1").recent();
  ASSERT_EQ(rec.size(), 3);
  EXPECT_FALSE(rec[0]);
  EXPECT_TRUE(rec[1]);
  EXPECT_TRUE(rec[2]);
  // Task outcomes count too: OK up, OUTLIER down.
  h.submit("s1");
  h.task("s1", {{"n1", pb::OK}});
  step(true);
  EXPECT_DOUBLE_EQ(h.node("n1").reputation(), expect);
  h.task("s1", {{"n1", pb::OUTLIER}});
  step(false);
  EXPECT_DOUBLE_EQ(h.node("n1").reputation(), expect);
  EXPECT_EQ(h.state("n1"), pb::RESERVED);  // an outlier is not thrown out
}

TEST(PoolReputation, BrokenTaskIsRecordedOnce) {
  // One TIMEOUT is one bad outcome: one EWMA step and one ring-buffer entry.
  auto p = quiet();
  p.reputation_alpha = 0.1;
  harness h{p};
  h.admit("n1");
  h.admit("n2");
  h.admit("n3");
  h.submit("s1", "m", 1, 1);
  auto id = h.session("s1").nodes(0);
  auto rep = h.node(id).reputation();
  auto recent = h.node(id).recent_size();
  h.task("s1", {{id, pb::MISMATCH}});
  ASSERT_EQ(h.state(id), pb::QUARANTINED);
  EXPECT_DOUBLE_EQ(h.node(id).reputation(), 0.9 * rep);
  EXPECT_EQ(h.node(id).recent_size(), recent + 1);
}

// =============================================================================
// sessions: submission
// =============================================================================

TEST(PoolSubmit, AcceptsAndQueuesWithDefaults) {
  harness h;  // min 1, max 3, redundancy 3
  pb::Command c;
  c.mutable_submit_session()->set_session_id("s1");
  auto r = h.apply(c);
  ASSERT_FALSE(r.refused);
  ASSERT_EQ(r.events.size(), 1u);
  ASSERT_TRUE(r.events[0].has_session_accepted());
  EXPECT_EQ(r.events[0].session_accepted().session_id(), "s1");
  auto& s = h.session("s1");
  EXPECT_EQ(s.state(), pb::QUEUED);
  EXPECT_EQ(s.min_nodes(), 1u);
  EXPECT_EQ(s.max_nodes(), 3u);
  EXPECT_EQ(s.redundancy(), 3u);
  EXPECT_EQ(s.max_tasks(), 1u);
  EXPECT_EQ(s.seq(), 1u);
  EXPECT_EQ(s.submitted_at(), 1000);
  EXPECT_EQ(h.pool.session_counts()[pb::QUEUED], 1u);
  // A min_nodes above the default max widens max; redundancy follows.
  pb::Command c2;
  c2.mutable_submit_session()->set_session_id("s2");
  c2.mutable_submit_session()->set_min_nodes(5);
  h.apply(c2);
  EXPECT_EQ(h.session("s2").max_nodes(), 5u);
  EXPECT_EQ(h.session("s2").redundancy(), 3u);
  EXPECT_EQ(h.session("s2").seq(), 2u);
}

TEST(PoolSubmit, RefusesBadSubmissions) {
  harness h;
  EXPECT_REFUSED(h.submit(""), "bad_session_id");
  EXPECT_REFUSED(h.submit("white space"), "bad_session_id");
  EXPECT_REFUSED(h.submit(std::string(129, 's')), "bad_session_id");
  EXPECT_ACCEPTED(h.submit("s1"));
  EXPECT_REFUSED(h.submit("s1"), "duplicate_session");
  EXPECT_REFUSED(h.submit("s2", "m", 3, 2), "bad_session_shape");
  EXPECT_REFUSED(h.submit("s2", "m", 1, 2, 3), "bad_session_shape");
  EXPECT_REFUSED(h.submit("s2", "m", 1, 65), "bad_session_shape");
  EXPECT_REFUSED(h.submit("s2", "m", 1, 1, 0, 1, 6), "bad_level");
  EXPECT_REFUSED(h.submit("s2", "m", 1, 1, 0, 1, 0, -1), "bad_reserve_period");
  // A period past 30 days (the HTTP API's bound too): far ones would wrap
  // the release time around and churn the pool.
  EXPECT_REFUSED(h.submit("s2", "m", 1, 1, 0, 1, 0, bounds::reserve_period_ms + 1),
                 "bad_reserve_period");
  EXPECT_REFUSED(h.submit("s2", "m", 1, 1, 0, 1, 0,
                          std::numeric_limits<int64_t>::max()),
                 "bad_reserve_period");
  EXPECT_EQ(h.pool.sessions().size(), 1u);
  EXPECT_ACCEPTED(h.submit("s2", "m", 1, 64, 0, 1, 5, bounds::reserve_period_ms));
  EXPECT_EQ(h.session("s2").seq(), 2u);  // refusals used no sequence number
}

// =============================================================================
// sessions: reservation
// =============================================================================

TEST(PoolReservation, RespectsModel) {
  harness h;
  h.admit("a", {"llama"});
  h.admit("b", {"mistral", "qwen"});
  auto r = h.submit("s1", "qwen");
  EXPECT_EQ(reserved_in(r, "s1"), std::vector<std::string>{"b"});
  EXPECT_EQ(h.state("a"), pb::EPHEMERAL);
  h.submit("s2", "phi");
  EXPECT_EQ(h.sstate("s2"), pb::QUEUED);
  // No model asked: any node will do.
  h.submit("s3", "");
  EXPECT_EQ(nodes_of(h.session("s3")), std::vector<std::string>{"a"});
}

TEST(PoolReservation, AQueuedSessionIsServedByTheFirstNodeOfItsModel) {
  // Its class of the queue was made while no node had the model; the node
  // that brings it must reach the class's counts.
  harness h;
  h.admit("a", {"llama"});
  h.submit("s1", "phi");
  ASSERT_EQ(h.sstate("s1"), pb::QUEUED);
  h.admit("b", {"phi"});
  EXPECT_EQ(h.sstate("s1"), pb::ACTIVE);
  EXPECT_EQ(nodes_of(h.session("s1")), std::vector<std::string>{"b"});
  EXPECT_TRUE(h.pool.check_invariants().empty());
}

TEST(PoolReservation, RespectsMinLevel) {
  auto p = quiet();
  p.promote_after = 2;
  harness h{p};
  h.admit("low");
  h.admit("high");
  h.reg("high");
  h.pass("high");
  ASSERT_EQ(h.node("low").level(), 0u);
  ASSERT_EQ(h.node("high").level(), 1u);
  h.submit("s1", "m", 1, 3, 0, 10, /*min_level*/ 1);
  EXPECT_EQ(nodes_of(h.session("s1")), std::vector<std::string>{"high"});
  h.submit("s2", "m", 1, 1, 0, 10, 2);
  EXPECT_EQ(h.sstate("s2"), pb::QUEUED);
  EXPECT_EQ(h.state("low"), pb::EPHEMERAL);
}

TEST(PoolReservation, WaitsForMinNodesAndTakesAtMostMax) {
  harness h;
  h.admit("n1");
  h.submit("big", "m", 2, 2, 2);
  EXPECT_EQ(h.sstate("big"), pb::QUEUED);
  EXPECT_EQ(h.state("n1"), pb::EPHEMERAL);
  h.reg("n2");
  auto r = h.pass("n2");
  auto* st = start_of(r, "big");
  ASSERT_NE(st, nullptr);
  EXPECT_EQ(st->nodes_size(), 2);
  EXPECT_EQ(st->redundancy(), 2u);
  EXPECT_EQ(h.sstate("big"), pb::ACTIVE);
  EXPECT_EQ(h.session("big").started_at(), h.now);

  for (auto id : {"a", "b", "c", "d", "e"})
    h.admit(id);
  h.submit("two", "m", 1, 2, 2);
  EXPECT_EQ(h.session("two").nodes_size(), 2);
  EXPECT_EQ(h.count(pb::EPHEMERAL), 3u);
  EXPECT_EQ(h.count(pb::RESERVED), 4u);
}

TEST(PoolReservation, RespectsNodeMode) {
  harness h;
  h.admit("n1");
  h.hb("n1", pb::BUSY);
  h.submit("s1");
  EXPECT_EQ(h.sstate("s1"), pb::QUEUED);
  h.hb("n1", pb::DRAINING);
  EXPECT_EQ(h.sstate("s1"), pb::QUEUED);
  auto r = h.hb("n1", pb::AVAILABLE);
  EXPECT_NE(start_of(r, "s1"), nullptr);
  EXPECT_EQ(h.state("n1"), pb::RESERVED);
  EXPECT_EQ(h.node("n1").session_id(), "s1");
  EXPECT_EQ(h.node("n1").reserved_at(), h.now);
}

TEST(PoolReservation, QueueIsFifo) {
  harness h;
  h.submit("first");
  h.submit("second");
  h.admit("n1");
  EXPECT_EQ(h.sstate("first"), pb::ACTIVE);
  EXPECT_EQ(h.sstate("second"), pb::QUEUED);
  h.admit("n2");
  EXPECT_EQ(h.sstate("second"), pb::ACTIVE);
  EXPECT_EQ(nodes_of(h.session("second")), std::vector<std::string>{"n2"});
}

TEST(PoolReservation, UnservableSessionDoesNotBlockLaterOnes) {
  harness h;
  h.submit("wants-x", "x");
  h.submit("wants-two", "m", 2, 2, 2);
  h.submit("wants-m", "m");
  h.admit("n1", {"m"});
  EXPECT_EQ(h.sstate("wants-x"), pb::QUEUED);
  EXPECT_EQ(h.sstate("wants-two"), pb::QUEUED);
  EXPECT_EQ(h.sstate("wants-m"), pb::ACTIVE);
  h.admit("n2", {"x"});
  EXPECT_EQ(h.sstate("wants-x"), pb::ACTIVE);
  EXPECT_EQ(nodes_of(h.session("wants-x")), std::vector<std::string>{"n2"});
}

TEST(PoolReservation, LongWaitingLargeSessionIsNotStarvedBySmallOnes) {
  auto p = quiet();
  p.queue_timeout_ms = 10000;
  harness h{p};
  h.admit("n1");
  h.admit("n2");
  h.admit("n3");
  h.submit("busy", "m", 2, 2);  // keeps two nodes
  h.submit("big", "m", 3, 3);   // needs all three
  h.submit("small0", "m", 1, 1);
  EXPECT_EQ(h.sstate("small0"), pb::ACTIVE);  // first fit: small goes first
  // While big has waited less than half its queue_timeout, small sessions
  // keep taking freed nodes ...
  h.now += 1000;
  h.end("small0");
  for (auto& [id, n] : h.pool.nodes())
    if (n.state() == pb::REVALIDATING)
      h.pass(id);
  h.submit("small1", "m", 1, 1);
  EXPECT_EQ(h.sstate("small1"), pb::ACTIVE);
  // ... past it, big holds the pool: freed nodes wait for it.
  h.now += 5000;
  h.end("small1");
  h.submit("small2", "m", 1, 1);
  for (auto& [id, n] : h.pool.nodes())
    if (n.state() == pb::REVALIDATING)
      h.pass(id);
  EXPECT_EQ(h.sstate("small2"), pb::QUEUED);
  EXPECT_EQ(h.sstate("big"), pb::QUEUED);
  h.end("busy");
  for (auto& [id, n] : h.pool.nodes())
    if (n.state() == pb::REVALIDATING)
      h.pass(id);
  EXPECT_EQ(h.sstate("big"), pb::ACTIVE);
  EXPECT_EQ(h.session("big").nodes_size(), 3);
  EXPECT_EQ(h.sstate("small2"), pb::QUEUED);
}

TEST(PoolReservation, AHoldingSessionHoldsOnlyTheNodesItCouldUse) {
  auto p = quiet();
  p.queue_timeout_ms = 10000;
  harness h{p};
  h.admit("m1", {"m"});
  h.submit("busy", "m", 1, 1);       // takes m1
  h.submit("big", "m", 2, 2);        // needs two m nodes
  h.now += 6000;                     // big now holds the m nodes
  h.submit("other", "x", 1, 1);      // wants a model big cannot use
  h.submit("small", "m", 1, 1);      // competes with big
  h.admit("x1", {"x"});
  EXPECT_EQ(h.sstate("other"), pb::ACTIVE);  // x1 is not held by big
  h.admit("m2", {"m"});
  EXPECT_EQ(h.sstate("small"), pb::QUEUED);  // m2 is held for big
  EXPECT_EQ(h.sstate("big"), pb::QUEUED);
  h.end("busy");
  for (auto& [id, n] : h.pool.nodes())
    if (n.state() == pb::REVALIDATING)
      h.pass(id);
  EXPECT_EQ(h.sstate("big"), pb::ACTIVE);
  EXPECT_EQ(h.sstate("small"), pb::QUEUED);
}

TEST(PoolReservation, SessionNoNodeCouldServeHoldsNothing) {
  auto p = quiet();
  p.queue_timeout_ms = 10000;
  harness h{p};
  h.submit("wants-x", "x");
  h.now += 6000;  // past half its queue_timeout
  h.submit("wants-m", "m");
  h.admit("n1", {"m"});
  EXPECT_EQ(h.sstate("wants-m"), pb::ACTIVE);
  EXPECT_EQ(h.sstate("wants-x"), pb::QUEUED);
}

TEST(PoolReservation, ActiveSessionsAreToppedUpFirst) {
  harness h;
  h.submit("s1", "m", 1, 3, 3);
  h.admit("n1");
  EXPECT_EQ(h.sstate("s1"), pb::ACTIVE);
  EXPECT_EQ(h.session("s1").nodes_size(), 1);
  h.submit("s2", "m", 1, 1);
  h.reg("n2");
  auto r = h.pass("n2");
  EXPECT_EQ(reserved_in(r, "s1"), std::vector<std::string>{"n2"});
  EXPECT_EQ(start_of(r, "s1"), nullptr);  // already running
  EXPECT_EQ(h.sstate("s2"), pb::QUEUED);
  h.admit("n3");
  EXPECT_EQ(h.session("s1").nodes_size(), 3);
  h.admit("n4");  // s1 has its redundancy now: s2 gets n4
  EXPECT_EQ(h.session("s1").nodes_size(), 3);
  EXPECT_EQ(nodes_of(h.session("s2")), std::vector<std::string>{"n4"});
}

// =============================================================================
// sessions: tasks
// =============================================================================

class PoolTask : public ::testing::Test {
protected:
  void start(params p, int nodes, uint32_t max_tasks = 10) {
    h = std::make_unique<harness>(p);
    for (int i = 1; i <= nodes; ++i)
      h->admit("n" + std::to_string(i));
    h->submit("s1", "m", 1, nodes, nodes, max_tasks);
    ASSERT_EQ(h->sstate("s1"), pb::ACTIVE);
    ASSERT_EQ(h->session("s1").nodes_size(), nodes);
  }
  std::unique_ptr<harness> h;
};

TEST_F(PoolTask, OkCountsTask) {
  start(quiet(), 3);
  h->now += 50;
  auto r = h->task("s1", {{"n1", pb::OK}, {"n2", pb::OK}, {"n3", pb::OK}});
  ASSERT_FALSE(r.refused);
  EXPECT_TRUE(r.changed);
  EXPECT_EQ(h->session("s1").tasks_done(), 1u);
  EXPECT_EQ(h->session("s1").last_activity(), h->now);
  for (auto id : {"n1", "n2", "n3"}) {
    EXPECT_EQ(h->node(id).tasks_served(), 1u);
    EXPECT_EQ(h->state(id), pb::RESERVED);
  }
}

TEST_F(PoolTask, RefusesBadTaskReports) {
  start(quiet(), 2);
  h->admit("other");
  h->submit("s2", "m", 1, 1);
  ASSERT_EQ(h->node("other").session_id(), "s2");
  h->submit("queued", "zz");
  EXPECT_REFUSED(h->apply(task_cmd("ghost", 0, {{"n1", pb::OK}})),
                 "unknown_session");
  EXPECT_REFUSED(h->apply(task_cmd("queued", 0, {{"n1", pb::OK}})),
                 "session_not_active");
  EXPECT_REFUSED(h->apply(task_cmd("s1", 1, {{"n1", pb::OK}})), "stale_task");
  EXPECT_REFUSED(h->apply(task_cmd("s1", 0, {})), "no_outcomes");
  EXPECT_REFUSED(h->apply(task_cmd("s1", 0, {{"zz", pb::OK}})),
                 "node_not_in_session");
  EXPECT_REFUSED(h->apply(task_cmd("s1", 0, {{"other", pb::OK}})),
                 "node_not_in_session");
  EXPECT_REFUSED(h->apply(task_cmd("s1", 0, {{"n1", pb::OK}, {"n1", pb::OK}})),
                 "node_not_in_session");
  // A half-valid report changes nothing either.
  EXPECT_REFUSED(
    h->apply(task_cmd("s1", 0, {{"n1", pb::TIMEOUT}, {"zz", pb::OK}})),
    "node_not_in_session");
  EXPECT_EQ(h->state("n1"), pb::RESERVED);
  EXPECT_ACCEPTED(h->apply(task_cmd("s1", 0, {{"n1", pb::OK}})));
  EXPECT_REFUSED(h->apply(task_cmd("s1", 0, {{"n1", pb::OK}})), "stale_task");
}

TEST_F(PoolTask, TimeoutQuarantinesTheNodeAndSessionGoesOn) {
  start(quiet(), 3);  // 3 alive, panic share 0.5: one quarantine allowed
  auto r = h->task("s1", {{"n1", pb::OK}, {"n2", pb::OK}, {"n3", pb::TIMEOUT}});
  auto* q = change_of(r, "n3", pb::RESERVED, pb::QUARANTINED);
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->reason(), "task timeout");
  auto& n3 = h->node("n3");
  EXPECT_EQ(n3.session_id(), "");
  EXPECT_EQ(n3.strikes(), 1u);
  EXPECT_TRUE(n3.last_test_failed());
  EXPECT_EQ(n3.quarantine_until(), h->now + h->pool.config().quarantine_backoff_ms);
  EXPECT_EQ(h->sstate("s1"), pb::ACTIVE);
  EXPECT_EQ(nodes_of(h->session("s1")), (std::vector<std::string>{"n1", "n2"}));
  // Once its quarantine is over, the node must pass a test again.
  h->now = n3.quarantine_until();
  h->tick();
  EXPECT_EQ(h->state("n3"), pb::TESTING);
}

TEST_F(PoolTask, MismatchQuarantinesAndLastNodeRequeuesSession) {
  start(quiet(), 1);
  h->admit("spare1");
  h->admit("spare2");
  h->hb("spare1", pb::BUSY);
  h->hb("spare2", pb::BUSY);
  auto r = h->task("s1", {{"n1", pb::MISMATCH}});
  auto* q = change_of(r, "n1", pb::RESERVED, pb::QUARANTINED);
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->reason(), "reveal did not match hash");
  EXPECT_EQ(h->sstate("s1"), pb::QUEUED);
  EXPECT_EQ(h->session("s1").tasks_done(), 1u);
  // A new node picks up where it stopped.
  r = h->hb("spare1");
  auto* st = start_of(r, "s1");
  ASSERT_NE(st, nullptr);
  EXPECT_EQ(st->tasks_done(), 1u);
}

TEST_F(PoolTask, PanicGuardRevalidatesInsteadOfQuarantiningPastTheShare) {
  start(quiet(), 3);  // share 0.5 of 3 alive nodes: 1.5
  auto r = h->task("s1",
                   {{"n1", pb::TIMEOUT}, {"n2", pb::TIMEOUT}, {"n3", pb::MISMATCH}});
  ASSERT_FALSE(r.refused);
  EXPECT_EQ(h->state("n1"), pb::QUARANTINED);
  EXPECT_EQ(h->state("n2"), pb::REVALIDATING);
  EXPECT_EQ(h->state("n3"), pb::REVALIDATING);
  ASSERT_NE(release_of(r, "n2"), nullptr);
  EXPECT_EQ(release_of(r, "n2")->reason(), "task failure (panic guard)");
  EXPECT_EQ(h->count(pb::QUARANTINED), 1u);
  EXPECT_EQ(h->sstate("s1"), pb::QUEUED);
  // Nodes released by the guard still must pass before they serve again.
  EXPECT_EQ(h->node("n2").test_kind(), pb::REVALIDATION);
  h->pass("n2");
  EXPECT_EQ(h->sstate("s1"), pb::ACTIVE);
}

TEST_F(PoolTask, PanicGuardCountsNodesAlreadyQuarantined) {
  auto p = quiet();
  p.panic_share = 0.5;
  start(p, 2);
  h->reg("x1");
  h->fail("x1");
  h->reg("x2");
  h->fail("x2");  // 4 alive, 2 quarantined: the share is used up
  h->task("s1", {{"n1", pb::TIMEOUT}});
  EXPECT_EQ(h->state("n1"), pb::REVALIDATING);
  EXPECT_EQ(h->count(pb::QUARANTINED), 2u);
}

TEST_F(PoolTask, ReleasedIntoRevalidationAfterTasksBeforeRelease) {
  auto p = quiet();
  p.tasks_before_release = 2;
  start(p, 1);
  h->task("s1", {{"n1", pb::OK}});
  EXPECT_EQ(h->state("n1"), pb::RESERVED);
  h->now += 10;
  auto r = h->task("s1", {{"n1", pb::OUTLIER}});
  auto* rel = release_of(r, "n1");
  ASSERT_NE(rel, nullptr);
  EXPECT_EQ(rel->reason(), "tasks_before_release");
  EXPECT_EQ(rel->session_id(), "s1");
  EXPECT_NE(change_of(r, "n1", pb::RESERVED, pb::REVALIDATING), nullptr);
  ASSERT_NE(test_request(r, "n1"), nullptr);
  EXPECT_EQ(test_request(r, "n1")->kind(), pb::REVALIDATION);
  auto& n = h->node("n1");
  EXPECT_EQ(n.tasks_served(), 0u);
  EXPECT_EQ(n.released_at(), h->now);
  EXPECT_EQ(n.reset_at(), h->now);
  EXPECT_EQ(h->sstate("s1"), pb::QUEUED);
  EXPECT_EQ(h->session("s1").tasks_done(), 2u);
  // Re-validated, it serves the session again.
  h->now += 10;
  r = h->pass("n1");
  EXPECT_NE(change_of(r, "n1", pb::REVALIDATING, pb::EPHEMERAL), nullptr);
  EXPECT_EQ(h->sstate("s1"), pb::ACTIVE);
  EXPECT_EQ(h->node("n1").session_id(), "s1");
}

TEST_F(PoolTask, CompletesAtMaxTasks) {
  start(quiet(), 2, /*max_tasks*/ 2);
  h->task("s1", {{"n1", pb::OK}, {"n2", pb::OK}});
  EXPECT_EQ(h->sstate("s1"), pb::ACTIVE);
  h->now += 5;
  auto r = h->task("s1", {{"n1", pb::OK}, {"n2", pb::OUTLIER}});
  auto* e = end_of(r, "s1");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->state(), pb::COMPLETED);
  EXPECT_EQ(h->sstate("s1"), pb::COMPLETED);
  EXPECT_EQ(h->session("s1").ended_at(), h->now);
  EXPECT_EQ(h->session("s1").nodes_size(), 0);
  for (auto id : {"n1", "n2"}) {
    EXPECT_EQ(h->state(id), pb::REVALIDATING);
    ASSERT_NE(release_of(r, id), nullptr);
    EXPECT_EQ(release_of(r, id)->reason(), "session ended");
  }
  EXPECT_REFUSED(h->apply(task_cmd("s1", 2, {{"n1", pb::OK}})),
                 "session_ended");
  EXPECT_EQ(h->pool.session_counts()[pb::COMPLETED], 1u);
  EXPECT_EQ(h->pool.session("s1"), nullptr);  // archived, not live
}

TEST_F(PoolTask, LastTaskBrokenStillCompletes) {
  start(quiet(), 2, 1);
  h->task("s1", {{"n1", pb::TIMEOUT}, {"n2", pb::OK}});
  EXPECT_EQ(h->sstate("s1"), pb::COMPLETED);
  EXPECT_EQ(h->state("n1"), pb::QUARANTINED);
  EXPECT_EQ(h->state("n2"), pb::REVALIDATING);
}

// =============================================================================
// sessions: end
// =============================================================================

TEST(PoolEndSession, CompletesOrFailsAndReleases) {
  harness h;
  h.admit("n1");
  h.admit("n2");
  h.submit("ok");
  h.submit("bad");
  auto r = h.end("ok");
  ASSERT_FALSE(r.refused);
  EXPECT_EQ(h.sstate("ok"), pb::COMPLETED);
  r = h.end("bad", true, "client disconnected");
  ASSERT_NE(end_of(r, "bad"), nullptr);
  EXPECT_EQ(end_of(r, "bad")->state(), pb::FAILED);
  EXPECT_EQ(end_of(r, "bad")->reason(), "client disconnected");
  EXPECT_EQ(h.session("bad").reason(), "client disconnected");
  EXPECT_EQ(h.state("n1"), pb::REVALIDATING);
  EXPECT_EQ(h.state("n2"), pb::REVALIDATING);
}

// =============================================================================
// bounded history: ended sessions leave the pool
// =============================================================================

TEST(PoolArchive, AnEndedSessionLeavesThePoolWithItsFinalRecord) {
  harness h;
  h.admit("n1");
  h.submit("s1");
  ASSERT_EQ(h.sstate("s1"), pb::ACTIVE);
  auto r = h.end("s1", true, "client gone");
  ASSERT_EQ(r.archived.size(), 1u);
  auto& a = r.archived[0];
  EXPECT_EQ(a.id(), "s1");
  EXPECT_EQ(a.state(), pb::FAILED);
  EXPECT_EQ(a.reason(), "client gone");
  EXPECT_EQ(a.ended_at(), h.now);
  EXPECT_EQ(a.nodes_size(), 0);
  EXPECT_EQ(h.pool.session("s1"), nullptr);
  EXPECT_TRUE(h.pool.sessions().empty());
  auto counts = h.pool.session_counts();
  EXPECT_EQ(counts[pb::FAILED], 1u);
  EXPECT_EQ(h.pool.sessions_accepted(), 1u);
  // The snapshot holds live records only, and the counters.
  auto snap = h.pool.snapshot();
  EXPECT_EQ(snap.sessions_size(), 0);
  EXPECT_EQ(snap.sessions_failed(), 1u);
  EXPECT_EQ(snap.recent_ids_size(), 1);
}

TEST(PoolArchive, MemoryDoesNotGrowWithHistory) {
  // 2000 sessions served one after the other: what the pool holds at the
  // end is the node and the window of recent ids, not 2000 records.
  auto p = quiet();
  p.session_id_retention_ms = 10'000;
  harness h{p};
  h.admit("n1");
  size_t peak_window = 0;
  for (int i = 0; i < 2000; ++i) {
    auto sid = "s" + std::to_string(i);
    h.submit(sid, "m", 1, 1, 1, 1);
    ASSERT_EQ(h.sstate(sid), pb::ACTIVE) << i;
    h.now += 100;
    h.task(sid, {{"n1", pb::OK}});
    ASSERT_EQ(h.sstate(sid), pb::COMPLETED) << i;
    h.pass("n1");  // re-validated, back in the pool
    peak_window = std::max(peak_window, h.pool.recent_ids().size());
  }
  EXPECT_TRUE(h.pool.sessions().empty());
  EXPECT_EQ(h.pool.session_counts()[pb::COMPLETED], 2000u);
  // 10 s of retention at one session per 100 ms: about 100 ids held, plus
  // up to a second's worth (expiry is kept per second).
  EXPECT_LE(peak_window, 111u);
  EXPECT_GE(peak_window, 99u);
  EXPECT_LE(h.pool.snapshot().ByteSizeLong(), 4096u);
}

// What freeze() keeps to copy again does not grow with the commands since
// the last freeze: sessions served in between leave nothing behind, and
// past a bound (many sessions copied, then ended, and no freeze since) the
// copy is dropped; the next freeze copies everything, still the whole state.
TEST(PoolArchive, WhatTheNextFreezeCopiesStaysBoundedWithoutFreezes) {
  auto p = quiet();
  p.session_id_retention_ms = 10'000;
  p.snapshot_every = 1;
  harness h{p};
  h.admit("n1");
  h.pool.freeze();
  size_t peak = 0;
  for (int i = 0; i < 12000; ++i) {
    auto sid = "s" + std::to_string(i);
    h.submit(sid, "m", 1, 1, 1, 1);
    h.now += 100;
    h.task(sid, {{"n1", pb::OK}});
    h.pass("n1");
    peak = std::max(peak, h.pool.changes_pending());
  }
  ASSERT_EQ(h.pool.session_counts()[pb::COMPLETED], 12000u);
  EXPECT_LE(peak, 2u);  // n1, and the session being served
  EXPECT_EQ(bytes_of(h.pool.freeze().finish()), bytes_of(h.pool.snapshot()));
  // 6000 sessions no node serves wait in the queue and are copied; then
  // each ends, and the copy would have to drop each. (The pool directly:
  // the harness's checks of the whole state after each command would cost
  // the square of the queue.)
  auto& pool = h.pool;
  for (int i = 0; i < 6000; ++i)
    ASSERT_FALSE(pool.apply(submit_cmd("q" + std::to_string(i), "zz", 1, 1, 1),
                            ++h.now).refused);
  ASSERT_EQ(pool.sessions().size(), 6000u);
  pool.freeze();
  bool dropped = false;
  for (int i = 0; i < 6000; ++i) {
    auto before = pool.changes_pending();
    ASSERT_FALSE(pool.apply(end_cmd("q" + std::to_string(i)), ++h.now).refused);
    // 2 * (nodes + live sessions + snapshot_every + the window's ids / 16)
    // + 4096
    auto bound = 2 * (1 + pool.sessions().size() + 1
                      + pool.recent_ids().size() / 16)
                 + 4096;
    ASSERT_LE(pool.changes_pending(), bound) << i;
    dropped = dropped || pool.changes_pending() < before;
  }
  EXPECT_TRUE(dropped);
  EXPECT_TRUE(pool.check_invariants().empty());
  EXPECT_EQ(bytes_of(pool.freeze().finish()), bytes_of(pool.snapshot()));
}

// A session short of its redundancy, of a model no free node serves, costs
// the commands after it no walk of the pool (before, every command that
// changed something looked at every node in the pool for it).
TEST(PoolCost, ASessionShortOfAModelNoFreeNodeServesCostsNoWalk) {
  harness h{quiet()};
  h.admit("m1");
  h.submit("s1", "m", 1, 3, 3, 10);  // it runs on one node, short of three
  ASSERT_EQ(h.sstate("s1"), pb::ACTIVE);
  ASSERT_EQ(h.session("s1").nodes_size(), 1);
  for (int i = 0; i < 300; ++i)
    h.admit("x" + std::to_string(i), {"x"});
  auto before = h.pool.walk_steps();
  for (int i = 0; i < 20; ++i)
    ASSERT_TRUE(h.apply(hb_cmd("x0", i % 2 ? pb::AVAILABLE : pb::BUSY)).changed);
  EXPECT_EQ(h.pool.walk_steps() - before, 0u);
  // A node of its model comes: it is taken, with one look at the pool.
  h.admit("m2");
  EXPECT_EQ(h.session("s1").nodes_size(), 2);
}

// Behind a session that holds the free nodes of its model (it waited long
// enough and needs more than are free), the sessions of that model cost
// the commands no walk of those nodes: the held session takes every node
// they could use (before, each command looked at every free node for each
// of their classes, to find each one held).
TEST(PoolCost, SessionsBehindOneThatHoldsTheirNodesCostNoWalk) {
  auto p = quiet();
  p.queue_timeout_ms = 1000;
  harness h{p};
  for (int i = 0; i < 70; ++i)
    h.admit("m" + std::to_string(i));
  for (int i = 50; i < 70; ++i)  // busy: 50 free
    h.hb("m" + std::to_string(i), pb::BUSY);
  h.submit("big", "m", 60, 60);  // more than are free: it waits
  ASSERT_EQ(h.sstate("big"), pb::QUEUED);
  h.now += 600;  // past half its queue_timeout: it holds the nodes
  for (int c = 0; c < 5; ++c)    // five classes of needs behind it
    h.submit("small" + std::to_string(c), "m", 1 + c, 1 + c);
  for (int c = 0; c < 5; ++c)
    ASSERT_EQ(h.sstate("small" + std::to_string(c)), pb::QUEUED);
  auto before = h.pool.walk_steps();
  for (int i = 0; i < 20; ++i)
    ASSERT_TRUE(h.apply(hb_cmd("m0", i % 2 ? pb::AVAILABLE : pb::BUSY)).changed);
  // A step per class in the queue and the big one's look at the pool, per
  // command: not the 50 free nodes for each class behind it as well.
  EXPECT_LE(h.pool.walk_steps() - before, 20u * (6 + 50)) << "walks per command";
  for (int c = 0; c < 5; ++c)
    EXPECT_EQ(h.sstate("small" + std::to_string(c)), pb::QUEUED);
  EXPECT_TRUE(h.pool.check_invariants().empty());
}

// Sessions of models no node has (names a client invents) cost the walk of
// the queue nothing: their classes join it when a node brings the model.
TEST(PoolCost, QueuedSessionsOfModelsNoNodeHasCostTheWalkNothing) {
  harness h{quiet()};
  h.admit("a");
  auto& pool = h.pool;  // directly: the harness checks the whole state
  for (int i = 0; i < 2000; ++i)
    ASSERT_FALSE(pool.apply(submit_cmd("q" + std::to_string(i), "none-" + std::to_string(i),
                                       1, 1, 1), ++h.now).refused);
  auto before = pool.walk_steps();
  for (int i = 0; i < 20; ++i)
    ASSERT_TRUE(pool.apply(hb_cmd("a", i % 2 ? pb::AVAILABLE : pb::BUSY), ++h.now).changed);
  EXPECT_EQ(pool.walk_steps() - before, 0u);
  EXPECT_TRUE(pool.check_invariants().empty());
  // A node of one of those models: its session is served.
  h.admit("b", {"none-7"});
  EXPECT_EQ(h.sstate("q7"), pb::ACTIVE);
  EXPECT_EQ(h.sstate("q8"), pb::QUEUED);
  EXPECT_TRUE(pool.check_invariants().empty());
}

// A session of one model is picked from that model's nodes alone: the
// nodes of other models cost its walk nothing (before, it stepped over the
// whole pool to find the few that serve its model).
/// The ids of a page of live sessions (up to 1000).
std::vector<std::string> session_page(const pool_state& p) {
  pb::StateQuery q;
  q.set_what(pb::StateQuery::SESSIONS);
  q.set_limit(1000);
  auto page = p.read(q);
  std::vector<std::string> ids;
  for (auto& s : page.sessions())
    ids.push_back(s.id());
  return ids;
}

TEST(PoolCost, AShortSessionLeavesTheIdOrderAloneBehindManyLiveOnes) {
  // A thousand queued sessions in the live sessions' id order (a page read
  // put them there); then sessions that end before the order is read again
  // neither enter it nor leave it. One that lives across a read costs an
  // insert and an erase.
  harness h;
  h.admit("n1", {"m"});
  for (int i = 0; i < 1000; ++i)
    h.submit("q" + std::to_string(i), "nobody-serves-this");
  session_page(h.pool);
  auto steps = h.pool.order_steps();
  EXPECT_GE(steps, 1000u);
  // Straight on the pool: the harness reads the whole state (a snapshot, a
  // whole check) around every command. What runs after each command in an
  // oracle, the check of what it touched, leaves the order as it is.
  auto run = [&](const pb::Command& c) {
    auto r = h.pool.apply(c, h.now);
    EXPECT_FALSE(r.refused) << c.ShortDebugString();
    EXPECT_TRUE(h.pool.check_after(c, r).empty()) << c.ShortDebugString();
  };
  for (int i = 0; i < 100; ++i) {
    auto sid = "s" + std::to_string(i);
    run(submit_cmd(sid, "m"));
    run(end_cmd(sid));
  }
  EXPECT_EQ(h.pool.order_steps(), steps);
  run(submit_cmd("long", "m"));
  session_page(h.pool);
  EXPECT_EQ(h.pool.order_steps(), steps + 1);
  run(end_cmd("long"));
  EXPECT_EQ(h.pool.order_steps(), steps + 2);
  EXPECT_TRUE(h.pool.check_invariants().empty());
}

TEST(PoolCost, ASessionOfOneModelWalksOnlyTheNodesThatServeIt) {
  harness h{quiet()};
  for (int i = 0; i < 500; ++i)
    h.admit("big" + std::to_string(i), {"big"});
  for (int i = 0; i < 3; ++i)
    h.admit("small" + std::to_string(i), {"small", "big"});
  auto before = h.pool.walk_steps();
  h.submit("s1", "small", 1, 3, 3);
  ASSERT_EQ(h.sstate("s1"), pb::ACTIVE);
  EXPECT_EQ(h.session("s1").nodes_size(), 3);
  // One step for its class in the queue, one look to know it can be
  // served, three to pick: no node of "big" alone is looked at.
  EXPECT_LE(h.pool.walk_steps() - before, 5u);
  // A session of any model still walks the whole pool, in the same order.
  before = h.pool.walk_steps();
  h.submit("s2", "", 1, 2, 2);
  EXPECT_EQ(h.sstate("s2"), pb::ACTIVE);
  EXPECT_EQ(h.session("s2").nodes_size(), 2);
  EXPECT_LE(h.pool.walk_steps() - before, 4u);
  EXPECT_TRUE(h.pool.check_invariants().empty());
}

// A pool moved after a freeze takes its copy of the records along; its next
// freeze is still its whole state.
TEST(PoolArchive, AMovedPoolFreezesItsWholeState) {
  harness h;
  for (auto id : {"n1", "n2", "n3"})
    h.admit(id);
  h.submit("s1", "m", 1, 1, 1, 2);
  h.pool.freeze();
  pool_state moved = std::move(h.pool);
  ASSERT_FALSE(moved.apply(down_cmd("n2"), h.now + 10).refused);
  ASSERT_FALSE(moved.apply(hb_cmd("n3", pb::BUSY), h.now + 20).refused);
  EXPECT_EQ(bytes_of(moved.freeze().finish()), bytes_of(moved.snapshot()));
}

// A pool under the size from which the copy is kept is copied whole at each
// freeze, and its commands note nothing.
TEST(PoolArchive, ASmallPoolKeepsNoCopy) {
  pool_state p{quiet()};
  int64_t now = 1000;
  ASSERT_FALSE(p.apply(reg_cmd("n1", {"m"}, ""), now).refused);
  p.freeze();
  ASSERT_FALSE(p.apply(result_cmd("n1", p.node("n1")->test_id(), 5, 5), ++now)
                 .refused);
  ASSERT_FALSE(p.apply(submit_cmd("s1"), ++now).refused);
  EXPECT_EQ(p.changes_pending(), 0u);
  EXPECT_EQ(bytes_of(p.freeze().finish()), bytes_of(p.snapshot()));
  p.set_kept_copy_from(0);
  p.freeze();
  ASSERT_FALSE(p.apply(hb_cmd("n1", pb::BUSY), ++now).refused);
  EXPECT_EQ(p.changes_pending(), 1u);
  EXPECT_EQ(bytes_of(p.freeze().finish()), bytes_of(p.snapshot()));
}

// Copying ahead between group commits leaves the next freeze only what was
// left; nothing is copied ahead into a copy a snapshot still reads, and the
// frozen state stays the whole state, byte for byte.
TEST(PoolArchive, CopyingAheadLeavesTheFreezeWhatItLeft) {
  harness h;
  h.pool.set_kept_copy_from(0);
  for (int i = 0; i < 40; ++i)
    h.admit("n" + std::to_string(i));
  h.pool.freeze();  // the copy is made, nothing pending
  ASSERT_EQ(h.pool.changes_pending(), 0u);
  for (int i = 0; i < 30; ++i)
    h.submit("s" + std::to_string(i));  // 30 nodes reserved, 30 sessions
  auto pending = h.pool.changes_pending();
  ASSERT_GE(pending, 60u);
  // Nothing below what is to be left.
  EXPECT_EQ(h.pool.copy_ahead(100, pending), 0u);
  // At most the budget, and never below what is to be left.
  EXPECT_EQ(h.pool.copy_ahead(10, 5), 10u);
  EXPECT_EQ(h.pool.changes_pending(), pending - 10);
  EXPECT_EQ(h.pool.copy_ahead(1000, 5), pending - 15);
  EXPECT_EQ(h.pool.changes_pending(), 5u);
  // A record changed after it was copied ahead is noted again.
  h.end("s0", true, "done");
  EXPECT_GT(h.pool.changes_pending(), 5u);
  // While a snapshot still reads the copy, nothing goes into it.
  auto held = h.pool.freeze();
  auto expected = bytes_of(h.pool.snapshot());
  h.end("s1", true, "done");
  ASSERT_GT(h.pool.changes_pending(), 0u);
  EXPECT_EQ(h.pool.copy_ahead(1000), 0u);
  EXPECT_EQ(bytes_of(std::move(held).finish()), expected);
  // Released, it takes everything; the freeze then copies nothing more
  // and is the whole state.
  EXPECT_GT(h.pool.copy_ahead(1000), 0u);
  EXPECT_EQ(h.pool.changes_pending(), 0u);
  EXPECT_EQ(bytes_of(h.pool.freeze().finish()), bytes_of(h.pool.snapshot()));
  // No copy kept: nothing to do.
  pool_state small{quiet()};
  EXPECT_EQ(small.copy_ahead(1000), 0u);
}

TEST(PoolArchive, AResubmittedIdIsRefusedWithinTheWindow) {
  auto p = quiet();
  p.session_id_retention_ms = 60'000;
  harness h{p};
  h.submit("s1");
  h.end("s1", true, "cancelled");
  h.now += 59'000;
  EXPECT_REFUSED(h.submit("s1"), "duplicate_session");
  EXPECT_REFUSED(h.end("s1"), "session_ended");
  // Once the window has passed (and a logged command moved it), the pool
  // no longer knows the id: the oracle's archive lookup refuses it then.
  h.now += 2'000;
  h.submit("other");
  EXPECT_FALSE(h.pool.recently_ended("s1"));
  EXPECT_ACCEPTED(h.submit("s1"));
}

TEST(PoolArchive, TheWindowSurvivesASnapshot) {
  harness h;
  h.submit("s1");
  h.end("s1", true, "cancelled");
  pool_state again{quiet()};
  again.restore(h.pool.snapshot());
  EXPECT_TRUE(again.recently_ended("s1"));
  EXPECT_EQ(bytes_of(again.snapshot()), bytes_of(h.pool.snapshot()));
  auto r = again.apply(submit_cmd("s1", "m", 1, 1, 0, 1, 0, 0), h.now);
  ASSERT_TRUE(r.refused);
  EXPECT_EQ(r.refused->name(), "duplicate_session");
}

// A snapshot taken in two steps (freeze on the pool's thread, finish on
// another) is the snapshot of the moment it was frozen, whatever the pool
// did in between: ids added to and expired from the window, records changed.
TEST(PoolArchive, AFrozenSnapshotIsTheStateWhenItWasFrozen) {
  auto p = quiet();
  p.session_id_retention_ms = 20'000;
  harness h{p};
  h.admit("n1");
  auto serve = [&](int from, int to) {
    for (int i = from; i < to; ++i) {
      auto sid = "s" + std::to_string(i);
      h.submit(sid, "m", 1, 1, 1, 1);
      h.now += 10;
      h.task(sid, {{"n1", pb::OK}});
      h.pass("n1");
    }
  };
  serve(0, 1500);  // about three chunks of ids
  ASSERT_GT(h.pool.recent_ids().size(), 2 * id_window::chunk_ids);
  auto expected = bytes_of(h.pool.snapshot());
  auto frozen = h.pool.freeze();
  h.now += 19'000;
  serve(1500, 3000);  // the oldest ids expire, new ones fill new chunks
  ASSERT_FALSE(h.pool.recently_ended("s0"));
  EXPECT_EQ(bytes_of(std::move(frozen).finish()), expected);
  pool_state again{quiet()};
  again.restore(h.pool.snapshot());
  EXPECT_TRUE(again.recently_ended("s2999"));
  EXPECT_EQ(bytes_of(again.snapshot()), bytes_of(h.pool.snapshot()));
}

TEST(PoolEndSession, EndsQueuedSessionSoItIsNeverStarted) {
  harness h;
  h.submit("s1");
  h.end("s1", true, "cancelled");
  EXPECT_EQ(h.sstate("s1"), pb::FAILED);
  h.admit("n1");
  EXPECT_EQ(h.state("n1"), pb::EPHEMERAL);
  EXPECT_EQ(h.sstate("s1"), pb::FAILED);
}

TEST(PoolEndSession, Refusals) {
  harness h;
  h.submit("s1");
  EXPECT_REFUSED(h.end("ghost"), "unknown_session");
  EXPECT_REFUSED(h.end("s1", true, ""), "no_reason");
  h.end("s1");
  EXPECT_REFUSED(h.end("s1"), "session_ended");
  EXPECT_REFUSED(h.end("s1", true, "again"), "session_ended");
}

// =============================================================================
// node down
// =============================================================================

TEST(PoolNodeDown, ReservedNodeIsLostAndSessionKeepsTheRest) {
  harness h;
  h.admit("n1");
  h.admit("n2");
  h.submit("s1", "m", 1, 2, 2);
  h.now += 10;
  auto r = h.down("n1", "connection reset");
  auto* x = change_of(r, "n1", pb::RESERVED, pb::LOST);
  ASSERT_NE(x, nullptr);
  EXPECT_EQ(x->reason(), "connection reset");
  EXPECT_EQ(h.node("n1").session_id(), "");
  EXPECT_EQ(h.node("n1").reset_at(), h.now);
  EXPECT_EQ(h.sstate("s1"), pb::ACTIVE);
  EXPECT_EQ(nodes_of(h.session("s1")), std::vector<std::string>{"n2"});
  r = h.down("n2");
  x = change_of(r, "n2", pb::RESERVED, pb::LOST);
  ASSERT_NE(x, nullptr);
  EXPECT_EQ(x->reason(), "node down");
  EXPECT_EQ(h.sstate("s1"), pb::QUEUED);
  EXPECT_EQ(h.count(pb::LOST), 2u);
}

TEST(PoolNodeDown, AnyLiveStateGoesLost) {
  harness h;
  h.reg("quarantined");
  h.fail("quarantined");
  h.admit("ephemeral");
  for (auto id : {"quarantined", "ephemeral"}) {
    auto before = h.state(id);
    auto r = h.down(id);
    EXPECT_NE(change_of(r, id, before, pb::LOST), nullptr) << id;
    EXPECT_EQ(h.node(id).test_id(), 0u);
  }
}

// Nor is a test redrawn by going away during it and coming back: it counts
// as failed, and the node returns to its quarantine.
TEST(PoolNodeDown, ANodeGoneDuringItsTestFailsIt) {
  auto p = quiet();
  p.quarantine_backoff_ms = 10000;
  harness h{p};
  h.reg("n1");
  auto r = h.down("n1");
  EXPECT_NE(change_of(r, "n1", pb::TESTING, pb::QUARANTINED), nullptr);
  EXPECT_NE(change_of(r, "n1", pb::QUARANTINED, pb::LOST), nullptr);
  EXPECT_EQ(h.node("n1").test_id(), 0u);
  EXPECT_EQ(h.node("n1").strikes(), 1u);
  EXPECT_EQ(h.pool.tests_failed(), 1u);
  auto until = h.node("n1").quarantine_until();
  h.now = until - 1;
  EXPECT_EQ(test_request(h.reg("n1"), "n1"), nullptr);
  EXPECT_EQ(h.state("n1"), pb::QUARANTINED);
  // Gone during a test once too often: retired, and it stays so.
  auto q = quiet();
  q.max_strikes = 2;
  harness g{q};
  g.reg("n2");
  g.down("n2");
  g.now = g.node("n2").quarantine_until() + 1;
  g.reg("n2");
  ASSERT_EQ(g.state("n2"), pb::TESTING);
  g.down("n2");
  EXPECT_EQ(g.state("n2"), pb::RETIRED);
}

TEST(PoolNodeDown, Refusals) {
  harness h;
  EXPECT_REFUSED(h.down("ghost"), "unknown_node");
  h.admit("n1");
  h.down("n1");
  EXPECT_REFUSED(h.down("n1"), "not_connected");
}

// =============================================================================
// tick
// =============================================================================

TEST(PoolTick, NothingToDoChangesNothing) {
  harness h;
  auto r = h.tick();
  EXPECT_FALSE(r.changed);
  EXPECT_TRUE(r.events.empty());
  h.admit("n1");
  h.now += 100;
  r = h.tick();
  EXPECT_FALSE(r.changed);
  EXPECT_EQ(h.pool.last_now(), 1000);
}

// Liveness is the gateway's call (a NodeDown command); the tick never
// decides from heartbeat times, so a replay cannot disagree with what the
// oracle saw.
TEST(PoolTick, SilenceAloneLosesNoNode) {
  auto p = quiet();
  p.heartbeat_timeout_ms = 5000;
  harness h{p};
  h.admit("silent");
  h.submit("s1");
  ASSERT_EQ(h.state("silent"), pb::RESERVED);
  h.now = 60000;
  auto r = h.tick();
  EXPECT_EQ(change_of(r, "silent", pb::RESERVED, pb::LOST), nullptr);
  EXPECT_NE(h.state("silent"), pb::LOST);
}

TEST(PoolRegister, LostNodeReturningWithinQuarantineIsQuarantinedAgain) {
  auto p = quiet();
  p.quarantine_backoff_ms = 10000;
  harness h{p};
  h.reg("q");
  h.fail("q");
  ASSERT_EQ(h.state("q"), pb::QUARANTINED);
  auto until = h.node("q").quarantine_until();
  h.down("q");
  ASSERT_EQ(h.state("q"), pb::LOST);
  h.now = until - 1;
  h.reg("q");
  EXPECT_EQ(h.state("q"), pb::QUARANTINED);
  EXPECT_EQ(h.node("q").quarantine_until(), until);
  // After the backoff, coming back means a retest as usual.
  h.down("q");
  h.now = until + 1;
  h.reg("q");
  EXPECT_EQ(h.state("q"), pb::TESTING);
}

TEST(PoolTick, TestDeadlineFailsTheTest) {
  harness h;
  h.reg("n1");
  h.admit("r1");
  h.submit("s1", "m", 1, 1, 0, 1);
  h.task("s1", {{"r1", pb::OK}});
  ASSERT_EQ(h.state("r1"), pb::REVALIDATING);
  auto deadline = h.node("n1").test_deadline();
  ASSERT_EQ(h.node("r1").test_deadline(), deadline);
  h.now = deadline;
  EXPECT_FALSE(h.tick().changed);
  h.now = deadline + 1;
  auto r = h.tick();
  EXPECT_NE(change_of(r, "n1", pb::TESTING, pb::QUARANTINED), nullptr);
  auto* x = change_of(r, "r1", pb::REVALIDATING, pb::QUARANTINED);
  ASSERT_NE(x, nullptr);
  EXPECT_EQ(x->reason(), "test deadline passed");
  EXPECT_EQ(count_events(r, pb::Event::kTestFinished), 2);
  EXPECT_EQ(h.pool.tests_failed(), 2u);
}

TEST(PoolTick, QuarantineExpiryStartsRetest) {
  harness h;
  h.reg("n1");
  h.fail("n1");
  h.now = h.node("n1").quarantine_until();
  auto r = h.tick();
  auto* x = change_of(r, "n1", pb::QUARANTINED, pb::TESTING);
  ASSERT_NE(x, nullptr);
  EXPECT_EQ(x->reason(), "retest");
  EXPECT_EQ(h.node("n1").test_kind(), pb::RETEST);
  h.pass("n1");
  EXPECT_EQ(h.state("n1"), pb::EPHEMERAL);
}

TEST(PoolTick, EphemeralWindowExpiryStartsRetest) {
  auto p = quiet();
  p.ephemeral_window_ms = 10000;
  harness h{p};
  h.admit("n1");
  h.now = 1000 + 10000;
  EXPECT_FALSE(h.tick().changed);
  h.now += 1;
  auto r = h.tick();
  EXPECT_NE(change_of(r, "n1", pb::EPHEMERAL, pb::TESTING), nullptr);
  ASSERT_NE(test_request(r, "n1"), nullptr);
  EXPECT_EQ(test_request(r, "n1")->kind(), pb::RETEST);
  h.pass("n1");
  EXPECT_EQ(h.node("n1").ephemeral_at(), h.now);
}

TEST(PoolTick, ExpiredEphemeralNodeIsNotReservedBeforeTheTick) {
  // I2: a node whose ephemeral window ran out is not handed to a session,
  // even when a command other than a tick arrives first.
  auto p = quiet();
  p.ephemeral_window_ms = 10000;
  harness h{p};
  h.admit("n1");
  h.now = 1000 + 10000;  // last valid moment
  h.submit("edge");
  EXPECT_EQ(h.sstate("edge"), pb::ACTIVE);
  h.end("edge");
  h.pass("n1");  // re-validated at 11000
  h.now = 11000 + 10001;
  h.submit("late");
  EXPECT_EQ(h.sstate("late"), pb::QUEUED);
  EXPECT_EQ(h.state("n1"), pb::EPHEMERAL);
  h.tick();
  EXPECT_EQ(h.state("n1"), pb::TESTING);
  h.pass("n1");
  EXPECT_EQ(h.sstate("late"), pb::ACTIVE);
}

TEST(PoolTick, AShorterWindowConfiguredLaterKeepsEarlierReservationsValid) {
  // I2 holds a reservation to the window it was made under: a Configure
  // that shortens the window (a new leader with another configuration)
  // does not make a node reserved late in the old window a violation.
  auto p = quiet();
  p.ephemeral_window_ms = 60000;
  p.idle_threshold_ms = 1'000'000;
  harness h{p};
  h.admit("n1");                  // ephemeral from 1000
  h.now = 1000 + 50000;           // late in the window
  h.submit("late");
  ASSERT_EQ(h.sstate("late"), pb::ACTIVE);
  auto shorter = p;
  shorter.ephemeral_window_ms = 10000;
  pb::Command conf;
  conf.mutable_configure()->set_params_json(to_json(shorter));
  ++h.now;
  ASSERT_FALSE(h.apply(conf).refused);  // the harness checks I1-I5 after it
  EXPECT_EQ(h.state("n1"), pb::RESERVED);
  auto vs = h.pool.check_invariants();
  EXPECT_TRUE(vs.empty()) << describe(vs);
  EXPECT_TRUE(check_snapshot(h.pool.snapshot()).empty());
  // A reservation made under the shorter window is held to it.
  h.end("late");
  h.pass("n1");
  h.now += 10001;
  h.submit("later");
  EXPECT_EQ(h.sstate("later"), pb::QUEUED);
}

TEST(PoolTick, ReservePeriodReleasesNode) {
  auto p = quiet();
  p.reserve_period_ms = 3000;
  p.idle_threshold_ms = 1'000'000;
  harness h{p};
  h.admit("a");
  h.admit("b");
  h.submit("own", "m", 1, 1, 0, 10, 0, /*period*/ 2000);
  h.submit("dflt", "m", 1, 1);
  auto own = h.session("own").nodes(0);
  auto dflt = h.session("dflt").nodes(0);
  h.now = 1000 + 2000;
  EXPECT_FALSE(h.tick().changed);
  h.now += 1;
  auto r = h.tick();
  ASSERT_NE(release_of(r, own), nullptr);
  EXPECT_EQ(release_of(r, own)->reason(), "reserve_period");
  EXPECT_EQ(h.state(own), pb::REVALIDATING);
  EXPECT_EQ(h.state(dflt), pb::RESERVED);
  EXPECT_EQ(h.sstate("own"), pb::QUEUED);
  h.now = 1000 + 3000 + 1;
  r = h.tick();
  ASSERT_NE(release_of(r, dflt), nullptr);
  EXPECT_EQ(h.sstate("dflt"), pb::QUEUED);
}

TEST(PoolTick, IdleSessionReleasesNodesAndIsRequeued) {
  auto p = quiet();
  p.idle_threshold_ms = 5000;
  harness h{p};
  h.admit("n1");
  h.admit("n2");
  h.submit("s1", "m", 1, 2, 2);
  h.now += 2000;
  h.task("s1", {{"n1", pb::OK}, {"n2", pb::OK}});
  auto active_at = h.now;
  h.now = active_at + 5000;
  EXPECT_FALSE(h.tick().changed);
  EXPECT_EQ(h.pool.sessions_requeued(), 0u);
  h.now += 1;
  auto r = h.tick();
  for (auto id : {"n1", "n2"}) {
    ASSERT_NE(release_of(r, id), nullptr);
    EXPECT_EQ(release_of(r, id)->reason(), "idle_threshold");
    EXPECT_EQ(h.state(id), pb::REVALIDATING);
  }
  EXPECT_EQ(h.sstate("s1"), pb::QUEUED);
  // Counted, and kept by a snapshot.
  EXPECT_EQ(h.pool.sessions_requeued(), 1u);
  pool_state copy;
  copy.restore(h.pool.snapshot());
  EXPECT_EQ(copy.sessions_requeued(), 1u);
  EXPECT_EQ(h.session("s1").last_activity(), h.now);
  EXPECT_EQ(h.session("s1").tasks_done(), 1u);
}

// An interactive session's client stopped sending prompts: the session
// ends (completed) and its nodes are re-validated. Requeued, as a batch
// session is, it would be served again and again, holding nodes idle for
// a client that may be gone.
TEST(PoolTick, AnIdleInteractiveSessionEndsInsteadOfWaitingAgain) {
  auto p = quiet();
  p.idle_threshold_ms = 5000;
  p.task_phase_timeout_ms = 1000;
  harness h{p};
  h.admit("n1");
  h.admit("n2");
  auto c = submit_cmd("chat", "m", 1, 2, 2, 100);
  c.mutable_submit_session()->set_interactive(true);
  ASSERT_FALSE(h.apply(c).refused);
  ASSERT_EQ(h.sstate("chat"), pb::ACTIVE);
  h.now += 2000;
  h.task("chat", {{"n1", pb::OK}, {"n2", pb::OK}});
  // A prompt sent just before the threshold may still be under way for
  // three phases: the session lives that long besides.
  h.now += 5000 + 3 * 1000;
  EXPECT_FALSE(h.tick().changed);
  EXPECT_EQ(h.sstate("chat"), pb::ACTIVE);
  h.now += 1;
  auto r = h.tick();
  auto* e = end_of(r, "chat");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->state(), pb::COMPLETED);
  EXPECT_EQ(e->reason(), "idle: no prompt within idle_threshold_ms");
  EXPECT_EQ(h.pool.sessions_requeued(), 0u);
  EXPECT_EQ(h.pool.session("chat"), nullptr) << "archived";
  for (auto id : {"n1", "n2"}) {
    ASSERT_NE(release_of(r, id), nullptr);
    EXPECT_EQ(h.state(id), pb::REVALIDATING);
  }
  ASSERT_EQ(r.archived.size(), 1u);
  EXPECT_EQ(r.archived[0].tasks_done(), 1u);
}

TEST(PoolTick, QueueTimeoutFailsSession) {
  auto p = quiet();
  p.queue_timeout_ms = 10000;
  harness h{p};
  h.submit("s1", "none-serves-this");
  h.now = 1000 + 10000;
  EXPECT_FALSE(h.tick().changed);
  h.now += 1;
  auto r = h.tick();
  auto* e = end_of(r, "s1");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->state(), pb::FAILED);
  EXPECT_EQ(h.sstate("s1"), pb::FAILED);
  EXPECT_EQ(h.session("s1").reason(), "no suitable nodes within queue_timeout");
}

TEST(PoolTick, RequeuedSessionGetsAFullQueueTimeout) {
  // A session that ran longer than queue_timeout and then lost its node is
  // queued again; it has not waited queue_timeout yet and is not failed.
  auto p = quiet();
  p.queue_timeout_ms = 10000;
  p.idle_threshold_ms = 1'000'000;
  p.reserve_period_ms = 1'000'000;
  harness h{p};
  h.admit("n1");
  h.submit("s1");
  h.now += 50000;
  h.task("s1", {{"n1", pb::OK}});
  h.down("n1");
  ASSERT_EQ(h.sstate("s1"), pb::QUEUED);
  auto requeued = h.now;
  h.now = requeued + 1;
  h.tick();
  EXPECT_EQ(h.sstate("s1"), pb::QUEUED);
  h.now = requeued + 10000;
  h.tick();
  EXPECT_EQ(h.sstate("s1"), pb::QUEUED);
  h.now = requeued + 10001;
  h.tick();
  EXPECT_EQ(h.sstate("s1"), pb::FAILED);
}

// =============================================================================
// recover
// =============================================================================

TEST(PoolRecover, MakesEverythingInFlightSafe) {
  auto p = quiet();
  p.max_strikes = 2;
  harness h{p};
  h.admit("eph");
  h.admit("res");
  h.submit("s1");
  ASSERT_EQ(h.node("res").state() == pb::RESERVED
              || h.node("eph").state() == pb::RESERVED,
            true);
  auto reserved = h.session("s1").nodes(0);
  auto idle = reserved == "res" ? "eph" : "res";
  h.reg("quar");
  h.fail("quar");
  h.reg("ret");
  h.fail("ret");
  h.now = h.node("ret").quarantine_until();
  h.tick();  // quar and ret are retested
  h.fail("ret");
  ASSERT_EQ(h.state("ret"), pb::RETIRED);
  h.fail("quar");
  ASSERT_EQ(h.state("quar"), pb::RETIRED);
  h.reg("testing");
  h.reg("q2");
  h.fail("q2");
  auto until = h.node("q2").quarantine_until();
  h.submit("s2", "zz");

  h.now += 100;
  auto r = h.recover();
  EXPECT_TRUE(r.changed);
  for (auto id : {std::string{idle}, reserved, std::string{"testing"}}) {
    EXPECT_EQ(h.state(id), pb::LOST) << id;
    EXPECT_EQ(h.node(id).reset_at(), h.now);
  }
  auto* x = change_of(r, reserved, pb::RESERVED, pb::LOST);
  ASSERT_NE(x, nullptr);
  EXPECT_EQ(x->reason(), "oracle restart");
  // A quarantined node is LOST too, but keeps its quarantine: coming back
  // before it ends puts it straight back in quarantine.
  EXPECT_EQ(h.state("q2"), pb::LOST);
  EXPECT_EQ(h.node("q2").quarantine_until(), until);
  h.reg("q2");
  EXPECT_EQ(h.state("q2"), pb::QUARANTINED);
  EXPECT_EQ(h.state("ret"), pb::RETIRED);
  EXPECT_EQ(h.sstate("s1"), pb::QUEUED);
  EXPECT_EQ(h.sstate("s2"), pb::QUEUED);
  // The node comes back, is tested, and the session resumes.
  h.reg(reserved);
  h.pass(reserved);
  EXPECT_EQ(h.sstate("s1"), pb::ACTIVE);
}

// =============================================================================
// empty command
// =============================================================================

TEST(PoolApply, RefusesEmptyCommand) {
  harness h;
  EXPECT_REFUSED(h.apply(pb::Command{}), "empty_command");
}

TEST(PoolApply, TimeNeverRunsBackwards) {
  harness h;
  h.now = 5000;
  h.reg("n1");
  h.now = 100;  // a clock jump backwards
  h.pass("n1");
  EXPECT_EQ(h.node("n1").passed_at(), 5000);
  EXPECT_EQ(h.pool.last_now(), 5000);
}

// =============================================================================
// randomized command streams
// =============================================================================

/// The project's generator, with chance() in whole percent.
struct rng : seeded_rng {
  using seeded_rng::seeded_rng;
  bool chance(int percent) { return below(100) < static_cast<uint64_t>(percent); }
};

params random_params(uint64_t seed) {
  params p;
  p.test_deadline_ms = 2000;
  p.heartbeat_interval_ms = 1000;
  p.heartbeat_timeout_ms = 6000;
  p.ephemeral_window_ms = 20000;
  p.reserve_period_ms = 9000;
  p.idle_threshold_ms = 7000;
  p.queue_timeout_ms = 15000;
  p.quarantine_backoff_ms = 1000;
  p.quarantine_backoff_max_ms = 6000;
  p.max_strikes = 4;
  p.tasks_before_release = 3;
  p.promote_after = 2;
  p.max_level = 3;
  p.recent_size = 4;
  p.selection = seed % 2 ? "random" : "reputation";
  p.seed = seed;
  return p;
}

/// Applies `steps` random commands (`seed` picks them) through `h`; when
/// `trace` is given, appends each command's outcome to it; `on_step` runs
/// after each step.
void random_run(harness& h, uint64_t seed, int steps,
                std::string* trace = nullptr,
                const std::function<void()>& on_step = {}) {
  rng r{seed * 0x2545F4914F6CDD1DULL + 17};
  const int nodes = 8;
  int next_session = 0;
  auto node_name = [&] { return "n" + std::to_string(r.below(nodes)); };
  auto models_of = [](const std::string& id) {
    int i = id[1] - '0';
    std::vector<std::string> ms{"m0"};
    if (i % 2)
      ms.push_back("m1");
    if (i % 3 == 0)
      ms.push_back("m2");
    return ms;
  };
  auto some_session = [&]() -> std::string {
    if (h.pool.sessions().empty() || r.chance(5))
      return "s-unknown";
    auto k = r.below(h.pool.sessions().size());
    return live_by_id(h.pool)[k]->id();
  };
  auto run = [&](const pb::Command& c) {
    auto res = h.apply(c);
    if (trace) {
      *trace += std::to_string(h.now) + " " + c.ShortDebugString() + " -> ";
      if (res.refused)
        *trace += "refused " + res.refused->name();
      for (auto& e : res.events)
        *trace += bytes_of(e);
      *trace += "\n";
    }
  };
  for (int step = 0; step < steps && !h.broken; ++step) {
    auto t = r.below(100);
    if (t < 30) {
    } else if (t < 88) {
      h.now += 1 + static_cast<int64_t>(r.below(800));
    } else if (t < 97) {
      h.now += 1000 + static_cast<int64_t>(r.below(8000));
    } else {
      h.now += 10000 + static_cast<int64_t>(r.below(30000));
    }
    if (r.chance(1))
      h.now -= static_cast<int64_t>(r.below(300));  // clock jitter
    auto k = r.below(100);
    if (k < 9) {
      auto id = node_name();
      run(reg_cmd(id, models_of(id), r.chance(4) ? "stolen-key" : ""));
    } else if (k < 22) {
      auto mode = r.chance(85) ? pb::AVAILABLE
                               : (r.chance(50) ? pb::BUSY : pb::DRAINING);
      run(hb_cmd(node_name(), mode));
    } else if (k < 28) {
      // everyone still connected sends a heartbeat
      std::vector<std::string> live;
      for (auto& [id, n] : h.pool.nodes())
        if (n.state() != pb::RETIRED && n.state() != pb::LOST)
          live.push_back(id);
      for (auto& id : live)
        run(hb_cmd(id, pb::AVAILABLE));
    } else if (k < 50) {
      std::vector<std::string> testing;
      for (auto& [id, n] : h.pool.nodes())
        if (n.state() == pb::TESTING || n.state() == pb::REVALIDATING)
          testing.push_back(id);
      std::string id = testing.empty() || r.chance(5)
                         ? node_name()
                         : testing[r.below(testing.size())];
      uint64_t tid = h.pool.node(id) ? h.pool.node(id)->test_id() : 1;
      if (r.chance(5))
        tid = tid > 0 ? tid - 1 : 7;
      uint32_t total = 5, correct = 5;
      auto q = r.below(100);
      if (q < 65)
        correct = 5;
      else if (q < 75)
        correct = 3;
      else if (q < 95)
        correct = static_cast<uint32_t>(r.below(3));
      else if (q < 97)
        total = 0;
      else
        correct = 6;
      run(result_cmd(id, tid, correct, total));
    } else if (k < 58) {
      std::string sid = "s" + std::to_string(seed % 100000) + "-"
                        + std::to_string(next_session++);
      if (r.chance(3))
        sid = "";
      else if (r.chance(3) && !h.pool.sessions().empty())
        sid = live_by_id(h.pool).front()->id();
      const char* models[] = {"", "m0", "m1", "m2", "mx"};
      uint32_t mn = 1 + static_cast<uint32_t>(r.below(3));
      uint32_t mx = mn + static_cast<uint32_t>(r.below(3));
      uint32_t red = static_cast<uint32_t>(r.below(mx + 1));
      if (r.chance(4))
        mn = mx + 1;
      int64_t period = r.chance(70) ? 0 : 1000 + static_cast<int64_t>(r.below(12000));
      if (r.chance(3))
        period = -5;
      run(submit_cmd(sid, models[r.below(5)], mn, mx, red,
                     1 + static_cast<uint32_t>(r.below(6)),
                     static_cast<uint32_t>(r.below(3)), period));
    } else if (k < 74) {
      std::vector<std::string> active;
      for (auto* s : live_by_id(h.pool))
        if (s->state() == pb::ACTIVE)
          active.push_back(s->id());
      std::string sid = active.empty() || r.chance(5)
                          ? some_session()
                          : active[r.below(active.size())];
      auto* s = h.pool.session(sid);
      uint32_t no = s ? s->tasks_done() : 0;
      if (r.chance(5))
        no += 1;
      outcomes os;
      if (s)
        for (auto& nid : s->nodes()) {
          if (r.chance(10))
            continue;
          auto q = r.below(100);
          auto o = q < 75 ? pb::OK
                   : q < 85 ? pb::OUTLIER
                   : q < 93 ? pb::TIMEOUT
                            : pb::MISMATCH;
          os.emplace_back(nid, o);
        }
      if (r.chance(4))
        os.emplace_back(node_name(), pb::OK);
      run(task_cmd(sid, no, os));
    } else if (k < 78) {
      bool failed = r.chance(50);
      run(end_cmd(some_session(), failed,
                  failed && r.chance(90) ? "client gave up" : ""));
    } else if (k < 82) {
      run(down_cmd(node_name(), r.chance(50) ? "actor down" : ""));
    } else if (k < 98) {
      run(tick_cmd());
    } else if (k < 99) {
      run(recover_cmd());
    } else {
      run(pb::Command{});
    }
    if (on_step)
      on_step();
  }
}

TEST(PoolRandomized, InvariantsHoldForSeeds1To200) {
  for (uint64_t seed = 1; seed <= 200; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    harness h{random_params(seed)};
    random_run(h, seed, 400);
    if (h.broken) {
      ADD_FAILURE() << "randomized run broke an invariant or a refusal "
                       "contract with seed "
                    << seed;
      break;  // one seed's worth of failures is enough to read
    }
  }
}

TEST(PoolRandomized, RunsExerciseTheWholeLifecycle) {
  // Guards the generator: the streams above must actually reach every state
  // and every session outcome, or the invariant test proves little.
  std::set<int> node_states, session_states;
  for (uint64_t seed = 1; seed <= 200; ++seed) {
    harness h{random_params(seed)};
    random_run(h, seed, 400, nullptr, [&] {
      for (auto& [id, n] : h.pool.nodes())
        node_states.insert(n.state());
      for (auto& [id, s] : h.pool.sessions())
        session_states.insert(s.state());
      for (auto& [id, s] : h.archive)
        session_states.insert(s.state());
    });
  }
  for (int st = pb::REGISTERED + 1; st <= pb::LOST; ++st)
    EXPECT_TRUE(node_states.count(st))
      << "no run reached " << to_string(static_cast<pb::NodeState>(st));
  for (int st = pb::QUEUED; st <= pb::FAILED; ++st)
    EXPECT_TRUE(session_states.count(st))
      << "no run reached " << to_string(static_cast<pb::SessionState>(st));
}

// =============================================================================
// determinism, snapshots
// =============================================================================

TEST(PoolDeterminism, SameCommandsGiveByteIdenticalSnapshots) {
  for (uint64_t seed : {3u, 4u, 17u, 101u}) {
    harness a{random_params(seed)}, b{random_params(seed)};
    std::string ta, tb;
    random_run(a, seed, 500, &ta);
    random_run(b, seed, 500, &tb);
    EXPECT_EQ(ta, tb) << "seed " << seed;
    EXPECT_EQ(bytes_of(a.pool.snapshot()), bytes_of(b.pool.snapshot()))
      << "seed " << seed;
    EXPECT_FALSE(a.pool.sessions().empty());
  }
  // And the check can tell runs apart.
  harness c{random_params(5)}, d{random_params(5)};
  random_run(c, 5, 300);
  random_run(d, 6, 300);
  EXPECT_NE(bytes_of(c.pool.snapshot()), bytes_of(d.pool.snapshot()));
}

TEST(PoolSnapshot, RoundTripGivesIdenticalLaterBehaviour) {
  for (uint64_t seed : {7u, 8u, 42u}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    harness a{random_params(seed)};
    random_run(a, seed, 250);
    auto snap = a.pool.snapshot();
    harness b{random_params(seed)};
    b.restore(snap);
    b.now = a.now;
    EXPECT_EQ(bytes_of(b.pool.snapshot()), bytes_of(snap));
    EXPECT_EQ(b.pool.count_by_state(), a.pool.count_by_state());
    EXPECT_EQ(b.pool.tests_passed(), a.pool.tests_passed());
    std::string ta, tb;
    random_run(a, seed + 1000, 250, &ta);
    random_run(b, seed + 1000, 250, &tb);
    EXPECT_EQ(ta, tb);
    EXPECT_EQ(bytes_of(a.pool.snapshot()), bytes_of(b.pool.snapshot()));
  }
}

TEST(PoolSnapshot, RestoreReplacesEverything) {
  harness a, b;
  a.admit("n1");
  a.submit("s1", "zz");
  b.admit("other");
  b.submit("x");
  b.submit("y");
  b.restore(a.pool.snapshot());
  EXPECT_EQ(b.pool.node("other"), nullptr);
  EXPECT_EQ(b.pool.session("x"), nullptr);
  EXPECT_EQ(b.count(pb::EPHEMERAL), 1u);
  // The restored queue and pool work: a new node serves the queued session.
  b.reg("n2", {"zz"});
  b.pass("n2");
  EXPECT_EQ(b.sstate("s1"), pb::ACTIVE);
  b.submit("s2");  // seq continues from the snapshot: no I4 complaint
  EXPECT_EQ(b.session("s2").seq(), 2u);
}

// =============================================================================
// selection strategies
// =============================================================================

/// A snapshot of EPHEMERAL nodes with the given (id, reputation, level).
pb::Snapshot pool_of(
  const std::vector<std::tuple<std::string, double, uint32_t>>& xs,
  uint64_t seed, int64_t now = 1000) {
  pb::Snapshot s;
  s.set_last_now(now);
  s.set_next_test_id(1);
  s.set_next_session_seq(1);
  s.set_rng_state(seed);
  seeded_rng keys{seed ^ 0x9e3779b97f4a7c15ULL};
  for (auto& [id, rep, level] : xs) {
    auto* n = s.add_nodes();
    n->set_pool_key(keys.next());
    n->set_id(id);
    n->set_public_key("key-" + id);
    n->add_models("m");
    n->set_reputation(rep);
    n->set_level(level);
    n->set_state(pb::EPHEMERAL);
    n->set_added_at(now);
    n->set_reset_at(now);
    n->set_passed_at(now);
    n->set_ephemeral_at(now);
    n->set_last_heartbeat(now);
  }
  return s;
}

std::string first_pick(const std::string& strategy, uint64_t seed,
                       const pb::Snapshot& snap) {
  auto p = quiet();
  p.selection = strategy;
  p.seed = seed;
  harness h{p};
  h.restore(snap);
  h.submit("s1", "m", 1, 1);
  return h.session("s1").nodes_size() ? h.session("s1").nodes(0) : "";
}

TEST(PoolSelection, ReputationPicksBestThenHigherLevel) {
  auto p = quiet();
  harness h{p};
  h.restore(pool_of({{"b", 0.7, 0}, {"a", 0.9, 0}, {"c", 0.8, 0}, {"d", 0.8, 1}},
                    1));
  std::vector<std::string> order;
  for (int i = 0; i < 4; ++i) {
    auto sid = "s" + std::to_string(i);
    h.submit(sid, "m", 1, 1);
    order.push_back(h.session(sid).nodes(0));
  }
  EXPECT_EQ(order, (std::vector<std::string>{"a", "d", "c", "b"}));
}

TEST(PoolSelection, ReputationBreaksTiesRandomlyButDeterministically) {
  auto snap = pool_of({{"t0", 0.6, 1}, {"t1", 0.6, 1}, {"t2", 0.6, 1},
                       {"t3", 0.6, 1}, {"t4", 0.6, 1}, {"low", 0.5, 1},
                       {"lowlevel", 0.6, 0}},
                      0);
  std::set<std::string> picked;
  for (uint64_t seed = 1; seed <= 40; ++seed) {
    snap.set_rng_state(seed);
    auto x = first_pick("reputation", seed, snap);
    EXPECT_EQ(x, first_pick("reputation", seed, snap)) << "seed " << seed;
    EXPECT_EQ(x.substr(0, 1), "t") << "seed " << seed << " picked " << x;
    picked.insert(x);
  }
  EXPECT_GE(picked.size(), 3u) << "ties are not broken at random";
}

TEST(PoolSelection, RandomIgnoresReputationAndIsDeterministic) {
  auto snap = pool_of({{"best", 0.99, 5}, {"mid", 0.5, 1}, {"worst", 0.01, 0},
                       {"x", 0.3, 0}},
                      0);
  std::set<std::string> picked;
  for (uint64_t seed = 1; seed <= 40; ++seed) {
    snap.set_rng_state(seed);
    auto x = first_pick("random", seed, snap);
    EXPECT_EQ(x, first_pick("random", seed, snap)) << "seed " << seed;
    picked.insert(x);
  }
  EXPECT_GE(picked.size(), 3u);
  EXPECT_TRUE(picked.count("worst"));
}

TEST(PoolSelection, StrategiesRankDirectly) {
  pb::NodeRecord a, b, c;
  a.set_reputation(0.9);
  b.set_reputation(0.4);
  c.set_reputation(0.4);
  c.set_level(2);
  auto less = [](node_rank x, node_rank y) {
    return std::tie(x.primary, x.secondary) < std::tie(y.primary, y.secondary);
  };
  auto rep = make_selection("reputation");
  ASSERT_NE(rep, nullptr);
  EXPECT_TRUE(less(rep->rank(a), rep->rank(c)));  // better reputation first
  EXPECT_TRUE(less(rep->rank(c), rep->rank(b)));  // then the higher level
  auto ran = make_selection("random");
  ASSERT_NE(ran, nullptr);
  EXPECT_EQ(ran->rank(a), ran->rank(b));  // only the pool keys order them
  EXPECT_EQ(make_selection("fastest"), nullptr);
  params p;
  p.selection = "fastest";
  EXPECT_THROW(pool_state{p}, std::invalid_argument);
}

TEST(PoolSelection, LatencyPicksTheFastestMeasuredNodesFirst) {
  double lat[] = {40, 0, 10, 25};  // n1 not measured yet
  std::vector<std::pair<node_rank, std::string>> ranked;
  auto fast = make_selection("latency");
  ASSERT_NE(fast, nullptr);
  for (size_t i = 0; i < 4; ++i) {
    pb::NodeRecord n;
    n.set_id("n" + std::to_string(i));
    n.set_latency_ms(lat[i]);
    ranked.emplace_back(fast->rank(n), n.id());
  }
  std::sort(ranked.begin(), ranked.end(), [](auto& x, auto& y) {
    return std::tie(x.first.primary, x.first.secondary)
           < std::tie(y.first.primary, y.first.secondary);
  });
  std::vector<std::string> order;
  for (auto& [r, id] : ranked)
    order.push_back(id);
  EXPECT_EQ(order, (std::vector<std::string>{"n2", "n3", "n0", "n1"}));
}

TEST(PoolSelection, LatencyStrategyReservesTheFastestNodeOfThePool) {
  auto snap = pool_of({{"slow", 0.5, 0}, {"new", 0.5, 0}, {"fast", 0.5, 0}},
                      7);
  snap.mutable_nodes(0)->set_latency_ms(80);
  snap.mutable_nodes(2)->set_latency_ms(12);
  for (uint64_t seed = 1; seed <= 10; ++seed) {
    snap.set_rng_state(seed);
    EXPECT_EQ(first_pick("latency", seed, snap), "fast") << "seed " << seed;
  }
}

/// Equal nodes share the work: a node that has waited long in the pool is
/// as likely to be picked next as one that just came back from its
/// re-validation (the walk over equal ones starts at a random point).
TEST(PoolSelection, EqualNodesShareReservationsWhateverTheirAge) {
  for (std::string strategy : {"random", "reputation"}) {
    auto p = quiet();
    p.selection = strategy;
    p.reputation_alpha = 0;  // every node keeps an equal rank
    p.promote_after = 0;
    p.tasks_before_release = 1000;
    harness h{p};
    const int nodes = 8, cycles = 1000;
    for (int i = 0; i < nodes; ++i)
      h.admit("n" + std::to_string(i));
    std::map<std::string, int> picks;
    for (int c = 0; c < cycles; ++c) {
      auto sid = "s" + std::to_string(c);
      h.submit(sid, "m", 1, 1, 1, 1);
      ASSERT_EQ(h.session(sid).nodes_size(), 1);
      auto nid = h.session(sid).nodes(0);
      ++picks[nid];
      h.end(sid);
      h.pass(nid);
      ASSERT_EQ(h.state(nid), pb::EPHEMERAL);
    }
    // Uniform would be 125 each; a choice that favoured the newest
    // arrival would starve the others.
    for (int i = 0; i < nodes; ++i)
      EXPECT_GE(picks["n" + std::to_string(i)], cycles / nodes / 2)
        << strategy << ": node n" << i << " was picked "
        << picks["n" + std::to_string(i)] << " times of " << cycles;
  }
}

TEST(PoolLatency, OkOutcomesFeedALatencyAverage) {
  auto p = quiet();
  p.reputation_alpha = 0.5;
  p.tasks_before_release = 100;
  harness h{p};
  h.admit("n1");
  h.submit("s1", "m", 1, 1, 1, 10);
  ASSERT_EQ(h.state("n1"), pb::RESERVED);
  EXPECT_EQ(h.node("n1").latency_ms(), 0);
  auto with_latency = [&](uint32_t ms, pb::TaskOutcome o) {
    auto c = task_cmd("s1", h.session("s1").tasks_done(), {{"n1", o}});
    c.mutable_task_done()->mutable_outcomes(0)->set_latency_ms(ms);
    return h.apply(c);
  };
  with_latency(100, pb::OK);
  EXPECT_DOUBLE_EQ(h.node("n1").latency_ms(), 100);  // first measurement
  with_latency(50, pb::OK);
  EXPECT_DOUBLE_EQ(h.node("n1").latency_ms(), 75);   // EWMA, alpha 0.5
  with_latency(5000, pb::OUTLIER);                   // only OK outcomes count
  EXPECT_DOUBLE_EQ(h.node("n1").latency_ms(), 75);
}

// =============================================================================
// the invariant checker can fail
// =============================================================================

/// A valid state: n1 serves s1, n2 serves s2, n3 is in the pool, s3 queued.
pb::Snapshot valid_state() {
  harness h;
  h.admit("n1");
  h.submit("s1");
  h.admit("n2");
  h.submit("s2");
  h.admit("n3");
  h.submit("s3", "zz");
  EXPECT_EQ(h.node("n1").session_id(), "s1");
  EXPECT_EQ(h.node("n2").session_id(), "s2");
  EXPECT_EQ(h.state("n3"), pb::EPHEMERAL);
  EXPECT_TRUE(h.pool.check_invariants().empty());
  return h.pool.snapshot();
}

pb::NodeRecord* node_in(pb::Snapshot& s, const std::string& id) {
  for (auto& n : *s.mutable_nodes())
    if (n.id() == id)
      return &n;
  return nullptr;
}

pb::SessionRecord* session_in(pb::Snapshot& s, const std::string& id) {
  for (auto& x : *s.mutable_sessions())
    if (x.id() == id)
      return &x;
  return nullptr;
}

std::vector<violation> check(const pb::Snapshot& s) {
  pool_state p{quiet()};
  p.restore(s);
  return p.check_invariants();
}

/// The check on touched records only, told which records were touched.
std::vector<violation> check_touched(const pb::Snapshot& s,
                                     const std::vector<std::string>& nodes,
                                     const std::vector<std::string>& sessions) {
  pool_state p{quiet()};
  p.restore(s);
  return p.check_records(nodes, sessions);
}

/// The check of a snapshot writer, on the copy a pool keeps of its records
/// (restored from `s`: what a restore keeps of it).
std::vector<violation> check_kept_copy(const pb::Snapshot& s) {
  pool_state p{quiet()};
  p.set_kept_copy_from(0);
  p.restore(s);
  auto f = p.freeze();
  EXPECT_TRUE(f.live) << "the copy was not kept";
  return f.check();
}

/// Every check finds a violation of `inv` in `s`, whose broken records are
/// `nodes` and `sessions`: on the whole state, on the records named, on the
/// snapshot's records alone, and (`kept`) on a pool's kept copy of them.
void expect_caught(const pb::Snapshot& s, const char* inv,
                   const std::vector<std::string>& nodes,
                   const std::vector<std::string>& sessions, bool kept = true) {
  auto whole = check(s);
  EXPECT_TRUE(has_violation(whole, inv)) << "whole state:\n" << describe(whole);
  auto touched = check_touched(s, nodes, sessions);
  EXPECT_TRUE(has_violation(touched, inv)) << "touched records:\n"
                                           << describe(touched);
  auto records = check_snapshot(s);
  EXPECT_TRUE(has_violation(records, inv)) << "snapshot records:\n"
                                           << describe(records);
  if (kept) {
    auto copy = check_kept_copy(s);
    EXPECT_TRUE(has_violation(copy, inv)) << "kept copy:\n" << describe(copy);
  }
}

TEST(PoolInvariants, ValidStateHasNoViolations) {
  EXPECT_TRUE(check(valid_state()).empty());
  EXPECT_TRUE(check_snapshot(valid_state()).empty());
  EXPECT_TRUE(check_kept_copy(valid_state()).empty());
  EXPECT_TRUE(check_touched(valid_state(), {"n1", "n2", "n3"},
                            {"s1", "s2", "s3"})
                .empty());
}

TEST(PoolInvariants, DetectsI1NodeListedByTwoSessions) {
  auto s = valid_state();
  session_in(s, "s2")->add_nodes("n1");
  expect_caught(s, "I1", {}, {"s2"});
}

TEST(PoolInvariants, DetectsI1ReservedNodeWithoutSession) {
  auto s = valid_state();
  auto* n = node_in(s, "n3");
  n->set_state(pb::RESERVED);
  n->set_session_id("nobody");
  expect_caught(s, "I1", {"n3"}, {});
}

TEST(PoolInvariants, DetectsI2ReservedWithoutFreshPass) {
  auto s = valid_state();
  auto* n = node_in(s, "n1");
  n->set_reset_at(n->passed_at() + 1);
  expect_caught(s, "I2", {"n1"}, {});
  s = valid_state();
  n = node_in(s, "n2");
  n->set_ephemeral_at(n->reserved_at() - quiet().ephemeral_window_ms - 1);
  expect_caught(s, "I2", {"n2"}, {});
}

TEST(PoolInvariants, DetectsI3FailedNodeInPool) {
  auto s = valid_state();
  node_in(s, "n3")->set_last_test_failed(true);
  expect_caught(s, "I3", {"n3"}, {});
}

TEST(PoolInvariants, DetectsI4LostSession) {
  auto s = valid_state();
  auto* xs = s.mutable_sessions();
  for (int i = 0; i < xs->size(); ++i)
    if ((*xs)[i].id() == "s3") {
      xs->erase(xs->begin() + i);
      break;
    }
  expect_caught(s, "I4", {}, {});  // the counters alone show it
  s = valid_state();
  session_in(s, "s3")->set_state(pb::FAILED);  // ended, yet still live
  expect_caught(s, "I4", {}, {"s3"});
  // An ended session counted twice: one more than was ever accepted.
  s = valid_state();
  s.set_sessions_completed(s.sessions_completed() + 1);
  expect_caught(s, "I4", {}, {});
}

TEST(PoolInvariants, DetectsAnIdGivenTwiceInASnapshot) {
  // A restore keeps one record of an id given twice: the other would be
  // lost. (A pool's kept copy is by id: it cannot hold an id twice.)
  auto s = valid_state();
  *s.add_nodes() = *node_in(s, "n3");
  expect_caught(s, "I5", {"n3"}, {}, false);
  EXPECT_TRUE(has_violation(check_snapshot(s), "I5"));
  s = valid_state();
  *s.add_sessions() = *session_in(s, "s3");
  s.set_next_session_seq(s.next_session_seq() + 1);  // counted as accepted
  auto v = check_snapshot(s);
  EXPECT_TRUE(has_violation(v, "I4")) << describe(v);
  EXPECT_TRUE(has_violation(check(s), "I4"));
}

TEST(PoolInvariants, DetectsI4BadArchivedRecord) {
  // What a command hands to the archive must be a final record.
  pool_state p{quiet()};
  p.restore(valid_state());
  pb::SessionRecord a;
  a.set_id("gone");
  a.set_state(pb::FAILED);  // failed, but no reason
  EXPECT_TRUE(has_violation(p.check_records({}, {}, {a}), "I4"));
  a.set_reason("why");
  EXPECT_TRUE(p.check_records({}, {}, {a}).empty());
  a.set_id("s1");  // archived while still live
  EXPECT_TRUE(has_violation(p.check_records({}, {}, {a}), "I4"));
}

TEST(PoolInvariants, DetectsI5NodeOutsideEveryState) {
  auto s = valid_state();
  node_in(s, "n3")->set_state(pb::NODE_STATE_UNSPECIFIED);
  expect_caught(s, "I5", {"n3"}, {});
  s = valid_state();
  node_in(s, "n3")->set_state(static_cast<pb::NodeState>(42));
  expect_caught(s, "I5", {"n3"}, {});
}

TEST(PoolInvariants, CheckAfterNamesWhatTheCommandTouched) {
  // check_after() finds the records from the command and its events: a
  // broken record that the command touched is caught, one it did not touch
  // is left to the whole-state check.
  auto s = valid_state();
  node_in(s, "n3")->set_last_test_failed(true);  // in the pool, failed
  pool_state p{quiet()};
  p.restore(s);
  pb::Command hb;
  hb.mutable_heartbeat()->set_node_id("n3");
  auto r = p.apply(hb, 100000);
  ASSERT_FALSE(r.refused);
  EXPECT_TRUE(has_violation(p.check_after(hb, r), "I3"));
  hb.mutable_heartbeat()->set_node_id("n1");
  r = p.apply(hb, 100001);
  EXPECT_TRUE(p.check_after(hb, r).empty());
  EXPECT_TRUE(has_violation(p.check_invariants(), "I3"));
}

// A session that loses a node to a NodeDown is named by no event (only the
// node's state change is): check_after() finds it among the records the pool
// noted while applying the command.
TEST(PoolInvariants, CheckAfterChecksASessionNoEventNames) {
  harness h;
  h.admit("n1");
  h.admit("n2");
  h.submit("s1", "m", 1, 2, 2);
  ASSERT_EQ(nodes_of(h.session("s1")).size(), 2u);
  auto s = h.pool.snapshot();
  session_in(s, "s1")->add_nodes("n2");  // n2 listed twice
  pool_state p{quiet()};
  p.restore(s);
  auto down = down_cmd("n1");
  auto r = p.apply(down, h.now + 10);
  ASSERT_FALSE(r.refused);
  for (auto& e : r.events)
    ASSERT_EQ(bytes_of(e).find("s1"), std::string::npos)
      << "an event names s1: " << e.ShortDebugString();
  EXPECT_TRUE(has_violation(p.check_after(down, r), "I1"));
}

// =============================================================================
// review fixes
// =============================================================================

// The gateway forwards a heartbeat only when the mode differs from the one it
// last sent, and it assumes AVAILABLE for a node that has just registered.
// A registration must therefore make the node AVAILABLE in the pool too, or a
// node that was BUSY before going away is never handed out again.
TEST(PoolReview, RegistrationMakesANodeAvailableAgain) {
  harness h;
  h.admit("n1");
  h.hb("n1", pb::BUSY);
  ASSERT_EQ(h.node("n1").mode(), pb::BUSY);
  h.down("n1");
  h.reg("n1");
  EXPECT_EQ(h.node("n1").mode(), pb::AVAILABLE);
  h.pass("n1");
  auto r = h.submit("s1");
  EXPECT_EQ(h.sstate("s1"), pb::ACTIVE);
  EXPECT_EQ(h.state("n1"), pb::RESERVED);
}

// `seed` is documented as seeding the pool's random choices; a Configure
// that sets it must take effect, the same as starting with it.
TEST(PoolReview, ConfigureReseedsTheRandomChoices) {
  params p = quiet();
  p.seed = 4242;
  p.selection = "random";
  harness direct{p};
  harness configured{quiet()};
  pb::Command c;
  c.mutable_configure()->set_params_json(to_json(p));
  ASSERT_FALSE(configured.apply(c).refused);
  for (auto* h : {&direct, &configured}) {
    for (int i = 0; i < 6; ++i)
      h->admit("n" + std::to_string(i));
    for (int i = 0; i < 3; ++i)
      h->submit("s" + std::to_string(i));
  }
  EXPECT_EQ(bytes_of(direct.pool.snapshot()),
            bytes_of(configured.pool.snapshot()));
  // The same parameters again do not reseed (a restart with unchanged
  // parameters logs no Configure, and one that does must not rewind).
  auto before = configured.pool.snapshot().rng_state();
  ASSERT_FALSE(configured.apply(c).refused);
  EXPECT_EQ(configured.pool.snapshot().rng_state(), before);
}

// A restart gives every queued session a fresh queue_timeout: while the
// oracle was down no node could have served it, and right after Recover
// every node is LOST until it reconnects.
TEST(PoolReview, RecoverRestartsTheQueueTimeoutOfQueuedSessions) {
  harness h;
  h.submit("s1");
  ASSERT_EQ(h.sstate("s1"), pb::QUEUED);
  h.now += h.pool.config().queue_timeout_ms * 2;  // the oracle was down
  h.recover();
  h.tick();
  EXPECT_EQ(h.sstate("s1"), pb::QUEUED);
  h.admit("n1");
  EXPECT_EQ(h.sstate("s1"), pb::ACTIVE);
}

} // namespace

// -- TakeOver (a new leader of a cluster) ---------------------------------------

namespace {

pb::Command takeover_cmd(uint64_t term) {
  pb::Command c;
  c.mutable_take_over()->set_term(term);
  return c;
}

params takeover_params() {
  auto p = quiet();
  p.heartbeat_timeout_ms = 3000;  // the time a node has to reconnect
  return p;
}

} // namespace

TEST(PoolTakeOver, ANodeThatReconnectsInTimeKeepsItsPlaceWithoutATest) {
  harness h{takeover_params()};
  h.admit("n1");
  ASSERT_EQ(h.state("n1"), pb::EPHEMERAL);
  auto passed = h.node("n1").passed_at();
  auto r = h.apply(takeover_cmd(5));
  EXPECT_TRUE(r.changed);
  EXPECT_EQ(h.node("n1").rejoin_by(), h.now + 3000);
  h.now += 2000;
  r = h.reg("n1");
  ASSERT_FALSE(r.refused);
  EXPECT_EQ(test_request(r, "n1"), nullptr) << "no retest for a leader change";
  EXPECT_EQ(h.state("n1"), pb::EPHEMERAL);
  EXPECT_EQ(h.node("n1").rejoin_by(), 0);
  EXPECT_EQ(h.node("n1").passed_at(), passed);
  h.now += 5000;
  h.tick();
  EXPECT_EQ(h.state("n1"), pb::EPHEMERAL);
  h.submit("s1");
  EXPECT_EQ(h.state("n1"), pb::RESERVED);
}

TEST(PoolTakeOver, ASilentNodeIsLostAtItsDeadline) {
  harness h{takeover_params()};
  h.admit("n1");
  h.apply(takeover_cmd(5));
  h.now += 2999;
  h.tick();
  EXPECT_EQ(h.state("n1"), pb::EPHEMERAL);
  h.now += 1;
  auto r = h.tick();
  auto* lost = change_of(r, "n1", pb::EPHEMERAL, pb::LOST);
  ASSERT_NE(lost, nullptr);
  EXPECT_EQ(lost->reason(), "did not reconnect after the change of leader");
  // Back later: the ordinary way, through a test.
  r = h.reg("n1");
  EXPECT_NE(test_request(r, "n1"), nullptr);
}

TEST(PoolTakeOver, ATestInFlightIsSentAgainWhenTheNodeIsBack) {
  harness h{takeover_params()};
  auto r = h.reg("n1");
  auto old_test = h.node("n1").test_id();
  h.apply(takeover_cmd(5));
  h.now += 1000;
  r = h.reg("n1");
  auto* t = test_request(r, "n1");
  ASSERT_NE(t, nullptr);
  EXPECT_NE(t->test_id(), old_test);
  EXPECT_EQ(t->kind(), pb::ADMISSION);
  EXPECT_EQ(h.state("n1"), pb::TESTING);
  // The old test's answer is stale; the new one admits.
  r = h.apply(result_cmd("n1", old_test, 5, 5));
  EXPECT_TRUE(r.refused);
  h.pass("n1");
  EXPECT_EQ(h.state("n1"), pb::EPHEMERAL);
}

TEST(PoolTakeOver, AnActiveSessionResumesWithItsTaskOnceAllItsNodesAreBack) {
  harness h{takeover_params()};
  h.admit("n1");
  h.admit("n2");
  h.submit("s1", "m", 2, 2, 2, 10);
  ASSERT_EQ(h.sstate("s1"), pb::ACTIVE);
  h.task("s1", {{"n1", pb::OK}, {"n2", pb::OK}});
  ASSERT_EQ(h.session("s1").tasks_done(), 1u);
  h.apply(takeover_cmd(5));
  h.now += 500;
  auto r = h.reg("n1");
  EXPECT_EQ(start_of(r, "s1"), nullptr) << "n2 is not back yet";
  EXPECT_EQ(h.state("n1"), pb::RESERVED);
  h.now += 500;
  r = h.reg("n2");
  auto* s = start_of(r, "s1");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->tasks_done(), 1u);  // the task in flight runs again
  EXPECT_EQ(s->nodes_size(), 2);
  EXPECT_EQ(h.sstate("s1"), pb::ACTIVE);
  EXPECT_EQ(h.state("n2"), pb::RESERVED);
}

TEST(PoolTakeOver, ASessionWhoseNodeStaysSilentGoesOnWithoutIt) {
  harness h{takeover_params()};
  h.admit("n1");
  h.admit("n2");
  h.admit("n3");
  h.submit("s1", "m", 1, 2, 2, 10);
  ASSERT_EQ(h.sstate("s1"), pb::ACTIVE);
  auto nodes = nodes_of(h.session("s1"));
  ASSERT_EQ(nodes.size(), 2u);
  h.apply(takeover_cmd(5));
  h.reg(nodes[0]);
  h.now += 3000;
  auto r = h.tick();  // nodes[1] never came back
  EXPECT_EQ(h.state(nodes[1]), pb::LOST);
  // The session lost a node: it goes on with what it has (min_nodes 1; n3
  // did not come back either) and is started again on the new leader.
  ASSERT_EQ(h.sstate("s1"), pb::ACTIVE);
  EXPECT_NE(start_of(r, "s1"), nullptr);
}

TEST(PoolTakeOver, SurvivesASnapshotAndRefusesNothingAfterIt) {
  harness h{takeover_params()};
  h.admit("n1");
  h.admit("n2");
  h.submit("s1");
  h.apply(takeover_cmd(5));
  auto snap = h.pool.snapshot();
  harness g{takeover_params()};
  g.now = h.now;
  g.restore(snap);
  EXPECT_EQ(g.node("n1").rejoin_by(), h.node("n1").rejoin_by());
  g.reg("n1");
  g.now += 3000;
  g.tick();
  EXPECT_NE(g.state("n1"), pb::LOST);
  EXPECT_EQ(g.state("n2"), pb::LOST);  // it never came back
}

TEST(PoolTakeOver, ANodeIsNotReservedBeforeItIsBack) {
  harness h{takeover_params()};
  h.admit("n1");
  h.apply(takeover_cmd(5));
  h.submit("s1");
  EXPECT_EQ(h.sstate("s1"), pb::QUEUED);
  EXPECT_EQ(h.state("n1"), pb::EPHEMERAL);
  auto r = h.reg("n1");
  EXPECT_NE(start_of(r, "s1"), nullptr);
  EXPECT_EQ(h.state("n1"), pb::RESERVED);
}

// -- operators' actions on nodes (AdminNode) ------------------------------------

namespace {
pb::Command admin_cmd(const std::string& id, pb::AdminAction a) {
  pb::Command c;
  c.mutable_admin_node()->set_node_id(id);
  c.mutable_admin_node()->set_action(a);
  return c;
}
} // namespace

TEST(PoolAdmin, DrainedNodeIsNotReservedUntilUndrained) {
  harness h;
  h.admit("a");
  auto r = h.apply(admin_cmd("a", pb::DRAIN));
  ASSERT_FALSE(r.refused);
  EXPECT_TRUE(r.changed);  // logged: a replica drains it too
  EXPECT_TRUE(h.node("a").drained());
  EXPECT_EQ(h.state("a"), pb::EPHEMERAL);  // keeps its state
  h.submit("s1");
  EXPECT_EQ(h.sstate("s1"), pb::QUEUED);
  EXPECT_REFUSED(h.apply(admin_cmd("a", pb::DRAIN)), "no_change");
  r = h.apply(admin_cmd("a", pb::UNDRAIN));
  ASSERT_FALSE(r.refused);
  EXPECT_EQ(reserved_in(r, "s1"), std::vector<std::string>{"a"});
  EXPECT_EQ(h.sstate("s1"), pb::ACTIVE);
}

TEST(PoolAdmin, DrainingAReservedNodeLetsItsSessionKeepIt) {
  harness h;
  h.admit("a");
  h.submit("s1");
  ASSERT_EQ(h.state("a"), pb::RESERVED);
  ASSERT_FALSE(h.apply(admin_cmd("a", pb::DRAIN)).refused);
  EXPECT_EQ(h.state("a"), pb::RESERVED);
  EXPECT_EQ(nodes_of(h.session("s1")), std::vector<std::string>{"a"});
  // Released, revalidated: back in the pool's state, never reserved again.
  h.end("s1");
  h.pass("a");
  EXPECT_EQ(h.state("a"), pb::EPHEMERAL);
  h.submit("s2");
  EXPECT_EQ(h.sstate("s2"), pb::QUEUED);
}

TEST(PoolAdmin, RetiringAReservedNodeTakesItFromItsSessionForGood) {
  harness h;
  h.admit("a");
  h.admit("b");
  h.submit("s1", "m", 1, 2, 2);
  ASSERT_EQ(h.session("s1").nodes_size(), 2);
  auto r = h.apply(admin_cmd("a", pb::RETIRE));
  ASSERT_FALSE(r.refused);
  EXPECT_EQ(h.state("a"), pb::RETIRED);
  EXPECT_TRUE(h.node("a").session_id().empty());
  EXPECT_EQ(nodes_of(h.session("s1")), std::vector<std::string>{"b"});
  // The session runs on with b: it is not started again (that would
  // restart the task b may be reporting).
  EXPECT_EQ(h.sstate("s1"), pb::ACTIVE);
  EXPECT_EQ(start_of(r, "s1"), nullptr);
  EXPECT_REFUSED(h.apply(admin_cmd("a", pb::UNDRAIN)), "retired");
  EXPECT_REFUSED(h.apply(admin_cmd("a", pb::RETIRE)), "retired");
  EXPECT_REFUSED(h.apply(admin_cmd("nobody", pb::DRAIN)), "unknown_node");
  // It may not come back.
  EXPECT_REFUSED(h.reg("a"), "retired");
}

// After a change of leader, a session waiting for a node that an operator
// retires goes on without it.
TEST(PoolTakeOver, ASessionWhoseAwaitedNodeIsRetiredGoesOnWithoutIt) {
  harness h{takeover_params()};
  h.admit("n1");
  h.admit("n2");
  h.submit("s1", "m", 1, 2, 2, 10);
  ASSERT_EQ(h.sstate("s1"), pb::ACTIVE);
  auto nodes = nodes_of(h.session("s1"));
  ASSERT_EQ(nodes.size(), 2u);
  h.apply(takeover_cmd(5));
  EXPECT_EQ(start_of(h.reg(nodes[0]), "s1"), nullptr);
  auto r = h.apply(admin_cmd(nodes[1], pb::RETIRE));
  ASSERT_FALSE(r.refused);
  ASSERT_EQ(h.sstate("s1"), pb::ACTIVE);
  auto* s = start_of(r, "s1");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->nodes_size(), 1);
}

// The same when the awaited node goes down instead, or its reserve period
// runs out before it rejoins: whatever takes it away, the session goes on
// with the nodes that came back (before, only a retirement or the rejoin
// deadline restarted it; it waited for its idle threshold).
TEST(PoolTakeOver, ASessionWhoseAwaitedNodeGoesDownGoesOnWithoutIt) {
  harness h{takeover_params()};
  h.admit("n1");
  h.admit("n2");
  h.submit("s1", "m", 1, 2, 2, 10);
  auto nodes = nodes_of(h.session("s1"));
  ASSERT_EQ(nodes.size(), 2u);
  h.apply(takeover_cmd(5));
  EXPECT_EQ(start_of(h.reg(nodes[0]), "s1"), nullptr);
  auto r = h.down(nodes[1]);
  ASSERT_FALSE(r.refused);
  ASSERT_EQ(h.sstate("s1"), pb::ACTIVE);
  auto* s = start_of(r, "s1");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->nodes_size(), 1);
}

TEST(PoolTakeOver, ASessionWhoseAwaitedNodesReservePeriodEndsGoesOnWithoutIt) {
  auto p = takeover_params();
  p.heartbeat_timeout_ms = 60000;
  harness h{p};
  h.admit("n1");
  h.submit("s1", "m", 1, 2, 2, 10, 0, 10000);
  ASSERT_EQ(h.sstate("s1"), pb::ACTIVE);
  h.now += 5000;
  h.admit("n2");  // makes up the session's redundancy, later
  ASSERT_EQ(nodes_of(h.session("s1")).size(), 2u);
  h.now += 4000;
  h.apply(takeover_cmd(5));
  h.now += 500;
  EXPECT_EQ(start_of(h.reg("n2"), "s1"), nullptr);  // n1 is still awaited
  h.now += 1501;  // n1's reserve period ends before it rejoins
  auto r = h.tick();
  ASSERT_EQ(h.sstate("s1"), pb::ACTIVE);
  EXPECT_EQ(nodes_of(h.session("s1")), std::vector<std::string>{"n2"});
  auto* s = start_of(r, "s1");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->nodes_size(), 1);
}

// A node the session did not wait for leaves it running as it was: no
// second SessionStarted (it would restart the session's task).
TEST(PoolTakeOver, ANodeNotAwaitedLeavesItsSessionRunningAsItWas) {
  harness h{takeover_params()};
  h.admit("n1");
  h.admit("n2");
  h.submit("s1", "m", 1, 2, 2, 10);
  auto nodes = nodes_of(h.session("s1"));
  h.apply(takeover_cmd(5));
  h.reg(nodes[0]);
  h.reg(nodes[1]);
  auto r = h.down(nodes[1]);
  EXPECT_EQ(start_of(r, "s1"), nullptr);
  EXPECT_EQ(h.sstate("s1"), pb::ACTIVE);
}

TEST(PoolQueue, ABoundedQueueRefusesWhatItCannotHold) {
  auto p = quiet();
  p.max_queued_sessions = 2;
  harness h{p};
  h.submit("s1");
  h.submit("s2");
  ASSERT_EQ(h.sstate("s2"), pb::QUEUED);
  EXPECT_REFUSED(h.submit("s3"), "queue_full");
  // A session that leaves the queue makes room.
  h.admit("a");
  EXPECT_EQ(h.sstate("s1"), pb::ACTIVE);
  EXPECT_FALSE(h.submit("s3").refused);
  EXPECT_EQ(h.sstate("s3"), pb::QUEUED);
}

/// The first record (or field) in which two snapshots' bytes differ.
std::string first_difference(const std::string& a, const std::string& b) {
  pb::Snapshot x, y;
  if (!x.ParseFromString(a) || !y.ParseFromString(b))
    return "a snapshot does not decode";
  auto records = [](const auto& xs, const auto& ys, const char* what) {
    for (int i = 0; i < std::max(xs.size(), ys.size()); ++i) {
      auto l = i < xs.size() ? xs[i].ShortDebugString() : "(none)";
      auto r = i < ys.size() ? ys[i].ShortDebugString() : "(none)";
      if (l != r)
        return std::string(what) + " " + std::to_string(i) + ": frozen " + l
               + "; whole " + r;
    }
    return std::string();
  };
  if (auto d = records(x.nodes(), y.nodes(), "node"); !d.empty())
    return d;
  if (auto d = records(x.sessions(), y.sessions(), "session"); !d.empty())
    return d;
  x.clear_nodes();
  y.clear_nodes();
  x.clear_sessions();
  y.clear_sessions();
  return "frozen " + x.ShortDebugString() + "; whole " + y.ShortDebugString();
}

// The snapshot writer checks the records alone (check_snapshot), where it
// used to restore a pool from them and run check_invariants(): on broken
// snapshots the two must agree on whether anything is wrong. States from
// random runs, each broken in one to three random places (a field of a
// node or of a session set to another record's value, a state, a record
// added twice or left out, a count).
TEST(PoolRandomized, TheSnapshotCheckAgreesWithARestoredPoolForSeeds1To300) {
  int broken_found = 0;
  for (uint64_t seed = 1; seed <= 300; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    harness h{random_params(seed)};
    rng r{seed ^ 0xc0ffee11ULL};
    int stop_at = 20 + static_cast<int>(r.below(300)), step = 0;
    std::optional<pb::Snapshot> taken;
    random_run(h, seed, 400, nullptr, [&] {
      if (++step == stop_at)
        taken = h.pool.snapshot();
    });
    if (!taken)
      taken = h.pool.snapshot();
    auto& snap = *taken;
    auto pick_node = [&]() -> pb::NodeRecord* {
      if (snap.nodes_size() == 0)
        return nullptr;
      return snap.mutable_nodes(static_cast<int>(r.below(snap.nodes_size())));
    };
    auto pick_session = [&]() -> pb::SessionRecord* {
      if (snap.sessions_size() == 0)
        return nullptr;
      return snap.mutable_sessions(
        static_cast<int>(r.below(snap.sessions_size())));
    };
    auto some_node_id = [&]() -> std::string {
      auto* n = pick_node();
      return n && !r.chance(20) ? n->id() : "ghost";
    };
    auto some_session_id = [&]() -> std::string {
      auto* x = pick_session();
      return x && !r.chance(20) ? x->id() : "ghost";
    };
    int breaks = 1 + static_cast<int>(r.below(3));
    for (int b = 0; b < breaks; ++b) {
      auto* n = pick_node();
      auto* x = pick_session();
      switch (r.below(12)) {
        case 0: if (n) n->set_state(static_cast<pb::NodeState>(r.below(10))); break;
        case 1: if (n) n->set_session_id(r.chance(30) ? "" : some_session_id()); break;
        case 2: if (n) n->set_last_test_failed(!n->last_test_failed()); break;
        case 3: if (n) n->set_reset_at(n->passed_at() + 1 + r.below(5)); break;
        case 4: if (n) n->set_ephemeral_at(n->reserved_at() - 1000000); break;
        case 5: if (x) x->set_state(static_cast<pb::SessionState>(r.below(6))); break;
        case 6: if (x) x->add_nodes(some_node_id()); break;
        case 7: if (x) x->clear_nodes(); break;
        case 8: if (n) *snap.add_nodes() = *n; break;
        case 9: if (x) *snap.add_sessions() = *x; break;
        case 10:
          if (x) {
            *x = snap.sessions(snap.sessions_size() - 1);
            snap.mutable_sessions()->RemoveLast();
          }
          break;
        default:
          snap.set_sessions_completed(snap.sessions_completed() + r.below(3));
      }
    }
    auto records = check_snapshot(snap);
    pool_state restored{random_params(seed)};
    restored.restore(snap);
    auto whole = restored.check_invariants();
    // What a restored pool finds wrong, the snapshot check finds too. It
    // is stricter in one way only: an id given twice is an error even when
    // a restore, keeping one of the two, would leave nothing else wrong.
    std::set<std::string> ids;
    bool twice = false;
    for (auto& n : snap.nodes())
      twice = !ids.insert("n:" + n.id()).second || twice;
    for (auto& x : snap.sessions())
      twice = !ids.insert("s:" + x.id()).second || twice;
    if (twice)
      EXPECT_FALSE(records.empty()) << "an id given twice is not refused";
    else
      EXPECT_EQ(records.empty(), whole.empty())
        << "the snapshot check finds:\n" << describe(records)
        << "a restored pool's check finds:\n" << describe(whole);
    if (!whole.empty())
      EXPECT_FALSE(records.empty()) << "a restored pool's check finds:\n"
                                    << describe(whole);
    broken_found += !records.empty();
    if (HasFailure())
      break;
  }
  // Most breaks are caught (some change nothing: a field set to its value).
  EXPECT_GT(broken_found, 150);
}

// freeze() copies only the records changed since the last freeze: at any
// step its snapshot must be the whole state's, byte for byte. Random streams
// with snapshots at random steps, some of them still unfinished (a slow
// writer) while the pool goes on, and the commands the stream lacks
// (TakeOver, AdminNode, Configure) mixed in.
TEST(PoolRandomized, AFrozenSnapshotIsTheWholeStateForSeeds1To200) {
  for (uint64_t seed = 1; seed <= 200; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    harness h{random_params(seed)};
    rng r{seed ^ 0x5eedf00dULL};
    struct held {
      pool_state::frozen f;
      std::string expected;
      int step;
    };
    std::vector<held> unfinished;
    int step = 0, mismatches = 0;
    uint64_t term = 1;
    rng ahead{seed ^ 0xa4eadULL};  // copying ahead, on a stream of its own
    auto finish = [&](held& x) {
      // The writer's check of the frozen records finds nothing in a valid
      // state; the bytes are the same whether written straight from the
      // copy or from the message built first.
      auto found = x.f.check();
      if (!found.empty() && ++mismatches == 1)
        ADD_FAILURE() << "the check of the snapshot frozen at step " << x.step
                      << " finds " << describe(found);
      auto got = x.step % 2 == 1 ? std::move(x.f).encode()
                                 : bytes_of(std::move(x.f).finish());
      if (got != x.expected && ++mismatches == 1)
        ADD_FAILURE() << "the snapshot frozen at step " << x.step
                      << " is not the state of that step (seed " << seed
                      << "): " << first_difference(got, x.expected);
    };
    random_run(h, seed, 400, nullptr, [&] {
      ++step;
      auto k = r.below(100);
      if (k < 3) {
        h.apply(takeover_cmd(++term));
      } else if (k < 6 && !h.pool.nodes().empty()) {
        auto it = h.pool.nodes().begin();
        std::advance(it, static_cast<long>(r.below(h.pool.nodes().size())));
        const pb::AdminAction acts[] = {pb::DRAIN, pb::UNDRAIN, pb::RETIRE};
        h.apply(admin_cmd(it->first, acts[r.below(r.chance(10) ? 3 : 2)]));
      } else if (k < 7) {
        auto p = random_params(seed);
        p.selection = r.chance(50) ? "random" : "reputation";
        p.seed = r.next();
        pb::Command c;
        c.mutable_configure()->set_params_json(to_json(p));
        h.apply(c);
      }
      if (ahead.chance(30))
        h.pool.copy_ahead(ahead.below(8), ahead.below(4));
      if (!r.chance(25))
        return;
      held x{h.pool.freeze(), bytes_of(h.pool.snapshot()), step};
      if (r.chance(30) && unfinished.size() < 3)
        unfinished.push_back(std::move(x));
      else
        finish(x);
      if (!unfinished.empty() && r.chance(40)) {
        finish(unfinished.front());
        unfinished.erase(unfinished.begin());
      }
    });
    for (auto& x : unfinished)
      finish(x);
    EXPECT_FALSE(h.broken);
    if (mismatches > 0 || h.broken)
      break;  // one seed's worth of failures is enough to read
  }
}


// A pool is moved whole (a replica restores into a new pool, then moves
// it in): every index must point into the pool it moved to. A session of
// any model reads the counts of all models, which a move must carry along.
TEST(PoolMove, AMovedPoolKeepsItsIndexesAndServes) {
  auto moved = [] {
    pool_state a{quiet()};
    EXPECT_FALSE(a.apply(submit_cmd("any", ""), 1000).refused);
    EXPECT_FALSE(a.apply(submit_cmd("one", "m"), 1001).refused);
    pool_state b{std::move(a)};
    EXPECT_TRUE(b.check_invariants().empty()) << describe(b.check_invariants());
    pool_state c{quiet()};
    c = std::move(b);
    return c;  // a and b are gone
  }();
  EXPECT_TRUE(moved.check_invariants().empty())
    << describe(moved.check_invariants());
  int64_t now = 2000;
  for (auto id : {"n1", "n2"}) {
    ASSERT_FALSE(moved.apply(reg_cmd(id, {"m"}), ++now).refused);
    auto r = moved.apply(result_cmd(id, moved.node(id)->test_id(), 5, 5), ++now);
    ASSERT_FALSE(r.refused);
  }
  EXPECT_EQ(moved.session("any")->state(), pb::ACTIVE);
  EXPECT_EQ(moved.session("one")->state(), pb::ACTIVE);
  EXPECT_TRUE(moved.check_invariants().empty())
    << describe(moved.check_invariants());
}

// A node that comes back after a change of leader keeps its place in the
// pool, under the models it now lists: a session of its new model gets it,
// one of its old model does not.
TEST(PoolTakeOver, ANodeThatRejoinsWithOtherModelsIsPickedForThose) {
  harness h{takeover_params()};
  h.admit("n1", {"old"});
  h.apply(takeover_cmd(5));
  h.now += 1000;
  ASSERT_FALSE(h.reg("n1", {"new"}).refused);
  ASSERT_EQ(h.state("n1"), pb::EPHEMERAL);
  h.submit("s-old", "old");
  EXPECT_EQ(h.sstate("s-old"), pb::QUEUED);
  h.submit("s-new", "new");
  EXPECT_EQ(h.sstate("s-new"), pb::ACTIVE);
  EXPECT_TRUE(h.pool.check_invariants().empty());
}

// =============================================================================
// bounded reads (the HTTP API's lists)
// =============================================================================

/// Every page the lists could ask, walked to the end: each live record
/// once, in id order, as the whole snapshot has them.
template <class Get>
std::vector<std::string> walk_pages(const pool_state& p, pb::StateQuery::What what,
                                    uint32_t limit, Get ids_of) {
  std::vector<std::string> seen;
  pb::StateQuery q;
  q.set_what(what);
  q.set_limit(limit);
  for (int pages = 0; pages < 10000; ++pages) {
    auto page = p.read(q);
    EXPECT_TRUE(page.error().empty()) << page.error();
    auto ids = ids_of(page);
    EXPECT_LE(ids.size(), limit);
    if (page.more()) {
      EXPECT_EQ(ids.size(), limit) << "a page said more before it was full";
    }
    seen.insert(seen.end(), ids.begin(), ids.end());
    if (!page.more() || ids.empty())
      return seen;
    q.set_after(ids.back());
  }
  ADD_FAILURE() << "the pages never ended";
  return seen;
}

TEST(PoolReads, PagesHoldEveryLiveRecordOnceInIdOrder) {
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    rng r{seed};
    harness h;
    auto nodes = 1 + r.below(60);
    for (uint64_t i = 0; i < nodes; ++i) {
      auto id = "n" + std::to_string(r.below(1000000));
      if (h.pool.node(id))
        continue;
      h.admit(id, {r.chance(50) ? "m" : "other"});
      if (r.chance(20))
        h.down(id, "gone");
    }
    auto sessions = r.below(80);
    for (uint64_t i = 0; i < sessions; ++i) {
      auto sid = "s" + std::to_string(r.below(1000000));
      if (h.pool.session(sid) || h.archive.count(sid))
        continue;
      h.submit(sid, r.chance(70) ? "m" : "nobody-serves-this");
      if (r.chance(25) && h.pool.session(sid))
        h.end(sid);
    }
    auto snap = h.pool.snapshot();
    std::vector<std::string> want_nodes, want_sessions;
    for (auto& n : snap.nodes())
      want_nodes.push_back(n.id());
    for (auto& [sid, s] : h.pool.sessions())  // the table, not the order
      want_sessions.push_back(s.id());
    std::sort(want_sessions.begin(), want_sessions.end());
    for (uint32_t limit : {1u, 2u, 7u, 1000u}) {
      EXPECT_EQ(walk_pages(h.pool, pb::StateQuery::NODES, limit,
                           [](const pb::StatePage& p) {
                             std::vector<std::string> ids;
                             for (auto& n : p.nodes())
                               ids.push_back(n.id());
                             EXPECT_EQ(p.sessions_size(), 0);
                             return ids;
                           }),
                want_nodes)
        << "limit " << limit;
      EXPECT_EQ(walk_pages(h.pool, pb::StateQuery::SESSIONS, limit,
                           [](const pb::StatePage& p) {
                             std::vector<std::string> ids;
                             for (auto& s : p.sessions())
                               ids.push_back(s.id());
                             EXPECT_EQ(p.nodes_size(), 0);
                             return ids;
                           }),
                want_sessions)
        << "limit " << limit;
    }
    // A page's records are the records, not a summary of them.
    pb::StateQuery q;
    q.set_what(pb::StateQuery::SESSIONS);
    q.set_limit(1000);
    auto page = h.pool.read(q);
    for (int i = 0; i < page.sessions_size(); ++i)
      EXPECT_EQ(bytes_of(page.sessions(i)), bytes_of(snap.sessions(i)));
  }
}

TEST(PoolReads, IdsThatShareTheirFirstEightBytesKeepTheirOrder) {
  // The order's tree compares the ids' first 8 bytes as one number and
  // the rest only on a tie: ids alike up to there, one the other's start,
  // shorter than 8 bytes, or alike but for a byte's case or punctuation.
  for (uint64_t seed = 1; seed <= 10; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    rng r{seed};
    harness h;
    h.admit("n1", {"m"});
    const std::vector<std::string> stems = {"session-", "session_", "Session-",
                                            "sess", "s", "session-0"};
    std::vector<std::string> live;
    for (int i = 0; i < 120; ++i) {
      auto sid = stems[r.below(stems.size())];
      for (auto tail = r.below(4); tail > 0; --tail)
        sid += "0aZ-.:_9"[r.below(8)];
      if (h.pool.session(sid) || h.archive.count(sid))
        continue;
      h.submit(sid, "nobody-serves-this");
      if (r.chance(20))
        h.end(sid);
    }
    for (auto& [sid, s] : h.pool.sessions())
      live.push_back(s.id());
    std::sort(live.begin(), live.end());
    ASSERT_GT(live.size(), 20u);
    for (uint32_t limit : {1u, 3u, 1000u})
      EXPECT_EQ(walk_pages(h.pool, pb::StateQuery::SESSIONS, limit,
                           [](const pb::StatePage& p) {
                             std::vector<std::string> ids;
                             for (auto& s : p.sessions())
                               ids.push_back(s.id());
                             return ids;
                           }),
                live)
        << "limit " << limit;
    EXPECT_TRUE(h.pool.check_invariants().empty());
  }
}

TEST(PoolReads, APageHoldsWhatWasAdmittedAndEndedSinceTheLastOne) {
  // Sessions admitted since the order was last read wait outside it until
  // the next read; those that end meanwhile, and those that were in it,
  // leave it.
  harness h;
  h.admit("n1", {"m"});
  for (auto sid : {"a3", "a1", "a4", "a0", "a2"})
    h.submit(sid, "nobody-serves-this");
  EXPECT_EQ(session_page(h.pool),
            (std::vector<std::string>{"a0", "a1", "a2", "a3", "a4"}));
  for (auto sid : {"b2", "b0", "b1"})
    h.submit(sid, "nobody-serves-this");
  h.end("a3");  // in the order
  h.end("b0");  // admitted since the last read
  EXPECT_EQ(session_page(h.pool),
            (std::vector<std::string>{"a0", "a1", "a2", "a4", "b1", "b2"}));
  EXPECT_TRUE(h.pool.check_invariants().empty());
  // More than the sessions kept outside the order at once (64): they enter
  // it together, and a page still has each once.
  std::vector<std::string> want = session_page(h.pool);
  for (int i = 0; i < 150; ++i) {
    auto sid = "c" + std::to_string(1000 + i);
    h.submit(sid, "nobody-serves-this");
    if (i % 3 == 0)
      h.end(sid);
    else
      want.push_back(sid);
  }
  std::sort(want.begin(), want.end());
  EXPECT_EQ(session_page(h.pool), want);
  EXPECT_TRUE(h.pool.check_invariants().empty());
}

TEST(PoolReads, ModelsAreThoseLiveNodesServe) {
  harness h;
  h.admit("n1", {"b", "a"});
  h.admit("n2", {"c"});
  h.reg("n3", {"d"});  // registered, not yet tested: alive
  pb::StateQuery q;
  q.set_what(pb::StateQuery::MODELS);
  auto models = [&] {
    auto p = h.pool.read(q);
    return std::vector<std::string>(p.models().begin(), p.models().end());
  };
  EXPECT_EQ(models(), (std::vector<std::string>{"a", "b", "c", "d"}));
  h.down("n2", "gone");
  EXPECT_EQ(h.state("n2"), pb::LOST);
  EXPECT_EQ(models(), (std::vector<std::string>{"a", "b", "d"}));
}

TEST(PoolReads, ALimitOutOfBoundsIsRefusedAndReadsNothing) {
  harness h;
  h.admit("n1");
  for (uint32_t limit : {0u, 1001u}) {
    for (auto what : {pb::StateQuery::NODES, pb::StateQuery::SESSIONS}) {
      pb::StateQuery q;
      q.set_what(what);
      q.set_limit(limit);
      auto p = h.pool.read(q);
      EXPECT_EQ(p.error(), "limit: 1..1000");
      EXPECT_EQ(p.nodes_size() + p.sessions_size(), 0);
    }
  }
}

// =============================================================================
// lost nodes leave the records (lost_retention_ms)
// =============================================================================

params retention(int64_t ms) {
  auto p = quiet();
  p.lost_retention_ms = ms;
  return p;
}

TEST(PoolLost, ANodeLostPastItsRetentionIsForgotten) {
  harness h{retention(10000)};
  h.admit("n1");
  h.admit("n2");
  h.down("n1", "gone");
  ASSERT_EQ(h.state("n1"), pb::LOST);
  auto lost_at = h.now;
  h.now = lost_at + 9999;
  h.tick();
  ASSERT_NE(h.pool.node("n1"), nullptr) << "forgotten before its retention";
  // A kept copy of the records exists (a snapshot was taken) when it goes.
  (void)h.pool.freeze().finish();
  h.now = lost_at + 10000;
  auto r = h.tick();
  EXPECT_EQ(h.pool.node("n1"), nullptr);
  EXPECT_TRUE(r.changed);  // logged, so that a replay forgets it too
  ASSERT_EQ(count_events(r, pb::Event::kNodeForgotten), 1);
  EXPECT_EQ(r.events[0].node_forgotten().node_id(), "n1");
  EXPECT_EQ(h.count(pb::LOST), 0u);
  EXPECT_EQ(h.pool.nodes().size(), 1u);
  EXPECT_TRUE(h.pool.check_invariants().empty())
    << describe(h.pool.check_invariants());
  // The kept copy of the records lets go of it too: a freeze is the state.
  EXPECT_EQ(bytes_of(h.pool.freeze().finish()), bytes_of(h.pool.snapshot()));
  auto after = h.pool.snapshot();
  for (auto& n : after.nodes())
    EXPECT_NE(n.id(), "n1");
  // Nothing more to forget: the next tick changes nothing.
  h.now += 1000;
  EXPECT_FALSE(h.tick().changed);
  // It comes back as a new node: registered and tested before it serves.
  auto back = h.reg("n1");
  EXPECT_FALSE(back.refused);
  EXPECT_NE(change_of(back, "n1", pb::NODE_STATE_UNSPECIFIED, pb::REGISTERED), nullptr);
  EXPECT_EQ(h.state("n1"), pb::TESTING);
  h.pass("n1");
  EXPECT_EQ(h.state("n1"), pb::EPHEMERAL);
}

TEST(PoolLost, ANodeBackWithinItsRetentionKeepsItsRecord) {
  harness h{retention(10000)};
  h.admit("n1");
  auto rep = h.node("n1").reputation();
  h.down("n1", "gone");
  h.now += 5000;
  ASSERT_FALSE(h.reg("n1").refused);
  ASSERT_EQ(h.state("n1"), pb::TESTING);
  EXPECT_EQ(h.node("n1").reputation(), rep);
  h.now += 20000;  // past what would have been its retention
  h.tick();
  ASSERT_NE(h.pool.node("n1"), nullptr);
  // With retention 0, a lost node is kept for ever.
  harness keep{retention(0)};
  keep.admit("n1");
  keep.down("n1", "gone");
  keep.now += int64_t{100} * 24 * 3600 * 1000;
  keep.tick();
  EXPECT_NE(keep.pool.node("n1"), nullptr);
}

// A snapshot still being written when a node is forgotten keeps what it
// froze; the next one is the state without the node.
TEST(PoolLost, ASnapshotUnderWayKeepsTheNodeTheNextOneDoesNot) {
  harness h{retention(10000)};
  h.admit("n1");
  h.admit("n2");
  h.down("n1", "gone");
  (void)h.pool.freeze().finish();  // a kept copy
  auto before = h.pool.snapshot();
  auto writing = h.pool.freeze();  // shared with a writer, not finished
  h.now += 10000;
  ASSERT_EQ(count_events(h.tick(), pb::Event::kNodeForgotten), 1);
  EXPECT_EQ(bytes_of(std::move(writing).finish()), bytes_of(before));
  EXPECT_EQ(bytes_of(h.pool.freeze().finish()), bytes_of(h.pool.snapshot()));
  EXPECT_EQ(h.pool.snapshot().nodes_size(), 1);
}

// =============================================================================
// retired nodes leave the records (retired_retention_ms)
// =============================================================================

params retired_kept(int64_t ms) {
  auto p = quiet();
  p.max_strikes = 2;
  p.quarantine_backoff_ms = 1000;
  p.retired_retention_ms = ms;
  return p;
}

/// n1 fails its tests until its strikes retire it; returns when.
int64_t retire_by_strikes(harness& h, const std::string& id) {
  h.reg(id);
  for (int i = 0; i < 10 && h.state(id) != pb::RETIRED; ++i) {
    if (h.state(id) == pb::QUARANTINED) {
      h.now = h.node(id).quarantine_until();
      h.tick();
    }
    EXPECT_EQ(h.state(id), pb::TESTING) << i;
    h.now += 10;
    h.fail(id);
  }
  EXPECT_EQ(h.state(id), pb::RETIRED);
  return h.now;
}

// Retired by its strikes or by an operator, a node is refused for the
// retention, then leaves the records: back after it, it is a new node,
// tested before it serves.
TEST(PoolRetired, ARetiredNodeLeavesTheRecordsAfterItsRetention) {
  harness h{retired_kept(100000)};
  h.admit("keep");
  auto at = retire_by_strikes(h, "n1");
  // Its last test's deadline is past the failure: it counts from the later.
  auto due = std::max(at, h.node("n1").test_deadline()) + 100000;
  h.now += 30000;
  h.admit("n2");
  h.now += 30000;  // its admission test's deadline is long past
  ASSERT_FALSE(h.apply(admin_cmd("n2", pb::RETIRE)).refused);
  auto n2_due = h.now + 100000;
  ASSERT_LT(h.now, due - 1);
  ASSERT_LT(due, n2_due);
  h.now = due - 1;
  h.tick();
  EXPECT_REFUSED(h.reg("n1"), "retired");
  ASSERT_NE(h.pool.node("n1"), nullptr) << "forgotten before its retention";
  (void)h.pool.freeze().finish();  // a kept copy exists when it goes
  h.now = due;
  auto r = h.tick();
  EXPECT_EQ(h.pool.node("n1"), nullptr);
  ASSERT_EQ(count_events(r, pb::Event::kNodeForgotten), 1);
  EXPECT_EQ(r.events[0].node_forgotten().node_id(), "n1");
  EXPECT_EQ(r.events[0].node_forgotten().reason(),
            "retired for retired_retention_ms");
  EXPECT_EQ(h.count(pb::RETIRED), 1u);
  EXPECT_EQ(bytes_of(h.pool.freeze().finish()), bytes_of(h.pool.snapshot()));
  // The operator's retirement counts from when it was made.
  h.now = n2_due - 1;
  h.tick();
  EXPECT_REFUSED(h.reg("n2"), "retired");
  h.now = n2_due;
  ASSERT_EQ(count_events(h.tick(), pb::Event::kNodeForgotten), 1);
  EXPECT_EQ(h.pool.node("n2"), nullptr);
  EXPECT_EQ(h.count(pb::RETIRED), 0u);
  EXPECT_EQ(h.pool.nodes().size(), 1u);
  EXPECT_FALSE(h.tick().changed);
  // Back: a new node, with no strikes, tested before it serves.
  auto back = h.reg("n1");
  EXPECT_FALSE(back.refused);
  EXPECT_NE(change_of(back, "n1", pb::NODE_STATE_UNSPECIFIED, pb::REGISTERED),
            nullptr);
  EXPECT_EQ(h.state("n1"), pb::TESTING);
  EXPECT_EQ(h.node("n1").strikes(), 0u);
  h.pass("n1");
  EXPECT_EQ(h.state("n1"), pb::EPHEMERAL);
}

// With retention 0, a retired node stays refused for ever; a restored
// snapshot keeps the retention's timers.
TEST(PoolRetired, RetentionZeroKeepsItAndARestoreKeepsTheTimer) {
  harness keep{retired_kept(0)};
  retire_by_strikes(keep, "n1");
  keep.now += int64_t{400} * 24 * 3600 * 1000;
  EXPECT_FALSE(keep.tick().changed);
  EXPECT_REFUSED(keep.reg("n1"), "retired");

  harness h{retired_kept(50000)};
  auto at = retire_by_strikes(h, "n1");
  harness r{retired_kept(50000)};
  r.now = h.now;
  r.restore(h.pool.snapshot());
  r.now = std::max(at, h.node("n1").test_deadline()) + 50000;
  ASSERT_EQ(count_events(r.tick(), pb::Event::kNodeForgotten), 1);
  EXPECT_EQ(r.pool.node("n1"), nullptr);
}

// Node ids are the miners' own: one that makes up a new id for each node
// it has retired no longer grows the records for ever.
TEST(PoolRetired, RecordsStayBoundedUnderRetirements) {
  harness h{retired_kept(60000)};
  size_t most = 0;
  for (int i = 0; i < 300; ++i) {
    retire_by_strikes(h, "bad" + std::to_string(i));
    h.now += 1000;
    h.tick();
    most = std::max(most, h.pool.nodes().size());
    if (i % 7 == 0)
      ASSERT_EQ(bytes_of(h.pool.freeze().finish()), bytes_of(h.pool.snapshot())) << i;
  }
  // One retired about every 2 s, kept 60 s after its last test's deadline
  // (5 s): about 33 at a time.
  EXPECT_LE(most, 35u);
  EXPECT_GE(h.pool.nodes().size(), 25u);
  EXPECT_TRUE(h.pool.check_invariants().empty());
}

// Nodes that come and go under new ids: the records stay as many as the
// nodes seen within the retention, however long the pool runs (before,
// every id ever seen stayed).
TEST(PoolLost, RecordsStayBoundedUnderChurn) {
  auto p = retention(60000);
  harness h{p};
  size_t most = 0;
  for (int i = 0; i < 600; ++i) {
    auto id = "churn" + std::to_string(i);
    h.admit(id);
    h.now += 1000;
    h.down(id, "gone");
    h.now += 1000;
    h.tick();
    most = std::max(most, h.pool.nodes().size());
    if (i % 7 == 0) {  // snapshots now and then, from the kept copy
      auto frozen = h.pool.freeze().finish();
      ASSERT_EQ(bytes_of(frozen), bytes_of(h.pool.snapshot())) << i;
    }
  }
  // A node is lost every 2 s and kept 60 s: about 30 at a time.
  EXPECT_LE(most, 32u);
  EXPECT_GE(h.pool.nodes().size(), 25u);
  EXPECT_TRUE(h.pool.check_invariants().empty());
  EXPECT_EQ(bytes_of(h.pool.freeze().finish()), bytes_of(h.pool.snapshot()));
}

// -- tests in flight (max_tests_in_flight) --------------------------------------

namespace {

params limited(uint32_t tests) {
  auto p = quiet();
  p.max_tests_in_flight = tests;
  return p;
}

} // namespace

TEST(PoolTestsInFlight, PastTheLimitTestsWaitAndAreSentInOrderAsPlacesFree) {
  harness h{limited(2)};
  for (auto id : {"n1", "n2", "n3", "n4", "n5"}) {
    auto r = h.reg(id);
    EXPECT_EQ(test_request(r, id) != nullptr, std::string{id} <= "n2") << id;
    EXPECT_EQ(h.state(id), pb::TESTING) << id;
  }
  EXPECT_EQ(h.pool.tests_in_flight(), 2u);
  EXPECT_EQ(h.pool.tests_waiting(), 3u);
  EXPECT_EQ(h.node("n3").test_deadline(), 0);
  EXPECT_NE(h.node("n3").state_reason().find("waiting"), std::string::npos);
  // A test that waits has no deadline running: long past the others', it
  // is still to come, and not failed.
  auto d = h.pool.config().test_deadline_ms;
  h.now += d / 2;
  auto r = h.pass("n1");  // a place frees: the oldest waiting is sent
  auto* t = test_request(r, "n3");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->deadline(), h.now + d);
  EXPECT_EQ(test_request(r, "n4"), nullptr);
  EXPECT_EQ(h.node("n3").state_reason(), "admission test");
  r = h.fail("n2");
  EXPECT_NE(test_request(r, "n4"), nullptr);
  EXPECT_EQ(h.pool.tests_waiting(), 1u);
  // n3's deadline passes: it fails, and n5 is sent in the same tick.
  h.now += d + 1;
  r = h.tick();
  EXPECT_NE(change_of(r, "n3", pb::TESTING, pb::QUARANTINED), nullptr);
  EXPECT_NE(test_request(r, "n5"), nullptr);
  EXPECT_EQ(h.state("n5"), pb::TESTING);
  EXPECT_EQ(h.pool.tests_waiting(), 0u);
  // n4, sent with n3, failed in the same tick: n5 alone is out.
  EXPECT_NE(change_of(r, "n4", pb::TESTING, pb::QUARANTINED), nullptr);
  EXPECT_EQ(h.pool.tests_in_flight(), 1u);
  EXPECT_EQ(h.node("n5").strikes(), 0u);
}

TEST(PoolTestsInFlight, ARevalidationNeverWaitsButCounts) {
  harness h{limited(1)};
  h.admit("r1");
  h.reg("n2");  // the one place
  auto r = h.reg("n3");
  EXPECT_EQ(test_request(r, "n3"), nullptr);
  h.submit("s1", "m", 1, 1, 0, 1);
  r = h.task("s1", {{"r1", pb::OK}});
  ASSERT_EQ(h.state("r1"), pb::REVALIDATING);
  EXPECT_NE(test_request(r, "r1"), nullptr) << "a re-validation waits for nobody";
  EXPECT_EQ(h.pool.tests_in_flight(), 2u);
  h.pass("n2");  // one left in flight, the limit: n3 still waits
  EXPECT_EQ(h.node("n3").test_deadline(), 0);
  r = h.pass("r1");
  EXPECT_NE(test_request(r, "n3"), nullptr);
}

TEST(PoolTestsInFlight, AWaitingNodeIsNotFailedForRegisteringAgainOrGoingAway) {
  harness h{limited(1)};
  h.reg("n1");
  h.reg("n2");
  h.reg("n3");
  auto id2 = h.node("n2").test_id();
  // Its test was never sent: registering again keeps its place, no strike.
  auto r = h.reg("n2");
  EXPECT_FALSE(r.refused);
  EXPECT_EQ(h.node("n2").test_id(), id2);
  EXPECT_EQ(h.node("n2").strikes(), 0u);
  EXPECT_EQ(h.pool.tests_failed(), 0u);
  // Gone: lost, without a strike, and out of the queue.
  r = h.down("n2");
  EXPECT_EQ(h.state("n2"), pb::LOST);
  EXPECT_EQ(h.node("n2").strikes(), 0u);
  EXPECT_EQ(h.pool.tests_waiting(), 1u);
  // A result for a test not sent is refused (only the validator sends
  // results, and only for tests it was asked for).
  EXPECT_REFUSED(h.apply(result_cmd("n3", h.node("n3").test_id(), 5, 5)),
                 "no_test_in_flight");
  r = h.pass("n1");
  EXPECT_NE(test_request(r, "n3"), nullptr);
}

TEST(PoolTestsInFlight, RaisingTheLimitSendsWhatWaits) {
  harness h{limited(1)};
  for (auto id : {"n1", "n2", "n3", "n4"})
    h.reg(id);
  EXPECT_EQ(h.pool.tests_waiting(), 3u);
  auto p = limited(3);
  pb::Command c;
  c.mutable_configure()->set_params_json(to_json(p));
  auto r = h.apply(c);
  EXPECT_NE(test_request(r, "n2"), nullptr);
  EXPECT_NE(test_request(r, "n3"), nullptr);
  EXPECT_EQ(test_request(r, "n4"), nullptr);
  p.max_tests_in_flight = 0;  // no limit
  c.mutable_configure()->set_params_json(to_json(p));
  r = h.apply(c);
  EXPECT_NE(test_request(r, "n4"), nullptr);
  EXPECT_EQ(h.pool.tests_waiting(), 0u);
  EXPECT_EQ(h.pool.tests_in_flight(), 4u);
}

TEST(PoolTestsInFlight, AStoredParameterSetWithoutTheLimitHasNone) {
  // Written before the limit existed: a replay must run as the pool did.
  std::string err;
  auto old = params_from_json(R"({"test_deadline_ms": 700})", params{}, err);
  EXPECT_EQ(err, "");
  EXPECT_EQ(old.test_deadline_ms, 700);
  EXPECT_EQ(old.max_tests_in_flight, 0u);
  auto back = params_from_json(to_json(limited(7)), params{}, err);
  EXPECT_EQ(back.max_tests_in_flight, 7u);
  EXPECT_EQ(params{}.max_tests_in_flight, 250u);
}

TEST(PoolTestsInFlight, AChangeOfLeaderAsksForAWaitingTestAgainWhenTheNodeIsBack) {
  auto p = takeover_params();
  p.max_tests_in_flight = 1;
  harness h{p};
  h.reg("n1");
  h.reg("n2");
  h.reg("n3");
  h.apply(takeover_cmd(5));
  // Nobody is back yet: no test is sent to a node the new leader cannot
  // reach, and the waiting ones left the queue.
  EXPECT_EQ(h.pool.tests_waiting(), 0u);
  h.now += 1000;
  auto r = h.reg("n3");
  EXPECT_EQ(test_request(r, "n3"), nullptr) << "n1 still holds the place";
  EXPECT_EQ(h.pool.tests_waiting(), 1u);
  r = h.reg("n1");  // sent again, in its own place
  EXPECT_NE(test_request(r, "n1"), nullptr);
  r = h.pass("n1");
  EXPECT_NE(test_request(r, "n3"), nullptr);
  // n2 never came back: lost at its deadline, never failed.
  h.now += 3000;
  h.tick();
  EXPECT_EQ(h.state("n2"), pb::LOST);
  EXPECT_EQ(h.node("n2").strikes(), 0u);
}

TEST(PoolTestsInFlight, TheQueueSurvivesASnapshotInItsOrder) {
  harness h{limited(1)};
  for (auto id : {"n1", "n2", "n3", "n4"})
    h.reg(id);
  h.reg("n2");  // keeps its place: n2, n3, n4
  harness g{limited(1)};
  g.restore(h.pool.snapshot());
  EXPECT_EQ(g.pool.tests_waiting(), 3u);
  EXPECT_EQ(g.pool.tests_in_flight(), 1u);
  for (auto next : {"n2", "n3", "n4"}) {
    std::string sent;
    for (auto& [id, n] : g.pool.nodes())
      if (test_sent(n))
        sent = id;
    auto r = g.pass(sent);
    EXPECT_NE(test_request(r, next), nullptr) << next;
  }
}

TEST(PoolInvariants, DetectsI5ATestWaitingWhileAPlaceIsFree) {
  auto s = valid_state();
  auto* n = node_in(s, "n3");
  n->set_state(pb::TESTING);
  n->set_test_id(99);
  n->set_test_kind(pb::ADMISSION);
  n->set_test_deadline(0);  // asked for, never sent, and nothing in flight
  expect_caught(s, "I5", {"n3"}, {});
}

TEST(PoolRandomized, ALowLimitOnTestsHoldsTheInvariants) {
  // The randomized runs with one or two tests in flight at most: every
  // command checked whole and by what it touched (harness::apply).
  for (uint32_t seed = 1; seed <= 40; ++seed) {
    auto p = limited(1 + seed % 2);
    harness h{p};
    std::mt19937_64 rng{seed};
    for (int step = 0; step < 400 && !h.broken; ++step) {
      auto id = "n" + std::to_string(rng() % 12);
      switch (rng() % 6) {
        case 0: h.reg(id); break;
        case 1:
          if (auto* n = h.pool.node(id); n && test_sent(*n))
            h.apply(result_cmd(id, n->test_id(), rng() % 6, 5));
          break;
        case 2: h.down(id); break;
        case 3: h.submit("s" + std::to_string(step)); break;
        case 4: h.now += static_cast<int64_t>(rng() % 3000); h.tick(); break;
        default:
          for (auto& [sid, s] : h.pool.sessions())
            if (s.state() == pb::ACTIVE) {
              std::string x = sid;
              h.end(x);
              break;
            }
      }
    }
    ASSERT_FALSE(h.broken) << "seed " << seed;
    EXPECT_LE(h.pool.tests_in_flight(), 2u + h.pool.count_by_state()[pb::REVALIDATING]);
  }
}
