#include "pool_state.hpp"
#include "record_checks.hpp"
#include "touched.hpp"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/wire_format_lite.h>

#include <cmath>
#include <limits>

#include "random.hpp"

#include <algorithm>
#include <atomic>
#include <stdexcept>

namespace nodepool {

namespace {

template <class T>
void push(apply_result& out, T&& fill) {
  out.events.emplace_back();
  fill(out.events.back());
}

} // namespace

std::string to_string(pb::NodeState s) {
  switch (s) {
    case pb::REGISTERED: return "registered";
    case pb::TESTING: return "testing";
    case pb::EPHEMERAL: return "ephemeral";
    case pb::RESERVED: return "reserved";
    case pb::REVALIDATING: return "revalidating";
    case pb::QUARANTINED: return "quarantined";
    case pb::RETIRED: return "retired";
    case pb::LOST: return "lost";
    default: return "unspecified";
  }
}

std::string to_string(pb::SessionState s) {
  switch (s) {
    case pb::QUEUED: return "queued";
    case pb::ACTIVE: return "active";
    case pb::COMPLETED: return "completed";
    case pb::FAILED: return "failed";
    default: return "unspecified";
  }
}

pool_state::pool_state(params p)
  : params_(std::move(p)), latency_bounds_(test_latency_bounds(params_)) {
  selector_ = make_selection(params_.selection);
  if (!selector_)
    throw std::invalid_argument("unknown selection strategy: "
                                + params_.selection);
  rng_state_ = params_.seed;
}

const pb::NodeRecord* pool_state::node(const std::string& id) const {
  return live_node(id);
}

const pb::SessionRecord* pool_state::session(const std::string& id) const {
  return live_session(id);
}

std::array<uint64_t, 5> pool_state::session_counts() const {
  std::array<uint64_t, 5> xs{};
  xs[pb::QUEUED] = queued_;
  xs[pb::ACTIVE] = active_;
  xs[pb::COMPLETED] = sessions_completed_;
  xs[pb::FAILED] = sessions_failed_;
  return xs;
}

namespace {

/// Order of (rank, key) pairs: negative, zero or positive.
int compare_ranked(const node_rank& ra, uint64_t ka, const node_rank& rb,
                   uint64_t kb) {
  if (ra.primary != rb.primary)
    return ra.primary < rb.primary ? -1 : 1;
  if (ra.secondary != rb.secondary)
    return ra.secondary < rb.secondary ? -1 : 1;
  if (ka != kb)
    return ka < kb ? -1 : 1;
  return 0;
}

} // namespace

bool pool_state::pool_order::operator()(const pool_entry& a,
                                       const pool_entry& b) const {
  if (auto c = compare_ranked(a.rank, a.key, b.rank, b.key))
    return c < 0;
  return a.node->id() < b.node->id();
}

bool pool_state::pool_order::operator()(const pool_entry& a,
                                       const pool_probe& b) const {
  return compare_ranked(a.rank, a.key, b.rank, b.key) < 0;
}

bool pool_state::pool_order::operator()(const pool_probe& a,
                                       const pool_entry& b) const {
  return compare_ranked(a.rank, a.key, b.rank, b.key) < 0;
}

pool_state::pool_entry pool_state::entry_of(const pb::NodeRecord& n) const {
  // The index needs a strict weak order: a NaN (which no command produces,
  // but a raw restore of foreign bytes may hold) ranks last.
  auto r = selector_->rank(n);
  for (auto* x : {&r.primary, &r.secondary})
    if (std::isnan(*x))
      *x = std::numeric_limits<double>::infinity();
  return pool_entry{r, n.pool_key(), &n};
}

void pool_state::rebuild_pool() {
  pool_.clear();
  pool_by_model_.clear();
  for (auto& [id, n] : nodes_)
    if (n.state() == pb::EPHEMERAL)
      pool_add(n);
}

void pool_state::pool_add(const pb::NodeRecord& n) {
  auto e = entry_of(n);
  pool_.insert(e);
  for (auto& m : n.models())  // a name listed twice goes in once
    pool_by_model_[m].insert(e);
}

void pool_state::pool_remove(const pb::NodeRecord& n) {
  auto e = entry_of(n);
  pool_.erase(e);
  for (auto& m : n.models()) {
    auto at = pool_by_model_.find(m);
    if (at == pool_by_model_.end())
      continue;  // listed twice: gone with the first
    at->second.erase(e);
    if (at->second.empty())
      pool_by_model_.erase(at);
  }
}

const pool_state::pool_index&
pool_state::pool_for(const std::string& model) const {
  if (model.empty())
    return pool_;
  static const pool_index none;
  auto at = pool_by_model_.find(model);
  return at == pool_by_model_.end() ? none : at->second;
}

uint64_t pool_state::id_prefix(const std::string& id) {
  // Big-endian, shorter ids padded with zero bytes: two ids whose numbers
  // differ order as their bytes do (unsigned, as std::string compares).
  uint64_t p = 0;
  auto n = std::min<size_t>(id.size(), 8);
  for (size_t i = 0; i < 8; ++i)
    p = (p << 8) | (i < n ? static_cast<unsigned char>(id[i]) : 0u);
  return p;
}

uint64_t pool_state::next_random() {
  seeded_rng r{rng_state_};  // the snapshot carries the state
  auto x = r.next();
  rng_state_ = r.state();
  return x;
}

apply_result pool_state::apply(const pb::Command& cmd, int64_t now) {
  apply_result out;
  last_noted_nodes_.clear();
  last_noted_sessions_.clear();
  // Time never runs backwards inside the pool, whatever the clock did.
  if (now < last_now_)
    now = last_now_;
  switch (cmd.kind_case()) {
    case pb::Command::kRegister:
      apply_register(cmd.register_(), now, out);
      break;
    case pb::Command::kHeartbeat:
      apply_heartbeat(cmd.heartbeat(), now, out);
      break;
    case pb::Command::kTestResult:
      apply_test_result(cmd.test_result(), now, out);
      break;
    case pb::Command::kSubmitSession:
      apply_submit(cmd.submit_session(), now, out);
      break;
    case pb::Command::kTaskDone:
      apply_task_done(cmd.task_done(), now, out);
      break;
    case pb::Command::kEndSession:
      apply_end_session(cmd.end_session(), now, out);
      break;
    case pb::Command::kNodeDown:
      apply_node_down(cmd.node_down(), now, out);
      break;
    case pb::Command::kTick:
      apply_tick(now, out);
      break;
    case pb::Command::kRecover:
      apply_recover(now, out);
      break;
    case pb::Command::kTakeOver:
      apply_takeover(now, out);
      break;
    case pb::Command::kConfigure:
      apply_configure(cmd.configure(), out);
      break;
    case pb::Command::kAdminNode:
      apply_admin_node(cmd.admin_node(), now, out);
      break;
    default:
      out.refused = refusal{pb::REFUSAL_EMPTY_COMMAND, "command carries no kind"};
      return out;
  }
  if (out.refused) {
    out.events.clear();
    out.changed = false;
    flush_notes();  // nothing was changed: nothing moves
    return out;
  }
  if (!out.events.empty())
    out.changed = true;
  if (out.changed) {
    send_waiting_tests(now, out);
    try_assign(now, out);
    flush_notes();  // what the command noted is then in last_noted_*
    note_changed(cmd, out);
    // Only changed commands are logged, so only they may move the window:
    // a replay then expires the same ids at the same entries.
    recent_ids_.expire(now);
    last_now_ = now;
  }
  return out;
}

void pool_state::set_state(pb::NodeRecord& n, pb::NodeState to,
                           const std::string& why, apply_result& out) {
  auto from = n.state();
  if (from == to) {
    note_node(n);  // a field it is counted or timed by may have changed
    return;
  }
  if (from != pb::NODE_STATE_UNSPECIFIED)
    --counts_[from];
  ++counts_[to];
  if (from == pb::EPHEMERAL)
    pool_remove(n);
  if (to == pb::EPHEMERAL) {
    n.set_pool_key(next_random());
    pool_add(n);
  }
  n.set_state(to);
  n.set_state_reason(why);
  note_node(n);
  push(out, [&](pb::Event& e) {
    auto* x = e.mutable_node_state_changed();
    x->set_node_id(n.id());
    x->set_from(from);
    x->set_to(to);
    x->set_reason(why);
  });
}

void pool_state::record_outcome(pb::NodeRecord& n, bool good) {
  auto a = params_.reputation_alpha;
  n.set_reputation((1.0 - a) * n.reputation() + a * (good ? 1.0 : 0.0));
  n.add_recent(good);
  while (static_cast<uint32_t>(n.recent_size()) > params_.recent_size)
    n.mutable_recent()->erase(n.mutable_recent()->begin());
}

void pool_state::apply_heartbeat(const pb::Heartbeat& c, int64_t now,
                                 apply_result& out) {
  auto* known = known_node(c.node_id(), out);
  if (!known)
    return;
  auto& n = *known;
  if (n.state() == pb::RETIRED || n.state() == pb::LOST) {
    out.refused = refusal{pb::REFUSAL_NOT_CONNECTED, "node " + n.id() + " is "
                                             + to_string(n.state())
                                             + ": register again"};
    return;
  }
  n.set_last_heartbeat(now);
  n.set_mode(c.mode());
  note_node(n);
  out.changed = true;
}

void pool_state::apply_node_down(const pb::NodeDown& c, int64_t now,
                                 apply_result& out) {
  auto* known = known_node(c.node_id(), out);
  if (!known)
    return;
  auto& n = *known;
  if (n.state() == pb::RETIRED || n.state() == pb::LOST) {
    out.refused = refusal{pb::REFUSAL_NOT_CONNECTED, "node " + n.id() + " is already "
                                             + to_string(n.state())};
    return;
  }
  if (test_sent(n)) {
    // Nor by going away and coming back: it counts as failed, and the
    // node returns to its quarantine. (A test not sent yet is not failed:
    // the node is lost, and tested when it is back.)
    fail_test(n, "abandoned", "went away during its test", now, out);
    if (n.state() == pb::RETIRED)
      return;
  }
  lose(n, c.reason().empty() ? "node down" : c.reason(), now, out);
}

void pool_state::apply_admin_node(const pb::AdminNode& c, int64_t now,
                                  apply_result& out) {
  auto* known = known_node(c.node_id(), out);
  if (!known)
    return;
  auto& n = *known;
  if (n.state() == pb::RETIRED) {
    out.refused = refusal{pb::REFUSAL_RETIRED, "node " + n.id() + " is retired"};
    return;
  }
  auto why = c.reason().empty() ? std::string{"by an operator"} : c.reason();
  switch (c.action()) {
    case pb::DRAIN:
    case pb::UNDRAIN: {
      bool drain = c.action() == pb::DRAIN;
      if (n.drained() == drain) {
        out.refused = refusal{pb::REFUSAL_NO_CHANGE, "node " + n.id() + " is already "
                                             + (drain ? "drained" : "undrained")};
        return;
      }
      n.set_drained(drain);
      note_node(n);
      out.changed = true;
      return;
    }
    case pb::RETIRE:
      // A session that waited for it goes on without it (detach).
      take_out(n, pb::RETIRED, "retired " + why, now, out);
      return;
    default:
      out.refused = refusal{pb::REFUSAL_BAD_ACTION, "unknown admin action"};
  }
}

pb::NodeRecord* pool_state::known_node(const std::string& id,
                                       apply_result& out) {
  auto* n = live_node(id);
  if (!n)
    out.refused = refusal{pb::REFUSAL_UNKNOWN_NODE, "no node " + id};
  return n;
}

void pool_state::lose(pb::NodeRecord& n, const std::string& why, int64_t now,
                      apply_result& out) {
  take_out(n, pb::LOST, why, now, out);
}

void pool_state::take_out(pb::NodeRecord& n, pb::NodeState to,
                          const std::string& why, int64_t now,
                          apply_result& out) {
  if (n.state() == pb::RESERVED) {
    auto* s = live_session(n.session_id());
    n.clear_session_id();
    n.set_tasks_served(0);
    if (s)
      detach(*s, n.id(), now, out);
  }
  n.set_reset_at(now);
  n.set_test_id(0);
  n.set_rejoin_by(0);
  set_state(n, to, why, out);
}

void pool_state::apply_tick(int64_t now, apply_result& out) {
  // Only what is due is visited: the timers are ordered by due time. An
  // entry may be stale (the record changed earlier in this tick; timers
  // move at the end of the command), so each condition is checked again on
  // the record itself.
  std::vector<std::string> due_nodes;
  for (auto t = node_timers_.begin(); t != node_timers_.end() && t->first <= now;
       ++t)
    due_nodes.push_back(t->second->id());
  std::sort(due_nodes.begin(), due_nodes.end());  // the order acted in
  std::vector<pb::NodeRecord*> forgotten;
  for (auto& id : due_nodes) {
    auto* found = live_node(id);
    if (!found)
      continue;
    auto& n = *found;
    if (n.rejoin_by() > 0 && now >= n.rejoin_by()
        && n.state() != pb::RETIRED && n.state() != pb::LOST) {
      // Silent since the leader changed: its session, which waited for
      // it, goes on without it (detach).
      lose(n, "did not reconnect after the change of leader", now, out);
      continue;
    }
    switch (n.state()) {
      case pb::TESTING:
      case pb::REVALIDATING:
        if (test_sent(n) && now > n.test_deadline())
          fail_test(n, "", "test deadline passed", now, out);
        break;
      case pb::QUARANTINED:
        if (now >= n.quarantine_until())
          start_test(n, pb::RETEST, now, out);
        break;
      case pb::EPHEMERAL:
        if (now - n.ephemeral_at() > params_.ephemeral_window_ms)
          start_test(n, pb::RETEST, now, out);
        break;
      case pb::RESERVED:
        if (now >= node_due(n))
          release(n, "reserve_period", now, out);
        break;
      case pb::LOST:
      case pb::RETIRED:
        if (now >= node_due(n))
          forgotten.push_back(&n);
        break;
      default:
        break;
    }
  }
  for (auto* n : forgotten)  // in id order, after every other node's turn
    forget(*n, out);
  std::vector<std::string> idle, expired;
  for (auto t = session_timers_.begin();
       t != session_timers_.end() && t->first <= now; ++t) {
    auto& s = *t->second;  // a live session: ending one unschedules it
    if (s.state() == pb::ACTIVE && now - s.last_activity() > idle_limit(s))
      idle.push_back(s.id());
    else if (s.state() == pb::QUEUED
             && now - s.last_activity() > params_.queue_timeout_ms)
      expired.push_back(s.id());
  }
  std::sort(idle.begin(), idle.end());
  std::sort(expired.begin(), expired.end());
  for (auto& id : idle) {
    auto* sp = live_session(id);
    if (!sp)
      continue;
    auto& s = *sp;
    // An interactive session's tasks are its client's prompts: idle this
    // long (and as long again as a prompt sent at the last moment could
    // take: idle_limit), the client stopped asking (or is gone). It ends rather than
    // wait in the queue to take nodes again, hold them idle, and send them
    // through re-validation, again and again for as long as the pool runs.
    if (s.interactive()) {
      end_session(s, pb::COMPLETED, "idle: no prompt within idle_threshold_ms",
                  now, out);
      continue;
    }
    auto nodes = std::vector<std::string>(s.nodes().begin(), s.nodes().end());
    for (auto& nid : nodes)
      if (auto* n = live_node(nid))
        release(*n, "idle_threshold", now, out);
    if (s.state() == pb::ACTIVE)
      requeue(s, now, out);
    if (s.state() == pb::QUEUED) {
      dequeue(s);  // its place is kept; only the time it entered changes
      s.set_last_activity(now);
      enqueue(s);
    } else {
      s.set_last_activity(now);
    }
    note_session(s);
  }
  for (auto& id : expired)
    if (auto* s = live_session(id))
      end_session(*s, pb::FAILED,
                  "no suitable nodes within queue_timeout", now, out);
}

void pool_state::apply_recover(int64_t now, apply_result& out) {
  // Miners must reconnect to a restarted oracle anyway; marking every live
  // node LOST guarantees that whatever was reserved or mid-test is tested
  // again before it serves. A quarantine survives: see apply_register.
  for (auto& [id, n] : nodes_)
    if (n.state() != pb::RETIRED && n.state() != pb::LOST)
      lose(n, "oracle restart", now, out);
  std::vector<pb::SessionRecord*> active;  // requeued in the order of ids
  for (auto& [id, s] : sessions_)
    if (s.state() == pb::ACTIVE)
      active.push_back(&s);
  std::sort(active.begin(), active.end(),
            [](auto* a, auto* b) { return a->id() < b->id(); });
  for (auto* s : active)
    requeue(*s, now, out);
  // No node could serve a queued session while the oracle was down, and
  // every node has to come back first: queue timeouts start again here.
  for (auto& [id, s] : sessions_)
    if (s.state() == pb::QUEUED)
      s.set_last_activity(now);
  rebuild_indexes();  // rare: once per oracle start
  out.changed = true;
}

void pool_state::apply_takeover(int64_t now, apply_result& out) {
  // Unlike Recover, nothing is retested for the change itself: each live
  // node has heartbeat_timeout to reach the new leader (apply_register
  // then keeps its state), and only the silent are lost (apply_tick).
  auto by = now + params_.heartbeat_timeout_ms;
  for (auto& [id, n] : nodes_) {
    if (n.state() == pb::RETIRED || n.state() == pb::LOST)
      continue;
    n.set_rejoin_by(by);
    // A test in flight went out from the old leader: it is sent again when
    // the node is back, with a deadline from then. One not sent yet leaves
    // the queue until then (test_waiting), and is asked for again.
    if (test_sent(n))
      n.set_test_deadline(std::max(n.test_deadline(),
                                   by + params_.test_deadline_ms));
  }
  // Active sessions wait for their nodes (maybe_resume); their idle time,
  // and the queue's timeouts, start again: nobody could serve meanwhile.
  for (auto& [sid, s] : sessions_)
    s.set_last_activity(now);
  rebuild_indexes();  // rare: once per change of leader
  out.changed = true;
}

void pool_state::maybe_resume(const pb::SessionRecord& s, apply_result& out) {
  if (s.state() != pb::ACTIVE || s.nodes_size() == 0)
    return;
  for (auto& nid : s.nodes()) {
    auto* n = live_node(nid);
    if (!n || n->rejoin_by() > 0)
      return;
  }
  push(out, [&](pb::Event& e) {
    auto* x = e.mutable_session_started();
    x->set_session_id(s.id());
    *x->mutable_nodes() = s.nodes();
    x->set_redundancy(s.redundancy());
    x->set_max_tasks(s.max_tasks());
    x->set_tasks_done(s.tasks_done());
    x->set_model(s.model());
    x->set_interactive(s.interactive());
  });
}

void pool_state::apply_configure(const pb::Configure& c, apply_result& out) {
  std::string err;
  auto p = params_from_json(c.params_json(), params_, err);
  if (err.empty())
    err = p.validate();
  auto sel = err.empty() ? make_selection(p.selection) : nullptr;
  if (!err.empty() || !sel) {
    out.refused = refusal{pb::REFUSAL_BAD_PARAMS, err.empty() ? "bad selection" : err};
    return;
  }
  // `seed` seeds the pool's random choices: a new one restarts the
  // generator (the Configure is in the log, so a replay does the same).
  if (p.seed != params_.seed)
    rng_state_ = p.seed;
  bool reorder = p.selection != params_.selection;
  params_ = std::move(p);
  latency_bounds_ = test_latency_bounds(params_);
  selector_ = std::move(sel);
  if (reorder)
    rebuild_pool();
  rebuild_indexes();  // deadlines follow the parameters; rare
  out.changed = true;
}

id_window::image recent_ids_image(const pb::Snapshot& snap) {
  id_window::image img;
  img.fingerprints.assign(snap.recent_ids().begin(), snap.recent_ids().end());
  img.expiry_seconds.assign(snap.recent_expiry_seconds().begin(),
                            snap.recent_expiry_seconds().end());
  img.expiry_counts.assign(snap.recent_expiry_counts().begin(),
                           snap.recent_expiry_counts().end());
  return img;
}

struct pool_state::record_copies {
  std::map<std::string, pb::NodeRecord> nodes;
  std::map<std::string, pb::SessionRecord> sessions;
  /// Each live node's copy in `nodes`, found without the map's string
  /// comparisons. Keyed by the pool's own records, which never move (not
  /// even when the pool is moved); a restore drops the whole copy, and a
  /// copy of this struct starts the index again.
  std::unordered_map<const pb::NodeRecord*, pb::NodeRecord*> copy_of;

