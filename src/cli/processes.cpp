// The multi-process commands: oracle, miner, submit, status, check.
#include <CLI/CLI.hpp>
#include <filesystem>
#include <fstream>
#include <caf/all.hpp>
#include <caf/io/all.hpp>
#include <caf/openssl/all.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <iostream>
#include <cstdlib>
#include <optional>
#include <set>
#include <thread>

#include <toml++/toml.h>

#include "actors/api.hpp"
#include "actors/config.hpp"
#include "actors/node.hpp"
#include "actors/oracle.hpp"
#include "accept_guard.hpp"
#include "cli/common.hpp"
#include "identity.hpp"
#include "log.hpp"
#include "archive.hpp"
#include "cluster_config.hpp"
#include "cognitive.hpp"
#include "raft/raft_disk.hpp"
#include "raft/raft_log.hpp"
#include "member_archive.hpp"
#include "replica.hpp"
#include "recovery.hpp"
#include "http/api_keys.hpp"

namespace nodepool::cli {

namespace {

using namespace std::chrono_literals;

/// Connects to `target` ("host:port", or a comma-separated list of a
/// cluster's members), retrying for up to `timeout_s`. With `follow_leader`
/// the gateway returned is the leader's (a single oracle leads itself);
/// without, the first member that answers.
caf::expected<caf::actor> connect_retry(caf::actor_system& sys,
                                        const std::string& target,
                                        double timeout_s,
                                        bool follow_leader = true) {
  auto list = split_oracles(target);
  if (list.empty())
    throw std::runtime_error("no oracle given");
  for (auto& o : list)
    parse_host_port(o);  // a malformed address is an error now, not a retry
  auto deadline = std::chrono::steady_clock::now()
                  + std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  size_t next = 0;
  // Between looks: 10 ms at first (a hand-over's new leader is found that
  // soon), doubling to 250 ms (an outage does not get every client asking
  // every member a hundred times a second).
  auto pause = 10ms;
  // A search that goes on says why, every 2 s, at info: what the last
  // attempt met (a member that does not answer, an election, no handshake).
  auto start = std::chrono::steady_clock::now();
  auto told = start;
  for (;;) {
    // Each attempt waits for a handshake at most half a second, so that a
    // signal is noticed in time; a handshake still under way is not
    // abandoned: the middleman finishes it and answers the next attempt.
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::steady_clock::now());
    auto slice = std::clamp(left, 100ms, 500ms);
    caf::expected<caf::actor> gw{caf::sec::cannot_connect_to_node};
    if (follow_leader) {
      gw = connect_leader(sys, list, slice);
    } else {
      auto [host, port] = parse_host_port(list[next++ % list.size()]);
      gw = connect_oracle(sys, host, port, slice);
    }
    auto now = std::chrono::steady_clock::now();
    if (gw || now > deadline || stop_requested)
      return gw;
    if (now - told >= 2s) {
      told = now;
      log("client")->info(
        "no {} at {} after {} ms: {}", follow_leader ? "leader" : "oracle",
        target,
        std::chrono::duration_cast<std::chrono::milliseconds>(now - start).count(),
        sys.render(gw.error()));
    }
    std::this_thread::sleep_for(pause);
    pause = std::min<std::chrono::milliseconds>(pause * 2, 250ms);
  }
}

// ------------------------------------------------------------------ oracle

struct oracle_options {
  std::string data_dir;
  std::string host = "127.0.0.1";
  uint16_t port = 4242;
  std::string config;
  bool no_sync = false;
  std::map<std::string, std::string> flags;
  CLI::Option* host_flag = nullptr;  // to tell a flag from its default
  CLI::Option* port_flag = nullptr;
  tls_files tls;
  std::string allow;        // allow-list of node keys
  std::string join_tokens;  // file of join tokens
  std::string cluster;      // cluster file: run as one member of it
  uint64_t id = 0;          // ... this member's id
  bool join = false;        // ... joining a running cluster (ctl members add)
  http_options api;          // the HTTP API ([http] in the config file)
  tests_files tests;         // --bank, --test-secret ([tests])
};

/// The bank and the secret of this oracle's cognitive tests: flags first,
/// then [tests] of the config file, then of the cluster file; the builtin
/// bank and `<data-dir>/test_secret` by default. A bank that does not parse
/// stops the start with its line.
test_config load_tests(const oracle_options& o, const tests_files& from_config,
                       const tests_files* from_cluster) {
  auto pick = [&](std::string tests_files::*f) {
    if (!(o.tests.*f).empty())
      return o.tests.*f;
    if (!(from_config.*f).empty())
      return from_config.*f;
    return from_cluster ? from_cluster->*f : std::string{};
  };
  test_config tc;
  auto bank = pick(&tests_files::bank);
  tc.bank = bank.empty() ? challenge_bank::builtin()
                         : std::make_shared<const challenge_bank>(challenge_bank::load(bank));
  auto secret = pick(&tests_files::secret_file);
  if (secret.empty()) {
    secret = o.data_dir + "/test_secret";
    if (from_cluster)
      log("oracle")->warn("the cluster file names no [tests] secret_file: this "
                          "member chooses test items with a secret of its own "
                          "({})", secret);
  }
  tc.secret = load_or_create_secret(secret);
  auto levels = tc.bank->levels();
  log("oracle")->info("cognitive tests: {} ({} items, levels {}..{}), secret in {}",
                      bank.empty() ? "builtin bank" : bank, tc.bank->items().size(),
                      levels.front(), levels.back(), secret);
  return tc;
}



/// This oracle's member of the cluster: the replica, its replicated log
/// (libraft in `<data-dir>/raft`) and the relay of role changes. Declared
/// in this order so the log (whose thread applies to the replica and writes
/// the archive) stops first.
struct cluster_parts {
  std::shared_ptr<replica> rep;
  std::shared_ptr<replica_machine> machine;
  std::shared_ptr<role_relay> roles;
  std::shared_ptr<replicated_log> log;
};

/// Set (on the log's thread) when this member cannot keep its archive: the
/// oracle stops with the reason, and a restart applies the entries again.
std::atomic<bool> member_failed{false};
std::mutex member_failure_mu;
std::string member_failure;

cluster_parts join_cluster(const oracle_options& o, const cluster_config& cc,
                           std::shared_ptr<store> storage) {
  cluster_parts c;
  // Every replica writes the sessions its committed entries end to its own
  // archive, and records gaps a snapshot install leaves (member_archive.hpp);
  // it checks I1-I5 on what each committed command touched.
  c.rep = member_replica(storage, true, [](const std::string& why) {
    log("oracle")->critical("{}", why);
    {
      std::lock_guard<std::mutex> g{member_failure_mu};
      if (member_failure.empty())
        member_failure = why;
    }
    member_failed = true;
  });
  // Deferred: as leader, a commit is answered before the replica's own
  // work on it (replica.hpp), which raft's loop does right after.
  c.machine = std::make_shared<replica_machine>(*c.rep, true);
  c.roles = std::make_shared<role_relay>();
  raft_options ro;
  ro.id = o.id;
  ro.dir = o.data_dir + "/raft";
  std::filesystem::create_directories(ro.dir);
  for (auto& m : cc.members)
    ro.members.push_back({m.id, m.raft});
  ro.election_timeout_ms = cc.election_timeout_ms;
  ro.heartbeat_timeout_ms = cc.heartbeat_timeout_ms;
  ro.snapshot_threshold = cc.snapshot_threshold;
  ro.snapshot_trailing = cc.snapshot_trailing;
  ro.install_snapshot_timeout_ms = cc.install_snapshot_timeout_ms;
  ro.join = o.join;
  // The oracle's certificate (the miners' TLS) serves between oracles too.
  if (o.tls.enabled())
    ro.tls = {o.tls.certificate, o.tls.key, o.tls.ca};
  std::string err;
  auto roles = c.roles;
  auto l = start_raft_log(ro, *c.machine,
                          [roles](const log_status& s) { roles->publish(s); },
                          err);
  if (!l)
    throw std::runtime_error("cannot start the replicated log in " + ro.dir
                             + ": " + err);
  c.log = std::move(l);
  return c;
}

int run_oracle(oracle_options& o) {
  begin();
  // [oracle] in the config file gives defaults for the flags: a flag given
  // on the command line wins. Unknown keys and bad values are errors.
  tests_files config_tests;
  if (!o.config.empty()) {
    toml::table tbl;
    std::string text;
    try {
      std::ifstream f{o.config, std::ios::binary};
      if (!f)
        throw std::runtime_error(o.config + ": cannot be read");
      text.assign(std::istreambuf_iterator<char>{f}, {});
      tbl = toml::parse(without_toml_trap(text), o.config);
    } catch (const toml::parse_error& e) {
      throw std::runtime_error(o.config + ": " + std::string{e.description()});
    }
    // [pool] is read by resolve_params, [oracle] below; anything else is a
    // typo (a misspelt [oracle] would silently drop its port and data_dir).
    for (auto& [k, v] : tbl) {
      auto key = std::string{k.str()};
      if (key != "oracle" && key != "pool" && key != "http" && key != "tests")
        throw std::runtime_error(o.config + ": unknown key " + key
                                 + " (expected [pool], [oracle], [http] and "
                                   "[tests])");
    }
    config_tests = parse_tests_table(text, o.config);
    if (tbl.contains("oracle") && !tbl["oracle"].is_table())
      throw std::runtime_error(o.config + ": oracle must be a table ([oracle])");
    if (auto* t = tbl["oracle"].as_table()) {
      for (auto& [k, v] : *t) {
        auto key = std::string{k.str()};
        auto bad = [&](const std::string& why) {
          return std::runtime_error(o.config + ": oracle." + key + ": " + why);
        };
        if (key == "allow" || key == "join_tokens") {
          auto x = v.value<std::string>();
          if (!v.is_string() || !x || x->empty())
            throw bad("expected a file name");
          auto& into = key == "allow" ? o.allow : o.join_tokens;
          if (into.empty())
            into = *x;
        } else if (key == "data_dir" || key == "host") {
          auto x = v.value<std::string>();
          if (!v.is_string() || !x || x->empty())
            throw bad("expected a non-empty string");
          if (key == "data_dir" && o.data_dir.empty())
            o.data_dir = *x;
          if (key == "host" && !(o.host_flag && o.host_flag->count() > 0))
            o.host = *x;
        } else if (key == "port") {
          auto x = v.value<int64_t>();
          if (!v.is_integer() || !x || *x < 0 || *x > 65535)
            throw bad("expected a port number, 0..65535");
          if (!(o.port_flag && o.port_flag->count() > 0))
            o.port = static_cast<uint16_t>(*x);
        } else {
          throw std::runtime_error(o.config + ": unknown key oracle." + key);
        }
      }
    }
    if (tbl.contains("http") && !tbl["http"].is_table())
      throw std::runtime_error(o.config + ": http must be a table ([http])");
    if (auto* t = tbl["http"].as_table()) {
      for (auto& [k, v] : *t) {
        auto key = std::string{k.str()};
        auto bad = [&](const std::string& why) {
          return std::runtime_error(o.config + ": http." + key + ": " + why);
        };
        if (key == "listen" || key == "api_keys") {
          auto x = v.value<std::string>();
          if (!v.is_string() || !x || x->empty())
            throw bad("expected a non-empty string");
          auto& into = key == "listen" ? o.api.listen : o.api.keys_file;
          if (into.empty())
            into = *x;
        } else if (key == "rate_per_key") {
          auto x = v.value<double>();
          if (!(v.is_floating_point() || v.is_integer()) || !x || *x < 0)
            throw bad("expected requests per second, >= 0");
          if (o.api.rate_per_key == 0)
            o.api.rate_per_key = *x;
        } else if (key == "threads") {
          auto x = v.value<int64_t>();
          if (!v.is_integer() || !x || *x < 1 || *x > 64)
            throw bad("expected 1..64");
          o.api.threads = static_cast<int>(*x);
        } else if (key == "events_keepalive_ms") {
          auto x = v.value<int64_t>();
          if (!v.is_integer() || !x || *x < 100 || *x > 600000)
            throw bad("expected 100..600000 (ms)");
          if (o.api.events_keepalive_ms == 0)  // the flag wins
            o.api.events_keepalive_ms = *x;
        } else if (key == "max_connections") {
          auto x = v.value<int64_t>();
          if (!v.is_integer() || !x || *x < 1 || *x > 1000000)
            throw bad("expected 1..1000000");
          if (o.api.max_connections == 0)  // the flag wins
            o.api.max_connections = static_cast<size_t>(*x);
        } else {
          throw std::runtime_error(o.config + ": unknown key http." + key);
        }
      }
    }
  }
  if (o.data_dir.empty())
    throw std::runtime_error("--data-dir is required (or [oracle] data_dir)");
  std::optional<cluster_config> cc;
  if (!o.cluster.empty()) {
    cc = load_cluster(o.cluster);
    if (o.id == 0)
      throw std::runtime_error("--id is required with --cluster");
    auto* me = cc->find(o.id);
    if (!me)
      throw std::runtime_error("member " + std::to_string(o.id)
                               + " is not in " + o.cluster);
    // The member's address is where miners and clients reach it, unless
    // the command line says otherwise.
    auto [h, port] = parse_host_port(me->address);
    if (!(o.host_flag && o.host_flag->count() > 0))
      o.host = h;
    if (!(o.port_flag && o.port_flag->count() > 0))
      o.port = port;
  }
  // A member's parameters: the cluster file's [pool], then its own
  // --config's (for this member), then its flags. (The cluster's were
  // dropped when --config was given.)
  auto p = resolve_params(o.config, o.flags,
                          cc ? load_params(o.cluster, params{}) : params{});
  actor_config cfg;
  setup_tls(cfg, o.tls);
  if (cc) {
    std::filesystem::create_directories(o.data_dir);
    claim_data_dir(*cc, o.data_dir);
  }
  auto storage = open_store(o.data_dir);
  auto tests = load_tests(o, config_tests, cc ? &cc->tests : nullptr);
  cluster_parts cluster;
  if (cc)
    cluster = join_cluster(o, *cc, storage);
  caf::actor_system sys{cfg};
  // The replicated log's thread calls into the actors (role changes,
  // commits): it stops, on every way out of here, before the actor system
  // goes (declared after it, so destroyed first).
  std::shared_ptr<void> stop_log{nullptr, [&cluster](void*) {
    if (cluster.log) {
      cluster.roles->listen({});
      cluster.log->stop();
    }
  }};
  supervisor_config sc;
  sc.pool = p;
  sc.tests = tests;
  sc.storage = storage;
  sc.sync = !o.no_sync;
  sc.cluster_log = cluster.log;
  sc.replica = cluster.machine;
  sc.roles = cluster.roles;
  if (cc)
    sc.rotation_interval = std::chrono::milliseconds(cc->rotation_interval_ms);
  if (cc)
    for (auto& m : cc->members) {
      sc.member_addresses[m.id] = m.address;
      if (!m.http.empty())
        sc.member_http[m.id] = m.http;
    }
  // A member's HTTP API listens where the cluster file says, unless told.
  if (cc && o.api.listen.empty() && !cc->find(o.id)->http.empty())
    o.api.listen = cc->find(o.id)->http;
  if (!o.allow.empty())
    load_allow_list(o.allow, sc.admission);
  if (!o.join_tokens.empty())
    load_join_tokens(o.join_tokens, sc.admission);
  if (sc.admission.open())
    log("oracle")->warn("admission is open: any node may register "
                        "(give --allow and/or --join-tokens to require keys)");
  else if (sc.admission.allowed_keys.empty() && sc.admission.join_tokens.empty())
    log("oracle")->warn("admission lists no key and no join token: no node "
                        "can register until some are added");
  else
    log("oracle")->info("admitting {} allowed key(s), {} join token(s)",
                        sc.admission.allowed_keys.size(),
                        sc.admission.join_tokens.size());
  auto h = start_oracle(sys, sc);
  // Out of descriptors, CAF's multiplexer would retry a failed accept at
  // once, forever: on its thread a connection is closed instead
  // (accept_guard.hpp). Posted before the publish, so it runs first.
  sys.middleman().backend().dispatch([] { shed_when_out_of_descriptors(); });
  auto port = o.tls.enabled()
                ? caf::openssl::publish(h.gateway, o.port, o.host.c_str(), true)
                : sys.middleman().publish(h.gateway, o.port, o.host.c_str(),
                                          true);
  if (!port) {
    say("oracle", "cannot listen on " + o.host + ":" + std::to_string(o.port)
                    + ": " + sys.render(port.error()), "error");
    stop_oracle(h);
    return 1;
  }
  // Clients of this port (submit, status, sessions) are authenticated by
  // TLS alone: without it, on an address other hosts reach, anyone who
  // reaches it may submit sessions and read the pool's state.
  if (!o.tls.enabled() && !loopback_host(o.host))
    log("oracle")->warn("the port for miners and clients listens on {}:{} "
                        "without TLS: anyone who reaches it may submit "
                        "sessions and read the pool's state (give "
                        "--tls-cert, --tls-key and --tls-ca to require "
                        "certificates)",
                        o.host, *port);
  if (cc)
    std::printf("nodepool oracle %llu of %zu listening on %s:%u (raft on %s, "
                "data in %s)\n",
                static_cast<unsigned long long>(o.id), cc->members.size(),
                o.host.c_str(), *port, cc->find(o.id)->raft.c_str(),
                o.data_dir.c_str());
  else
    std::printf("nodepool oracle listening on %s:%u (data in %s)\n",
                o.host.c_str(), *port, o.data_dir.c_str());
  http_api api;
  try {
    api = start_http_api(o.api, sys, h,
                         o.cluster.empty() ? "oracle"
                                           : "oracle-" + std::to_string(o.id),
                         o.tls);
  } catch (const std::exception& e) {
    say("oracle", e.what(), "error");
    stop_oracle(h);
    return 1;
  }
  std::fflush(stdout);
  // The HTTP threads stop before the actors they ask (on every way out).
  if (api.server)
    std::printf("HTTP API on %s/api/v1/ (%s)\n", api.url.c_str(),
                api.keys == 0
                  ? "no --api-keys: open to anyone on this host, loopback only"
                  : (std::to_string(api.keys) + " API key(s)").c_str());
  if (api.server)
    std::printf("dashboard on %s/, metrics on %s/metrics\n", api.url.c_str(),
                api.url.c_str());
  std::fflush(stdout);
  std::shared_ptr<void> stop_api{nullptr, [&api](void*) {
    if (api.server)
      api.server->stop();
  }};
  caf::scoped_actor self{sys};
  self->monitor(h.supervisor);
  bool supervisor_died = false;
  bool log_seen_up = false;
  std::string member_down;
  while (!stop_requested && !supervisor_died && member_down.empty()) {
    self->receive([&](caf::down_msg&) { supervisor_died = true; },
                  caf::after(200ms) >> [] {});
    if (member_failed) {
      std::lock_guard<std::mutex> g{member_failure_mu};
      member_down = member_failure;
    }
    if (cluster.log) {
      // libraft stops a member for good on an I/O error it cannot recover
      // from (a full disk, say): nothing more is written, so stop here.
      auto ls = cluster.log->status();
      if (!ls.write_error.empty())
        member_down = "a write to the replicated log in " + o.data_dir
                      + "/raft failed: " + ls.write_error;
      else if (!ls.restore_error.empty())
        member_down = ls.restore_error + " (raft wrote it to " + o.data_dir
                      + "/raft)";
      else if (!ls.apply_error.empty())
        member_down = ls.apply_error + " (in " + o.data_dir
                      + "/raft: keep it for inspection, and check that the"
                        " other members still serve)";
      else if (ls.role != log_role::unavailable)
        log_seen_up = true;
      else if (log_seen_up)
        member_down = "the replicated log stopped (an I/O error in "
                      + o.data_dir + "/raft?)";
    }
  }
  if (!member_down.empty()) {
    say("oracle", member_down
                    + "; stopping (the other members hold every committed "
                      "entry: start this one again once the cause is fixed)",
        "error");
    stop_oracle(h);
    cluster.roles->listen({});
    cluster.log->stop();
    // No clean close of a store that failed a write (RocksDB asserts in
    // it): what it wrote is in the files already, and what it could not
    // write is in the replicated log, applied again at the next start.
    std::cout.flush();
    std::cerr.flush();
    std::_Exit(1);
  }
  if (supervisor_died) {
    say("oracle", "the pool supervisor stopped (see log)", "error");
    stop_oracle(h);
    return 1;
  }
  // A leader asked to stop hands leadership over first (libraft's
  // raft_transfer), so the cluster does not wait an election timeout for
  // a new one; for stop_handover_ms at most, so that a signal still ends
  // the oracle promptly (members stopped together may never hear who won).
  if (cluster.log && cc->stop_handover_ms > 0
      && cluster.log->status().role == log_role::leader) {
    caf::scoped_actor asker{sys};
    auto limit = std::chrono::milliseconds(cc->stop_handover_ms);
    asker->request(h.supervisor, limit, transfer_atom::value, uint64_t{0})
      .receive(
        [&](const std::string& text) {
          auto j = nlohmann::json::parse(text, nullptr, false);
          auto to = j.value("leader_id", uint64_t{0});
          say("oracle", to != 0 ? "handed leadership to member "
                                    + std::to_string(to) + " before stopping"
                                : "handed leadership over before stopping "
                                  "(the new leader not heard from yet)",
              "info");
        },
        [&](caf::error& e) {
          // Out of time: whether the transfer went through is in the
          // member's role (libraft steps down once the target stood).
          if (e == caf::sec::request_timeout
              && cluster.log->status().role != log_role::leader)
            say("oracle", "handed leadership over before stopping (the new "
                          "leader not heard from within "
                            + std::to_string(cc->stop_handover_ms) + " ms)",
                "info");
          else
            say("oracle", "could not hand leadership over before stopping ("
                            + (e == caf::sec::request_timeout
                                 ? "not done within "
                                     + std::to_string(cc->stop_handover_ms)
                                     + " ms, [raft] stop_handover_ms"
                                 : sys.render(e))
                            + "); the others elect a leader after their "
                              "election timeout");
        });
  }
  // A signal is how an oracle is meant to end: the supervisor commits what
  // it holds, the store is closed on return, and the exit status is 0.
  stop_oracle(h);
  self->wait_for(h.supervisor);
  std::printf("nodepool oracle stopped\n");
  say("oracle", std::string{"stopped by "} + stop_signal_name()
                  + "; start it again with --data-dir " + o.data_dir
                  + " to resume",
      "info");
  return 0;
}

// ------------------------------------------------------------------ miner

struct miner_options {
  std::string oracle;
  size_t nodes = 1;
  std::string behaviour = "healthy";
  uint64_t seed = 1;
  std::string prefix = "miner";
  std::string models = "llama-3-8b";
  double connect_timeout_s = 30;
  double duration_s = 0;
  int64_t deadline_hint_ms = 5000;
  std::string backend = "sim";
  std::string openai_url;
  std::string openai_model;
  std::string openai_key;
  int64_t openai_timeout_ms = 30000;
  uint32_t openai_parallel = 1;
  tls_files tls;
  std::string key;         // node key file (nodepool keygen)
  std::string join_token;
  std::string bank;        // the sim backend's "model": this bank's answers
};

int run_miner(miner_options& o) {
  begin();
  std::string err;
  auto kinds = expand_mix(o.behaviour, o.nodes, o.seed, err);
  if (!err.empty())
    throw std::runtime_error("--behaviour: " + err);
  std::vector<std::string> models;
  {
    std::stringstream in{o.models};
    std::string m;
    while (std::getline(in, m, ','))
      if (!m.empty())
        models.push_back(m);
  }
  if (models.empty())
    throw std::runtime_error("--models: name at least one model");
  std::optional<openai_config> model;
  if (o.backend == "openai") {
    if (o.openai_url.empty())
      throw std::runtime_error("--backend openai needs --openai-url");
    openai_config oc;
    oc.base_url = o.openai_url;
    oc.model = o.openai_model.empty() ? models.front() : o.openai_model;
    oc.api_key = o.openai_key;
    if (oc.api_key.empty())
      if (auto* k = std::getenv("OPENAI_API_KEY"))
        oc.api_key = k;
    oc.timeout_ms = o.openai_timeout_ms;
    oc.parallel = o.openai_parallel;
    // A signal ends the requests under way: the nodes' workers do not make
    // the process wait for the inference server (up to the timeout, for
    // each prompt queued).
    oc.canceller = std::make_shared<request_canceller>();
    model = oc;
  }
  // The simulation hands its healthy nodes the bank (never the protocol).
  std::shared_ptr<const sim_knowledge> knowledge;
  if (!o.bank.empty())
    knowledge = std::make_shared<const sim_knowledge>(challenge_bank::load(o.bank));
  // Healthy nodes write their sent answers to the tape only for copycats
  // to read: without one, no tape (and no decoding of what they send).
  std::shared_ptr<answer_tape> tape;
  if (std::find(kinds.begin(), kinds.end(), behaviour::copycat) != kinds.end())
    tape = std::make_shared<answer_tape>();
  std::shared_ptr<const node_key> key;
  if (!o.key.empty())
    key = std::make_shared<node_key>(node_key::load(o.key));
  else if (!o.join_token.empty())
    throw std::runtime_error("--join-token needs --key (the token admits a key)");
  actor_config cfg;
  setup_tls(cfg, o.tls);
  caf::actor_system sys{cfg};
  auto gw = connect_retry(sys, o.oracle, o.connect_timeout_s);
  if (!gw && stop_requested) {
    say("miner", std::string{"stopped by "} + stop_signal_name()
                   + " before it reached the oracle",
        "info");
    return 0;
  }
  if (!gw) {
    say("miner", "cannot reach oracle " + o.oracle + ": "
                   + sys.render(gw.error()), "error");
    return 1;
  }
  caf::scoped_actor self{sys};
  std::vector<caf::actor> nodes;
  for (size_t i = 0; i < o.nodes; ++i) {
    node_config nc;
    nc.id = o.prefix + "-" + std::to_string(i);
    nc.models = models;
    nc.kind = kinds[i];
    nc.seed = o.seed * 1000003 + i;
    nc.deadline_hint_ms = o.deadline_hint_ms;
    nc.openai = model;
    nc.key = key;
    nc.join_token = o.join_token;
    nc.knowledge = knowledge;
    nc.tape = tape;
    auto n = spawn_node(sys, nc, *gw);
    self->monitor(n);
    nodes.push_back(n);
  }
  self->monitor(*gw);
  auto gateway = *gw;
  std::set<caf::actor_addr> node_addrs;
  for (auto& n : nodes)
    node_addrs.insert(n.address());
  std::printf("nodepool miner: %zu node(s) connected to %s\n", o.nodes,
              o.oracle.c_str());
  std::fflush(stdout);
  auto start = std::chrono::steady_clock::now();
  size_t alive = nodes.size();
  size_t sent_away = 0;  // refused for good (retired, key, bounds)
  size_t died = 0;       // stopped by an error of their own
  bool oracle_gone = false;
  auto last_check = std::chrono::steady_clock::now();
  while (!stop_requested && alive > 0) {
    if (o.duration_s > 0
        && std::chrono::steady_clock::now() - start
             > std::chrono::milliseconds(static_cast<int64_t>(o.duration_s * 1000)))
      break;
    // A cluster's leader may change while this connection stays up (a
    // rotation, a hand-over): the nodes follow it (a single oracle always
    // leads itself). Asked every 100 ms: a small question to the gateway,
    // and how long grants wait for the nodes after a hand-over.
    if (std::chrono::steady_clock::now() - last_check > 100ms) {
      last_check = std::chrono::steady_clock::now();
      // Briefly: a leader killed during this question does not answer,
      // and its nodes must not wait long to move.
      if (!is_leader(sys, gateway, 250ms)) {
        auto again = connect_retry(sys, o.oracle, 1);
        if (again && *again != gateway) {
          log("miner")->info("following the new leader");
          self->demonitor(gateway);
          gateway = *again;
          self->monitor(gateway);
          for (auto& n : nodes)
            self->send(n, connect_atom::value, gateway);
        }
      }
    }
    self->receive(
      [&](caf::down_msg& dm) {
        if (dm.source == gateway.address()) {
          log("miner")->warn("oracle connection lost; reconnecting");
          auto again = connect_retry(sys, o.oracle, o.connect_timeout_s);
          if (!again) {
            if (!stop_requested) {  // not a SIGTERM cutting the retries short
              say("miner", "oracle gone: " + sys.render(again.error()),
                  "error");
              oracle_gone = true;
            }
            stop_requested = true;
            return;
          }
          gateway = *again;
          self->monitor(gateway);
          for (auto& n : nodes)
            self->send(n, connect_atom::value, gateway);
          return;
        }
        // A gateway left behind (its down message was on its way when the
        // nodes moved to a new leader) is no node of ours.
        if (!node_addrs.count(dm.source))
          return;
        --alive;
        if (dm.reason && dm.reason != caf::exit_reason::user_shutdown) {
          auto [code, detail] = read_refusal(sys, dm.reason);
          if (refusal_code(code) != pb::REFUSAL_UNAVAILABLE) {
            say("miner", "the oracle sent a node away: " + code + ": "
                           + detail);
            ++sent_away;
          } else {
            auto text = sys.render(dm.reason);
            say("miner", "node stopped: " + text);
            if (text.find("simulated crash") == std::string::npos)
              ++died;
          }
        }
      },
      caf::after(50ms) >> [] {});
  }
  if (model)
    model->canceller->cancel_all();
  for (auto& n : nodes)
    self->send_exit(n, caf::exit_reason::user_shutdown);
  if (stop_signal != 0 && !oracle_gone)
    say("miner", std::string{"stopped by "} + stop_signal_name()
                   + "; start it again (same --id-prefix) to rejoin with the "
                     "same node ids",
        "info");
  // A signal (or --duration) is how a miner is meant to end: 0, whatever
  // became of some of its nodes (each was reported as it went). Ended by
  // itself: 1 for an oracle that did not come back within
  // --connect-timeout or nodes that failed (a restart may help), 3 when
  // the pool sent every node away for good (retired, key refused, an id
  // out of bounds: a restart would be refused again; the service unit
  // does not restart on it).
  if (oracle_gone)
    return 1;
  if (alive > 0 || stop_requested)
    return 0;
  return died == 0 && sent_away > 0 ? 3 : (died > 0 ? 1 : 0);
}

// ------------------------------------------------------------------ submit

struct submit_options {
  std::string oracle;
  size_t sessions = 10;
  std::string prefix = "s";
  size_t first = 0;
  uint32_t max_tasks = 3;
  uint32_t redundancy = 1;
  std::string model = "llama-3-8b";
  int64_t interval_ms = 0;
  // A request whose connection broke is not failed by CAF: it waits out
  // this timeout, then the submission is retried (safe: a session stored
  // already answers duplicate_session).
  int64_t request_timeout_ms = 3000;
  double connect_timeout_s = 30;
  tls_files tls;
};

int run_submit(submit_options& o) {
  begin();
  actor_config cfg;
  setup_tls(cfg, o.tls);
  caf::actor_system sys{cfg};
  auto gw = connect_retry(sys, o.oracle, o.connect_timeout_s);
  if (!gw && stop_requested)
    return report_interrupted("submit", "nothing was submitted (the oracle "
                                        "was not reached); run it again");
  if (!gw) {
    std::cerr << "nodepool submit: cannot reach oracle " << o.oracle << ": "
              << sys.render(gw.error()) << "\n";
    return 1;
  }
  // The client's actor. A request that timed out may still be answered:
  // that late answer stays in the actor's mailbox for good, and every
  // later wait looks through all of them again (a long submission against
  // a slow cluster would slow down by itself). Such an actor is replaced by
  // a fresh one once its session is answered.
  std::optional<caf::scoped_actor> me;
  auto fresh = [&] {
    me.emplace(sys);
    (*me)->monitor(*gw);
  };
  fresh();
  size_t accepted = 0, refused = 0;
  size_t i = o.first;
  for (; i < o.first + o.sessions && !stop_requested; ++i) {
    auto& self = *me;
    bool late_answers = false;  // a request of this session timed out
    pb::SubmitSession req;
    req.set_session_id(o.prefix + "-" + std::to_string(i));
    req.set_model(o.model);
    req.set_min_nodes(1);
    req.set_max_nodes(o.redundancy);
    req.set_redundancy(o.redundancy);
    req.set_max_tasks(o.max_tasks);
    req.set_client("submit");
    // An oracle that dies before answering may or may not have stored the
    // session: ask again until it answers; "duplicate" then means it had.
    // The answer is awaited in slices of 100 ms, asking again
    // on the same connection after each, so that a signal is noticed in
    // time; that is safe too (a refusal waits for the disk like an
    // acceptance does).
    const auto request_timeout = std::chrono::milliseconds(o.request_timeout_ms);
    bool answered = false;
    for (;;) {
      bool retry = false;
      std::chrono::milliseconds waited{0};
      while (!answered && !retry && !stop_requested) {
        auto slice = std::min<std::chrono::milliseconds>(
          100ms, request_timeout - waited);
        self->request(*gw, slice, submit_atom::value, req.SerializeAsString())
          .receive(
            [&](accepted_atom) {
              answered = true;
              ++accepted;
              std::printf("accepted %s\n", req.session_id().c_str());
            },
            [&](caf::error& e) {
              if (e == caf::sec::request_timeout)
                late_answers = true;
              if (e == caf::sec::request_timeout
                  && (waited += slice) < request_timeout) {
                // An oracle that died with the request does not answer:
                // its connection going down (monitored) says so at once.
                self->receive(
                  [&](caf::down_msg& dm) {
                    if (dm.source == gw->address()) {
                      log("submit")->info("session {}: the oracle went down",
                                          req.session_id());
                      retry = true;
                    }
                  },
                  caf::after(0ms) >> [] {});
                return;
              }
              auto [code, detail] = read_refusal(sys, e);
              auto kind = refusal_code(code);
              if (kind == pb::REFUSAL_DUPLICATE_SESSION) {
                answered = true;
                ++accepted;
                std::printf("accepted %s (already stored)\n",
                            req.session_id().c_str());
              } else if (kind == pb::REFUSAL_UNAVAILABLE
                         || kind == pb::REFUSAL_NOT_LEADER) {
                // Gone, or no longer the leader (the outcome of a request
                // cut off by a failover is unknown): find the leader and
                // ask again; "duplicate" then means it had been stored.
                log("submit")->info("session {}: {} ({}); looking for the leader",
                                    req.session_id(), code, detail);
                retry = true;
              } else {
                answered = true;
                ++refused;
                std::printf("refused %s %s: %s\n", req.session_id().c_str(),
                            code.c_str(), detail.c_str());
              }
            });
      }
      std::fflush(stdout);
      if (!retry || stop_requested)
        break;
      auto again = connect_retry(sys, o.oracle, o.connect_timeout_s);
      if (!again && stop_requested)
        break;
      if (!again) {
        std::cerr << "nodepool submit: oracle gone\n";
        return 1;
      }
      gw = again;
      self->monitor(*gw);
      log("submit")->info("session {}: asking {} again", req.session_id(),
                          caf::to_string(gw->node()));
    }
    if (!answered)
      break;  // stopped while waiting: this session's fate is unknown
    if (late_answers)
      fresh();
    for (auto pause = std::chrono::milliseconds(o.interval_ms);
         pause > 0ms && !stop_requested; pause -= 100ms)
      std::this_thread::sleep_for(std::min(pause, 100ms));
  }
  std::fprintf(stderr, "submitted: %zu accepted, %zu refused\n", accepted,
               refused);
  if (stop_requested && i < o.first + o.sessions)
    return report_interrupted(
      "submit", "sessions from " + o.prefix + "-" + std::to_string(i)
                  + " on were not answered; to submit the rest, run it "
                    "again with --first " + std::to_string(i) + " --sessions "
                  + std::to_string(o.first + o.sessions - i)
                  + " (a session already stored is answered as such)");
  return refused > 0 ? 1 : 0;
}

// ------------------------------------------------------------------ status

int run_status(const std::string& oracle, bool json, bool sessions,
               const tls_files& tls) {
  begin();
  exit_at_once = "nodepool status: interrupted; nothing was changed\n";
  actor_config cfg;
  setup_tls(cfg, tls);
  caf::actor_system sys{cfg};
  auto gw = connect_retry(sys, oracle, 5, false);  // a signal exits at once
  if (!gw) {
    std::cerr << "nodepool status: cannot reach oracle " << oracle << ": "
              << sys.render(gw.error()) << "\n";
    return 1;
  }
  caf::scoped_actor self{sys};
  int rc = 1;
  self->request(*gw, 10s, state_atom::value)
    .receive(
      [&](const std::string& bytes) {
        pb::Snapshot snap;
        snap.ParseFromString(bytes);
        pool_state ps;
        ps.restore(snap);
        auto j = summarize(ps);
        j["last_index"] = snap.last_index();
        if (sessions) {
          j["session_states"] = nlohmann::json::object();
          for (auto& [id, s] : ps.sessions())
            j["session_states"][id] = to_string(s.state());
        }
        // On a member of a cluster: its view of the replicated log.
        self->request(*gw, 10s, cluster_atom::value)
          .receive(
            [&](const std::string& c) {
              auto cj = nlohmann::json::parse(c, nullptr, false);
              if (cj.is_object() && !cj.empty())
                j["cluster"] = cj;
            },
            [&](caf::error&) {});
        // Given every member: each one's view, side by side.
        auto list = split_oracles(oracle);
        if (list.size() > 1) {
          j["members"] = nlohmann::json::array();
          for (auto& addr : list) {
            nlohmann::json m{{"address", addr}, {"reachable", false}};
            auto [host, port] = parse_host_port(addr);
            if (auto mg = connect_oracle(sys, host, port, 1s))
              self->request(*mg, 2s, cluster_atom::value)
                .receive(
                  [&](const std::string& c) {
                    auto cj = nlohmann::json::parse(c, nullptr, false);
                    if (!cj.is_object())
                      return;
                    m["reachable"] = true;
                    for (auto key : {"id", "role", "ready", "term", "leader_id",
                                     "commit_index", "applied_index",
                                     "last_index", "pool_index",
                                     "archive_complete_through",
                                     "refused_peers", "snapshots_refused",
                                     "raft_guard"})
                      if (cj.contains(key))
                        m[key] = cj[key];
                  },
                  [&](caf::error&) {});
            j["members"].push_back(m);
          }
        }
        std::printf("%s\n", json ? j.dump().c_str() : j.dump(2).c_str());
        rc = 0;
      },
      [&](caf::error& e) {
        std::cerr << "nodepool status: " << sys.render(e) << "\n";
      });
  return rc;
}

// ------------------------------------------------------------------ check

/// A check stopped by a signal: whatever it read so far proves nothing.
int check_interrupted(const std::string& dir) {
  return report_interrupted("check", "nothing was concluded about " + dir
                                       + "; run the check again (it only "
                                         "reads the history)");
}

/// A member of a cluster: its log is libraft's (`<dir>/raft`), its RocksDB
/// store holds the archive. The last snapshot and every entry after it are
/// replayed through a replica that checks I1-I5 after every command, as a
/// restarting member would apply them.
int run_check_member(const std::string& dir, bool json, bool sessions) {
  raft_disk disk;
  std::string err;
  if (!load_raft_dir(dir + "/raft", disk, err))
    throw std::runtime_error(err);
  auto storage = open_store(dir, /*read_only=*/true);
  std::vector<std::string> ended;
  replica rep{[&](std::vector<pb::SessionRecord>& es) {
                for (auto& s : es)
                  ended.push_back(s.id());
              },
              true};
  nlohmann::json vs = nlohmann::json::array();
  if (!disk.snapshot.empty() || disk.snapshot_index > 0)
    if (!rep.restore(disk.snapshot, err))
      vs.push_back({{"entry", disk.snapshot_index}, {"invariant", "snapshot"},
                    {"detail", err}});
  uint64_t commands = 0, last = disk.snapshot_index;
  for (auto& e : disk.entries) {
    if (stop_requested)
      return check_interrupted(dir);
    last = std::max(last, e.index);
    if (e.index <= disk.snapshot_index || !e.command || !vs.empty())
      continue;
    ++commands;
    auto before = rep.violations().size();
    auto out = rep.apply(e.data);
    if (!out.ok)
      vs.push_back({{"entry", e.index}, {"invariant", "replica"},
                    {"detail", "batch refused: " + out.error}});
    for (size_t k = before; k < rep.violations().size(); ++k)
      vs.push_back({{"entry", e.index},
                    {"invariant", rep.violations()[k].invariant},
                    {"detail", rep.violations()[k].detail}});
  }
  if (last < disk.named_last_index)
    vs.push_back({{"invariant", "storage"},
                  {"detail", "the raft log loads up to entry " + std::to_string(last)
                               + " but segment " + disk.named_last_segment
                               + " holds entries up to "
                               + std::to_string(disk.named_last_index)
                               + ": a segment is damaged"}});
  if (vs.empty())
    for (auto& v : rep.pool().check_invariants())
      vs.push_back({{"entry", last}, {"invariant", v.invariant},
                    {"detail", v.detail + " (whole state, at the end)"}});
  // Sessions the replayed entries ended should be in the archive; those
  // ended by a tail this member never applied (not yet committed when it
  // stopped) are written when it applies them after a restart.
  uint64_t not_archived = 0;
  for (auto& id : ended) {
    if (stop_requested)
      break;  // concluded nothing: said below, after the scan
    std::optional<pb::SessionRecord> r;
    if (auto s = storage->archived(id, r); !s.ok())
      vs.push_back({{"invariant", "storage"}, {"detail", s.error}});
    else if (!r)
      ++not_archived;
  }
  uint64_t archived = 0;
  nlohmann::json states = nlohmann::json::object();
  auto as = storage->scan_archive(0, [&](const pb::SessionRecord& r) {
    ++archived;
    if (sessions)
      states[r.id()] = to_string(r.state());
    return !stop_requested.load();
  });
  if (stop_requested)  // counts cut short: nothing concluded
    return check_interrupted(dir);
  if (!as.ok())
    vs.push_back({{"invariant", "storage"}, {"detail", as.error}});
  // Gaps a snapshot install left that the member had not copied from a
  // peer when it stopped: it copies them when it runs again.
  std::vector<pending_gap> gaps;
  if (auto s = pending_gaps(*storage, gaps); !s.ok())
    vs.push_back({{"invariant", "storage"}, {"detail", s.error}});
  nlohmann::json gj = nlohmann::json::array();
  for (auto& g : gaps)
    gj.push_back({{"from_index", g.gap.from_index}, {"to_index", g.gap.to_index}});
  auto& ps = rep.pool();
  nlohmann::json j = summarize(ps);
  j["entries"] = commands;
  j["archive_gaps_pending"] = gj;
  j["last_index"] = rep.last_index();
  j["params"] = nlohmann::json::parse(to_json(ps.config()));
  j["sessions"]["ever_accepted"] = ps.sessions_accepted();
  j["sessions"]["archived"] = archived;
  j["sessions"]["ended_not_archived"] = not_archived;
  j["member"] = {{"term", disk.term},
                 {"voted_for", disk.voted_for},
                 {"snapshot_index", disk.snapshot_index},
                 {"snapshot_term", disk.snapshot_term},
                 {"first_index", disk.entries.empty() ? 0 : disk.entries.front().index},
                 {"last_index", last},
                 {"state_digest", std::to_string(std::hash<std::string>{}(
                                    rep.snapshot_bytes()))}};
  j["violations"] = vs;
  if (sessions) {
    for (auto& [id, s] : ps.sessions())
      states[id] = to_string(s.state());
    j["session_states"] = states;
  }
  if (json) {
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("checked %llu replicated entries (raft log %llu..%llu, "
                "snapshot at %llu) in %s\n",
                static_cast<unsigned long long>(commands),
                static_cast<unsigned long long>(j["member"]["first_index"].get<uint64_t>()),
                static_cast<unsigned long long>(last),
                static_cast<unsigned long long>(disk.snapshot_index), dir.c_str());
    std::printf("%s\n", summarize(ps).dump(2).c_str());
    if (vs.empty())
      std::printf("I1-I5 hold after every entry since the snapshot, and the "
                  "snapshot loads\n");
    for (auto& g : gaps)
      std::printf("archive gap: the sessions ended by entries %llu..%llu are "
                  "not copied from a peer yet (the member does it when it "
                  "runs)\n",
                  static_cast<unsigned long long>(g.gap.from_index),
                  static_cast<unsigned long long>(g.gap.to_index));
    for (auto& v : vs)
      std::printf("VIOLATION %s\n", v.dump().c_str());
  }
  return vs.empty() ? 0 : 1;
}

int run_check(const std::string& dir, bool json, bool sessions,
              uint64_t stride) {
  begin();
  if (!std::filesystem::exists(dir))
    throw std::runtime_error("no data directory " + dir);
  if (std::filesystem::exists(dir + "/raft"))
    return run_check_member(dir, json, sessions);
  auto storage = open_store(dir, /*read_only=*/true);
  auto rep = check_history(*storage, stride, &stop_requested);
  if (rep.stopped)
    return check_interrupted(dir);
  pool_state ps;
  recovered info;
  auto st = recover(*storage, ps, info);
  if (stop_requested)
    return check_interrupted(dir);
  nlohmann::json j = summarize(ps);
  j["entries"] = rep.entries;
  j["stride"] = stride;
  j["params"] = nlohmann::json::parse(to_json(ps.config()));
  j["sessions"]["ever_accepted"] = rep.sessions_accepted;
  j["sessions"]["archived"] = rep.sessions_archived;
  nlohmann::json vs = nlohmann::json::array();
  for (auto& [idx, v] : rep.violations)
    vs.push_back({{"entry", idx}, {"invariant", v.invariant}, {"detail", v.detail}});
  if (!rep.load_error.empty())
    vs.push_back({{"invariant", "storage"}, {"detail", rep.load_error}});
  if (!st.ok())
    vs.push_back({{"invariant", "storage"}, {"detail", st.error}});
  j["violations"] = vs;
  if (sessions) {
    // Every session ever accepted: the live ones, then the archive.
    j["session_states"] = nlohmann::json::object();
    for (auto& [id, s] : ps.sessions())
      j["session_states"][id] = to_string(s.state());
    auto as = storage->scan_archive(0, [&](const pb::SessionRecord& r) {
      j["session_states"][r.id()] = to_string(r.state());
      return !stop_requested.load();
    });
    if (stop_requested)  // the list is cut short: not printed as whole
      return check_interrupted(dir);
    if (!as.ok())
      vs.push_back({{"invariant", "storage"}, {"detail", as.error}});
    j["violations"] = vs;
  }
  if (json) {
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("checked %llu log entries in %s%s\n",
                static_cast<unsigned long long>(rep.entries), dir.c_str(),
                stride > 1 ? (" (invariants every " + std::to_string(stride)
                              + " entries and at the end)").c_str()
                           : "");
    std::printf("%s\n", summarize(ps).dump(2).c_str());
    if (vs.empty())
      std::printf("I1-I5 hold after every %sentry\n",
                  stride > 1 ? "checked " : "");
    for (auto& v : vs)
      std::printf("VIOLATION %s\n", v.dump().c_str());
  }
  return vs.empty() ? 0 : 1;
}

// ------------------------------------------------------------------ sessions

struct sessions_options {
  std::string data_dir;
  std::string oracle;
  std::string id;
  int64_t since = 0;
  uint32_t limit = 0;
  bool json = false;
  tls_files tls;
};

nlohmann::json session_json(const pb::SessionRecord& s) {
  nlohmann::json j;
  j["id"] = s.id();
  j["state"] = to_string(s.state());
  j["model"] = s.model();
  j["client"] = s.client();
  j["submitted_at"] = s.submitted_at();
  j["started_at"] = s.started_at();
  j["ended_at"] = s.ended_at();
  j["tasks_done"] = s.tasks_done();
  j["max_tasks"] = s.max_tasks();
  j["nodes"] = std::vector<std::string>(s.nodes().begin(), s.nodes().end());
  if (!s.reason().empty())
    j["reason"] = s.reason();
  return j;
}

void print_session(const pb::SessionRecord& s, bool json) {
  if (json) {
    std::printf("%s\n", session_json(s).dump().c_str());
    return;
  }
  std::printf("%-24s %-9s ended_at=%lld tasks=%u/%u%s%s\n", s.id().c_str(),
              to_string(s.state()).c_str(),
              static_cast<long long>(s.ended_at()), s.tasks_done(),
              s.max_tasks(), s.reason().empty() ? "" : " reason=",
              s.reason().c_str());
}

/// From a stopped oracle's data directory: the archive, streamed; by id,
/// the live state (snapshot + log) too.
int sessions_from_dir(const sessions_options& o) {
  if (!std::filesystem::exists(o.data_dir))
    throw std::runtime_error("no data directory " + o.data_dir);
  auto storage = open_store(o.data_dir, /*read_only=*/true);
  // A cluster member's store holds its archive; the live pool is in its
  // replicated log (raft/), which this does not read.
  bool member = std::filesystem::exists(o.data_dir + "/raft");
  if (member) {
    std::vector<pending_gap> gaps;
    if (auto st = pending_gaps(*storage, gaps); !st.ok())
      throw std::runtime_error(st.error);
    for (auto& g : gaps)
      std::cerr << "nodepool sessions: " << o.data_dir
                << " is a cluster member whose archive still lacks the "
                   "sessions ended by entries "
                << g.gap.from_index << ".." << g.gap.to_index
                << " (copied from a peer when it runs)\n";
  }
  if (!o.id.empty()) {
    pool_state ps;
    recovered info;
    if (!member)
      if (auto st = recover(*storage, ps, info); !st.ok())
        throw std::runtime_error(st.error);
    pb::ArchiveQuery q;
    q.set_id(o.id);
    pb::ArchiveAnswer a;
    if (auto err = query_archive(*storage, ps, q, a); !err.empty())
      throw std::runtime_error(err);
    if (a.sessions_size() == 0) {
      std::cerr << "nodepool sessions: no session " << o.id << " in "
                << o.data_dir
                << (member ? "'s archive (a live session of a cluster is in "
                             "its replicated log: ask a running member with "
                             "--oracle, or run `nodepool check --sessions` on "
                             "this directory)"
                           : "")
                << "\n";
      return 1;
    }
    print_session(a.sessions(0), o.json);
    return 0;
  }
  uint64_t shown = 0;
  bool more = false;
  auto st = storage->scan_archive(o.since, [&](const pb::SessionRecord& r) {
    if (stop_requested)
      return false;
    if (o.limit > 0 && shown == o.limit) {
      more = true;
      return false;
    }
    print_session(r, o.json);
    ++shown;
    return true;
  });
  if (!st.ok())
    throw std::runtime_error(st.error);
  if (more && !o.json)
    std::fprintf(stderr, "(more: raise --limit or narrow --since)\n");
  if (stop_requested)
    return report_interrupted("sessions", "the list above is incomplete");
  return 0;
}

/// From a running oracle, through its gateway: one page of at most
/// --limit sessions (the oracle caps it).
int sessions_from_oracle(const sessions_options& o) {
  exit_at_once = "nodepool sessions: interrupted; nothing was changed\n";
  actor_config cfg;
  setup_tls(cfg, o.tls);
  caf::actor_system sys{cfg};
  auto gw = connect_retry(sys, o.oracle, 5, false);
  if (!gw) {
    std::cerr << "nodepool sessions: cannot reach oracle " << o.oracle << ": "
              << sys.render(gw.error()) << "\n";
    return 1;
  }
  pb::ArchiveQuery q;
  q.set_id(o.id);
  q.set_since(o.since);
  q.set_limit(o.limit);
  caf::scoped_actor self{sys};
  int rc = 1;
  self->request(*gw, 10s, archive_atom::value, q.SerializeAsString())
    .receive(
      [&](const std::string& bytes) {
        pb::ArchiveAnswer a;
        if (!a.ParseFromString(bytes)) {
          std::cerr << "nodepool sessions: the oracle's answer does not decode\n";
          return;
        }
        if (!a.error().empty()) {
          std::cerr << "nodepool sessions: " << a.error() << "\n";
          return;
        }
        if (!o.id.empty() && a.sessions_size() == 0) {
          std::cerr << "nodepool sessions: no session " << o.id << "\n";
          return;
        }
        for (auto& s : a.sessions())
          print_session(s, o.json);
        if (a.more() && !o.json)
          std::fprintf(stderr, "(more: raise --limit or narrow --since)\n");
        rc = 0;
      },
      [&](caf::error& e) {
        std::cerr << "nodepool sessions: " << sys.render(e) << "\n";
      });
  return rc;
}

} // namespace

