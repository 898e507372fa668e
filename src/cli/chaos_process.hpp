#pragma once

// The child processes of `nodepool chaos`: the nodepool binary itself
// (/proc/self/exe) run with other arguments, each in a process group of its
// own, so that it can be stopped, continued and killed as a whole and a
// Ctrl-C on the terminal reaches only the chaos runner, which then ends them.
// A child is also killed by the kernel if the runner dies (PR_SET_PDEATHSIG),
// so none is left behind even when the runner itself is SIGKILLed.
#include <chrono>
#include <optional>
#include <string>
#include <sys/types.h>
#include <vector>

namespace nodepool::cli {

/// Reads a whole file; empty if it cannot be read.
std::string read_text(const std::string& path);

/// The last line of `text` that is not empty.
std::string last_line(const std::string& text);

/// One run of the nodepool binary. Owned by the chaos runner's only thread
/// (the parent-death signal is tied to the thread that forked). The
/// destructor kills the process group and reaps the process.
class child_process {
public:
  /// Starts `/proc/self/exe args...`, stdout to `out`, stderr to `out`.err;
  /// in the network namespace `netns` (a name `ip netns` made) unless empty.
  /// Throws std::runtime_error if fork fails or the namespace is not there.
  child_process(std::vector<std::string> args, std::string out,
                const std::string& netns = {});
  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;
  ~child_process();

  pid_t pid() const { return pid_; }

  /// Sends `sig` to the child's process group. SIGSTOP and SIGCONT are
  /// remembered (see stopped()).
  void signal(int sig);
  bool stopped() const { return stopped_; }

  /// Reaps the child if it has ended; false once it has.
  bool running();
  /// Exit code, or -signal if a signal ended it; nullopt while running.
  std::optional<int> status();
  /// Waits for the end at most `limit`; the status, or nullopt on timeout.
  std::optional<int> wait(std::chrono::milliseconds limit);
  /// SIGCONT, SIGTERM, then SIGKILL if it has not ended within `grace`.
  /// Returns the status and whether SIGKILL was needed.
  std::pair<int, bool> terminate(std::chrono::milliseconds grace);

  std::string output() const { return read_text(out_); }
  std::string errors() const { return read_text(out_ + ".err"); }
  const std::string& output_path() const { return out_; }

private:
  std::string out_;
  pid_t pid_ = -1;
  bool done_ = false;
  bool stopped_ = false;
  int status_ = 0;
};

/// Runs the binary to the end (killed after `limit`); returns its status
/// (nullopt on timeout) and its stdout.
std::pair<std::optional<int>, std::string>
run_child(std::vector<std::string> args, const std::string& out,
          std::chrono::milliseconds limit);

} // namespace nodepool::cli