  record_copies() = default;
  record_copies(const record_copies& o) : nodes(o.nodes), sessions(o.sessions) {}
  record_copies& operator=(const record_copies&) = delete;
};

pb::Snapshot pool_state::snapshot_scalars() const {
  pb::Snapshot snap;
  snap.set_params_json(to_json(params_));
  snap.set_last_now(last_now_);
  snap.set_next_test_id(next_test_id_);
  snap.set_next_session_seq(next_session_seq_);
  snap.set_rng_state(rng_state_);
  snap.set_tests_passed(tests_passed_);
  snap.set_tests_failed(tests_failed_);
  snap.set_sessions_completed(sessions_completed_);
  snap.set_sessions_requeued(sessions_requeued_);
  snap.set_sessions_failed(sessions_failed_);
  return snap;
}

const std::set<pool_state::session_key, pool_state::session_id_less>&
pool_state::ordered_sessions() const {
  for (auto* s : fresh_sessions_)
    session_order_.insert(key_of(*s));
  order_steps_ += fresh_sessions_.size();
  fresh_sessions_.clear();
  return session_order_;
}

void pool_state::order_session(const pb::SessionRecord& s) {
  fresh_sessions_.push_back(&s);
  if (fresh_sessions_.size() > max_fresh_sessions)
    ordered_sessions();
}

void pool_state::unorder_session(const pb::SessionRecord& s) {
  // The newest first: a short session is most often among the last in.
  for (auto i = fresh_sessions_.size(); i-- > 0;)
    if (fresh_sessions_[i] == &s) {
      fresh_sessions_[i] = fresh_sessions_.back();
      fresh_sessions_.pop_back();
      return;
    }
  if (auto o = session_order_.find(key_of(s)); o != session_order_.end()) {
    session_order_.erase(o);  // one walk (erasing by key takes two)
    ++order_steps_;
  }
}

pool_state::frozen pool_state::copy_whole() const {
  frozen f;
  f.records = snapshot_scalars();
  auto& snap = f.records;
  snap.mutable_nodes()->Reserve(static_cast<int>(nodes_.size()));
  for (auto& [id, n] : nodes_)
    *snap.add_nodes() = n;
  snap.mutable_sessions()->Reserve(static_cast<int>(sessions_.size()));
  for (auto& k : ordered_sessions())  // by id: equal states give equal bytes
    *snap.add_sessions() = *k.rec;
  f.recent_ids = recent_ids_.freeze();
  return f;
}

pb::Snapshot pool_state::snapshot() const { return copy_whole().finish(); }

void pool_state::note_changed(const pb::Command& cmd, const apply_result& r) {
  if (!copies_)
    return;  // no copy to keep up to date: the next freeze makes one
  if (touches_everything(cmd)) {
    copies_.reset();  // the next freeze copies everything; rare
    changed_nodes_.clear();
    changed_order_.clear();
    changed_sessions_.clear();
    return;
  }
  // Two sources, each alone found incomplete by the randomized test: the
  // records the command and its events name (an ended session is named
  // only there), and the records noted for their timers (a session that
  // lost a node to a NodeDown is named only there). Sets, so a record
  // touched by many commands is copied once, with no sort at the freeze.
  for_each_touched(
    cmd, r,
    [&](const std::string& id) {
      if (auto* n = live_node(id))
        note_changed_node(n);
    },
    [&](const std::string& id) { changed_sessions_.insert(id); });
  for (auto* n : last_noted_nodes_)
    note_changed_node(n);
  for (auto* s : last_noted_sessions_)
    changed_sessions_.insert(s->id());
  // A session that ended and is not in the copy (it was accepted since the
  // last freeze, as most are) leaves nothing to do: the set then holds the
  // sessions live now and those the copy holds, not every session served.
  // (The copy is only read here: it changes only in freeze(), on this
  // thread, and a writer only reads it.)
  for (auto& a : r.archived)
    if (copies_->sessions.count(a.id()) == 0)
      changed_sessions_.erase(a.id());
  // The nodes changed are at most the nodes. The sessions are at most the
  // ones live at the freeze and those accepted since (one per entry): with
  // freezes as often as the supervisor takes snapshots (every
  // snapshot_every entries, more with many records) the set stays under
  // this bound. Past it (no freeze for long) the copy is dropped and the
  // next freeze copies everything, as a first one does.
  auto bound = 2 * (nodes_.size() + sessions_.size() + params_.snapshot_every
                    + recent_ids_.size() / 16)
               + 4096;
  if (changed_sessions_.size() > bound) {
    copies_.reset();
    changed_nodes_ = {};
    changed_order_ = {};
    changed_sessions_ = {};
  }
}

void pool_state::copy_node(const pb::NodeRecord* n) {
  auto& index = copies_->copy_of;
  if (index.empty())
    index.reserve(nodes_.size());
  auto& copy = index[n];
  if (copy == nullptr)
    copy = &copies_->nodes.try_emplace(n->id()).first->second;
  *copy = *n;
}

void pool_state::copy_session(const std::string& id) {
  auto& copied = copies_->sessions;
  if (auto* s = live_session(id)) {
    auto [it, added] = copied.try_emplace(id);
    it->second = *s;
  } else {
    copied.erase(id);  // ended (or never accepted)
  }
}

void pool_state::forget(pb::NodeRecord& n, apply_result& out) {
  const pb::NodeRecord* p = &n;
  // Every index that points at the record lets go of it first. A lost or
  // retired node is in no pool index and counted neither alive nor available, so
  // its timer and its notes are all there is besides the maps by id.
  if (auto a = node_aux_.find(p); a != node_aux_.end()) {
    if (a->second.due != never)
      node_timers_.erase(a->second.timer);
    node_aux_.erase(a);
  }
  noted_nodes_.erase(std::remove(noted_nodes_.begin(), noted_nodes_.end(), p),
                     noted_nodes_.end());
  if (changed_nodes_.erase(p))
    changed_order_.erase(
      std::remove(changed_order_.begin(), changed_order_.end(), p),
      changed_order_.end());
  if (copies_ && copies_.use_count() > 1) {
    // A snapshot still reads the kept copy: the next freeze makes a new one.
    copies_.reset();
    changed_nodes_.clear();
    changed_order_.clear();
    changed_sessions_.clear();
  } else if (copies_) {
    std::atomic_thread_fence(std::memory_order_acquire);  // as in freeze()
    copies_->copy_of.erase(p);
    copies_->nodes.erase(n.id());
  }
  --counts_[n.state()];
  out.events.emplace_back();
  auto* f = out.events.back().mutable_node_forgotten();
  f->set_node_id(n.id());
  f->set_reason(n.state() == pb::LOST ? "lost for lost_retention_ms"
                                      : "retired for retired_retention_ms");
  out.changed = true;
  auto id = n.id();
  node_index_.erase(id);
  nodes_.erase(id);
}

size_t pool_state::copy_ahead(size_t budget, size_t leave) {
  if (!copies_ || changes_pending() <= leave)
    return 0;
  if (copies_.use_count() > 1)
    return 0;  // a snapshot still reads it: the next freeze copies it whole
  // Whoever shared it released it (as in freeze()).
  std::atomic_thread_fence(std::memory_order_acquire);
  budget = std::min(budget, changes_pending() - leave);
  size_t done = 0;
  // The nodes changed longest ago first: a node changes in bursts (reserved,
  // released, tested within a few commits), and one copied in the middle
  // of its burst would be copied again.
  while (done < budget && !changed_order_.empty()) {
    auto* n = changed_order_.front();
    changed_order_.pop_front();
    changed_nodes_.erase(n);
    copy_node(n);
    ++done;
  }
  for (auto it = changed_sessions_.begin();
       it != changed_sessions_.end() && done < budget; ++done) {
    copy_session(*it);
    it = changed_sessions_.erase(it);
  }
  return done;
}

void pool_state::note_changed_node(const pb::NodeRecord* n) {
  if (changed_nodes_.insert(n).second)
    changed_order_.push_back(n);  // each pending node once, oldest first
}

pool_state::frozen pool_state::freeze() {
  if (copies_ && copies_.use_count() > 1) {
    // An unfinished snapshot still reads this copy: keep it as it is.
    copies_ = std::make_shared<record_copies>(*copies_);
  } else if (copies_) {
    // Whoever shared it released it (an acquire-release decrement); what
    // they read happens before what is written here.
    std::atomic_thread_fence(std::memory_order_acquire);
  }
  if (!copies_ && nodes_.size() + sessions_.size() < kept_copy_from_)
    return copy_whole();  // a small pool: nothing kept, nothing noted
  if (!copies_) {
    copies_ = std::make_shared<record_copies>();
    for (auto& [id, n] : nodes_)
      copies_->nodes.emplace_hint(copies_->nodes.end(), id, n);
    for (auto& k : ordered_sessions())
      copies_->sessions.emplace_hint(copies_->sessions.end(), k.rec->id(), *k.rec);
  } else {
    // In the order of their addresses: the records and their copies were
    // allocated in about that order, so the copying walks memory forward
    // instead of jumping (BENCHMARKS.md, "The writer's own work, cut").
    std::vector<const pb::NodeRecord*> order(changed_nodes_.begin(),
                                             changed_nodes_.end());
    std::sort(order.begin(), order.end(), std::less<const pb::NodeRecord*>{});
    for (auto* n : order)
      copy_node(n);
    for (auto& id : changed_sessions_)
      copy_session(id);
  }
  changed_nodes_.clear();
  changed_order_.clear();
  changed_sessions_.clear();
  frozen f;
  f.records = snapshot_scalars();
  f.live = copies_;
  f.recent_ids = recent_ids_.freeze();
  return f;
}

/// The idempotency window of a frozen snapshot, into its message.
static void add_window(const id_window::frozen& w, pb::Snapshot& snap) {
  auto* ids = snap.mutable_recent_ids();
  ids->Reserve(static_cast<int>(w.size()));
  w.for_each_span([&](const uint64_t* p, size_t n) { ids->Add(p, p + n); });
  snap.mutable_recent_expiry_seconds()->Add(w.expiry_seconds.begin(),
                                            w.expiry_seconds.end());
  snap.mutable_recent_expiry_counts()->Add(w.expiry_counts.begin(),
                                           w.expiry_counts.end());
}

pb::Snapshot pool_state::frozen::finish() && {
  auto snap = std::move(records);
  if (live) {
    auto* nodes = snap.mutable_nodes();
    nodes->Reserve(static_cast<int>(live->nodes.size()));
    for (auto& [id, n] : live->nodes)
      *nodes->Add() = n;
    auto* sessions = snap.mutable_sessions();
    sessions->Reserve(static_cast<int>(live->sessions.size()));
    for (auto& [id, s] : live->sessions)
      *sessions->Add() = s;
    live.reset();  // the next freeze may update the copy in place
  }
  add_window(recent_ids, snap);
  recent_ids = {};
  return snap;
}

std::string pool_state::frozen::encode() && {
  namespace io = google::protobuf::io;
  using wire = google::protobuf::internal::WireFormatLite;
  auto snap = std::move(records);
  add_window(recent_ids, snap);
  recent_ids = {};
  if (!live)
    return snap.SerializeAsString();
  // A message's fields go out in the order of their numbers: 1 and 2, the
  // records (3 and 4, each as a length-delimited field), then the rest.
  static_assert(pb::Snapshot::kLastIndexFieldNumber == 1
                && pb::Snapshot::kLastNowFieldNumber == 2
                && pb::Snapshot::kNodesFieldNumber == 3
                && pb::Snapshot::kSessionsFieldNumber == 4);
  pb::Snapshot head;
  head.set_last_index(snap.last_index());
  head.set_last_now(snap.last_now());
  snap.clear_last_index();
  snap.clear_last_now();
  // Sizes first (each record caches its own: only this thread reads the
  // copy until it is released), then one buffer of exactly that size.
  auto field = [](size_t size) {
    return 1 + io::CodedOutputStream::VarintSize64(size) + size;
  };
  size_t total = head.ByteSizeLong() + snap.ByteSizeLong();
  for (auto& [id, n] : live->nodes)
    total += field(n.ByteSizeLong());
  for (auto& [id, s] : live->sessions)
    total += field(s.ByteSizeLong());
  std::string out(total, '\0');
  {
    io::ArrayOutputStream array{out.data(), static_cast<int>(total)};
    io::CodedOutputStream cos{&array};
    head.SerializeWithCachedSizes(&cos);
    auto put = [&](int number, const google::protobuf::MessageLite& m) {
      cos.WriteTag(wire::MakeTag(number, wire::WIRETYPE_LENGTH_DELIMITED));
      cos.WriteVarint32(static_cast<uint32_t>(m.GetCachedSize()));
      m.SerializeWithCachedSizes(&cos);
    };
    for (auto& [id, n] : live->nodes)
      put(pb::Snapshot::kNodesFieldNumber, n);
    for (auto& [id, s] : live->sessions)
      put(pb::Snapshot::kSessionsFieldNumber, s);
    snap.SerializeWithCachedSizes(&cos);
    cos.Trim();
    if (cos.HadError() || static_cast<size_t>(cos.ByteCount()) != total)
      throw std::logic_error("snapshot: encoded size differs from its size");
  }
  live.reset();  // the next freeze may update the copy in place
  return out;
}

std::vector<violation> pool_state::frozen::check() const {
  if (!live)
    return check_snapshot(records);
  std::vector<violation> out;
  auto node_of = [&](const std::string& id) -> const pb::NodeRecord* {
    auto i = live->nodes.find(id);
    return i == live->nodes.end() ? nullptr : &i->second;
  };
  auto session_of = [&](const std::string& id) -> const pb::SessionRecord* {
    auto i = live->sessions.find(id);
    return i == live->sessions.end() ? nullptr : &i->second;
  };
  record_checks::check_snapshot_records(
    records, record_checks::params_of(records), live->nodes,
    live->sessions, [](auto& kv) -> auto& { return kv.second; }, node_of,
    session_of, out);
  return out;
}

void pool_state::restore(const pb::Snapshot& snap, bool with_recent_ids) {
  if (!snap.params_json().empty()) {
    std::string err;
    auto p = params_from_json(snap.params_json(), params_, err);
    if (err.empty() && make_selection(p.selection)) {
      params_ = std::move(p);
      latency_bounds_ = test_latency_bounds(params_);
      selector_ = make_selection(params_.selection);
    }
  }
  copies_.reset();  // they were of the records about to go
  changed_nodes_.clear();
  changed_order_.clear();
  changed_sessions_.clear();
  pool_.clear();
  active_ = 0;
  nodes_.clear();
  node_index_.clear();
  sessions_.clear();
  session_order_.clear();
  fresh_sessions_.clear();
  counts_.fill(0);
  for (auto& n : snap.nodes()) {
    auto& rec = nodes_[n.id()] = n;
    if (!node_index_.find(n.id()))  // a snapshot may repeat an id: one entry
      node_index_.insert(&rec);
    auto st = static_cast<size_t>(n.state());
    if (st < counts_.size())
      ++counts_[st];
  }
  sessions_.reserve(snap.sessions_size());
  for (auto& s : snap.sessions()) {
    auto& rec = *sessions_.try_emplace(s.id()).first = s;
    session_order_.insert(key_of(rec));
    if (s.state() == pb::ACTIVE)
      ++active_;
  }
  rebuild_pool();
  next_test_id_ = snap.next_test_id();
  next_session_seq_ = snap.next_session_seq();
  rng_state_ = snap.rng_state();
  tests_passed_ = snap.tests_passed();
  tests_failed_ = snap.tests_failed();
  sessions_completed_ = snap.sessions_completed();
  sessions_requeued_ = snap.sessions_requeued();
  sessions_failed_ = snap.sessions_failed();
  // recover() refuses an inconsistent window (recent_ids_error); a raw
  // restore of one starts with an empty window.
  if (with_recent_ids)
    recent_ids_.load(recent_ids_image(snap));
  else
    recent_ids_.clear();
  last_now_ = snap.last_now();
  rebuild_indexes();  // after params_: deadlines depend on them
}

} // namespace nodepool
