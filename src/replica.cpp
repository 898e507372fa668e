#include "replica.hpp"

#include <utility>

#include "log.hpp"

namespace nodepool {

replica::replica(archive_fn archive, bool check, uint64_t archived_index,
                 int64_t archived_now)
    : archive_(std::move(archive)),
      check_(check),
      archived_index_(archived_index),
      archived_now_(archived_now) {}

std::vector<replica::archive_gap> replica::take_archive_gaps() {
  return std::exchange(gaps_, {});
}

replica::outcome replica::apply(std::string_view bytes) {
  pb::LogBatch b;
  if (!b.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    ++refused_;
    outcome o;
    o.error = "log entry does not decode";
    return o;
  }
  return apply(b);
}

namespace {

/// Why a replica at (`last_index`, `last_term`, `last_now`) refuses batch
/// `b` whole ("" if it takes it); `off_log`: because its first entry is
/// not the next one due.
std::string batch_refusal(const pb::LogBatch& b, uint64_t last_index,
                          uint64_t last_term, int64_t last_now,
                          bool& off_log) {
  off_log = false;
  if (b.entries_size() == 0)
    return "empty batch";
  if (b.term() < last_term)
    return "batch of term " + std::to_string(b.term()) + " after term "
           + std::to_string(last_term) + " (a deposed leader)";
  auto next = last_index + 1;
  auto t = last_now;
  for (auto& e : b.entries()) {
    if (e.index() != next) {
      off_log = e.index() == b.entries(0).index();
      return "entry " + std::to_string(e.index()) + " where "
             + std::to_string(next) + " was due";
    }
    if (e.now() < t)
      return "entry " + std::to_string(e.index()) + " goes back in time ("
             + std::to_string(e.now()) + " < " + std::to_string(t) + ")";
    if (e.command().kind_case() == pb::Command::KIND_NOT_SET)
      return "entry " + std::to_string(e.index()) + " has no command";
    t = e.now();
    ++next;
  }
  return {};
}

} // namespace

replica::outcome replica::apply(const pb::LogBatch& b) {
  outcome o;
  // Check the whole batch before touching anything: all or nothing.
  if (auto why = batch_refusal(b, last_index_, last_term_, last_now_, o.off_log);
      !why.empty()) {
    ++refused_;
    o.error = std::move(why);
    return o;
  }
  std::vector<pb::SessionRecord> ended;
  for (auto& e : b.entries()) {
    auto r = pool_.apply(e.command(), e.now());
    if (r.refused) {
      // The leader applied this command to the same state: a refusal here
      // means the two diverged. Nothing changed; say so loudly.
      violation v{"replica", "entry " + std::to_string(e.index())
                                + " refused on apply (" + r.refused->name()
                                + ": " + r.refused->detail + ")"};
      violations_.push_back(v);
      o.violations.push_back(std::move(v));
    } else if (check_) {
      for (auto& v : pool_.check_after(e.command(), r)) {
        violations_.push_back(v);
        o.violations.push_back(std::move(v));
      }
    }
    for (auto& a : r.archived)
      ended.push_back(std::move(a));
    last_index_ = e.index();
    last_now_ = e.now();
    ++o.entries;
  }
  last_term_ = b.term();
  ++batches_;
  if (copy_ahead_budget_ > 0)  // a little of the next Raft snapshot's copying
    copied_ahead_ += pool_.copy_ahead(copy_ahead_budget_, copy_ahead_leave_);
  if (!ended.empty() && archive_)
    archive_(ended);
  if (batch_fn_ && !batch_fn_(last_index_, last_now_))
    archive_broken_ = true;
  if (!archive_broken_ && archived_index_ < last_index_) {
    archived_index_ = last_index_;
    archived_now_ = last_now_;
  }
  o.ok = true;
  return o;
}

std::string replica::follows(const std::vector<std::string_view>& batches,
                             size_t& bad) const {
  auto index = last_index_;
  auto term = last_term_;
  auto now = last_now_;
  pb::LogBatch b;
  for (size_t i = 0; i < batches.size(); ++i) {
    auto& bytes = batches[i];
    bool off_log = false;
    if (!b.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())))
      continue;  // refused on apply, changing nothing
    auto why = batch_refusal(b, index, term, now, off_log);
    if (off_log) {
      bad = i;
      return "it holds pool entry " + std::to_string(b.entries(0).index())
             + " where " + std::to_string(index + 1) + " is due";
    }
    if (!why.empty())
      continue;
    index = b.entries(b.entries_size() - 1).index();
    term = b.term();
    now = b.entries(b.entries_size() - 1).now();
  }
  return {};
}

