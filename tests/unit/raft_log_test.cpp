// Three members of a real Raft group in one process: libraft's raft_uv on
// real directories, its TCP transport on loopback sockets, each member on a
// libuv thread of its own. The point is the real thing: election, commits
// over the network, a stopped leader replaced, and a member restarted from
// its directory catching up. Waits are bounded polls, not timed assertions.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <linux/aio_abi.h>
#include <sys/syscall.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <filesystem>
#include <fstream>
#include <algorithm>
#include <cstdio>
#include <optional>
#include <set>
#include <thread>

extern "C" {
#include <raft.h>
}
#include "proposer.hpp"
#include "cluster_config.hpp"
#include "raft/raft_aio.hpp"
#include "raft/raft_disk.hpp"
#include "raft/raft_log.hpp"
#include "raft/raft_member.hpp"
#include "replica.hpp"
#include "support/pool_workload.hpp"
#include "support/temp_dir.hpp"

namespace nodepool {
namespace {

using testing::pool_workload;
using testing::temp_dir;

bool wait_for(const std::function<bool()>& f, int seconds = 20) {
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (std::chrono::steady_clock::now() < until) {
    if (f())
      return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return f();
}

// Each member's machine defers its work, as an oracle's does.
struct node {
  temp_dir dir;
  std::unique_ptr<replica> rep = std::make_unique<replica>();
  std::unique_ptr<replica_machine> sm =
    std::make_unique<replica_machine>(*rep, true);
  std::unique_ptr<replicated_log> log;
  std::atomic<uint64_t> ready_term{0};
};

class RaftLog : public ::testing::Test {
protected:
  void SetUp() override {
    for (uint64_t id = 1; id <= 3; ++id)
      peers_.push_back(
        {id, "127.0.0.1:" + std::to_string(free_loopback_port())});
    for (int i = 0; i < 3; ++i)
      nodes_[i] = std::make_unique<node>();
    for (int i = 0; i < 3; ++i)
      start(i);
  }
  void TearDown() override {
    for (auto& n : nodes_)
      if (n)
        n->log.reset();
  }

  void start(int i) {
    raft_options o;
    o.id = static_cast<uint64_t>(i + 1);
    o.dir = nodes_[i]->dir.path();
    o.members = peers_;
    o.election_timeout_ms = election_timeout_ms_;
    o.heartbeat_timeout_ms = 30;
    o.snapshot_threshold = 64;
    o.snapshot_trailing = 16;
    auto* n = nodes_[i].get();
    std::string err;
    n->log = start_raft_log(o, *n->sm,
                            [n](const log_status& s) {
                              n->ready_term = s.ready ? s.term : 0;
                            },
                            err);
    ASSERT_TRUE(n->log) << err;
  }

  int leader() {
    for (int i = 0; i < 3; ++i)
      if (nodes_[i] && nodes_[i]->log && nodes_[i]->ready_term
          && nodes_[i]->log->status().ready)
        return i;
    return -1;
  }

  /// Proposes up to `batches` group commits of workload commands on member
  /// `i` and waits for each; returns how many did not commit.
  int drive(int i, int batches) {
    auto* n = nodes_[i].get();
    auto term = n->log->status().term;
    auto p = n->sm->with([&](replica& r) { return std::make_unique<proposer>(r, term); });
    int failed = 0;
    for (int b = 0; b < batches; ++b) {
      if (last_index_ == 0) {
        auto c = pool_workload::configure();
        p->apply(c, now_ms());
      }
      for (int k = 0; k < 8; ++k) {
        auto c = work_.next(p->pool());
        p->apply(c, now_ms());
      }
      if (!p->has_pending())
        continue;
      std::mutex mu;
      std::condition_variable cv;
      std::optional<propose_status> got;
      n->log->propose(p->take_batch(), [&](propose_status s, uint64_t) {
        std::lock_guard<std::mutex> g{mu};
        got = s;
        cv.notify_one();
      });
      std::unique_lock<std::mutex> g{mu};
      cv.wait_for(g, std::chrono::seconds(10), [&] { return got.has_value(); });
      if (!got || *got != propose_status::committed) {
        ++failed;
        break;
      }
      last_index_ = p->last_index();
    }
    return failed;
  }

  static int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
  }

  bool all_applied(uint64_t index, std::initializer_list<int> which) {
    if (wait_for([&] {
          for (int i : which)
            if (nodes_[i]->sm->with([](replica& r) { return r.last_index(); })
                < index)
              return false;
          return true;
        }))
      return true;
    for (int i : which) {
      auto st = nodes_[i]->log->status();
      nodes_[i]->sm->with([&](replica& r) {
        ADD_FAILURE() << "member " << i + 1 << ": " << to_string(st.role)
                      << " term " << st.term << " applied "
                      << st.applied_index << " commit " << st.commit_index
                      << " last " << st.last_index << "; replica at "
                      << r.last_index() << " of " << index << ", refused "
                      << r.batches_refused() << ", restores "
                      << r.restores();
        return 0;
      });
    }
    return false;
  }

  std::string snapshot_of(int i) {
    return nodes_[i]->sm->with([](replica& r) { return r.snapshot_bytes(); });
  }

  std::vector<raft_peer> peers_;
  std::unique_ptr<node> nodes_[3];
  pool_workload work_{21};
  uint64_t last_index_ = 0;
  unsigned election_timeout_ms_ = 300;
};

TEST_F(RaftLog, ReplicatesOverTcpFailsOverAndCatchesUpAfterRestart) {
  auto handed = deferred_aio_destroys();
  ASSERT_TRUE(wait_for([&] { return leader() >= 0; })) << "no leader";
  int l = leader();
  ASSERT_EQ(drive(l, 60), 0);
  EXPECT_GT(last_index_, 200u);
  ASSERT_TRUE(all_applied(last_index_, {0, 1, 2}));
  EXPECT_EQ(snapshot_of(0), snapshot_of(1));
  EXPECT_EQ(snapshot_of(0), snapshot_of(2));

  // The leader stops; the other two elect one of themselves and go on.
  nodes_[l]->log.reset();
  nodes_[l]->ready_term = 0;
  ASSERT_TRUE(wait_for([&] { return leader() >= 0; })) << "no new leader";
  int l2 = leader();
  ASSERT_NE(l2, l);
  auto before = last_index_;
  ASSERT_EQ(drive(l2, 60), 0);
  EXPECT_GT(last_index_, before + 200);

  // The old leader restarts from its directory and catches up (by log or
  // by snapshot: 120 entries is past the snapshot threshold).
  nodes_[l]->rep = std::make_unique<replica>();
  nodes_[l]->sm = std::make_unique<replica_machine>(*nodes_[l]->rep, true);
  start(l);
  ASSERT_TRUE(all_applied(last_index_, {0, 1, 2}));
  EXPECT_EQ(snapshot_of(0), snapshot_of(1));
  EXPECT_EQ(snapshot_of(0), snapshot_of(2));
  for (int i = 0; i < 3; ++i)
    nodes_[i]->sm->with([&](replica& r) {
      EXPECT_TRUE(r.violations().empty()) << "member " << i + 1;
      EXPECT_EQ(r.batches_refused(), 0u) << "member " << i + 1;
      EXPECT_TRUE(r.pool().check_invariants().empty());
      return 0;
    });
  // The segments raft_uv closed (at its snapshots, at a stop) had their AIO
  // contexts destroyed off raft's loop (raft_aio.hpp).
  EXPECT_GT(deferred_aio_destroys(), handed);
}

// A leader's proposal is answered as soon as raft applies it: the
// replica's own work on the entry waits until the loop has run that
// iteration's callbacks, and the loop catches up by itself (no reader
// needed). Without the deferral the answer finds nothing pending; without
// the loop's catch-up what is pending stays there.
TEST_F(RaftLog, ALeaderAnswersACommitBeforeItsReplicaAppliesIt) {
  ASSERT_TRUE(wait_for([&] { return leader() >= 0; })) << "no leader";
  int l = leader();
  ASSERT_EQ(drive(l, 5), 0);
  auto* n = nodes_[l].get();
  auto term = n->log->status().term;
  auto p = n->sm->with([&](replica& r) { return std::make_unique<proposer>(r, term); });
  for (int k = 0; k < 8; ++k) {
    auto c = work_.next(p->pool());
    p->apply(c, now_ms());
  }
  ASSERT_TRUE(p->has_pending());
  std::mutex mu;
  std::condition_variable cv;
  std::optional<propose_status> got;
  size_t pending_at_answer = 0;
  n->log->propose(p->take_batch(), [&](propose_status s, uint64_t) {
    auto pending = n->sm->pending();  // on raft's loop, right after apply
    std::lock_guard<std::mutex> g{mu};
    got = s;
    pending_at_answer = pending;
    cv.notify_one();
  });
  {
    std::unique_lock<std::mutex> g{mu};
    ASSERT_TRUE(cv.wait_for(g, std::chrono::seconds(10), [&] { return got.has_value(); }));
  }
  ASSERT_EQ(*got, propose_status::committed);
  EXPECT_GE(pending_at_answer, 1u);
  EXPECT_TRUE(wait_for([&] { return n->sm->pending() == 0; }))
    << n->sm->pending() << " entries still pending";
  EXPECT_EQ(n->sm->with([](replica& r) { return r.last_index(); }), p->last_index());
  last_index_ = p->last_index();
  ASSERT_TRUE(all_applied(last_index_, {0, 1, 2}));
  EXPECT_EQ(snapshot_of(0), snapshot_of(l == 0 ? 1 : 0));
}

// Every connection between members sends at once (TCP_NODELAY): with
// Nagle's algorithm a message's last segment waited for the peer's delayed
// acknowledgement, 40 ms, and whole stretches of commits took 25-50 ms each
// (BENCHMARKS.md, "Repetitions that collapse"). The members' connections
// are found among this process's sockets by their ports; each must say so.
TEST_F(RaftLog, ConnectionsBetweenMembersSendAtOnce) {
  ASSERT_TRUE(wait_for([&] { return leader() >= 0; })) << "no leader";
  ASSERT_EQ(drive(leader(), 5), 0);
  std::set<uint16_t> ports;
  for (auto& p : peers_)
    ports.insert(static_cast<uint16_t>(std::stoi(p.address.substr(p.address.rfind(':') + 1))));
  auto port_of = [](const sockaddr_in& a) { return ntohs(a.sin_port); };
  int members_sockets = 0, delayed = 0;
  for (int fd = 0; fd < 4096; ++fd) {
    sockaddr_in self{}, peer{};
    socklen_t n1 = sizeof self, n2 = sizeof peer;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&self), &n1) != 0
        || self.sin_family != AF_INET
        || getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &n2) != 0)
      continue;  // not a connected IPv4 socket (a listener, say)
    if (ports.count(port_of(self)) == 0 && ports.count(port_of(peer)) == 0)
      continue;
    ++members_sockets;
    int on = 0;
    socklen_t len = sizeof on;
    ASSERT_EQ(getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, &len), 0);
    if (on == 0)
      ++delayed;
  }
  // Three members, each connected to the two others: six connections, both
  // ends in this process.
  EXPECT_GE(members_sockets, 6);
  EXPECT_EQ(delayed, 0) << "of " << members_sockets << " sockets";
}

