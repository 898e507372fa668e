#pragma once

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

/// Durable home of the command log and of PoolState snapshots.
///
/// The log is append-only and keyed by entry index; a snapshot records the
/// index of the last entry it includes, so restart = snapshot + the entries
/// after it. The whole log is kept so `nodepool check` can verify the full
/// history.
class store {
public:
  virtual ~store() = default;
  /// Writes all entries in one atomic batch; with `sync`, returns only once
  /// they are on stable storage (the group commit of the supervisor).
  virtual status append(const std::vector<pb::LogEntry>& entries, bool sync) = 0;
  virtual status save_snapshot(const pb::Snapshot& snap) = 0;
  /// No snapshot yet is not an error: the result is then empty.
  virtual status load_snapshot(std::optional<pb::Snapshot>& out) = 0;
  /// Calls `f` for each entry with index >= `from`, in order. An entry that
  /// does not decode stops the scan with an error naming its index.
  virtual status scan(uint64_t from,
                      const std::function<void(const pb::LogEntry&)>& f) = 0;
  /// Index of the last appended entry, 0 for an empty log.
  virtual uint64_t last_index() const = 0;
};

/// In-memory twin for tests and simulation. Keeps encoded bytes, so the same
/// decoding paths run as with RocksDB.
std::unique_ptr<store> make_memory_store();

/// RocksDB store in directory `dir` (created if missing).
std::unique_ptr<store> open_rocksdb_store(const std::string& dir, status& st);

} // namespace nodepool