void add_oracle(CLI::App& app) {
  auto o = std::make_shared<oracle_options>();
  auto* cmd = app.add_subcommand("oracle", "run an oracle host");
  cmd->add_option("--data-dir", o->data_dir, "RocksDB directory of the pool");
  o->host_flag = cmd->add_option("--host", o->host,
                                  "address to listen on (default 127.0.0.1)");
  o->port_flag = cmd->add_option("--port", o->port,
                                  "port for miners and clients (default 4242)");
  cmd->add_option("--config", o->config,
                  "TOML file: [pool] parameters, [oracle] data_dir/host/port/"
                  "allow/join_tokens");
  cmd->add_option("--allow", o->allow,
                  "file of node public keys (hex, one per line) to admit");
  cmd->add_option("--join-tokens", o->join_tokens,
                  "file of join tokens (one per line): a node presenting one "
                  "is admitted with any key");
  cmd->add_flag("--no-sync", o->no_sync,
                "do not fsync group commits (faster, loses the last batch "
                "on power loss)");
  cmd->add_option("--cluster", o->cluster,
                  "cluster file (TOML: [[member]] id, raft, address; [raft]; "
                  "[pool]): run as one member of a replicated pool");
  cmd->add_option("--id", o->id, "this member's id in the cluster file");
  cmd->add_flag("--join", o->join,
                "a new member of a running cluster: start without bootstrapping "
                "and wait until the leader adds it (nodepool ctl members add)");
  cmd->add_option("--bank", o->tests.bank,
                  "challenge bank of cognitive tests (JSONL; default: the "
                  "builtin deploy/banks/default.jsonl)");
  cmd->add_option("--test-secret", o->tests.secret_file,
                  "file of the oracles' secret that chooses test items "
                  "(created, mode 0600, if missing; default "
                  "<data-dir>/test_secret; one for the whole cluster)");
  add_http_flags(*cmd, o->api);
  add_param_flags(*cmd, o->flags);
  add_tls_flags(*cmd, o->tls);
  cmd->callback([o] {
    if (int rc = run_oracle(*o); rc != 0)
      throw exit_code{rc};
  });
}

