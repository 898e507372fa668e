// `nodepool demo`: an embedded oracle, simulated miner nodes (a share of them
// faulty), and a durable generator of sessions; a summary at the end.
#include <CLI/CLI.hpp>
#include <caf/all.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <optional>
#include <set>
#include <unistd.h>

#include "actors/config.hpp"
#include "actors/local.hpp"
#include "actors/node.hpp"
#include "actors/oracle.hpp"
#include "cli/common.hpp"
#include "cli/os.hpp"
#include "random.hpp"
#include "recovery.hpp"
#include "sim_backend.hpp"

namespace nodepool::cli {

namespace {

struct demo_options {
  size_t nodes = 40;
  size_t sessions = 200;
  double faulty_share = 0.2;
  uint64_t seed = 1;
  std::string data_dir;
  bool json = false;
  double timeout_s = 0;  // 0: wait until every session has ended
  std::string config;
  std::map<std::string, std::string> flags;
  http_options api;    // the demo's oracle serves the HTTP API too
  bool serve = false;  // keep serving after the sessions, until Ctrl-C
};

/// Deadlines short enough for a demo that ends in seconds; every one can be
/// overridden by --config or flags.
params demo_defaults(uint64_t seed) {
  params p;
  p.test_deadline_ms = 1000;
  p.task_phase_timeout_ms = 500;
  p.heartbeat_interval_ms = 200;
  p.heartbeat_timeout_ms = 1500;
  p.quarantine_backoff_ms = 2000;
  p.quarantine_backoff_max_ms = 8000;
  p.idle_threshold_ms = 10000;
  p.queue_timeout_ms = 60000;
  p.tick_interval_ms = 100;
  p.seed = seed;
  return p;
}

/// One behaviour per node: the faulty share spread over the five faults.
std::vector<behaviour> demo_behaviours(size_t n, double share, uint64_t seed) {
  auto faulty = static_cast<size_t>(n * share + 0.5);
  std::string mix = "healthy:" + std::to_string(n - faulty);
  std::string err;
  std::vector<behaviour> out;
  if (faulty > 0) {
    out = expand_mix("slow,wrong,flaky,crash,garbage", faulty, seed, err);
  }
  out.insert(out.end(), n - faulty, behaviour::healthy);
  // Shuffle so faulty nodes are not all first in id order.
  seeded_rng rnd{seed};
  shuffle(out, rnd);
  return out;
}

/// The supervisor's state, or nothing if it did not answer (then nothing
/// may be concluded from it, least of all that sessions were lost).
std::optional<pool_state> fetch_state(caf::scoped_actor& self,
                                      const caf::actor& sup) {
  std::optional<pool_state> out;
  for (int attempt = 0; attempt < 3 && !out; ++attempt)
    self->request(sup, std::chrono::seconds(10), state_atom::value)
      .receive(
        [&](const std::string& bytes) {
          pb::Snapshot snap;
          if (snap.ParseFromString(bytes)) {
            out.emplace();
            out->restore(snap);
          }
        },
        [&](caf::error&) {});
  return out;
}

std::string fetch_text(caf::scoped_actor& self, const caf::actor& whom) {
  std::string out = "{}";
  self->request(whom, std::chrono::seconds(10), stats_atom::value)
    .receive([&](const std::string& s) { out = s; }, [&](caf::error&) {});
  return out;
}

void draw_progress(size_t done, size_t total, double elapsed) {
  const int width = 40;
  int filled = total ? static_cast<int>(width * done / total) : width;
  std::fprintf(stderr, "\r[%s%s] %zu/%zu sessions ended  %.1fs",
               std::string(filled, '#').c_str(),
               std::string(width - filled, '.').c_str(), done, total, elapsed);
  std::fflush(stderr);
}

/// What the session generator has done so far.
struct generator_progress {
  uint64_t accepted = 0;  // ids 0..sessions-1 known to be stored
  uint64_t refused = 0;   // refused for another reason than a duplicate
  uint64_t ended = 0;     // sessions ended, all runs of this data directory
  bool all_answered = false;
};

struct generator_state {
  generator_progress progress;
  uint64_t next = 0;
  uint64_t in_flight = 0;
  seeded_rng rng;
  static inline const char* name = "demo_generator";
};

/// Submits sessions demo-000000.. with at most `window` requests in flight
/// and at most `open_limit` accepted sessions not yet ended: the queue
/// stays short, so memory follows the pool, not the number of sessions
/// asked for. It counts ended sessions from the supervisor's events.
caf::actor spawn_generator(caf::actor_system& sys, const oracle_handles& h,
                           const demo_options& o,
                           uint64_t ended_before) {
  auto total = o.sessions;
  auto seed = o.seed;
  uint64_t open_limit = std::max<uint64_t>(64, 4 * o.nodes);
  const uint64_t window = 256;
  auto sessions = h.sessions;
  auto supervisor = h.supervisor;
  return sys.spawn([=](caf::stateful_actor<generator_state>* self)
                     -> caf::behavior {
    auto& st = self->state;
    st.rng = seeded_rng{seed};
    st.progress.ended = ended_before;
    self->send(supervisor, subscribe_atom::value, caf::actor{self});
    auto pump = std::make_shared<std::function<void()>>();
    *pump = [=] {
      auto& st = self->state;
      auto& g = st.progress;
      while (st.next < total && st.in_flight < window
             && g.accepted + st.in_flight < g.ended + open_limit) {
        char id[32];
        std::snprintf(id, sizeof id, "demo-%06llu",
                      static_cast<unsigned long long>(st.next++));
        // Drawn for every session, stored or not: a resumed run submits
        // the rest with the shapes the first run would have given them.
        auto red = 1 + static_cast<uint32_t>(st.rng.below(3));
        auto tasks = 2 + static_cast<uint32_t>(st.rng.below(3));
        pb::SubmitSession req;
        req.set_session_id(id);
        req.set_model("llama-3-8b");
        req.set_min_nodes(1);
        req.set_max_nodes(red);
        req.set_redundancy(red);
        req.set_max_tasks(tasks);
        req.set_client("demo");
        ++st.in_flight;
        // Ids already stored (live or archived) are refused as duplicates:
        // that is how a resumed run learns what it submitted before,
        // without holding a set of ids.
        self->request(sessions, std::chrono::seconds(30), submit_atom::value,
                      req.SerializeAsString())
          .then(
            [=](accepted_atom) {
              --self->state.in_flight;
              ++self->state.progress.accepted;
              (*pump)();
            },
            [=](caf::error& e) {
              --self->state.in_flight;
              auto code = refusal_code(read_refusal(self->system(), e).first);
              if (code == pb::REFUSAL_DUPLICATE_SESSION)
                ++self->state.progress.accepted;
              else
                ++self->state.progress.refused;
              (*pump)();
            });
      }
      g.all_answered = st.next >= total && st.in_flight == 0;
    };
    (*pump)();
    return {
      [=](events_atom, const event_batch& batch) {
        if (!batch)
          return;
        for (auto& e : batch->events())
          if (e.has_session_ended())
            ++self->state.progress.ended;
        (*pump)();
      },
      [=](stats_atom) -> std::string {
        auto& g = self->state.progress;
        nlohmann::json j;
        j["accepted"] = g.accepted;
        j["refused"] = g.refused;
        j["ended"] = g.ended;
        j["all_answered"] = g.all_answered;
        return j.dump();
      },
    };
  });
}

generator_progress ask_progress(caf::scoped_actor& self,
                                const caf::actor& gen) {
  generator_progress g;
  self->request(gen, std::chrono::seconds(10), stats_atom::value)
    .receive(
      [&](const std::string& s) {
        auto j = nlohmann::json::parse(s, nullptr, false);
        if (!j.is_object())
          return;
        g.accepted = j["accepted"];
        g.refused = j["refused"];
        g.ended = j["ended"];
        g.all_answered = j["all_answered"];
      },
      [&](caf::error&) {});
  return g;
}

int run(demo_options& o) {
  // The demo's faulty miners are refused on purpose; the summary counts the
  // refusals, so a line for each would only bury the progress bar.
  if (!log_level_given)
    log_level = "error";
  begin();
  auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now()
                                         - start)
      .count();
  };
  if (o.data_dir.empty())
    o.data_dir = make_temp_dir("demo");
  auto p = resolve_params(o.config, o.flags, demo_defaults(o.seed));
  auto storage = open_store(o.data_dir);
  bool tty = isatty(2) && !o.json;

