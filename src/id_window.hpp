#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace nodepool {

/// The ids of sessions that ended recently: PoolState refuses a resubmitted
/// id while it is here, so a client's retry across a restart or a failover
/// is refused as `duplicate_session` without looking into the archive
/// (whose write may still be in flight). Older ids are the oracle's to look
/// up in the archive before it proposes a submission.
///
/// Memory is bounded by design, at most 32 bytes per id held: an id is kept
/// as a 64-bit fingerprint in an open-addressing table (linear probing,
/// load at most 3/4, so at most 8 / (3/8) = 21.4 bytes per id right after
/// the table doubles) and once more in a FIFO of fingerprints (8 bytes per
/// id, in chunks of 4 KB). Expiry times are kept per second, not per id: ids expire in the
/// order they were added, so a run-length list of (second, how many)
/// suffices, and it never holds more entries than the retention has
/// seconds. The table is split into 64 shards by the fingerprint's top
/// bits, each growing on its own: a window of millions of ids never stops
/// the pool for a rehash of all of them.
///
/// A fingerprint collision (two ids with the same 64-bit hash) makes the
/// later id look like a duplicate; with the window's few hundred thousand
/// ids that has odds below 1 in 10^8 per submission.
///
/// Pure and deterministic like PoolState, which owns it.
class id_window {
public:
  /// Stable across builds and processes: snapshots hold fingerprints.
  static uint64_t fingerprint(const std::string& id);

  /// Adds an id that stays until `expires` (milliseconds; rounded up to a
  /// whole second). Expiry times must not decrease from one add to the next.
  void add(const std::string& id, int64_t expires);
  bool contains(const std::string& id) const;
  /// Drops every id whose expiry time is at or before `now`.
  void expire(int64_t now);

  size_t size() const { return size_; }
  /// Bytes held for the ids (table + FIFO + expiry list), for the bound.
  size_t memory_bytes() const;

  /// Snapshot form: the fingerprints in FIFO order, and the run-length
  /// expiry list as (second, count) pairs.
  struct image {
    std::vector<uint64_t> fingerprints;
    std::vector<int64_t> expiry_seconds;
    std::vector<uint64_t> expiry_counts;
  };
  image save() const { return freeze().to_image(); }

  /// Fingerprints are kept in fixed chunks, and a full chunk never changes
  /// again: a frozen window shares them and copies only the chunk being
  /// filled and the expiry list (at most one entry per second of the
  /// retention). Freezing costs O(ids / chunk_ids) pointer copies, so that
  /// the thread that owns the window stops for a snapshot no longer than
  /// that; turning the frozen window into an image or a message can then
  /// happen on any thread, while the window goes on.
  static constexpr size_t chunk_ids = 512;
  using chunk = std::array<uint64_t, chunk_ids>;
  struct frozen {
    std::vector<std::shared_ptr<const chunk>> full;  // oldest first
    size_t first = 0;             // ids of full.front() that expired before
    std::vector<uint64_t> tail;   // the chunk being filled, copied
    std::vector<int64_t> expiry_seconds;
    std::vector<uint64_t> expiry_counts;
    size_t size() const;
    /// Calls f(pointer, count) for each run of fingerprints, oldest first.
    void for_each_span(const std::function<void(const uint64_t*, size_t)>& f) const;
    image to_image() const;
  };
  frozen freeze() const;
  /// Replaces the content; returns an error text (and keeps nothing) when
  /// the image is inconsistent.
  std::string load(const image& img);
  void clear();

private:
  /// One open-addressing table; 0 marks an empty slot, the capacity is 0 or
  /// a power of two.
  struct shard {
    std::vector<uint64_t> table;
    size_t used = 0;
  };
  static constexpr int shard_bits = 6;
  shard& shard_of(uint64_t fp) { return shards_[fp >> (64 - shard_bits)]; }
  const shard& shard_of(uint64_t fp) const {
    return shards_[fp >> (64 - shard_bits)];
  }
  void push_back(uint64_t fp);
  uint64_t pop_front();
  void insert_fp(uint64_t fp);
  void erase_fp(uint64_t fp);
  bool contains_fp(uint64_t fp) const;
  static void resize(shard& sh, size_t capacity);

  std::vector<shard> shards_ = std::vector<shard>(size_t{1} << shard_bits);
  // The FIFO of fingerprints: chunks_.front() holds its oldest from index
  // front_, chunks_.back() is filled up to back_ (chunk_ids when full).
  std::deque<std::shared_ptr<chunk>> chunks_;
  size_t front_ = 0;
  size_t back_ = 0;
  size_t size_ = 0;
  struct run {
    int64_t second;
    uint64_t count;
  };
  std::deque<run> runs_;
};

} // namespace nodepool