void add_miner(CLI::App& app) {
  auto o = std::make_shared<miner_options>();
  auto* cmd = app.add_subcommand("miner", "run simulated miner nodes");
  cmd->add_option("--oracle,--oracles", o->oracle,
                  "HOST:PORT of an oracle, or every member of a cluster "
                  "(H1:P1,H2:P2,...): the nodes follow its leader")
    ->required();
  cmd->add_option("--nodes", o->nodes, "node actors to run (default 1)")
    ->check(CLI::Range(1, 100000));
  cmd->add_option("--behaviour", o->behaviour,
                  "mix such as healthy:8,wrong:1,slow:1 (healthy, slow, "
                  "wrong, flaky, crash, garbage; and cheats without a model: "
                  "solver, copycat)");
  cmd->add_option("--bank", o->bank,
                  "challenge bank the sim backend's healthy nodes know the "
                  "answers of (default: the builtin one)");
  cmd->add_option("--seed", o->seed, "seed of the simulated backends");
  cmd->add_option("--id-prefix", o->prefix, "node ids are PREFIX-0, PREFIX-1, ...");
  cmd->add_option("--models", o->models, "comma-separated models served");
  cmd->add_option("--connect-timeout", o->connect_timeout_s,
                  "seconds to keep trying to reach the oracle (default 30)");
  cmd->add_option("--duration", o->duration_s, "stop after this many seconds");
  cmd->add_option("--deadline-hint-ms", o->deadline_hint_ms,
                  "deadline the slow behaviour overshoots (default 5000)");
  cmd->add_option("--backend", o->backend,
                  "sim (simulated, see --behaviour) or openai (an "
                  "OpenAI-compatible inference server)")
    ->check(CLI::IsMember({"sim", "openai"}));
  cmd->add_option("--openai-url", o->openai_url,
                  "base URL of the inference server, e.g. http://127.0.0.1:8080");
  cmd->add_option("--openai-model", o->openai_model,
                  "model name sent to it (default: the first of --models)");
  cmd->add_option("--openai-key", o->openai_key,
                  "API key (default: $OPENAI_API_KEY)");
  cmd->add_option("--openai-parallel", o->openai_parallel,
                  "requests each node sends the inference server at once "
                  "(default 1); set it to the server's parallel slots (llama.cpp "
                  "--parallel) so that a test's questions are answered side by side")
    ->check(CLI::Range(1, 64));
  cmd->add_option("--openai-timeout-ms", o->openai_timeout_ms,
                  "limit of each request to the inference server, whole: connection, sending, the answer's last byte (default 30000)")
    ->check(CLI::Range(int64_t{1}, int64_t{3600000}));
  cmd->add_option("--key", o->key,
                  "node key file (nodepool keygen); its nodes sign their "
                  "registrations with it");
  cmd->add_option("--join-token", o->join_token,
                  "operator-issued token, for a key not on the oracle's allow-list");
  add_tls_flags(*cmd, o->tls);
  cmd->callback([o] {
    if (int rc = run_miner(*o); rc != 0)
      throw exit_code{rc};
  });
}

