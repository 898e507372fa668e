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
  // The `limit` + 1 smallest ids after `after` (one more says whether the
  // page is the last): a max-heap of that size over the live sessions.
  auto by_id = [](const pb::SessionRecord* a, const pb::SessionRecord* b) {
    return a->id() < b->id();
  };
  std::vector<const pb::SessionRecord*> heap;
  size_t keep = q.limit() + size_t{1};
  heap.reserve(keep);
  for (auto& [id, s] : sessions_) {
    if (s.id() <= q.after())
      continue;
    if (heap.size() < keep) {
      heap.push_back(&s);
      std::push_heap(heap.begin(), heap.end(), by_id);
    } else if (s.id() < heap.front()->id()) {
      std::pop_heap(heap.begin(), heap.end(), by_id);
      heap.back() = &s;
      std::push_heap(heap.begin(), heap.end(), by_id);
    }
  }
  std::sort_heap(heap.begin(), heap.end(), by_id);
  page.set_more(heap.size() > q.limit());
  if (page.more())
    heap.pop_back();
  for (auto* s : heap)
    *page.add_sessions() = *s;
  return page;
}

} // namespace nodepool
