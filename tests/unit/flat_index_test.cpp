// The flat index and table behind the pool's lookups by id: checked against
// std::unordered_map over seeded random insertions and erasures, through
// growth, wrap-around runs and shrinking.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <unordered_map>

#include "flat_index.hpp"
#include "random.hpp"

namespace nodepool {
namespace {

struct rec {
  std::string name;
  int value = 0;
  const std::string& id() const { return name; }
};

/// The table's contents as an ordered map, through its iteration.
std::map<std::string, int> contents(const flat_table<rec>& t) {
  std::map<std::string, int> out;
  for (auto& [id, r] : t)
    EXPECT_TRUE(out.emplace(id, r.value).second) << "twice: " << id;
  return out;
}

TEST(FlatTable, AgreesWithAnUnorderedMapOverRandomChanges) {
  for (uint64_t seed : {1, 2, 3}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    seeded_rng r{seed};
    flat_table<rec> t;
    std::unordered_map<std::string, int> model;
    // Few distinct keys and long phases of growth then of shrinking, so
    // runs wrap, erasures shift entries back, and the array shrinks.
    for (int step = 0; step < 60000; ++step) {
      bool growing = (step / 10000) % 2 == 0;
      auto key = "k" + std::to_string(r.below(3000));
      if (r.chance(growing ? 0.7 : 0.25)) {
        auto [x, made] = t.try_emplace(key);
        EXPECT_EQ(made, model.count(key) == 0);
        x->name = key;
        x->value = step;
        model[key] = step;
      } else {
        EXPECT_EQ(t.erase(key), model.erase(key) == 1);
      }
      auto* found = t.find(key);
      auto m = model.find(key);
      ASSERT_EQ(found != nullptr, m != model.end());
      if (found)
        EXPECT_EQ(found->value, m->second);
      ASSERT_EQ(t.size(), model.size());
      if (step % 5000 == 0) {
        std::map<std::string, int> want(model.begin(), model.end());
        ASSERT_EQ(contents(t), want);
        for (auto& [k, v] : model)
          ASSERT_NE(t.find(k), nullptr) << k;
      }
    }
  }
}

TEST(FlatTable, RecordsStayPutAsTheTableGrowsAndShrinks) {
  flat_table<rec> t;
  auto* first = t.try_emplace("first").first;
  first->name = "first";
  for (int i = 0; i < 5000; ++i)
    t.try_emplace("n" + std::to_string(i)).first->name = "n" + std::to_string(i);
  EXPECT_EQ(t.find("first"), first);
  for (int i = 0; i < 5000; ++i)
    ASSERT_TRUE(t.erase("n" + std::to_string(i)));
  EXPECT_EQ(t.find("first"), first);
  EXPECT_EQ(t.size(), 1u);
}

TEST(FlatIndex, GivesItsMemoryBackWhenItEmpties) {
  std::vector<rec> recs(10000);
  flat_index<rec> idx;
  for (size_t i = 0; i < recs.size(); ++i) {
    recs[i].name = "r" + std::to_string(i);
    idx.insert(&recs[i]);
  }
  auto full = idx.memory_bytes();
  EXPECT_GE(full, recs.size() * 2 * 16);
  for (auto& x : recs)
    ASSERT_EQ(idx.erase(x.name), &x);
  EXPECT_TRUE(idx.empty());
  EXPECT_LT(idx.memory_bytes() * 100, full);  // not kept at its peak
  EXPECT_EQ(idx.find("r1"), nullptr);
  EXPECT_EQ(idx.erase("r1"), nullptr);
}

TEST(FlatTable, MovesItsRecordsWithIt) {
  flat_table<rec> a;
  a.try_emplace("x").first->value = 7;
  auto* x = a.find("x");
  flat_table<rec> b{std::move(a)};
  EXPECT_EQ(b.find("x"), x);
  EXPECT_TRUE(a.empty());  // NOLINT: a moved-from table is empty
  EXPECT_EQ(a.find("x"), nullptr);
}

} // namespace
} // namespace nodepool