// raft_aio.cpp's `syscall`: an io_destroy returns at once and is carried
// out on another thread; any other call goes to libc's.
TEST(RaftAio, AnIoDestroyIsHandedOverAndStillDestroysTheContext) {
  aio_context_t ctx = 0;
  ASSERT_EQ(syscall(SYS_io_setup, 1, &ctx), 0) << errno;
  struct io_event ev {};
  struct timespec none {};
  // Alive: no event, no error.
  EXPECT_EQ(syscall(SYS_io_getevents, ctx, 0, 1, &ev, &none), 0);
  auto before = deferred_aio_destroys();
  EXPECT_EQ(syscall(SYS_io_destroy, ctx), 0);
  EXPECT_EQ(deferred_aio_destroys(), before + 1);
  drain_aio_destroys();
  // Gone: the kernel no longer knows the context.
  errno = 0;
  EXPECT_EQ(syscall(SYS_io_getevents, ctx, 0, 1, &ev, &none), -1);
  EXPECT_EQ(errno, EINVAL);
}

TEST_F(RaftLog, AFollowerRefusesProposals) {
  ASSERT_TRUE(wait_for([&] { return leader() >= 0; }));
  int f = (leader() + 1) % 3;
  std::mutex mu;
  std::condition_variable cv;
  std::optional<propose_status> got;
  nodes_[f]->log->propose("x", [&](propose_status s, uint64_t) {
    std::lock_guard<std::mutex> g{mu};
    got = s;
    cv.notify_one();
  });
  std::unique_lock<std::mutex> g{mu};
  cv.wait_for(g, std::chrono::seconds(10), [&] { return got.has_value(); });
  ASSERT_TRUE(got);
  EXPECT_EQ(*got, propose_status::not_leader);
  // A follower knows the leader once it heard from it (a heartbeat away
  // from an election on a loaded machine).
  EXPECT_TRUE(wait_for([&] { return nodes_[f]->log->status().leader_id != 0; }));
  auto st = nodes_[f]->log->status();
  EXPECT_EQ(st.role, log_role::follower);
  EXPECT_EQ(st.leader_id, static_cast<uint64_t>(leader() + 1));
  EXPECT_FALSE(st.leader_address.empty());
}

