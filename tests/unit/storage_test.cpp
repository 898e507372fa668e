#include <atomic>
// Tests of the stores (src/storage.*) and of recovery / history checking
// (src/recovery.*). The shared tests run against both the in-memory twin and
// RocksDB; corruption and reopening are RocksDB-only.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/util/message_differencer.h>
#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>

#include "archive.hpp"
#include "pool_state.hpp"
#include "random.hpp"
#include "bytes_of.hpp"
#include "recovery.hpp"
#include "storage.hpp"
#include "support/temp_dir.hpp"

using namespace nodepool;
using google::protobuf::util::MessageDifferencer;

namespace {

using nodepool::testing::bytes_of;

using nodepool::testing::temp_dir;

// -- a recorded history ---------------------------------------------------------

pb::LogEntry entry(uint64_t index, int64_t now, const pb::Command& c) {
  pb::LogEntry e;
  e.set_index(index);
  e.set_now(now);
  *e.mutable_command() = c;
  return e;
}

pb::Command tick_cmd() {
  pb::Command c;
  c.mutable_tick();
  return c;
}

struct history {
  std::vector<pb::LogEntry> entries;  // indexes 1..n, as a supervisor logs
  std::vector<pb::Snapshot> after;    // after[i]: state after entry i+1
  uint64_t accepted = 0;              // sessions accepted
  /// archived[i]: the sessions entry i+1 ended (written with it).
  std::vector<std::vector<pb::SessionRecord>> archived;
  std::vector<std::string> archived_ids() const {
    std::vector<std::string> ids;
    for (auto& a : archived)
      for (auto& r : a)
        ids.push_back(r.id());
    return ids;
  }
};

params history_params() {
  params p;
  p.test_deadline_ms = 2000;
  p.heartbeat_timeout_ms = 6000;
  p.ephemeral_window_ms = 20000;
  p.reserve_period_ms = 9000;
  p.idle_threshold_ms = 7000;
  p.queue_timeout_ms = 15000;
  p.quarantine_backoff_ms = 1000;
  p.quarantine_backoff_max_ms = 6000;
  p.max_strikes = 4;
  p.tasks_before_release = 3;
  p.selection = "random";
  p.seed = 99;
  return p;
}

/// Drives a pool with pseudo-random commands and records, like the pool
/// supervisor, every command that changed something. The log opens with the
/// Configure entry carrying the parameters.
history make_history(uint64_t seed, int steps) {
  history h;
  pool_state pool;
  seeded_rng r{seed};
  auto below = [&](uint64_t n) { return r.below(n); };
  int64_t now = 1000;
  int sessions = 0;
  auto record = [&](const pb::Command& c) {
    auto r = pool.apply(c, now);
    EXPECT_TRUE(pool.check_invariants().empty());
    EXPECT_TRUE(pool.check_after(c, r).empty());
    if (!r.changed)
      return;
    if (c.has_submit_session())
      ++h.accepted;
    h.entries.push_back(entry(h.entries.size() + 1, now, c));
    h.archived.push_back(r.archived);
    auto snap = pool.snapshot();
    snap.set_last_index(h.entries.size());
    h.after.push_back(snap);
  };
  pb::Command cfg;
  cfg.mutable_configure()->set_params_json(to_json(history_params()));
  record(cfg);
  for (int i = 0; i < steps; ++i) {
    now += static_cast<int64_t>(below(1500));
    auto id = "n" + std::to_string(below(6));
    pb::Command c;
    auto k = below(100);
    if (k < 12) {
      auto* r = c.mutable_register_();
      r->set_node_id(id);
      r->set_public_key("key-" + id);
      r->add_models("m");
    } else if (k < 35) {
      c.mutable_heartbeat()->set_node_id(id);
    } else if (k < 60) {
      auto* n = pool.node(id);
      auto* r = c.mutable_test_result();
      r->set_node_id(id);
      r->set_test_id(n ? n->test_id() : 0);
      r->set_total(5);
      r->set_correct(below(4) ? 5 : 1);
    } else if (k < 68) {
      auto* x = c.mutable_submit_session();
      x->set_session_id("s" + std::to_string(sessions++));
      x->set_model("m");
      x->set_min_nodes(1);
      x->set_max_nodes(1 + below(2));
      x->set_max_tasks(1 + below(4));
    } else if (k < 82) {
      std::string sid;
      for (auto& [sid_, rec] : pool.sessions())  // the greatest active id
        if (rec.state() == pb::ACTIVE && sid_ > sid)
          sid = sid_;
      auto* sr = pool.session(sid);
      if (!sr)
        continue;
      auto* t = c.mutable_task_done();
      t->set_session_id(sid);
      t->set_task_no(sr->tasks_done());
      for (auto& nid : sr->nodes()) {
        auto* o = t->add_outcomes();
        o->set_node_id(nid);
        o->set_outcome(below(10) ? pb::OK : pb::TIMEOUT);
      }
    } else if (k < 85) {
      c.mutable_node_down()->set_node_id(id);
    } else if (k < 88) {
      c.mutable_end_session()->set_session_id("s" + std::to_string(below(
                                                       sessions + 1)));
    } else {
      c = tick_cmd();
    }
    record(c);
  }
  return h;
}

/// Appends a history in batches, each with the sessions its entries ended,
/// as the supervisor writes them.
status append_all(store& st, const history& h, size_t batch = 16) {
  auto& xs = h.entries;
  for (size_t i = 0; i < xs.size(); i += batch) {
    auto end = std::min(xs.size(), i + batch);
    std::vector<pb::LogEntry> b(xs.begin() + i, xs.begin() + end);
    std::vector<pb::SessionRecord> a;
    for (auto j = i; j < end; ++j)
      a.insert(a.end(), h.archived[j].begin(), h.archived[j].end());
    if (auto s = st.append(b, a, i % 2 == 0); !s.ok())
      return s;
  }
  return {};
}

std::vector<pb::LogEntry> scan_all(store& st, uint64_t from, status* out = nullptr) {
  std::vector<pb::LogEntry> xs;
  auto s = st.scan(from, [&](const pb::LogEntry& e) { xs.push_back(e); });
  if (out)
    *out = s;
  else
    EXPECT_TRUE(s.ok()) << s.error;
  return xs;
}

// -- the two kinds of store -----------------------------------------------------

struct memory_kind {
  static constexpr const char* name = "memory";
  std::unique_ptr<store> open() { return make_memory_store(); }
};

struct rocksdb_kind {
  static constexpr const char* name = "rocksdb";
  temp_dir dir;
  std::unique_ptr<store> open() {
    status st;
    auto s = open_rocksdb_store(dir.path(), st);
    EXPECT_TRUE(st.ok()) << st.error;
    EXPECT_NE(s, nullptr);
    return s;
  }
};

template <class Kind>
class StoreTest : public ::testing::Test {
protected:
  Kind kind;                           // destroyed last (removes the dir)
  std::unique_ptr<store> st = kind.open();
};

using kinds = ::testing::Types<memory_kind, rocksdb_kind>;
class kind_names {
public:
  template <class T>
  static std::string GetName(int) {
    return T::name;
  }
};
TYPED_TEST_SUITE(StoreTest, kinds, kind_names);

std::vector<pb::LogEntry> ticks(uint64_t from, uint64_t to) {
  std::vector<pb::LogEntry> xs;
  for (auto i = from; i <= to; ++i)
    xs.push_back(entry(i, static_cast<int64_t>(i * 10), tick_cmd()));
  return xs;
}

TYPED_TEST(StoreTest, EmptyStore) {
  EXPECT_EQ(this->st->last_index(), 0u);
  std::optional<pb::Snapshot> snap;
  auto s = this->st->load_snapshot(snap);
  EXPECT_TRUE(s.ok()) << s.error;
  EXPECT_FALSE(snap.has_value());
  EXPECT_TRUE(scan_all(*this->st, 1).empty());
  EXPECT_TRUE(this->st->append({}, true).ok());
  EXPECT_EQ(this->st->last_index(), 0u);
}

TYPED_TEST(StoreTest, AppendThenScanInOrder) {
  auto xs = ticks(1, 7);
  ASSERT_TRUE(this->st->append({xs.begin(), xs.begin() + 3}, true).ok());
  EXPECT_EQ(this->st->last_index(), 3u);
  ASSERT_TRUE(this->st->append({xs.begin() + 3, xs.end()}, false).ok());
  EXPECT_EQ(this->st->last_index(), 7u);
  auto all = scan_all(*this->st, 1);
  ASSERT_EQ(all.size(), 7u);
  for (size_t i = 0; i < all.size(); ++i)
    EXPECT_TRUE(MessageDifferencer::Equals(all[i], xs[i])) << i;
  auto tail = scan_all(*this->st, 5);
  ASSERT_EQ(tail.size(), 3u);
  EXPECT_EQ(tail.front().index(), 5u);
  EXPECT_EQ(tail.back().index(), 7u);
  EXPECT_TRUE(scan_all(*this->st, 8).empty());
  EXPECT_EQ(scan_all(*this->st, 0).size(), 7u);
}

TYPED_TEST(StoreTest, ManyEntriesKeepNumericOrder) {
  // Indexes past 255 and 65535 must still sort numerically.
  std::vector<pb::LogEntry> xs;
  for (uint64_t i = 1; i <= 70000; ++i)
    xs.push_back(entry(i, 1, tick_cmd()));
  ASSERT_TRUE(this->st->append(xs, false).ok());
  uint64_t expect = 1;
  bool ordered = true;
  auto s = this->st->scan(1, [&](const pb::LogEntry& e) {
    ordered = ordered && e.index() == expect++;
  });
  EXPECT_TRUE(s.ok()) << s.error;
  EXPECT_TRUE(ordered);
  EXPECT_EQ(expect, 70001u);
}

TYPED_TEST(StoreTest, RefusesGapsAndKeepsBatchesAtomic) {
  ASSERT_TRUE(this->st->append(ticks(1, 2), true).ok());
  auto s = this->st->append(ticks(4, 4), true);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.error.find("gap"), std::string::npos) << s.error;
  s = this->st->append(ticks(2, 2), true);  // already there
  EXPECT_FALSE(s.ok());
  // A batch with a hole in the middle is refused as a whole.
  auto bad = ticks(3, 3);
  auto five = ticks(5, 5);
  bad.push_back(five[0]);
  s = this->st->append(bad, true);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(this->st->last_index(), 2u);
  EXPECT_EQ(scan_all(*this->st, 1).size(), 2u);
  // And the log continues where it was.
  EXPECT_TRUE(this->st->append(ticks(3, 5), true).ok());
  EXPECT_EQ(this->st->last_index(), 5u);
}

