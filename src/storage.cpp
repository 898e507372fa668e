#include "storage.hpp"

#include "log.hpp"

#include <atomic>
#include <algorithm>
#include <filesystem>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include <rocksdb/cache.h>
#include <rocksdb/db.h>
#include <sys/statvfs.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/listener.h>
#include <rocksdb/table.h>
#include <rocksdb/write_batch.h>

namespace nodepool {

namespace {

constexpr char snapshot_key[] = "snapshot";
/// Snapshots live in a column family of their own: making one durable
/// flushes that family's memtable alone, not the log's and the archive's
/// (whose memtable then fills before it is written out, in files that
/// compaction rewrites less often).
constexpr char snapshot_family[] = "snapshots";
/// The archive has two families of its own: records by id ("archive") and
/// their order by end time ("ended"). Beside the log, whose keys only grow,
/// every file spanned random archive ids as well, and compaction rewrote
/// log entries with them (apart, compaction wrote less than half as many
/// bytes in durable's saturation run: BENCHMARKS.md). Only the archive's
/// family carries Bloom filters: a submission's lookup of its id is the
/// only point read. A format-3 directory's move (migrate_archive) is one
/// pass over its archive at the first open, safe to interrupt.
constexpr char archive_family[] = "archive";
constexpr char ended_family[] = "ended";

/// What the stored bytes mean, and which nodepool replays them the same.
/// Format 2: nodes are picked from the ordered pool index (pool_key).
/// Format 3: ended sessions leave the pool for the archive ('a' and 't'
/// keys) and the snapshot holds live records and the idempotency window; a
/// format-2 history replays to a different state. Format 3 keeps the
/// snapshot in a column family of its own; a format-3 directory written
/// before that has it beside the log, and it is moved at open.
/// Format 4: the same history, with the archive in its own two families
/// (archive_family, ended_family); a format-3 directory is moved to it at
/// open (migrate_archive).
constexpr char format_key[] = "format";
constexpr char format_version[] = "4";

void put_be64(std::string& k, uint64_t x) {
  for (int i = 7; i >= 0; --i)
    k.push_back(static_cast<char>((x >> (8 * i)) & 0xff));
}

uint64_t get_be64(const char* p) {
  uint64_t x = 0;
  for (int i = 0; i < 8; ++i)
    x = (x << 8) | static_cast<uint8_t>(p[i]);
  return x;
}

/// Log keys sort by index: 'l' followed by the index in big-endian.
std::string log_key(uint64_t index) {
  std::string k(1, 'l');
  put_be64(k, index);
  return k;
}

uint64_t key_index(const rocksdb::Slice& k) {
  return k.size() == 9 ? get_be64(k.data() + 1) : 0;
}

/// Archived sessions: in archive_family the id holds the record; in
/// ended_family ended_at + id (no value) orders them by the time they
/// ended. Times are never negative (recovery refuses them), so big-endian
/// order is time order. Format 3 kept both in the default family, behind
/// the prefixes 'a' and 't'.
std::string ended_key(int64_t ended_at, const std::string& id) {
  std::string k;
  put_be64(k, static_cast<uint64_t>(std::max<int64_t>(0, ended_at)));
  return k + id;
}

/// An archived record read back: outside input like any stored byte.
status decode_archived(const std::string& bytes, const std::string& id,
                       std::optional<pb::SessionRecord>& out) {
  pb::SessionRecord r;
  if (!r.ParseFromString(bytes))
    return status::fail("archived session " + id + " does not decode");
  out = std::move(r);
  return {};
}

/// Metadata keys: 'm' + name.
std::string meta_key(const std::string& name) { return "m" + name; }

class memory_store : public store {
public:
  status put_meta(const std::string& key, const std::string& value,
                  bool sync) override {
    std::lock_guard<std::mutex> lock{mutex_};
    keep_undo(key, sync);
    meta_[key] = value;
    return {};
  }
  status erase_meta(const std::string& key, bool sync) override {
    std::lock_guard<std::mutex> lock{mutex_};
    keep_undo(key, sync);
    meta_.erase(key);
    return {};
  }
  status scan_meta(const std::string& prefix,
                   const std::function<bool(const std::string&,
                                            const std::string&)>& f) override {
    std::map<std::string, std::string> copy;
    {
      std::lock_guard<std::mutex> lock{mutex_};
      for (auto i = meta_.lower_bound(prefix);
           i != meta_.end() && i->first.compare(0, prefix.size(), prefix) == 0; ++i)
        copy.insert(*i);
    }
    for (auto& [k, v] : copy)
      if (!f(k, v))
        break;
    return {};
  }