// A server that is not in the cluster file (here one whose own file names
// member 1's Raft address under another id) is refused and counted; the
// cluster goes on.
TEST_F(RaftLog, RefusesMessagesFromAServerNotInTheCluster) {
  ASSERT_TRUE(wait_for([&] { return leader() >= 0; })) << "no leader";
  temp_dir d;
  replica rep;
  replica_machine sm{rep};
  raft_options o;
  o.id = 4;
  o.dir = d.path();
  o.members = {{4, "127.0.0.1:" + std::to_string(free_loopback_port())},
               {5, peers_[0].address}};
  o.election_timeout_ms = 100;
  o.heartbeat_timeout_ms = 10;
  std::string err;
  auto stranger = start_raft_log(o, sm, {}, err);
  ASSERT_TRUE(stranger) << err;
  EXPECT_TRUE(wait_for(
    [&] { return nodes_[0]->log->status().refused_peers > 0; }))
    << "member 1 never heard from the stranger";
  int l = leader();
  ASSERT_GE(l, 0);
  EXPECT_EQ(drive(l, 5), 0);
  for (int i = 1; i < 3; ++i)
    EXPECT_EQ(nodes_[i]->log->status().refused_peers, 0u);
  stranger->stop();
}

TEST(RaftRemoval, ANewLeaderWaitsToHearFromTheVotersBeforeItRefuses) {
  // Five voters, one removed: four left, of which the new leader has heard
  // from itself and one other (it won on the first votes that came in).
  auto early = check_removal(1, 4, 2, 10, 400);
  EXPECT_EQ(early.verdict, removal_check::wait) << early.why;
  auto at_timeout = check_removal(1, 4, 2, 400, 400);
  EXPECT_EQ(at_timeout.verdict, removal_check::wait);
  // An election timeout later, what it has not heard from is down.
  auto late = check_removal(1, 4, 2, 401, 400);
  EXPECT_EQ(late.verdict, removal_check::refuse);
  EXPECT_NE(late.why.find("would leave 2 of 4 voters reachable"), std::string::npos)
    << late.why;
  // A majority heard: removed at once, new leader or not.
  EXPECT_EQ(check_removal(1, 4, 3, 10, 400).verdict, removal_check::proceed);
  EXPECT_EQ(check_removal(1, 4, 3, 5000, 400).verdict, removal_check::proceed);
  EXPECT_EQ(check_removal(1, 2, 2, 5000, 400).verdict, removal_check::proceed);
  // Half is not a majority.
  EXPECT_EQ(check_removal(1, 2, 1, 5000, 400).verdict, removal_check::refuse);
  // The last voter is never removed, however new the leader.
  auto last = check_removal(7, 0, 0, 0, 400);
  EXPECT_EQ(last.verdict, removal_check::refuse);
  EXPECT_NE(last.why.find("member 7 is the last voter"), std::string::npos) << last.why;
}

