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

class reputation_selection : public selection_strategy {
public:
  std::vector<std::string> pick(std::vector<const pb::NodeRecord*> xs,
                                size_t count,
                                const random_source& rnd) const override {
    shuffle(xs, rnd);
    std::stable_sort(xs.begin(), xs.end(), [](auto* a, auto* b) {
      if (a->reputation() != b->reputation())
        return a->reputation() > b->reputation();
      return a->level() > b->level();
    });
    return first_ids(xs, count);
  }
};

class random_selection : public selection_strategy {
public:
  std::vector<std::string> pick(std::vector<const pb::NodeRecord*> xs,
                                size_t count,
                                const random_source& rnd) const override {
    shuffle(xs, rnd);
    return first_ids(xs, count);
  }
};

class latency_selection : public selection_strategy {
public:
  std::vector<std::string> pick(std::vector<const pb::NodeRecord*> xs,
                                size_t count,
                                const random_source& rnd) const override {
    shuffle(xs, rnd);
    // Measured nodes, fastest first; unmeasured ones after them, so that
    // new nodes get measured without displacing known fast ones.
    std::stable_sort(xs.begin(), xs.end(), [](auto* a, auto* b) {
      bool ka = a->latency_ms() > 0, kb = b->latency_ms() > 0;
      if (ka != kb)
        return ka;
      return a->latency_ms() < b->latency_ms();
    });
    return first_ids(xs, count);
  }
};

} // namespace

std::unique_ptr<selection_strategy> make_reputation_selection() {
  return std::make_unique<reputation_selection>();
}

std::unique_ptr<selection_strategy> make_latency_selection() {
  return std::make_unique<latency_selection>();
}

std::unique_ptr<selection_strategy> make_random_selection() {
  return std::make_unique<random_selection>();
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