TYPED_TEST(StoreTest, SnapshotSaveAndLoad) {
  auto h = make_history(5, 200);
  auto snap = h.after[h.after.size() / 2];
  ASSERT_TRUE(this->st->save_snapshot(snap).ok());
  std::optional<pb::Snapshot> got;
  ASSERT_TRUE(this->st->load_snapshot(got).ok());
  ASSERT_TRUE(got.has_value());
  EXPECT_TRUE(MessageDifferencer::Equals(*got, snap));
  // A newer snapshot replaces the old one.
  ASSERT_TRUE(this->st->save_snapshot(h.after.back()).ok());
  ASSERT_TRUE(this->st->load_snapshot(got).ok());
  EXPECT_TRUE(MessageDifferencer::Equals(*got, h.after.back()));
}

TYPED_TEST(StoreTest, RecoverIsSnapshotPlusReplay) {
  auto h = make_history(11, 500);
  ASSERT_GT(h.entries.size(), 100u);
  ASSERT_GT(h.accepted, 3u);
  ASSERT_TRUE(append_all(*this->st, h).ok());
  auto expected = bytes_of(h.after.back());
  auto direct = h.after.back();
  direct.clear_last_index();
  // Without a snapshot: the whole log is replayed.
  {
    pool_state pool;
    recovered info;
    auto s = recover(*this->st, pool, info);
    ASSERT_TRUE(s.ok()) << s.error;
    EXPECT_EQ(info.replayed, h.entries.size());
    EXPECT_EQ(info.last_index, h.entries.size());
    EXPECT_EQ(info.last_now, h.entries.back().now());
    EXPECT_EQ(bytes_of(pool.snapshot()), bytes_of(direct));
    EXPECT_TRUE(pool.check_invariants().empty());
  }
  // With a snapshot in the middle: snapshot + the entries after it.
  auto mid = h.entries.size() / 2;
  ASSERT_TRUE(this->st->save_snapshot(h.after[mid - 1]).ok());
  {
    pool_state pool;
    recovered info;
    auto s = recover(*this->st, pool, info);
    ASSERT_TRUE(s.ok()) << s.error;
    EXPECT_EQ(info.replayed, h.entries.size() - mid);
    EXPECT_EQ(info.last_index, h.entries.size());
    EXPECT_EQ(bytes_of(pool.snapshot()), bytes_of(direct));
  }
  // With a snapshot of everything: nothing to replay.
  ASSERT_TRUE(this->st->save_snapshot(h.after.back()).ok());
  {
    pool_state pool;
    recovered info;
    ASSERT_TRUE(recover(*this->st, pool, info).ok());
    EXPECT_EQ(info.replayed, 0u);
    EXPECT_EQ(info.last_index, h.entries.size());
    EXPECT_EQ(info.last_now, h.after.back().last_now());
    auto mine = pool.snapshot();
    mine.set_last_index(h.entries.size());
    EXPECT_EQ(bytes_of(mine), expected);
  }
}