  actor_config cfg;
  caf::actor_system sys{cfg};
  supervisor_config sc;
  sc.pool = p;
  sc.storage = storage;
  auto h = start_oracle(sys, sc);
  caf::scoped_actor self{sys};
  auto api = start_http_api(o.api, sys, h, "demo", {});
  // The HTTP threads stop before the actors they ask, on every way out.
  std::shared_ptr<void> stop_api{nullptr, [&api](void*) {
    if (api.server)
      api.server->stop();
  }};
  if (api.server) {
    // With keys, the lines to paste carry one from the shell's NODEPOOL_KEY.
    std::string auth = api.keys > 0
                         ? " -H \"Authorization: Bearer $NODEPOOL_KEY\""
                         : "";
    std::fprintf(stderr,
                 "nodepool demo: HTTP API on %s/api/v1/ while the demo runs%s; "
                 "try%s:\n  curl -s%s %s/api/v1/status\n  curl -s%s %s/v1/chat/"
                 "completions -H 'Content-Type: application/json' -d "
                 "'{\"model\":\"llama-3-8b\",\"messages\":[{\"role\":"
                 "\"user\",\"content\":\"Hello pool\"}]}'\n"
                 "  or open the dashboard: %s/\n",
                 api.url.c_str(),
                 o.serve ? " (and after it, until Ctrl-C)" : " (--serve keeps it up after)",
                 api.keys > 0 ? " (with NODEPOOL_KEY set to one of your keys)" : "",
                 auth.c_str(), api.url.c_str(), auth.c_str(), api.url.c_str(),
                 api.url.c_str());
    std::fflush(stderr);
  }

