#include "actors/supervisor.hpp"

#include <optional>

#include <caf/all.hpp>
#include <nlohmann/json.hpp>

#include "actors/config.hpp"
#include "log.hpp"
#include "pool_state.hpp"
#include "archive.hpp"
#include "recovery.hpp"

namespace nodepool {

namespace {

struct supervisor_state {
  pool_state pool;
  supervisor_config cfg;
  std::vector<pb::LogEntry> pending;
  std::vector<pb::SessionRecord> archived;  // goes out with `pending`
  std::unique_ptr<snapshot_writer> snapshots;
  /// Answers held until the next group commit, in arrival order: accepted
  /// commands wait for the disk, and so do refusals that arrive while
  /// others wait (a refusal can reveal state, e.g. "duplicate_session",
  /// that is only safe to reveal once it is stored).
  std::vector<std::pair<caf::response_promise, std::optional<refusal>>> waiting;
  pb::EventBatch events;
  std::vector<caf::actor> subscribers;
  bool flush_scheduled = false;
  uint64_t next_index = 1;
  uint64_t since_snapshot = 0;
  int64_t time_offset = 0;
  int64_t last_now = 0;  // time of the last command (the log's time is monotonic)
  // counters
  uint64_t applied = 0;
  uint64_t refused = 0;
  uint64_t batches = 0;
  std::map<std::string, uint64_t> refusals;
  static inline const char* name = "pool_supervisor";
};

using self_ptr = caf::stateful_actor<supervisor_state>*;

/// The time a command is applied at: the clock, but never earlier than the
/// last command's (a wall clock stepped back must not reorder the log's
/// deadlines).
int64_t now(self_ptr self) {
  auto& st = self->state;
  auto t = now_ms(self, st.cfg.sim_time) + st.time_offset
           + (st.cfg.clock_skew_ms ? *st.cfg.clock_skew_ms : 0);
  st.last_now = std::max(st.last_now, t);
  return st.last_now;
}

/// A submission whose id ended long ago (past the pool's idempotency
/// window) is found in the archive: refused here, before the pool sees it.
apply_result archived_duplicate(self_ptr self, const pb::Command& cmd) {
  apply_result r;
  auto& id = cmd.submit_session().session_id();
  auto& pool = self->state.pool;
  if (id.empty() || pool.session(id) || pool.recently_ended(id))
    return r;  // the pool answers these itself, without a read
  std::optional<pb::SessionRecord> old;
  if (auto s = self->state.cfg.storage->archived(id, old); !s.ok())
    r.refused = refusal{"storage_error", "archive lookup failed: " + s.error};
  else if (old)
    r.refused = refusal{"duplicate_session",
                        "session " + id + " already ended ("
                          + to_string(old->state()) + ")"};
  return r;
}

/// Applies one command; a change is queued for the next group commit. The
/// command is moved into its log entry (no copy per command).
void apply(self_ptr self, pb::Command& cmd,
           caf::response_promise* rp) {
  auto& st = self->state;
  auto t = now(self);
  auto r = cmd.has_submit_session() ? archived_duplicate(self, cmd)
                                    : apply_result{};
  if (!r.refused)
    r = st.pool.apply(cmd, t);
  if (r.refused) {
    ++st.refused;
    ++st.refusals[r.refused->code];
    if (auto l = log("supervisor"); l->should_log(spdlog::level::debug))
      l->debug("refused {}: {} ({})", cmd.ShortDebugString(), r.refused->code,
               r.refused->detail);
    if (rp && st.pending.empty())
      rp->deliver(make_refusal(r.refused->code, r.refused->detail));
    else if (rp)
      st.waiting.emplace_back(std::move(*rp), r.refused);
    return;
  }
  if (!r.changed) {
    if (rp && st.pending.empty())
      rp->deliver(accepted_atom::value);
    else if (rp)
      st.waiting.emplace_back(std::move(*rp), std::nullopt);
    return;
  }
  ++st.applied;
  if (st.cfg.observer)
    st.cfg.observer(st.pool, cmd, r);
  for (auto& a : r.archived)
    st.archived.push_back(std::move(a));
  auto& e = st.pending.emplace_back();
  e.set_index(st.next_index++);
  e.set_now(t);
  e.mutable_command()->Swap(&cmd);
  for (auto& ev : r.events)
    *st.events.add_events() = std::move(ev);
  if (rp)
    st.waiting.emplace_back(std::move(*rp), std::nullopt);
  if (!st.flush_scheduled) {
    st.flush_scheduled = true;
    self->send(self, flush_atom::value);
  }
}

void flush(self_ptr self) {
  auto& st = self->state;
  st.flush_scheduled = false;
  if (st.pending.empty())
    return;
  if (auto s = st.cfg.storage->append(st.pending, st.archived, st.cfg.sync);
      !s.ok()) {
    // The in-memory state is ahead of the disk and nobody was told: stop
    // before anyone is, so a restart resumes from what is durable.
    log("supervisor")->critical("group commit failed: {}", s.error);
    self->quit(caf::make_error(caf::sec::runtime_error, s.error));
    return;
  }
  if (st.cfg.crash_after_write && st.cfg.crash_after_write()) {
    log("supervisor")->warn("injected crash after a durable write");
    self->quit(caf::exit_reason::kill);
    return;
  }
  ++st.batches;
  st.since_snapshot += st.pending.size();
  auto last_index = st.pending.back().index();
  auto last_now = st.pending.back().now();
  st.pending.clear();
  st.archived.clear();
  // Events before replies: a requester that hears "accepted" and then asks a
  // subscriber anything finds the subscriber already told.
  if (st.events.events_size() > 0) {
    st.events.set_now(last_now);
    auto bytes = st.events.SerializeAsString();
    st.events.Clear();
    for (auto& s : st.subscribers)
      self->send(s, events_atom::value, bytes);
  }
  for (auto& [rp, refused] : st.waiting)
    if (refused)
      rp.deliver(make_refusal(refused->code, refused->detail));
    else
      rp.deliver(accepted_atom::value);
  st.waiting.clear();
  // A snapshot costs in proportion to the live records it holds (ended
  // sessions are archived, so not to the history). Waiting at least as
  // many entries as there are records keeps that cost constant per entry,
  // and the replay after a restart no longer than loading the snapshot.
  // The window of recent ids is in the snapshot too, at 8 bytes an id
  // (a record is about 16 times that): at a high rate of sessions it holds
  // millions, so it counts towards the interval at that weight.
  auto every = std::max<uint64_t>(
    st.cfg.pool.snapshot_every,
    st.pool.nodes().size() + st.pool.sessions().size()
      + st.pool.recent_ids().size() / 16);
  if (st.since_snapshot >= every) {
    // Here only the copy of the live state; serializing and writing it
    // happen on the writer's thread.
    auto snap = st.pool.snapshot();
    snap.set_last_index(last_index);
    st.since_snapshot = 0;
    if (st.snapshots) {
      st.snapshots->submit(std::move(snap));
    } else if (auto s = st.cfg.storage->save_snapshot(snap); !s.ok()) {
      log("supervisor")->error("snapshot failed (log still complete): {}",
                               s.error);
    }
  }
}

caf::behavior supervisor(self_ptr self, supervisor_config cfg) {
  auto& st = self->state;
  st.cfg = std::move(cfg);
  st.pool = pool_state{};  // the stored history sets its own parameters
  recovered info;
  if (auto s = recover(*st.cfg.storage, st.pool, info); !s.ok()) {
    log("supervisor")->critical("cannot load stored state: {}", s.error);
    self->quit(caf::make_error(caf::sec::runtime_error, s.error));
    return {};
  }
  if (st.cfg.async_snapshots)
    st.snapshots = std::make_unique<snapshot_writer>(
      st.cfg.storage, [](const pb::Snapshot& snap) {
        // The whole-state check of I1-I5, at every snapshot, on the
        // writer's thread: the commands in between were checked on what
        // they touched (by tests, simulation and `nodepool check`).
        pool_state copy;
        copy.restore(snap, false);  // I1-I5 do not look at the window
        for (auto& v : copy.check_invariants())
          log("supervisor")->critical("snapshot at entry {} breaks {}: {}",
                                      snap.last_index(), v.invariant,
                                      v.detail);
      });
  st.next_index = info.last_index + 1;
  st.last_now = info.last_now;
  if (st.cfg.sim_time)
    st.time_offset = std::max<int64_t>(0, info.last_now - now_ms(self, true));
  // Recover first: with every node LOST and no session active, new
  // parameters (a shorter ephemeral window, say) cannot make what was
  // reserved under the old ones look wrong.
  if (info.last_index > 0) {
    log("supervisor")->info("recovered {} entries ({} replayed), {} nodes, "
                            "{} sessions",
                            info.last_index, info.replayed,
                            st.pool.nodes().size(), st.pool.sessions().size());
    pb::Command rec;
    rec.mutable_recover();
    apply(self, rec, nullptr);
  }
  // Parameters are part of the log: a replay must see each command under
  // the parameters it was applied with.
  if (to_json(st.pool.config()) != to_json(st.cfg.pool)) {
    pb::Command conf;
    conf.mutable_configure()->set_params_json(to_json(st.cfg.pool));
    apply(self, conf, nullptr);
  }
  self->send(self, tick_atom::value);
  return {
    [=](cmd_atom, const std::string& bytes) -> caf::result<void> {
      auto rp = self->make_response_promise();
      pb::Command cmd;
      if (!cmd.ParseFromString(bytes) || cmd.kind_case() == pb::Command::KIND_NOT_SET) {
        ++self->state.refused;
        ++self->state.refusals["malformed"];
        rp.deliver(make_refusal("malformed", "command does not decode"));
        return rp;
      }
      apply(self, cmd, &rp);
      return rp;
    },
    [=](tick_atom) {
      pb::Command tick;
      tick.mutable_tick();
      apply(self, tick, nullptr);
      self->delayed_send(self,
                         std::chrono::milliseconds(
                           self->state.cfg.pool.tick_interval_ms),
                         tick_atom::value);
    },
    [=](flush_atom) { flush(self); },
    [=](subscribe_atom, caf::actor who) {
      self->state.subscribers.push_back(std::move(who));
    },
    [=](state_atom) -> std::string {
      auto snap = self->state.pool.snapshot();
      snap.set_last_index(self->state.next_index - 1);
      return snap.SerializeAsString();
    },
    [=](archive_atom, const std::string& bytes) -> std::string {
      pb::ArchiveQuery q;
      pb::ArchiveAnswer a;
      if (!q.ParseFromString(bytes)) {
        a.set_error("query does not decode");
        return a.SerializeAsString();
      }
      // Bounded: a query costs the supervisor at most `limit` reads.
      if (auto err = query_archive(*self->state.cfg.storage, self->state.pool,
                                   q, a);
          !err.empty())
        a.set_error(err);
      return a.SerializeAsString();
    },
    [=](stats_atom) -> std::string {
      auto& s = self->state;
      nlohmann::json j;
      j["applied"] = s.applied;
      j["refused"] = s.refused;
      j["batches"] = s.batches;
      j["last_index"] = s.next_index - 1;
      j["refusals"] = s.refusals;
      j["snapshots_written"] = s.snapshots ? s.snapshots->written() : 0;
      // What memory and snapshots hold: live records, and the window.
      j["live_nodes"] = s.pool.nodes().size();
      j["live_sessions"] = s.pool.sessions().size();
      j["sessions_accepted"] = s.pool.sessions_accepted();
      j["recent_ids"] = s.pool.recent_ids().size();
      j["recent_ids_bytes"] = s.pool.recent_ids().memory_bytes();
      return j.dump();
    },
  };
}

} // namespace

caf::actor spawn_supervisor(caf::actor_system& sys, supervisor_config cfg) {
  return sys.spawn([cfg = std::move(cfg)](self_ptr self) mutable {
    return supervisor(self, std::move(cfg));
  });
}

} // namespace nodepool