pool_state::frozen replica::freeze() {
  auto f = pool_.freeze();
  f.records.set_last_index(last_index_);
  f.records.set_last_now(last_now_);
  f.records.set_last_term(last_term_);
  return f;
}

pb::Snapshot replica::snapshot() const {
  auto snap = pool_.snapshot();
  snap.set_last_index(last_index_);
  snap.set_last_now(last_now_);
  snap.set_last_term(last_term_);
  return snap;
}

std::string replica::snapshot_bytes() const {
  return snapshot().SerializeAsString();
}

namespace {

/// A snapshot's bytes decoded, for restore and check alike.
bool decode_snapshot(std::string_view bytes, pb::Snapshot& s, std::string& error) {
  if (bytes.empty()) {
    error = "empty snapshot";
    return false;
  }
  if (!s.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    error = "snapshot does not decode";
    return false;
  }
  return true;
}

/// Why a snapshot is refused: the first invariant it breaks.
std::string breaks(const pb::Snapshot& s, const violation& v) {
  return "snapshot at entry " + std::to_string(s.last_index()) + " breaks "
         + v.invariant + ": " + v.detail;
}

} // namespace

bool replica::restore(std::string_view bytes, std::string& error) {
  pb::Snapshot s;
  if (!decode_snapshot(bytes, s, error)) {
    ++restores_refused_;
    return false;
  }
  return restore(s, error);
}

bool replica::check(std::string_view bytes, std::string& error) {
  pb::Snapshot s;
  if (!decode_snapshot(bytes, s, error))
    return false;
  if (auto vs = check_snapshot(s); !vs.empty()) {
    error = breaks(s, vs.front());
    return false;
  }
  return true;
}

bool replica::restore(const pb::Snapshot& s, std::string& error) {
  pool_state p;
  p.restore(s);
  if (auto vs = p.check_invariants(); !vs.empty()) {
    ++restores_refused_;
    error = breaks(s, vs.front());
    return false;
  }
  p.set_kept_copy_from(pool_.kept_copy_from());
  pool_ = std::move(p);
  // The entries the snapshot stands for ended sessions this archive never
  // saw (unless it already went that far, as after a restart).
  if (archived_index_ < s.last_index()) {
    archive_gap g{archived_index_ + 1, s.last_index(), archived_now_,
                  s.last_now()};
    if (gaps_.size() >= kept_gaps)
      gaps_.erase(gaps_.begin());
    gaps_.push_back(g);
    // An unrecorded gap would leave the position vouching for the
    // records the snapshot skipped: it stays where it was.
    if (gap_fn_ && !gap_fn_(g))
      archive_broken_ = true;
    if (!archive_broken_) {
      archived_index_ = s.last_index();
      archived_now_ = s.last_now();
    }
  }
  last_index_ = s.last_index();
  last_now_ = s.last_now();
  last_term_ = s.last_term();
  ++restores_;
  return true;
}

void replica_machine::apply(std::string_view entry) {
  std::lock_guard<std::mutex> g{mu_};
  if (deferred_)
    pending_.emplace_back(entry);
  else
    apply_now(entry);
}

void replica_machine::catch_up() {
  std::lock_guard<std::mutex> g{mu_};
  apply_pending();
}

void replica_machine::apply_now(std::string_view entry) {
  if (!broken_.empty())
    return;
  auto o = r_.apply(entry);
  if (o.off_log) {
    broken_ = o.error;
    log("replica")->critical("log entry refused: {}: this state can no "
                             "longer follow the log; nothing more is applied",
                             o.error);
  } else if (!o.ok)
    log("replica")->error("log entry refused: {}", o.error);
  for (auto& v : o.violations)
    log("replica")->critical("{}: {}", v.invariant, v.detail);
}

void replica_machine::apply_pending() {
  if (pending_.empty())
    return;
  for (auto& e : pending_)
    apply_now(e);
  pending_.clear();
}

std::string replica_machine::snapshot() { return snapshot_later()(); }

std::function<std::string()> replica_machine::snapshot_later() {
  std::lock_guard<std::mutex> g{mu_};
  apply_pending();
  auto sync = r_.before_snapshot_later();
  // The records are copied here, under the lock; the window of recent ids
  // is shared, and the message built later, on raft's snapshot thread.
  auto snap = std::make_shared<pool_state::frozen>(r_.freeze());
  return [sync = std::move(sync), snap = std::move(snap)] {
    sync();
    return std::move(*snap).encode();
  };
}

bool replica_machine::restore(std::string_view bytes, std::string& error) {
  std::lock_guard<std::mutex> g{mu_};
  apply_pending();  // what came before the snapshot is archived as usual
  return r_.restore(bytes, error);
}

} // namespace nodepool