TYPED_TEST(StoreTest, RecoveredPoolBehavesLikeTheOriginal) {
  auto h = make_history(12, 300);
  auto cut = h.entries.size() * 2 / 3;
  ASSERT_TRUE(
    this->st->append({h.entries.begin(), h.entries.begin() + cut}, true).ok());
  ASSERT_TRUE(this->st->save_snapshot(h.after[cut / 2]).ok());
  pool_state pool;
  recovered info;
  ASSERT_TRUE(recover(*this->st, pool, info).ok());
  // The rest of the history applied to the recovered pool gives the same
  // states as it did originally.
  for (auto i = cut; i < h.entries.size(); ++i) {
    auto r = pool.apply(h.entries[i].command(), h.entries[i].now());
    EXPECT_TRUE(r.changed) << "entry " << i + 1;
    auto mine = pool.snapshot();
    mine.set_last_index(i + 1);
    ASSERT_EQ(bytes_of(mine), bytes_of(h.after[i])) << "entry " << i + 1;
  }
}

TYPED_TEST(StoreTest, CheckHistoryPassesAGoodHistory) {
  auto h = make_history(13, 400);
  ASSERT_TRUE(append_all(*this->st, h).ok());
  auto rep = check_history(*this->st);
  EXPECT_TRUE(rep.load_error.empty()) << rep.load_error;
  EXPECT_TRUE(rep.violations.empty())
    << rep.violations.front().second.invariant << " "
    << rep.violations.front().second.detail;
  EXPECT_EQ(rep.entries, h.entries.size());
  EXPECT_EQ(rep.sessions_accepted, h.accepted);
  // Also with an honest snapshot.
  ASSERT_TRUE(this->st->save_snapshot(h.after[h.after.size() / 3]).ok());
  rep = check_history(*this->st);
  EXPECT_TRUE(rep.violations.empty());
  EXPECT_TRUE(rep.load_error.empty());
}

TYPED_TEST(StoreTest, CheckHistoryWithAStrideReadsEveryEntry) {
  auto h = make_history(15, 300);
  ASSERT_TRUE(append_all(*this->st, h).ok());
  for (uint64_t stride : {0u, 1u, 7u, 1000u}) {
    auto rep = check_history(*this->st, stride);
    EXPECT_EQ(rep.entries, h.entries.size()) << stride;
    EXPECT_TRUE(rep.violations.empty()) << stride;
    EXPECT_EQ(rep.sessions_accepted, h.accepted) << stride;
  }
}

TYPED_TEST(StoreTest, CheckHistoryStopsWhenAskedAndConcludesNothing) {
  auto h = make_history(16, 300);
  ASSERT_TRUE(append_all(*this->st, h).ok());
  // A snapshot that lost a session: a finished check reports it, a stopped
  // one must not judge it.
  auto snap = h.after.back();
  ASSERT_GT(snap.sessions_size(), 0);
  snap.mutable_sessions()->RemoveLast();
  ASSERT_TRUE(this->st->save_snapshot(snap).ok());
  std::atomic<bool> stop{true};
  auto rep = check_history(*this->st, 1, &stop);
  EXPECT_TRUE(rep.stopped);
  EXPECT_EQ(rep.entries, 0u);
  EXPECT_TRUE(rep.violations.empty());
  EXPECT_TRUE(rep.load_error.empty()) << rep.load_error;
  stop = false;
  rep = check_history(*this->st, 1, &stop);
  EXPECT_FALSE(rep.stopped);
  EXPECT_EQ(rep.entries, h.entries.size());
  EXPECT_FALSE(rep.violations.empty());
}

TYPED_TEST(StoreTest, CheckHistoryReportsASnapshotThatDisagreesWithTheLog) {
  auto h = make_history(14, 400);
  ASSERT_TRUE(append_all(*this->st, h).ok());
  // The snapshot lost a session the log accepted before its index.
  auto snap = h.after.back();
  ASSERT_GT(snap.sessions_size(), 0);
  snap.mutable_sessions()->RemoveLast();
  ASSERT_TRUE(this->st->save_snapshot(snap).ok());
  auto rep = check_history(*this->st);
  EXPECT_TRUE(rep.load_error.empty()) << rep.load_error;
  ASSERT_FALSE(rep.violations.empty());
  EXPECT_EQ(rep.violations.front().second.invariant, "I4");
  EXPECT_EQ(rep.violations.front().first, snap.last_index());
  // A node in another state than the log says.
  snap = h.after[h.after.size() / 2];
  ASSERT_GT(snap.nodes_size(), 0);
  snap.mutable_nodes(0)->set_strikes(snap.nodes(0).strikes() + 1);
  ASSERT_TRUE(this->st->save_snapshot(snap).ok());
  rep = check_history(*this->st);
  EXPECT_FALSE(rep.violations.empty());
}

TYPED_TEST(StoreTest, CheckHistoryReportsASnapshotAheadOfTheLog) {
  // The snapshot claims entries the log does not have: the log that was
  // checked is not the history the snapshot came from.
  auto h = make_history(15, 300);
  auto cut = h.entries.size() / 2;
  ASSERT_TRUE(
    this->st->append({h.entries.begin(), h.entries.begin() + cut}, true).ok());
  ASSERT_TRUE(this->st->save_snapshot(h.after.back()).ok());
  auto rep = check_history(*this->st);
  EXPECT_FALSE(rep.violations.empty());
  // Recovery refuses it, saying why (taken, the next group commit would
  // fail at a gap after the snapshot, at every restart).
  pool_state pool;
  recovered info;
  auto s = recover(*this->st, pool, info);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error.find("past the log's last entry " + std::to_string(cut)),
            std::string::npos)
    << s.error;
}

pb::SessionRecord ended_session(const std::string& id, int64_t at,
                                pb::SessionState st = pb::COMPLETED) {
  pb::SessionRecord r;
  r.set_id(id);
  r.set_state(st);
  r.set_ended_at(at);
  if (st == pb::FAILED)
    r.set_reason("why");
  return r;
}

TYPED_TEST(StoreTest, MetadataIsPutScannedByPrefixAndErased) {
  auto& st = *this->st;
  ASSERT_TRUE(st.put_meta("archive/gap/02", "b", true).ok());
  ASSERT_TRUE(st.put_meta("archive/gap/01", "a", false).ok());
  ASSERT_TRUE(st.put_meta("archive/position", "p", false).ok());
  ASSERT_TRUE(st.put_meta("other", "o", false).ok());
  // Next to the archive and the log, not in them.
  ASSERT_TRUE(st.append(ticks(1, 2), {ended_session("s", 5)}, true).ok());
  std::vector<std::pair<std::string, std::string>> seen;
  auto collect = [&](const std::string& k, const std::string& v) {
    seen.emplace_back(k, v);
    return true;
  };
  ASSERT_TRUE(st.scan_meta("archive/gap/", collect).ok());
  EXPECT_EQ(seen, (std::vector<std::pair<std::string, std::string>>{
                    {"archive/gap/01", "a"}, {"archive/gap/02", "b"}}));
  ASSERT_TRUE(st.erase_meta("archive/gap/01", true).ok());
  ASSERT_TRUE(st.put_meta("archive/gap/02", "c", true).ok());
  seen.clear();
  ASSERT_TRUE(st.scan_meta("archive/", collect).ok());
  EXPECT_EQ(seen, (std::vector<std::pair<std::string, std::string>>{
                    {"archive/gap/02", "c"}, {"archive/position", "p"}}));
  EXPECT_EQ(st.last_index(), 2u);
  int n = 0;
  st.scan_archive(0, [&](const pb::SessionRecord&) { return ++n, true; });
  EXPECT_EQ(n, 1);
}

