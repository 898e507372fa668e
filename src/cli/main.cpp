// nodepool: one binary, one subcommand per job.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <csignal>
#include <execinfo.h>
#include <iostream>
#include <unistd.h>

#include <toml++/toml.h>

#include "cli/common.hpp"
#include "accept_guard.hpp"
#include "allocator.hpp"
#include "cluster_config.hpp"
#include "log.hpp"
#include "pool_state.hpp"

namespace nodepool::cli {

std::atomic<bool> stop_requested{false};
std::atomic<int> stop_signal{0};
std::atomic<const char*> exit_hint{nullptr};
std::atomic<const char*> exit_at_once{nullptr};
std::string log_level = "warn";
bool log_level_given = false;
std::string log_format_name = "text";

void say(const std::string& program, const std::string& text,
         const char* level) {
  if (nodepool::current_log_format() == nodepool::log_format::json)
    return nodepool::write_record(level, program, text);
  std::fprintf(stderr, "nodepool %s: %s\n", program.c_str(), text.c_str());
  std::fflush(stderr);
}

void begin() {
  nodepool::set_log_level(log_level);
  nodepool::log_format f = nodepool::log_format::text;
  nodepool::parse_log_format(log_format_name, f);  // checked by the option
  nodepool::set_log_format(f);
  install_signal_handlers();
  const char* tunables = ::getenv("GLIBC_TUNABLES");
  nodepool::log("main")->debug("malloc's tunables: {}",
                               tunables ? tunables : "(glibc's defaults)");
}

namespace {

static_assert(std::atomic<bool>::is_always_lock_free
                && std::atomic<int>::is_always_lock_free
                && std::atomic<const char*>::is_always_lock_free,
              "the signal handler may only touch lock-free atomics");

/// Async-signal-safe: lock-free atomics, write(2) and _exit(2) only. The
/// first signal is recorded by whichever thread the kernel picked; any later
/// one, even one racing it on another thread, loses the exchange and exits.
void on_stop_signal(int sig) {
  int none = 0;
  if (stop_signal.compare_exchange_strong(none, sig)) {
    stop_requested = true;
    if (const char* line = exit_at_once.load()) {
      size_t len = 0;
      while (line[len] != '\0')
        ++len;
      [[maybe_unused]] auto n = ::write(2, line, len);
      ::_exit(128 + sig);
    }
    return;
  }
  static const char msg[] =
    "nodepool: second signal: exiting at once, without cleaning up\n";
  [[maybe_unused]] auto n = ::write(2, msg, sizeof msg - 1);
  if (const char* hint = exit_hint.load()) {
    size_t len = 0;
    while (hint[len] != '\0')
      ++len;
    n = ::write(2, hint, len);
  }
  ::_exit(128 + sig);
}

/// A crash says which signal and where, on stderr (which is the process's
/// log), then ends the process by the same signal, so its parent sees it and
/// a core is dumped where that is on. Async-signal-safe: backtrace() was
/// called once at start, which loads what it needs; backtrace_symbols_fd
/// and write(2) do not allocate. Addresses print as binary+offset:
/// `addr2line -Cfe nodepool OFFSET` names the function.
void on_fatal_signal(int sig) {
  // Should the report itself hang (the unwinder takes the loader's lock),
  // SIGALRM's default action still ends the process.
  ::alarm(5);
  char msg[64];
  static const char head[] = "nodepool: fatal signal ";
  size_t n = 0;
  for (char c : head)
    if (c)
      msg[n++] = c;
  char digits[8];
  size_t d = 0;
  for (int v = sig; v > 0 && d < sizeof digits; v /= 10)
    digits[d++] = static_cast<char>('0' + v % 10);
  while (d > 0)
    msg[n++] = digits[--d];
  static const char tail[] = "; stack:\n";
  for (char c : tail)
    if (c)
      msg[n++] = c;
  [[maybe_unused]] auto w = ::write(2, msg, n);
  void* frames[64];
  int depth = ::backtrace(frames, 64);
  ::backtrace_symbols_fd(frames, depth, 2);
  std::signal(sig, SIG_DFL);
  ::raise(sig);
}

/// The main thread reports on an alternate stack, so that a stack overflow
/// there is reported too; other threads report on their own stacks.
void catch_fatal_signals() {
  static std::vector<char> alt(1 << 16);
  stack_t ss{};
  ss.ss_sp = alt.data();
  ss.ss_size = alt.size();
  sigaltstack(&ss, nullptr);
  void* warm[1];
  ::backtrace(warm, 1);
  struct sigaction sa {};
  sa.sa_handler = on_fatal_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_ONSTACK | SA_RESETHAND;
  for (int sig : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT})
    sigaction(sig, &sa, nullptr);
}

} // namespace

const char* stop_signal_name() {
  switch (stop_signal.load()) {
    case SIGINT: return "SIGINT";
    case SIGTERM: return "SIGTERM";
    case SIGHUP: return "SIGHUP";
    default: return "a signal";
  }
}

void catch_stop_signal(int sig) {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  // Interrupted system calls are restarted: every wait polls the flag with
  // a bound instead of counting on EINTR.
  sa.sa_flags = SA_RESTART;
  sigaction(sig, &sa, nullptr);
}

void install_signal_handlers() {
  catch_fatal_signals();
  catch_stop_signal(SIGINT);
  catch_stop_signal(SIGTERM);
}

int interrupted_status() {
  auto sig = stop_signal.load();
  return sig > 0 ? 128 + sig : 1;
}

