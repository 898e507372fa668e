// Group commit: one synced write batch per drain of the supervisor's mailbox,
// not one per command; and nothing is acknowledged before it is stored.
#include "fixture.hpp"

#include "actors/local.hpp"

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>

namespace nodepool::testing {
namespace {

/// A store that counts what the supervisor asks of it.
class counting_store : public forwarding_store {
public:
  counting_store() : forwarding_store(make_memory_store()) {}
  status append(const std::vector<pb::LogEntry>& entries,
                const std::vector<pb::SessionRecord>& archived,
                bool sync) override {
    ++appends;
    synced += sync ? 1 : 0;
    entries_appended += entries.size();
    archived_appended += archived.size();
    return inner_->append(entries, archived, sync);
  }
  using forwarding_store::append;
  status save_snapshot_bytes(uint64_t last_index, std::string bytes) override {
    ++snapshots;
    return inner_->save_snapshot_bytes(last_index, std::move(bytes));
  }
  status archived(const std::string& id,
                  std::optional<pb::SessionRecord>& out) override {
    ++archive_lookups;
    return inner_->archived(id, out);
  }

  size_t appends = 0, synced = 0, entries_appended = 0, snapshots = 0,
         archived_appended = 0, archive_lookups = 0;
};

class group_commit : public actor_test {
protected:
  /// The supervisor's stats (counters and histograms), parsed.
  nlohmann::json supervisor_stats() {
    return nlohmann::json::parse(ask(oracle_.supervisor, stats_atom::value));
  }
};

TEST_F(group_commit, one_synced_batch_per_mailbox_drain) {
  auto st = std::make_shared<counting_store>();
  start(fast_params(), st);
  auto appends_before = st->appends;
  // 40 registrations land in the mailbox before the supervisor runs.
  for (int i = 0; i < 40; ++i)
    caf::anon_send(oracle_.supervisor, cmd_atom::value,
                   registration("g" + std::to_string(i)));
  sched_->run();
  EXPECT_EQ(st->appends - appends_before, 1u);
  EXPECT_EQ(st->synced, st->appends);
  EXPECT_EQ(state().nodes().size(), 40u);
  auto stats = supervisor_stats();
  EXPECT_EQ(stats["applied"].get<uint64_t>(), st->entries_appended);
}

// An oracle asked to stop under a backlog stops before working through it:
// nothing queued is handled, so nothing unacknowledged is stored either.
TEST_F(group_commit, a_stop_goes_ahead_of_the_backlog) {
  auto st = std::make_shared<counting_store>();
  start(fast_params(), st);
  auto entries_before = st->entries_appended;
  auto lookups_before = st->archive_lookups;
  // Each new session id is looked up in the archive as it is handled.
  for (int i = 0; i < 40; ++i)
    caf::anon_send(oracle_.supervisor, cmd_atom::value,
                   submission("q" + std::to_string(i)));
  stop_oracle(oracle_);
  sched_->run();
  EXPECT_EQ(st->archive_lookups, lookups_before) << "the backlog was handled";
  EXPECT_EQ(st->entries_appended, entries_before);
  EXPECT_TRUE(caf::actor_cast<caf::strong_actor_ptr>(oracle_.supervisor)
                ->get()->getf(caf::abstract_actor::is_terminated_flag));
}

// A group commit's events go to every subscriber as one batch, shared and
// not encoded: both subscribers hold the same object, holding the commit's
// events, after the commit and before the answers.
TEST_F(group_commit, every_subscriber_shares_one_batch_of_events) {
  start(fast_params(), std::make_shared<counting_store>());
  auto got = std::make_shared<std::vector<event_batch>>();
  auto subscriber = [got](caf::event_based_actor*) -> caf::behavior {
    return {[got](events_atom, const event_batch& b) { got->push_back(b); }};
  };
  auto a = sys_->spawn(subscriber);
  auto b = sys_->spawn(subscriber);
  caf::anon_send(oracle_.supervisor, subscribe_atom::value, a);
  caf::anon_send(oracle_.supervisor, subscribe_atom::value, b);
  sched_->run();
  got->clear();
  for (int i = 0; i < 3; ++i)
    caf::anon_send(oracle_.supervisor, cmd_atom::value,
                   registration("e" + std::to_string(i)));
  sched_->run();
  ASSERT_EQ(got->size(), 2u);
  ASSERT_TRUE(got->at(0));
  EXPECT_EQ(got->at(0).get(), got->at(1).get());
  int registered = 0;
  for (auto& e : got->at(0)->events())
    if (e.has_node_state_changed() && e.node_state_changed().to() == pb::REGISTERED)
      ++registered;
  EXPECT_EQ(registered, 3);
  caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(b, caf::exit_reason::user_shutdown);
  sched_->run();
}

// A command built in this process goes in as it is (local.hpp): applied
// and logged; one with no kind, or none at all, is refused as malformed and
// changes nothing.
TEST_F(group_commit, a_command_built_in_this_process_is_applied_as_it_is) {
  auto st = std::make_shared<counting_store>();
  start(fast_params(), st);
  auto entries_before = st->entries_appended;
  auto codes = std::make_shared<std::vector<std::string>>();
  auto sup = oracle_.supervisor;
  auto sys = sys_.get();
  auto reg = make_command([](pb::Command& c) {
    c.mutable_register_()->set_node_id("typed-1");
    c.mutable_register_()->add_models("llama-3-8b");
  });
  sys_->spawn([=](caf::event_based_actor* self) {
    for (auto& c : {reg, local_command{}, std::make_shared<pb::Command>()})
      self->request(sup, caf::infinite, cmd_atom::value, c)
        .then([=](accepted_atom) { codes->push_back("accepted"); },
              [=](caf::error& e) { codes->push_back(read_refusal(*sys, e).first); });
  });
  sched_->run();
  // The refusals changed nothing and wait for nothing: they come first.
  EXPECT_EQ(*codes, (std::vector<std::string>{"malformed", "malformed", "accepted"}));
  EXPECT_EQ(st->entries_appended - entries_before, 1u);
  EXPECT_TRUE(state().node("typed-1"));
}

// A backlog is committed in parts of max_batch_commands: 40 commands in
// one drain, at most 16 per commit, make three synced writes (16, 16, 8),
// every command in one of them and answered after it.
TEST_F(group_commit, a_long_drain_is_committed_in_bounded_parts) {
  max_batch_commands_ = 16;
  auto st = std::make_shared<counting_store>();
  start(fast_params(), st);
  auto appends_before = st->appends;
  auto entries_before = st->entries_appended;
  caf::scoped_actor self{*sys_};
  for (int i = 0; i < 40; ++i)
    self->send(oracle_.supervisor, cmd_atom::value,
               registration("b" + std::to_string(i)));
  sched_->run();
  EXPECT_EQ(st->appends - appends_before, 3u);
  EXPECT_EQ(st->synced, st->appends);
  EXPECT_EQ(st->entries_appended - entries_before, 40u);
  EXPECT_EQ(state().nodes().size(), 40u);
  size_t answered = 0;
  while (self->mailbox().size() > 0)
    self->receive([&](accepted_atom) { ++answered; },
                  [&](caf::error&) {});
  EXPECT_EQ(answered, 40u);
  auto stats = supervisor_stats();
  EXPECT_EQ(stats["batches"].get<uint64_t>(), st->appends);
}

// Load shedding: with more than max_backlog messages behind it, a new
// session is refused as overloaded, at once and with nothing stored; the
// rest of the backlog (and anything that is not a new session) goes on.
TEST_F(group_commit, new_sessions_are_shed_while_the_backlog_is_long) {
  max_backlog_ = 8;
  auto st = std::make_shared<counting_store>();
  start(fast_params(), st);
  auto sup = oracle_.supervisor;
  auto sys = sys_.get();
  auto codes = std::make_shared<std::map<std::string, int>>();
  auto entries_before = st->entries_appended;
  sys_->spawn([=](caf::event_based_actor* self) {
    // 10 registrations, then 20 submissions, all in the mailbox at once.
    for (int i = 0; i < 30; ++i)
      self->request(sup, caf::infinite, cmd_atom::value,
                    i < 10 ? registration("r" + std::to_string(i))
                           : submission("s" + std::to_string(i)))
        .then([=](accepted_atom) { ++(*codes)["accepted"]; },
              [=](caf::error& e) { ++(*codes)[read_refusal(*sys, e).first]; });
  });
  sched_->run();
  // Every registration went in, though 20-29 messages waited behind them.
  EXPECT_EQ(state().nodes().size(), 10u);
  // Submission k (0-19) has 19 - k requests behind it, and the flush the
  // first registration scheduled: shed while those 20 - k are more than 8,
  // i.e. the first 12; the last 8 are accepted.
  EXPECT_EQ((*codes)["overloaded"], 12);
  EXPECT_EQ((*codes)["accepted"], 18);
  EXPECT_EQ(st->entries_appended - entries_before, 18u);
  EXPECT_EQ(state().sessions().size(), 8u);
  auto stats = supervisor_stats();
  EXPECT_EQ(stats["refusals"]["overloaded"].get<int>(), 12);
}

TEST_F(group_commit, snapshots_are_taken_every_n_entries_and_restore) {
  auto p = fast_params();
  p.snapshot_every = 4;
  auto st = std::make_shared<counting_store>();
  start(p, st);
  for (int i = 0; i < 4; ++i)
    add_node("s" + std::to_string(i), behaviour::healthy, i + 1);
  run_for(std::chrono::milliseconds(500));
  EXPECT_GT(st->snapshots, 0u);
  // Each snapshot's stop of the supervisor (its copy of the live records)
  // is in its histogram: at least one per snapshot written (a writer that
  // is behind skips to the newest).
  auto stats = supervisor_stats();
  uint64_t copies = 0;
  for (auto n : stats["histograms"]["snapshot_copy_ms"]["counts"])
    copies += n.get<uint64_t>();
  EXPECT_GE(copies, st->snapshots) << stats.dump();
  EXPECT_GT(copies, 0u);
  std::optional<pb::Snapshot> snap;
  ASSERT_TRUE(st->load_snapshot(snap).ok());
  ASSERT_TRUE(snap.has_value());
  EXPECT_LE(snap->last_index(), st->last_index());
  EXPECT_EQ(snap->nodes_size(), 4);
  // Snapshot + the entries after it give exactly the supervisor's state.
  pool_state restored;
  recovered info;
  ASSERT_TRUE(nodepool::recover(*st, restored, info).ok());
  EXPECT_EQ(info.replayed, st->last_index() - snap->last_index());
  auto live = state().snapshot();
  auto again = restored.snapshot();
  EXPECT_EQ(again.SerializeAsString(), live.SerializeAsString());
}

/// A store whose snapshot writes wait until the test opens a gate, as a
/// slow disk or a busy core would make them.
class gated_store : public counting_store {
public:
  status save_snapshot_bytes(uint64_t last_index, std::string bytes) override {
    saving = true;
    {
      std::unique_lock<std::mutex> l{m};
      cv.wait(l, [&] { return open; });
    }
    last_saved = last_index;
    auto s = counting_store::save_snapshot_bytes(last_index, std::move(bytes));
    saved.fetch_add(1);
    return s;
  }
  void open_gate() {
    {
      std::lock_guard<std::mutex> l{m};
      open = true;
    }
    cv.notify_all();
  }
  /// Waits (at most 30 s of wall time) until `n` snapshots are saved, or
  /// one is being saved.
  bool wait_saved(uint64_t n) {
    return spin([&] { return saved.load() >= n; });
  }
  bool wait_saving() {
    return spin([&] { return saving.load(); });
  }