// A cluster member's archived sessions and its position past them go in
// one write: both are there afterwards, next to the log and not in it.
TYPED_TEST(StoreTest, ArchivedRecordsAndAMetadataKeyGoInOneWrite) {
  auto& st = *this->st;
  ASSERT_TRUE(st.append(ticks(1, 2), {}, true).ok());
  ASSERT_TRUE(st.archive_with_meta({ended_session("a", 5),
                                    ended_session("b", 6, pb::FAILED)},
                                   "archive/position", "7 60", false)
                .ok());
  // No records at all: the key alone.
  ASSERT_TRUE(st.archive_with_meta({}, "archive/other", "x", true).ok());
  std::vector<std::pair<std::string, std::string>> seen;
  ASSERT_TRUE(st.scan_meta("archive/", [&](const std::string& k,
                                           const std::string& v) {
                  seen.emplace_back(k, v);
                  return true;
                }).ok());
  EXPECT_EQ(seen, (std::vector<std::pair<std::string, std::string>>{
                    {"archive/other", "x"}, {"archive/position", "7 60"}}));
  std::optional<pb::SessionRecord> r;
  ASSERT_TRUE(st.archived("b", r).ok());
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->state(), pb::FAILED);
  std::vector<std::string> ids;
  st.scan_archive(0, [&](const pb::SessionRecord& x) {
    ids.push_back(x.id());
    return true;
  });
  EXPECT_EQ(ids, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(st.last_index(), 2u);
}

// A range of the archive read page by page resumes after the last record
// of a page, even when many sessions ended at the same millisecond.
TYPED_TEST(StoreTest, ArchivePagesResumeWithinOneMillisecond) {
  std::vector<pb::SessionRecord> recs;
  for (int i = 0; i < 25; ++i)
    recs.push_back(ended_session("s" + std::to_string(100 + i), i < 20 ? 70 : 80));
  ASSERT_TRUE(this->st->append(ticks(1, 1), recs, true).ok());
  pool_state empty;
  pb::ArchiveQuery q;
  q.set_since(60);
  q.set_limit(7);
  std::vector<std::string> got;
  for (int page = 0; page < 10; ++page) {
    pb::ArchiveAnswer a;
    ASSERT_EQ(query_archive(*this->st, empty, q, a), "");
    for (auto& r : a.sessions())
      got.push_back(r.id());
    if (!a.more())
      break;
    q.set_since(a.sessions(a.sessions_size() - 1).ended_at());
    q.set_after_id(a.sessions(a.sessions_size() - 1).id());
  }
  ASSERT_EQ(got.size(), 25u);
  for (int i = 0; i < 25; ++i)
    EXPECT_EQ(got[i], "s" + std::to_string(100 + i));
  // The store starts a page where the last one ended (it seeks there, so
  // a page does not read again what ended in that millisecond before).
  std::vector<std::string> after;
  ASSERT_TRUE(this->st
                ->scan_archive_after(70, "s117",
                                     [&](const pb::SessionRecord& r) {
                                       after.push_back(r.id());
                                       return after.size() < 4;
                                     })
                .ok());
  EXPECT_EQ(after, (std::vector<std::string>{"s118", "s119", "s120", "s121"}));
  after.clear();
  ASSERT_TRUE(this->st
                ->scan_archive_after(70, "s1175",  // between two ids
                                     [&](const pb::SessionRecord& r) {
                                       after.push_back(r.id());
                                       return after.size() < 1;
                                     })
                .ok());
  EXPECT_EQ(after, (std::vector<std::string>{"s118"}));
}

TYPED_TEST(StoreTest, ArchiveIsWrittenWithItsBatchAndReadByIdAndTime) {
  auto xs = ticks(1, 3);
  ASSERT_TRUE(this->st
                ->append(xs,
                         {ended_session("b", 300), ended_session("a", 200),
                          ended_session("c", 300, pb::FAILED)},
                         true)
                .ok());
  std::optional<pb::SessionRecord> r;
  ASSERT_TRUE(this->st->archived("c", r).ok());
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->state(), pb::FAILED);
  EXPECT_EQ(r->reason(), "why");
  ASSERT_TRUE(this->st->archived("zz", r).ok());
  EXPECT_FALSE(r.has_value());
  // In the order they ended, then by id; from a given time on.
  std::vector<std::string> order;
  ASSERT_TRUE(this->st
                ->scan_archive(0,
                               [&](const pb::SessionRecord& x) {
                                 order.push_back(x.id());
                                 return true;
                               })
                .ok());
  EXPECT_EQ(order, (std::vector<std::string>{"a", "b", "c"}));
  order.clear();
  ASSERT_TRUE(this->st
                ->scan_archive(250,
                               [&](const pb::SessionRecord& x) {
                                 order.push_back(x.id());
                                 return order.size() < 1;  // stop after one
                               })
                .ok());
  EXPECT_EQ(order, (std::vector<std::string>{"b"}));
  // A refused batch (a gap) writes no archive record either.
  EXPECT_FALSE(
    this->st->append(ticks(9, 9), {ended_session("d", 400)}, true).ok());
  ASSERT_TRUE(this->st->archived("d", r).ok());
  EXPECT_FALSE(r.has_value());
}

TYPED_TEST(StoreTest, CheckHistoryReportsAnArchiveThatDisagreesWithTheLog) {
  auto h = make_history(16, 400);
  ASSERT_GT(h.accepted, 3u);
  // The log as written, minus the archive records of one batch.
  auto dropped = h;
  size_t gone = 0;
  for (auto& a : dropped.archived)
    if (!a.empty() && gone == 0) {
      gone = a.size();
      a.clear();
    }
  ASSERT_GT(gone, 0u);
  ASSERT_TRUE(append_all(*this->st, dropped).ok());
  auto rep = check_history(*this->st);
  ASSERT_FALSE(rep.violations.empty());
  EXPECT_EQ(rep.violations.back().second.invariant, "I4");
  EXPECT_NE(rep.violations.back().second.detail.find("archive"),
            std::string::npos);
}

TEST(MemoryStore, APowerCutLosesWhatWasNotSynced) {
  auto st = make_memory_store();
  ASSERT_TRUE(st->append(ticks(1, 2), {ended_session("a", 1)}, true).ok());
  ASSERT_TRUE(st->append(ticks(3, 4), {ended_session("b", 2)}, false).ok());
  pb::Snapshot snap;
  snap.set_last_index(4);
  ASSERT_TRUE(st->save_snapshot(snap).ok());
  EXPECT_EQ(power_cut(*st), 2u);
  EXPECT_EQ(st->last_index(), 2u);
  EXPECT_EQ(scan_all(*st, 1).size(), 2u);
  std::optional<pb::SessionRecord> r;
  ASSERT_TRUE(st->archived("a", r).ok());
  EXPECT_TRUE(r.has_value());
  ASSERT_TRUE(st->archived("b", r).ok());
  EXPECT_FALSE(r.has_value());
  // The snapshot folded in lost entries: it is gone with them.
  std::optional<pb::Snapshot> loaded;
  ASSERT_TRUE(st->load_snapshot(loaded).ok());
  EXPECT_FALSE(loaded.has_value());
  // A later synced batch makes what came before it durable too.
  ASSERT_TRUE(st->append(ticks(3, 3), {}, false).ok());
  ASSERT_TRUE(st->append(ticks(4, 4), {}, true).ok());
  EXPECT_EQ(power_cut(*st), 0u);
  EXPECT_EQ(st->last_index(), 4u);
}

