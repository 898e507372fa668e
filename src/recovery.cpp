#include "recovery.hpp"

#include <google/protobuf/util/message_differencer.h>
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

history_report check_history(store& st, uint64_t stride,
                             const std::atomic<bool>* stop) {
  if (stride == 0)
    stride = 1;
  auto last = st.last_index();
  history_report rep;
  pool_state pool;
  std::set<std::string> accepted;
  uint64_t expect = 1;
  std::string bad;
  auto s = st.scan(1, [&](const pb::LogEntry& e) {
    if (!bad.empty() || rep.stopped)
      return;
    if (stop && *stop) {
      rep.stopped = true;
      return;
    }
    if (bad = bad_entry_time(e); !bad.empty())
      return;
    ++rep.entries;
    if (e.index() != expect)
      rep.violations.push_back(
        {e.index(), violation{"I4", "log gap before entry "
                                      + std::to_string(e.index())}});
    expect = e.index() + 1;
    auto r = pool.apply(e.command(), e.now());
    if (e.command().has_submit_session() && !r.refused)
      accepted.insert(e.command().submit_session().session_id());
    if (rep.entries % stride == 0 || e.index() == last)
      for (auto& v : pool.check_invariants())
        rep.violations.push_back({e.index(), v});
  });
  if (!s.ok() || !bad.empty()) {
    rep.load_error = s.ok() ? bad : s.error;
    return rep;
  }
  if (rep.stopped)
    return rep;
  rep.sessions_accepted = accepted.size();
  for (auto& id : accepted)
    if (!pool.session(id))
      rep.violations.push_back(
        {rep.entries, violation{"I4", "accepted session " + id + " is gone"}});
  std::optional<pb::Snapshot> snap;
  if (auto ls = st.load_snapshot(snap); !ls.ok()) {
    rep.load_error = ls.error;
    return rep;
  }
  // A snapshot that includes entries the log does not have: recovery would
  // skip whatever is appended under those indexes later.
  if (snap && snap->last_index() > expect - 1)
    rep.violations.push_back(
      {snap->last_index(),
       violation{"I4", "stored snapshot includes entries up to "
                         + std::to_string(snap->last_index())
                         + " but the log ends at "
                         + std::to_string(expect - 1)}});
  if (snap && snap->last_index() <= rep.entries) {
    // Replaying up to the snapshot's index must give the snapshot's state.
    pool_state again;
    st.scan(1, [&](const pb::LogEntry& e) {
      if (e.index() <= snap->last_index())
        again.apply(e.command(), e.now());
    });
    auto mine = again.snapshot();
    mine.set_last_index(snap->last_index());
    if (!google::protobuf::util::MessageDifferencer::Equals(mine, *snap))
      rep.violations.push_back(
        {snap->last_index(),
         violation{"I4", "stored snapshot differs from the replayed log"}});
  }
  return rep;
}

} // namespace nodepool
