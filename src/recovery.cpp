#include "recovery.hpp"

#include <google/protobuf/util/message_differencer.h>
#include "random.hpp"
#include <cmath>
#include <set>

namespace nodepool {

namespace {

/// Times in stored records: the clock is never negative, and the bound keeps
/// every sum of a time and a duration (at most params::max_duration_ms) and
/// every difference of two times in range.
constexpr int64_t max_time_ms = int64_t{1} << 62;

bool time_ok(int64_t t) { return t >= 0 && t <= max_time_ms; }

/// The first time (int64 field) of a record that is out of range, or "".
std::string bad_time(const google::protobuf::Message& m) {
  auto* d = m.GetDescriptor();
  auto* r = m.GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    auto* f = d->field(i);
    if (f->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_INT64
        && !f->is_repeated() && !time_ok(r->GetInt64(m, f)))
      return d->name() + "." + f->name() + " is out of range";
  }
  return {};
}

std::string bad_entry_time(const pb::LogEntry& e) {
  if (time_ok(e.now()))
    return {};
  return "log entry " + std::to_string(e.index()) + " has time "
         + std::to_string(e.now()) + ", out of range";
}

/// What no command could have produced in a snapshot's records: a session
/// shape apply_submit refuses (the pool would later hold an active session
/// with no node), parameters that do not decode or are out of range (the
/// pool would silently run with others).
std::string bad_records(const pb::Snapshot& snap) {
  if (auto t = bad_time(snap); !t.empty())
    return t;
  for (auto& n : snap.nodes()) {
    if (auto t = bad_time(n); !t.empty())
      return "node " + n.id() + ": " + t;
    // An EWMA of outcomes in [0, 1], from 0.5; of latencies, from 0.
    if (!(n.reputation() >= 0 && n.reputation() <= 1))
      return "node " + n.id() + " has reputation "
             + std::to_string(n.reputation()) + ", outside [0, 1]";
    if (!(n.latency_ms() >= 0 && std::isfinite(n.latency_ms())))
      return "node " + n.id() + " has latency "
             + std::to_string(n.latency_ms()) + ", not a finite time";
  }
  if (!snap.params_json().empty()) {
    std::string err;
    auto p = params_from_json(snap.params_json(), params{}, err);
    if (err.empty())
      err = p.validate();
    if (!err.empty())
      return "parameters: " + err;
  }
  id_window window;
  if (auto err = window.load(recent_ids_image(snap)); !err.empty())
    return err;
  if (snap.sessions_completed() + snap.sessions_failed()
        + static_cast<uint64_t>(snap.sessions_size())
      != snap.next_session_seq() - 1 || snap.next_session_seq() == 0)
    return "sessions on record do not add up to the sessions accepted";
  std::set<uint64_t> seqs;
  for (auto& s : snap.sessions()) {
    // Acceptance order: each session has its own place, below the next one
    // (the queue is keyed by it; a shared place loses a queued session).
    if (s.seq() == 0 || s.seq() >= snap.next_session_seq()
        || !seqs.insert(s.seq()).second)
      return "session " + s.id() + " has acceptance place "
             + std::to_string(s.seq()) + ", not a unique one below "
             + std::to_string(snap.next_session_seq());
    if (s.min_nodes() == 0 || s.min_nodes() > s.max_nodes()
        || s.max_nodes() > 64 || s.redundancy() == 0
        || s.redundancy() > s.max_nodes() || s.max_tasks() == 0
        || static_cast<uint32_t>(s.nodes_size()) > s.max_nodes())
      return "session " + s.id() + " has a shape no submission can have";
    if (auto t = bad_time(s); !t.empty())
      return "session " + s.id() + ": " + t;
  }
  return {};
}

} // namespace

status recover(store& st, pool_state& pool, recovered& info) {
  std::optional<pb::Snapshot> snap;
  if (auto s = st.load_snapshot(snap); !s.ok())
    return s;
  uint64_t from = 1;
  if (snap) {
    // The log is written before any snapshot of it: one past the log's end
    // means the log lost entries (a damaged or lying disk). Taken as it is,
    // the next group commit would fail at a gap, at every restart.
    if (snap->last_index() > st.last_index())
      return status::fail("snapshot at entry " + std::to_string(snap->last_index())
                          + " is past the log's last entry "
                          + std::to_string(st.last_index())
                          + ": the log lost entries it held");
    // A stored snapshot is outside input: one whose state breaks I1..I5 is
    // refused before it replaces the pool.
    if (auto bad = bad_records(*snap); !bad.empty())
      return status::fail("snapshot at entry "
                          + std::to_string(snap->last_index())
                          + " is inconsistent: " + bad);
    pool_state trial{pool.config()};
    trial.restore(*snap);
    if (auto vs = trial.check_invariants(); !vs.empty())
      return status::fail("snapshot at entry "
                          + std::to_string(snap->last_index())
                          + " is inconsistent: " + vs.front().invariant + ": "
                          + vs.front().detail);
    pool.restore(*snap);
    from = snap->last_index() + 1;
    info.last_index = snap->last_index();
    info.last_now = snap->last_now();
  }
  std::string bad;
  auto s = st.scan(from, [&](const pb::LogEntry& e) {
    if (!bad.empty())
      return;
    if (bad = bad_entry_time(e); !bad.empty())
      return;
    pool.apply(e.command(), e.now());
    info.last_index = e.index();
    info.last_now = e.now();
    ++info.replayed;
  });
  if (s.ok() && !bad.empty())
    return status::fail(bad);
  return s;
}