void add_keygen(CLI::App& app) {
  auto out = std::make_shared<std::string>();
  auto token = std::make_shared<bool>(false);
  auto force = std::make_shared<bool>(false);
  auto* cmd = app.add_subcommand(
    "keygen", "make a node key pair (Ed25519), or a join token");
  cmd->add_option("--out", *out,
                  "file for the private key (PEM, mode 0600); the public key "
                  "is printed, ready for an --allow file");
  cmd->add_flag("--join-token", *token, "print a fresh random join token instead");
  auto api_key = std::make_shared<bool>(false);
  cmd->add_flag("--api-key", *api_key,
                "print a fresh random HTTP API key instead (add it to an "
                "--api-keys file with its role)");
  cmd->add_flag("--force", *force, "overwrite an existing key file");
  cmd->callback([=] {
    begin();
    if (*token) {
      std::printf("%s\n", make_join_token().c_str());
      return;
    }
    if (*api_key) {
      std::printf("%s\n", http::random_api_key().c_str());
      return;
    }
    if (out->empty())
      throw std::runtime_error("--out FILE is required (or --join-token)");
    if (!*force && std::ifstream(*out).good())
      throw std::runtime_error(*out + " exists; refusing to overwrite a key "
                                      "(--force to replace it)");
    auto k = node_key::generate();
    k.save(*out);
    std::printf("%s %s\n", to_hex(k.public_key()).c_str(), out->c_str());
  });
}