// A cluster member writes its archive position after every batch without
// sync (member_archive.hpp): a cut must not leave the position ahead of
// the records it covers. Metadata follows the same rule as the rest.
TEST(MemoryStore, APowerCutTakesUnsyncedMetadataBackToTheLastSync) {
  auto st = make_memory_store();
  auto meta = [&](const std::string& key) {
    std::optional<std::string> v;
    st->scan_meta(key, [&](const std::string& k, const std::string& value) {
      if (k == key)
        v = value;
      return false;
    });
    return v;
  };
  ASSERT_TRUE(st->put_meta("archive/position", "1 10", true).ok());
  ASSERT_TRUE(st->put_meta("archive/gap/5", "5 6 0 0", true).ok());
  ASSERT_TRUE(st->append({}, {ended_session("a", 1)}, false).ok());
  ASSERT_TRUE(st->put_meta("archive/position", "2 20", false).ok());
  ASSERT_TRUE(st->put_meta("archive/position", "3 30", false).ok());
  ASSERT_TRUE(st->put_meta("extra", "x", false).ok());
  ASSERT_TRUE(st->erase_meta("archive/gap/5", false).ok());
  EXPECT_EQ(meta("archive/position"), "3 30");
  power_cut(*st);
  EXPECT_EQ(meta("archive/position"), "1 10");  // as at the last sync
  EXPECT_EQ(meta("archive/gap/5"), "5 6 0 0");  // the erase was not synced
  EXPECT_FALSE(meta("extra").has_value());
  std::optional<pb::SessionRecord> r;
  ASSERT_TRUE(st->archived("a", r).ok());
  EXPECT_FALSE(r.has_value());
  // A synced write makes the unsynced ones before it durable, whatever
  // they wrote.
  ASSERT_TRUE(st->append({}, {ended_session("b", 2)}, false).ok());
  ASSERT_TRUE(st->put_meta("archive/position", "4 40", false).ok());
  ASSERT_TRUE(st->erase_meta("archive/gap/5", true).ok());
  power_cut(*st);
  EXPECT_EQ(meta("archive/position"), "4 40");
  EXPECT_FALSE(meta("archive/gap/5").has_value());
  ASSERT_TRUE(st->archived("b", r).ok());
  EXPECT_TRUE(r.has_value());
}

TEST(SnapshotWriter, WritesOnItsOwnThreadAndFinishesOnDestruction) {
  std::shared_ptr<store> st{make_memory_store()};
  std::atomic<uint64_t> made{0}, made_here{0};
  auto here = std::this_thread::get_id();
  {
    snapshot_writer w{st};
    for (uint64_t i = 1; i <= 50; ++i) {
      if (i % 2 == 0) {
        pb::Snapshot snap;
        snap.set_last_index(i);
        w.submit(std::move(snap));
        continue;
      }
      w.submit([i, &made, &made_here, here] {
        ++made;
        made_here += std::this_thread::get_id() == here;
        pb::Snapshot snap;
        snap.set_last_index(i);
        return encoded_snapshot{i, snap.SerializeAsString()};
      });
    }
    w.submit([&] {
      ++made;
      pb::Snapshot snap;
      snap.set_last_index(51);
      return encoded_snapshot{51, snap.SerializeAsString()};
    });
  }  // joins: the last one submitted is written, older ones may be skipped
  std::optional<pb::Snapshot> loaded;
  ASSERT_TRUE(st->load_snapshot(loaded).ok());
  ASSERT_TRUE(loaded.has_value());
  EXPECT_EQ(loaded->last_index(), 51u);
  // Each snapshot was made by the writer's thread, when it took it: the
  // last one always, a replaced one never.
  EXPECT_GE(made.load(), 1u);
  EXPECT_LE(made.load(), 26u);
  EXPECT_EQ(made_here.load(), 0u);
}

// -- RocksDB only ---------------------------------------------------------------

/// Key of log entry `i` as storage.cpp writes it: 'l' + big-endian index.
std::string log_key(uint64_t i) {
  std::string k(9, '\0');
  k[0] = 'l';
  for (int b = 0; b < 8; ++b)
    k[8 - b] = static_cast<char>((i >> (8 * b)) & 0xff);
  return k;
}

/// Opens a store's database behind its back, with every column family it
/// has (the store must be closed); handles[0] is the default family.
struct raw_db {
  std::unique_ptr<rocksdb::DB> db;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  explicit raw_db(const std::string& dir) {
    rocksdb::Options o;
    o.create_if_missing = true;
    std::vector<std::string> names;
    if (!rocksdb::DB::ListColumnFamilies(o, dir, &names).ok())
      names = {rocksdb::kDefaultColumnFamilyName};
    std::vector<rocksdb::ColumnFamilyDescriptor> families;
    for (auto& n : names)
      families.emplace_back(n, rocksdb::ColumnFamilyOptions{});
    rocksdb::DB* db_ = nullptr;
    auto s = rocksdb::DB::Open(o, dir, families, &handles, &db_);
    EXPECT_TRUE(s.ok()) << s.ToString();
    db.reset(db_);
  }
  ~raw_db() {
    for (auto* h : handles)
      if (db)
        db->DestroyColumnFamilyHandle(h);
  }
};

/// Writes behind the store's back (the store must be closed), into the
/// column family named `family`.
void raw_put(const std::string& dir, const std::string& key,
             const std::string& value,
             const std::string& family = rocksdb::kDefaultColumnFamilyName) {
  raw_db r{dir};
  ASSERT_TRUE(r.db);
  auto h = std::find_if(r.handles.begin(), r.handles.end(),
                        [&](auto* h) { return h->GetName() == family; });
  ASSERT_NE(h, r.handles.end()) << family;
  auto s = r.db->Put({}, *h, key, value);
  ASSERT_TRUE(s.ok()) << s.ToString();
}

/// Whether the default column family holds `key` (the store must be
/// closed).
bool raw_has(const std::string& dir, const std::string& key) {
  raw_db r{dir};
  std::string v;
  return r.db && r.db->Get({}, key, &v).ok();
}

/// The store's snapshot, checked to be `want`.
void expect_snapshot(store& st, const pb::Snapshot& want) {
  std::optional<pb::Snapshot> snap;
  ASSERT_TRUE(st.load_snapshot(snap).ok());
  ASSERT_TRUE(snap.has_value());
  EXPECT_TRUE(MessageDifferencer::Equals(*snap, want));
}