  status append(const std::vector<pb::LogEntry>& entries,
                const std::vector<pb::SessionRecord>& archived,
                bool sync) override {
    std::lock_guard<std::mutex> lock{mutex_};
    // All or nothing, like the RocksDB write batch: check the whole batch
    // before writing any of it.
    auto expect = last_ + 1;
    for (auto& e : entries)
      if (e.index() != expect++)
        return status::fail("log gap: appending " + std::to_string(e.index())
                            + " after " + std::to_string(expect - 2));
    last_batch_from_ = last_ + 1;
    last_batch_archive_.clear();
    for (auto& e : entries) {
      log_[e.index()] = e.SerializeAsString();
      last_ = e.index();
    }
    for (auto& r : archived) {
      archive_[r.id()] = r.SerializeAsString();
      by_end_.emplace(ended_key(r.ended_at(), r.id()), r.id());
      last_batch_archive_.push_back(r.id());
      if (!sync)
        unsynced_archive_.push_back(r.id());
    }
    if (sync) {
      synced_ = last_;
      unsynced_archive_.clear();
      unsynced_meta_.clear();
    }
    return {};
  }
  status save_snapshot_bytes(uint64_t last_index, std::string bytes) override {
    std::lock_guard<std::mutex> lock{mutex_};
    snapshot_ = std::move(bytes);
    snapshot_index_ = last_index;
    return {};
  }
  status load_snapshot(std::optional<pb::Snapshot>& out) override {
    std::lock_guard<std::mutex> lock{mutex_};
    out.reset();
    if (snapshot_.empty())
      return {};
    pb::Snapshot s;
    if (!s.ParseFromString(snapshot_))
      return status::fail("snapshot does not decode");
    out = std::move(s);
    return {};
  }
  status scan_while(uint64_t from,
                    const std::function<bool(const pb::LogEntry&)>& f) override {
    std::unique_lock<std::mutex> lock{mutex_};
    for (auto i = log_.lower_bound(from); i != log_.end(); ++i) {
      pb::LogEntry e;
      if (!e.ParseFromString(i->second) || e.index() != i->first)
        return status::fail("log entry " + std::to_string(i->first)
                            + " does not decode");
      if (!f(e))
        break;
    }
    return {};
  }
  uint64_t last_index() const override { return last_; }
  status archived(const std::string& id,
                  std::optional<pb::SessionRecord>& out) override {
    std::lock_guard<std::mutex> lock{mutex_};
    out.reset();
    auto i = archive_.find(id);
    if (i == archive_.end())
      return {};
    return decode_archived(i->second, id, out);
  }
  status scan_archive(
    int64_t since,
    const std::function<bool(const pb::SessionRecord&)>& f) override {
    return scan_archive_after(since, "", f);
  }
  status scan_archive_after(
    int64_t since, const std::string& after_id,
    const std::function<bool(const pb::SessionRecord&)>& f) override {
    std::lock_guard<std::mutex> lock{mutex_};
    auto from = ended_key(since, after_id);
    for (auto i = by_end_.lower_bound(from); i != by_end_.end(); ++i) {
      if (!after_id.empty() && i->first == from)
        continue;  // the last record of the page before
      pb::SessionRecord r;
      auto a = archive_.find(i->second);
      if (a == archive_.end() || !r.ParseFromString(a->second))
        return status::fail("archived session " + i->second
                            + " does not decode");
      if (!f(r))
        break;
    }
    return {};
  }

  /// What a power cut leaves: the batches up to the last synced one (and
  /// not the last batch, if it was torn).
  uint64_t cut_power(bool tear_last) {
    std::lock_guard<std::mutex> lock{mutex_};
    if (tear_last) {
      synced_ = std::min(synced_, last_batch_from_ - 1);
      unsynced_archive_.insert(unsynced_archive_.end(),
                               last_batch_archive_.begin(),
                               last_batch_archive_.end());
    }
    last_batch_archive_.clear();
    last_batch_from_ = synced_ + 1;
    uint64_t lost = 0;
    while (!log_.empty() && log_.rbegin()->first > synced_) {
      log_.erase(std::prev(log_.end()));
      ++lost;
    }
    last_ = synced_;
    for (auto& id : unsynced_archive_) {
      auto a = archive_.find(id);
      if (a == archive_.end())
        continue;
      pb::SessionRecord r;
      r.ParseFromString(a->second);
      by_end_.erase(ended_key(r.ended_at(), id));
      archive_.erase(a);
    }
    unsynced_archive_.clear();
    // Metadata written without sync since the last synced write goes too:
    // each key holds again what it held then. RocksDB's log keeps writes in
    // order, so an archive position never outlives the records written
    // before it.
    for (auto& [key, was] : unsynced_meta_) {
      if (was)
        meta_[key] = *was;
      else
        meta_.erase(key);
    }
    unsynced_meta_.clear();
    // A snapshot reaches the disk after the entries it folds in; one that
    // includes lost entries is lost with them (the log alone replays).
    if (snapshot_index_ > synced_) {
      snapshot_.clear();
      snapshot_index_ = 0;
    }
    return lost;
  }

private:
  /// Before a metadata write: a synced one makes every earlier write
  /// durable (RocksDB syncs its log up to it); an unsynced one keeps what
  /// the key held, for a power cut to restore.
  void keep_undo(const std::string& key, bool sync) {
    if (sync) {
      unsynced_meta_.clear();
      unsynced_archive_.clear();
      return;
    }
    if (unsynced_meta_.count(key))
      return;  // it already keeps what the key held at the last sync
    auto i = meta_.find(key);
    unsynced_meta_.emplace(key, i == meta_.end()
                                  ? std::nullopt
                                  : std::optional<std::string>{i->second});
  }