void add_submit(CLI::App& app) {
  auto o = std::make_shared<submit_options>();
  auto* cmd = app.add_subcommand("submit", "submit sessions to an oracle");
  cmd->add_option("--oracle,--oracles", o->oracle,
                  "HOST:PORT of an oracle, or every member of a cluster "
                  "(H1:P1,H2:P2,...): submissions go to its leader")
    ->required();
  cmd->add_option("--sessions", o->sessions, "how many (default 10)");
  cmd->add_option("--prefix", o->prefix, "ids are PREFIX-N");
  cmd->add_option("--first", o->first, "first N (default 0)");
  cmd->add_option("--max-tasks", o->max_tasks, "tasks per session (default 3)");
  cmd->add_option("--redundancy", o->redundancy, "nodes per task (default 1)");
  cmd->add_option("--model", o->model, "model (default llama-3-8b)");
  cmd->add_option("--interval-ms", o->interval_ms, "pause between submissions");
  cmd->add_option("--request-timeout-ms", o->request_timeout_ms,
                  "wait this long for an answer before asking again (default 3000)")
    ->check(CLI::Range(int64_t{1}, int64_t{600000}));
  cmd->add_option("--connect-timeout", o->connect_timeout_s,
                  "seconds to keep trying to reach the oracle (default 30)");
  add_tls_flags(*cmd, o->tls);
  cmd->callback([o] {
    if (int rc = run_submit(*o); rc != 0)
      throw exit_code{rc};
  });
}

