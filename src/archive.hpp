#pragma once

#include <string>

#include "nodepool.pb.h"
#include "pool_state.hpp"
#include "storage.hpp"

namespace nodepool {

/// Largest answer to one archive query, and the default.
constexpr uint32_t archive_query_max = 10000;
constexpr uint32_t archive_query_default = 100;

/// Answers a query about sessions: by id, the live record from `pool` or
/// else the archived one; otherwise the archived sessions that ended at or
/// after `since`, in the order they ended, at most `limit` of them (`more`
/// says the list was cut). Returns an error text, empty on success. Reads
/// at most limit + 1 records, whatever the archive's size.
std::string query_archive(store& st, const pool_state& pool,
                          const pb::ArchiveQuery& q, pb::ArchiveAnswer& out);

} // namespace nodepool
