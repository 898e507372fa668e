// How `nodepool chaos` decides that a run has settled, from the members'
// status answers: the answers below have the shape of real ones (the
// first two were taken from runs that ended their settling too early).
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "cli/chaos_settle.hpp"

namespace nodepool::cli {
namespace {

using json = nlohmann::json;

json member(const std::string& role, bool ready, uint64_t term,
            uint64_t pool_index, uint64_t complete_through) {
  return {{"role", role},
          {"ready", ready},
          {"term", term},
          {"pool_index", pool_index},
          {"archive_complete_through", complete_through}};
}

json status(json cluster, json live = json::object()) {
  return {{"cluster", std::move(cluster)}, {"session_states", std::move(live)}};
}

const std::set<std::string> accepted{"s0-31", "s0-32", "s1-30"};

// A member just restarted (a candidate: nothing applied yet) lists no
// session; in a cluster that is not a settled pool.
TEST(ChaosSettle, AnEmptyListFromAMemberThatDoesNotLeadIsNotTaken) {
  struct {
    const char* what;
    json answer;
    uint64_t newest_term;
  } not_the_leader[] = {
    {"a candidate", status(member("candidate", false, 9, 0, 197)), 9},
    {"a follower just restarted", status(member("follower", false, 3, 0, 0)), 3},
    // Elected but not ready: the entries of earlier terms not applied yet.
    {"a leader not ready", status(member("leader", false, 10, 120, 120)), 10},
    // A leader of a term older than the newest one seen.
    {"a deposed leader", status(member("leader", true, 8, 300, 300)), 9},
  };
  for (auto& c : not_the_leader)
    EXPECT_EQ(read_sessions_answer(c.answer, accepted, true, c.newest_term),
              sessions_answer::not_from_the_leader)
      << c.what;
  // A single oracle's answer has no cluster part, and counts.
  json single{{"session_states", json::object()}};
  EXPECT_EQ(read_sessions_answer(single, accepted, false, 0),
            sessions_answer::settled);
}

TEST(ChaosSettle, TheCurrentLeaderSettlesOnceNoAcceptedSessionIsLive) {
  auto open = status(member("leader", true, 10, 400, 400),
                     {{"s0-32", "active"}, {"other", "queued"}});
  EXPECT_EQ(read_sessions_answer(open, accepted, true, 10), sessions_answer::open);
  auto others = status(member("leader", true, 11, 410, 410), {{"other", "queued"}});
  EXPECT_EQ(read_sessions_answer(others, accepted, true, 10),
            sessions_answer::settled);
  EXPECT_EQ(read_sessions_answer(json(nullptr), accepted, true, 10),
            sessions_answer::no_answer);
  EXPECT_EQ(read_sessions_answer(json{{"cluster", member("leader", true, 10, 1, 1)}},
                                 accepted, true, 10),
            sessions_answer::no_answer);
}

// The archives' step: the target is the current leader's pool index; a
// member whose archive still has a gap to copy is asked again until it
// holds everything through it.
TEST(ChaosSettle, EveryArchiveMustReachTheLeadersIndex) {
  archive_watch w{3};
  // Before the leader answered, nothing is complete, whatever others say.
  w.answer(1, status(member("follower", true, 10, 2427, 2427)), 10);
  EXPECT_FALSE(w.complete());
  EXPECT_FALSE(w.target());
  EXPECT_EQ(w.next(1), 2u);  // every member in turn
  // A candidate's index is no target.
  w.answer(0, status(member("candidate", false, 10, 0, 0)), 10);
  EXPECT_FALSE(w.target());
  w.answer(2, status(member("leader", true, 10, 2557, 2557)), 10);
  ASSERT_TRUE(w.target());
  EXPECT_EQ(*w.target(), 2557u);
  // Member 2 said 2427 before the target was known: still short of it.
  EXPECT_FALSE(w.complete());
  EXPECT_EQ(w.next(2), 0u);
  // Member 1 caught up by an install whose gap is not copied yet.
  w.answer(0, status(member("follower", true, 10, 2557, 971)), 10);
  EXPECT_FALSE(w.complete());
  EXPECT_EQ(w.next(0), 1u);
  w.answer(1, status(member("follower", true, 10, 2560, 2560)), 10);
  EXPECT_EQ(w.next(1), 0u);  // member 3 (the leader) is complete: skipped
  EXPECT_EQ(w.short_of_target(), "member 1 through 971");
  w.answer(0, status(member("follower", true, 10, 2562, 2562)), 10);
  EXPECT_TRUE(w.complete());
  EXPECT_EQ(w.short_of_target(), "");
  // Member 1 was behind at its first answer once the target was known;
  // member 2's first such answer was complete.
  EXPECT_EQ(w.behind(), 1u);
  // An answer that is not a status report changes nothing.
  w.answer(0, json("garbage"), 10);
  w.answer(7, status(member("follower", true, 10, 1, 1)), 10);
  EXPECT_TRUE(w.complete());
}

} // namespace
} // namespace nodepool::cli
