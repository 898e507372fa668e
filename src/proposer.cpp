#include "proposer.hpp"

#include <algorithm>

namespace nodepool {

proposer::proposer(const replica& committed, uint64_t term)
    : proposer(committed.snapshot(), term) {}

proposer::proposer(const pb::Snapshot& committed, uint64_t term)
    : term_(term),
      next_index_(committed.last_index() + 1),
      last_now_(committed.last_now()) {
  pool_.restore(committed);
  pending_.set_term(term);
}

apply_result proposer::apply(pb::Command& cmd, int64_t clock_ms) {
  last_now_ = std::max(last_now_, clock_ms);
  auto r = pool_.apply(cmd, last_now_);
  if (r.changed && !r.refused) {
    auto* e = pending_.add_entries();
    e->set_index(next_index_++);
    e->set_now(last_now_);
    e->mutable_command()->Swap(&cmd);
  }
  return r;
}

std::string proposer::take_batch() {
  auto bytes = pending_.SerializeAsString();
  pending_.clear_entries();
  return bytes;
}

} // namespace nodepool
