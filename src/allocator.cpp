#include "allocator.hpp"

#include <malloc.h>
#include <sys/auxv.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

namespace nodepool {

bool keep_large_blocks_in_their_own_mappings() {
  return ::mallopt(M_MMAP_THRESHOLD, static_cast<int>(large_block_bytes)) == 1;
}

std::string tunables_with_thread_cache(const char* current) {
  std::string now = current ? current : "";
  if (now.find("glibc.malloc.tcache_count=") != std::string::npos)
    return {};
  auto add = "glibc.malloc.tcache_count=" + std::to_string(thread_cache_blocks);
  return now.empty() ? add : now + ":" + add;
}

void run_again_with_thread_cache(char** argv) {
  const char* before = ::getenv("GLIBC_TUNABLES");
  std::string kept = before ? before : "";
  auto value = tunables_with_thread_cache(before);
  // A program run with raised privileges has GLIBC_TUNABLES taken out of
  // its environment by glibc: it would start itself again for ever.
  if (value.empty() || ::getauxval(AT_SECURE) != 0)
    return;
  // The program's own path, not /proc/self/exe: the kernel names a process
  // after the file it runs (`ps`, `pgrep nodepool`).
  char self[4096];
  auto n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0 || static_cast<size_t>(n) >= sizeof self - 1)
    return;
  self[n] = '\0';
  if (::setenv("GLIBC_TUNABLES", value.c_str(), 1) != 0)
    return;
  ::execv(self, argv);
  // Not run again (no /proc, say): go on with glibc's default, and hand
  // children the environment this process was given.
  if (before)
    ::setenv("GLIBC_TUNABLES", kept.c_str(), 1);
  else
    ::unsetenv("GLIBC_TUNABLES");
}

bool wants_thread_cache(int argc, const char* const* argv) {
  static const char* const short_lived[] = {"status", "submit", "ctl",
                                            "keygen", "bank", "sessions"};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--log-level" || a == "--log-format") {
      ++i;  // and its value
      continue;
    }
    if (!a.empty() && a[0] == '-')
      continue;  // --log-level=info, or an option the parser will refuse
    for (auto* s : short_lived)
      if (a == s)
        return false;
    return true;
  }
  return true;
}

size_t malloc_free_bytes() { return ::mallinfo2().fordblks; }

size_t malloc_mapped_bytes() { return ::mallinfo2().hblkhd; }

} // namespace nodepool
