// Bounded reads of the live state: what the HTTP API's lists ask of the
// pool, page by page, so that a list costs the pool what it shows.
#include <algorithm>

#include "bounds.hpp"
#include "pool_state.hpp"

namespace nodepool {

pb::StatePage pool_state::read(const pb::StateQuery& q) const {
  pb::StatePage page;
  if (q.what() == pb::StateQuery::MODELS) {
    // by_model_ keeps an entry for every model ever named; those with no
    // live node are not on offer.
    std::vector<const std::string*> models;
    for (auto& [m, c] : by_model_)
      if (could_ever_serve(&c, 0, 1))
        models.push_back(&m);
    std::sort(models.begin(), models.end(),
              [](auto* a, auto* b) { return *a < *b; });
    for (auto* m : models)
      page.add_models(*m);
    return page;
  }
  if (q.limit() < 1 || q.limit() > bounds::page) {
    page.set_error("limit: 1.." + std::to_string(bounds::page));
    return page;
  }
  if (q.what() == pb::StateQuery::NODES) {
    auto i = nodes_.upper_bound(q.after());
    for (; i != nodes_.end() && page.nodes_size() < static_cast<int>(q.limit()); ++i)
      *page.add_nodes() = i->second;
    page.set_more(i != nodes_.end());
    return page;
  }
  if (q.what() != pb::StateQuery::SESSIONS) {
    page.set_error("what: nodes, sessions or models");
    return page;
  }
  auto& order = ordered_sessions();
  auto i = order.upper_bound(probe_of(q.after()));
  for (; i != order.end()
         && page.sessions_size() < static_cast<int>(q.limit());
       ++i)
    *page.add_sessions() = *i->rec;
  page.set_more(i != order.end());
  return page;
}

} // namespace nodepool
