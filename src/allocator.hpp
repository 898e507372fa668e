#pragma once

#include <cstddef>
#include <string>

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

/// glibc's malloc keeps up to 7 freed blocks of each small size in a cache
/// per thread; past that a free and the next malloc of that size go
/// through the arena's bins. A group commit frees and makes hundreds of
/// messages of a few sizes at once, so most of them did (malloc and free
/// were 13 % of the durable run's samples). With 256 blocks per size the
/// durable cycle ran 7-8 % faster (BENCHMARKS.md). glibc reads the cache's
/// size only when a program starts (the GLIBC_TUNABLES variable), so every
/// command starts itself again with it (`run_again_with_thread_cache`).
constexpr unsigned thread_cache_blocks = 256;
/// GLIBC_TUNABLES with the thread cache's size added to `current` (null:
/// unset); empty when `current` already sets that size (a user's own
/// setting stands).
std::string tunables_with_thread_cache(const char* current);
/// Replaces this process by the same program, with the same arguments,
/// descriptors and pid, and the thread cache's size added to its
/// environment; returns only when that is not needed (already set) or
/// not possible (the exec failed: the program goes on with glibc's default).
void run_again_with_thread_cache(char** argv);
/// Whether the command line runs a subcommand that lives long and
/// allocates much (an oracle, a miner, a bench, a check...), for which the
/// start again pays; a short client (status, submit, ctl, keygen, bank,
/// sessions) would only load the program twice. The subcommand is the
/// first argument after the global options (--log-level, --log-format and
/// their values); an unknown one counts as long-lived.
bool wants_thread_cache(int argc, const char* const* argv);

/// Bytes malloc holds free (in its arenas), and bytes it has in mappings
/// of their own, for reports.
size_t malloc_free_bytes();
size_t malloc_mapped_bytes();

} // namespace nodepool
