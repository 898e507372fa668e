#pragma once

// What the CLI and the tests ask of the operating system, each in one
// place: child processes that run a program (started, signalled, waited for
// and reaped), temporary directories, whole files read. (`nodepool sim`'s
// workers are forks of the simulation itself, without a program to run.)
//
// A child is a program run with arguments, its output in a file. By
// default it is the nodepool binary itself (/proc/self/exe), in a process
// group of its own, so that it can be stopped, continued and killed as a
// whole and a Ctrl-C on the terminal reaches only the command that started
// it, which then ends it; and it is killed by the kernel if its parent
// dies (PR_SET_PDEATHSIG), so none is left behind even when the parent is
// SIGKILLed.
#include <atomic>
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

/// Creates a fresh directory `nodepool-<tag>-XXXXXX` in the temporary
/// directory ($TMPDIR, else /tmp) and returns its path; throws
/// std::runtime_error naming the place if it cannot.
std::string make_temp_dir(const std::string& tag);

struct child_options {
  /// The program; empty: this one (/proc/self/exe).
  std::string bin;
  /// A network namespace `ip netns` made, to run in; empty: this one's.
  std::string netns;
  /// A process group of its own: signals reach the whole group. Without
  /// it, signals reach the process alone (and a terminal's Ctrl-C reaches
  /// it too).
  bool own_group = true;
  /// Killed by the kernel when the thread that started it ends: start it
  /// from a thread that lives as long as it should.
  bool die_with_parent = true;
  /// stdout and stderr both appended to `out`; else stdout to `out` and
  /// stderr to `out`.err, both truncated.
  bool one_log = false;
};

/// One run of a program. The destructor kills it (its group, if it has
/// one) and reaps it.
class child_process {
public:
  /// Starts `bin args...` (see child_options). Throws std::runtime_error
  /// if fork fails or the namespace is not there; a program that cannot be
  /// run ends with status 127.
  child_process(std::vector<std::string> args, std::string out,
                child_options o = {});
  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;
  ~child_process();

  pid_t pid() const { return pid_; }

  /// Sends `sig` to the child (its group, if it has one). SIGSTOP and
  /// SIGCONT are remembered (see stopped()). A child already reaped is not
  /// signalled: its pid may belong to another process by now.
  void signal(int sig);
  bool stopped() const { return stopped_; }

  /// Reaps the child if it has ended; false once it has.
  bool running();
  /// Exit code, or -signal if a signal ended it, or -1 if it was reaped
  /// elsewhere; nullopt while running.
  std::optional<int> status();
  /// Waits for the end at most `limit`; the status, or nullopt on timeout.
  std::optional<int> wait(std::chrono::milliseconds limit);
  /// Waits for the end at most `limit`, then SIGKILLs it. Once `stop` is
  /// set (a signal asked this process to stop), passes SIGTERM on once and
  /// waits half a second more at most. Returns the status.
  int finish(std::chrono::milliseconds limit, const std::atomic<bool>& stop);
  /// SIGCONT, SIGTERM, then SIGKILL if it has not ended within `grace`.
  /// Returns the status and whether SIGKILL was needed.
  std::pair<int, bool> terminate(std::chrono::milliseconds grace);

  std::string output() const { return read_text(out_); }
  /// Its stderr; empty with one_log (both are in output()).
  std::string errors() const { return read_text(out_ + ".err"); }
  const std::string& output_path() const { return out_; }

private:
  std::string out_;
  bool own_group_ = true;
  pid_t pid_ = -1;
  bool done_ = false;
  bool stopped_ = false;
  int status_ = 0;
  bool status_known_ = true;
};

/// terminate() of several children at once: SIGCONT and SIGTERM to each
/// (null entries are skipped), then one wait of at most `grace` for all of
/// them, then SIGKILL to those still running. Children that take time to
/// end (an oracle handing its leadership over) do it side by side, not
/// one after the other. Once `stop` is set (a signal asked this process to
/// stop), the wait ends half a second later at most. Returns each one's
/// status and whether SIGKILL was needed, in the order given ({0, false}
/// for a null entry).
std::vector<std::pair<int, bool>> terminate_all(
  const std::vector<child_process*>& children, std::chrono::milliseconds grace,
  const std::atomic<bool>* stop = nullptr);

} // namespace nodepool::cli