  auto kinds = demo_behaviours(o.nodes, o.faulty_share, o.seed);
  std::map<std::string, size_t> behaviour_counts;
  std::vector<caf::actor> nodes;
  for (size_t i = 0; i < o.nodes; ++i) {
    node_config nc;
    char id[32];
    std::snprintf(id, sizeof id, "node-%04zu", i);
    nc.id = id;
    nc.kind = kinds[i];
    nc.seed = o.seed * 1000003 + i;
    nc.deadline_hint_ms = p.test_deadline_ms;
    ++behaviour_counts[to_string(nc.kind)];
    nodes.push_back(spawn_node(sys, nc, h.gateway));
  }

  // The generator is durable by construction: the sessions it already
  // submitted are in the store, so after a restart it submits the rest.
  auto before = fetch_state(self, h.supervisor);
  if (!before)
    throw std::runtime_error("the pool supervisor did not answer (see log)");
  // Ids already stored (live or archived) are refused as duplicates: that
  // is how a resumed run learns which ones it submitted before, without
  // holding a set of ids.
  size_t resumed = before->sessions_accepted();
  // A line on stderr as each phase starts (submitting, waiting, checking),
  // so that a script (the signal tests) can tell where the demo is.
  std::fprintf(stderr, "nodepool demo: serving %zu sessions (%zu resumed) "
                       "with %zu nodes, data in %s\n",
               o.sessions, resumed, o.nodes, o.data_dir.c_str());
  std::fflush(stderr);
  auto before_counts = before->session_counts();
  auto gen = spawn_generator(sys, h, o,
                             before_counts[pb::COMPLETED]
                               + before_counts[pb::FAILED]);
  generator_progress g;
  bool announced = false;
  while (!stop_requested && (o.timeout_s <= 0 || elapsed() < o.timeout_s)) {
    g = ask_progress(self, gen);
    if (g.all_answered && !announced) {
      announced = true;
      std::fprintf(stderr, "nodepool demo: %llu sessions accepted (%llu "
                           "refused); waiting for them to end\n",
                   static_cast<unsigned long long>(g.accepted),
                   static_cast<unsigned long long>(g.refused));
      std::fflush(stderr);
    }
    if (tty)
      draw_progress(g.ended, o.sessions, elapsed());
    if (g.all_answered && g.ended >= g.accepted
        && g.accepted + g.refused >= o.sessions)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  self->send_exit(gen, caf::exit_reason::user_shutdown);
  auto sessions_s = elapsed();  // the throughput is of the sessions, not the serving
  if (o.serve && !stop_requested) {
    // The sessions are done; the pool and its API stay up for a person to
    // try, until Ctrl-C (then the demo reports and checks as usual).
    std::fprintf(stderr, "nodepool demo: %llu sessions ended; serving %s "
                         "until Ctrl-C\n",
                 static_cast<unsigned long long>(g.ended),
                 api.server ? (api.url + "/api/v1/").c_str() : "(no HTTP API)");
    std::fflush(stderr);
    while (!stop_requested)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    // That Ctrl-C ended the serving, not the demo: the next one is the
    // first of the check (stopping it cleanly), not a second signal.
    stop_requested = false;
    stop_signal = 0;
  }
  auto accepted = g.accepted;
  auto refused_submissions = g.refused;
  if (tty)
    std::fprintf(stderr, "\n");
  auto stop_pool = [&] {
    for (auto& n : nodes)
      self->send_exit(n, caf::exit_reason::user_shutdown);
    stop_oracle(h);
    self->wait_for(h.supervisor);
  };
  if (stop_requested) {
    // Everything the supervisor acknowledged is in the store; closing it
    // (on return) leaves the directory as a later run expects to find it.
    stop_pool();
    return report_interrupted(
      "demo", "the sessions accepted so far are stored in " + o.data_dir
                + "; run the demo again with --data-dir " + o.data_dir
                + " (and the same --seed and --sessions) to resume");
  }
  auto final_state = fetch_state(self, h.supervisor);
  if (!final_state)
    throw std::runtime_error("the pool supervisor did not answer (see log)");
  auto& last = *final_state;
  auto total_s = sessions_s;
  auto gateway_stats = nlohmann::json::parse(fetch_text(self, h.gateway));
  stop_pool();

  auto report = summarize(last);
  // Every id the generator was told is stored must be on record (the
  // history check below proves that each recorded one is live or archived).
  size_t lost = accepted > last.sessions_accepted()
                  ? accepted - last.sessions_accepted()
                  : 0;
  report["sessions"]["accepted"] = accepted;
  report["sessions"]["lost"] = lost;
  report["sessions"]["resumed"] = resumed;
  report["sessions"]["requested"] = o.sessions;
  report["sessions"]["refused"] = refused_submissions;
  nlohmann::json violations = nlohmann::json::array();
  for (auto& v : last.check_invariants())
    violations.push_back({{"invariant", v.invariant}, {"detail", v.detail}});
  std::fprintf(stderr, "nodepool demo: checking the stored history (%llu "
                       "log entries)\n",
               static_cast<unsigned long long>(storage->last_index()));
  std::fflush(stderr);
  // Tests hold the check open with NODEPOOL_TEST_CHECK_DELAY_MS (a pause
  // per 1024 entries), so that a signal surely lands while it runs.
  int64_t delay_ms = 0;
  if (auto* d = std::getenv("NODEPOOL_TEST_CHECK_DELAY_MS"))
    delay_ms = std::atoll(d);
  auto total_entries = storage->last_index();
  auto hist = check_history(
    *storage, 1, &stop_requested, [&](uint64_t done) {
      if (tty)
        std::fprintf(stderr, "\rchecking the history: %llu/%llu entries",
                     static_cast<unsigned long long>(done),
                     static_cast<unsigned long long>(total_entries));
      for (int64_t t = 0; t < delay_ms && !stop_requested; t += 10)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    });
  if (tty)
    std::fprintf(stderr, "\n");
  if (hist.stopped)
    return report_interrupted(
      "demo", "the run is stored in " + o.data_dir
                + " but its history is unchecked; run the demo again with "
                  "--data-dir " + o.data_dir
                + " (and the same --seed and --sessions) to check it");
  for (auto& [idx, v] : hist.violations)
    violations.push_back(
      {{"invariant", v.invariant}, {"detail", v.detail}, {"entry", idx}});
  if (!hist.load_error.empty())
    violations.push_back({{"invariant", "storage"}, {"detail", hist.load_error}});
  if (lost > 0)
    violations.push_back({{"invariant", "I4"},
                          {"detail", std::to_string(lost)
                                       + " accepted sessions are missing"}});
  report["violations"] = violations;
  report["nodes"]["behaviours"] = behaviour_counts;
  report["refused_miner_messages"] = gateway_stats["refused"];
  report["log_entries"] = hist.entries;
  report["elapsed_s"] = total_s;
  auto completed = report["sessions"]["completed"].get<uint64_t>();
  report["throughput"]["sessions_per_s"] = total_s > 0 ? completed / total_s : 0;
  report["data_dir"] = o.data_dir;
  report["seed"] = o.seed;

  if (!o.json) {
    auto& s = report["sessions"];
    std::printf("nodepool demo: %zu nodes (%zu faulty), seed %llu, data in %s\n",
                o.nodes, o.nodes - behaviour_counts["healthy"],
                static_cast<unsigned long long>(o.seed), o.data_dir.c_str());
    std::printf("sessions  accepted %llu (resumed %zu)  completed %llu  failed %llu"
                "  queued %llu  active %llu  lost %zu\n",
                s["accepted"].get<unsigned long long>(), resumed,
                s["completed"].get<unsigned long long>(),
                s["failed"].get<unsigned long long>(),
                s["queued"].get<unsigned long long>(),
                s["active"].get<unsigned long long>(), lost);
    std::printf("nodes    ");
    for (auto& [k, v] : report["nodes"]["by_state"].items())
      std::printf(" %s %llu", k.c_str(), v.get<unsigned long long>());
    std::printf("\ntests     passed %llu  failed %llu\n",
                report["tests"]["passed"].get<unsigned long long>(),
                report["tests"]["failed"].get<unsigned long long>());
    std::printf("refused miner messages:");
    for (auto& [k, v] : gateway_stats["refused"].items())
      std::printf(" %s %llu", k.c_str(), v.get<unsigned long long>());
    std::printf("\ninvariants: %s over %llu log entries\n",
                violations.empty() ? "I1-I5 hold" : "VIOLATED",
                static_cast<unsigned long long>(hist.entries));
    for (auto& v : violations)
      std::printf("  %s\n", v.dump().c_str());
    std::printf("elapsed   %.2f s, %.1f sessions/s\n", total_s,
                report["throughput"]["sessions_per_s"].get<double>());
  } else {
    std::printf("%s\n", report.dump().c_str());
  }
  std::fflush(stdout);
  return violations.empty() ? 0 : 1;
}

} // namespace