  mutable std::mutex mutex_;  // the snapshot writer's thread writes too
  std::map<uint64_t, std::string> log_;
  std::map<std::string, std::string> archive_;
  std::map<std::string, std::string> by_end_;  // ended_key -> id
  std::vector<std::string> unsynced_archive_;
  // Keys written without sync since the last synced write, and what each
  // held then (nothing: absent).
  std::map<std::string, std::optional<std::string>> unsynced_meta_;
  std::vector<std::string> last_batch_archive_;
  uint64_t last_batch_from_ = 1;
  std::string snapshot_;
  uint64_t snapshot_index_ = 0;
  uint64_t last_ = 0;
  uint64_t synced_ = 0;
  std::map<std::string, std::string> meta_;
};

class rocksdb_store : public store {
public:
  store_memory memory() const override {
    auto read = [&](const char* prop) {
      uint64_t v = 0;
      if (db_ && db_->GetAggregatedIntProperty(prop, &v))
        return v;
      return uint64_t{0};
    };
    store_memory m;
    m.memtables = read("rocksdb.cur-size-all-mem-tables");
    m.table_readers = read("rocksdb.estimate-table-readers-mem");
    // One cache serves both families: read once, not summed over them.
    uint64_t cache = 0;
    if (db_ && db_->GetIntProperty("rocksdb.block-cache-usage", &cache))
      m.block_cache = cache;
    return m;
  }

  /// Counts flushes (per column family) and compactions.
  struct activity_counter : rocksdb::EventListener {
    std::atomic<uint64_t> log_flushes{0};
    std::atomic<uint64_t> snapshot_flushes{0};
    std::atomic<uint64_t> compactions{0};
    std::atomic<uint64_t> compaction_bytes{0};
    void OnFlushCompleted(rocksdb::DB*, const rocksdb::FlushJobInfo& info) override {
      ++(info.cf_name == snapshot_family ? snapshot_flushes : log_flushes);
    }
    void OnCompactionCompleted(rocksdb::DB*,
                               const rocksdb::CompactionJobInfo& info) override {
      ++compactions;
      compaction_bytes += info.stats.total_output_bytes;
    }
  };

  store_activity activity() const override {
    return {activity_->log_flushes.load(), activity_->snapshot_flushes.load(),
            activity_->compactions.load(), activity_->compaction_bytes.load()};
  }

  /// Takes the database and the handles of its own families.
  rocksdb_store(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* snapshots,
                rocksdb::ColumnFamilyHandle* archive,
                rocksdb::ColumnFamilyHandle* ended,
                std::shared_ptr<activity_counter> activity,
                bool read_only = false)
    : db_(db), snapshots_(snapshots), archive_(archive), ended_(ended),
      activity_(std::move(activity)), read_only_(read_only) {
    std::unique_ptr<rocksdb::Iterator> it{db_->NewIterator({})};
    it->SeekForPrev(log_key(UINT64_MAX));
    if (it->Valid() && it->key().size() == 9 && it->key()[0] == 'l')
      last_ = key_index(it->key());
  }

  /// A clean close puts everything on disk, including a snapshot whose
  /// background flush has not finished yet (snapshots skip the WAL).
  ~rocksdb_store() override {
    // After a failed write (a full disk) RocksDB refuses further writes,
    // and Debian's build asserts when such a database is flushed or closed:
    // it is left open for the exiting process to drop. What is not on disk
    // is rebuilt from the log at the next start.
    if (broken_) {
      (void)db_.release();
      return;
    }
    if (!read_only_) {
      rocksdb::FlushOptions fo;
      fo.wait = true;
      db_->Flush(fo, {db_->DefaultColumnFamily(), snapshots_, archive_, ended_});
    }
    for (auto* h : {snapshots_, archive_, ended_})
      db_->DestroyColumnFamilyHandle(h);
  }

  status append(const std::vector<pb::LogEntry>& entries,
                const std::vector<pb::SessionRecord>& archived,
                bool sync) override {
    if (auto s = check_space(); !s.ok())
      return s;
    rocksdb::WriteBatch batch;
    auto expect = last_ + 1;
    std::string buf;
    for (auto& e : entries) {
      if (e.index() != expect++)
        return status::fail("log gap at entry " + std::to_string(e.index()));
      buf.clear();
      e.SerializeToString(&buf);
      batch.Put(log_key(e.index()), buf);
    }
    add_archived(batch, archived, buf);
    rocksdb::WriteOptions wo;
    wo.sync = sync;
    auto st = db_->Write(wo, &batch);
    if (!st.ok())
      return failed("rocksdb write", st);
    if (!entries.empty())
      last_ = entries.back().index();
    return {};
  }

