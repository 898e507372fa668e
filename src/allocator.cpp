#include "allocator.hpp"

#include <malloc.h>

namespace nodepool {

bool keep_large_blocks_in_their_own_mappings() {
  return ::mallopt(M_MMAP_THRESHOLD, static_cast<int>(large_block_bytes)) == 1;
}

size_t malloc_free_bytes() { return ::mallinfo2().fordblks; }

size_t malloc_mapped_bytes() { return ::mallinfo2().hblkhd; }

} // namespace nodepool
