#pragma once

// A cluster member's archive of ended sessions. Every member writes the
// sessions its committed entries end to its own RocksDB archive. One that
// catches up by installing a snapshot skips the entries that ended some;
// their records are on the peers' archives. So the archive keeps, next to
// the records:
//   - `archive/position`: the pool index and time up to which it holds
//     every ended session, written (not synced) after each applied batch:
//     RocksDB keeps writes in order, so after a crash or a power cut the
//     position is never ahead of the records. Before raft takes a
//     snapshot (and may drop the entries it covers) the position is
//     written synced, so the records those entries archived survive a
//     power cut;
//   - `archive/gap/<from>`: each gap a snapshot install left, recorded
//     durably before the install is acknowledged and erased once the
//     records were copied from a peer whose archive is complete past it.
// A restarting member starts its replica at the recorded position, so it
// neither forgets a gap nor copies what it has.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "replica.hpp"
#include "storage.hpp"

namespace nodepool {

/// A replica whose ended sessions go to `st`'s archive and whose gaps are
/// recorded there. `error` receives a storage failure (an oracle then
/// stops: a restart applies the entries again and rewrites what failed).
std::shared_ptr<replica> member_replica(
  std::shared_ptr<store> st, bool check,
  std::function<void(const std::string&)> error);

struct pending_gap {
  std::string key;
  replica::archive_gap gap;
};

/// The gaps not yet copied, oldest first.
status pending_gaps(store& st, std::vector<pending_gap>& out);

/// The records of a gap are in the archive (written synced): forget it.
status gap_filled(store& st, const pending_gap& g);

/// Records a gap (written synced): what a snapshot install does.
status record_gap(store& st, const replica::archive_gap& g);

/// How far this member's archive is complete (ArchiveAnswer's
/// complete_through): up to `archived_index` unless a gap is pending below.
uint64_t archive_complete_through(store& st, uint64_t archived_index);

/// Moves whenever a gap is recorded or forgotten, by any member in this
/// process: a reader that keeps what pending_gaps() said reads it again
/// when this changed since (read this first, then the gaps).
uint64_t archive_gaps_generation();

} // namespace nodepool
