#pragma once

#include <algorithm>

// Real processes for the multi-process and crash tests: spawn the nodepool
// binary, capture its output in a file, signal it, wait for it with a bound.
#include <chrono>
#include <nlohmann/json.hpp>
#include <csignal>
#include <cstdlib>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include <gtest/gtest.h>

#include "cli/os.hpp"

namespace nodepool::testing {

inline std::string read_file(const std::string& path) {
  return cli::read_text(path);
}

inline std::string temp_dir(const std::string& tag) {
  return cli::make_temp_dir(tag);
}

/// Removes a test's directory when the test passed; a failed test's files
/// (data directory, process output) stay for a post-mortem.
struct cleanup {
  std::string dir;
  ~cleanup() {
    if (!::testing::Test::HasFailure())
      std::filesystem::remove_all(dir);
  }
};

/// A program a test runs (cli::child_process): signals reach the process
/// alone, as the test sends them, and it is not tied to the thread that
/// started it. The destructor kills it and reaps it.
class child {
public:
  /// Starts NODEPOOL_BIN (or `bin`) with `args`; stdout to `out`, stderr to
  /// `out`.err.
  child(std::vector<std::string> args, std::string out,
        std::string bin = NODEPOOL_BIN)
    : proc_(std::move(args), out, options(std::move(bin))) {}

  void signal(int sig) { proc_.signal(sig); }
  bool running() { return proc_.running(); }

  /// Waits for exit; returns the exit code, -signal if killed, or -1000 on
  /// timeout.
  int wait_exit(std::chrono::milliseconds limit) {
    return proc_.wait(limit).value_or(-1000);
  }

  pid_t pid() const { return proc_.pid(); }
  std::string output() const { return proc_.output(); }
  std::string errors() const { return proc_.errors(); }

  /// Polls the output until it contains `text` (or the process ends).
  bool wait_for_output(const std::string& text,
                       std::chrono::milliseconds limit) {
    return wait_for_text(proc_.output_path(), text, limit);
  }
  /// The same for the error output (stderr).
  bool wait_for_errors(const std::string& text,
                       std::chrono::milliseconds limit) {
    return wait_for_text(proc_.output_path() + ".err", text, limit);
  }

private:
  static cli::child_options options(std::string bin) {
    cli::child_options o;
    o.bin = std::move(bin);
    o.own_group = false;
    o.die_with_parent = false;
    return o;
  }
  bool wait_for_text(const std::string& file, const std::string& text,
                     std::chrono::milliseconds limit) {
    auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
      if (read_file(file).find(text) != std::string::npos)
        return true;
      if (!running())
        return read_file(file).find(text) != std::string::npos;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

  cli::child_process proc_;
};

/// A TCP connection to 127.0.0.1:port: its descriptor, or -1.
inline int connect_loopback(uint16_t port) {
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(s);
    return -1;
  }
  return s;
}

/// Whether the peer closes `fd` within `limit` (what it sends before is
/// read and dropped: CAF's server greets a new connection at once).
inline bool closed_by_peer(int fd, std::chrono::milliseconds limit) {
  auto end = std::chrono::steady_clock::now() + limit;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      end - std::chrono::steady_clock::now());
    if (left.count() <= 0)
      return false;
    pollfd pf{fd, POLLIN, 0};
    if (::poll(&pf, 1, static_cast<int>(left.count())) != 1)
      return false;
    char buf[512];
    auto n = ::read(fd, buf, sizeof buf);
    if (n == 0)
      return true;
    if (n < 0)
      return errno == ECONNRESET;
  }
}