TEST(RaftTransfer, ANewLeaderWaitsToHearFromTheTargetBeforeItRefuses) {
  // Not heard from yet, by a leader of 10 ms: it waits, up to an election
  // timeout of leading; after that the target is taken for down.
  EXPECT_EQ(check_transfer(3, false, 10, 300).verdict, removal_check::wait);
  EXPECT_EQ(check_transfer(3, false, 300, 300).verdict, removal_check::wait);
  auto late = check_transfer(3, false, 301, 300);
  EXPECT_EQ(late.verdict, removal_check::refuse);
  EXPECT_NE(late.why.find("member 3 has not been heard from"), std::string::npos)
    << late.why;
  // Heard from: at once, new leader or not.
  EXPECT_EQ(check_transfer(3, true, 0, 300).verdict, removal_check::proceed);
  EXPECT_EQ(check_transfer(3, true, 5000, 300).verdict, removal_check::proceed);
}

// A hand-over asked of a leader that has just taken over, to a member it
// has not heard from yet (as a follower it heard only from the old leader;
// here the member was down and comes back a moment later): it waits for
// the member's first answers instead of refusing, and hands over. Election
// timeouts of 2 s, so that a loaded machine restarts the member in time.
class RaftLogSlowTimeouts : public RaftLog {
protected:
  void SetUp() override {
    election_timeout_ms_ = 2000;
    RaftLog::SetUp();
  }
};

TEST_F(RaftLogSlowTimeouts, ALeaderJustTakenOverHandsOverToAMemberItHearsFromSoon) {
  ASSERT_TRUE(wait_for([&] { return leader() >= 0; }, 60)) << "no leader";
  int l = leader();
  ASSERT_EQ(drive(l, 2), 0);
  int g = (l + 1) % 3, f = (l + 2) % 3;
  struct answer {
    std::mutex mu;
    std::condition_variable cv;
    std::optional<std::string> got;
    std::string wait() {
      std::unique_lock<std::mutex> lk{mu};
      cv.wait_for(lk, std::chrono::seconds(20), [&] { return got.has_value(); });
      return got ? *got : std::string{"no answer in 20 s"};
    }
  };
  auto transfer = [&](int from, int to, answer& a) {
    nodes_[from]->log->transfer(static_cast<uint64_t>(to + 1), [&a](std::string e) {
      std::lock_guard<std::mutex> lk{a.mu};
      a.got = std::move(e);
      a.cv.notify_one();
    });
  };
  // f stops; l hands over to g, which wins with l's vote.
  nodes_[f]->log.reset();
  nodes_[f]->ready_term = 0;
  auto term = nodes_[l]->log->status().term;
  answer first;
  transfer(l, g, first);
  ASSERT_EQ(first.wait(), "");
  ASSERT_TRUE(wait_for([&] {
    auto s = nodes_[g]->log->status();
    return s.ready && s.term > term;
  })) << "member " << g + 1 << " did not take over";
  // The moment g leads, it is asked to hand over to f, which is only now
  // starting again: g has never heard from it.
  answer second;
  transfer(g, f, second);
  nodes_[f]->rep = std::make_unique<replica>();
  nodes_[f]->sm = std::make_unique<replica_machine>(*nodes_[f]->rep, true);
  start(f);
  ASSERT_EQ(second.wait(), "");
  ASSERT_TRUE(wait_for([&] { return leader() == f; }))
    << "member " << f + 1 << " does not lead";
}

TEST(RaftLogStart, RefusesAMemberNotInTheCluster) {
  temp_dir d;
  replica r;
  replica_machine sm{r};
  raft_options o;
  o.id = 9;
  o.dir = d.path();
  o.members = {{1, "127.0.0.1:1"}, {2, "127.0.0.1:2"}};
  std::string err;
  auto l = start_raft_log(o, sm, {}, err);
  EXPECT_FALSE(l);
  EXPECT_NE(err.find("not in the cluster"), std::string::npos) << err;
}

TEST(RaftLogStart, RefusesAMissingDirectory) {
  replica r;
  replica_machine sm{r};
  raft_options o;
  o.id = 1;
  o.dir = "/nonexistent/nodepool-raft";
  o.members = {{1, "127.0.0.1:" + std::to_string(free_loopback_port())}};
  std::string err;
  auto l = start_raft_log(o, sm, {}, err);
  EXPECT_FALSE(l);
  EXPECT_FALSE(err.empty());
}

} // namespace
} // namespace nodepool