namespace {

/// Order-free digest of a set of archived records: a sum of hashes, so the
/// archive scanned in time order and the replay's records in log order
/// compare in O(1) memory.
struct record_digest {
  uint64_t count = 0;
  uint64_t sum = 0;
  void add(const pb::SessionRecord& r) {
    ++count;
    sum += mix64(id_window::fingerprint(r.SerializeAsString()));
  }
};

} // namespace

history_report check_history(store& st, uint64_t stride,
                             const std::atomic<bool>* stop,
                             const std::function<void(uint64_t)>& progress) {
  if (stride == 0)
    stride = 1;
  history_report rep;
  std::optional<pb::Snapshot> snap;
  if (auto ls = st.load_snapshot(snap); !ls.ok()) {
    rep.load_error = ls.error;
    return rep;
  }
  pool_state pool;
  record_digest replayed;
  uint64_t expect = 1;
  bool snapshot_compared = false;
  std::string bad;
  auto s = st.scan_while(1, [&](const pb::LogEntry& e) {
    if (stop && stop->load(std::memory_order_relaxed)) {
      rep.stopped = true;
      return false;
    }
    if (bad = bad_entry_time(e); !bad.empty())
      return false;
    ++rep.entries;
    if (progress && rep.entries % 1024 == 0)
      progress(rep.entries);
    if (e.index() != expect)
      rep.violations.push_back(
        {e.index(), violation{"I4", "log gap before entry "
                                      + std::to_string(e.index())}});
    expect = e.index() + 1;
    auto r = pool.apply(e.command(), e.now());
    // Only commands that changed the pool are logged: one that changes
    // nothing on replay means the log is not the history it claims.
    if (r.refused)
      rep.violations.push_back(
        {e.index(), violation{"I4", "entry refused on replay ("
                                      + r.refused->name() + "): the log does "
                                      "not replay to the state it came from"}});
    for (auto& a : r.archived)
      replayed.add(a);
    // The records this entry touched, after every entry (a record only
    // changes when a command touches it); the whole state as often as the
    // oracle snapshots it (O(state) per snapshot_every entries: still
    // linear in the history), or every stride-th entry if asked.
    for (auto& v : pool.check_after(e.command(), r))
      rep.violations.push_back({e.index(), v});
    if ((stride > 1 && rep.entries % stride == 0)
        || rep.entries % pool.config().snapshot_every == 0)
      for (auto& v : pool.check_invariants())
        rep.violations.push_back({e.index(), v});
    if (snap && e.index() == snap->last_index()) {
      // Replaying up to the snapshot's index must give the snapshot's
      // state: compared here, in the same pass.
      snapshot_compared = true;
      auto mine = pool.snapshot();
      mine.set_last_index(snap->last_index());
      if (!google::protobuf::util::MessageDifferencer::Equals(mine, *snap))
        rep.violations.push_back(
          {snap->last_index(),
           violation{"I4", "stored snapshot differs from the replayed log"}});
      for (auto& v : pool.check_invariants())
        rep.violations.push_back({e.index(), v});
    }
    return true;
  });
  if (rep.stopped)
    return rep;
  if (!s.ok() || !bad.empty()) {
    rep.load_error = s.ok() ? bad : s.error;
    return rep;
  }
  for (auto& v : pool.check_invariants())
    rep.violations.push_back({rep.entries, v});
  rep.sessions_accepted = pool.sessions_accepted();
  rep.sessions_archived = replayed.count;
  // I4 across the whole history: every session the log ended is in the
  // archive, exactly as the replay ended it, and nothing else is.
  record_digest stored;
  auto as = st.scan_archive(0, [&](const pb::SessionRecord& r) {
    if (stop && stop->load(std::memory_order_relaxed)) {
      rep.stopped = true;
      return false;
    }
    stored.add(r);
    return true;
  });
  if (rep.stopped)
    return rep;
  if (!as.ok()) {
    rep.load_error = as.error;
    return rep;
  }
  if (stored.count != replayed.count || stored.sum != replayed.sum)
    rep.violations.push_back(
      {rep.entries,
       violation{"I4", "the archive holds " + std::to_string(stored.count)
                         + " ended sessions, the log ended "
                         + std::to_string(replayed.count)
                         + (stored.count == replayed.count
                              ? " (same number, other records)"
                              : "")}});
  // A snapshot that includes entries the log does not have: recovery would
  // skip whatever is appended under those indexes later.
  if (snap && snap->last_index() > expect - 1)
    rep.violations.push_back(
      {snap->last_index(),
       violation{"I4", "stored snapshot includes entries up to "
                         + std::to_string(snap->last_index())
                         + " but the log ends at "
                         + std::to_string(expect - 1)}});
  else if (snap && !snapshot_compared && snap->last_index() > 0)
    rep.violations.push_back(
      {snap->last_index(),
       violation{"I4", "stored snapshot's entry is missing from the log"}});
  return rep;
}

} // namespace nodepool
