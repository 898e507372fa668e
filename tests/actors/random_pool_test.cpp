// Seeded randomized runs of the whole oracle: mixed miner behaviours, nodes
// killed and restarted, nodes going silent, an oracle crash and restart from
// its store, sessions arriving at random times. I1-I5 are checked after every
// command the supervisor applies; at the end every accepted session must have
// ended (liveness: enough healthy nodes stay). A failing seed reproduces
// exactly: --gtest_filter='seeds/random_pool.run/<seed - 1>'.
#include "fixture.hpp"
#include "random.hpp"

#include <sstream>

using namespace std::chrono_literals;

namespace nodepool::testing {
namespace {

using rng = seeded_rng;

class random_pool : public actor_test,
                    public ::testing::WithParamInterface<uint64_t> {
protected:
  void start_observed(std::shared_ptr<store> st) {
    supervisor_config sc;
    sc.pool = params_;
    sc.storage = st;
    sc.sim_time = true;
    sc.observer = [this](const pool_state& ps, const pb::Command& cmd) {
      ++applied_;
      if (!first_violation_.empty())
        return;
      auto vs = ps.check_invariants();
      if (!vs.empty())
        first_violation_ = vs.front().invariant + ": " + vs.front().detail
                           + " after " + cmd.ShortDebugString();
    };
    oracle_ = start_oracle(*sys_, sc);
    for (auto& a : {oracle_.supervisor, oracle_.gateway, oracle_.validator,
                    oracle_.sessions})
      spawned_.push_back(a);
    sched_->run();
  }

  params params_ = fast_params();
  uint64_t applied_ = 0;
  std::string first_violation_;
};

TEST_P(random_pool, run) {
  auto seed = GetParam();
  seeded_rng r{seed};
  params_.seed = seed;
  auto st = std::shared_ptr<store>(make_memory_store());
  start_observed(st);

  // Nodes: at least three healthy ones; the rest drawn from every behaviour.
  struct slot {
    std::string id;
    behaviour kind;
    caf::actor actor;
    bool alive = true;
  };
  std::vector<slot> nodes;
  auto n = 5 + r.below(6);
  for (size_t i = 0; i < n; ++i) {
    auto kind = i < 3 ? behaviour::healthy
                      : static_cast<behaviour>(r.below(6));
    auto id = "r" + std::to_string(i);
    nodes.push_back({id, kind, add_node(id, kind, seed * 100 + i)});
  }
  std::vector<std::string> accepted;
  auto sessions = 5 + r.below(10);
  size_t submitted = 0;
  bool oracle_crashed = false;
  std::ostringstream trace;

  for (int step = 0; step < 1500; ++step) {
    // Sessions arrive during the first two simulated seconds.
    if (submitted < sessions && r.chance(0.05)) {
      auto red = 1 + static_cast<uint32_t>(r.below(3));
      auto id = "x" + std::to_string(submitted++);
      if (submit(session_req(id, 1 + static_cast<uint32_t>(r.below(4)), red))
          == "accepted")
        accepted.push_back(id);
    }
    // Faults, only in the first 10 s so the pool can settle afterwards.
    if (step < 500) {
      if (r.chance(0.004)) {  // kill a miner node; it comes back later
        auto& s = nodes[r.below(nodes.size())];
        if (s.alive) {
          caf::anon_send_exit(s.actor, caf::exit_reason::kill);
          s.alive = false;
          trace << "step " << step << ": kill " << s.id << "\n";
        }
      }
      if (r.chance(0.004)) {  // a node goes silent, then reconnects
        auto& s = nodes[r.below(nodes.size())];
        if (s.alive) {
          caf::anon_send(s.actor, connect_atom::value, caf::actor{});
          trace << "step " << step << ": silence " << s.id << "\n";
        }
      }
      if (!oracle_crashed && r.chance(0.002)) {
        oracle_crashed = true;
        trace << "step " << step << ": oracle crash\n";
        for (auto& a : {oracle_.gateway, oracle_.validator, oracle_.sessions,
                        oracle_.supervisor})
          caf::anon_send_exit(a, caf::exit_reason::kill);
        sched_->run();
        start_observed(st);
        for (auto& s : nodes)
          if (s.alive)
            caf::anon_send(s.actor, connect_atom::value, oracle_.gateway);
      }
    }
    // Dead or silent healthy nodes come back (a miner restarts them).
    if (step % 100 == 50)
      for (auto& s : nodes) {
        if (!s.alive && s.kind != behaviour::crash) {
          s.actor = add_node(s.id, s.kind, seed * 100 + step);
          s.alive = true;
        } else if (s.alive) {
          caf::anon_send(s.actor, connect_atom::value, oracle_.gateway);
        }
      }
    sched_->advance_time(20ms);
    sched_->run();
    ASSERT_TRUE(first_violation_.empty())
      << "seed " << seed << ": " << first_violation_ << "\n" << trace.str();
  }
  run_for(10s, 50ms);
  ASSERT_TRUE(first_violation_.empty())
    << "seed " << seed << ": " << first_violation_ << "\n" << trace.str();
  auto s = state();
  for (auto& id : accepted) {
    auto* rec = s.session(id);
    ASSERT_NE(rec, nullptr) << "seed " << seed << ": lost " << id;
    EXPECT_EQ(rec->state(), pb::COMPLETED)
      << "seed " << seed << ": session " << id << " is "
      << to_string(rec->state()) << " " << rec->reason() << "\n"
      << trace.str();
  }
  EXPECT_FALSE(accepted.empty()) << "seed " << seed;
  EXPECT_GT(applied_, 0u);
  if (std::getenv("NODEPOOL_TRACE"))
    std::printf("seed %llu: %zu nodes, %zu sessions accepted, %llu commands, "
                "tests %llu/%llu, faults:\n%s",
                static_cast<unsigned long long>(seed), nodes.size(),
                accepted.size(), static_cast<unsigned long long>(applied_),
                static_cast<unsigned long long>(s.tests_passed()),
                static_cast<unsigned long long>(s.tests_failed()),
                trace.str().c_str());
  auto hist = check_history(*st);
  EXPECT_TRUE(hist.violations.empty()) << "seed " << seed;
}

INSTANTIATE_TEST_SUITE_P(seeds, random_pool, ::testing::Range<uint64_t>(1, 201));

} // namespace
} // namespace nodepool::testing
