#pragma once

#include <cstddef>

namespace nodepool {

/// glibc's malloc serves a block above its mmap threshold from a mapping of
/// its own, returned to the system when freed, but it raises the threshold
/// to the size of each such block freed (up to 32 MB). After the first
/// snapshot copy or RocksDB memtable block is freed, blocks of that size
/// come from the arenas instead, and freeing them leaves holes between
/// smaller live objects that malloc_trim cannot return: measured, 128 MB
/// of free memory held after 30 s at saturation (BENCHMARKS.md). Every
/// command fixes the threshold at `large_block_bytes` at start, which
/// also stops the raising.
constexpr size_t large_block_bytes = 256 * 1024;
/// Sets the threshold; false if malloc refused it.
bool keep_large_blocks_in_their_own_mappings();

/// Bytes malloc holds free (in its arenas), and bytes it has in mappings
/// of their own, for reports.
size_t malloc_free_bytes();
size_t malloc_mapped_bytes();

} // namespace nodepool
