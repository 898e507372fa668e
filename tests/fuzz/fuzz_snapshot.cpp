// Snapshots (pb::Snapshot) as read back from storage or received from an
// oracle's `state` reply. The bytes are decoded with ParseFromString and
//  - restored with pool_state::restore() and checked (the raw restore used
//    by `nodepool status` and by tests; it must not crash, whatever it holds),
//    checked as the snapshot writer checks records (check_snapshot, and on a
//    kept copy), and encoded from that copy: the same bytes as its message;
//  - placed into a memory store and loaded with recover(), the path an oracle
//    starts from: it must refuse the snapshot or give a state that keeps
//    I1..I5, and that state must then take commands without breaking them.
//
// Input: one serialized pb::Snapshot.
#include <set>

#include "fuzz_common.hpp"
#include "recovery.hpp"
#include "storage.hpp"

using namespace nodepool;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  pb::Snapshot snap;
  if (!snap.ParseFromArray(data, static_cast<int>(size)))
    return 0;
  {
    pool_state raw;
    raw.restore(snap);
    (void)raw.check_invariants();
    auto whole = raw.snapshot();
    (void)whole.SerializeAsString();
    // The HTTP lists' reads, on whatever the state holds: page after page,
    // ids strictly in order, and together the whole state's (a pool that
    // took commands has no empty id; a page starts after one).
    for (auto what : {pb::StateQuery::NODES, pb::StateQuery::SESSIONS}) {
      std::set<std::string> want, got;
      if (what == pb::StateQuery::NODES)
        for (auto& n : whole.nodes())
          want.insert(n.id());
      else
        for (auto& x : whole.sessions())
          want.insert(x.id());
      want.erase("");
      pb::StateQuery q;
      q.set_what(what);
      q.set_limit(3);
      for (;;) {
        auto page = raw.read(q);
        if (!page.error().empty())
          fuzz::fail("a page in bounds was refused: " + page.error());
        std::vector<std::string> ids;
        for (auto& n : page.nodes())
          ids.push_back(n.id());
        for (auto& x : page.sessions())
          ids.push_back(x.id());
        for (auto& id : ids) {
          if (id <= q.after() || !got.insert(id).second)
            fuzz::fail("a page repeats an id or is out of order: " + id);
          q.set_after(id);
        }
        if (!page.more())
          break;
        if (ids.empty())
          fuzz::fail("an empty page says there are more");
      }
      if (got != want)
        fuzz::fail("the pages do not hold the whole state's records");
    }
    pb::StateQuery models;
    models.set_what(pb::StateQuery::MODELS);
    (void)raw.read(models);
    // The snapshot writer's path: the records checked alone, and the bytes
    // written straight from a kept copy, which must be the message's own.
    (void)check_snapshot(snap);
    raw.set_kept_copy_from(0);
    auto frozen = raw.freeze();
    auto other = frozen;
    (void)frozen.check();
    auto direct = std::move(frozen).encode();
    if (direct != std::move(other).finish().SerializeAsString())
      fuzz::fail("a snapshot encoded from the kept copy differs from its message");
  }
  auto st = make_memory_store();
  if (!st->save_snapshot(snap).ok())
    return 0;
  pool_state pool;
  recovered info;
  if (!recover(*st, pool, info).ok())
    return 0;  // refused: what an oracle does with a bad snapshot
  fuzz::require_invariants(pool, "after recovering from the snapshot");
  // What an oracle does next: Recover, then ordinary traffic.
  int64_t now = pool.last_now() > 0 && pool.last_now() < (int64_t{1} << 50)
                  ? pool.last_now() + 10
                  : 1000;
  pb::Command c;
  c.mutable_recover();
  fuzz::apply_checked(pool, c, now);
  c.Clear();
  c.mutable_tick();
  fuzz::apply_checked(pool, c, now += 1000);
  for (auto& [id, n] : pool.nodes()) {
    c.Clear();
    c.mutable_register_()->set_node_id(id);
    c.mutable_register_()->set_public_key(n.public_key());
    c.mutable_register_()->add_models("m");
    auto r = fuzz::apply_checked(pool, c, now += 10);
    for (auto& e : r.events)
      if (e.has_test_requested()) {
        c.Clear();
        auto* t = c.mutable_test_result();
        t->set_node_id(id);
        t->set_test_id(e.test_requested().test_id());
        t->set_correct(5);
        t->set_total(5);
        fuzz::apply_checked(pool, c, now += 10);
      }
    if (pool.nodes().size() > 8)
      break;
  }
  c.Clear();
  auto* s = c.mutable_submit_session();
  s->set_session_id("fuzz-session");
  s->set_model("m");
  s->set_min_nodes(1);
  s->set_max_nodes(2);
  s->set_redundancy(1);
  fuzz::apply_checked(pool, c, now += 10);
  c.Clear();
  c.mutable_tick();
  fuzz::apply_checked(pool, c, now += 600'000);
  return 0;
}
