#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "nodepool.pb.h"

namespace nodepool {

/// Outcome of a storage call: empty `error` means success. Storage errors are
/// turned into this at the boundary so that callers never see RocksDB types.
struct status {
  std::string error;
  bool ok() const { return error.empty(); }
  static status fail(std::string what) { return status{std::move(what)}; }
};

/// A RocksDB store refuses writes while its disk has less free space than
/// this (see storage.cpp: a full disk must be an error, not an abort).
constexpr uint64_t store_min_free_bytes = uint64_t{16} << 20;

/// RocksDB's block cache, which also holds the index and filter blocks of
/// every file of the log and archive: the store's memory beyond its
/// memtables stays within this, however long the history.
constexpr size_t store_block_cache_bytes = size_t{64} << 20;

/// What a store's engine did in the background: memtable flushes (of the
/// log and archive, and of snapshots) and compactions.
struct store_activity {
  uint64_t log_flushes = 0;
  uint64_t snapshot_flushes = 0;
  uint64_t compactions = 0;
  uint64_t compaction_bytes_written = 0;
};

/// RocksDB's memory: memtables, table readers (what each open file keeps
/// outside the block cache) and the block cache.
struct store_memory {
  uint64_t memtables = 0;
  uint64_t table_readers = 0;
  uint64_t block_cache = 0;
  uint64_t total() const { return memtables + table_readers + block_cache; }
};

/// Durable home of the command log, of PoolState snapshots and of the
/// archive of ended sessions.
///
/// The log is append-only and keyed by entry index; a snapshot records the
/// index of the last entry it includes, so restart = snapshot + the entries
/// after it. The whole log is kept so `nodepool check` can verify the full
/// history. A session that ends leaves PoolState; its final record is
/// written to the archive in the same atomic batch as the entry that ended
/// it, keyed by id, with a second key ordered by the time it ended.
class store {
public:
  virtual ~store() = default;
  /// Writes the entries and the archived records in one atomic batch; with
  /// `sync`, returns only once they are on stable storage (the group commit
  /// of the supervisor).
  virtual status append(const std::vector<pb::LogEntry>& entries,
                        const std::vector<pb::SessionRecord>& archived,
                        bool sync) = 0;
  status append(const std::vector<pb::LogEntry>& entries, bool sync) {
    return append(entries, {}, sync);
  }
  /// Stores an encoded snapshot (a pb::Snapshot's bytes) as of entry
  /// `last_index`, replacing the one before.
  virtual status save_snapshot_bytes(uint64_t last_index,
                                     std::string bytes) = 0;
  status save_snapshot(const pb::Snapshot& snap) {
    return save_snapshot_bytes(snap.last_index(), snap.SerializeAsString());
  }
  /// No snapshot yet is not an error: the result is then empty.
  virtual status load_snapshot(std::optional<pb::Snapshot>& out) = 0;
  /// Calls `f` for each entry with index >= `from`, in order, while it
  /// returns true. An entry that does not decode stops the scan with an
  /// error naming its index.
  virtual status scan_while(uint64_t from,
                            const std::function<bool(const pb::LogEntry&)>& f) = 0;
  status scan(uint64_t from, const std::function<void(const pb::LogEntry&)>& f) {
    return scan_while(from, [&](const pb::LogEntry& e) {
      f(e);
      return true;
    });
  }
  /// Index of the last appended entry, 0 for an empty log.
  virtual uint64_t last_index() const = 0;
  /// The archived record of session `id`; empty when it is not archived.
  virtual status archived(const std::string& id,
                          std::optional<pb::SessionRecord>& out) = 0;
  /// Calls `f` for each archived session that ended at or after `since`,
  /// in the order they ended (then by id), while it returns true.
  virtual status scan_archive(
    int64_t since, const std::function<bool(const pb::SessionRecord&)>& f) = 0;
  /// The same from just after (since, after_id): the next page of a scan
  /// whose last record ended at `since` with id `after_id`. The stores seek
  /// there; by default, the records before it are read and skipped.
  virtual status scan_archive_after(
    int64_t since, const std::string& after_id,
    const std::function<bool(const pb::SessionRecord&)>& f);
  /// Small named values kept next to the archive: a cluster member records
  /// how far its archive is complete, and the gaps a snapshot install left
  /// until it copied them from a peer. A store without them says so.
  virtual status put_meta(const std::string& key, const std::string& value,
                          bool sync);
  /// Archived records and one metadata key in one atomic write (a cluster
  /// member's archive and its position after a batch). By default the two
  /// writes one after the other, the records first.
  virtual status archive_with_meta(const std::vector<pb::SessionRecord>& archived,
                                   const std::string& key,
                                   const std::string& value, bool sync);
  virtual status erase_meta(const std::string& key, bool sync);
  /// Memory the store holds itself, in bytes; zeros for a store that does
  /// not know.
  virtual store_memory memory() const { return {}; }
  uint64_t memory_bytes() const { return memory().total(); }
  /// Background work so far (RocksDB's flushes and compactions); zeros for
  /// a store without any.
  virtual store_activity activity() const { return {}; }
  /// Calls `f(key, value)` for each key starting with `prefix`, in key
  /// order, while it returns true.
  virtual status scan_meta(
    const std::string& prefix,
    const std::function<bool(const std::string&, const std::string&)>& f);
};

/// A store that passes every call on to another: the base of the stores
/// that change or watch a few calls (the simulation's lossy disk, tests).
class forwarding_store : public store {
public:
  explicit forwarding_store(std::shared_ptr<store> inner) : inner_(std::move(inner)) {}
  /// The store it passes calls to (power_cut() reaches the one below).
  store& inner() const { return *inner_; }
  status append(const std::vector<pb::LogEntry>& entries,
                const std::vector<pb::SessionRecord>& archived, bool sync) override {
    return inner_->append(entries, archived, sync);
  }
  using store::append;
  status save_snapshot_bytes(uint64_t last_index, std::string bytes) override {
    return inner_->save_snapshot_bytes(last_index, std::move(bytes));
  }
  status load_snapshot(std::optional<pb::Snapshot>& out) override {
    return inner_->load_snapshot(out);
  }
  status scan_while(uint64_t from,
                    const std::function<bool(const pb::LogEntry&)>& f) override {
    return inner_->scan_while(from, f);
  }
  uint64_t last_index() const override { return inner_->last_index(); }
  status archived(const std::string& id,
                  std::optional<pb::SessionRecord>& out) override {
    return inner_->archived(id, out);
  }
  status scan_archive(int64_t since,
                      const std::function<bool(const pb::SessionRecord&)>& f) override {
    return inner_->scan_archive(since, f);
  }
  status scan_archive_after(
    int64_t since, const std::string& after_id,
    const std::function<bool(const pb::SessionRecord&)>& f) override {
    return inner_->scan_archive_after(since, after_id, f);
  }
  status put_meta(const std::string& key, const std::string& value,
                  bool sync) override {
    return inner_->put_meta(key, value, sync);
  }
  status archive_with_meta(const std::vector<pb::SessionRecord>& archived,
                           const std::string& key, const std::string& value,
                           bool sync) override {
    return inner_->archive_with_meta(archived, key, value, sync);
  }
  status erase_meta(const std::string& key, bool sync) override {
    return inner_->erase_meta(key, sync);
  }
  store_memory memory() const override { return inner_->memory(); }
  store_activity activity() const override { return inner_->activity(); }
  status scan_meta(const std::string& prefix,
                   const std::function<bool(const std::string&, const std::string&)>& f)
    override {
    return inner_->scan_meta(prefix, f);
  }

protected:
  std::shared_ptr<store> inner_;
};

/// A snapshot as stored: its bytes, and the entry it was taken at.
struct encoded_snapshot {
  uint64_t last_index = 0;
  std::string bytes;
};

/// Writes snapshots on a thread of its own, so that the thread applying
/// commands stops only to copy the live state. Holds at most one snapshot
/// waiting: a newer one replaces it (the log is complete, so a skipped
/// snapshot only makes a replay longer). The destructor writes what waits.
class snapshot_writer {
public:
  explicit snapshot_writer(std::shared_ptr<store> st);
  ~snapshot_writer();
  snapshot_writer(const snapshot_writer&) = delete;
  snapshot_writer& operator=(const snapshot_writer&) = delete;
  void submit(pb::Snapshot snap);
  /// A snapshot the writer's thread makes itself (the supervisor's: a
  /// frozen pool state checked and encoded), so that its owner does not
  /// wait for that either.
  void submit(std::function<encoded_snapshot()> make);
  /// Whether a snapshot submitted is not written yet (waiting, being made
  /// or being written).
  bool busy() const;
  /// Snapshots written so far, and the last error (empty if none).
  uint64_t written() const;
  std::string last_error() const;

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

/// In-memory twin for tests and simulation. Keeps encoded bytes, so the same
/// decoding paths run as with RocksDB. It honours `sync` as a disk does:
/// power_cut() loses every batch appended since the last synced one (of
/// the memory store itself, or the one under forwarding stores).
std::unique_ptr<store> make_memory_store();
/// Simulates a power cut on a store made by make_memory_store(): every
/// batch written without sync since the last synced batch is lost. With
/// `tear_last`, the last batch is lost too, synced or not: the cut came
/// while it was being written (RocksDB drops a torn write batch whole at
/// recovery). Only honest while nobody has been told of that batch. Returns
/// the number of log entries lost (0 for any other kind of store).
uint64_t power_cut(store& st, bool tear_last = false);

/// RocksDB store in directory `dir` (created if missing).
std::unique_ptr<store> open_rocksdb_store(const std::string& dir, status& st);
/// The same store opened to read only, for the commands that inspect a data
/// directory (`check`, `sessions`): creates nothing where there is no
/// store, migrates nothing, takes no lock, writes nothing.
std::unique_ptr<store> open_rocksdb_store_read_only(const std::string& dir,
                                                    status& st);

} // namespace nodepool