  status archive_with_meta(const std::vector<pb::SessionRecord>& archived,
                           const std::string& key, const std::string& value,
                           bool sync) override {
    if (auto s = check_space(); !s.ok())
      return s;
    rocksdb::WriteBatch batch;
    std::string buf;
    add_archived(batch, archived, buf);
    batch.Put(meta_key(key), value);
    rocksdb::WriteOptions wo;
    wo.sync = sync;
    auto st = db_->Write(wo, &batch);
    return st.ok() ? status{} : failed("rocksdb write", st);
  }

  status save_snapshot_bytes(uint64_t, std::string bytes) override {
    // A snapshot only shortens the replay: the whole log is kept, and every
    // entry the snapshot includes was synced before it was taken. So it
    // skips the write-ahead log (whose fsync at the next group commit would
    // otherwise carry the snapshot) and reaches disk with a flush of its own
    // column family, started here in the background; a crash before that
    // recovers from the previous snapshot and replays more of the log.
    if (auto s = check_space(); !s.ok())
      return s;
    rocksdb::WriteOptions wo;
    wo.disableWAL = true;
    auto st = db_->Put(wo, snapshots_, snapshot_key, bytes);
    if (!st.ok())
      return failed("rocksdb snapshot write", st);
    rocksdb::FlushOptions fo;
    fo.wait = false;
    fo.allow_write_stall = true;
    db_->Flush(fo, snapshots_);
    return {};
  }

  status load_snapshot(std::optional<pb::Snapshot>& out) override {
    out.reset();
    std::string buf;
    auto st = db_->Get({}, snapshots_, snapshot_key, &buf);
    if (st.IsNotFound())
      return {};
    if (!st.ok())
      return status::fail("rocksdb snapshot read: " + st.ToString());
    pb::Snapshot s;
    if (!s.ParseFromString(buf))
      return status::fail("stored snapshot does not decode");
    out = std::move(s);
    return {};
  }

  status scan_while(uint64_t from,
                    const std::function<bool(const pb::LogEntry&)>& f) override {
    rocksdb::ReadOptions ro;
    ro.readahead_size = 2 << 20;  // a history is read front to back
    std::unique_ptr<rocksdb::Iterator> it{db_->NewIterator(ro)};
    for (it->Seek(log_key(from)); it->Valid(); it->Next()) {
      auto k = it->key();
      if (k.size() != 9 || k[0] != 'l')
        break;
      pb::LogEntry e;
      auto idx = key_index(k);
      if (!e.ParseFromArray(it->value().data(),
                            static_cast<int>(it->value().size()))
          || e.index() != idx)
        return status::fail("log entry " + std::to_string(idx)
                            + " does not decode");
      if (!f(e))
        return {};
    }
    if (!it->status().ok())
      return status::fail("rocksdb scan: " + it->status().ToString());
    return {};
  }

  uint64_t last_index() const override { return last_; }

  status archived(const std::string& id,
                  std::optional<pb::SessionRecord>& out) override {
    out.reset();
    std::string buf;
    auto st = db_->Get({}, archive_, id, &buf);
    if (st.IsNotFound())
      return {};
    if (!st.ok())
      return status::fail("rocksdb archive read: " + st.ToString());
    return decode_archived(buf, id, out);
  }

  status put_meta(const std::string& key, const std::string& value,
                  bool sync) override {
    if (auto s = check_space(); !s.ok())
      return s;
    rocksdb::WriteOptions wo;
    wo.sync = sync;
    auto st = db_->Put(wo, meta_key(key), value);
    return st.ok() ? status{} : failed("rocksdb write", st);
  }
  status erase_meta(const std::string& key, bool sync) override {
    if (auto s = check_space(); !s.ok())  // a delete is a write too
      return s;
    rocksdb::WriteOptions wo;
    wo.sync = sync;
    auto st = db_->Delete(wo, meta_key(key));
    return st.ok() ? status{} : failed("rocksdb write", st);
  }
  status scan_meta(const std::string& prefix,
                   const std::function<bool(const std::string&,
                                            const std::string&)>& f) override {
    std::unique_ptr<rocksdb::Iterator> it{db_->NewIterator({})};
    auto from = meta_key(prefix);
    for (it->Seek(from); it->Valid() && it->key().starts_with(from); it->Next())
      if (!f(it->key().ToString().substr(1), it->value().ToString()))
        break;
    if (!it->status().ok())
      return status::fail("rocksdb meta scan: " + it->status().ToString());
    return {};
  }

