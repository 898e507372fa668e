#include "cli/os.hpp"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <sched.h>
#include <sstream>
#include <stdexcept>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

namespace nodepool::cli {

std::string read_text(const std::string& path) {
  std::ifstream in{path};
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string last_line(const std::string& text) {
  auto end = text.find_last_not_of("\r\n");
  if (end == std::string::npos)
    return {};
  auto start = text.rfind('\n', end);
  start = start == std::string::npos ? 0 : start + 1;
  return text.substr(start, end - start + 1);
}

std::string make_temp_dir(const std::string& tag) {
  std::error_code ec;
  auto base = std::filesystem::temp_directory_path(ec);
  if (ec)
    base = "/tmp";
  auto t = (base / ("nodepool-" + tag + "-XXXXXX")).string();
  if (!mkdtemp(t.data()))
    throw std::runtime_error("cannot create a directory in " + base.string()
                             + ": " + std::strerror(errno));
  return t;
}

child_process::child_process(std::vector<std::string> args, std::string out,
                             child_options o)
  : out_(std::move(out)), own_group_(o.own_group) {
  // Everything the child needs is prepared before fork.
  std::string exe = o.bin.empty() ? std::string{"/proc/self/exe"} : o.bin;
  int nsfd = -1;
  if (!o.netns.empty()) {
    nsfd = open(("/var/run/netns/" + o.netns).c_str(), O_RDONLY | O_CLOEXEC);
    if (nsfd < 0)
      throw std::runtime_error("no network namespace " + o.netns);
  }
  std::string err = o.one_log ? out_ : out_ + ".err";
  int flags = O_WRONLY | O_CREAT | (o.one_log ? O_APPEND : O_TRUNC);
  std::vector<char*> argv;
  argv.push_back(exe.data());
  for (auto& a : args)
    argv.push_back(a.data());
  argv.push_back(nullptr);
  auto parent = getpid();
  pid_ = fork();
  if (pid_ < 0) {
    if (nsfd >= 0)
      close(nsfd);
    throw std::runtime_error("cannot start a child process (fork failed)");
  }
  if (pid_ == 0) {
    if (o.own_group)
      setpgid(0, 0);
    if (nsfd >= 0 && setns(nsfd, CLONE_NEWNET) != 0)
      _exit(124);
    if (o.die_with_parent) {
      // Dies with its parent; if the parent is already gone, stop here.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent)
        _exit(126);
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    std::signal(SIGPIPE, SIG_DFL);  // ignored in the parent, inherited
    int fd = open(out_.c_str(), flags, 0644);
    int efd = o.one_log ? dup(fd) : open(err.c_str(), flags, 0644);
    if (fd < 0 || efd < 0)
      _exit(125);
    dup2(fd, 1);
    dup2(efd, 2);
    // Nothing else of the parent's goes along: its sockets, stores and
    // logs opened without close-on-exec would outlive it in the child
    // (a port held, a deleted file kept). fd and efd go too, unless they
    // are 1 or 2 themselves (the parent started with those closed).
    if (close_range(3, ~0U, 0) != 0) {
      rlimit lim{};
      rlim_t top = getrlimit(RLIMIT_NOFILE, &lim) == 0 ? lim.rlim_cur : 1024;
      for (rlim_t d = 3; d < std::min<rlim_t>(top, 65536); ++d)
        close(static_cast<int>(d));
    }
    execv(exe.c_str(), argv.data());
    _exit(127);
  }
  // Also here: a signal to the group must not race the child's setpgid.
  if (o.own_group)
    setpgid(pid_, pid_);
  if (nsfd >= 0)
    close(nsfd);
}

child_process::~child_process() {
  if (running()) {
    if (own_group_)
      ::kill(-pid_, SIGKILL);
    ::kill(pid_, SIGKILL);
    wait(std::chrono::seconds(10));
  }
}

void child_process::signal(int sig) {
  if (pid_ <= 0 || !running())
    return;  // never signal a reaped pid: it may belong to someone else now
  ::kill(own_group_ ? -pid_ : pid_, sig);
  if (sig == SIGSTOP)
    stopped_ = true;
  else if (sig == SIGCONT)
    stopped_ = false;
}

bool child_process::running() {
  if (done_ || pid_ <= 0)
    return false;
  int st = 0;
  auto r = waitpid(pid_, &st, WNOHANG);
  if (r == pid_ || (r < 0 && errno == ECHILD)) {
    done_ = true;
    stopped_ = false;
    status_ = st;
    status_known_ = r == pid_;  // ECHILD: reaped elsewhere, status unknown
    return false;
  }
  return true;
}

std::optional<int> child_process::status() {
  if (running())
    return std::nullopt;
  if (!status_known_)
    return -1;
  if (WIFEXITED(status_))
    return WEXITSTATUS(status_);
  if (WIFSIGNALED(status_))
    return -WTERMSIG(status_);
  return -1;
}

std::optional<int> child_process::wait(std::chrono::milliseconds limit) {
  auto end = std::chrono::steady_clock::now() + limit;
  while (running()) {
    if (std::chrono::steady_clock::now() > end)
      return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return status();
}

int child_process::finish(std::chrono::milliseconds limit,
                          const std::atomic<bool>& stop) {
  auto end = std::chrono::steady_clock::now() + limit;
  bool passed_on = false;
  while (running()) {
    auto now = std::chrono::steady_clock::now();
    if (now > end) {
      signal(SIGKILL);
      return wait(std::chrono::seconds(10)).value_or(-SIGKILL);
    }
    if (stop && !passed_on) {
      signal(SIGTERM);
      passed_on = true;
      end = std::min(end, now + std::chrono::milliseconds(500));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return *status();
}

std::pair<int, bool> child_process::terminate(std::chrono::milliseconds grace) {
  return terminate_all({this}, grace).front();
}

std::vector<std::pair<int, bool>> terminate_all(
  const std::vector<child_process*>& children, std::chrono::milliseconds grace,
  const std::atomic<bool>* stop) {
  for (auto* c : children)
    if (c) {
      c->signal(SIGCONT);
      c->signal(SIGTERM);
    }
  auto end = std::chrono::steady_clock::now() + grace;
  auto any_running = [&] {
    bool any = false;
    for (auto* c : children)
      any = (c && c->running()) || any;  // reaps every one that ended
    return any;
  };
  bool stop_seen = false;
  for (auto now = std::chrono::steady_clock::now(); any_running() && now < end;
       now = std::chrono::steady_clock::now()) {
    if (stop && *stop && !stop_seen) {
      stop_seen = true;
      end = std::min(end, now + std::chrono::milliseconds(500));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::vector<std::pair<int, bool>> out;
  for (auto* c : children) {
    if (!c) {
      out.emplace_back(0, false);
      continue;
    }
    bool killed = c->running();
    if (killed)
      c->signal(SIGKILL);
    auto st = c->wait(std::chrono::seconds(10));
    out.emplace_back(st.value_or(-SIGKILL), killed);
  }
  return out;
}

} // namespace nodepool::cli
