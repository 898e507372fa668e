#include "actors/supervisor.hpp"
#include "member_archive.hpp"

#include <algorithm>
#include <deque>
#include <optional>

#include <limits>

#include <caf/all.hpp>
#include <nlohmann/json.hpp>

#include "actors/config.hpp"
#include "actors/local.hpp"
#include "cluster_config.hpp"
#include "event_view.hpp"
#include "log.hpp"
#include "metrics.hpp"
#include "pool_state.hpp"
#include "archive.hpp"
#include "proposer.hpp"
#include "recovery.hpp"

namespace nodepool {

namespace {

/// Where a command's answer goes: the promise of a CAF request, or (a
/// command sent with a ticket, actors/tickets.hpp) a message to its sender
/// that names the ticket.
struct answer_to {
  caf::response_promise rp;
  uint64_t ticket = 0;  // 0: a request

  void accept() {
    if (ticket)
      rp.deliver(answer_atom::value, ticket, pb::REFUSAL_NONE, std::string{});
    else
      rp.deliver(accepted_atom::value);
  }
  void refuse(pb::RefusalCode code, const std::string& detail) {
    if (ticket)
      rp.deliver(answer_atom::value, ticket, code, detail);
    else
      rp.deliver(make_refusal(code, detail));
  }
};

struct supervisor_state {
  pool_state pool;
  supervisor_config cfg;
  std::vector<pb::LogEntry> pending;
  std::vector<pb::SessionRecord> archived;  // goes out with `pending`
  int64_t archived_since = 0;  // when the first of `archived` ended
  std::unique_ptr<snapshot_writer> snapshots;
  /// Answers held until the next group commit, in arrival order: accepted
  /// commands wait for the disk, and so do refusals that arrive while
  /// others wait (a refusal can reveal state, e.g. "duplicate_session",
  /// that is only safe to reveal once it is stored).
  std::vector<std::pair<answer_to, std::optional<refusal>>> waiting;
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
  uint64_t copied_ahead = 0;  // records copied ahead of a snapshot
  // Snapshots put off because the writer was still on the one before.
  uint64_t snapshots_deferred = 0;
  bool snapshot_waits_for_writer = false;
  std::map<std::string, uint64_t> refusals;
  // metrics: what /metrics shows of the supervisor
  histogram grant_ms{{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000,
                      10000, 30000, 60000}};  // submitted -> started
  histogram batch_commands = histogram::exponential(1, 2, 13);  // 1 .. 4096
  static inline const std::vector<double> stop_bounds_ms{
    0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500};
  histogram commit_ms{stop_bounds_ms};  // fsync (a cluster: until committed)
  histogram snapshot_copy_ms{stop_bounds_ms};  // the supervisor's share of a snapshot
  // live sessions (queued and active) at each snapshot: what its copy holds
  histogram snapshot_live_sessions = histogram::exponential(1, 4, 11);  // 1 .. 4^10
  uint64_t reservations = 0;
  uint64_t releases = 0;
  // Cluster mode: the leader's speculative state (none on a follower), and
  // the drains proposed and not yet released, oldest first.
  std::optional<proposer> lead;
  uint64_t lead_term = 0;
  // The archive gaps this member has not copied yet, as last read: the
  // one that started earliest (none: complete). Read again when
  // archive_gaps_generation() moved.
  uint64_t gaps_read_at = std::numeric_limits<uint64_t>::max();
  std::optional<replica::archive_gap> earliest_gap;
  // Reads of the gap list that failed: counted, and logged a line per
  // interval at most (a failing disk would otherwise log one a submission).
  uint64_t gap_read_errors = 0;
  log_limiter gap_read_log{10000, 1};
  struct inflight {
    uint64_t seq = 0;
    bool done = false;  // committed (or nothing to commit)
    std::chrono::steady_clock::time_point proposed;
    std::vector<std::pair<answer_to, std::optional<refusal>>> waiting;
    pb::EventBatch events;
  };
  std::deque<inflight> inflight;
  uint64_t next_seq = 1;
  // Sessions the leader's drains ended, until their drain commits: the
  // window may let such an id go (a clock past its retention) before
  // this member's archive has the record. `seq`: the drain's.
  struct ended_ahead {
    std::string id;
    int64_t ended_at = 0;
    uint64_t seq = 0;
  };
  std::deque<ended_ahead> ended_ahead;
  // Since this pool time, committed records were let go before the
  // replica surely wrote them (it does so on raft's thread, soon after):
  // a lookup well past it makes the replica catch up first.
  std::optional<int64_t> let_go_since;
  uint64_t terms_led = 0;
  std::vector<caf::actor> term_listeners;  // told each term this member leads
  // Leadership transfers asked by operators, waiting for the log.
  std::map<uint64_t, caf::response_promise> transfers;
  uint64_t next_transfer = 1;
  uint64_t rotations = 0;  // scheduled hand-overs that succeeded
  // Membership changes asked by operators, waiting for the log; a leader
  // asked to remove itself hands over first (`handing_over`).
  struct member_change {
    caf::response_promise rp;
    bool handing_over = false;
  };
  std::map<uint64_t, member_change> member_changes;
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

/// A cluster member's archive gap that starts earliest, if any is not
/// copied yet (read again only when a gap was recorded or forgotten).
const std::optional<replica::archive_gap>& earliest_gap(self_ptr self) {
  auto& st = self->state;
  auto gen = archive_gaps_generation();
  if (gen != st.gaps_read_at) {
    std::vector<pending_gap> gaps;
    if (auto s = pending_gaps(*st.cfg.storage, gaps); !s.ok()) {
      // Unreadable: as if a gap started at the beginning of time, until a
      // read succeeds.
      ++st.gap_read_errors;
      if (st.gap_read_log.allow("gaps", now_ms(self, st.cfg.sim_time)))
        log("supervisor")->error("archive gaps unreadable ({} reads failed "
                                 "so far; one line in 10 s at most): {}",
                                 st.gap_read_errors, s.error);
      st.earliest_gap = replica::archive_gap{0, 0, 0, 0};
      return st.earliest_gap;
    }
    st.earliest_gap.reset();
    for (auto& g : gaps)
      if (!st.earliest_gap || g.gap.from_now < st.earliest_gap->from_now)
        st.earliest_gap = g.gap;
    st.gaps_read_at = gen;
  }
  return st.earliest_gap;
}

/// Makes the replica apply what raft committed and it kept for later, so
/// this member's archive holds every session a committed entry ended.
void caught_up(self_ptr self) {
  auto& st = self->state;
  if (st.cfg.replica)
    st.cfg.replica->with([](replica&) {});
  st.let_go_since.reset();
}

/// The leader's drains up to `seq` committed: the sessions they ended are
/// let go. One that the window may drop within half its length (a slow
/// commit) is written by the replica now; the others soon will be, and a
/// lookup half a window later catches the replica up first.
void let_go_ended(self_ptr self, uint64_t seq, int64_t retention) {
  auto& st = self->state;
  bool close = false;
  bool any = false;
  while (!st.ended_ahead.empty() && st.ended_ahead.front().seq <= seq) {
    close |= st.ended_ahead.front().ended_at + retention
             <= st.last_now + retention / 2;
    any = true;
    st.ended_ahead.pop_front();
  }
  if (close)
    caught_up(self);
  else if (any && !st.let_go_since)
    st.let_go_since = st.last_now;
}

/// A submission whose id ended long ago (past the pool's idempotency
/// window) is found in the archive: refused here, before the pool sees it;
/// so is one whose session ended earlier in this drain, if the clock
/// moved past the window since (its record is not stored yet). On a cluster member whose archive still has a gap (a snapshot install
/// skipped entries, and the backfill has not copied their sessions from a
/// peer yet), an id found nowhere may still have ended in the gap: once
/// the pool's time `t` is past the gap's start by the window's length,
/// such ids may have left the window too, and a new one is refused as
/// `unavailable` (retry) until the gap is copied.
apply_result archived_duplicate(self_ptr self, const pool_state& pool,
                                const pb::Command& cmd, int64_t t) {
  apply_result r;
  auto& id = cmd.submit_session().session_id();
  if (id.empty() || pool.session(id) || pool.recently_ended(id))
    return r;  // the pool answers these itself, without a read
  // Ended earlier in this drain: not in the archive until its group
  // commit, and out of the window if the clock moved past it meanwhile.
  auto& st = self->state;
  if (!st.archived.empty()
      && t >= st.archived_since + pool.config().session_id_retention_ms)
    for (auto& a : st.archived)
      if (a.id() == id) {
        r.refused = refusal{pb::REFUSAL_DUPLICATE_SESSION,
                            "session " + id + " already ended ("
                              + to_string(a.state()) + ")"};
        return r;
      }
  auto retention = pool.config().session_id_retention_ms;
  if (!st.ended_ahead.empty()
      && t >= st.ended_ahead.front().ended_at + retention)
    for (auto& a : st.ended_ahead)
      if (a.id == id) {
        r.refused = refusal{pb::REFUSAL_DUPLICATE_SESSION,
                            "session " + id + " already ended"};
        return r;
      }
  if (st.let_go_since && t >= *st.let_go_since + retention / 2)
    caught_up(self);
  std::optional<pb::SessionRecord> old;
  if (auto s = st.cfg.storage->archived(id, old); !s.ok()) {
    r.refused = refusal{pb::REFUSAL_STORAGE_ERROR, "archive lookup failed: " + s.error};
  } else if (old) {
    r.refused = refusal{pb::REFUSAL_DUPLICATE_SESSION,
                        "session " + id + " already ended ("
                          + to_string(old->state()) + ")"};
  } else if (st.cfg.cluster_log) {
    auto& g = earliest_gap(self);
    if (g && t >= g->from_now + retention)
      r.refused = refusal{
        pb::REFUSAL_UNAVAILABLE,
        "this member's archive lacks the sessions ended by entries "
          + std::to_string(g->from_index) + ".." + std::to_string(g->to_index)
          + " (being copied from a peer), so a new session id cannot be "
            "checked against them yet: retry shortly"};
  }
  return r;
}

/// A new session refused as `overloaded` when the mailbox behind it holds
/// more than max_backlog messages (supervisor_config); anything else, and
/// any command below the bound, goes on.
apply_result shed(self_ptr self, const pb::Command& cmd) {
  apply_result r;
  auto bound = self->state.cfg.max_backlog;
  if (bound == 0 || !cmd.has_submit_session())
    return r;
  auto waiting = self->mailbox().size();
  if (waiting > bound)
    r.refused = refusal{pb::REFUSAL_OVERLOADED,
                        std::to_string(waiting)
                          + " messages wait at the pool supervisor (more than "
                          + std::to_string(bound)
                          + "): more is offered than the pool serves; retry "
                            "later"};
  return r;
}

/// The next group commit (one drain: one write, or one log entry), unless
/// one is already on its way.
void schedule_flush(self_ptr self) {
  auto& st = self->state;
  if (!st.flush_scheduled) {
    st.flush_scheduled = true;
    self->send(self, flush_atom::value);
  }
}

/// Applies one command; a change is queued for the next group commit. The
/// command is moved into its log entry (no copy per command).
/// A command that changed nothing (refused, or a no-op) is answered at
/// once when nothing is waiting for the disk or the log (`idle`), else in
/// its place behind what is. An answer held so has a flush of its own on
/// the way: on a cluster's leader, what waits is a drain already proposed,
/// and if no change came after it, nothing else would ever send the answer
/// out (a client re-asking for a session whose commit was slow waited for
/// good, and from then on every answer that changed nothing queued behind
/// it). True when `r` was such a command.
bool answered_unchanged(self_ptr self, const pb::Command& cmd,
                        const apply_result& r, answer_to* rp,
                        bool idle) {
  auto& st = self->state;
  if (rp && !idle)
    schedule_flush(self);
  if (r.refused) {
    ++st.refused;
    ++st.refusals[r.refused->name()];
    if (auto l = log("supervisor"); l->should_log(spdlog::level::debug))
      l->debug("refused {}: {} ({})", cmd.ShortDebugString(), r.refused->name(),
               r.refused->detail);
    if (rp && idle)
      rp->refuse(r.refused->code, r.refused->detail);
    else if (rp)
      st.waiting.emplace_back(std::move(*rp), r.refused);
    return true;
  }
  if (!r.changed) {
    if (rp && idle)
      rp->accept();
    else if (rp)
      st.waiting.emplace_back(std::move(*rp), std::nullopt);
    return true;
  }
  return false;
}

/// A command that changed the pool: its events and answer wait for the
/// next group commit, which the first such command schedules.
void hold_for_commit(self_ptr self, apply_result& r,
                     answer_to* rp) {
  auto& st = self->state;
  for (auto& ev : r.events)
    *st.events.add_events() = std::move(ev);
  if (rp)
    st.waiting.emplace_back(std::move(*rp), std::nullopt);
  schedule_flush(self);
}

void apply_cluster(self_ptr self, pb::Command& cmd,
                   answer_to* rp);

/// Grant latency: from a session's submission to its nodes' reservation,
/// in the pool's time, for every session a command started.
void note_grants(self_ptr self, const pool_state& pool, const apply_result& r,
                 int64_t t) {
  for (auto& ev : r.events)
    if (ev.has_session_started())
      if (auto* s = pool.session(ev.session_started().session_id()))
        self->state.grant_ms.add(static_cast<double>(t - s->submitted_at()));
}

/// Events that are durable and go out: counted, and logged one line each
/// at info level.
void published(self_ptr self, const pb::EventBatch& b) {
  auto& st = self->state;
  if (auto& g = st.cfg.gauges) {
    // A cluster's leader decides on its speculative state, not st.pool.
    const auto& pool = st.lead ? st.lead->pool() : st.pool;
    auto sessions = pool.session_counts();
    g->mailbox.store(self->mailbox().size(), std::memory_order_relaxed);
    g->queued.store(sessions[pb::QUEUED], std::memory_order_relaxed);
    g->active.store(sessions[pb::ACTIVE], std::memory_order_relaxed);
    g->ephemeral.store(pool.count_by_state()[pb::EPHEMERAL],
                       std::memory_order_relaxed);
    g->commits.fetch_add(1, std::memory_order_relaxed);
  }
  bool logged = events_logged();
  for (auto& ev : b.events()) {
    st.reservations += ev.has_node_reserved();
    st.releases += ev.has_node_released();
    if (logged) {
      auto j = event_json(ev);
      log_event(j["type"].get<std::string>(), event_fields(j));
    }
  }
}

void flush(self_ptr self);

/// A group commit of the part of a drain applied so far (it reached
/// max_batch_commands); the flush already on its way stays so, and commits
/// the rest of the drain.
template <class Flush>
void flush_part(self_ptr self, Flush f) {
  auto scheduled = self->state.flush_scheduled;
  f(self);
  self->state.flush_scheduled = scheduled;
}

void apply(self_ptr self, pb::Command& cmd,
           answer_to* rp) {
  auto& st = self->state;
  if (st.cfg.cluster_log) {
    apply_cluster(self, cmd, rp);
    return;
  }
  auto t = now(self);
  auto r = shed(self, cmd);
  if (!r.refused && cmd.has_submit_session())
    r = archived_duplicate(self, st.pool, cmd, t);
  if (!r.refused)
    r = st.pool.apply(cmd, t);
  if (answered_unchanged(self, cmd, r, rp, st.pending.empty()))
    return;
  ++st.applied;
  note_grants(self, st.pool, r, t);
  if (st.cfg.observer)
    st.cfg.observer(st.pool, cmd, r);
  if (st.archived.empty() && !r.archived.empty())
    st.archived_since = t;
  for (auto& a : r.archived)
    st.archived.push_back(std::move(a));
  auto& e = st.pending.emplace_back();
  e.set_index(st.next_index++);
  e.set_now(t);
  e.mutable_command()->Swap(&cmd);
  hold_for_commit(self, r, rp);
  if (st.cfg.max_batch_commands > 0
      && st.pending.size() >= st.cfg.max_batch_commands)
    flush_part(self, flush);
}

void refuse_now(self_ptr self, answer_to* rp,
                pb::RefusalCode code, const std::string& detail);

/// A command built in this process (local.hpp): applied as it is. Every
/// command reaches the supervisor so (the gateway, validator, session
/// queue, sessions and HTTP API build them from what they decoded), and is
/// encoded once, into its log entry.
void command(self_ptr self, const local_command& cmd, answer_to& a) {
  if (!cmd || cmd->kind_case() == pb::Command::KIND_NOT_SET)
    return refuse_now(self, &a, pb::REFUSAL_MALFORMED, "command carries no kind");
  apply(self, *cmd, &a);
}

/// The answers a commit releases: each acceptance or refusal, in order.
template <class Waiting>
void deliver_answers(Waiting& waiting) {
  for (auto& [rp, refused] : waiting)
    if (refused)
      rp.refuse(refused->code, refused->detail);
    else
      rp.accept();
}

/// A snapshot of the pool as of entry `last_index` (single oracle). Here
/// only the copy of the live records (the window of recent ids is shared,
/// not copied) and the stop it costs, counted; the rest happens on the
/// writer's thread (inline, and its error returned, without one): the
/// whole-state check of I1-I5 on the frozen records (the commands in
/// between were checked on what they touched, by tests, simulation and
/// `nodepool check`), and the bytes written from them.
status snapshot_now(self_ptr self, uint64_t last_index) {
  auto& st = self->state;
  auto c0 = std::chrono::steady_clock::now();
  auto frozen = std::make_shared<pool_state::frozen>(st.pool.freeze());
  frozen->records.set_last_index(last_index);
  st.snapshot_live_sessions.add(static_cast<double>(st.pool.sessions().size()));
  st.snapshot_copy_ms.add(std::chrono::duration<double, std::milli>(
                            std::chrono::steady_clock::now() - c0).count());
  st.since_snapshot = 0;
  st.snapshot_waits_for_writer = false;
  if (!st.snapshots)
    return st.cfg.storage->save_snapshot_bytes(last_index,
                                               std::move(*frozen).encode());
  st.snapshots->submit([frozen, last_index] {
    for (auto& v : frozen->check())
      log("supervisor")->critical("snapshot at entry {} breaks {}: {}",
                                  last_index, v.invariant, v.detail);
    return encoded_snapshot{last_index, std::move(*frozen).encode()};
  });
  return {};
}

/// A snapshot as of `last_index` (durable) if one is due (single oracle).
/// Returns whether one is due, taken or put off.
bool snapshot_if_due(self_ptr self, uint64_t last_index) {
  auto& st = self->state;
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
  if (st.since_snapshot < every)
    return false;
  if (st.snapshots && st.snapshots->busy()) {
    // The writer is still on the last one: this one waits until it is
    // done, at a later group commit or tick (the log keeps every entry
    // since the last snapshot written). Taken now, it would stop the
    // supervisor to copy every live record whole, since a copy that an
    // unfinished snapshot still reads is not updated in place: under a
    // backlog those stops grew with the queue, and the queue with the
    // stops (BENCHMARKS.md, "Answers found in constant time").
    if (!st.snapshot_waits_for_writer) {
      st.snapshot_waits_for_writer = true;
      ++st.snapshots_deferred;
    }
    return true;
  }
  if (auto s = snapshot_now(self, last_index); !s.ok())
    log("supervisor")->error("snapshot failed (log still complete): {}",
                             s.error);
  return true;
}

void flush(self_ptr self) {
  auto& st = self->state;
  st.flush_scheduled = false;
  if (st.pending.empty())
    return;
  auto t0 = std::chrono::steady_clock::now();
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
  st.commit_ms.add(std::chrono::duration<double, std::milli>(
                     std::chrono::steady_clock::now() - t0).count());
  st.batch_commands.add(static_cast<double>(st.pending.size()));
  st.since_snapshot += st.pending.size();
  auto last_index = st.pending.back().index();
  auto last_now = st.pending.back().now();
  st.pending.clear();
  st.archived.clear();
  // Events before replies: a requester that hears "accepted" and then asks a
  // subscriber anything finds the subscriber already told.
  if (st.events.events_size() > 0) {
    st.events.set_now(last_now);
    published(self, st.events);
    auto batch = share_events(st.events);
    for (auto& s : st.subscribers)
      self->send(s, events_atom::value, batch);
  }
  deliver_answers(st.waiting);
  st.waiting.clear();
  if (!snapshot_if_due(self, last_index)
      && st.cfg.copy_ahead_per_commit > 0 && self->mailbox().empty()) {
    // Between snapshots, after the answers, when no command waits: a
    // little of the next snapshot's copying now, so that its stop stays
    // short. A supervisor with work waiting leaves it to the snapshot
    // (copying ahead costs more in all: a record may be copied twice).
    st.copied_ahead += st.pool.copy_ahead(st.cfg.copy_ahead_per_commit,
                                          st.cfg.copy_ahead_leave);
  }
}

// -- cluster mode ---------------------------------------------------------------

/// What is known of member `id`: the cluster file's entry, or (a member
/// added while the cluster runs) what its address in the configuration says.
cluster_member member_info(self_ptr self, uint64_t id, const log_status& s) {
  auto& cfg = self->state.cfg;
  if (auto i = cfg.member_addresses.find(id); i != cfg.member_addresses.end()) {
    cluster_member m;
    m.id = id;
    m.address = i->second;
    if (auto h = cfg.member_http.find(id); h != cfg.member_http.end())
      m.http = h->second;
    for (auto& x : s.members)
      if (x.id == id)
        m.raft = member_from_config(id, x.address).raft;
    return m;
  }
  for (auto& x : s.members)
    if (x.id == id)
      return member_from_config(id, x.address);
  return cluster_member{};
}

std::string client_address(self_ptr self, uint64_t member) {
  return member_info(self, member, self->state.cfg.cluster_log->status()).address;
}

/// The voters' ids, in order (the cluster file's members when the log names
/// none).
std::vector<uint64_t> voter_ids(self_ptr self) {
  std::vector<uint64_t> out;
  for (auto& m : self->state.cfg.cluster_log->status().members)
    if (m.role == log_member::kind::voter)
      out.push_back(m.id);
  if (out.empty())
    for (auto& [id, a] : self->state.cfg.member_addresses)
      out.push_back(id);
  return out;
}

std::string not_leader_detail(self_ptr self) {
  auto s = self->state.cfg.cluster_log->status();
  if (s.leader_id == 0 || s.leader_id == s.id)
    return "no leader is known yet; retry shortly";
  return "the leader is member " + std::to_string(s.leader_id) + " at "
         + client_address(self, s.leader_id);
}

void refuse_now(self_ptr self, answer_to* rp,
                pb::RefusalCode code, const std::string& detail) {
  ++self->state.refused;
  ++self->state.refusals[refusal_name(code)];
  if (rp)
    rp->refuse(code, detail);
}

/// Releases, oldest first, every drain whose entry committed: its events
/// to the subscribers, then its answers.
void release(self_ptr self) {
  auto& st = self->state;
  while (!st.inflight.empty() && st.inflight.front().done) {
    auto& f = st.inflight.front();
    if (f.events.events_size() > 0) {
      published(self, f.events);
      auto batch = share_events(f.events);
      for (auto& s : st.subscribers)
        self->send(s, events_atom::value, batch);
    }
    deliver_answers(f.waiting);
    if (st.lead)
      let_go_ended(self, f.seq,
                   st.lead->pool().config().session_id_retention_ms);
    st.inflight.pop_front();
  }
}

/// The term this member led is over: nothing speculative survives it.
void end_term(self_ptr self, const std::string& why) {
  auto& st = self->state;
  if (!st.lead)
    return;
  log("supervisor")->warn("no longer leading (term {}): {}", st.lead_term,
                          why);
  auto detail = "leadership lost (" + why
                + "); the outcome is unknown: retry, an accepted session id "
                  "is refused as duplicate_session";
  for (auto& f : st.inflight)
    for (auto& [rp, refused] : f.waiting)
      rp.refuse(pb::REFUSAL_NOT_LEADER, detail);
  for (auto& [rp, refused] : st.waiting)
    rp.refuse(pb::REFUSAL_NOT_LEADER, detail);
  st.inflight.clear();
  st.waiting.clear();
  st.events.Clear();
  // Entries still in flight may commit under the next leader: their
  // records reach the archive as the replica applies them.
  if (!st.ended_ahead.empty() && !st.let_go_since)
    st.let_go_since = st.last_now;
  st.ended_ahead.clear();
  st.lead.reset();
  st.lead_term = 0;
  for (auto& s : st.subscribers)
    self->send(s, reset_atom::value);
}

void flush_cluster(self_ptr self);

void apply_cluster(self_ptr self, pb::Command& cmd,
                   answer_to* rp) {
  auto& st = self->state;
  if (!st.lead) {
    refuse_now(self, rp, pb::REFUSAL_NOT_LEADER, not_leader_detail(self));
    return;
  }
  auto t = now(self);
  auto r = shed(self, cmd);
  if (!r.refused && cmd.has_submit_session())
    r = archived_duplicate(self, st.lead->pool(), cmd, t);
  if (!r.refused)
    r = st.lead->apply(cmd, t);
  // An answer waits behind every drain not yet released, refusals too.
  bool idle = !st.lead->has_pending() && st.inflight.empty()
              && st.waiting.empty();
  if (answered_unchanged(self, cmd, r, rp, idle))
    return;
  ++st.applied;
  note_grants(self, st.lead->pool(), r, t);
  // Ended sessions are archived by every replica when the entry commits.
  for (auto& a : r.archived)
    st.ended_ahead.push_back({a.id(), t, st.next_seq});
  hold_for_commit(self, r, rp);
  if (st.cfg.max_batch_commands > 0
      && st.lead->pending() >= st.cfg.max_batch_commands)
    flush_part(self, flush_cluster);
}

/// One mailbox drain: one log entry, proposed; its answers and events wait
/// for the commit.
void flush_cluster(self_ptr self) {
  auto& st = self->state;
  st.flush_scheduled = false;
  if (!st.lead || (!st.lead->has_pending() && st.waiting.empty()))
    return;
  auto& f = st.inflight.emplace_back();
  f.seq = st.next_seq++;
  f.waiting = std::move(st.waiting);
  st.waiting.clear();
  f.events.Swap(&st.events);
  f.events.set_now(st.last_now);
  if (!st.lead->has_pending()) {
    f.done = true;  // only answers that had to keep their place
    release(self);
    return;
  }
  ++st.batches;
  st.batch_commands.add(static_cast<double>(st.lead->pending()));
  f.proposed = std::chrono::steady_clock::now();
  auto me = caf::actor_cast<caf::actor>(self);
  auto term = st.lead_term;
  auto seq = f.seq;
  st.cfg.cluster_log->propose(
    st.lead->take_batch(), [me, term, seq](propose_status s, uint64_t) {
      caf::anon_send(me, committed_atom::value, term, seq,
                     static_cast<int32_t>(s));
    });
}

void on_committed(self_ptr self, uint64_t term, uint64_t seq,
                  int32_t status) {
  auto& st = self->state;
  if (!st.lead || term != st.lead_term)
    return;  // that term's answers were already refused
  auto s = static_cast<propose_status>(status);
  if (s != propose_status::committed) {
    end_term(self, std::string{"an entry was not committed: "} + to_string(s));
    return;
  }
  for (auto& f : st.inflight)
    if (f.seq == seq) {
      f.done = true;
      st.commit_ms.add(std::chrono::duration<double, std::milli>(
                         std::chrono::steady_clock::now() - f.proposed)
                         .count());
    }
  release(self);
}

void on_lead(self_ptr self, uint64_t term) {
  auto& st = self->state;
  if (st.lead && st.lead_term == term)
    return;
  end_term(self, "a new term began");
  auto snap = st.cfg.replica->with([](replica& r) { return r.snapshot(); });
  if (snap.last_term() > term)
    return;  // a later term has committed meanwhile: not ours to lead
  st.lead.emplace(snap, term);
  st.lead_term = term;
  ++st.terms_led;
  if (st.cfg.rotation_interval.count() > 0)
    self->delayed_send(self, st.cfg.rotation_interval, rotate_atom::value,
                       term);
  for (auto& l : st.term_listeners)
    self->send(l, lead_atom::value, term);
  st.last_now = std::max(st.last_now, snap.last_now());
  log("supervisor")->info("leading term {} from entry {} ({} nodes, {} "
                          "sessions)",
                          term, snap.last_index(), snap.nodes_size(),
                          snap.sessions_size());
  // Liveness, tests and tasks in flight were the previous leader's soft
  // state: every live node has heartbeat_timeout to reach this leader and
  // keeps its state if it does (see TakeOver); only the silent are lost.
  if (snap.last_index() > 0) {
    pb::Command take;
    take.mutable_take_over()->set_term(term);
    apply(self, take, nullptr);
  }
  if (to_json(st.lead->pool().config()) != to_json(st.cfg.pool)) {
    pb::Command conf;
    conf.mutable_configure()->set_params_json(to_json(st.cfg.pool));
    apply(self, conf, nullptr);
  }
}

/// Scheduled rotation: hands leadership of `term` to the member after
/// `after` in id order (wrapping). When every other member was tried, this
/// one keeps leading for another window.
void rotate_after(self_ptr self, uint64_t term, uint64_t after) {
  auto& st = self->state;
  auto me = st.cfg.cluster_log->status().id;
  auto ms = voter_ids(self);
  uint64_t next = 0;
  if (auto i = std::upper_bound(ms.begin(), ms.end(), after); i != ms.end())
    next = *i;
  else if (!ms.empty())
    next = ms.front();
  if (next == 0 || next == me) {
    log("supervisor")->warn("scheduled rotation: no other member took "
                            "leadership; leading term {} for another {} ms",
                            term, st.cfg.rotation_interval.count());
    self->delayed_send(self, st.cfg.rotation_interval, rotate_atom::value,
                       term);
    return;
  }
  st.cfg.cluster_log->transfer(
    next, [me = caf::actor{self}, term, next](std::string error) {
      caf::anon_send(me, rotate_atom::value, term, next, std::move(error));
    });
}

/// The pool as this member knows it: the leader's (speculative), or the
/// committed replica's.
template <class F>
auto with_pool(self_ptr self, F&& f) {
  auto& st = self->state;
  if (!st.cfg.cluster_log)
    return f(st.pool);
  if (st.lead)
    return f(st.lead->pool());
  return st.cfg.replica->with([&](replica& r) { return f(r.pool()); });
}

caf::behavior cluster_supervisor(self_ptr self);
caf::behavior handlers(self_ptr self);

caf::behavior supervisor(self_ptr self, supervisor_config cfg) {
  auto& st = self->state;
  st.cfg = std::move(cfg);
  st.pool = pool_state{};  // the stored history sets its own parameters
  st.pool.set_kept_copy_from(st.cfg.kept_copy_from);
  if (st.cfg.cluster_log)
    return cluster_supervisor(self);
  recovered info;
  if (auto s = recover(*st.cfg.storage, st.pool, info); !s.ok()) {
    log("supervisor")->critical("cannot load stored state: {}", s.error);
    self->quit(caf::make_error(caf::sec::runtime_error, s.error));
    return {};
  }
  if (st.cfg.async_snapshots)
    st.snapshots = std::make_unique<snapshot_writer>(st.cfg.storage);
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
  return handlers(self);
}

caf::behavior cluster_supervisor(self_ptr self) {
  auto& st = self->state;
  // Role changes arrive on the log's thread; they become messages here.
  // The relay holds only the address: it must not keep this actor alive.
  auto addr = self->address();
  st.cfg.roles->listen([addr](const log_status& s) {
    auto me = caf::actor_cast<caf::actor>(addr);
    if (!me)
      return;
    if (s.ready)
      caf::anon_send(me, lead_atom::value, s.term);
    else
      caf::anon_send(me, follow_atom::value, s.term);
  });
  self->send(self, tick_atom::value);
  return handlers(self);
}

caf::behavior handlers(self_ptr self) {
  return {
    // A command, built by an actor of this process (local.hpp).
    [=](cmd_atom, const local_command& cmd) -> caf::result<void> {
      answer_to a{self->make_response_promise()};
      command(self, cmd, a);
      return a.rp;
    },
    // The same sent with a ticket: answered by (answer_atom, ticket, code,
    // detail), code REFUSAL_NONE for accepted.
    [=](cmd_atom, const local_command& cmd, uint64_t ticket) {
      answer_to a{self->make_response_promise(), ticket};
      command(self, cmd, a);
    },
    [=](tick_atom) {
      auto& st = self->state;
      // A snapshot put off for a busy writer, in a pool gone quiet: taken
      // here, of what is durable, once the writer is done.
      if (st.snapshot_waits_for_writer && !st.cfg.cluster_log
          && st.pending.empty())
        snapshot_if_due(self, st.next_index - 1);
      pb::Command tick;
      tick.mutable_tick();
      if (!self->state.cfg.cluster_log || self->state.lead)
        apply(self, tick, nullptr);
      self->delayed_send(self,
                         std::chrono::milliseconds(
                           self->state.cfg.pool.tick_interval_ms),
                         tick_atom::value);
    },
    [=](flush_atom) {
      if (self->state.cfg.cluster_log)
        flush_cluster(self);
      else
        flush(self);
    },
    [=](committed_atom, uint64_t term, uint64_t seq, int32_t status) {
      on_committed(self, term, seq, status);
    },
    [=](lead_atom, uint64_t term) { on_lead(self, term); },
    [=](cluster_atom, caf::actor listener) {
      auto& st = self->state;
      if (st.lead)
        self->send(listener, lead_atom::value, st.lead_term);
      st.term_listeners.push_back(std::move(listener));
    },
    [=](follow_atom, uint64_t term) {
      end_term(self, "deposed in term " + std::to_string(term));
    },
    // An operator hands leadership to member `to` (0: the most up to date
    // voter): answers once libraft's transfer ended, with who leads then.
    [=](transfer_atom, uint64_t to) -> caf::result<std::string> {
      auto& st = self->state;
      if (!st.cfg.cluster_log)
        return make_refusal(pb::REFUSAL_NOT_SUPPORTED, "a single oracle has no one to "
                                             "hand leadership to");
      auto s = st.cfg.cluster_log->status();
      if (s.role != log_role::leader)
        return make_refusal(pb::REFUSAL_NOT_LEADER, not_leader_detail(self));
      auto id = st.next_transfer++;
      auto rp = self->make_response_promise();
      st.transfers.emplace(id, rp);
      st.cfg.cluster_log->transfer(
        to, [me = caf::actor{self}, id](std::string error) {
          caf::anon_send(me, transfer_atom::value, id, std::move(error));
        });
      return rp;
    },
    // An operator changes the membership ("add" member `id` at `address`,
    // as member_config_address writes it; or "remove" it): answers once the
    // change is done, or a refusal. A leader asked to remove itself hands
    // leadership over first, then answers not_leader naming the new leader
    // (the API sends the operator there to ask again).
    [=](member_atom, const std::string& op, uint64_t id,
        const std::string& address) -> caf::result<std::string> {
      auto& st = self->state;
      if (!st.cfg.cluster_log)
        return make_refusal(pb::REFUSAL_NOT_SUPPORTED, "a single oracle has no members "
                                             "to change");
      auto s = st.cfg.cluster_log->status();
      if (s.role != log_role::leader)
        return make_refusal(pb::REFUSAL_NOT_LEADER, not_leader_detail(self));
      if (op != "add" && op != "remove")
        return make_refusal(pb::REFUSAL_BAD_FIELD, "op: add or remove");
      auto req = st.next_transfer++;
      auto rp = self->make_response_promise();
      auto me = caf::actor{self};
      auto answer = [me, req](std::string error) {
        caf::anon_send(me, member_atom::value, req, std::move(error));
      };
      if (op == "remove" && id == s.id) {
        bool others = false;
        for (auto& m : s.members)
          others |= m.id != id && m.role == log_member::kind::voter;
        if (!others) {
          // Through the promise: once made, it holds the request, and a
          // value returned instead would reach nobody.
          rp.deliver(make_refusal(pb::REFUSAL_MEMBERSHIP_REFUSED, "member "
                                    + std::to_string(id) + " is the last voter"));
          return rp;
        }
        st.member_changes[req] = {rp, true};
        st.cfg.cluster_log->transfer(0, answer);
        return rp;
      }
      st.member_changes[req] = {rp, false};
      if (op == "add")
        st.cfg.cluster_log->add_member(id, address, answer);
      else
        st.cfg.cluster_log->remove_member(id, answer);
      return rp;
    },
    [=](member_atom, uint64_t req, const std::string& error) {
      auto& st = self->state;
      auto i = st.member_changes.find(req);
      if (i == st.member_changes.end())
        return;
      if (!error.empty() || !i->second.handing_over) {
        auto rp = i->second.rp;
        st.member_changes.erase(i);
        if (!error.empty())
          return rp.deliver(make_refusal(pb::REFUSAL_MEMBERSHIP_REFUSED, error));
        auto s = st.cfg.cluster_log->status();
        nlohmann::json j;
        j["members"] = nlohmann::json::array();
        for (auto& m : s.members)
          j["members"].push_back({{"id", m.id}, {"role", to_string(m.role)}});
        return rp.deliver(j.dump());
      }
      // Handed over: once the new leader is heard from, the operator is
      // sent there.
      self->send(self, member_atom::value, req, int32_t{0});
    },
    [=](member_atom, uint64_t req, int32_t tries) {
      auto& st = self->state;
      auto i = st.member_changes.find(req);
      if (i == st.member_changes.end())
        return;
      auto s = st.cfg.cluster_log->status();
      if ((s.leader_id == 0 || s.leader_id == s.id) && tries < 200) {
        self->delayed_send(self, std::chrono::milliseconds(10), member_atom::value,
                           req, tries + 1);
        return;
      }
      auto rp = i->second.rp;
      st.member_changes.erase(i);
      if (s.leader_id == s.id)
        return rp.deliver(make_refusal(pb::REFUSAL_MEMBERSHIP_REFUSED,
                                       "no other member took leadership: member "
                                         + std::to_string(s.id) + " still leads"));
      rp.deliver(make_refusal(pb::REFUSAL_NOT_LEADER, not_leader_detail(self)));
    },
    // Scheduled rotation: the window of the term this member leads ended.
    [=](rotate_atom, uint64_t term) {
      auto& st = self->state;
      if (!st.lead || st.lead_term != term)
        return;  // no longer leading that term: nothing to hand over
      rotate_after(self, term, st.cfg.cluster_log->status().id);
    },
    [=](rotate_atom, uint64_t term, uint64_t to, const std::string& error) {
      auto& st = self->state;
      if (error.empty()) {
        ++st.rotations;
        log("supervisor")->info("scheduled rotation: handed leadership of "
                                "term {} to member {}", term, to);
        return;
      }
      if (!st.lead || st.lead_term != term)
        return;
      log("supervisor")->warn("scheduled rotation to member {} failed: {}", to,
                              error);
      rotate_after(self, term, to);
    },
    [=](transfer_atom, uint64_t id, const std::string& error) {
      auto& st = self->state;
      auto i = st.transfers.find(id);
      if (i == st.transfers.end())
        return;
      if (!error.empty()) {
        auto rp = i->second;
        st.transfers.erase(i);
        rp.deliver(make_refusal(pb::REFUSAL_TRANSFER_FAILED, error));
        return;
      }
      // The old leader has stepped down; who won is known once the new
      // leader is heard from (within a heartbeat): answer then.
      self->send(self, transfer_atom::value, id, int32_t{0});
    },
    [=](transfer_atom, uint64_t id, int32_t tries) {
      auto& st = self->state;
      auto i = st.transfers.find(id);
      if (i == st.transfers.end())
        return;
      auto s = st.cfg.cluster_log->status();
      // Until another member is heard from as leader, the view may still
      // name none, or this one.
      if ((s.leader_id == 0 || s.leader_id == s.id) && tries < 200) {
        self->delayed_send(self, std::chrono::milliseconds(10),
                           transfer_atom::value, id, tries + 1);
        return;
      }
      auto rp = i->second;
      st.transfers.erase(i);
      nlohmann::json j;
      // Still unknown after 2 s: 0.
      j["leader_id"] = s.leader_id == s.id ? 0 : s.leader_id;
      j["term"] = s.term;
      rp.deliver(j.dump());
    },
    [=](cluster_atom) -> std::string {
      nlohmann::json j = nlohmann::json::object();
      auto& st = self->state;
      if (!st.cfg.cluster_log)
        return j.dump();
      auto s = st.cfg.cluster_log->status();
      nlohmann::json members = nlohmann::json::array();
      auto add = [&](uint64_t id, const char* role, std::optional<bool> reachable) {
        auto info = member_info(self, id, s);
        nlohmann::json m{{"id", id}, {"address", info.address}, {"role", role}};
        if (!info.http.empty())
          m["http"] = info.http;
        if (!info.raft.empty())
          m["raft"] = info.raft;
        if (reachable)
          m["reachable"] = *reachable;
        members.push_back(std::move(m));
      };
      if (s.members.empty())
        for (auto& [id, addr] : st.cfg.member_addresses)
          add(id, "voter", std::nullopt);
      for (auto& x : s.members)
        add(x.id, to_string(x.role),
            s.role == log_role::leader ? std::optional<bool>{x.reachable} : std::nullopt);
      j["members"] = std::move(members);
      if (!s.changing.empty())
        j["changing"] = s.changing;
      if (!s.write_error.empty())
        j["write_error"] = s.write_error;
      if (!s.restore_error.empty())
        j["restore_error"] = s.restore_error;
      if (!s.apply_error.empty())
        j["apply_error"] = s.apply_error;
      j["id"] = s.id;
      j["role"] = to_string(s.role);
      j["ready"] = s.ready;
      j["term"] = s.term;
      j["leader_id"] = s.leader_id;
      j["leader_address"] = s.leader_address;  // its Raft listener
      {
        auto leader = member_info(self, s.leader_id, s);
        j["leader_client_address"] = leader.address;
        if (!leader.http.empty())
          j["leader_http_address"] = leader.http;
      }
      j["commit_index"] = s.commit_index;
      j["applied_index"] = s.applied_index;
      j["last_index"] = s.last_index;
      j["refused_peers"] = s.refused_peers;
      j["raft_guard"] = nlohmann::json::object();
      s.guard.each([&](const char* name, uint64_t n) { j["raft_guard"][name] = n; });
      j["terms_led"] = st.terms_led;
      j["rotations"] = st.rotations;
      j["rotation_interval_ms"] = st.cfg.rotation_interval.count();
      uint64_t archived = 0;
      st.cfg.replica->with([&](replica& r) {
        j["pool_index"] = r.last_index();
        j["batches_refused"] = r.batches_refused();
        // Refused when restored, or by the check before raft saw them.
        j["snapshots_refused"] = r.restores_refused() + s.snapshots_refused;
        j["violations"] = r.violations().size();
        archived = r.archived_index();
        return 0;
      });
      // How far this member's archive holds every ended session (below a
      // gap a snapshot install left, until the backfill copied it).
      j["archive_complete_through"] =
        archive_complete_through(*st.cfg.storage, archived);
      return j.dump();
    },
    [=](subscribe_atom, caf::actor who) {
      self->state.subscribers.push_back(std::move(who));
    },
    [=](subscribe_atom, caf::actor who, bool on) {
      auto& subs = self->state.subscribers;
      subs.erase(std::remove(subs.begin(), subs.end(), who), subs.end());
      if (on)
        subs.push_back(std::move(who));
    },
    [=](state_atom) -> std::string {
      if (self->state.cfg.cluster_log)  // what committed, on every member
        return self->state.cfg.replica->with(
          [](replica& r) { return r.snapshot_bytes(); });
      auto snap = self->state.pool.snapshot();
      snap.set_last_index(self->state.next_index - 1);
      return snap.SerializeAsString();
    },
    // A page of the live state (the HTTP API's lists): what it holds is
    // what it costs, never a copy of the pool.
    [=](state_atom, const std::string& query) -> std::string {
      pb::StateQuery q;
      pb::StatePage p;
      if (!q.ParseFromString(query)) {
        p.set_error("query does not decode");
        return p.SerializeAsString();
      }
      if (self->state.cfg.cluster_log)  // what committed, on every member
        p = self->state.cfg.replica->with(
          [&](replica& r) { return r.read(q); });
      else {
        p = self->state.pool.read(q);
        p.set_index(self->state.next_index - 1);
      }
      return p.SerializeAsString();
    },
    [=](archive_atom, const std::string& bytes) -> std::string {
      pb::ArchiveQuery q;
      pb::ArchiveAnswer a;
      if (!q.ParseFromString(bytes)) {
        a.set_error("query does not decode");
        return a.SerializeAsString();
      }
      // How far the archive holds every ended session, read before the
      // scan: what it vouches for is then in the store when the scan reads
      // it (read after, an entry applied meanwhile would be vouched for
      // without its records, and a backfill would forget its gap).
      auto& st = self->state;
      if (st.cfg.cluster_log)
        a.set_complete_through(archive_complete_through(
          *st.cfg.storage,
          st.cfg.replica->with([](replica& r) { return r.archived_index(); })));
      else  // written in the batch of the entry that ended each session
        a.set_complete_through(st.next_index - 1 - st.pending.size());
      // Bounded: a query costs the supervisor at most `limit` reads.
      if (auto err = with_pool(self,
                               [&](const pool_state& p) {
                                 return query_archive(*self->state.cfg.storage,
                                                      p, q, a);
                               });
          !err.empty())
        a.set_error(err);
      // A session this drain ended is in neither the pool nor the store
      // yet: its record waits for the group commit (a cluster member's
      // replica writes its records before anyone can look at its pool).
      if (!q.id().empty() && a.sessions_size() == 0 && a.error().empty()
          && !st.cfg.cluster_log)
        for (auto& r : st.archived)
          if (r.id() == q.id()) {
            *a.add_sessions() = r;
            break;
          }
      return a.SerializeAsString();
    },
    // An operator asks for a snapshot now (single oracle): of the durable
    // state at once, or, with a group commit under way, at its end (or, if
    // the writer is still on the one before, as soon as it is done).
    // Answers the index the snapshot covers at least.
    [=](snapshot_atom) -> caf::result<uint64_t> {
      auto& st = self->state;
      if (st.cfg.cluster_log)
        return make_refusal(pb::REFUSAL_NOT_SUPPORTED,
                            "a cluster member snapshots its log by itself "
                            "([raft] snapshot_threshold)");
      if (!st.pending.empty()) {
        st.since_snapshot = std::numeric_limits<uint64_t>::max() / 2;
        return st.pending.back().index();
      }
      if (auto s = snapshot_now(self, st.next_index - 1); !s.ok())
        return make_refusal(pb::REFUSAL_SNAPSHOT_FAILED, s.error);
      return st.next_index - 1;
    },
    [=](stats_atom) -> std::string {
      auto& s = self->state;
      nlohmann::json j;
      j["applied"] = s.applied;
      // Whether it takes commands: a cluster member only while it leads
      // (its term begun), a single oracle always.
      j["leading"] = !s.cfg.cluster_log || s.lead.has_value();
      // What waits behind this request: under a load the pool does not
      // keep up with, the backlog that slows every answer.
      j["mailbox"] = self->mailbox().size();
      j["refused"] = s.refused;
      j["batches"] = s.batches;
      j["records_copied_ahead"] = s.copied_ahead;
      j["last_index"] = s.next_index - 1;
      j["refusals"] = s.refusals;
      j["snapshots_written"] = s.snapshots ? s.snapshots->written() : 0;
      j["snapshots_deferred"] = s.snapshots_deferred;
      if (s.cfg.storage) {
        j["store_memory_bytes"] = s.cfg.storage->memory_bytes();
        auto a = s.cfg.storage->activity();
        j["store"] = {{"log_flushes", a.log_flushes},
                      {"snapshot_flushes", a.snapshot_flushes},
                      {"compactions", a.compactions},
                      {"compaction_bytes_written", a.compaction_bytes_written}};
      }
      j["reservations"] = s.reservations;
      j["releases"] = s.releases;
      j["archive_gap_read_errors"] = s.gap_read_errors;
      j["histograms"]["grant_latency_ms"] = s.grant_ms.to_json();
      j["histograms"]["group_commit_commands"] = s.batch_commands.to_json();
      j["histograms"]["commit_latency_ms"] = s.commit_ms.to_json();
      j["histograms"]["snapshot_copy_ms"] = s.snapshot_copy_ms.to_json();
      j["histograms"]["snapshot_live_sessions"] = s.snapshot_live_sessions.to_json();
      // What memory and snapshots hold: live records, and the window.
      // What committed (a cluster member: its replica; a single oracle: its
      // pool), counted in O(states), for status reads.
      auto counts = [&](const pool_state& p, uint64_t index) {
        nlohmann::json c;
        nlohmann::json nodes = nlohmann::json::object();
        auto& by = p.count_by_state();
        for (int k = pb::REGISTERED; k <= pb::LOST; ++k)
          nodes[std::to_string(k)] = by[k];
        auto sc = p.session_counts();
        c["nodes"] = nodes;
        c["queued"] = sc[pb::QUEUED];
        c["active"] = sc[pb::ACTIVE];
        c["completed"] = sc[pb::COMPLETED];
        c["failed"] = sc[pb::FAILED];
        c["accepted"] = p.sessions_accepted();
        c["tests_passed"] = p.tests_passed();
        c["tests_failed"] = p.tests_failed();
        c["tests_in_flight"] = p.tests_in_flight();
        c["tests_waiting"] = p.tests_waiting();
        c["index"] = index;
        return c;
      };
      if (s.cfg.cluster_log)
        j["committed"] = s.cfg.replica->with(
          [&](replica& r) { return counts(r.pool(), r.last_index()); });
      else
        j["committed"] = counts(s.pool, s.next_index - 1);
      with_pool(self, [&](const pool_state& p) {
        j["live_nodes"] = p.nodes().size();
        j["live_sessions"] = p.sessions().size();
        j["sessions_accepted"] = p.sessions_accepted();
        j["recent_ids"] = p.recent_ids().size();
        j["recent_ids_bytes"] = p.recent_ids().memory_bytes();
        return 0;
      });
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
