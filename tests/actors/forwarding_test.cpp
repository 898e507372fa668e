// A follower's HTTP API passes writes on to the leader's gateway, which it
// keeps between writes. A gateway kept that takes requests and answers none
// (seen on a CAF connection whose broker lost its way back) must not hold
// the next writes for their whole timeout: it is asked who leads first, and
// when it does not answer, its connection is forgotten and reached again.
//
// A real actor system (not the test coordinator): the API connects from a
// detached actor, as it does in an oracle. Timeouts are short; nothing is
// asserted about time.
#include <atomic>
#include <future>
#include <thread>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <caf/all.hpp>
#include <gtest/gtest.h>

#include "actors/api.hpp"
#include "actors/config.hpp"
#include "nodepool.pb.h"

using namespace std::chrono_literals;

namespace nodepool::testing {
namespace {

const char* follower_view =
  R"({"role":"follower","ready":true,"leader_client_address":"127.0.0.1:1"})";
const char* leader_view = R"({"role":"leader","ready":true})";

/// The leader's gateway, reached: it leads, and accepts every submission.
caf::actor spawn_leader_gateway(caf::actor_system& sys) {
  return sys.spawn([]() -> caf::behavior {
    return {[](cluster_atom) { return std::string{leader_view}; },
            [](submit_atom, const std::string&) { return accepted_atom::value; }};
  });
}

/// Ends its actors however the test ends (the system waits for them).
struct ender {
  std::vector<caf::actor> actors;
  ~ender() {
    for (auto& a : actors)
      caf::anon_send_exit(a, caf::exit_reason::kill);
  }
};

TEST(forwarding, a_kept_leader_gateway_that_stopped_answering_is_reached_again) {
  actor_config cfg{false};
  caf::actor_system sys{cfg};
  // This member: it follows, and names the leader's client address.
  auto local = sys.spawn([]() -> caf::behavior {
    return {[](cluster_atom) { return std::string{follower_view}; }};
  });
  // The leader's gateway as first reached: it takes every request and
  // answers none.
  auto silent = sys.spawn([](caf::event_based_actor* self) -> caf::behavior {
    auto kept = std::make_shared<std::vector<caf::response_promise>>();
    return {
      [=](cluster_atom) { kept->push_back(self->make_response_promise()); },
      [=](archive_atom, const std::string&) {
        kept->push_back(self->make_response_promise());
      },
      [=](submit_atom, const std::string&) {
        kept->push_back(self->make_response_promise());
      }};
  });
  // The same leader reached again: it answers.
  auto good = spawn_leader_gateway(sys);
  // Ended however the test ends (the system waits for its actors): the
  // requests still waiting on the silent one then end too.
  ender end_all{{local, silent, good}};
  std::mutex mu;
  int connects = 0;
  std::vector<std::string> forgotten;
  connect_fn connect = [&](const std::string&) -> caf::expected<caf::actor> {
    std::lock_guard<std::mutex> g{mu};
    return ++connects == 1 ? silent : good;
  };
  forget_fn forget = [&](const std::string& addr) {
    std::lock_guard<std::mutex> g{mu};
    forgotten.push_back(addr);
  };
  auto api = make_pool_api(sys, local, local, connect, 300ms, forget);

  // A read for a write, passed on: the silent gateway is reached, kept,
  // and the read times out.
  std::promise<std::optional<http::api_error>> first;
  api->archive_for_write(pb::ArchiveQuery{},
                         [&](pb::ArchiveAnswer, std::optional<http::api_error> e) {
                           first.set_value(e);
                         });
  auto f1 = first.get_future();
  ASSERT_EQ(f1.wait_for(20s), std::future_status::ready);
  EXPECT_TRUE(f1.get().has_value());

  // A submission: the kept gateway does not say who leads, so it is
  // forgotten, the leader reached again, and the submission accepted.
  std::promise<std::optional<http::api_error>> second;
  pb::SubmitSession s;
  s.set_session_id("fw-1");
  api->submit(s, [&](std::optional<http::api_error> e) { second.set_value(e); });
  auto f2 = second.get_future();
  ASSERT_EQ(f2.wait_for(20s), std::future_status::ready)
    << "the submission waited on the gateway that does not answer";
  auto e2 = f2.get();
  EXPECT_FALSE(e2.has_value()) << e2->code << ": " << e2->message;
  std::lock_guard<std::mutex> g{mu};
  EXPECT_EQ(connects, 2);
  ASSERT_EQ(forgotten.size(), 1u);
  EXPECT_EQ(forgotten[0], "127.0.0.1:1");
}

// Writes that come while the leader is being reached wait for that one
// attempt: connecting blocks a thread of its own, and a thread per write
// would grow with the rate of writes during a change of leader.
TEST(forwarding, writes_during_a_connection_attempt_share_it) {
  actor_config cfg{false};
  caf::actor_system sys{cfg};
  auto asked = std::make_shared<std::atomic<int>>(0);
  auto local = sys.spawn([asked]() -> caf::behavior {
    return {[asked](cluster_atom) {
      ++*asked;
      return std::string{follower_view};
    }};
  });
  auto good = spawn_leader_gateway(sys);
  ender end_all{{local, good}};
  std::promise<void> open_gate;
  auto gate = open_gate.get_future().share();
  struct opener {  // however the test ends, the attempt is let go
    std::promise<void>& p;
    bool open = false;
    void now() {
      if (!open)
        p.set_value();
      open = true;
    }
    ~opener() { now(); }
  } release{open_gate};
  std::atomic<int> connects{0};
  connect_fn connect = [&, gate](const std::string&) -> caf::expected<caf::actor> {
    ++connects;
    gate.wait();  // a leader slow to answer the handshake
    return good;
  };
  auto api = make_pool_api(sys, local, local, connect, 300ms);
  const int writes = 20;
  std::mutex mu;
  std::vector<std::optional<http::api_error>> answers;
  std::promise<void> all_answered;
  for (int i = 0; i < writes; ++i) {
    pb::SubmitSession s;
    s.set_session_id("fw-" + std::to_string(i));
    api->submit(s, [&](std::optional<http::api_error> e) {
      std::lock_guard<std::mutex> g{mu};
      answers.push_back(e);
      if (answers.size() == writes)
        all_answered.set_value();
    });
  }
  // Every write has asked who leads; a second attempt would start within
  // the next second (it does not wait for anything).
  auto until = std::chrono::steady_clock::now() + 20s;
  while (*asked < writes && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(5ms);
  ASSERT_EQ(*asked, writes);
  until = std::chrono::steady_clock::now() + 1s;
  while (connects < 2 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(5ms);
  EXPECT_EQ(connects.load(), 1);
  release.now();
  ASSERT_EQ(all_answered.get_future().wait_for(20s), std::future_status::ready);
  std::lock_guard<std::mutex> g{mu};
  for (auto& e : answers)
    EXPECT_FALSE(e.has_value()) << e->code << ": " << e->message;
  EXPECT_EQ(connects.load(), 1);
}

} // namespace
} // namespace nodepool::testing
