#include "storage.hpp"

#include <map>

#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>

namespace nodepool {

namespace {

constexpr char snapshot_key[] = "snapshot";

/// What the stored bytes mean, and which nodepool replays them the same.
/// Format 2: nodes are picked from the ordered pool index (pool_key); a
/// format-1 history would replay to different picks.
constexpr char format_key[] = "format";
constexpr char format_version[] = "2";

/// Log keys sort by index: 'l' followed by the index in big-endian.
std::string log_key(uint64_t index) {
  std::string k(9, '\0');
  k[0] = 'l';
  for (int i = 0; i < 8; ++i)
    k[8 - i] = static_cast<char>((index >> (8 * i)) & 0xff);
  return k;
}

uint64_t key_index(const rocksdb::Slice& k) {
  uint64_t x = 0;
  for (size_t i = 1; i < 9 && i < k.size(); ++i)
    x = (x << 8) | static_cast<uint8_t>(k[i]);
  return x;
}

class memory_store : public store {
public:
  status append(const std::vector<pb::LogEntry>& entries, bool) override {
    // All or nothing, like the RocksDB write batch: check the whole batch
    // before writing any of it.
    auto expect = last_ + 1;
    for (auto& e : entries)
      if (e.index() != expect++)
        return status::fail("log gap: appending " + std::to_string(e.index())
                            + " after " + std::to_string(expect - 2));
    for (auto& e : entries) {
      log_[e.index()] = e.SerializeAsString();
      last_ = e.index();
    }
    return {};
  }
  status save_snapshot(const pb::Snapshot& snap) override {
    snapshot_ = snap.SerializeAsString();
    return {};
  }
  status load_snapshot(std::optional<pb::Snapshot>& out) override {
    out.reset();
    if (snapshot_.empty())
      return {};
    pb::Snapshot s;
    if (!s.ParseFromString(snapshot_))
      return status::fail("snapshot does not decode");
    out = std::move(s);
    return {};
  }
  status scan(uint64_t from,
              const std::function<void(const pb::LogEntry&)>& f) override {
    for (auto i = log_.lower_bound(from); i != log_.end(); ++i) {
      pb::LogEntry e;
      if (!e.ParseFromString(i->second) || e.index() != i->first)
        return status::fail("log entry " + std::to_string(i->first)
                            + " does not decode");
      f(e);
    }
    return {};
  }
  uint64_t last_index() const override { return last_; }

private:
  std::map<uint64_t, std::string> log_;
  std::string snapshot_;
  uint64_t last_ = 0;
};

class rocksdb_store : public store {
public:
  explicit rocksdb_store(rocksdb::DB* db) : db_(db) {
    std::unique_ptr<rocksdb::Iterator> it{db_->NewIterator({})};
    it->SeekForPrev(log_key(UINT64_MAX));
    if (it->Valid() && it->key().size() == 9 && it->key()[0] == 'l')
      last_ = key_index(it->key());
  }

  /// A clean close puts everything on disk, including a snapshot whose
  /// background flush has not finished yet (snapshots skip the WAL).
  ~rocksdb_store() override {
    rocksdb::FlushOptions fo;
    fo.wait = true;
    db_->Flush(fo);
  }

  status append(const std::vector<pb::LogEntry>& entries, bool sync) override {
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
    rocksdb::WriteOptions wo;
    wo.sync = sync;
    auto st = db_->Write(wo, &batch);
    if (!st.ok())
      return status::fail("rocksdb write: " + st.ToString());
    if (!entries.empty())
      last_ = entries.back().index();
    return {};
  }

  status save_snapshot(const pb::Snapshot& snap) override {
    // A snapshot only shortens the replay: the whole log is kept, and every
    // entry the snapshot includes was synced before it was taken. So it
    // skips the write-ahead log (whose fsync at the next group commit would
    // otherwise carry megabytes of snapshot) and reaches disk with a
    // memtable flush started here in the background; a crash before that
    // recovers from the previous snapshot and replays more of the log.
    rocksdb::WriteOptions wo;
    wo.disableWAL = true;
    auto st = db_->Put(wo, snapshot_key, snap.SerializeAsString());
    if (!st.ok())
      return status::fail("rocksdb snapshot write: " + st.ToString());
    rocksdb::FlushOptions fo;
    fo.wait = false;
    fo.allow_write_stall = true;
    db_->Flush(fo);
    return {};
  }

  status load_snapshot(std::optional<pb::Snapshot>& out) override {
    out.reset();
    std::string buf;
    auto st = db_->Get({}, snapshot_key, &buf);
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

  status scan(uint64_t from,
              const std::function<void(const pb::LogEntry&)>& f) override {
    std::unique_ptr<rocksdb::Iterator> it{db_->NewIterator({})};
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
      f(e);
    }
    if (!it->status().ok())
      return status::fail("rocksdb scan: " + it->status().ToString());
    return {};
  }

  uint64_t last_index() const override { return last_; }

private:
  std::unique_ptr<rocksdb::DB> db_;
  uint64_t last_ = 0;
};

} // namespace

std::unique_ptr<store> make_memory_store() {
  return std::make_unique<memory_store>();
}

std::unique_ptr<store> open_rocksdb_store(const std::string& dir, status& st) {
  rocksdb::Options opts;
  opts.create_if_missing = true;
  opts.IncreaseParallelism(2);
  rocksdb::DB* db = nullptr;
  auto s = rocksdb::DB::Open(opts, dir, &db);
  if (!s.ok()) {
    st = status::fail("cannot open store in " + dir + ": " + s.ToString());
    return nullptr;
  }
  std::unique_ptr<rocksdb::DB> owned{db};
  std::string format;
  s = db->Get({}, format_key, &format);
  if (s.IsNotFound()) {
    std::unique_ptr<rocksdb::Iterator> it{db->NewIterator({})};
    it->SeekToFirst();
    if (it->Valid()) {
      st = status::fail(
        "store in " + dir + " was written by an earlier nodepool (no format "
        "marker; this one reads format " + format_version + " and would "
        "replay that history differently): use the version that wrote it, "
        "or a new data directory");
      return nullptr;
    }
    rocksdb::WriteOptions wo;
    wo.sync = true;
    s = db->Put(wo, format_key, format_version);
  } else if (s.ok() && format != format_version) {
    st = status::fail("store in " + dir + " has format '" + format.substr(0, 32)
                      + "', this nodepool reads format " + format_version);
    return nullptr;
  }
  if (!s.ok()) {
    st = status::fail("cannot open store in " + dir + ": " + s.ToString());
    return nullptr;
  }
  st = {};
  return std::make_unique<rocksdb_store>(owned.release());
}

} // namespace nodepool
