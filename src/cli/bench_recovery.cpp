// The recovery section of `nodepool bench`: how long an oracle takes from
// the start of its process to serving again after it was killed with
// SIGKILL, with a large pool in its data directory.
#include <caf/all.hpp>
#include <caf/io/all.hpp>
#include <algorithm>
#include <csignal>
#include <filesystem>
#include <thread>
#include <unistd.h>

#include "actors/config.hpp"
#include "actors/node.hpp"
#include "cli/bench_common.hpp"
#include "cluster_config.hpp"
#include "cli/common.hpp"

namespace nodepool::cli::bench {

void prepare_recovery(const std::string& dir, uint32_t nodes,
                      uint32_t sessions) {
  // What an oracle with default parameters stores when `nodes` nodes
  // registered (their admission tests in flight) and `sessions` sessions
  // were accepted while no node could serve yet: the log of those commands
  // and a snapshot, taken as the supervisor takes them (every snapshot_every
  // entries, so the log has entries after it to replay). Then the process
  // dies without closing anything.
  try {
    auto storage = open_store(dir);
    params p;
    pool_state ps{p};
    auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                 std::chrono::system_clock::now().time_since_epoch())
                 .count();
    std::vector<pb::LogEntry> batch;
    uint64_t index = 0;
    auto total = static_cast<uint64_t>(nodes) + sessions;
    // A snapshot half a period before the end, as the supervisor takes one
    // every max(snapshot_every, records on file) entries: the entries after
    // it are replayed.
    auto period = std::max<uint64_t>(p.snapshot_every, total);
    auto snap_at = total > period / 2 ? total - period / 2 : 0;
    auto add = [&](const pb::Command& c) {
      auto r = ps.apply(c, now);
      if (r.refused)
        throw std::runtime_error("prepare: refused " + r.refused->name());
      auto& e = batch.emplace_back();
      e.set_index(++index);
      e.set_now(now);
      *e.mutable_command() = c;
      if (batch.size() >= 1000 || index == snap_at) {
        if (auto s = storage->append(batch, index == snap_at); !s.ok())
          throw std::runtime_error(s.error);
        batch.clear();
      }
      if (index == snap_at) {
        auto snap = ps.snapshot();
        snap.set_last_index(index);
        if (auto s = storage->save_snapshot(snap); !s.ok())
          throw std::runtime_error(s.error);
      }
    };
    for (uint32_t i = 0; i < nodes; ++i) {
      char id[32];
      std::snprintf(id, sizeof id, "n-%06u", i);
      pb::Command c;
      c.mutable_register_()->set_node_id(id);
      c.mutable_register_()->add_models("llama-3-8b");
      add(c);
    }
    for (uint32_t i = 0; i < sessions; ++i) {
      pb::Command c;
      auto* s = c.mutable_submit_session();
      s->set_session_id("q-" + std::to_string(i));
      s->set_model("llama-3-8b");
      s->set_min_nodes(1);
      s->set_max_nodes(3);
      s->set_redundancy(3);
      s->set_max_tasks(3);
      s->set_client("bench");
      add(c);
    }
    if (auto s = storage->append(batch, true); !s.ok())
      throw std::runtime_error(s.error);
    // The snapshot reaches disk with the memtable flush it started; an
    // oracle is killed some time after that, with the entries after the
    // snapshot only in the write-ahead log.
    std::this_thread::sleep_for(std::chrono::seconds(2));
    std::printf("prepared %u nodes, %u queued sessions, %llu entries "
                "(snapshot at %llu)\n",
                nodes, sessions, static_cast<unsigned long long>(index),
                static_cast<unsigned long long>(snap_at));
    std::fflush(stdout);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "prepare: %s\n", e.what());
    std::fflush(stderr);
    _exit(3);
  }
  raise(SIGKILL);
  _exit(4);  // not reached
}

