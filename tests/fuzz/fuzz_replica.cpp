// What a member of a cluster takes from its peers: log entries (LogBatch
// bytes, from whoever leads) and snapshots (installed when it lags), both
// through src/replica.hpp. Whatever arrives:
//  - a batch or snapshot the replica refuses changes nothing;
//  - one it accepts leaves a pool that keeps I1..I5.
//
// Input: frames (fuzz_common.hpp): field 1 = a LogBatch to apply, field 2 =
// a snapshot to restore, in order.
#include "fuzz_common.hpp"
#include "replica.hpp"

using namespace nodepool;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  size_t archived = 0;
  replica r{[&](std::vector<pb::SessionRecord>& ended) {
              archived += ended.size();
            },
            true};
  for (auto& f : fuzz::frames(data, size, 32)) {
    if (f.is_varint)
      continue;
    auto before = r.snapshot_bytes();
    auto batches = r.batches_applied();
    if (f.field == 1) {
      auto o = r.apply(f.bytes);
      if (!o.ok && (r.snapshot_bytes() != before
                    || r.batches_applied() != batches))
        fuzz::fail("a refused batch changed the replica: " + o.error);
      if (o.ok)
        fuzz::require_invariants(r.pool(), "after an accepted batch");
    } else if (f.field == 2) {
      std::string err;
      if (!r.restore(f.bytes, err)) {
        if (r.snapshot_bytes() != before)
          fuzz::fail("a refused snapshot changed the replica: " + err);
      } else {
        fuzz::require_invariants(r.pool(), "after a restored snapshot");
      }
    }
  }
  return 0;
}