void add_status(CLI::App& app) {
  auto oracle = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);
  auto sessions = std::make_shared<bool>(false);
  auto* cmd = app.add_subcommand("status", "show a running oracle's pool");
  cmd->add_option("--oracle", *oracle,
                  "HOST:PORT of an oracle, or every member of a cluster "
                  "(H1:P1,H2:P2,...: each member's view is shown)")
    ->required();
  cmd->add_flag("--json", *json, "one line of JSON");
  cmd->add_flag("--sessions", *sessions,
                "list the state of every live (queued or active) session; "
                "ended ones: nodepool sessions");
  auto tls = std::make_shared<tls_files>();
  add_tls_flags(*cmd, *tls);
  cmd->callback([=] {
    if (int rc = run_status(*oracle, *json, *sessions, *tls); rc != 0)
      throw exit_code{rc};
  });
}

void add_sessions(CLI::App& app) {
  auto o = std::make_shared<sessions_options>();
  auto* cmd = app.add_subcommand(
    "sessions", "show ended sessions from the archive (or one session by id)");
  auto* dir = cmd->add_option("--data-dir", o->data_dir,
                              "RocksDB directory of a stopped oracle");
  auto* oracle = cmd->add_option("--oracle", o->oracle,
                                 "HOST:PORT of a running oracle");
  dir->excludes(oracle);
  cmd->add_option("--id", o->id, "one session, live or archived");
  cmd->add_option("--since", o->since,
                  "sessions that ended at or after this time (ms since the "
                  "epoch, the pool's clock)")
    ->check(CLI::Range(int64_t{0}, INT64_MAX));
  cmd->add_option("--limit", o->limit,
                  "at most this many (data dir: all by default; oracle: 100 "
                  "by default, at most 10000)");
  cmd->add_flag("--json", o->json, "one JSON object per line");
  add_tls_flags(*cmd, o->tls);
  cmd->callback([o] {
    begin();
    if (o->data_dir.empty() == o->oracle.empty())
      throw std::runtime_error("give --data-dir DIR or --oracle HOST:PORT");
    int rc = o->data_dir.empty() ? sessions_from_oracle(*o)
                                 : sessions_from_dir(*o);
    if (rc != 0)
      throw exit_code{rc};
  });
}