  std::atomic<bool> saving{false};
  std::atomic<uint64_t> saved{0};
  std::atomic<uint64_t> last_saved{0};

private:
  template <class F>
  static bool spin(F done) {
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!done() && std::chrono::steady_clock::now() < until)
      std::this_thread::yield();
    return done();
  }
  std::mutex m;
  std::condition_variable cv;
  bool open = false;
};

// While the writer's thread is still on a snapshot, the next one due is
// put off, not taken (taking it would copy every live record whole on the
// supervisor's thread); once the writer is done, it is taken at the next
// tick, of everything durable by then.
TEST_F(group_commit, a_snapshot_due_while_the_writer_is_busy_waits_for_it) {
  async_snapshots_ = true;
  auto p = fast_params();
  p.snapshot_every = 4;
  auto st = std::make_shared<gated_store>();
  start(p, st);
  // Ten registrations in one drain: ten entries, ten live records, a
  // snapshot due; its writing stops at the gate.
  for (int i = 0; i < 10; ++i)
    caf::anon_send(oracle_.supervisor, cmd_atom::value,
                   registration("d" + std::to_string(i)));
  sched_->run();
  ASSERT_TRUE(st->wait_saving());
  // Ten more entries, no more records: the next snapshot is due, and waits.
  for (int i = 0; i < 10; ++i) {
    pb::Command c;
    c.mutable_node_down()->set_node_id("d" + std::to_string(i));
    c.mutable_node_down()->set_reason("test");
    caf::anon_send(oracle_.supervisor, cmd_atom::value,
                   std::make_shared<pb::Command>(c));
  }
  sched_->run();
  auto durable = st->last_index();
  EXPECT_GE(durable, 20u);
  auto stats = supervisor_stats();
  EXPECT_EQ(stats["snapshots_deferred"].get<uint64_t>(), 1u) << stats.dump();
  uint64_t copies = 0;
  for (auto n : stats["histograms"]["snapshot_copy_ms"]["counts"])
    copies += n.get<uint64_t>();
  EXPECT_EQ(copies, 1u);  // only the first froze the pool
  st->open_gate();
  ASSERT_TRUE(st->wait_saved(1));
  EXPECT_LT(st->last_saved.load(), durable);
  // No command comes; the tick takes the snapshot put off.
  run_for(std::chrono::milliseconds(p.tick_interval_ms * 2));
  ASSERT_TRUE(st->wait_saved(2));
  EXPECT_EQ(st->last_saved.load(), durable);
  pool_state restored;
  recovered info;
  ASSERT_TRUE(nodepool::recover(*st, restored, info).ok());
  EXPECT_EQ(info.replayed, 0u);
  EXPECT_EQ(restored.snapshot().SerializeAsString(),
            state().snapshot().SerializeAsString());
}

TEST_F(group_commit, records_copied_ahead_between_snapshots_restore_the_same_state) {
  // The copy kept however small the pool, and every change copied ahead
  // after each group commit: the snapshots' stops then copy what changed
  // since the last commit only, and snapshot + log still give the state.
  kept_copy_from_ = 0;
  copy_ahead_leave_ = 0;
  auto p = fast_params();
  p.snapshot_every = 8;
  auto st = std::make_shared<counting_store>();
  start(p, st);
  for (int i = 0; i < 4; ++i)
    add_node("c" + std::to_string(i), behaviour::healthy, i + 1);
  run_for(std::chrono::milliseconds(300));
  for (int i = 0; i < 12; ++i) {
    EXPECT_EQ(submit(session_req("cs" + std::to_string(i))), "accepted");
    run_for(std::chrono::milliseconds(200));
  }
  EXPECT_GT(st->snapshots, 1u);
  auto stats = supervisor_stats();
  EXPECT_GT(stats["records_copied_ahead"].get<uint64_t>(), 0u) << stats.dump();
  pool_state restored;
  recovered info;
  ASSERT_TRUE(nodepool::recover(*st, restored, info).ok());
  EXPECT_EQ(restored.snapshot().SerializeAsString(),
            state().snapshot().SerializeAsString());
}

TEST_F(group_commit, a_refusal_waits_for_the_batch_it_depends_on) {
  // Two submissions of one id in one drain: the second is refused as a
  // duplicate, which reveals the first; that answer must not leave before
  // the first is on disk.
  auto st = std::make_shared<counting_store>();
  start(fast_params(), st);
  auto order = std::make_shared<std::vector<std::string>>();
  auto sup = oracle_.supervisor;
  auto sys = sys_.get();
  auto twice = [] {
    return make_command(
      [](pb::Command& c) { c.mutable_submit_session()->set_session_id("twice"); });
  };
  sys_->spawn([=](caf::event_based_actor* self) {
    for (int i = 0; i < 2; ++i)
      self->request(sup, caf::infinite, cmd_atom::value, twice())
        .then(
          [=](accepted_atom) {
            order->push_back("accepted@" + std::to_string(st->appends));
          },
          [=](caf::error& e) {
            order->push_back(read_refusal(*sys, e).first + "@"
                             + std::to_string(st->appends));
          });
  });
  auto appends_before = st->appends;
  sched_->run();
  ASSERT_EQ(order->size(), 2u);
  auto stored = "@" + std::to_string(appends_before + 1);
  EXPECT_EQ((*order)[0], "accepted" + stored);
  EXPECT_EQ((*order)[1], "duplicate_session" + stored);
}

TEST_F(group_commit, an_ended_session_goes_to_the_archive_with_its_entry) {
  auto p = fast_params();
  p.session_id_retention_ms = 1000;
  auto st = std::make_shared<counting_store>();
  start(p, st);
  add_node("h", behaviour::healthy, 1);
  run_for(std::chrono::milliseconds(300));
  ASSERT_EQ(submit(session_req("once", 1)), "accepted");
  run_for(std::chrono::seconds(2));
  EXPECT_EQ(session_state("once"), pb::COMPLETED);
  EXPECT_EQ(state().session("once"), nullptr);
  EXPECT_EQ(st->archived_appended, 1u);
  // Within the window the pool itself refuses the id.
  EXPECT_TRUE(state().recently_ended("once"));
  auto lookups = st->archive_lookups;
  EXPECT_EQ(submit(session_req("once", 1)), "error:duplicate_session");
  EXPECT_EQ(st->archive_lookups, lookups) << "the window answered: no read";
  // Past it (moved by the next logged command), the supervisor finds the
  // id in the archive.
  run_for(std::chrono::seconds(3));
  ASSERT_EQ(submit(session_req("other", 1)), "accepted");
  ASSERT_FALSE(state().recently_ended("once"));
  EXPECT_EQ(submit(session_req("once", 1)), "error:duplicate_session");
  EXPECT_GT(st->archive_lookups, lookups);
  auto stats = supervisor_stats();
  EXPECT_EQ(stats["refusals"]["duplicate_session"].get<uint64_t>(), 2u);
  // A new id is still accepted.
  EXPECT_EQ(submit(session_req("twice", 1)), "accepted");
}

TEST_F(group_commit, an_id_that_ended_in_this_drain_is_refused_after_the_clock_jumped) {
  // The window keeps an ended id for session_id_retention_ms, and its
  // record reaches the archive with the drain's group commit. Here the
  // clock jumps past the window within one drain: the session ends, a
  // later command moves the window past it, and the id comes again.
  auto p = fast_params();
  p.session_id_retention_ms = 1000;
  clock_skew_ = std::make_shared<int64_t>(0);
  observer_ = [skew = clock_skew_](const pool_state&, const pb::Command& c,
                                   const apply_result&) {
    if (c.has_end_session())
      *skew += 5000;
  };
  auto st = std::make_shared<counting_store>();
  start(p, st);
  ASSERT_EQ(submit(session_req("jump", 1)), "accepted");  // queued: no nodes
  auto cmd = [](auto fill) { return make_command(fill); };
  std::vector<local_command> drain{
    cmd([](pb::Command& c) { c.mutable_end_session()->set_session_id("jump"); }),
    cmd([](pb::Command& c) { c.mutable_submit_session()->set_session_id("other"); }),
    cmd([](pb::Command& c) { c.mutable_submit_session()->set_session_id("jump"); })};
  auto answers = std::make_shared<std::vector<std::string>>();
  auto sup = oracle_.supervisor;
  auto sys = sys_.get();
  auto appends_before = st->appends;
  sys_->spawn([=](caf::event_based_actor* self) {
    for (auto& c : drain)
      self->request(sup, caf::infinite, cmd_atom::value, c)
        .then([=](accepted_atom) { answers->push_back("accepted"); },
              [=](caf::error& e) {
                answers->push_back(read_refusal(*sys, e).first);
              });
  });
  sched_->run();
  EXPECT_EQ(st->appends - appends_before, 1u) << "not one drain";
  EXPECT_FALSE(state().recently_ended("jump")) << "the window still held it";
  EXPECT_EQ(*answers, (std::vector<std::string>{"accepted", "accepted",
                                                "duplicate_session"}));
  EXPECT_EQ(session_state("jump"), pb::COMPLETED);
}

// A query by id in the drain that ended the session, before its group
// commit wrote the record: the record is found where it waits.
TEST_F(group_commit, a_session_ended_in_this_drain_is_found_by_id) {
  auto st = std::make_shared<counting_store>();
  start(fast_params(), st);
  ASSERT_EQ(submit(session_req("q1", 1)), "accepted");  // queued: no nodes
  pb::Command end;
  end.mutable_end_session()->set_session_id("q1");
  pb::ArchiveQuery q;
  q.set_id("q1");
  auto found = std::make_shared<pb::ArchiveAnswer>();
  auto sup = oracle_.supervisor;
  auto appends_before = st->appends;
  sys_->spawn([=](caf::event_based_actor* self) {
    self->request(sup, caf::infinite, cmd_atom::value,
                  std::make_shared<pb::Command>(end))
      .then([](accepted_atom) {}, [](caf::error&) {});
    self->request(sup, caf::infinite, archive_atom::value, q.SerializeAsString())
      .then([=](const std::string& bytes) { found->ParseFromString(bytes); });
  });
  sched_->run();
  EXPECT_EQ(st->appends - appends_before, 1u) << "not one drain";
  EXPECT_TRUE(found->error().empty()) << found->error();
  ASSERT_EQ(found->sessions_size(), 1);
  EXPECT_EQ(found->sessions(0).id(), "q1");
  EXPECT_EQ(found->sessions(0).state(), pb::COMPLETED);
}

} // namespace
} // namespace nodepool::testing
