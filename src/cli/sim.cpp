// nodepool sim: seeded simulation runs of the whole single-oracle pool (see
// actors/sim.hpp). Seeds are spread over worker processes; the report is
// merged in seed order, so it is the same whatever the number of workers.
#include <CLI/CLI.hpp>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

#include "actors/sim.hpp"
#include "cli/common.hpp"
#include "log.hpp"

namespace nodepool::cli {

namespace {

struct sim_cli {
  std::string seeds = "1..100";
  unsigned jobs = 0;
  bool json = false;
  sim_options opt;
};

std::pair<uint64_t, uint64_t> parse_seeds(const std::string& s) {
  auto dots = s.find("..");
  try {
    size_t used = 0;
    if (dots == std::string::npos) {
      auto v = std::stoull(s, &used);
      if (used != s.size())
        throw std::invalid_argument(s);
      return {v, v};
    }
    auto a = std::stoull(s.substr(0, dots), &used);
    if (used != dots)
      throw std::invalid_argument(s);
    auto b_text = s.substr(dots + 2);
    auto b = std::stoull(b_text, &used);
    if (used != b_text.size() || b < a)
      throw std::invalid_argument(s);
    return {a, b};
  } catch (const std::exception&) {
    throw std::runtime_error("--seeds: expected N or A..B with A <= B, got '"
                             + s + "'");
  }
}

nlohmann::json to_json(const sim_result& r, bool with_trace) {
  nlohmann::json j;
  j["seed"] = r.seed;
  j["violations"] = nlohmann::json::array();
  for (auto& v : r.violations)
    j["violations"].push_back(
      {{"seed", v.seed}, {"invariant", v.invariant}, {"detail", v.detail}});
  j["faults"] = r.faults;
  j["nodes"] = r.nodes;
  j["commands"] = r.commands;
  j["submitted"] = r.submitted;
  j["accepted"] = r.accepted;
  j["completed"] = r.completed;
  j["failed"] = r.failed;
  j["lost"] = r.lost;
  j["cheat_tests"] = r.cheat_tests;
  j["cheat_passes"] = r.cheat_passes;
  if (r.nodes_forgotten > 0)
    j["nodes_forgotten"] = r.nodes_forgotten;
  if (r.oracles > 1) {
    j["oracles"] = r.oracles;
    j["leader_changes"] = r.leader_changes;
    j["archive_gaps"] = r.archive_gaps;
    j["raft_guard"] = r.raft_guard;
  }
  if (with_trace)
    j["trace"] = r.trace;
  return j;
}

/// A worker: runs seeds first, first + step, ... up to last; before each a
/// line "S <seed>", after it the result as one JSON line.
void worker(const sim_cli& c, uint64_t first, uint64_t last, uint64_t step,
            const std::string& out_path) {
  std::ofstream out(out_path);
  for (uint64_t s = first; s <= last && !stop_requested; s += step) {
    out << "S " << s << "\n" << std::flush;
    auto r = c.opt.oracles > 1 ? run_cluster_sim(s, c.opt) : run_sim(s, c.opt);
    out << to_json(r, c.opt.trace).dump() << "\n" << std::flush;
    if (s > last - step)  // no overflow past the last seed
      break;
  }
}

void run(const sim_cli& c) {
  begin();
  if (!log_level_given)
    set_log_level("off");  // injected faults make every actor complain
  auto [first, last] = parse_seeds(c.seeds);
  if (c.opt.oracles != 1 && c.opt.oracles != 3 && c.opt.oracles != 5)
    throw std::runtime_error("--oracles: 1, 3 or 5, got "
                             + std::to_string(c.opt.oracles));
  if (c.opt.oracles > 1
      && (c.opt.store != "memory" || c.opt.lossy_store || !c.opt.sync))
    throw std::runtime_error(
      "--oracles 3|5 keeps every member's log in libraft's simulated disks: "
      "--store, --lossy-store and --no-sync are for one oracle");
  if (c.opt.oracles == 1
      && (c.opt.lying_log || !c.opt.raft_guard || !c.opt.restarts || c.opt.lying_disk))
    throw std::runtime_error(
      "--lying-log, --lying-disk, --no-raft-guard and --no-restarts are for --oracles 3|5");
  if (c.opt.lying_disk && !c.opt.restarts)
    throw std::runtime_error("--lying-disk needs restarts: drop --no-restarts");
  if (c.opt.store != "memory" && c.opt.store != "rocksdb")
    throw std::runtime_error("--store: memory or rocksdb, got '" + c.opt.store + "'");
  if (c.opt.lossy_store && c.opt.store != "memory")
    throw std::runtime_error("--lossy-store works with --store memory only");
  if (!c.opt.sync && c.opt.store != "memory")
    throw std::runtime_error("--no-sync works with --store memory only");
  uint64_t count = last - first + 1;
  unsigned jobs = c.jobs ? c.jobs : std::max(1u, std::thread::hardware_concurrency());
  if (jobs > count)
    jobs = static_cast<unsigned>(count);
  auto t0 = std::chrono::steady_clock::now();

  // A worker runs seeds from, from + jobs, ... up to last. One that dies
  // (a crash inside a seed) is reported for that seed, and a new worker
  // takes the rest of its seeds.
  struct job {
    pid_t pid = 0;
    std::string file;
    int status = 0;
    bool ended = false, killed = false;
  };
  std::vector<job> js;
  auto base = c.opt.data_root + "/nodepool-sim-out-" + std::to_string(::getpid());
  auto spawn = [&](uint64_t from) {
    job j;
    j.file = base + "-" + std::to_string(js.size());
    std::cout.flush();
    auto pid = ::fork();
    if (pid < 0)
      throw std::runtime_error("fork failed");
    if (pid == 0) {
      // A worker finishes the seed it is running (milliseconds) and stops:
      // a signal only sets the flag, be it the terminal's to the whole group
      // or the one the parent passes on.
      for (int sig : {SIGINT, SIGTERM})
        std::signal(sig, [](int) { stop_requested = true; });
      int rc = 0;
      try {
        worker(c, from, last, jobs, j.file);
      } catch (const std::exception& e) {
        std::cerr << "nodepool sim: worker: " << e.what() << "\n";
        rc = 3;
      }
      std::_Exit(rc);
    }
    j.pid = pid;
    js.push_back(j);
  };
  for (unsigned k = 0; k < jobs; ++k)
    spawn(first + k);

  std::map<uint64_t, nlohmann::json> results;  // seed -> result
  std::vector<nlohmann::json> violations;
  bool worker_failed = false;
  // What an ended worker wrote; the seed it was running when it died, if
  // it died in one.
  auto collect = [&](job& w) -> std::optional<uint64_t> {
    std::ifstream in(w.file);
    std::string line;
    std::optional<uint64_t> open_seed;
    while (std::getline(in, line)) {
      if (line.rfind("S ", 0) == 0) {
        open_seed = std::stoull(line.substr(2));
        continue;
      }
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded())
        continue;
      results[j["seed"].get<uint64_t>()] = j;
      open_seed.reset();
    }
    std::remove(w.file.c_str());
    bool clean = WIFEXITED(w.status) && WEXITSTATUS(w.status) == 0;
    if (w.killed && open_seed && c.opt.store == "rocksdb") {
      // The store of the seed it was running (see actors/sim.cpp).
      std::error_code ec;
      std::filesystem::remove_all(c.opt.data_root + "/nodepool-sim-"
                                    + std::to_string(w.pid) + "-"
                                    + std::to_string(*open_seed),
                                  ec);
    }
    if (clean || w.killed)
      return std::nullopt;
    worker_failed = true;
    auto what = WIFSIGNALED(w.status)
                  ? "died of signal " + std::to_string(WTERMSIG(w.status))
                  : "exited with " + std::to_string(WEXITSTATUS(w.status));
    if (!open_seed)
      return std::nullopt;
    nlohmann::json j;
    j["seed"] = *open_seed;
    j["violations"] = nlohmann::json::array(
      {{{"seed", *open_seed}, {"invariant", "crash"},
        {"detail", "the simulation " + what}}});
    results[*open_seed] = j;
    return open_seed;
  };
  // The workers are polled, so that a signal is noticed: each is then told
  // to stop after its current seed, and one that has not within half a
  // second is killed.
  std::optional<std::chrono::steady_clock::time_point> kill_at;
  for (;;) {
    bool running = false;
    for (size_t k = 0; k < js.size(); ++k) {
      if (js[k].ended)
        continue;
      if (::waitpid(js[k].pid, &js[k].status, WNOHANG) != js[k].pid) {
        running = true;
        continue;
      }
      js[k].ended = true;
      auto died_in = collect(js[k]);
      if (died_in && !stop_requested && *died_in + jobs <= last) {
        spawn(*died_in + jobs);  // may move js: index again
        running = true;
      }
    }
    if (!running)
      break;
    if (stop_requested && !kill_at) {
      for (auto& w : js)
        if (!w.ended)
          ::kill(w.pid, SIGTERM);
      kill_at = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
    }
    if (kill_at && std::chrono::steady_clock::now() > *kill_at)
      for (auto& w : js)
        if (!w.ended && !w.killed) {
          ::kill(w.pid, SIGKILL);
          w.killed = true;
        }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }

  uint64_t runs = 0;
  std::map<std::string, uint64_t> faults;
  std::map<std::string, uint64_t> sessions, cheats, guard;
  uint64_t forgotten = 0;  // nodes that left the records (NodeForgotten)
  for (auto& [seed, j] : results) {
    ++runs;
    if (j.contains("faults"))
      for (auto& [k, v] : j["faults"].items())
        faults[k] += v.get<uint64_t>();
    for (auto key : {"submitted", "accepted", "completed", "failed", "lost",
                     "leader_changes", "archive_gaps"})
      if (j.contains(key))
        sessions[key] += j[key].get<uint64_t>();
    if (j.contains("raft_guard"))
      for (auto& [k, v] : j["raft_guard"].items())
        guard[k] += v.get<uint64_t>();
    forgotten += j.value("nodes_forgotten", uint64_t{0});
    for (auto key : {"cheat_tests", "cheat_passes"})
      if (j.contains(key))
        cheats[key] += j[key].get<uint64_t>();
    if (c.opt.trace && j.contains("trace"))
      std::cout << "seed " << seed << ": " << j.value("nodes", 0) << " nodes, "
                << j.value("accepted", 0) << " sessions accepted, "
                << j.value("commands", 0) << " commands; faults:\n"
                << j["trace"].get<std::string>();
    for (auto& v : j["violations"]) {
      violations.push_back(v);
      std::cout << "FAIL seed " << seed << ": " << v["invariant"].get<std::string>()
                << ": " << v["detail"].get<std::string>() << "\n"
                << "  reproduce: " << sim_repro_command(seed, c.opt) << "\n";
    }
  }
  std::cout << "seeds " << first << ".." << last << ": " << runs << " runs, "
            << violations.size() << " violations\n";
  std::cout << "sessions:";
  for (auto& [k, v] : sessions)
    std::cout << " " << k << "=" << v;
  std::cout << "\nfaults:";
  for (auto& [k, v] : faults)
    std::cout << " " << k << "=" << v;
  std::cout << "\n";
  if (!guard.empty()) {
    std::cout << "raft guard:";
    for (auto& [k, v] : guard)
      std::cout << " " << k << "=" << v;
    std::cout << "\n";
  }
  if (forgotten > 0)
    std::cout << "nodes forgotten (lost or retired past their retention): "
              << forgotten << "\n";
  if (cheats["cheat_tests"] > 0)
    std::cout << "nodes without the model (solver, copycat): "
              << cheats["cheat_passes"] << " of " << cheats["cheat_tests"]
              << " tests passed\n";
  auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // Timing goes to stderr: stdout is the same on every rerun of a seed range.
  std::cerr << "nodepool sim: " << runs << " seeds in " << secs << " s with "
            << jobs << " workers\n";
  if (c.json) {
    nlohmann::json j;
    if (stop_requested)
      j["interrupted"] = true;
    j["seeds"] = {first, last};
    j["runs"] = runs;
    j["violations"] = violations;
    j["faults"] = faults;
    j["sessions"] = sessions;
    j["cheats"] = cheats;
    if (forgotten > 0)
      j["nodes_forgotten"] = forgotten;
    j["store"] = c.opt.store;
    j["oracles"] = c.opt.oracles;
    if (c.opt.oracles > 1)
      j["raft_guard"] = guard;
    std::cout << j.dump() << "\n";
  }
  std::cout.flush();
  if (stop_requested && runs < count)
    throw exit_code{report_interrupted(
      "sim", std::to_string(runs) + " of " + std::to_string(count)
               + " seeds ran; the report covers those only: run the same "
                 "command again for all of them")};
  if (!violations.empty() || worker_failed || runs != count)
    throw exit_code{1};
}

} // namespace