void add_check(CLI::App& app) {
  auto dir = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);
  auto sessions = std::make_shared<bool>(false);
  auto stride = std::make_shared<uint64_t>(1);
  auto* cmd = app.add_subcommand(
    "check", "verify I1-I5 over a stored history (oracle stopped)");
  cmd->add_option("--data-dir", *dir,
                  "data directory of the pool (of one oracle, or of a "
                  "cluster member: its raft log and archive)")
    ->required();
  cmd->add_option("--stride", *stride,
                  "check the invariants after every N-th entry and the last "
                  "(default 1: after every entry)")
    ->check(CLI::Range(uint64_t{1}, UINT64_MAX));
  cmd->add_flag("--json", *json, "one line of JSON");
  cmd->add_flag("--sessions", *sessions,
                "list the state of every session ever accepted (live and "
                "archived)");
  cmd->callback([=] {
    if (int rc = run_check(*dir, *json, *sessions, *stride); rc != 0)
      throw exit_code{rc};
  });
}

void add_bank(CLI::App& app) {
  struct bank_options {
    std::string file;
    std::string config;
    std::map<std::string, std::string> flags;
    bool json = false;
  };
  auto o = std::make_shared<bank_options>();
  auto* cmd = app.add_subcommand(
    "bank", "check a challenge bank and show what a cognitive test costs a "
            "miner at each level");
  cmd->add_option("file", o->file, "JSONL bank (default: the builtin one)");
  cmd->add_option("--config", o->config, "TOML file with [pool] parameters");
  cmd->add_flag("--json", o->json, "print JSON");
  add_param_flags(*cmd, o->flags);
  cmd->callback([o] {
    auto p = resolve_params(o->config, o->flags);
    auto bank = o->file.empty() ? challenge_bank::builtin()
                                : std::make_shared<const challenge_bank>(
                                    challenge_bank::load(o->file));
    auto costs = test_costs(*bank, p.challenges_per_test, p.peer_share, p.max_level);
    nlohmann::json j;
    j["bank"] = o->file.empty() ? "builtin" : o->file;
    j["items"] = bank->items().size();
    // Graded by the embedding alone: a wrong answer that shares the
    // reference's words can pass (README, "Writing a bank", must).
    j["similar_without_must"] = nlohmann::json::array();
    for (auto& it : bank->items())
      if (it.grade == grade_mode::similar && it.must.empty())
        j["similar_without_must"].push_back(it.id);
    for (auto& c : costs)
      j["levels"].push_back({{"level", c.level},
                             {"prompts", c.prompts},
                             {"graded_items_in_bank", c.graded_items},
                             {"peer_items_in_bank", c.peer_items},
                             {"prompt_tokens", c.prompt_tokens},
                             {"answer_tokens_max", c.answer_tokens},
                             {"latency_bound_ms", test_latency_bound_ms(p, c.level)}});
    if (o->json) {
      std::cout << j.dump(2) << "\n";
      return;
    }
    std::printf("%s: %zu items, valid\n", j["bank"].get<std::string>().c_str(),
                bank->items().size());
    std::printf("level  prompts  bank items (graded/peer)  prompt tokens  "
                "answer tokens (max)  latency bound\n");
    for (auto& c : costs)
      std::printf("%5u  %7u  %13u / %-4u  %13llu  %19llu  %10lld ms\n", c.level,
                  c.prompts, c.graded_items, c.peer_items,
                  static_cast<unsigned long long>(c.prompt_tokens),
                  static_cast<unsigned long long>(c.answer_tokens),
                  static_cast<long long>(test_latency_bound_ms(p, c.level)));
    if (auto& loose = j["similar_without_must"]; !loose.empty()) {
      std::string ids;
      for (auto& id : loose)
        ids += (ids.empty() ? "" : ", ") + id.get<std::string>();
      std::printf("note: %zu similar item(s) without must, graded by the "
                  "embedding alone (a wrong answer that shares the "
                  "reference's words can pass): %s\n",
                  loose.size(), ids.c_str());
    }
  });
}

} // namespace nodepool::cli