  status scan_archive(
    int64_t since,
    const std::function<bool(const pb::SessionRecord&)>& f) override {
    return scan_archive_after(since, "", f);
  }
  status scan_archive_after(
    int64_t since, const std::string& after_id,
    const std::function<bool(const pb::SessionRecord&)>& f) override {
    std::unique_ptr<rocksdb::Iterator> it{db_->NewIterator({}, ended_)};
    auto from = ended_key(since, after_id);
    for (it->Seek(from); it->Valid(); it->Next()) {
      auto k = it->key();
      if (!after_id.empty() && k == rocksdb::Slice{from})
        continue;  // the last record of the page before
      if (k.size() < 8)
        return status::fail("archive time index holds a short key");
      auto id = k.ToString().substr(8);
      std::optional<pb::SessionRecord> r;
      if (auto s = archived(id, r); !s.ok())
        return s;
      if (!r)
        return status::fail("archive time index names session " + id
                            + " which is not archived");
      if (!f(*r))
        return {};
    }
    if (!it->status().ok())
      return status::fail("rocksdb archive scan: " + it->status().ToString());
    return {};
  }

private:
  /// Writes stop while the disk has less than store_min_free_bytes free:
  /// RocksDB 7.8 as Debian builds it asserts (aborts the process) when a
  /// synced write meets a full disk, instead of returning the error. The
  /// caller gets a clear one, and nothing is written.
  status check_space() {
    struct statvfs v;
    if (::statvfs(db_->GetName().c_str(), &v) != 0)
      return {};  // cannot tell: let RocksDB try
    auto free = static_cast<uint64_t>(v.f_bavail) * v.f_frsize;
    if (free >= store_min_free_bytes)
      return {};
    broken_ = true;
    return status::fail("disk full: " + std::to_string(free >> 20) + " MB free in "
                        + db_->GetName() + " (writes stop below "
                        + std::to_string(store_min_free_bytes >> 20) + " MB)");
  }

  /// Each record under its id in `archive`, and its time key in `ended`.
  void add_archived(rocksdb::WriteBatch& batch,
                    const std::vector<pb::SessionRecord>& archived,
                    std::string& buf) {
    for (auto& r : archived) {
      buf.clear();
      r.SerializeToString(&buf);
      batch.Put(archive_, r.id(), buf);
      batch.Put(ended_, ended_key(r.ended_at(), r.id()), rocksdb::Slice{});
    }
  }

  /// Notes a failed write; returns its status.
  status failed(const std::string& what, const rocksdb::Status& st) {
    broken_ = true;
    return status::fail(what + ": " + st.ToString());
  }

  std::unique_ptr<rocksdb::DB> db_;
  rocksdb::ColumnFamilyHandle* snapshots_;
  rocksdb::ColumnFamilyHandle* archive_;
  rocksdb::ColumnFamilyHandle* ended_;
  std::shared_ptr<activity_counter> activity_;
  const bool read_only_ = false;  // nothing is written, nor flushed at close
  uint64_t last_ = 0;
  std::atomic<bool> broken_{false};
};

} // namespace

status store::scan_archive_after(
  int64_t since, const std::string& after_id,
  const std::function<bool(const pb::SessionRecord&)>& f) {
  return scan_archive(since, [&](const pb::SessionRecord& r) {
    if (r.ended_at() == since && r.id() <= after_id)
      return true;
    return f(r);
  });
}

status store::put_meta(const std::string&, const std::string&, bool) {
  return status::fail("this store keeps no metadata");
}
status store::archive_with_meta(const std::vector<pb::SessionRecord>& archived,
                                const std::string& key,
                                const std::string& value, bool sync) {
  if (!archived.empty())
    if (auto s = append({}, archived, sync); !s.ok())
      return s;
  return put_meta(key, value, sync);
}
status store::erase_meta(const std::string&, bool) {
  return status::fail("this store keeps no metadata");
}
status store::scan_meta(
  const std::string&,
  const std::function<bool(const std::string&, const std::string&)>&) {
  return status::fail("this store keeps no metadata");
}

struct snapshot_writer::impl {
  std::shared_ptr<store> st;
  std::mutex mutex;
  std::condition_variable cv;
  std::function<encoded_snapshot()> waiting;
  bool working = false;  // one taken and not written yet
  bool stopping = false;
  uint64_t written = 0;
  std::string error;
  std::thread thread;