namespace nodepool {
namespace {

/// On the ready leader `log` whose machine is `m`: `batches` group commits
/// of `per` commands of the seeded workload, each waited for. Returns the
/// pool index of the last (0 after a proposal that did not commit).
uint64_t propose_workload(replicated_log& log, replica_machine& m,
                          uint64_t seed, int batches, int per) {
  auto term = log.status().term;
  auto p = m.with([&](replica& r) { return std::make_unique<proposer>(r, term); });
  pool_workload work{seed};
  int64_t now = 1000;
  auto configure = pool_workload::configure();
  p->apply(configure, now);
  for (int b = 0; b < batches; ++b) {
    for (int k = 0; k < per; ++k) {
      auto c = work.next(p->pool());
      p->apply(c, now += 10);
    }
    if (!p->has_pending())
      continue;
    std::mutex mu;
    std::condition_variable cv;
    std::optional<propose_status> got;
    log.propose(p->take_batch(), [&](propose_status st, uint64_t) {
      std::lock_guard<std::mutex> g{mu};
      got = st;
      cv.notify_one();
    });
    std::unique_lock<std::mutex> g{mu};
    cv.wait_for(g, std::chrono::seconds(10), [&] { return got.has_value(); });
    EXPECT_EQ(got, propose_status::committed) << "batch " << b;
    if (got != propose_status::committed)
      return 0;
  }
  return p->last_index();
}

/// A replica's machine that records on which threads the two steps of each
/// snapshot ran, and on which thread entries are applied (raft's loop).
struct thread_recording_machine final : state_machine {
  replica rep;
  replica_machine inner{rep};
  std::mutex mu;
  std::thread::id applying;
  std::vector<std::pair<std::thread::id, std::thread::id>> steps;

  void apply(std::string_view entry) override {
    {
      std::lock_guard<std::mutex> g{mu};
      applying = std::this_thread::get_id();
    }
    inner.apply(entry);
  }
  std::string snapshot() override { return inner.snapshot(); }
  std::function<std::string()> snapshot_later() override {
    auto first = std::this_thread::get_id();
    auto job = inner.snapshot_later();
    return [this, first, job = std::move(job)] {
      auto bytes = job();
      std::lock_guard<std::mutex> g{mu};
      steps.emplace_back(first, std::this_thread::get_id());
      return bytes;
    };
  }
  bool restore(std::string_view bytes, std::string& error) override {
    return inner.restore(bytes, error);
  }
  std::string broken() const override { return inner.broken(); }
  std::string follows(const std::vector<std::string_view>& entries,
                      size_t& bad) const override {
    return inner.follows(entries, bad);
  }
};

// raft_uv snapshots in two steps (raft_member.cpp): the copy on raft's
// loop, the serialization on another thread while entries go on being
// applied. What it wrote is the state: a member restarted from its
// directory loads the snapshot and replays the rest to the same bytes.
TEST(RaftLogSnapshot, IsCopiedOnTheLoopAndSerializedOnAnotherThread) {
  temp_dir dir;
  raft_options o;
  o.id = 1;
  o.dir = dir.path();
  o.members = {{1, "127.0.0.1:" + std::to_string(free_loopback_port())}};
  o.election_timeout_ms = 300;
  o.heartbeat_timeout_ms = 30;
  o.snapshot_threshold = 16;
  o.snapshot_trailing = 4;
  auto sm = std::make_unique<thread_recording_machine>();
  std::string err;
  auto log = start_raft_log(o, *sm, {}, err);
  ASSERT_TRUE(log) << err;
  ASSERT_TRUE(wait_for([&] { return log->status().ready; }));
  auto last = propose_workload(*log, sm->inner, 5, 80, 8);
  ASSERT_FALSE(::testing::Test::HasFailure());
  ASSERT_TRUE(wait_for([&] {
    std::lock_guard<std::mutex> g{sm->mu};
    return sm->steps.size() >= 2;
  })) << "raft took fewer than two snapshots in 80 entries at threshold 16";
  {
    std::lock_guard<std::mutex> g{sm->mu};
    for (auto& [first, second] : sm->steps) {
      EXPECT_EQ(first, sm->applying) << "the copy ran off raft's loop";
      EXPECT_NE(second, first) << "the serialization ran on raft's loop";
    }
  }
  auto before = sm->inner.with([](replica& r) { return r.snapshot_bytes(); });
  log.reset();

  auto again = std::make_unique<thread_recording_machine>();
  log = start_raft_log(o, *again, {}, err);
  ASSERT_TRUE(log) << err;
  ASSERT_TRUE(wait_for([&] {
    return again->inner.with([](replica& r) { return r.last_index(); }) >= last;
  }));
  EXPECT_GT(again->inner.with([](replica& r) { return r.restores(); }), 0u)
    << "the restart did not load a snapshot";
  EXPECT_EQ(again->inner.with([](replica& r) { return r.snapshot_bytes(); }),
            before);

  // A snapshot file changed on disk: the member refuses to start and says
  // why (here raft_uv's LZ4 content checksum; the frame's digest is for
  // what travels uncompressed), and so does the reader `nodepool check`
  // uses.
  log.reset();
  int flipped = 0;
  for (auto& e : std::filesystem::directory_iterator(dir.path())) {
    auto name = e.path().filename().string();
    if (name.rfind("snapshot-", 0) != 0
        || name.find(".meta") != std::string::npos)
      continue;
    auto size = std::filesystem::file_size(e.path());
    std::fstream f(e.path(), std::ios::in | std::ios::out | std::ios::binary);
    char c = 0;
    f.seekg(static_cast<std::streamoff>(size / 2));
    f.get(c);
    f.seekp(static_cast<std::streamoff>(size / 2));
    f.put(static_cast<char>(c ^ 0x20));
    ++flipped;
  }
  ASSERT_GT(flipped, 0) << "no snapshot file in " << dir.path();
  auto third = std::make_unique<thread_recording_machine>();
  log = start_raft_log(o, *third, {}, err);
  EXPECT_FALSE(log);
  EXPECT_NE(err.find("raft_start: "), std::string::npos) << err;
  EXPECT_EQ(third->inner.with([](replica& r) { return r.restores(); }), 0u);
  raft_disk disk;
  std::string why;
  EXPECT_FALSE(load_raft_dir(dir.path(), disk, why));
  EXPECT_NE(why.find("cannot load"), std::string::npos) << why;
  log.reset();
}

} // namespace
} // namespace nodepool

