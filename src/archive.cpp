#include "archive.hpp"

#include <algorithm>

namespace nodepool {

std::string query_archive(store& st, const pool_state& pool,
                          const pb::ArchiveQuery& q, pb::ArchiveAnswer& out) {
  if (q.since() < 0)
    return "since must be a time in milliseconds, not negative";
  if (!q.id().empty()) {
    if (auto* live = pool.session(q.id())) {
      *out.add_sessions() = *live;
      return {};
    }
    std::optional<pb::SessionRecord> r;
    if (auto s = st.archived(q.id(), r); !s.ok())
      return s.error;
    if (r)
      *out.add_sessions() = std::move(*r);
    return {};
  }
  auto limit = q.limit() == 0 ? archive_query_default
                              : std::min(q.limit(), archive_query_max);
  // Resuming: what ended at `since` up to `after_id` came before, and is
  // not read again (many sessions may end in one millisecond).
  auto s = st.scan_archive_after(q.since(), q.after_id(),
                                 [&](const pb::SessionRecord& r) {
    if (static_cast<uint32_t>(out.sessions_size()) == limit) {
      out.set_more(true);
      return false;
    }
    *out.add_sessions() = r;
    return true;
  });
  return s.ok() ? std::string{} : s.error;
}

} // namespace nodepool
