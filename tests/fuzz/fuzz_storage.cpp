// Records read back from storage: log entries and a snapshot as raw bytes in
// a store, decoded by the store on load, then recover() (an oracle's start)
// and check_history() (`nodepool check`). recover() must give an error or a
// state that keeps I1..I5; neither may crash.
//
// The store here keeps raw bytes per key, as RocksDB does, so that records
// which do not decode, or whose index disagrees with their key, can be
// placed in it (the memory store of storage.hpp only accepts well-formed
// entries); it decodes them exactly as the memory store does.
//
// Input: the fields of a protobuf message; field 1 (bytes) = the stored
// snapshot, field 2 (bytes) = the next log entry, field 3 (varint) = leave
// value % 4 keys empty before the next entry.
#include <map>

#include "fuzz_common.hpp"
#include "recovery.hpp"
#include "storage.hpp"

using namespace nodepool;

namespace {

class raw_store : public store {
public:
  std::map<uint64_t, std::string> log;
  std::string snap;

  status append(const std::vector<pb::LogEntry>&,
                const std::vector<pb::SessionRecord>&, bool) override {
    return status::fail("read-only");
  }
  status save_snapshot_bytes(uint64_t, std::string) override {
    return status::fail("read-only");
  }
  status load_snapshot(std::optional<pb::Snapshot>& out) override {
    out.reset();
    if (snap.empty())
      return {};
    pb::Snapshot s;
    if (!s.ParseFromString(snap))
      return status::fail("snapshot does not decode");
    out = std::move(s);
    return {};
  }
  status scan_while(uint64_t from,
                    const std::function<bool(const pb::LogEntry&)>& f) override {
    for (auto i = log.lower_bound(from); i != log.end(); ++i) {
      pb::LogEntry e;
      if (!e.ParseFromString(i->second) || e.index() != i->first)
        return status::fail("log entry " + std::to_string(i->first)
                            + " does not decode");
      if (!f(e))
        break;
    }
    return {};
  }
  uint64_t last_index() const override {
    return log.empty() ? 0 : log.rbegin()->first;
  }
  // No archive: a history that ended sessions is reported by
  // check_history() as one whose archive is missing, not a crash.
  status archived(const std::string&,
                  std::optional<pb::SessionRecord>& out) override {
    out.reset();
    return {};
  }
  status scan_archive(int64_t,
                      const std::function<bool(const pb::SessionRecord&)>&) override {
    return {};
  }
};

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  raw_store st;
  uint64_t key = 1;
  for (auto& f : fuzz::frames(data, size, 256)) {
    if (f.field == 1 && !f.is_varint)
      st.snap = f.bytes;
    else if (f.field == 2 && !f.is_varint)
      st.log[key++] = f.bytes;
    else if (f.field == 3 && f.is_varint)
      key += f.value % 4;
  }
  {
    pool_state pool;
    recovered info;
    if (recover(st, pool, info).ok()) {
      fuzz::require_invariants(pool, "after recover()");
      if (info.last_index < st.last_index())
        fuzz::fail("recover() stopped before the last entry without an error");
    }
  }
  (void)check_history(st);
  (void)check_history(st, 3);
  return 0;
}