namespace nodepool {
namespace {

/// One member on `o.dir` proposes `batches` group commits of the workload
/// and stops; returns the pool index of the last.
uint64_t run_one_member(const raft_options& o, int batches) {
  replica rep;
  replica_machine sm{rep, true};
  std::string err;
  auto log = start_raft_log(o, sm, {}, err);
  EXPECT_TRUE(log) << err;
  if (!log)
    return 0;
  EXPECT_TRUE(wait_for([&] { return log->status().ready; }));
  return propose_workload(*log, sm, 7, batches, 4);
}

struct raft_files {
  std::vector<std::pair<uint64_t, uint64_t>> closed;  // first, last
  std::vector<std::string> open;
  std::vector<std::pair<uint64_t, std::string>> snapshots;  // index, name
};

raft_files list_raft_files(const std::string& dir) {
  raft_files f;
  for (auto& e : std::filesystem::directory_iterator(dir)) {
    auto name = e.path().filename().string();
    unsigned long long a = 0, b = 0, c = 0;
    int n = 0;
    if (std::sscanf(name.c_str(), "%llu-%llu%n", &a, &b, &n) == 2
        && static_cast<size_t>(n) == name.size())
      f.closed.emplace_back(a, b);
    else if (name.rfind("open-", 0) == 0)
      f.open.push_back(name);
    else if (std::sscanf(name.c_str(), "snapshot-%llu-%llu-%llu%n", &a, &b, &c, &n) == 3
             && static_cast<size_t>(n) == name.size())
      f.snapshots.emplace_back(b, name);
  }
  std::sort(f.closed.begin(), f.closed.end());
  std::sort(f.snapshots.begin(), f.snapshots.end());
  return f;
}

std::string segment_name(uint64_t first, uint64_t last) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%016llu-%016llu",
                static_cast<unsigned long long>(first),
                static_cast<unsigned long long>(last));
  return buf;
}

/// The pool index of the first command loaded after the snapshot, as
/// raft_uv alone loads `dir` (on a copy), or as a member does.
uint64_t first_pool_index_after_snapshot(const std::string& dir, bool as_a_member) {
  raft_disk disk;
  std::string why;
  EXPECT_TRUE(load_raft_dir(dir, disk, why, as_a_member)) << why;
  for (auto& e : disk.entries) {
    if (e.index <= disk.snapshot_index || !e.command)
      continue;
    pb::LogBatch b;
    if (b.ParseFromString(e.data) && b.entries_size() > 0)
      return b.entries(0).index();
  }
  return 0;
}

/// A member's files with entries well past its newest snapshot: snapshots
/// every 16 entries over 70 batches, then 150 batches with none, stopped and
/// started once more (a start closes the open segment raft_uv left at the
/// stop). `s`: the newest snapshot; `after`: the closed segments past it,
/// in order. False when none starts at s+1 (raft stored the snapshot while
/// entries were appended): the caller tries a new directory.
struct past_snapshot {
  uint64_t s = 0;
  std::vector<std::pair<uint64_t, uint64_t>> after;
  uint64_t last = 0;  // pool index
  raft_files files;
};

bool lay_out(const raft_options& o, past_snapshot& out) {
  if (run_one_member(o, 70) == 0)
    return false;
  auto quiet = o;
  quiet.snapshot_threshold = 100000;
  out.last = run_one_member(quiet, 150);
  run_one_member(quiet, 0);
  out.files = list_raft_files(o.dir);
  if (out.files.snapshots.size() < 2 || out.last == 0)
    return false;
  out.s = out.files.snapshots.back().first;
  for (auto& seg : out.files.closed)
    if (seg.first > out.s)
      out.after.push_back(seg);
  // More entries past S than a segment holds before it: loaded after an
  // older segment, some still land past S.
  return !out.after.empty() && out.after.front().first == out.s + 1
         && out.after.back().second >= out.s + 40;
}

