#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "allocator.hpp"

namespace {

using namespace nodepool;

/// `bytes` from malloc, touched, so the pages are really there.
char* touched_block(size_t bytes) {
  auto* p = static_cast<char*>(std::malloc(bytes));
  if (p)
    std::memset(p, 1, bytes);
  asm volatile("" : : "r"(p) : "memory");  // kept, not optimized away
  return p;
}

TEST(Allocator, ALargeBlockStaysInAMappingOfItsOwnAfterOneWasFreed) {
  // Without the fixed threshold, freeing the first 8 MB block raises
  // glibc's threshold above 8 MB, and the second comes from an arena.
  ASSERT_TRUE(keep_large_blocks_in_their_own_mappings());
  constexpr size_t big = size_t{8} << 20;
  auto* first = touched_block(big);
  ASSERT_NE(first, nullptr);
  std::free(first);
  auto mapped = malloc_mapped_bytes();
  auto* second = touched_block(big);
  ASSERT_NE(second, nullptr);
  EXPECT_GE(malloc_mapped_bytes(), mapped + big);
  std::free(second);
  EXPECT_LT(malloc_mapped_bytes(), mapped + big);
}

// The thread cache's size is added to what the environment says, and a
// size already there (a user's own) stands.
TEST(Allocator, TheThreadCacheSizeIsAddedUnlessAlreadySet) {
  auto ours = "glibc.malloc.tcache_count=" + std::to_string(thread_cache_blocks);
  EXPECT_EQ(tunables_with_thread_cache(nullptr), ours);
  EXPECT_EQ(tunables_with_thread_cache(""), ours);
  EXPECT_EQ(tunables_with_thread_cache("glibc.malloc.arena_max=2"),
            "glibc.malloc.arena_max=2:" + ours);
  EXPECT_EQ(tunables_with_thread_cache("glibc.malloc.tcache_count=7"), "");
  EXPECT_EQ(tunables_with_thread_cache("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0"), "");
}

// Short clients run once; everything else (and anything unknown) starts
// again with the larger cache. The global options and their values come
// before the subcommand.
TEST(Allocator, OnlyLongLivedCommandsStartAgain) {
  auto wants = [](std::vector<const char*> args) {
    args.insert(args.begin(), "nodepool");
    return wants_thread_cache(static_cast<int>(args.size()), args.data());
  };
  EXPECT_TRUE(wants({"oracle", "--data-dir", "d"}));
  EXPECT_TRUE(wants({"bench"}));
  EXPECT_TRUE(wants({"--log-level", "info", "miner"}));
  EXPECT_TRUE(wants({"--log-format=json", "check", "--data-dir", "status"}));
  EXPECT_FALSE(wants({"status", "--oracle", "h:1"}));
  EXPECT_FALSE(wants({"--log-level", "debug", "submit"}));
  EXPECT_FALSE(wants({"--log-level", "debug", "--log-format", "json", "ctl", "status"}));
  EXPECT_FALSE(wants({"keygen"}));
  EXPECT_TRUE(wants({}));          // no subcommand: the parser says so
  EXPECT_TRUE(wants({"no-such"}));
}

} // namespace
