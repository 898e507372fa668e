// See member_archive.hpp.
#include "member_archive.hpp"

#include <atomic>
#include <cinttypes>
#include <cstdio>

namespace nodepool {

namespace {

constexpr char position_key[] = "archive/position";
constexpr char gap_prefix[] = "archive/gap/";

std::atomic<uint64_t> gaps_generation{0};

std::string gap_key(uint64_t from) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%016" PRIx64, from);
  return gap_prefix + std::string{buf};
}

std::string encode(const replica::archive_gap& g) {
  return std::to_string(g.from_index) + " " + std::to_string(g.to_index) + " "
         + std::to_string(g.from_now) + " " + std::to_string(g.to_now);
}

bool decode(const std::string& s, replica::archive_gap& g) {
  unsigned long long a = 0, b = 0;
  long long c = 0, d = 0;
  if (std::sscanf(s.c_str(), "%llu %llu %lld %lld", &a, &b, &c, &d) != 4)
    return false;
  g = {a, b, c, d};
  return true;
}

} // namespace

std::shared_ptr<replica> member_replica(
  std::shared_ptr<store> st, bool check,
  std::function<void(const std::string&)> error) {
  uint64_t index = 0;
  int64_t now = 0;
  st->scan_meta(position_key, [&](const std::string& k, const std::string& v) {
    unsigned long long i = 0;
    long long t = 0;
    if (k == position_key && std::sscanf(v.c_str(), "%llu %lld", &i, &t) == 2) {
      index = i;
      now = t;
    }
    return false;
  });
  // Once a write failed, the position stays where the archive is whole.
  // The snapshot's sync may run on a thread of its own (snapshot_later).
  auto failed = std::make_shared<std::atomic<bool>>(false);
  // A batch's ended sessions wait here for the position that follows them
  // (replica::apply calls the two in turn, on one thread), so that both
  // go to the store in one write.
  auto ended_now = std::make_shared<std::vector<pb::SessionRecord>>();
  auto rep = std::make_shared<replica>(
    [ended_now](std::vector<pb::SessionRecord>& ended) {
      for (auto& r : ended)
        ended_now->push_back(std::move(r));
    },
    check, index, now);
  auto position_value = [](uint64_t index, int64_t now) {
    return std::to_string(index) + " " + std::to_string(now);
  };
  // After every batch, unsynced: its archived records and the position
  // past them in one atomic write, so the position never runs ahead of
  // the records.
  rep->on_batch([st, failed, error, ended_now, position_value](uint64_t index,
                                                                int64_t now) {
    std::vector<pb::SessionRecord> ended;
    ended.swap(*ended_now);
    if (*failed) {
      // The position stays put; the records still go in.
      if (!ended.empty())
        if (auto s = st->append({}, ended, false); !s.ok())
          error("archive write failed: " + s.error);
      return false;
    }
    if (auto s = st->archive_with_meta(ended, position_key,
                                       position_value(index, now), false);
        !s.ok()) {
      *failed = true;
      error("archive and position write failed: " + s.error);
      return false;
    }
    return true;
  });
  // Before raft takes a snapshot, raft may then drop the entries it
  // covers: the records they archived are synced first (a synced write
  // makes every earlier one durable).
  rep->on_snapshot([st, failed, error, position_value](uint64_t index,
                                                       int64_t now) {
    if (*failed)
      return;
    if (auto s = st->put_meta(position_key, position_value(index, now), true);
        !s.ok()) {
      *failed = true;
      error("archive sync before a snapshot failed: " + s.error);
    }
  });
  rep->on_archive_gap([st, failed, error](const replica::archive_gap& g) {
    if (auto s = record_gap(*st, g); !s.ok()) {
      // The position must not pass a gap nobody recorded.
      *failed = true;
      error("archive gap write failed: " + s.error);
      return false;
    }
    return true;
  });
  return rep;
}

status pending_gaps(store& st, std::vector<pending_gap>& out) {
  out.clear();
  status bad;
  auto s = st.scan_meta(gap_prefix, [&](const std::string& k, const std::string& v) {
    pending_gap p;
    p.key = k;
    if (!decode(v, p.gap)) {
      bad = status::fail("archive gap " + k + " does not decode: '" + v + "'");
      return false;
    }
    out.push_back(std::move(p));
    return true;
  });
  return s.ok() ? bad : s;
}

status record_gap(store& st, const replica::archive_gap& g) {
  auto s = st.put_meta(gap_key(g.from_index), encode(g), true);
  gaps_generation.fetch_add(1);
  return s;
}

status gap_filled(store& st, const pending_gap& g) {
  auto s = st.erase_meta(g.key, true);
  gaps_generation.fetch_add(1);
  return s;
}

uint64_t archive_gaps_generation() { return gaps_generation.load(); }

uint64_t archive_complete_through(store& st, uint64_t archived_index) {
  std::vector<pending_gap> gaps;
  if (!pending_gaps(st, gaps).ok())
    return 0;
  for (auto& g : gaps)
    archived_index = std::min(archived_index, g.gap.from_index - 1);
  return archived_index;
}

} // namespace nodepool