void add_demo(CLI::App& app) {
  auto o = std::make_shared<demo_options>();
  auto* cmd = app.add_subcommand(
    "demo", "run an embedded oracle with simulated miners and sessions");
  cmd->add_option("--nodes", o->nodes, "simulated miner nodes (default 40)")
    ->check(CLI::Range(1, 100000));
  cmd->add_option("--sessions", o->sessions, "sessions to run (default 200)")
    ->check(CLI::Range(0, 10000000));
  cmd->add_option("--faulty-share", o->faulty_share,
                  "share of misbehaving nodes, 0..1 (default 0.2)")
    ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--seed", o->seed, "seed of behaviours and sessions");
  cmd->add_option("--data-dir", o->data_dir,
                  "store directory; default a fresh temporary one. Run again "
                  "with the same directory to resume after a crash");
  cmd->add_option("--timeout", o->timeout_s,
                  "give up waiting after this many seconds (default 0: wait "
                  "until every session has ended; Ctrl-C stops it, resumable)");
  cmd->add_option("--config", o->config, "TOML file with a [pool] table");
  cmd->add_flag("--json", o->json, "print one JSON object as the last line");
  cmd->add_flag("--serve", o->serve,
                "keep the oracle and its HTTP API up after the sessions are "
                "done, until Ctrl-C");
  add_http_flags(*cmd, o->api);
  add_param_flags(*cmd, o->flags);
  cmd->callback([o] {
    if (int rc = run(*o); rc != 0)
      throw exit_code{rc};
  });
}

} // namespace nodepool::cli