class RocksStore : public ::testing::Test {
protected:
  std::unique_ptr<store> open() {
    status st;
    auto s = open_rocksdb_store(dir.path(), st);
    EXPECT_TRUE(st.ok()) << st.error;
    return s;
  }
  temp_dir dir;
};

TEST_F(RocksStore, ReopenKeepsLogAndSnapshot) {
  auto h = make_history(21, 300);
  {
    auto st = open();
    ASSERT_TRUE(append_all(*st, h).ok());
    ASSERT_TRUE(st->save_snapshot(h.after[10]).ok());
  }
  auto st = open();
  EXPECT_EQ(st->last_index(), h.entries.size());
  auto xs = scan_all(*st, 1);
  ASSERT_EQ(xs.size(), h.entries.size());
  for (size_t i = 0; i < xs.size(); ++i)
    ASSERT_TRUE(MessageDifferencer::Equals(xs[i], h.entries[i])) << i;
  expect_snapshot(*st, h.after[10]);
  // The log continues at the right index after a reopen.
  auto n = h.entries.size();
  EXPECT_FALSE(st->append({entry(n + 2, 1, tick_cmd())}, true).ok());
  EXPECT_TRUE(st->append({entry(n + 1, 1, tick_cmd())}, true).ok());
  pool_state pool;
  recovered info;
  ASSERT_TRUE(recover(*st, pool, info).ok());
  EXPECT_EQ(info.last_index, n + 1);
}

/// Reputation and latency are averages no command can push out of range;
/// a stored snapshot that holds such a value was not written by a pool and
/// is refused (a NaN would also break the order of the pool index).
TEST(Recovery, RefusesASnapshotWithAReputationOrLatencyNoPoolProduces) {
  auto h = make_history(31, 200);
  auto good = h.after.back();
  ASSERT_GT(good.nodes_size(), 0);
  auto refused = [&](const std::function<void(pb::NodeRecord&)>& spoil) {
    auto snap = good;
    spoil(*snap.mutable_nodes(0));
    auto st = make_memory_store();
    EXPECT_TRUE(st->append(h.entries, true).ok());  // the log it was taken of
    EXPECT_TRUE(st->save_snapshot(snap).ok());
    pool_state pool;
    recovered info;
    auto s = recover(*st, pool, info);
    EXPECT_NE(s.error.find("node " + snap.nodes(0).id()), std::string::npos)
      << s.error;
    return !s.ok();
  };
  EXPECT_TRUE(refused([](auto& n) { n.set_reputation(std::nan("")); }));
  EXPECT_TRUE(refused([](auto& n) { n.set_reputation(1.5); }));
  EXPECT_TRUE(refused([](auto& n) { n.set_latency_ms(-3); }));
  EXPECT_TRUE(refused([](auto& n) {
    n.set_latency_ms(std::numeric_limits<double>::infinity());
  }));
  // The same snapshot unspoilt is recovered.
  auto st = make_memory_store();
  ASSERT_TRUE(st->append(h.entries, true).ok());
  ASSERT_TRUE(st->save_snapshot(good).ok());
  pool_state pool;
  recovered info;
  EXPECT_TRUE(recover(*st, pool, info).ok());
}

/// A raw restore (nodepool status, tests) of foreign bytes keeps a usable
/// pool index even with a NaN reputation: the node ranks last.
TEST(Recovery, RawRestoreOfANanReputationKeepsThePoolIndexOrdered) {
  pb::Snapshot snap;
  snap.set_next_test_id(1);
  snap.set_next_session_seq(1);
  seeded_rng r{33};
  for (int i = 0; i < 40; ++i) {
    auto* n = snap.add_nodes();
    n->set_id("n" + std::to_string(i));
    n->set_state(pb::EPHEMERAL);
    n->set_pool_key(r.next());
    n->set_reputation(i % 3 ? std::nan("") : 0.1 * (i % 10));
  }
  pool_state pool;
  pool.restore(snap);
  for (auto& v : pool.check_invariants())
    EXPECT_EQ(v.detail.find("pool index"), std::string::npos) << v.detail;
}

TEST_F(RocksStore, StoreOfAnotherFormatIsRefusedAndLeftAlone) {
  // A log written before the format marker existed: refused, not replayed
  // into a different state, and not changed by the attempt.
  raw_put(dir.path(), log_key(1), entry(1, 5, tick_cmd()).SerializeAsString());
  for (int attempt = 0; attempt < 2; ++attempt) {
    status s;
    auto st = open_rocksdb_store(dir.path(), s);
    EXPECT_EQ(st, nullptr);
    EXPECT_NE(s.error.find("earlier nodepool"), std::string::npos) << s.error;
    EXPECT_NE(s.error.find(dir.path()), std::string::npos) << s.error;
  }
  // The format before the archive: named, with what changed.
  temp_dir older;
  raw_put(older.path(), "format", "2");
  {
    status s;
    EXPECT_EQ(open_rocksdb_store(older.path(), s), nullptr);
    EXPECT_NE(s.error.find("format '2'"), std::string::npos) << s.error;
    EXPECT_NE(s.error.find("archive"), std::string::npos) << s.error;
    EXPECT_NE(s.error.find(older.path()), std::string::npos) << s.error;
  }
  // A marker naming another format.
  temp_dir other;
  raw_put(other.path(), "format", "9");
  status s;
  EXPECT_EQ(open_rocksdb_store(other.path(), s), nullptr);
  EXPECT_NE(s.error.find("format '9'"), std::string::npos) << s.error;
  // Left alone means its column families too: the version that wrote it
  // opens exactly the ones it made.
  for (auto* d : {&dir, &older, &other}) {
    std::vector<std::string> families;
    ASSERT_TRUE(
      rocksdb::DB::ListColumnFamilies(rocksdb::Options{}, d->path(), &families).ok());
    EXPECT_EQ(families, std::vector<std::string>{rocksdb::kDefaultColumnFamilyName})
      << d->path();
  }
}

TEST_F(RocksStore, NewStoreIsMarkedAndReopens) {
  {
    auto st = open();
    ASSERT_NE(st, nullptr);
    EXPECT_EQ(st->last_index(), 0u);
  }
  auto st = open();  // the marker written at creation is accepted
  ASSERT_NE(st, nullptr);
  EXPECT_TRUE(st->append({entry(1, 1, tick_cmd())}, true).ok());
}

TEST_F(RocksStore, SecondOpenOfTheSameDirectoryIsAnError) {
  auto st = open();
  status s2;
  auto other = open_rocksdb_store(dir.path(), s2);
  EXPECT_FALSE(s2.ok());
  EXPECT_EQ(other, nullptr);
  EXPECT_NE(s2.error.find(dir.path()), std::string::npos) << s2.error;
}

TEST_F(RocksStore, UnusableDirectoryIsAnError) {
  auto file = dir.path() + "/not-a-dir";
  std::ofstream{file} << "x";
  status s;
  auto st = open_rocksdb_store(file, s);
  EXPECT_EQ(st, nullptr);
  EXPECT_FALSE(s.ok());
}

