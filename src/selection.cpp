#include "selection.hpp"

#include <algorithm>

#include "random.hpp"

namespace nodepool {

namespace {

std::vector<std::string> first_ids(const std::vector<const pb::NodeRecord*>& xs,
                                   size_t count) {
  std::vector<std::string> out;
  for (size_t i = 0; i < xs.size() && i < count; ++i)
    out.push_back(xs[i]->id());
  return out;
}

/// Every strategy is "shuffle, then a stable sort by some order": the shuffle
/// makes ties random (from the pool's own generator), the sort ranks. With
/// no order, the pick is uniformly random.
template <class Less>
class ranked_selection : public selection_strategy {
public:
  explicit ranked_selection(Less less) : less_(less) {}

  std::vector<std::string> pick(std::vector<const pb::NodeRecord*> xs,
                                size_t count,
                                const random_source& rnd) const override {
    shuffle(xs, rnd);
    // The first `count` of a stable sort, without sorting the rest: ties
    // are broken by the shuffled position, which is what stability keeps.
    if (count >= xs.size()) {
      std::stable_sort(xs.begin(), xs.end(), less_);
      return first_ids(xs, count);
    }
    std::vector<std::pair<const pb::NodeRecord*, size_t>> ranked;
    ranked.reserve(xs.size());
    for (size_t i = 0; i < xs.size(); ++i)
      ranked.emplace_back(xs[i], i);
    auto mid = ranked.begin() + static_cast<std::ptrdiff_t>(count);
    std::partial_sort(ranked.begin(), mid, ranked.end(),
                      [this](const auto& a, const auto& b) {
                        if (less_(a.first, b.first))
                          return true;
                        if (less_(b.first, a.first))
                          return false;
                        return a.second < b.second;
                      });
    std::vector<std::string> out;
    for (auto i = ranked.begin(); i != mid; ++i)
      out.push_back(i->first->id());
    return out;
  }

private:
  Less less_;
};

template <class Less>
std::unique_ptr<selection_strategy> ranked(Less less) {
  return std::make_unique<ranked_selection<Less>>(less);
}

} // namespace

std::unique_ptr<selection_strategy> make_reputation_selection() {
  return ranked([](const pb::NodeRecord* a, const pb::NodeRecord* b) {
    if (a->reputation() != b->reputation())
      return a->reputation() > b->reputation();
    return a->level() > b->level();
  });
}

std::unique_ptr<selection_strategy> make_latency_selection() {
  // Measured nodes, fastest first; unmeasured ones after them, so that new
  // nodes get measured without displacing known fast ones.
  return ranked([](const pb::NodeRecord* a, const pb::NodeRecord* b) {
    bool ka = a->latency_ms() > 0, kb = b->latency_ms() > 0;
    if (ka != kb)
      return ka;
    return a->latency_ms() < b->latency_ms();
  });
}

std::unique_ptr<selection_strategy> make_random_selection() {
  return ranked([](const pb::NodeRecord*, const pb::NodeRecord*) {
    return false;
  });
}

std::unique_ptr<selection_strategy> make_selection(const std::string& name) {
  if (name == "reputation")
    return make_reputation_selection();
  if (name == "random")
    return make_random_selection();
  if (name == "latency")
    return make_latency_selection();
  return nullptr;
}

} // namespace nodepool
