#include "recovery.hpp"

#include <google/protobuf/util/message_differencer.h>
#include <set>

namespace nodepool {

status recover(store& st, pool_state& pool, recovered& info) {
  std::optional<pb::Snapshot> snap;
  if (auto s = st.load_snapshot(snap); !s.ok())
    return s;
  uint64_t from = 1;
  if (snap) {
    pool.restore(*snap);
    from = snap->last_index() + 1;
    info.last_index = snap->last_index();
    info.last_now = snap->last_now();
  }
  return st.scan(from, [&](const pb::LogEntry& e) {
    pool.apply(e.command(), e.now());
    info.last_index = e.index();
    info.last_now = e.now();
    ++info.replayed;
  });
}

history_report check_history(store& st, uint64_t stride) {
  if (stride == 0)
    stride = 1;
  auto last = st.last_index();
  history_report rep;
  pool_state pool;
  std::set<std::string> accepted;
  uint64_t expect = 1;
  auto s = st.scan(1, [&](const pb::LogEntry& e) {
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
  if (!s.ok()) {
    rep.load_error = s.error;
    return rep;
  }
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
