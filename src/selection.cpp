#include "selection.hpp"

namespace nodepool {

namespace {

template <class Rank>
class ranked_selection : public selection_strategy {
public:
  explicit ranked_selection(Rank r) : rank_(r) {}
  node_rank rank(const pb::NodeRecord& n) const override { return rank_(n); }

private:
  Rank rank_;
};

template <class Rank>
std::unique_ptr<selection_strategy> ranked(Rank r) {
  return std::make_unique<ranked_selection<Rank>>(r);
}

} // namespace

std::unique_ptr<selection_strategy> make_reputation_selection() {
  return ranked([](const pb::NodeRecord& n) {
    return node_rank{-n.reputation(), -static_cast<double>(n.level())};
  });
}

std::unique_ptr<selection_strategy> make_latency_selection() {
  // Measured nodes, fastest first; unmeasured ones after them, so that new
  // nodes get measured without displacing known fast ones.
  return ranked([](const pb::NodeRecord& n) {
    bool measured = n.latency_ms() > 0;
    return node_rank{measured ? 0.0 : 1.0, measured ? n.latency_ms() : 0.0};
  });
}

std::unique_ptr<selection_strategy> make_random_selection() {
  // Every node ranks equal: the order is that of the random pool keys.
  return ranked([](const pb::NodeRecord&) { return node_rank{}; });
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