  void run() {
    std::unique_lock<std::mutex> lock{mutex};
    for (;;) {
      cv.wait(lock, [&] { return waiting || stopping; });
      if (!waiting)
        return;
      auto make = std::move(waiting);
      waiting = nullptr;
      working = true;
      lock.unlock();
      auto snap = make();
      make = nullptr;  // what it held (a frozen copy) is released first
      auto s = st->save_snapshot_bytes(snap.last_index, std::move(snap.bytes));
      lock.lock();
      working = false;
      if (s.ok()) {
        ++written;
      } else {
        error = s.error;
        log("storage")->error("snapshot failed (log still complete): {}",
                              s.error);
      }
    }
  }
};

snapshot_writer::snapshot_writer(std::shared_ptr<store> st)
  : impl_(std::make_unique<impl>()) {
  impl_->st = std::move(st);
  impl_->thread = std::thread([this] { impl_->run(); });
}

snapshot_writer::~snapshot_writer() {
  {
    std::lock_guard<std::mutex> lock{impl_->mutex};
    impl_->stopping = true;
  }
  impl_->cv.notify_one();
  impl_->thread.join();
}

void snapshot_writer::submit(pb::Snapshot snap) {
  auto p = std::make_shared<pb::Snapshot>(std::move(snap));
  submit([p] { return encoded_snapshot{p->last_index(), p->SerializeAsString()}; });
}

void snapshot_writer::submit(std::function<encoded_snapshot()> make) {
  {
    std::lock_guard<std::mutex> lock{impl_->mutex};
    impl_->waiting = std::move(make);  // a newer one replaces an unwritten one
  }
  impl_->cv.notify_one();
}

bool snapshot_writer::busy() const {
  std::lock_guard<std::mutex> lock{impl_->mutex};
  return impl_->working || impl_->waiting;
}

uint64_t snapshot_writer::written() const {
  std::lock_guard<std::mutex> lock{impl_->mutex};
  return impl_->written;
}

std::string snapshot_writer::last_error() const {
  std::lock_guard<std::mutex> lock{impl_->mutex};
  return impl_->error;
}

uint64_t power_cut(store& st, bool tear_last) {
  auto* at = &st;
  while (auto* f = dynamic_cast<forwarding_store*>(at))
    at = &f->inner();
  if (auto* m = dynamic_cast<memory_store*>(at))
    return m->cut_power(tear_last);
  return 0;
}

std::unique_ptr<store> make_memory_store() {
  return std::make_unique<memory_store>();
}

/// Format 3 as first written kept the snapshot in the default column
/// family: it moves to its own, durably, before the store is used.
rocksdb::Status move_old_snapshot(rocksdb::DB& db,
                                  rocksdb::ColumnFamilyHandle* snapshots) {
  std::string old;
  auto s = db.Get({}, snapshot_key, &old);
  if (s.IsNotFound())
    return rocksdb::Status::OK();
  if (!s.ok())
    return s;
  rocksdb::WriteBatch batch;
  batch.Put(snapshots, snapshot_key, old);
  batch.Delete(snapshot_key);
  rocksdb::WriteOptions wo;
  wo.sync = true;
  return db.Write(wo, &batch);
}

/// Format 3 kept the archive in the default family ('a' + id, 't' +
/// ended_at + id): its keys move to their own families, in batches that
/// each move some keys whole (put there, deleted here), so a crash in the
/// middle leaves every record in one place and the next open goes on.
rocksdb::Status migrate_archive(rocksdb::DB& db,
                                rocksdb::ColumnFamilyHandle* archive,
                                rocksdb::ColumnFamilyHandle* ended) {
  for (auto [prefix, to] : {std::pair{'a', archive}, std::pair{'t', ended}}) {
    const std::string from(1, prefix);
    // The iterator reads the database as it was when it was made: the
    // batches written meanwhile do not disturb it.
    std::unique_ptr<rocksdb::Iterator> it{db.NewIterator({})};
    rocksdb::WriteBatch batch;
    for (it->Seek(from); it->Valid() && it->key().starts_with(from); it->Next()) {
      auto k = it->key();
      batch.Put(to, rocksdb::Slice{k.data() + 1, k.size() - 1}, it->value());
      batch.Delete(k);
      if (batch.Count() >= 8192) {
        if (auto s = db.Write({}, &batch); !s.ok())
          return s;
        batch.Clear();
      }
    }
    if (!it->status().ok())
      return it->status();
    if (auto s = db.Write({}, &batch); !s.ok())
      return s;
  }
  return rocksdb::Status::OK();
}

namespace {

/// The options and column families of a store, for either way of opening.
struct store_layout {
  rocksdb::Options opts;
  std::shared_ptr<rocksdb_store::activity_counter> activity;
  std::vector<rocksdb::ColumnFamilyDescriptor> families;
};

store_layout layout_of_store() {
  store_layout l;
  auto& opts = l.opts;
  opts.create_if_missing = true;
  opts.IncreaseParallelism(2);
  // No preallocation. RocksDB would fallocate every new write-ahead log
  // file 1.1 x a memtable ahead (73.8 MB), on the first write to it: the
  // group commit right after each snapshot (whose flush starts a new log)
  // then stopped for 25-38 ms on a tmpfs, which fills those pages; on ext4
  // neither way is faster beyond the noise (BENCHMARKS.md, "The tail
  // without a disk: write-ahead log preallocation").
  opts.allow_fallocate = false;
  l.activity = std::make_shared<rocksdb_store::activity_counter>();
  opts.listeners.push_back(l.activity);
  opts.create_missing_column_families = true;
  // The whole log and archive stay on disk, so their files' index and
  // filter blocks grow with the history. Held by the table readers (the
  // default), they would all stay in memory; here they live in one bounded
  // block cache (the store's bound, shared by every family) instead,
  // partitioned so that a lookup loads the one partition it needs, with
  // the newest files' (level 0) kept pinned.
  auto cache = rocksdb::NewLRUCache(store_block_cache_bytes);
  auto cached_table = [&](bool bloom) {
    rocksdb::BlockBasedTableOptions table;
    table.block_cache = cache;
    table.cache_index_and_filter_blocks = true;
    table.cache_index_and_filter_blocks_with_high_priority = true;
    table.pin_l0_filter_and_index_blocks_in_cache = true;
    table.index_type = rocksdb::BlockBasedTableOptions::kTwoLevelIndexSearch;
    table.pin_top_level_index_and_filter = true;
    if (bloom) {
      table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
      table.partition_filters = true;
    }
    return rocksdb::NewBlockBasedTableFactory(table);
  };
  // The log (and the few metadata keys) is only scanned: no filter.
  opts.table_factory.reset(cached_table(false));
  // Every submission looks its id up in the archive; almost all are new,
  // and a Bloom filter answers "not there" without reading a block. The
  // memtable gets one of whole keys too: the lookup of a new id then skips
  // the skip-list search of the recent writes.
  rocksdb::ColumnFamilyOptions archive_opts;
  archive_opts.table_factory.reset(cached_table(true));
  archive_opts.memtable_whole_key_filtering = true;
  archive_opts.memtable_prefix_bloom_size_ratio = 0.02;
  archive_opts.write_buffer_size = size_t{32} << 20;
  // The time index is only scanned, and its keys are short.
  rocksdb::ColumnFamilyOptions ended_opts;
  ended_opts.table_factory.reset(cached_table(false));
  ended_opts.write_buffer_size = size_t{8} << 20;
  // A snapshot is one key, rewritten whole: no filter, and compaction keeps
  // its latest version only.
  rocksdb::ColumnFamilyOptions snap_opts;
  rocksdb::BlockBasedTableOptions snap_table;
  snap_table.block_cache = cache;
  snap_opts.table_factory.reset(rocksdb::NewBlockBasedTableFactory(snap_table));
  l.families = {{rocksdb::kDefaultColumnFamilyName, opts},
                {snapshot_family, snap_opts},
                {archive_family, archive_opts},
                {ended_family, ended_opts}};
  return l;
}

} // namespace

namespace {

/// A database opened with the store's families. Opening hands out a handle
/// of the default family too: the store uses the database's own
/// (DefaultColumnFamily()). The other handles go to the store, which
/// destroys them before closing, or are destroyed by give_up().
struct opened_db {
  std::unique_ptr<rocksdb::DB> db;
  rocksdb::ColumnFamilyHandle* snapshots = nullptr;
  rocksdb::ColumnFamilyHandle* archive = nullptr;
  rocksdb::ColumnFamilyHandle* ended = nullptr;