namespace {

/// The recovery section, in its temporary directory `base`.
nlohmann::json recovery_in(const options& o, const std::string& base) {
  auto prepared = base + "/prepared";
  auto log = base + "/log";
  auto t_prep = clock::now();
  child_process prepare{{"bench", "--prepare-recovery", prepared,
                         "--recovery-nodes", std::to_string(o.recovery_nodes),
                         "--recovery-sessions",
                         std::to_string(o.recovery_sessions)},
                        log, bench_child(self_exe())};
  auto st = prepare.finish(std::chrono::minutes(10), stop_requested);
  check_stop();
  if (st != -SIGKILL)
    throw std::runtime_error("recovery: preparing the data directory failed "
                             "(see " + log + ")");
  note("recovery: data directory with %u nodes and %u queued sessions "
       "prepared in %.1f s",
       o.recovery_nodes, o.recovery_sessions, seconds_since(t_prep));
  uint64_t bytes = 0;
  for (auto& f : std::filesystem::recursive_directory_iterator(prepared))
    if (f.is_regular_file())
      bytes += f.file_size();
  actor_config cfg;
  caf::actor_system sys{cfg};
  std::vector<double> serving, listening;
  for (int r = 0; r < o.reps; ++r) {
    // Every start from the same killed state: a copy of it.
    auto dir = base + "/run" + std::to_string(r);
    std::filesystem::copy(prepared, dir,
                          std::filesystem::copy_options::recursive);
    auto port = free_loopback_port();
    auto t0 = clock::now();
    child_process oracle{{"oracle", "--data-dir", dir, "--host", "127.0.0.1",
                          "--port", std::to_string(port)},
                         log, bench_child(self_exe())};
    auto kill_oracle = [&] {
      oracle.signal(SIGKILL);
      oracle.wait(std::chrono::seconds(10));
    };
    caf::actor gw;
    double listen_s = 0;
    // Every wait below is at most half a second long, so that a signal is
    // noticed in time.
    auto stop_oracle_if_asked = [&] {
      if (!stop_requested)
        return;
      kill_oracle();
      throw interrupted{};
    };
    while (!gw) {
      stop_oracle_if_asked();
      if (!oracle.running())
        throw std::runtime_error("recovery: the oracle exited (see " + log
                                 + ")");
      if (seconds_since(t0) > 120) {
        kill_oracle();
        throw std::runtime_error("recovery: the oracle did not listen in 120 s");
      }
      auto x = connect_oracle(sys, "127.0.0.1", port,
                              std::chrono::milliseconds(500));
      if (x) {
        gw = *x;
        listen_s = seconds_since(t0);
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    }
    // Serving: a new session is accepted, which takes the supervisor's
    // answer once it is durable, so everything before it (snapshot, replay,
    // Recover and their group commit) is included.
    pb::SubmitSession req;
    req.set_session_id("after-restart-" + std::to_string(r));
    req.set_model("llama-3-8b");
    req.set_min_nodes(1);
    req.set_max_nodes(1);
    req.set_redundancy(1);
    req.set_max_tasks(1);
    // Asked again every half second until 120 s: an answer to a repeat
    // (duplicate_session, once the first one is stored) comes at most one
    // group commit after the first would have.
    bool ok = false;
    std::string why;
    {
      caf::scoped_actor self{sys};
      while (!ok && why.empty() && seconds_since(t0) < listen_s + 120) {
        stop_oracle_if_asked();
        self->request(gw, std::chrono::milliseconds(500), submit_atom::value,
                      req.SerializeAsString())
          .receive([&](accepted_atom) { ok = true; },
                   [&](caf::error& e) {
                     auto [code, detail] = read_refusal(sys, e);
                     if (refusal_code(code) == pb::REFUSAL_DUPLICATE_SESSION)
                       ok = true;
                     else if (e != caf::sec::request_timeout)
                       why = detail;
                   });
      }
      if (!ok && why.empty())
        why = "no answer within 120 s";
    }
    auto serve_s = seconds_since(t0);
    kill_oracle();
    remove_tree(dir);
    if (!ok)
      throw std::runtime_error("recovery: the restarted oracle did not accept "
                               "a session: " + why);
    serving.push_back(serve_s);
    listening.push_back(listen_s);
    note("recovery: serving %.3f s after start (listening after %.3f s)",
         serve_s, listen_s);
  }
  remove_tree(base);
  nlohmann::json j;
  j["serving_s"] = median(serving);
  j["serving_s_reps"] = serving;
  j["listening_s"] = median(listening);
  j["nodes"] = o.recovery_nodes;
  j["queued_sessions"] = o.recovery_sessions;
  j["data_dir_mb"] = bytes / 1048576.0;
  return j;
}

} // namespace

nlohmann::json recovery(const options& o) {
  auto base = make_temp_dir("bench-recovery");
  try {
    return recovery_in(o, base);
  } catch (const interrupted&) {
    remove_tree(base);
    throw;
  }
}

} // namespace nodepool::cli::bench
