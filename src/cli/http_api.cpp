// The oracle's HTTP API as the commands start it (oracle, demo).
#include <csignal>

#include <CLI/CLI.hpp>
#include <caf/all.hpp>
#include <caf/io/all.hpp>
#include <caf/openssl/all.hpp>

#include "actors/api.hpp"
#include "actors/node.hpp"
#include "cli/common.hpp"
#include "cluster_config.hpp"
#include "http/router.hpp"
#include "log.hpp"

namespace nodepool::cli {

namespace {

/// The HTTP API's default address (Cortensor's router port).
constexpr const char* default_http = "127.0.0.1:5010";

}  // namespace

/// Starts the HTTP API of an oracle, or explains why not. Returns null when
/// it is off, or when the default port is taken (another oracle on this
/// host has it: a warning says so); an address given explicitly that cannot
/// be used is an error.
http_api start_http_api(const http_options& o,
                                             caf::actor_system& sys,
                                             const oracle_handles& h,
                                             const std::string& oracle_id,
                                             const tls_files& tls) {
  if (o.listen == "off")
    return {};
  // A client that goes away mid-answer must not take the process with it.
  std::signal(SIGPIPE, SIG_IGN);
  bool given = !o.listen.empty();
  auto addr = given ? o.listen : std::string{default_http};
  // Port 0 (any free port, for tests) is allowed here.
  bool any_port = addr.size() > 2 && addr.compare(addr.size() - 2, 2, ":0") == 0;
  auto [host, port] = parse_host_port(any_port ? addr.substr(0, addr.size() - 2) + ":1"
                                               : addr);
  if (any_port)
    port = 0;
  http::router_config rc;
  rc.oracle_id = oracle_id;
  rc.scheme = tls.enabled() ? "https" : "http";
  if (!o.keys_file.empty())
    rc.keys = http::api_keys::load(o.keys_file);
  rc.rate_per_key = o.rate_per_key;
  if (rc.keys.empty() && !loopback_host(host))
    throw std::runtime_error(
      "--http " + host + ":" + std::to_string(port)
      + " is not a loopback address: give --api-keys FILE so that only "
        "holders of a key can use the API");
  // A cluster member passes writes on to the leader's gateway, reached the
  // way miners reach it (with TLS when this oracle uses it).
  // (connect_oracle: with TLS when this oracle uses it, and never stuck on
  // a leader whose link is cut.)
  connect_fn connect = [&sys](const std::string& addr) -> caf::expected<caf::actor> {
    try {
      auto [host, port] = parse_host_port(addr);
      return connect_oracle(sys, host, port, std::chrono::seconds(5));
    } catch (const std::exception& e) {
      return caf::make_error(caf::sec::invalid_argument, e.what());
    }
  };
  rc.events = std::make_shared<http::event_feed>();
  auto keepalive = std::chrono::milliseconds(
    o.events_keepalive_ms > 0 ? o.events_keepalive_ms : 15000);
  rc.events->announce_keepalive(keepalive);
  auto counters = std::make_shared<http::server_counters>();
  rc.server = counters;
  auto relay = spawn_event_relay(sys, h.supervisor, rc.events, keepalive);
  std::shared_ptr<void> relay_guard(nullptr, [relay, feed = rc.events](void*) {
    caf::anon_send_exit(relay, caf::exit_reason::user_shutdown);
    feed->close_all();  // the streams it holds hold their connections
  });
  forget_fn forget = [](const std::string& addr) {
    if (auto hp = split_host_port(addr))
      drop_connections(hp->first, hp->second);
  };
  auto router = std::make_shared<http::router>(
    rc, make_pool_api(sys, h.gateway, h.supervisor, std::move(connect),
                      std::chrono::seconds(10), std::move(forget)));
  http::server_config sc;
  sc.counters = counters;
  if (o.max_connections > 0)
    sc.max_connections = o.max_connections;
  sc.host = host;
  sc.port = port;
  sc.threads = o.threads;
  if (tls.enabled()) {
    sc.tls_certificate = tls.certificate;
    sc.tls_key = tls.key;
  }
  auto srv = std::make_unique<http::server>(
    sc, [router](http::request q, std::shared_ptr<http::reply> r) {
      router->handle(std::move(q), std::move(r));
    });
  if (auto err = srv->start(); !err.empty()) {
    if (given)
      throw std::runtime_error("HTTP API: " + err);
    say("oracle", "HTTP API not started: " + err
                    + " (give --http HOST:PORT, or --http off)");
    return {};
  }
  http_api out;
  out.url = std::string{srv->tls() ? "https" : "http"} + "://" + host + ":"
            + std::to_string(srv->port());
  out.keys = rc.keys.size();
  out.server = std::move(srv);
  out.relay = std::move(relay_guard);
  return out;
}

void add_http_flags(CLI::App& cmd, http_options& o) {
  cmd.add_option("--http", o.listen,
                 "HTTP API address HOST:PORT (default 127.0.0.1:5010; 0 as "
                 "the port picks a free one), or off");
  cmd.add_option("--api-keys", o.keys_file,
                 "file of API keys, one per line: KEY ROLE (client or "
                 "admin); without it the API listens on loopback only");
  cmd.add_option("--http-max-connections", o.max_connections,
                 "HTTP connections open at once, at most (default 4096); "
                 "past it a new one is answered 503")
    ->check(CLI::Range(1, 1000000));
  cmd.add_option("--http-events-keepalive-ms", o.events_keepalive_ms,
                 "a comment on every event stream this often (default 15000), "
                 "so that proxies keep it open and a reader can tell a "
                 "silent stream from a quiet pool")
    ->check(CLI::Range(int64_t{100}, int64_t{600000}));
  cmd.add_option("--api-rate", o.rate_per_key,
                 "requests per second per API key (default: no limit)")
    ->check(CLI::Range(0.0, 1e9));
}

} // namespace nodepool::cli