int report_interrupted(const std::string& command, const std::string& next) {
  std::cerr << "nodepool " << command << ": interrupted by "
            << stop_signal_name() << "; " << next << "\n";
  return interrupted_status();
}

void add_param_flags(CLI::App& app, std::map<std::string, std::string>& out) {
  for (auto& name : param_names()) {
    auto flag = name;
    std::replace(flag.begin(), flag.end(), '_', '-');
    if (app.get_option_no_throw("--" + flag))
      continue;  // the subcommand has its own (demo's --seed)
    app.add_option_function<std::string>(
         "--" + flag, [&out, name](const std::string& v) { out[name] = v; },
         "pool parameter " + name + " (overrides the config file)")
      ->group("Pool parameters");
  }
}

params resolve_params(const std::string& config_file,
                      const std::map<std::string, std::string>& flags,
                      params base) {
  auto p = config_file.empty() ? base : load_params(config_file, base);
  for (auto& [k, v] : flags)
    if (auto err = set_param(p, k, v); !err.empty())
      throw std::runtime_error("--" + k + ": " + err);
  if (auto err = p.validate(); !err.empty())
    throw std::runtime_error(err);
  return p;
}

void add_tls_flags(CLI::App& app, tls_files& out) {
  app.add_option("--tls-cert", out.certificate,
                 "PEM certificate of this side (mutual TLS)")
    ->group("TLS");
  app.add_option("--tls-key", out.key, "PEM private key of that certificate")
    ->group("TLS");
  app.add_option("--tls-ca", out.ca, "PEM CA certificates to trust")
    ->group("TLS");
}

void setup_tls(actor_config& cfg, const tls_files& tls) {
  if (tls.certificate.empty() && tls.key.empty() && tls.ca.empty())
    return;
  if (auto err = check_tls_files(tls); !err.empty())
    throw std::runtime_error(err);
  use_tls(cfg, tls);
}

bool loopback_host(const std::string& h) {
  return h == "127.0.0.1" || h == "::1" || h == "localhost"
         || h.rfind("127.", 0) == 0;
}

std::pair<std::string, uint16_t> parse_host_port(const std::string& s) {
  auto hp = split_host_port(s);
  if (!hp)
    throw std::runtime_error("expected HOST:PORT (port 1-65535), got '" + s
                             + "'");
  return *hp;
}

std::shared_ptr<store> open_store(const std::string& dir, bool read_only) {
  status st;
  auto s = read_only ? open_rocksdb_store_read_only(dir, st)
                     : open_rocksdb_store(dir, st);
  if (!s)
    throw std::runtime_error(st.error);
  return std::shared_ptr<store>(std::move(s));
}

nlohmann::json summarize(const pool_state& ps) {
  nlohmann::json j;
  auto& counts = ps.count_by_state();
  nlohmann::json by_state = nlohmann::json::object();
  for (int s = pb::REGISTERED; s <= pb::LOST; ++s)
    by_state[to_string(static_cast<pb::NodeState>(s))] = counts[s];
  j["nodes"]["total"] = ps.nodes().size();
  j["nodes"]["by_state"] = by_state;
  auto sc = ps.session_counts();
  j["sessions"]["accepted"] = ps.sessions_accepted();
  j["sessions"]["queued"] = sc[pb::QUEUED];
  j["sessions"]["active"] = sc[pb::ACTIVE];
  j["sessions"]["completed"] = sc[pb::COMPLETED];
  j["sessions"]["failed"] = sc[pb::FAILED];
  j["sessions"]["requeued"] = ps.sessions_requeued();
  j["tests"]["passed"] = ps.tests_passed();
  j["tests"]["failed"] = ps.tests_failed();
  return j;
}

} // namespace nodepool::cli

int main(int argc, char** argv) {
  using namespace nodepool::cli;
  // First of all: the same program again with a larger thread cache in
  // malloc (allocator.hpp), which glibc sets only at a program's start;
  // not for a short client, which would only load the program twice.
  if (nodepool::wants_thread_cache(argc, argv))
    nodepool::run_again_with_thread_cache(argv);
  // An oracle holds a connection per miner process and client: the soft
  // limit of open files (1024 by default) goes up to the hard one.
  nodepool::raise_descriptor_limit();
  // Large blocks (snapshot copies, RocksDB's memtable blocks) are returned
  // to the system when freed, not left as holes in malloc's arenas.
  nodepool::keep_large_blocks_in_their_own_mappings();
  CLI::App app{"nodepool: a tested, durable pool of AI-inference miner nodes"};
  app.require_subcommand(1);
  app.add_option_function<std::string>(
       "--log-level",
       [](const std::string& v) {
         log_level = v;
         log_level_given = true;
       },
       "trace, debug, info, warn, error or off (default warn; demo: error)")
    ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));
  app.add_option("--log-format", log_format_name,
                 "text (key=value, the default) or json: one line per record "
                 "on stderr, times in UTC; at info level one line per event "
                 "of the pool")
    ->check(CLI::IsMember({"text", "json"}));
  add_demo(app);
  add_oracle(app);
  add_sessions(app);
  add_miner(app);
  add_bank(app);
  add_submit(app);
  add_status(app);
  add_check(app);
  add_keygen(app);
  add_ctl(app);
  add_sim(app);
  add_chaos(app);
  add_bench(app);
  try {
    app.parse(argc, argv);
  } catch (const exit_code& e) {
    return e.code;
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::cerr << "nodepool: " << e.what() << "\n";
    return 2;
  }
  return 0;
}
