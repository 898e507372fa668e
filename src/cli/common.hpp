#pragma once

// Pieces shared by the nodepool subcommands.
#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "actors/config.hpp"
#include "actors/oracle.hpp"
#include "http/server.hpp"
#include "params.hpp"
#include "pool_state.hpp"
#include "storage.hpp"

namespace CLI {
class App;
}

namespace nodepool::cli {

/// Set by the first SIGINT / SIGTERM; long-running commands poll it (at
/// least every half second) and shut down cleanly. A second signal does not
/// wait for that: the process exits at once with 128 + the signal, which
/// leaves a data directory as a crash would (still resumable).
extern std::atomic<bool> stop_requested;
/// The signal that set stop_requested, 0 while none arrived.
extern std::atomic<int> stop_signal;
/// Printed after the second signal's message when set (a line ending in
/// '\n' that lives while set): what is left behind and how to remove it.
extern std::atomic<const char*> exit_hint;
/// Set by a command that only waits for one answer and keeps nothing
/// (`status`, `sessions --oracle`, `ctl`): the first signal then does not
/// wait for that answer (up to `--timeout`), it writes this line (ending in
/// '\n', living while set) and exits at once with 128 + the signal.
extern std::atomic<const char*> exit_at_once;
/// SIGINT and SIGTERM set stop_requested (see above).
void install_signal_handlers();
/// `sig` too (chaos: SIGHUP, a closed terminal) sets stop_requested.
void catch_stop_signal(int sig);
/// "SIGINT", "SIGTERM", "SIGHUP": the signal that set stop_requested.
const char* stop_signal_name();
/// Exit status of a command a signal cut short: 128 + the signal (130 for
/// SIGINT, 143 for SIGTERM), 1 if it was stopped without one.
int interrupted_status();
/// Prints "nodepool COMMAND: interrupted by SIGTERM; NEXT" on stderr and
/// returns interrupted_status(). `next` says what was kept and how to
/// resume.
int report_interrupted(const std::string& command, const std::string& next);

/// --log-level of the main command, and whether it was given.
extern std::string log_level;
extern bool log_level_given;
extern std::string log_format_name;
/// What a long-running command says of itself on stderr: "nodepool
/// PROGRAM: TEXT" as a line of its own, or with --log-format json a JSON
/// record (level as given), whatever the log level.
void say(const std::string& program, const std::string& text,
         const char* level = "warn");
/// What every subcommand does first: log level, signal handlers.
void begin();

/// Thrown by a subcommand to make the process exit with `code`.
struct exit_code {
  int code;
};

/// Adds `--<name>` (with dashes) for every pool parameter to `app`; values
/// land in `out` and are applied by apply_param_flags over file settings.
void add_param_flags(CLI::App& app, std::map<std::string, std::string>& out);
/// Defaults, then the TOML file (if any), then the flags. Throws
/// std::runtime_error naming the bad key.
params resolve_params(const std::string& config_file,
                      const std::map<std::string, std::string>& flags,
                      params base = {});

/// Adds --tls-cert, --tls-key and --tls-ca to `app`.
void add_tls_flags(CLI::App& app, tls_files& out);
/// If TLS was asked for, checks the files (std::runtime_error naming what is
/// wrong) and loads CAF's openssl module into `cfg`.
void setup_tls(actor_config& cfg, const tls_files& tls);

/// The HTTP API's settings (flags, or [http] in an oracle's config).
struct http_options {
  std::string listen;     // HOST:PORT, or "off"; empty: 127.0.0.1:5010
  std::string keys_file;  // API keys; none: loopback only
  double rate_per_key = 0;
  int threads = 2;
  size_t max_connections = 0;  // 0: the server's default (4096)
  int64_t events_keepalive_ms = 0;  // 0: 15 s
};
void add_http_flags(CLI::App& cmd, http_options& o);

/// A running HTTP API (server null when off or not started).
struct http_api {
  std::unique_ptr<http::server> server;
  std::string url;  // "http://127.0.0.1:5010"
  size_t keys = 0;
  /// The event feed's relay from the supervisor: stopped when this goes
  /// (so the actor system can end).
  std::shared_ptr<void> relay;
};
/// Starts the HTTP API on an oracle's actors. Off, or the default port
/// taken (another oracle on this host: a warning says so), gives no
/// server; an address given explicitly that cannot be used, or a public
/// address without keys, throws std::runtime_error.
http_api start_http_api(const http_options& o, caf::actor_system& sys,
                        const oracle_handles& h, const std::string& oracle_id,
                        const tls_files& tls);

/// `s` as one word for /bin/sh: in single quotes, each ' written '\''.
inline std::string shell_quote(const std::string& s) {
  std::string r = "'";
  for (char ch : s)
    r += ch == '\'' ? std::string{"'\\''"} : std::string(1, ch);
  return r + "'";
}

/// Whether a host names this host's loopback (127.0.0.0/8, ::1,
/// localhost): reachable from this host only.
bool loopback_host(const std::string& h);

/// Splits "host:port"; throws std::runtime_error on a bad form.
std::pair<std::string, uint16_t> parse_host_port(const std::string& s);

/// Opens a RocksDB store or throws std::runtime_error with the reason.
/// `read_only` (`check`, `sessions`): nothing in the directory changes,
/// and a running oracle's lock is not needed.
std::shared_ptr<store> open_store(const std::string& dir, bool read_only = false);

/// JSON summary of a pool state (node counts by state, session counts,
/// tests) shared by demo, status and check.
nlohmann::json summarize(const pool_state& ps);

void add_demo(CLI::App& app);
void add_oracle(CLI::App& app);
void add_miner(CLI::App& app);
void add_bank(CLI::App& app);
void add_submit(CLI::App& app);
void add_status(CLI::App& app);
void add_check(CLI::App& app);
void add_sessions(CLI::App& app);
void add_keygen(CLI::App& app);
void add_ctl(CLI::App& app);
void add_sim(CLI::App& app);
void add_chaos(CLI::App& app);
void add_bench(CLI::App& app);

} // namespace nodepool::cli