/// The segments past the snapshot become open segments again, in order
/// (raft_uv loads them one after the other), and the open segment of the
/// last start (its barrier alone) goes.
void reopen_after(const std::string& dir, const past_snapshot& p) {
  for (auto& name : p.files.open)
    std::filesystem::remove(dir + "/" + name);
  int k = 1;
  for (auto& [a, b] : p.after) {
    auto open = dir + "/open-" + std::to_string(k++);
    std::filesystem::rename(dir + "/" + segment_name(a, b), open);
    // raft_uv prepares an open segment whole, zeros after what it wrote;
    // without them it takes the segment for a torn one.
    std::filesystem::resize_file(open, std::filesystem::file_size(open) + 65536);
  }
}

raft_options one_member_options(const std::string& dir) {
  raft_options o;
  o.id = 1;
  o.dir = dir;
  o.members = {{1, "127.0.0.1:" + std::to_string(free_loopback_port())}};
  o.election_timeout_ms = 300;
  o.heartbeat_timeout_ms = 30;
  o.snapshot_threshold = 16;
  o.snapshot_trailing = 64;  // the segments before the snapshot stay
  return o;
}

/// lay_out in a new directory, until it gives the layout (forty tries: a
/// try takes about 60 ms, and beside other tests on 2 cores ten tries in a
/// row were sometimes all missed).
std::unique_ptr<temp_dir> lay_out_anew(raft_options& o, past_snapshot& p) {
  std::unique_ptr<temp_dir> dir;
  for (int attempt = 0; attempt < 40; ++attempt) {
    dir = std::make_unique<temp_dir>();
    o = one_member_options(dir->path());
    p = {};
    if (lay_out(o, p))
      return dir;
  }
  p.after.clear();
  return dir;
}

// libraft 0.15 after a snapshot install that a crash cut short twice
// (raft_member.cpp, 12.): the newest snapshot S, closed segments that all
// end before S, and an open segment that holds S+1... raft_uv loads the
// open segment right after the last closed one, entries too early. The
// layout is made from a real member's files: its segment ending at S
// deleted (as the install had begun to), and the segment after S turned
// back into the open segment it was before a clean stop closed it.
TEST(RaftLogStart, AnInstallCutShortTwiceLoadsItsEntriesAfterTheSnapshot) {
  raft_options o;
  past_snapshot p;
  auto dir = lay_out_anew(o, p);
  ASSERT_FALSE(p.after.empty()) << "no segment started after the newest snapshot";
  auto s = p.s;
  auto last = p.last;
  for (auto& [a, b] : p.files.closed)
    if (a <= s && b >= s)
      std::filesystem::remove(dir->path() + "/" + segment_name(a, b));
  reopen_after(dir->path(), p);
  auto g = list_raft_files(dir->path());
  ASSERT_FALSE(g.closed.empty()) << "no segment before the snapshot stayed";
  ASSERT_LT(g.closed.back().second, s);

  // What raft_uv does with it, on a copy: the entries load too early.
  // `nodepool check`'s reader loads what a member would.
  {
    raft_disk disk;
    std::string why;
    ASSERT_TRUE(load_raft_dir(dir->path(), disk, why, false)) << why;
    pb::Snapshot snap;
    ASSERT_TRUE(snap.ParseFromString(disk.snapshot));
    EXPECT_NE(first_pool_index_after_snapshot(dir->path(), false),
              snap.last_index() + 1)
      << "raft_uv loaded the open segment where it belongs: the layout is not "
         "the one of the hole";
    EXPECT_EQ(first_pool_index_after_snapshot(dir->path(), true),
              snap.last_index() + 1);
  }

  // A member started on it sets the stale segments aside and loads every
  // entry where it belongs: the state comes back whole.
  replica rep;
  replica_machine sm{rep, true};
  std::string err;
  auto log = start_raft_log(o, sm, {}, err);
  ASSERT_TRUE(log) << err;
  EXPECT_TRUE(wait_for([&] {
    return sm.with([](replica& r) { return r.last_index(); }) >= last;
  })) << "the member stopped at pool index "
      << sm.with([](replica& r) { return r.last_index(); }) << " of " << last;
  EXPECT_EQ(sm.broken(), "");
  EXPECT_EQ(rep.batches_refused(), 0u);
  log.reset();
  int stale = 0;
  for (auto& e : std::filesystem::directory_iterator(dir->path()))
    stale += e.path().filename().string().rfind("stale-", 0) == 0;
  EXPECT_EQ(static_cast<size_t>(stale), g.closed.size());
}