TEST_F(RocksStore, GarbageLogEntryIsAClearError) {
  auto h = make_history(22, 200);
  ASSERT_GT(h.entries.size(), 10u);
  { ASSERT_TRUE(append_all(*open(), h).ok()); }
  raw_put(dir.path(), log_key(5), std::string("\xff\xff\xff\xff\xff", 5));
  auto st = open();
  std::vector<uint64_t> seen;
  auto s = st->scan(1, [&](const pb::LogEntry& e) { seen.push_back(e.index()); });
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.error.find("log entry 5"), std::string::npos) << s.error;
  EXPECT_EQ(seen, (std::vector<uint64_t>{1, 2, 3, 4}));
  pool_state pool;
  recovered info;
  s = recover(*st, pool, info);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.error.find("log entry 5"), std::string::npos) << s.error;
  auto rep = check_history(*st);
  EXPECT_NE(rep.load_error.find("log entry 5"), std::string::npos)
    << rep.load_error;
}

TEST_F(RocksStore, EntryUnderAnotherIndexIsAClearError) {
  auto h = make_history(23, 100);
  { ASSERT_TRUE(append_all(*open(), h).ok()); }
  // Decodes fine, but says it is entry 9 while stored as entry 3.
  raw_put(dir.path(), log_key(3), h.entries[8].SerializeAsString());
  auto st = open();
  status s;
  auto xs = scan_all(*st, 1, &s);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.error.find("log entry 3"), std::string::npos) << s.error;
  EXPECT_EQ(xs.size(), 2u);
}

TEST_F(RocksStore, GapWrittenBehindTheStoresBackIsReported) {
  auto h = make_history(24, 100);
  auto n = h.entries.size();
  { ASSERT_TRUE(append_all(*open(), h).ok()); }
  raw_put(dir.path(), log_key(n + 2),
          entry(n + 2, h.entries.back().now(), tick_cmd()).SerializeAsString());
  auto st = open();
  EXPECT_EQ(st->last_index(), n + 2);
  auto rep = check_history(*st);
  EXPECT_TRUE(rep.load_error.empty()) << rep.load_error;
  ASSERT_FALSE(rep.violations.empty());
  EXPECT_EQ(rep.violations.front().first, n + 2);
  EXPECT_NE(rep.violations.front().second.detail.find("gap"), std::string::npos);
}

