// The idempotency window: a set of recent ids with FIFO expiry and a hard
// memory bound per id.
#include <gtest/gtest.h>

#include <deque>
#include <set>

#include "id_window.hpp"
#include "random.hpp"

namespace nodepool {
namespace {

TEST(IdWindow, HoldsIdsUntilTheirSecondHasPassed) {
  id_window w;
  w.add("a", 1000);
  w.add("b", 1500);  // rounded up to 2000
  EXPECT_TRUE(w.contains("a"));
  EXPECT_TRUE(w.contains("b"));
  EXPECT_FALSE(w.contains("c"));
  w.expire(999);
  EXPECT_TRUE(w.contains("a"));
  w.expire(1000);
  EXPECT_FALSE(w.contains("a"));
  EXPECT_TRUE(w.contains("b"));
  w.expire(1999);
  EXPECT_TRUE(w.contains("b"));
  w.expire(2000);
  EXPECT_FALSE(w.contains("b"));
  EXPECT_EQ(w.size(), 0u);
}

TEST(IdWindow, AgreesWithASetUnderRandomTraffic) {
  // Insertions and expiries drive the table through growth, shrinking and
  // backward-shift deletions; every lookup must agree with a plain set.
  seeded_rng r{7};
  id_window w;
  std::deque<std::pair<int64_t, std::string>> ref;
  std::set<std::string> live;
  int64_t now = 0;
  uint64_t next = 0;
  for (int step = 0; step < 200000; ++step) {
    now += static_cast<int64_t>(r.below(20));
    if (r.below(3) != 0) {
      auto id = "id-" + std::to_string(next++);
      auto expires = now + 5000 + static_cast<int64_t>(r.below(2)) * 1000;
      // Expiry times never decrease from one add to the next.
      if (!ref.empty())
        expires = std::max(expires, ref.back().first);
      w.add(id, expires);
      ref.emplace_back((expires + 999) / 1000 * 1000, id);
      live.insert(id);
    }
    if (r.below(50) == 0) {
      w.expire(now);
      while (!ref.empty() && ref.front().first <= now) {
        live.erase(ref.front().second);
        ref.pop_front();
      }
      ASSERT_EQ(w.size(), live.size()) << "step " << step;
    }
    auto probe = "id-" + std::to_string(r.below(next + 1));
    ASSERT_EQ(w.contains(probe), live.count(probe) == 1)
      << probe << " at step " << step;
  }
}

TEST(IdWindow, KeepsAtMost32BytesPerId) {
  id_window w;
  for (int i = 1; i <= 300000; ++i) {
    w.add("session-" + std::to_string(i), 1000);
    // Checked at every size, including right after a shard doubled (below
    // a thousand ids the 64 shards' smallest tables dominate).
    if (i >= 1024)
      ASSERT_LE(w.memory_bytes(), 32u * w.size()) << i << " ids";
  }
}

TEST(IdWindow, SavesAndLoadsExactly) {
  id_window w;
  for (int i = 0; i < 100; ++i)
    w.add("x" + std::to_string(i), 1000 * (i / 10 + 1));
  auto img = w.save();
  id_window v;
  ASSERT_EQ(v.load(img), "");
  EXPECT_EQ(v.size(), 100u);
  EXPECT_TRUE(v.contains("x42"));
  v.expire(5000);
  w.expire(5000);
  EXPECT_EQ(v.size(), w.size());
  EXPECT_FALSE(v.contains("x42"));
  EXPECT_TRUE(v.contains("x55"));
}

// A frozen window (a snapshot's, built on another thread) keeps what the
// window held when it was frozen while the window goes on adding and
// expiring ids: across chunk boundaries, with the oldest chunk partly
// expired, with none full, and empty.
TEST(IdWindow, AFrozenWindowKeepsItsIdsWhileTheWindowGoesOn) {
  seeded_rng r{11};
  id_window w;
  std::deque<std::pair<int64_t, uint64_t>> ref;  // (expiry second, fingerprint)
  int64_t now = 0;
  uint64_t next = 0;
  std::vector<std::pair<id_window::frozen, std::vector<uint64_t>>> frozen;
  for (int step = 0; step < 20000; ++step) {
    now += static_cast<int64_t>(r.below(4));
    for (auto k = r.below(4); k > 0; --k) {
      auto id = "f-" + std::to_string(next++);
      auto expires = std::max<int64_t>(now + 1000 + r.below(3) * 500,
                                       ref.empty() ? 0 : ref.back().first * 1000);
      w.add(id, expires);
      ref.emplace_back((expires + 999) / 1000, id_window::fingerprint(id));
    }
    if (r.below(40) == 0) {
      w.expire(now);
      while (!ref.empty() && ref.front().first * 1000 <= now)
        ref.pop_front();
    }
    if (r.below(500) == 0) {
      std::vector<uint64_t> fps;
      for (auto& x : ref)
        fps.push_back(x.second);
      auto f = w.freeze();
      ASSERT_EQ(f.size(), fps.size()) << "step " << step;
      frozen.emplace_back(std::move(f), std::move(fps));
    }
  }
  ASSERT_GE(frozen.size(), 20u);
  for (size_t i = 0; i < frozen.size(); ++i) {
    auto img = frozen[i].first.to_image();
    ASSERT_EQ(img.fingerprints, frozen[i].second) << "frozen window " << i;
    uint64_t total = 0;
    for (auto c : img.expiry_counts)
      total += c;
    EXPECT_EQ(total, img.fingerprints.size());
    id_window v;
    EXPECT_EQ(v.load(img), "") << "frozen window " << i;
  }
  // Expired to nothing, and frozen empty.
  w.expire(now + 10000);
  EXPECT_EQ(w.size(), 0u);
  EXPECT_EQ(w.freeze().size(), 0u);
  EXPECT_TRUE(w.save().fingerprints.empty());
  // Sizes around one chunk.
  for (size_t n : {size_t{1}, id_window::chunk_ids - 1, id_window::chunk_ids,
                   id_window::chunk_ids + 1, 3 * id_window::chunk_ids}) {
    id_window x;
    for (size_t i = 0; i < n; ++i)
      x.add("c" + std::to_string(i), 1000 + static_cast<int64_t>(i));
    EXPECT_EQ(x.freeze().to_image().fingerprints.size(), n);
    x.expire(1000 + static_cast<int64_t>(n / 2) * 1000);  // the oldest expire
    auto img = x.save();
    EXPECT_EQ(img.fingerprints.size(), x.size()) << n;
    id_window y;
    EXPECT_EQ(y.load(img), "") << n;
  }
}

TEST(IdWindow, RefusesAnInconsistentImage) {
  id_window w;
  w.add("a", 1000);
  w.add("b", 2000);
  auto good = w.save();
  auto bad = good;
  bad.expiry_counts.back() = 5;  // more ids than fingerprints
  id_window v;
  EXPECT_NE(v.load(bad), "");
  EXPECT_EQ(v.size(), 0u);
  bad = good;
  std::swap(bad.expiry_seconds[0], bad.expiry_seconds[1]);  // out of order
  EXPECT_NE(v.load(bad), "");
  bad = good;
  bad.fingerprints[1] = bad.fingerprints[0];  // repeated
  EXPECT_NE(v.load(bad), "");
  EXPECT_EQ(v.size(), 0u);
  bad = good;
  bad.expiry_seconds[1] = 9223372036854776;  // * 1000 would overflow
  EXPECT_EQ(v.load(bad), "recent session ids: an expiry time is out of range");
  EXPECT_EQ(v.size(), 0u);
  EXPECT_EQ(v.load(good), "");
}

TEST(IdWindow, FingerprintsAreFixed) {
  // Snapshots hold fingerprints: they must not change between builds.
  EXPECT_EQ(id_window::fingerprint("session-1"), 0xdf016efc657a36d2ULL);
  EXPECT_EQ(id_window::fingerprint(""), 0xc3817c016ba4ff30ULL);
  EXPECT_NE(id_window::fingerprint("a"), id_window::fingerprint("b"));
}

} // namespace
} // namespace nodepool