// The same hole where no stale segment shows it: only an open segment,
// whose entries start past the one after the snapshot (here the newest
// snapshot is gone, so they load after the older one). The member's check
// of what raft loaded refuses to start, and says which entry.
TEST(RaftLogStart, RefusesALogThatDoesNotFollowItsSnapshot) {
  raft_options o;
  past_snapshot p;
  auto dir = lay_out_anew(o, p);
  ASSERT_FALSE(p.after.empty()) << "no segment started after the newest snapshot";
  auto& newest = p.files.snapshots.back().second;
  std::filesystem::remove(dir->path() + "/" + newest);
  std::filesystem::remove(dir->path() + "/" + newest + ".meta");
  for (auto& [a, b] : p.files.closed)
    if (a <= p.s)
      std::filesystem::remove(dir->path() + "/" + segment_name(a, b));
  reopen_after(dir->path(), p);

  replica rep;
  replica_machine sm{rep, true};
  std::string err;
  auto log = start_raft_log(o, sm, {}, err);
  EXPECT_FALSE(log);
  EXPECT_NE(err.find("is damaged"), std::string::npos) << err;
  EXPECT_NE(err.find("does not follow the state"), std::string::npos) << err;
  EXPECT_EQ(rep.batches_applied(), 0u);
}

// A byte changed in the newest closed segment (a disk's bit rot, or a
// write torn by a power cut under a file system that lost its order): the
// segment holds entries this member acknowledged. raft_uv's default would
// rename it and every segment after it corrupt-* and start with a shorter
// log; the member refuses to start instead, names the segment and leaves
// every file where it was (raft_member.cpp, 13.). `nodepool check`'s reader
// refuses it too.
TEST(RaftLogStart, RefusesAChangedByteInAClosedSegmentAndNamesIt) {
  temp_dir dir;
  auto o = one_member_options(dir.path());
  o.snapshot_threshold = 100000;
  auto last = run_one_member(o, 40);
  ASSERT_GT(last, 0u);
  auto before = list_raft_files(dir.path());
  ASSERT_FALSE(before.closed.empty());
  auto [a, b] = before.closed.back();
  auto name = segment_name(a, b);
  auto path = dir.path() + "/" + name;
  auto size = std::filesystem::file_size(path);
  ASSERT_GT(size, 16u);
  {
    // Every byte past the format word is under a checksum.
    std::fstream f{path, std::ios::in | std::ios::out | std::ios::binary};
    f.seekg(static_cast<std::streamoff>(size / 2));
    char c = 0;
    f.read(&c, 1);
    f.seekp(static_cast<std::streamoff>(size / 2));
    c = static_cast<char>(c ^ 0x5a);
    f.write(&c, 1);
    ASSERT_TRUE(f.good());
  }

  replica rep;
  replica_machine sm{rep, true};
  std::string err;
  auto log = start_raft_log(o, sm, {}, err);
  EXPECT_FALSE(log) << "started at pool index "
                    << sm.with([](replica& r) { return r.last_index(); })
                    << " of " << last;
  log.reset();
  EXPECT_NE(err.find("is damaged"), std::string::npos) << err;
  EXPECT_NE(err.find(name), std::string::npos) << err;
  EXPECT_NE(err.find("--join"), std::string::npos) << err;
  auto after = list_raft_files(dir.path());
  EXPECT_EQ(after.closed, before.closed);
  for (auto& e : std::filesystem::directory_iterator(dir.path()))
    EXPECT_NE(e.path().filename().string().rfind("corrupt-", 0), 0u)
      << e.path().filename();

  raft_disk disk;
  std::string why;
  EXPECT_FALSE(load_raft_dir(dir.path(), disk, why, true));
  EXPECT_NE(why.find(name), std::string::npos) << why;
}

// A snapshot's frame carries a SHA-256 of its bytes: any byte of the
// length, the digest or the bytes changed is refused, the padding is not
// covered, and a frame written before digests is read as before.
TEST(RaftSnapshotFrame, AnyChangedByteIsRefusedAndOldFramesStillRead) {
  std::string bytes(1001, '\0');
  uint64_t x = 7;
  for (auto& c : bytes) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    c = static_cast<char>(x >> 56);
  }
  auto b = frame_snapshot(bytes);
  ASSERT_NE(b.base, nullptr);
  EXPECT_EQ(b.len % 8, 0u);
  std::string_view out;
  std::string err;
  ASSERT_TRUE(unframed_snapshot(b, out, err)) << err;
  EXPECT_EQ(out, bytes);
  auto* p = static_cast<unsigned char*>(b.base);
  const size_t covered = 8 + 32 + bytes.size();
  for (size_t i = 0; i < covered; ++i) {
    for (unsigned char bit : {0x01, 0x80}) {
      p[i] ^= bit;
      EXPECT_FALSE(unframed_snapshot(b, out, err)) << "byte " << i << " bit " << int(bit);
      p[i] ^= bit;
    }
  }
  ASSERT_TRUE(unframed_snapshot(b, out, err)) << err;
  raft_free(b.base);

  // The frame of an entry: an 8-byte little-endian length, the bytes, zero
  // padding (what snapshots were before their digest).
  std::string old(8 + (bytes.size() + 7) / 8 * 8, '\0');
  for (size_t i = 0; i < 8; ++i)
    old[i] = static_cast<char>(uint64_t{bytes.size()} >> (8 * i));
  old.replace(8, bytes.size(), bytes);
  struct raft_buffer ob;
  ob.base = old.data();
  ob.len = old.size();
  ASSERT_TRUE(unframed_snapshot(ob, out, err)) << err;
  EXPECT_EQ(out, bytes);
  ob.len = 4;
  EXPECT_FALSE(unframed_snapshot(ob, out, err));
}

} // namespace
} // namespace nodepool