  std::nullptr_t give_up(status& st, status failure) {
    for (auto* h : {snapshots, archive, ended})
      db->DestroyColumnFamilyHandle(h);
    st = std::move(failure);
    return nullptr;
  }
};

std::optional<opened_db> open_db(const std::string& dir, store_layout& l,
                                 bool read_only, status& st) {
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* db = nullptr;
  auto s = read_only
             ? rocksdb::DB::OpenForReadOnly(l.opts, dir, l.families, &handles, &db)
             : rocksdb::DB::Open(l.opts, dir, l.families, &handles, &db);
  if (!s.ok()) {
    st = status::fail("cannot open store in " + dir + ": " + s.ToString());
    return std::nullopt;
  }
  opened_db o;
  o.db.reset(db);
  o.db->DestroyColumnFamilyHandle(handles[0]);
  o.snapshots = handles[1];
  o.archive = handles[2];
  o.ended = handles[3];
  return o;
}

/// Why a store of format `format` (none: no marker in a store that holds
/// entries) is refused.
status format_refused(const std::string& dir, const std::optional<std::string>& format) {
  if (!format)
    return status::fail(
      "store in " + dir + " was written by an earlier nodepool (no format "
      "marker; this one reads format " + format_version + " and would "
      "replay that history differently): use the version that wrote it, "
      "or a new data directory");
  return status::fail(
    "store in " + dir + " has format '" + format->substr(0, 32)
    + "', this nodepool reads format " + format_version
    + (*format == "2" ? " (format 2 kept ended sessions in the pool; this "
                        "one archives them, and would replay that history "
                        "differently)"
                      : "")
    + ": use the version that wrote it, or a new data directory");
}

/// A database without this nodepool's column families is read first, to
/// read only: opened to write, it would get them (they are created when
/// missing) before its format marker refused it, and the version that
/// wrote it could no longer open it. Format 3 (migrated on opening) and
/// a database never written pass.
status check_before_adding_families(const std::string& dir, store_layout& l) {
  if (!std::filesystem::exists(std::filesystem::path(dir) / "CURRENT"))
    return {};
  std::vector<std::string> existing;
  if (!rocksdb::DB::ListColumnFamilies(l.opts, dir, &existing).ok())
    return {};  // the open says what is wrong
  bool all = std::all_of(l.families.begin(), l.families.end(), [&](auto& f) {
    return std::find(existing.begin(), existing.end(), f.name) != existing.end();
  });
  if (all)
    return {};
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  auto s = rocksdb::DB::OpenForReadOnly(l.opts, dir, {l.families[0]}, &handles, &raw);
  if (!s.ok())
    return status::fail("cannot open store in " + dir + ": " + s.ToString());
  std::unique_ptr<rocksdb::DB> db{raw};
  std::string format;
  s = db->Get({}, format_key, &format);
  bool empty = false;
  {
    std::unique_ptr<rocksdb::Iterator> it{db->NewIterator({})};
    it->SeekToFirst();
    empty = !it->Valid();
  }
  for (auto* h : handles)
    db->DestroyColumnFamilyHandle(h);
  if (s.ok())
    return format == "3" || format == format_version
             ? status{}
             : format_refused(dir, format);
  if (s.IsNotFound())
    return empty ? status{} : format_refused(dir, std::nullopt);
  return status::fail("cannot read the store in " + dir + ": " + s.ToString());
}

} // namespace

std::unique_ptr<store> open_rocksdb_store(const std::string& dir, status& st) {
  auto layout = layout_of_store();
  if (auto c = check_before_adding_families(dir, layout); !c.ok()) {
    st = std::move(c);
    return nullptr;
  }
  auto o = open_db(dir, layout, false, st);
  if (!o)
    return nullptr;
  auto& owned = o->db;
  auto* db = owned.get();
  auto *snapshots = o->snapshots, *archive = o->archive, *ended = o->ended;
  auto give_up = [&](status failure) { return o->give_up(st, std::move(failure)); };
  rocksdb::Status s;
  std::string format;
  s = db->Get({}, format_key, &format);
  rocksdb::WriteOptions synced;
  synced.sync = true;
  if (s.IsNotFound()) {
    std::unique_ptr<rocksdb::Iterator> it{db->NewIterator({})};
    it->SeekToFirst();
    if (it->Valid())
      return give_up(format_refused(dir, std::nullopt));
    s = db->Put(synced, format_key, format_version);
  } else if (s.ok() && format == "3") {
    // The same history with the archive beside the log: moved, then
    // marked, so that a crash before the mark moves the rest next time.
    s = move_old_snapshot(*owned, snapshots);
    if (s.ok())
      s = migrate_archive(*owned, archive, ended);
    if (s.ok())
      s = db->Put(synced, format_key, format_version);
    if (s.ok())
      log("storage")->info("store in {}: archive moved to its own column "
                           "families (format 3 -> {})", dir, format_version);
  } else if (s.ok() && format != format_version) {
    return give_up(format_refused(dir, format));
  }
  if (!s.ok())
    return give_up(
      status::fail("cannot open store in " + dir + ": " + s.ToString()));
  st = {};
  return std::make_unique<rocksdb_store>(owned.release(), snapshots, archive,
                                         ended, std::move(layout.activity));
}

std::unique_ptr<store> open_rocksdb_store_read_only(const std::string& dir,
                                                    status& st) {
  // Nothing here may change the directory: no store is created where
  // there is none, nothing migrates, and the lock is not taken (a running
  // oracle may hold it; this reads what it had written when opened).
  if (!std::filesystem::exists(std::filesystem::path(dir) / "CURRENT")) {
    st = status::fail("no nodepool store in " + dir
                      + " (no RocksDB database there)");
    return nullptr;
  }
  auto layout = layout_of_store();
  layout.opts.create_if_missing = false;
  layout.opts.create_missing_column_families = false;
  std::vector<std::string> existing;
  if (auto s = rocksdb::DB::ListColumnFamilies(layout.opts, dir, &existing);
      !s.ok()) {
    st = status::fail("cannot read the store in " + dir + ": " + s.ToString());
    return nullptr;
  }
  auto all = [&] {
    for (auto& f : layout.families)
      if (std::find(existing.begin(), existing.end(), f.name) == existing.end())
        return false;
    return true;
  }();
  if (!all) {
    // An older layout (format 3 kept the archive in the log's family).
    st = status::fail(
      "store in " + dir + " has an older layout (format 3 or earlier); this "
      "command only reads: start `nodepool oracle --data-dir " + dir
      + "` once to move it to format " + format_version);
    return nullptr;
  }
  auto o = open_db(dir, layout, true, st);
  if (!o)
    return nullptr;
  std::string format;
  auto s = o->db->Get({}, format_key, &format);
  if (!s.ok() || format != format_version)
    return o->give_up(
      st, status::fail("store in " + dir + " has format '"
                       + (s.ok() ? format.substr(0, 32) : std::string{"none"})
                       + "', this nodepool reads format " + format_version
                       + ": use the version that wrote it"));
  st = {};
  return std::make_unique<rocksdb_store>(o->db.release(), o->snapshots,
                                         o->archive, o->ended,
                                         std::move(layout.activity),
                                         /*read_only=*/true);
}

} // namespace nodepool
