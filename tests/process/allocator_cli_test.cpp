// Every command runs with malloc's larger thread cache (src/allocator.hpp):
// the program starts itself again with the tunable glibc reads at start,
// and a user's own setting of it stands.
#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "proc.hpp"

namespace nodepool::testing {
namespace {

/// What a command says at debug level of malloc's tunables, run with
/// GLIBC_TUNABLES set to `given` (null: unset): by default a simulation of
/// one seed (a long-lived kind of command), else `command`.
std::string tunables_seen(const std::string& dir, const char* given,
                          std::vector<std::string> command = {"sim", "--seeds",
                                                              "1..1"}) {
  const char* before = ::getenv("GLIBC_TUNABLES");
  std::string kept = before ? before : "";
  if (given)
    ::setenv("GLIBC_TUNABLES", given, 1);
  else
    ::unsetenv("GLIBC_TUNABLES");
  command.insert(command.begin(), {"--log-level", "debug"});
  auto [rc, out] = run(command, dir + "/command.out", std::chrono::seconds(60));
  if (before)
    ::setenv("GLIBC_TUNABLES", kept.c_str(), 1);
  else
    ::unsetenv("GLIBC_TUNABLES");
  EXPECT_EQ(rc, 0) << out;
  EXPECT_FALSE(out.empty()) << "nothing printed";
  auto err = read_file(dir + "/command.out.err");
  auto at = err.find("malloc's tunables: ");
  if (at == std::string::npos)
    return "(not said): " + err;
  auto end = err.find_first_of("\"\n", at);  // the record's text ends
  return err.substr(at + 19, end - at - 19);
}

TEST(allocator_cli, a_command_runs_again_with_a_larger_malloc_thread_cache) {
  auto dir = temp_dir("tcache");
  cleanup tidy{dir};
  EXPECT_EQ(tunables_seen(dir, nullptr), "glibc.malloc.tcache_count=256");
  EXPECT_EQ(tunables_seen(dir, "glibc.malloc.arena_max=4"),
            "glibc.malloc.arena_max=4:glibc.malloc.tcache_count=256");
}

// Run again, a process keeps its pid and its name (`pgrep nodepool`).
TEST(allocator_cli, a_command_run_again_keeps_its_pid_and_name) {
  auto dir = temp_dir("tcache-name");
  cleanup tidy{dir};
  const char* before = ::getenv("GLIBC_TUNABLES");
  std::string kept = before ? before : "";
  ::unsetenv("GLIBC_TUNABLES");
  child sim({"sim", "--seeds", "1..100000000"}, dir + "/sim.out");
  if (before)
    ::setenv("GLIBC_TUNABLES", kept.c_str(), 1);
  auto environ_of = [&] {
    auto e = read_file("/proc/" + std::to_string(sim.pid()) + "/environ");
    std::replace(e.begin(), e.end(), '\0', '\n');
    return e;
  };
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (environ_of().find("GLIBC_TUNABLES=glibc.malloc.tcache_count=256\n")
           == std::string::npos
         && sim.running() && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_TRUE(sim.running()) << sim.errors();
  EXPECT_NE(environ_of().find("GLIBC_TUNABLES=glibc.malloc.tcache_count=256\n"),
            std::string::npos);
  EXPECT_EQ(read_file("/proc/" + std::to_string(sim.pid()) + "/comm"),
            "nodepool\n");
  sim.signal(SIGTERM);
  sim.wait_exit(std::chrono::seconds(20));
}

// A short client does not start again: it would load the program twice
// for nothing (a status question took 84.1 ms with it and 54.8 ms without,
// medians on an idle machine: BENCHMARKS.md).
TEST(allocator_cli, a_short_client_runs_once_with_what_it_was_given) {
  auto dir = temp_dir("tcache-client");
  cleanup tidy{dir};
  EXPECT_EQ(tunables_seen(dir, nullptr, {"keygen", "--join-token"}),
            "(glibc's defaults)");
  EXPECT_EQ(tunables_seen(dir, "glibc.malloc.arena_max=4", {"keygen", "--join-token"}),
            "glibc.malloc.arena_max=4");
}

TEST(allocator_cli, a_users_own_thread_cache_size_stands) {
  auto dir = temp_dir("tcache-own");
  cleanup tidy{dir};
  EXPECT_EQ(tunables_seen(dir, "glibc.malloc.tcache_count=7"),
            "glibc.malloc.tcache_count=7");
}

} // namespace
} // namespace nodepool::testing