TEST_F(RocksStore, ASnapshotFlushesItsOwnColumnFamilyNotTheLog) {
  // A snapshot skips the write-ahead log and is made durable by a flush:
  // of the snapshots' column family alone, so the log's memtable fills
  // before it is written out (fewer, larger files to compact).
  auto h = make_history(27, 300);
  auto st = open();
  ASSERT_TRUE(append_all(*st, h).ok());
  ASSERT_TRUE(st->save_snapshot(h.after[h.after.size() / 3]).ok());
  ASSERT_TRUE(st->save_snapshot(h.after.back()).ok());
  for (int i = 0; i < 1000 && st->activity().snapshot_flushes == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_GE(st->activity().snapshot_flushes, 1u);
  EXPECT_EQ(st->activity().log_flushes, 0u);
  expect_snapshot(*st, h.after.back());
}

TEST_F(RocksStore, WriteAheadLogFilesHoldNoSpaceAheadOfTheirWrites) {
  // Each snapshot's flush starts a new write-ahead log file (when it is
  // asked for, not when the flush ends). Preallocated, its first write
  // would claim 1.1 x a memtable: on a tmpfs that first write, a group
  // commit, filled those pages for 25-38 ms. A log file holds the blocks
  // its bytes need, and no more than a few pages of slack.
  auto h = make_history(29, 300);
  auto st = open();
  ASSERT_TRUE(append_all(*st, h).ok());
  auto log_files = [&] {
    std::set<std::string> out;
    for (auto& f : std::filesystem::directory_iterator(dir.path()))
      if (f.path().extension() == ".log")
        out.insert(f.path().filename().string());
    return out;
  };
  auto before = log_files();
  ASSERT_TRUE(st->save_snapshot(h.after.back()).ok());
  auto after = log_files();
  ASSERT_GT(after.size(), before.size()) << "the snapshot started no new log";
  // A write after the switch: the new log's first.
  auto more = make_history(31, 1);
  auto e = more.entries.front();
  e.set_index(h.entries.back().index() + 1);
  ASSERT_TRUE(st->append({e}, {}, true).ok());
  size_t logs = 0;
  for (auto& f : std::filesystem::directory_iterator(dir.path())) {
    if (f.path().extension() != ".log")
      continue;
    struct stat sb {};
    ASSERT_EQ(::stat(f.path().c_str(), &sb), 0);
    ++logs;
    EXPECT_LE(static_cast<uint64_t>(sb.st_blocks) * 512,
              static_cast<uint64_t>(sb.st_size) + (64u << 10))
      << f.path() << ": " << sb.st_size << " bytes written, "
      << static_cast<uint64_t>(sb.st_blocks) * 512 << " bytes held";
  }
  EXPECT_GE(logs, 1u);
}

// Run by the test below in a process of its own (a fork would inherit
// RocksDB's thread pool without its threads): writes the log and a
// snapshot into $NODEPOOL_DYING_STORE, waits for the snapshot's flush and
// dies without closing anything.
TEST(RocksStoreChild, DISABLED_WritesASnapshotAndDies) {
  auto* dir = std::getenv("NODEPOOL_DYING_STORE");
  ASSERT_NE(dir, nullptr);
  auto h = make_history(28, 200);
  status s;
  auto st = open_rocksdb_store(dir, s);
  if (!st || !append_all(*st, h).ok()
      || !st->save_snapshot(h.after[h.after.size() / 2]).ok())
    _exit(2);
  for (int i = 0; i < 1000 && st->activity().snapshot_flushes == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  _exit(st->activity().snapshot_flushes > 0 ? 0 : 3);
}

TEST_F(RocksStore, AFlushedSnapshotSurvivesTheProcessDying) {
  auto cmd = "NODEPOOL_DYING_STORE='" + dir.path() + "' /proc/"
             + std::to_string(getpid())
             + "/exe --gtest_also_run_disabled_tests "
               "--gtest_filter=RocksStoreChild.DISABLED_WritesASnapshotAndDies "
               "> /dev/null 2>&1";
  auto rc = std::system(cmd.c_str());
  ASSERT_TRUE(WIFEXITED(rc));
  ASSERT_EQ(WEXITSTATUS(rc), 0);
  auto h = make_history(28, 200);
  auto st = open();
  EXPECT_EQ(st->last_index(), h.entries.size());
  expect_snapshot(*st, h.after[h.after.size() / 2]);
}

TEST_F(RocksStore, ASnapshotInTheDefaultColumnFamilyMovesToItsOwn) {
  // Format 3 first kept the snapshot beside the log: such a directory
  // opens with its snapshot moved, once and durably.
  auto h = make_history(29, 200);
  {
    auto st = open();
    ASSERT_TRUE(append_all(*st, h).ok());
  }
  raw_put(dir.path(), "snapshot", h.after[h.after.size() / 2].SerializeAsString());
  raw_put(dir.path(), "format", "3");
  ASSERT_TRUE(raw_has(dir.path(), "snapshot"));
  {
    auto st = open();
    expect_snapshot(*st, h.after[h.after.size() / 2]);
  }
  EXPECT_FALSE(raw_has(dir.path(), "snapshot"));
  auto st = open();
  expect_snapshot(*st, h.after[h.after.size() / 2]);
  pool_state pool;
  recovered info;
  ASSERT_TRUE(recover(*st, pool, info).ok());
}

/// Moves the archive of a closed store back where format 3 kept it: the
/// records ("a" + id) and their time index ("t" + key) in the default
/// family. Moves every `every`-th key of each (1: all). Returns how many
/// records it moved.
size_t make_format_3(const std::string& dir, size_t every) {
  raw_db r{dir};
  EXPECT_TRUE(r.db);
  auto family = [&](const std::string& name) {
    for (auto* h : r.handles)
      if (h->GetName() == name)
        return h;
    ADD_FAILURE() << "no family " << name;
    return r.handles[0];
  };
  size_t moved = 0;
  for (auto [name, prefix] : {std::pair{"archive", "a"}, std::pair{"ended", "t"}}) {
    auto* from = family(name);
    rocksdb::WriteBatch batch;
    std::unique_ptr<rocksdb::Iterator> it{r.db->NewIterator({}, from)};
    size_t i = 0;
    for (it->SeekToFirst(); it->Valid(); it->Next(), ++i) {
      if (i % every != 0)
        continue;
      batch.Put(prefix + it->key().ToString(), it->value());
      batch.Delete(from, it->key());
      moved += prefix[0] == 'a';
    }
    EXPECT_TRUE(r.db->Write({}, &batch).ok());
  }
  EXPECT_TRUE(r.db->Put({}, "format", "3").ok());
  return moved;
}

/// Every record the history archived, read back by id and by time.
void expect_archive(store& st, const history& h) {
  size_t n = 0;
  for (auto& ended : h.archived)
    for (auto& want : ended) {
      std::optional<pb::SessionRecord> r;
      ASSERT_TRUE(st.archived(want.id(), r).ok());
      ASSERT_TRUE(r.has_value()) << want.id();
      EXPECT_TRUE(MessageDifferencer::Equals(*r, want)) << want.id();
      ++n;
    }
  size_t scanned = 0;
  int64_t last = 0;
  ASSERT_TRUE(st.scan_archive(0, [&](const pb::SessionRecord& r) {
                  EXPECT_GE(r.ended_at(), last);
                  last = r.ended_at();
                  return ++scanned, true;
                }).ok());
  EXPECT_EQ(scanned, n);
}

TEST_F(RocksStore, AFormat3ArchiveMovesToItsOwnColumnFamilies) {
  // Format 3 kept the archive beside the log; format 4 keeps it in two
  // families of its own. A format-3 directory opens with every record
  // moved, the marker raised, and the same history replayed.
  auto h = make_history(41, 600);
  size_t archived = 0;
  for (auto& a : h.archived)
    archived += a.size();
  ASSERT_GT(archived, 20u);
  { ASSERT_TRUE(append_all(*open(), h).ok()); }
  ASSERT_EQ(make_format_3(dir.path(), 1), archived);
  ASSERT_TRUE(raw_has(dir.path(), "a" + h.archived_ids().front()));
  {
    auto st = open();
    ASSERT_NE(st, nullptr);
    expect_archive(*st, h);
  }
  for (auto& id : h.archived_ids())
    EXPECT_FALSE(raw_has(dir.path(), "a" + id)) << id;
  {
    raw_db r{dir.path()};
    std::string format;
    ASSERT_TRUE(r.db->Get({}, "format", &format).ok());
    EXPECT_EQ(format, "4");
    std::unique_ptr<rocksdb::Iterator> it{r.db->NewIterator({})};
    for (it->SeekToFirst(); it->Valid(); it->Next())
      EXPECT_TRUE(it->key().starts_with("l") || it->key() == "format")
        << it->key().ToString();
  }
  auto st = open();
  expect_archive(*st, h);
  pool_state pool;
  recovered info;
  ASSERT_TRUE(recover(*st, pool, info).ok());
  EXPECT_EQ(info.last_index, h.entries.size());
  EXPECT_TRUE(check_history(*st).violations.empty());
}

TEST_F(RocksStore, AMoveOfTheArchiveCutShortGoesOnAtTheNextOpen) {
  // A crash in the middle of the move leaves some records moved and the
  // marker at 3: the next open moves the rest and loses none.
  auto h = make_history(42, 600);
  { ASSERT_TRUE(append_all(*open(), h).ok()); }
  auto moved_back = make_format_3(dir.path(), 3);
  ASSERT_GT(moved_back, 5u);
  auto st = open();
  ASSERT_NE(st, nullptr);
  expect_archive(*st, h);
}

TEST_F(RocksStore, IndexAndFilterBlocksOfAGrowingArchiveStayInTheBlockCache) {
  // 200k archived sessions in files on disk: their index and filter blocks
  // are held by the block cache, whose size is bounded, not by the table
  // readers, which keep every file's for as long as the store is open
  // (543 KB here with RocksDB's default table options).
  {
    auto st = open();
    uint64_t index = 0;
    for (int batch = 0; batch < 20; ++batch) {
      std::vector<pb::SessionRecord> ended;
      for (int i = 0; i < 10000; ++i)
        ended.push_back(ended_session("s" + std::to_string(batch * 10000 + i),
                                      1000 + batch));
      ASSERT_TRUE(st->append(ticks(index + 1, index + 1), ended, false).ok());
      ++index;
    }
  }
  auto st = open();  // the files are opened, with what they keep
  std::optional<pb::SessionRecord> r;
  for (int i = 0; i < 200000; i += 997) {
    ASSERT_TRUE(st->archived("s" + std::to_string(i), r).ok());
    ASSERT_TRUE(r.has_value()) << i;
    ASSERT_TRUE(st->archived("new" + std::to_string(i), r).ok());
    ASSERT_FALSE(r.has_value());
  }
  auto m = st->memory();
  EXPECT_LT(m.table_readers, 64u << 10);
  EXPECT_GT(m.block_cache, 0u);
  EXPECT_LE(m.block_cache, store_block_cache_bytes);
}

TEST_F(RocksStore, GarbageSnapshotIsAClearError) {
  auto h = make_history(25, 100);
  {
    auto st = open();
    ASSERT_TRUE(append_all(*st, h).ok());
  }
  raw_put(dir.path(), "snapshot", std::string("\xff\xff\xff", 3), "snapshots");
  auto st = open();
  std::optional<pb::Snapshot> snap;
  auto s = st->load_snapshot(snap);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.error.find("snapshot"), std::string::npos) << s.error;
  EXPECT_FALSE(snap.has_value());
  pool_state pool;
  recovered info;
  EXPECT_FALSE(recover(*st, pool, info).ok());
  auto rep = check_history(*st);
  EXPECT_FALSE(rep.load_error.empty());
}

} // namespace