void add_sim(CLI::App& app) {
  auto c = std::make_shared<sim_cli>();
  auto* cmd = app.add_subcommand(
    "sim", "seeded fault-injection simulation of the whole pool");
  cmd->add_option("--seeds", c->seeds, "N or A..B (default 1..100)");
  cmd->add_option("--jobs", c->jobs, "worker processes (default: one per core)");
  cmd->add_option("--oracles", c->opt.oracles,
                  "1 (default): one oracle over a store; 3 or 5: a "
                  "replicated pool on libraft's simulated network and disks");
  cmd->add_option("--store", c->opt.store, "memory (default) or rocksdb");
  cmd->add_option("--data-root", c->opt.data_root,
                  "where RocksDB stores and worker output go (default /tmp)");
  cmd->add_option("--healthy", c->opt.healthy_nodes,
                  "healthy nodes per run (default 3)");
  cmd->add_option("--tests-in-flight", c->opt.tests_in_flight,
                  "max_tests_in_flight of every run (default: the pool's, "
                  "250, which a run's few nodes never reach); 1 to 3 make "
                  "tests wait for each other through the faults")
    ->check(CLI::Range(1u, 1000000u));
  cmd->add_flag("--lossy-store", c->opt.lossy_store,
                "check the checker: a store that loses session submissions "
                "(every run that accepts a session must fail)");
  cmd->add_flag("--no-sync", [c](int64_t) { c->opt.sync = false; },
                "check the checker: group commits are not synced, so power "
                "cuts lose acknowledged sessions (runs with a cut must fail)");
  cmd->add_flag("--lying-log", c->opt.lying_log,
                "check the checker (--oracles 3|5): the leader hears an entry "
                "committed as soon as it proposes it (runs where a leader "
                "dies with acknowledged entries on no majority must fail)");
  cmd->add_flag("--no-raft-guard", [c](int64_t) { c->opt.raft_guard = false; },
                "check the checker (--oracles 3|5): libraft 0.15 without the "
                "guard for its log-matching holes (some seeds must fail)");
  cmd->add_flag("--lying-disk", c->opt.lying_disk,
                "check the checker (--oracles 3|5): a power cut also loses "
                "the last raft entries the disk acknowledged as written "
                "(some seeds must fail)");
  cmd->add_flag("--no-restarts", [c](int64_t) { c->opt.restarts = false; },
                "--oracles 3|5: stopped oracles only freeze and resume; none "
                "crashes and restarts from its disk");
  cmd->add_flag("--trace", c->opt.trace, "print every injected fault of every seed");
  cmd->add_flag("--json", c->json, "print one JSON object as the last line");
  cmd->callback([c] { run(*c); });
}

} // namespace nodepool::cli
