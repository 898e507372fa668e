#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>

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

} // namespace