/// Lowers process `pid`'s soft limit of file descriptors to its lowest
/// free descriptor number (a new descriptor takes the lowest free one, so
/// the next it opens fails with EMFILE) until restore() or the end of the
/// scope.
struct descriptor_squeeze {
  pid_t pid;
  rlimit before{};
  bool squeezed = false;
  size_t open_fds = 0;
  explicit descriptor_squeeze(pid_t p) : pid(p) {
    if (::prlimit(pid, RLIMIT_NOFILE, nullptr, &before) != 0)
      return;
    std::set<long> used;
    for (auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd"))
      used.insert(std::stol(e.path().filename().string()));
    open_fds = used.size();
    rlim_t lowest_free = 0;
    while (used.count(static_cast<long>(lowest_free)))
      ++lowest_free;
    rlimit tight = before;
    tight.rlim_cur = lowest_free;
    squeezed = ::prlimit(pid, RLIMIT_NOFILE, &tight, nullptr) == 0;
  }
  bool restore() {
    if (!squeezed)
      return false;
    squeezed = false;
    return ::prlimit(pid, RLIMIT_NOFILE, &before, nullptr) == 0;
  }
  ~descriptor_squeeze() { restore(); }
};

/// Runs the binary to completion; returns (exit code, stdout).
inline std::pair<int, std::string> run(std::vector<std::string> args,
                                       const std::string& out,
                                       std::chrono::milliseconds limit
                                       = std::chrono::seconds(60)) {
  child c{std::move(args), out};
  auto rc = c.wait_exit(limit);
  return {rc, c.output()};
}

/// Runs a shell command; returns (exit code, its output and errors).
inline std::pair<int, std::string> run_shell(const std::string& cmd) {
  std::string out;
  auto* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p)
    return {-1, "popen failed"};
  char buf[512];
  while (auto n = fread(buf, 1, sizeof buf, p))
    out.append(buf, n);
  auto st = pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

/// The port an oracle printed ("listening on HOST:PORT").
inline std::string listening_port(const std::string& out) {
  auto i = out.find("listening on ");
  if (i == std::string::npos)
    return {};
  auto colon = out.find(':', i);
  auto end = out.find(' ', colon);
  return out.substr(colon + 1, end - colon - 1);
}

/// Pool parameters that make lifecycles take fractions of a second.
inline std::vector<std::string> fast_pool_flags() {
  return {"--test-deadline-ms",      "1000", "--task-phase-timeout-ms", "500",
          "--heartbeat-interval-ms", "100",  "--heartbeat-timeout-ms",  "1500",
          "--quarantine-backoff-ms", "1000", "--quarantine-backoff-max-ms",
          "4000",                    "--tick-interval-ms", "50"};
}

/// The arguments of an oracle on `db`, listening on `port` ("0": any free
/// one), with the fast pool parameters and `extra` flags.
inline std::vector<std::string>
oracle_args(const std::string& db, const std::string& port = "0",
            const std::vector<std::string>& extra = {}) {
  std::vector<std::string> a{"oracle", "--data-dir", db, "--port", port};
  for (auto& f : fast_pool_flags())
    a.push_back(f);
  a.insert(a.end(), extra.begin(), extra.end());
  // The HTTP API only where a test asks for it (tests run side by side).
  if (std::find(extra.begin(), extra.end(), "--http") == extra.end()) {
    a.push_back("--http");
    a.push_back("off");
  }
  return a;
}

/// The last line of a command's output, parsed as JSON (discarded when it
/// is not JSON; null for empty output).
inline nlohmann::json last_json_line(const std::string& out) {
  auto end = out.find_last_not_of('\n');
  if (end == std::string::npos)
    return {};
  auto start = out.rfind('\n', end);
  start = start == std::string::npos ? 0 : start + 1;
  return nlohmann::json::parse(out.substr(start, end - start + 1), nullptr,
                               false);
}

/// A small tmpfs mounted for the life of the object (root only).
struct small_disk {
  std::string path;
  bool mounted = false;
  std::string why;
  small_disk(const std::string& p, const std::string& size) : path(p) {
    std::filesystem::create_directories(p);
    if (::geteuid() != 0) {
      why = "not root: cannot mount a small filesystem";
      return;
    }
    auto [rc, out] = run_shell("mount -t tmpfs -o size=" + size + " tmpfs " + p);
    mounted = rc == 0;
    if (!mounted)
      why = "mount -t tmpfs failed here: " + out;
  }
  /// Fills what is left with a file, until the disk says it is full.
  void fill() {
    std::FILE* f = std::fopen((path + "/filler").c_str(), "wb");
    if (!f)
      return;
    std::vector<char> mb(1 << 20, 'x');
    while (std::fwrite(mb.data(), 1, mb.size(), f) == mb.size())
      ;
    std::fclose(f);
  }
  void unfill() { std::filesystem::remove(path + "/filler"); }
  /// A process of the test may still hold files there (a member stopped
  /// after the disk goes out of scope): the lazy unmount detaches it now
  /// and frees it once the last file closes, so no mount outlives the test.
  ~small_disk() {
    if (mounted)
      run_shell("umount " + path + " 2>/dev/null || umount -l " + path);
  }
};

} // namespace nodepool::testing
