// The seeded simulation of a replicated pool (see sim.hpp). One run:
//   - 3 or 5 oracles, each the real actors (supervisor in cluster mode,
//     gateway, validator, session queue) over its own member of the
//     replicated log: libraft's own servers, on raft_fixture's simulated
//     network, disks and clock, stepped by hand in the same thread as CAF's
//     test_coordinator, so a seed replays the same;
//   - 5..10 miners behind links that drop, delay, duplicate and reorder, and
//     that move to whichever oracle says it leads (as `nodepool miner
//     --oracles` does), unless the link to it is cut;
//   - clients submitting sessions to an oracle, retrying the ones whose
//     answer they missed (not_leader, a timeout, an oracle gone);
//   - a fault schedule: partitions between oracles (both ways, one way, the
//     leader cut off), changing network and disk latencies (messages between
//     oracles delayed and reordered), messages between oracles sent twice,
//     the copy up to 100 ms later (in half the runs), leaders and followers
//     stopped at random points (a stopped oracle's actors die; its member
//     freezes or crashes, see below), disks that turn full (every write
//     fails until the member restarts; the member stops at its first
//     failed write), miners cut off from some oracles, killed and
//     silenced, and oracle clocks jumping.
// Checks: I1-I5 after every applied entry on every replica; each pool index
// holds the same batch on every member that applied it (log matching); at
// the end every member applied the same entries and holds the same state,
// byte for byte; every session acknowledged to a client is live or archived
// on every member; nothing is left unfinished after the quiet.
//
// Half the stops are crashes: the member restarts from what its disk kept
// (raft's log as stub_disk below models it, the archive as the memory
// store keeps it), and half of those take the power with them, losing
// raft's writes still in flight (a suffix of them) and the archive's
// unsynced writes. The other half freeze and resume with their memory.
#include "actors/sim.hpp"
#include "actors/sim_parts.hpp"

#include <cstring>
#include <deque>
#include <functional>
#include <optional>
#include <set>

#include <caf/all.hpp>
#include <nlohmann/json.hpp>

extern "C" {
#include <raft.h>
#include <raft/fixture.h>
}

#include "actors/config.hpp"
#include "actors/oracle.hpp"
#include "random.hpp"
#include "raft/raft_member.hpp"
#include "member_archive.hpp"
#include "replica.hpp"

namespace nodepool {

namespace {

using namespace sim_parts;
using ms = std::chrono::milliseconds;

constexpr int step_ms = 20;
constexpr int fault_steps = 500;    // faults during the first 10 s
constexpr int submit_steps = 600;   // sessions arrive during the first 12 s
constexpr int total_steps = 1000;   // then 8 s more of quiet
constexpr int settle_steps = 300;   // and 15 s more in 50 ms steps
constexpr int poll_every = 10;      // miners ask who leads every 200 ms

/// What the members applied, by pool index: the first member to apply the
/// batch that starts at an index sets it, every other must match it.
struct applied_log {
  std::map<uint64_t, std::pair<size_t, unsigned>> first;  // hash, member
  std::optional<std::string> broken;
};

/// A member's state machine: the pool's replica, and a record of each batch
/// it accepted.
class recording_machine final : public state_machine {
public:
  recording_machine(replica& rep, unsigned member,
                    std::shared_ptr<applied_log> log)
    : rep_(rep), inner_(rep), member_(member), log_(std::move(log)) {}
  void apply(std::string_view entry) override {
    auto before = rep_.last_index();
    inner_.apply(entry);
    if (rep_.last_index() == before)
      return;
    auto h = std::hash<std::string_view>{}(entry);
    auto [it, fresh] = log_->first.emplace(before + 1, std::make_pair(h, member_));
    if (!fresh && it->second.first != h && !log_->broken)
      log_->broken = "the batch at pool index " + std::to_string(before + 1)
                     + " differs between members "
                     + std::to_string(it->second.second + 1) + " and "
                     + std::to_string(member_ + 1);
  }
  std::string snapshot() override { return inner_.snapshot(); }
  std::function<std::string()> snapshot_later() override {
    return inner_.snapshot_later();
  }
  bool restore(std::string_view bytes, std::string& error) override {
    return inner_.restore(bytes, error);
  }
  bool check(std::string_view bytes, std::string& error) const override {
    return inner_.check(bytes, error);
  }
  std::string broken() const override { return inner_.broken(); }
  std::string follows(const std::vector<std::string_view>& entries,
                      size_t& bad) const override {
    return inner_.follows(entries, bad);
  }
  replica_machine& inner() { return inner_; }

private:
  replica& rep_;
  replica_machine inner_;
  unsigned member_;
  std::shared_ptr<applied_log> log_;
};

/// A crashed member's raft runs on until it is closed (its requests in
/// flight complete), but the process is gone: nothing reaches its state
/// machine, and it takes no snapshot (RAFT_BUSY: raft tries later).
void dead_fsm(struct raft_fsm& fsm) {
  fsm.apply = [](struct raft_fsm*, const struct raft_buffer*, void** result) {
    *result = nullptr;
    return 0;
  };
  fsm.snapshot = [](struct raft_fsm*, struct raft_buffer**, unsigned*) {
    return RAFT_BUSY;
  };
  // A snapshot being serialized when the process died is not written (the
  // state machine's finalize still frees what it holds).
  fsm.snapshot_async = [](struct raft_fsm*, struct raft_buffer**, unsigned*) {
    return RAFT_IOERR;
  };
  fsm.restore = [](struct raft_fsm*, struct raft_buffer* buf) {
    raft_free(buf->base);
    return 0;
  };
}

/// Each member's disk, below raft (and its guard), over raft_fixture's
/// in-memory I/O (libraft 0.15, src/fixture.c). The stub keeps its entries
/// in an array numbered from 1 whatever happened (after a snapshot install
/// it appends the next entries at index 1 of its array) and truncates at
/// once, ahead of appends still in flight; its load would return them
/// misnumbered. So the log a member would find on restart is kept here, by
/// index: raft's appends, truncations and snapshot installs reach it in
/// the order raft asked for them (as raft_uv writes them: a truncation or
/// an install waits for the appends before it), each once the fixture
/// completed it and everything asked before it. The stub still holds the
/// term, the vote and the last snapshot; its entry array is never read.
///
/// A crash (`crashed`) stops the disk: of the writes raft asked for before
/// the crash and the fixture had not completed, `may_land` still reach it
/// (all of them when a process dies, a random prefix when the power goes,
/// as a disk's cache loses a suffix); nothing asked for later does. A
/// snapshot raft was taking (not an install) is the stub's: it lands whole
/// when the fixture completes it.
struct disk_entry {
  raft_term term = 0;
  unsigned short type = RAFT_COMMAND;
  std::string bytes;
};
struct disk_op {
  enum kind_t { append, truncate, install, failed } kind = append;
  raft_index index = 0;  // the first entry appended; truncated from; installed at
  std::vector<disk_entry> entries;
  bool done = false;
};

struct stub_disk {
  int (*snapshot_put)(struct raft_io*, unsigned, struct raft_io_snapshot_put*,
                      const struct raft_snapshot*,
                      raft_io_snapshot_put_cb) = nullptr;
  // The network's duplicates (below raft and its guard): a copy of a sent
  // message, sent again later (see stub_send).
  int (*send)(struct raft_io*, struct raft_io_send*, const struct raft_message*,
              raft_io_send_cb) = nullptr;
  std::function<std::optional<raft_time>()> duplicate;  // delay, or none
  struct copy;
  std::deque<std::pair<raft_time, std::unique_ptr<copy>>> copies;  // due, copy
  int (*append)(struct raft_io*, struct raft_io_append*, const struct raft_entry[],
                unsigned, raft_io_append_cb) = nullptr;
  int (*snapshot_get)(struct raft_io*, struct raft_io_snapshot_get*,
                      raft_io_snapshot_get_cb) = nullptr;
  int (*load)(struct raft_io*, raft_term*, raft_id*, struct raft_snapshot**,
              raft_index*, struct raft_entry**, size_t*) = nullptr;
  int (*async_work)(struct raft_io*, struct raft_io_async_work*,
                    raft_io_async_work_cb) = nullptr;
  // Raft's requests the fixture has not completed yet: each holds raft's
  // memory, so a crashed member is closed only once there are none. (The
  // fixture's close does not wait for them: a snapshot's work that
  // completed after a restart ran its callback on the new raft, whose
  // pending snapshot it then freed as its own.)
  size_t inflight = 0;
  // The log as the disk holds it, and the writes on their way to it.
  std::map<raft_index, disk_entry> log;
  std::deque<disk_op> ops;
  raft_index next = 1;      // where raft's next append goes
  unsigned installs = 0;    // installs in flight (the stub truncates for them)
  bool started = false;     // raft loaded this disk once
  bool crashed = false;
  size_t may_land = 0;      // after a crash: writes that still reach the disk
  /// Full (or failing): every append completes with an error and writes
  /// nothing, until the member restarts (its operator made room).
  bool broken = false;
  /// An append failed: as raft_uv's `errored`, every append after it fails
  /// too, in flight or not, until the member restarts. A write that failed
  /// leaves nothing after it on a real disk: a later append that landed
  /// would leave a hole in the log that the restart refuses as corrupt
  /// (seed 5136 of 3 oracles: append 91 failed, then the disk's room came
  /// back at the faults' end and append 92, in flight, landed).
  bool errored = false;

  /// Writes what completed, in the order raft asked for it.
  void settle() {
    while (!ops.empty() && ops.front().done) {
      if (crashed) {
        if (may_land == 0)
          break;
        --may_land;
      }
      auto& op = ops.front();
      switch (op.kind) {
        case disk_op::append:
          log.erase(log.lower_bound(op.index), log.end());
          for (size_t k = 0; k < op.entries.size(); ++k)
            log[op.index + k] = std::move(op.entries[k]);
          break;
        case disk_op::truncate:
          log.erase(log.lower_bound(op.index), log.end());
          break;
        case disk_op::install:
          log.clear();
          break;
        case disk_op::failed:  // never written
          break;
      }
      ops.pop_front();
    }
  }
};
std::map<struct raft_io*, stub_disk> stub_disks;

/// Raft's callbacks for the requests in flight, by request; an append's or
/// an install's write too.
using any_cb = void (*)();
struct pending_req {
  struct raft_io* io = nullptr;
  any_cb cb = nullptr;
  disk_op* op = nullptr;
};
std::map<const void*, pending_req> pending_cbs;

template <class Cb>
void hold(struct raft_io* io, const void* req, Cb cb, disk_op* op = nullptr) {
  pending_cbs[req] = {io, reinterpret_cast<any_cb>(cb), op};
  ++stub_disks.at(io).inflight;
}

/// Raft's callback for `req`; its write, if it succeeded, is done.
template <class Cb>
Cb release(const void* req, int status) {
  auto it = pending_cbs.find(req);
  auto p = it->second;
  pending_cbs.erase(it);
  auto& d = stub_disks.at(p.io);
  --d.inflight;
  if (p.op) {
    if (status == 0) {
      p.op->done = true;
    } else {  // never written: later writes do not wait for it
      p.op->done = true;
      p.op->kind = disk_op::failed;
    }
    d.settle();
  }
  return reinterpret_cast<Cb>(p.cb);
}

/// What a member's disk holds: its snapshot's index and the log index of
/// its last entry (the snapshot's when it holds none after it).
struct disk_extent {
  raft_index snapshot = 0;
  raft_index last = 0;
};

/// The stub's term, vote and snapshot (its entries are freed unread).
int load_stub(struct raft_io* io, raft_term* term, raft_id* vote,
              struct raft_snapshot** snap) {
  raft_index start = 0;
  struct raft_entry* entries = nullptr;
  size_t n = 0;
  int rv = stub_disks.at(io).load(io, term, vote, snap, &start, &entries, &n);
  if (rv != 0)
    return rv;
  if (entries) {
    void* last = nullptr;
    for (size_t k = 0; k < n; ++k)
      if (entries[k].batch && entries[k].batch != last)
        raft_free(last = entries[k].batch);
    raft_free(entries);
  }
  return 0;
}

void free_snapshot(struct raft_snapshot* snap) {
  if (!snap)
    return;
  raft_configuration_close(&snap->configuration);
  for (unsigned k = 0; k < snap->n_bufs; ++k)
    raft_free(snap->bufs[k].base);
  raft_free(snap->bufs);
  raft_free(snap);
}

disk_extent extent_of(struct raft_io* io) {
  raft_term t = 0;
  raft_id v = 0;
  struct raft_snapshot* snap = nullptr;
  disk_extent e;
  if (load_stub(io, &t, &v, &snap) != 0)
    return e;
  e.snapshot = snap ? snap->index : 0;
  free_snapshot(snap);
  auto& log = stub_disks.at(io).log;
  e.last = std::max(e.snapshot, log.empty() ? 0 : log.rbegin()->first);
  return e;
}

/// A message kept to be sent again: its entries' bytes are its own, so
/// raft may free or compact the original meanwhile.
struct stub_disk::copy {
  struct raft_io_send req {};
  struct raft_message m {};
  std::vector<struct raft_entry> entries;
  std::string bytes;
  std::string address;
};

/// Sends a copy of some messages again, later: a duplicate that arrives
/// after the messages sent since (stale, reordered). Snapshot installs are
/// not duplicated (their configuration is raft's to copy).
int stub_send(struct raft_io* io, struct raft_io_send* req, const struct raft_message* m,
              raft_io_send_cb cb) {
  auto& d = stub_disks.at(io);
  if (m->type != RAFT_IO_INSTALL_SNAPSHOT && d.duplicate)
    if (auto delay = d.duplicate()) {
      auto c = std::make_unique<stub_disk::copy>();
      c->m = *m;
      c->address = m->server_address ? m->server_address : "";
      c->m.server_address = c->address.c_str();
      if (m->type == RAFT_IO_APPEND_ENTRIES && m->append_entries.n_entries > 0) {
        auto& a = m->append_entries;
        size_t total = 0;
        for (unsigned k = 0; k < a.n_entries; ++k)
          total += a.entries[k].buf.len;
        c->bytes.resize(std::max<size_t>(total, 1));
        c->entries.assign(a.entries, a.entries + a.n_entries);
        size_t off = 0;
        for (auto& e : c->entries) {
          std::memcpy(&c->bytes[off], e.buf.base, e.buf.len);
          e.buf.base = &c->bytes[off];
          e.batch = nullptr;
          off += e.buf.len;
        }
        c->m.append_entries.entries = c->entries.data();
      }
      d.copies.emplace_back(io->time(io) + *delay, std::move(c));
    }
  hold(io, req, cb);
  int rv = d.send(io, req, m, [](struct raft_io_send* r, int status) {
    release<raft_io_send_cb>(r, status)(r, status);
  });
  if (rv != 0)
    release<raft_io_send_cb>(req, rv);
  return rv;
}

/// Sends the copies that are due (the fixture copies a message when it
/// flushes the send; the copy is freed once that is done).
void send_due_copies(struct raft_io* io) {
  auto& d = stub_disks.at(io);
  auto now = io->time(io);
  for (auto i = d.copies.begin(); i != d.copies.end();) {
    if (i->first > now) {
      ++i;
      continue;
    }
    auto* c = i->second.release();
    i = d.copies.erase(i);
    c->req.data = c;
    if (d.send(io, &c->req, &c->m, [](struct raft_io_send* r, int) {
          delete static_cast<stub_disk::copy*>(r->data);
        }) != 0)
      delete c;
  }
}

/// Raft truncates its log from `index`: written after the appends before it.
/// (The stub calls this itself with 1 when it writes an installed
/// snapshot: the install's own write stands for that.)
int stub_truncate(struct raft_io* io, raft_index index) {
  auto& d = stub_disks.at(io);
  if (index == 1 && d.installs > 0)
    return 0;
  disk_op op;
  op.kind = disk_op::truncate;
  op.index = index;
  op.done = true;
  d.ops.push_back(std::move(op));
  d.next = index;
  d.settle();
  return 0;
}

int stub_snapshot_put(struct raft_io* io, unsigned trailing,
                      struct raft_io_snapshot_put* req,
                      const struct raft_snapshot* snap,
                      raft_io_snapshot_put_cb cb) {
  auto& d = stub_disks.at(io);
  disk_op* op = nullptr;
  if (trailing == 0) {
    // An install drops the log; raft's next append follows the snapshot.
    disk_op i;
    i.kind = disk_op::install;
    i.index = snap->index;
    d.ops.push_back(std::move(i));
    op = &d.ops.back();
    d.next = snap->index + 1;
    ++d.installs;
  }
  hold(io, req, cb, op);
  int rv = d.snapshot_put(io, trailing, req, snap,
                          [](struct raft_io_snapshot_put* r, int status) {
                            auto& dd = stub_disks.at(pending_cbs.at(r).io);
                            if (pending_cbs.at(r).op)
                              --dd.installs;
                            release<raft_io_snapshot_put_cb>(r, status)(r, status);
                          });
  if (rv != 0) {
    if (op)
      --d.installs;
    release<raft_io_snapshot_put_cb>(req, rv);
  }
  return rv;
}

int stub_append(struct raft_io* io, struct raft_io_append* req,
                const struct raft_entry entries[], unsigned n,
                raft_io_append_cb cb) {
  auto& d = stub_disks.at(io);
  disk_op op;
  op.kind = disk_op::append;
  op.index = d.next;
  for (unsigned k = 0; k < n; ++k)
    op.entries.push_back({entries[k].term, entries[k].type,
                          std::string(static_cast<const char*>(entries[k].buf.base),
                                      entries[k].buf.len)});
  d.ops.push_back(std::move(op));
  d.next += n;
  hold(io, req, cb, &d.ops.back());
  int rv = d.append(io, req, entries, n, [](struct raft_io_append* r, int status) {
    auto& dd = stub_disks.at(pending_cbs.at(r).io);
    if (status == 0 && (dd.broken || dd.errored))
      status = RAFT_IOERR;  // the write failed: nothing of it landed
    if (status != 0)
      dd.errored = true;
    release<raft_io_append_cb>(r, status)(r, status);
  });
  if (rv != 0) {
    d.next -= n;
    release<raft_io_append_cb>(req, rv);
  }
  return rv;
}

int stub_snapshot_get(struct raft_io* io, struct raft_io_snapshot_get* req,
                      raft_io_snapshot_get_cb cb) {
  hold(io, req, cb);
  int rv = stub_disks.at(io).snapshot_get(
    io, req, [](struct raft_io_snapshot_get* r, struct raft_snapshot* s, int status) {
      release<raft_io_snapshot_get_cb>(r, status)(r, s, status);
    });
  if (rv != 0)
    release<raft_io_snapshot_get_cb>(req, rv);
  return rv;
}

/// A snapshot taken off raft's loop (the state machine's snapshot_async):
/// in flight like a write.
int stub_async_work(struct raft_io* io, struct raft_io_async_work* req,
                    raft_io_async_work_cb cb) {
  hold(io, req, cb);
  int rv = stub_disks.at(io).async_work(
    io, req, [](struct raft_io_async_work* r, int status) {
      release<raft_io_async_work_cb>(r, status)(r, status);
    });
  if (rv != 0)
    release<raft_io_async_work_cb>(req, rv);
  return rv;
}

/// What raft finds when it starts: the stub's term, vote and snapshot, and
/// the log kept above. Entries that end before the snapshot are of no use
/// (the snapshot stands for them) and are dropped.
int stub_load(struct raft_io* io, raft_term* term, raft_id* vote,
              struct raft_snapshot** snap, raft_index* start,
              struct raft_entry** entries, size_t* n) {
  auto& d = stub_disks.at(io);
  if (!d.started) {
    // The first start: the stub holds what raft_fixture_bootstrap wrote
    // (the first configuration), numbered as it should be.
    d.started = true;
    raft_index st = 0;
    struct raft_entry* es = nullptr;
    size_t k = 0;
    if (int rv = d.load(io, term, vote, snap, &st, &es, &k); rv != 0)
      return rv;
    for (size_t j = 0; j < k; ++j)
      d.log[st + j] = {es[j].term, es[j].type,
                       std::string(static_cast<const char*>(es[j].buf.base),
                                   es[j].buf.len)};
    free_snapshot(*snap);
    if (es) {
      if (k > 0 && es[0].batch)
        raft_free(es[0].batch);
      raft_free(es);
    }
  }
  if (int rv = load_stub(io, term, vote, snap); rv != 0)
    return rv;
  raft_index s = *snap ? (*snap)->index : 0;
  auto& log = d.log;
  if (!log.empty() && log.rbegin()->first < s)
    log.clear();
  *entries = nullptr;
  *n = 0;
  *start = log.empty() ? s + 1 : log.begin()->first;
  d.next = log.empty() ? s + 1 : log.rbegin()->first + 1;
  if (log.empty())
    return 0;
  if (*start > s + 1 || log.rbegin()->first - *start + 1 != log.size()) {
    free_snapshot(*snap);
    *snap = nullptr;
    return RAFT_CORRUPT;  // a hole in the log: the model above is wrong
  }
  size_t total = 0;
  for (auto& [i, e] : log)
    total += e.bytes.size();
  auto* batch = static_cast<char*>(raft_malloc(std::max<size_t>(total, 8)));
  auto* es = static_cast<struct raft_entry*>(
    raft_malloc(log.size() * sizeof(struct raft_entry)));
  size_t off = 0, k = 0;
  for (auto& [i, e] : log) {
    std::memcpy(batch + off, e.bytes.data(), e.bytes.size());
    es[k].term = e.term;
    es[k].type = static_cast<decltype(es[k].type)>(e.type);
    es[k].buf.base = batch + off;
    es[k].buf.len = e.bytes.size();
    es[k].batch = batch;
    off += e.bytes.size();
    ++k;
  }
  *entries = es;
  *n = log.size();
  return 0;
}

void fix_stub_disk(struct raft_io* io) {
  auto& d = stub_disks[io];
  d = stub_disk{};
  d.snapshot_put = io->snapshot_put;
  d.send = io->send;
  d.append = io->append;
  d.snapshot_get = io->snapshot_get;
  d.load = io->load;
  d.async_work = io->async_work;
  io->truncate = stub_truncate;
  io->snapshot_put = stub_snapshot_put;
  io->send = stub_send;
  io->append = stub_append;
  io->snapshot_get = stub_snapshot_get;
  io->load = stub_load;
  io->async_work = stub_async_work;
}

/// The seam the supervisor sees, over a member stepped by the simulation.
class fixture_log final : public replicated_log {
public:
  fixture_log(raft_member& m, bool lie) : m_(m), lie_(lie) {}
  void propose(std::string entry, done_fn done) override {
    if (!lie_ || !m_.status().ready) {
      m_.propose(std::move(entry), std::move(done));
      return;
    }
    // sim_options::lying_log: "committed" before anyone else has it.
    m_.propose(std::move(entry), [](propose_status, uint64_t) {});
    done(propose_status::committed, 0);
  }
  log_status status() const override { return m_.status(); }
  void stop() override {}

private:
  raft_member& m_;
  bool lie_;
};

struct oracle_slot {
  std::shared_ptr<store> archive;
  std::shared_ptr<replica> rep;
  std::unique_ptr<recording_machine> rec;
  std::unique_ptr<raft_member> raft;
  std::shared_ptr<role_relay> roles;
  std::shared_ptr<fixture_log> log;
  std::shared_ptr<int64_t> skew = std::make_shared<int64_t>(0);
  oracle_handles actors;
  bool up = false;           // actors running
  int down_steps = 0;        // while stopped: steps before it may resume
  uint64_t stopped_term = 0;
  bool stopped_leading = false;
  // A crashed member restarts from its disk instead of resuming.
  bool crashed = false;
  std::vector<replica::archive_gap> gaps;
  bool guarded = false;  // its raft_io has been attached to a guard
};

class cluster_simulation {
public:
  cluster_simulation(uint64_t seed, const sim_options& opt)
    : seed_(seed), opt_(opt), rng_(mix64(seed ^ 0xc105e5ull)),
      n_(opt.oracles) {
    cfg_.testing();
    sys_ = std::make_unique<caf::actor_system>(cfg_);
    sched_ = &dynamic_cast<caf::scheduler::test_coordinator&>(sys_->scheduler());
    log_->tracing = opt.trace;
    res_.seed = seed;
  }

  ~cluster_simulation() {
    shutdown();
    if (fixture_up_) {
      raft_fixture_close(&f_);
      for (auto* io : ios_)
        stub_disks.erase(io);
    }
  }

  sim_result run() {
    draw_parameters();
    if (!start_cluster())
      return finish();
    spawn_miners();
    for (int step = 0; step < total_steps && ok(); ++step) {
      log_->now = static_cast<int64_t>(step) * step_ms;
      if (step == fault_steps) {
        net_->on = false;
        heal_oracles();
        for (auto& [io, d] : stub_disks)
          d.broken = false;  // room made on every disk (one that failed a write stopped)
        log_->note("faults_end");
      }
      if (step < submit_steps && submitted_ < sessions_wanted_
          && rng_.chance(0.06))
        submit(next_session());
      if (step % 25 == 0)
        resubmit_unknown();
      if (step < fault_steps) {
        inject_oracle_faults();
        inject_miner_faults();
      }
      if (step % 100 == 50)
        restore_miners();
      if (step % poll_every == 0)
        follow_leader();
      resume_oracles(false);
      advance(step_ms);
    }
    if (ok())
      settle();
    if (ok())
      verify();
    return finish();
  }

private:
  bool ok() const { return res_.violations.empty(); }

  void violation(std::string inv, std::string detail) {
    if (!ok())
      return;
    res_.violations.push_back({seed_, std::move(inv), std::move(detail)});
  }

  void draw_parameters() {
    auto d = draw_run(rng_, seed_, *net_, false);
    p_ = d.pool;
    if (opt_.tests_in_flight > 0)
      p_.max_tests_in_flight = opt_.tests_in_flight;
    // Nodes get longer to reach a new leader; sessions wait out elections.
    p_.heartbeat_timeout_ms = 600;
    p_.queue_timeout_ms = 12000;
    sessions_wanted_ = d.sessions_wanted;
    election_ms_ = 150 + static_cast<unsigned>(rng_.below(250));
    snapshot_threshold_ = 8 + static_cast<unsigned>(rng_.below(56));
    // Half the runs duplicate messages between oracles (0.5 to 5 %).
    dup_rate_ = rng_.chance(0.5) ? 0.0 : (5 + rng_.below(46)) / 1000.0;
  }


  bool start_cluster() {
    if (raft_fixture_initialize(&f_) != 0) {
      violation("harness", "raft_fixture_initialize failed");
      return false;
    }
    fixture_up_ = true;
    oracles_.resize(n_);
    leads_->assign(n_, false);
    for (unsigned i = 0; i < n_; ++i) {
      auto& o = oracles_[i];
      o.archive = std::shared_ptr<store>(make_memory_store());
      make_member_state(i);
      if (raft_fixture_grow(&f_, o.raft->fsm()) != 0) {
        violation("harness", "raft_fixture_grow failed");
        return false;
      }
      auto* r = raft_fixture_get(&f_, i);
      fix_stub_disk(r->io);  // below raft_member's guard, as a network is
      if (dup_rate_ > 0)
        stub_disks.at(r->io).duplicate = [this]() -> std::optional<raft_time> {
          if (!net_->on || !dup_rng_.chance(dup_rate_))
            return std::nullopt;
          log_->note("oracle_msg_duplicate");
          return dup_rng_.below(100);
        };
      ios_.push_back(r->io);
      o.roles = std::make_shared<role_relay>();
      configure_member(i);
      raft_fixture_set_network_latency(&f_, i, 2 + rng_.below(20));
      raft_fixture_set_disk_latency(&f_, i, 1 + rng_.below(15));
    }
    struct raft_configuration conf;
    if (raft_fixture_configuration(&f_, n_, &conf) != 0
        || raft_fixture_bootstrap(&f_, &conf) != 0) {
      violation("harness", "raft_fixture_bootstrap failed");
      return false;
    }
    raft_configuration_close(&conf);
    draw_election_timers();
    if (raft_fixture_start(&f_) != 0) {
      violation("harness", "raft_fixture_start failed");
      return false;
    }
    for (unsigned i = 0; i < n_; ++i)
      start_oracle_now(i);
    return true;
  }

  /// Adds what the guard of member `i`'s raft_io did in this life to the
  /// result (the counts start again at each attach).
  void count_guard(unsigned i) {
    if (!oracles_[i].guarded || !opt_.raft_guard)
      return;
    auto* io = raft_fixture_get(&f_, i)->io;
    auto& g = res_.raft_guard;
    guard_counts_of(io).each([&](const char* name, uint64_t n) { g[name] += n; });
    g["snapshots_refused"] += snapshots_refused_of(io);
    g["peers_refused"] += refused_peers_of(io);
  }

  /// Raft's settings and the pool's side of member `i`, after raft_init.
  void configure_member(unsigned i) {
    auto& o = oracles_[i];
    auto* r = raft_fixture_get(&f_, i);
    count_guard(i);  // attaching starts the counts again
    o.raft->attach(r);
    o.guarded = true;
    raft_set_election_timeout(r, election_ms_);
    raft_set_heartbeat_timeout(r, 50);
    raft_set_snapshot_threshold(r, snapshot_threshold_);
    raft_set_snapshot_trailing(r, 4 + snapshot_threshold_ / 4);
    raft_set_pre_vote(r, true);
    raft_set_install_snapshot_timeout(r, 2000);
    auto roles = o.roles;
    o.raft->on_role_change([roles](const log_status& s) { roles->publish(s); });
    o.log = std::make_shared<fixture_log>(*o.raft, opt_.lying_log);
  }

  /// A member's replica, state machine and raft side, over its archive as
  /// the archive is (after a restart: as its disk kept it).
  void make_member_state(unsigned i) {
    auto& o = oracles_[i];
    o.raft.reset();
    o.rec.reset();
    // As an oracle does (member_archive.hpp): ended sessions to the
    // archive, gaps a snapshot install leaves recorded for the backfill.
    auto errors = archive_errors_;
    o.rep = member_replica(o.archive, true, [errors](const std::string& e) {
      if (errors->empty())
        *errors = e;
    });
    o.rep->set_kept_copy_from(0);  // raft snapshots from the kept copy
    o.rep->set_copy_ahead(4, 2);   // partly copied ahead, partly at the freeze
    o.rec = std::make_unique<recording_machine>(*o.rep, i, applied_);
    o.raft = std::make_unique<raft_member>(*o.rec, opt_.raft_guard);
  }

  // The machine the supervisor is handed is the recording machine's inner
  // replica_machine: the same lock, the same replica.
  std::shared_ptr<replica_machine> machine_of(unsigned i) {
    auto& o = oracles_[i];
    return std::shared_ptr<replica_machine>(&o.rec->inner(),
                                            [](replica_machine*) {});
  }

  void start_oracle_now(unsigned i) {
    auto& o = oracles_[i];
    supervisor_config sc;
    sc.pool = p_;
    sc.storage = o.archive;
    sc.sim_time = true;
    sc.async_snapshots = false;
    sc.clock_skew_ms = o.skew;
    sc.cluster_log = o.log;
    sc.replica = machine_of(i);
    sc.roles = o.roles;
    sc.peer_gateway = [this](uint64_t id) {
      auto& p = oracles_[id - 1];
      return p.up ? p.actors.gateway : caf::actor{};
    };
    for (unsigned k = 0; k < n_; ++k)
      sc.member_addresses[k + 1] = "oracle-" + std::to_string(k + 1);
    o.actors = start_oracle(*sys_, sc);
    o.up = true;
    sched_->run();
  }

  /// `role` is "leader" or "follower". Half the stops freeze the member
  /// (it resumes with its memory); the others crash it: it restarts from
  /// what its disk kept (restart_member), and half of those crashes take
  /// the power with them.
  void stop_oracle_now(unsigned i, const std::string& role, bool must_crash = false) {
    auto& o = oracles_[i];
    for (auto& a : {o.actors.gateway, o.actors.validator, o.actors.sessions,
                    o.actors.supervisor, o.actors.backfill})
      caf::anon_send_exit(a, caf::exit_reason::kill);
    o.up = false;
    // The fault model: a majority always up (a stop past it is the
    // harness's error, not the pool's).
    if (n_ - alive_count() > (n_ - 1) / 2)
      violation("harness", "a majority of the members stopped ("
                             + std::to_string(n_ - alive_count()) + " of "
                             + std::to_string(n_) + ", the last " + std::to_string(i + 1)
                             + ")");
    auto* r = raft_fixture_get(&f_, i);
    o.stopped_term = r->current_term;
    o.stopped_leading = raft_state(r) == RAFT_LEADER;
    raft_fixture_kill(&f_, i);
    o.down_steps = 5 + static_cast<int>(rng_.below(60));
    o.crashed = must_crash || (opt_.restarts && crash_rng_.chance(0.5));
    std::string what = "oracle " + std::to_string(i + 1) + " in term "
                       + std::to_string(o.stopped_term);
    if (!o.crashed) {
      log_->note(role + "_stop", what);
    } else {
      // The process is gone: nothing it still had in flight reaches its
      // archive, nor its state machine. Raft's requests already with the
      // disk or the network complete (they hold raft's memory); what they
      // write after this moment is what a power cut takes back.
      dead_fsm(*o.raft->fsm());
      auto& d = stub_disks.at(r->io);
      d.crashed = true;
      d.may_land = d.ops.size();
      bool cut = crash_rng_.chance(0.5);
      if (cut) {
        power_cut(*o.archive);  // its unsynced archive writes
        d.may_land = crash_rng_.below(d.ops.size() + 1);
        // sim_options::lying_disk: writes it acknowledged as synced go too.
        if (opt_.lying_disk)
          for (int k = 0; k < 3 && !d.log.empty(); ++k)
            d.log.erase(std::prev(d.log.end()));
      }
      log_->note(role + "_crash", what);
      if (cut)
        log_->note("power_cut", "oracle " + std::to_string(i + 1));
      if (d.may_land < d.ops.size())
        log_->note("unsynced_writes_lost",
                   "oracle " + std::to_string(i + 1) + ": "
                     + std::to_string(d.ops.size() - d.may_land) + " of "
                     + std::to_string(d.ops.size()) + " raft writes in flight");
    }
    for (auto& m : miners_)
      if (m.alive && conn_[m.id] == static_cast<int>(i))
        disconnect(m);
  }

  /// A stopped oracle resumes when its time is up. One that led resumes
  /// only once another member was elected in a later term: resuming in the
  /// term it led would let new actors propose behind entries their
  /// predecessors left in the log, which a real restart (a follower, from
  /// disk) never does.
  void resume_oracles(bool now) {
    for (unsigned i = 0; i < n_; ++i) {
      auto& o = oracles_[i];
      if (o.up || (!now && o.down_steps-- > 0))
        continue;
      if (o.crashed) {
        if (stub_disks.at(raft_fixture_get(&f_, i)->io).inflight == 0)
          restart_member(i);
        continue;
      }
      if (o.stopped_leading && elected_after_[i] <= o.stopped_term)
        continue;
      raft_fixture_revive(&f_, i);
      log_->note("oracle_resume", std::to_string(i + 1));
      start_oracle_now(i);
    }
  }

  /// Member `i` crashed (stop_oracle_now) and raft's requests in flight
  /// are complete: raft is closed, and a new raft, replica and set of
  /// actors start from what its disk kept (stub_disk) and what its archive
  /// kept, as an oracle restarting from its data directory does. It comes
  /// back a follower, in the term it had written.
  void restart_member(unsigned i) {
    auto& o = oracles_[i];
    auto* r = raft_fixture_get(&f_, i);
    auto* io = r->io;
    auto& d = stub_disks.at(io);
    raft_close(r, nullptr);
    // Every request raft made is complete: what did not reach the disk
    // by now never will.
    d.ops.clear();
    d.crashed = false;
    d.may_land = 0;
    d.broken = false;
    d.errored = false;
    auto now = extent_of(io);
    std::string what = std::to_string(i + 1) + " from its disk: snapshot "
                       + std::to_string(now.snapshot) + ", entries to "
                       + std::to_string(now.last);
    make_member_state(i);
    if (int rv = raft_init(r, io, o.raft->fsm(), i + 1, f_.servers[i].address);
        rv != 0) {
      violation("harness", "raft_init on restart: " + std::string(raft_strerror(rv)));
      return;
    }
    r->tracer = &f_.servers[i].tracer;
    configure_member(i);
    draw_election_timers();
    if (int rv = raft_start(r); rv != 0) {
      // raft's message names the layer ("io: ") even when the stub disk
      // gave no detail: only a detail is worth printing.
      std::string detail = raft_errmsg(r);
      while (!detail.empty() && (detail.back() == ' ' || detail.back() == ':'))
        detail.pop_back();
      if (detail == "io")
        detail.clear();
      violation("restart", "oracle " + std::to_string(i + 1)
                             + " could not start from its disk: "
                             + raft_strerror(rv)
                             + (detail.empty() ? "" : " (" + detail + ")"));
      return;
    }
    o.crashed = false;
    raft_fixture_revive(&f_, i);
    log_->note("oracle_restart", what + " (pool entry "
                                   + std::to_string(o.rep->last_index())
                                   + ", archive to "
                                   + std::to_string(o.rep->archived_index()) + ")");
    start_oracle_now(i);
  }

  unsigned alive_count() const {
    unsigned k = 0;
    for (auto& o : oracles_)
      k += o.up;
    return k;
  }

  /// Members stopped, and members up whose disk fails (they stop at their
  /// next write): the fault schedule keeps these a minority.
  unsigned stopped_or_failing() {
    unsigned k = n_ - alive_count();
    for (unsigned j = 0; j < n_; ++j)
      if (oracles_[j].up && !oracles_[j].crashed
          && stub_disks.at(raft_fixture_get(&f_, j)->io).broken)
        ++k;
    return k;
  }

  /// Whether one more member may stop, the majority still up.
  bool room() { return stopped_or_failing() < (n_ - 1) / 2; }

  void heal_oracles() {
    for (unsigned i = 0; i < n_; ++i)
      for (unsigned j = 0; j < n_; ++j)
        if (i != j && raft_fixture_alive(&f_, i) && raft_fixture_alive(&f_, j)) {
          raft_fixture_reconnect(&f_, i, j);
          raft_fixture_desaturate(&f_, i, j);
        }
    for (auto& c : cut_)
      c.second = false;
  }

  void partition(unsigned i, unsigned j) {
    raft_fixture_disconnect(&f_, i, j);
    raft_fixture_disconnect(&f_, j, i);
  }

  std::optional<unsigned> raft_leader() {
    std::optional<unsigned> best;
    uint64_t term = 0;
    for (unsigned i = 0; i < n_; ++i) {
      auto* r = raft_fixture_get(&f_, i);
      if (raft_fixture_alive(&f_, i) && raft_state(r) == RAFT_LEADER
          && r->current_term >= term) {
        best = i;
        term = r->current_term;
      }
    }
    return best;
  }

  void inject_oracle_faults() {
    auto i = static_cast<unsigned>(rng_.below(n_));
    auto j = static_cast<unsigned>(rng_.below(n_));
    auto name = [](unsigned k) { return std::to_string(k + 1); };
    if (i != j && rng_.chance(0.003)) {
      partition(i, j);
      log_->note("oracle_partition", name(i) + "<->" + name(j));
    }
    if (i != j && rng_.chance(0.0015)) {
      raft_fixture_saturate(&f_, i, j);
      log_->note("oracle_one_way_loss", name(i) + "->" + name(j));
    }
    if (rng_.chance(0.0015))
      if (auto l = raft_leader()) {
        for (unsigned k = 0; k < n_; ++k)
          if (k != *l)
            partition(*l, k);
        log_->note("leader_cut_off", name(*l));
      }
    if (rng_.chance(0.004)) {
      heal_oracles();
      log_->note("oracle_heal");
    }
    // Stops: at most a minority at a time, counting the members whose disk
    // is failing (they stop at their next write). Asked again before each
    // stop: two in one step made a majority.
    if (room() && rng_.chance(0.003))
      if (auto l = raft_leader(); l && oracles_[*l].up)
        stop_oracle_now(*l, "leader");
    if (room() && oracles_[i].up && rng_.chance(0.002)) {
      auto l = raft_leader();
      if (!l || *l != i)
        stop_oracle_now(i, "follower");
    }
    if (rng_.chance(0.004)) {
      auto d = 1 + static_cast<unsigned>(rng_.below(80));
      raft_fixture_set_network_latency(&f_, i, d);
      log_->note("oracle_latency", name(i) + " sends in " + std::to_string(d) + "ms");
    }
    if (rng_.chance(0.002)) {
      auto d = 1 + static_cast<unsigned>(rng_.below(60));
      raft_fixture_set_disk_latency(&f_, i, d);
      log_->note("oracle_disk_latency", name(i) + " writes in " + std::to_string(d) + "ms");
    }
    // A disk that fails raft's writes (full, say) on a member that is up:
    // the member stops (as an oracle does when a write to its log fails)
    // and starts again from what its disk kept. At most a minority down.
    // (Its own generator: the rest of the schedule stays what it was.)
    if (opt_.restarts && room() && disk_rng_.chance(0.001)) {
      auto k = static_cast<unsigned>(disk_rng_.below(n_));
      auto* r = raft_fixture_get(&f_, k);
      if (oracles_[k].up && !oracles_[k].crashed && !stub_disks.at(r->io).broken) {
        stub_disks.at(r->io).broken = true;
        log_->note("oracle_disk_error", name(k) + (raft_state(r) == RAFT_LEADER
                                                     ? " (leader)" : " (follower)"));
      }
    }
    if (rng_.chance(0.002)) {
      auto d = 200 + static_cast<int64_t>(rng_.below(2000));
      bool back = rng_.chance(0.5);
      *oracles_[i].skew += back ? -d : d;
      log_->note("clock_jump", "oracle " + name(i) + (back ? " back " : " forward ")
                                 + std::to_string(d) + "ms");
    }
  }

  /// libraft's fixture answers raft's draw of a random election timeout
  /// with a fixed value per member (1,000 ms + 100 ms per index, whatever
  /// the timeout set): members then time out in lock step, and two of them
  /// can break each other's elections for good. (Seeds 13530 and 14875 of
  /// 3 oracles: the member behind in its log restarted its election, in a
  /// new term, each time the one that could win had just started its own,
  /// and the leader stopped before waited for a new one.) raft_uv draws
  /// it anew in [timeout, 2 x timeout) at every reset; so does the
  /// simulation, from a generator of its own, before every step.
  void draw_election_timers() {
    for (unsigned i = 0; i < n_; ++i)
      raft_fixture_set_randomized_election_timeout(
        &f_, i, election_ms_ + static_cast<unsigned>(timer_rng_.below(election_ms_)));
  }

  /// Runs raft and the actors for `ms_` of simulated time.
  void advance(int ms_) {
    draw_election_timers();
    auto target = raft_fixture_time(&f_) + static_cast<raft_time>(ms_);
    while (raft_fixture_time(&f_) < target && ok()) {
      raft_fixture_step(&f_);
      after_raft_step();
    }
    sched_->advance_time(ms(ms_));
    drain();
  }

  void after_raft_step() {
    std::vector<unsigned> failed_writes;
    for (unsigned i = 0; i < n_; ++i) {
      auto& o = oracles_[i];
      send_due_copies(raft_fixture_get(&f_, i)->io);
      o.raft->poll();
      auto st = o.raft->status();
      if (st.role == log_role::leader && st.ready)
        for (unsigned k = 0; k < n_; ++k)
          if (k != i)
            elected_after_[k] = std::max(elected_after_[k], st.term);
      if (st.role == log_role::leader && st.ready && st.term > last_term_) {
        last_term_ = st.term;
        ++res_.leader_changes;
      }
      for (auto& g : o.rep->take_archive_gaps())
        o.gaps.push_back(g);
      if (o.up && !st.write_error.empty())
        failed_writes.push_back(i);
      // The guard lets in only snapshots the replica's check passes: one
      // that then fails to restore is a check and a restore that disagree.
      if (!st.restore_error.empty())
        violation("snapshot_restore", "oracle " + std::to_string(i + 1) + ": "
                                        + st.restore_error);
      if (!st.apply_error.empty())
        violation("log_follow", "oracle " + std::to_string(i + 1) + ": "
                                  + st.apply_error);
    }
    // A member whose write to its log failed stops (see raft_member.cpp,
    // 6.): a crash, from which it restarts with what its disk kept.
    for (auto i : failed_writes)
      stop_oracle_now(i, "disk_error", true);
    check_replicas();
  }

  void drain() {
    while (ok() && sched_->try_run_once())
      ;
    check_replicas();
  }

  void check_replicas() {
    if (!ok())
      return;
    if (!archive_errors_->empty()) {
      violation("archive", *archive_errors_);
      return;
    }
    if (applied_->broken) {
      violation("log_matching", *applied_->broken);
      return;
    }
    for (unsigned i = 0; i < n_; ++i) {
      auto& r = *oracles_[i].rep;
      if (!r.violations().empty()) {
        auto& v = r.violations().front();
        violation(v.invariant, "oracle " + std::to_string(i + 1) + ": " + v.detail);
        return;
      }
      if (r.batches_refused() > 0) {
        violation("replica", "oracle " + std::to_string(i + 1)
                               + " refused a committed batch");
        return;
      }
    }
  }

  // -- miners ----------------------------------------------------------------

  void spawn_miners() {
    auto n = 5 + rng_.below(6);
    for (size_t i = 0; i < n; ++i) {
      miner_slot m;
      m.id = "m" + std::to_string(i);
      m.kind = i < opt_.healthy_nodes ? behaviour::healthy
                                      : static_cast<behaviour>(rng_.below(6));
      if (m.kind != behaviour::healthy)
        log_->note("behaviour_" + to_string(m.kind), m.id);
      miners_.push_back(m);
      conn_[m.id] = -1;
      for (unsigned k = 0; k < n_; ++k)
        cut_[{m.id, k}] = false;
    }
    res_.nodes = miners_.size();
    for (auto& m : miners_)
      start_miner(m);
    sched_->run();
  }

  void start_miner(miner_slot& m) {
    m.node = spawn_node(*sys_, miner_node(m.id, m.kind, seed_, m.lives++, p_),
                        caf::actor{});
    m.alive = true;
    m.silent = false;
    conn_[m.id] = -1;
    if (leader_hint_ >= 0 && !cut_[{m.id, static_cast<unsigned>(leader_hint_)}])
      connect(m, static_cast<unsigned>(leader_hint_));
  }

  void connect(miner_slot& m, unsigned k) {
    if (m.link)
      caf::anon_send_exit(m.link, caf::exit_reason::kill);
    m.link = spawn_link(*sys_, m.node, oracles_[k].actors.gateway, m.id,
                        rng_.next(), net_, log_);
    caf::anon_send(m.node, connect_atom::value, m.link);
    conn_[m.id] = static_cast<int>(k);
  }

  /// The connection goes (the miner notices when it asks who leads).
  void disconnect(miner_slot& m) {
    if (m.link)
      caf::anon_send_exit(m.link, caf::exit_reason::kill);
    m.link = caf::actor{};
    conn_[m.id] = -1;
  }

  /// What a miner process does every poll: asks the oracles it can reach
  /// who leads (through their gateways, as `connect_leader` does) and moves
  /// its nodes there. The answers arrive during the next drain.
  void follow_leader() {
    // Act on the answers of the previous poll.
    std::optional<unsigned> leader;
    for (unsigned k = 0; k < n_; ++k)
      if ((*leads_)[k] && oracles_[k].up)
        leader = k;
    leader_hint_ = leader ? static_cast<int>(*leader) : -1;
    for (auto& m : miners_) {
      if (!m.alive || m.silent)
        continue;
      if (!leader) {
        continue;
      }
      if (cut_[{m.id, *leader}]) {
        if (conn_[m.id] == static_cast<int>(*leader))
          disconnect(m);
        continue;
      }
      if (conn_[m.id] != static_cast<int>(*leader)) {
        log_->note("miner_moves", m.id + " to oracle " + std::to_string(*leader + 1));
        connect(m, *leader);
      }
    }
    // Ask again.
    leads_->assign(n_, false);
    for (unsigned k = 0; k < n_; ++k) {
      if (!oracles_[k].up)
        continue;
      auto gw = oracles_[k].actors.gateway;
      auto leads = leads_;
      sys_->spawn([=](caf::event_based_actor* self) {
        self->request(gw, ms(150), cluster_atom::value)
          .then(
            [=](const std::string& text) {
              auto j = nlohmann::json::parse(text, nullptr, false);
              if (j.is_object() && j.value("role", "") == "leader"
                  && j.value("ready", false))
                (*leads)[k] = true;
            },
            [=](caf::error&) {});
      });
    }
  }

  void inject_miner_faults() {
    auto& m = miners_[rng_.below(miners_.size())];
    if (m.alive && rng_.chance(0.004)) {
      log_->note("miner_kill", m.id);
      caf::anon_send_exit(m.node, caf::exit_reason::kill);
      disconnect(m);
      m.alive = false;
      return;
    }
    if (m.alive && !m.silent && rng_.chance(0.004)) {
      log_->note("miner_silence", m.id);
      caf::anon_send(m.node, connect_atom::value, caf::actor{});
      disconnect(m);
      m.silent = true;
      return;
    }
    if (rng_.chance(0.006)) {
      auto k = static_cast<unsigned>(rng_.below(n_));
      cut_[{m.id, k}] = true;
      log_->note("miner_cut", m.id + " from oracle " + std::to_string(k + 1));
      if (conn_[m.id] == static_cast<int>(k))
        disconnect(m);
    }
  }

  void restore_miners() {
    for (auto& m : miners_) {
      if (!m.alive && m.kind != behaviour::crash) {
        log_->note("miner_restart", m.id);
        start_miner(m);
      } else if (m.alive && m.silent) {
        m.silent = false;  // it moves to the leader at the next poll
      }
    }
  }

  // -- clients ---------------------------------------------------------------

  pb::SubmitSession next_session() {
    return sim_parts::next_session(rng_, submitted_++);
  }


  /// To the oracle last seen leading, else to any running one (a follower
  /// refuses it as not_leader, and the client tries again later).
  void submit(const pb::SubmitSession& s) {
    requests_[s.session_id()] = s;
    answers_[s.session_id()] = answer::pending;
    int k = leader_hint_;
    if (k < 0 || !oracles_[k].up) {
      std::vector<unsigned> up;
      for (unsigned i = 0; i < n_; ++i)
        if (oracles_[i].up)
          up.push_back(i);
      if (up.empty()) {
        answers_[s.session_id()] = answer::unknown;
        return;
      }
      k = static_cast<int>(up[rng_.below(up.size())]);
    }
    auto bytes = s.SerializeAsString();
    auto id = s.session_id();
    auto whom = oracles_[k].actors.sessions;
    auto answers = answers_ptr_;
    auto* sys = sys_.get();
    sys_->spawn([=](caf::event_based_actor* self) {
      self->request(whom, ms(3000), submit_atom::value, bytes)
        .then([=](accepted_atom) { (*answers)[id] = answer::accepted; },
              [=](caf::error& e) {
                (*answers)[id] = classify_refusal(*sys, e);
              });
    });
  }

  void resubmit_unknown() {
    for (auto& [id, a] : answers_)
      if (a == answer::unknown) {
        log_->note("client_retry", id);
        submit(requests_[id]);
      }
  }

  // -- the end ---------------------------------------------------------------

  /// Every fault heals, every oracle and miner comes back, and the pool has
  /// `settle_steps` of quiet to finish what it accepted.
  void settle() {
    net_->on = false;
    heal_oracles();
    for (unsigned s = 0; s < 200 && ok(); ++s) {
      resume_oracles(true);
      if (alive_count() == n_)
        break;
      advance(50);
    }
    if (alive_count() != n_) {
      violation("liveness", "an oracle could not resume after the faults");
      return;
    }
    restore_miners();
    for (int s = 0; s < settle_steps && ok(); ++s) {
      if (s % 10 == 0 && s < settle_steps - 100)
        resubmit_unknown();
      if (s % 4 == 0)
        follow_leader();
      advance(50);
    }
  }

  void verify() {
    auto l = raft_leader();
    if (!l) {
      violation("liveness", "no leader after the quiet");
      return;
    }
    for (auto& [id, a] : answers_)
      if (a == answer::unknown || a == answer::pending)
        violation("liveness", "session " + id + " never got an answer");
    // Unfinished work, on the committed state.
    auto& lead = *oracles_[*l].rep;
    for (auto& [id, s] : lead.pool().sessions())
      violation("liveness", "session " + id + " is still " + to_string(s.state())
                              + " after the quiet");
    if (!ok())
      return;
    // The miners go; the oracles run until every member applied all of the
    // log and copied every archive gap, and nothing changed for 2 s.
    for (auto& m : miners_) {
      if (m.node)
        caf::anon_send_exit(m.node, caf::exit_reason::kill);
      m.alive = false;
      disconnect(m);
    }
    bool same = false;
    int quiet = 0;
    for (int s = 0; s < 600 && quiet < 40 && ok(); ++s) {
      advance(50);
      l = raft_leader();
      same = l.has_value();
      auto target = l ? raft_last_index(raft_fixture_get(&f_, *l)) : 0;
      for (unsigned i = 0; i < n_ && same; ++i) {
        std::vector<pending_gap> left;
        pending_gaps(*oracles_[i].archive, left);
        same = raft_last_applied(raft_fixture_get(&f_, i)) == target
               && left.empty();
      }
      quiet = same ? quiet + 1 : 0;
    }
    if (!ok())
      return;
    for (unsigned i = 0; i < n_; ++i)
      for (auto& a : {oracles_[i].actors.gateway, oracles_[i].actors.validator,
                      oracles_[i].actors.sessions, oracles_[i].actors.supervisor,
                      oracles_[i].actors.backfill})
        caf::anon_send_exit(a, caf::exit_reason::kill);
    sched_->run();
    for (unsigned i = 0; i < n_ && !same; ++i) {
      std::vector<pending_gap> left;
      pending_gaps(*oracles_[i].archive, left);
      if (!left.empty()) {
        violation("archive", "oracle " + std::to_string(i + 1) + " still lacks "
                               "the sessions ended by entries "
                               + std::to_string(left.front().gap.from_index) + ".."
                               + std::to_string(left.front().gap.to_index)
                               + " after 30 s of quiet");
        return;
      }
    }
    if (!same) {
      std::string d = "the members did not all apply the log within 30 s:";
      for (unsigned i = 0; i < n_; ++i) {
        auto* r = raft_fixture_get(&f_, i);
        d += " [oracle " + std::to_string(i + 1) + " state "
             + std::to_string(raft_state(r)) + " term "
             + std::to_string(r->current_term) + " applied "
             + std::to_string(raft_last_applied(r)) + " last "
             + std::to_string(raft_last_index(r)) + " commit "
             + std::to_string(r->commit_index) + " alive "
             + std::to_string(raft_fixture_alive(&f_, i)) + " snapshot "
             + std::to_string(r->log.snapshot.last_index) + " pending "
             + std::to_string(r->snapshot.pending.term) + " put "
             + std::to_string(r->snapshot.put.data != nullptr) + "]";
        if (raft_state(r) == RAFT_LEADER)
          for (unsigned j = 0; j < r->configuration.n; ++j) {
            auto& p = r->leader_state.progress[j];
            d += " {progress of " + std::to_string(r->configuration.servers[j].id)
                 + ": mode " + std::to_string(p.state) + " next "
                 + std::to_string(p.next_index) + " match "
                 + std::to_string(p.match_index) + " snapshot "
                 + std::to_string(p.snapshot_index) + "}";
          }
      }
      violation("replication", d);
      return;
    }
    auto ref = oracles_[0].rep->snapshot_bytes();
    for (unsigned i = 1; i < n_; ++i)
      if (oracles_[i].rep->snapshot_bytes() != ref) {
        violation("divergence", "oracle " + std::to_string(i + 1)
                                  + " holds another state than oracle 1 at index "
                                  + std::to_string(oracles_[i].rep->last_index()));
        return;
      }
    for (unsigned i = 0; i < n_; ++i)
      if (auto vs = oracles_[i].rep->pool().check_invariants(); !vs.empty()) {
        violation(vs.front().invariant, "oracle " + std::to_string(i + 1) + ": "
                                          + vs.front().detail + " at the end");
        return;
      }
    for (auto& o : oracles_)
      res_.archive_gaps += o.gaps.size();
    // Every acknowledged session, on every member: live or archived.
    for (auto& [id, a] : answers_) {
      if (a != answer::accepted)
        continue;
      ++res_.accepted;
      for (unsigned i = 0; i < n_; ++i) {
        auto& o = oracles_[i];
        std::optional<pb::SessionRecord> rec;
        o.archive->archived(id, rec);
        if (o.rep->pool().session(id) || rec)
          continue;
        ++res_.lost;
        violation("lost", "session " + id + " was acknowledged and oracle "
                            + std::to_string(i + 1) + " does not hold it");
      }
    }
    oracles_[*l].archive->scan_archive(0, [&](const pb::SessionRecord& r) {
      ++(r.state() == pb::COMPLETED ? res_.completed : res_.failed);
      return true;
    });
    res_.commands = lead.last_index();
  }

  sim_result finish() {
    for (unsigned i = 0; i < n_; ++i)
      count_guard(i);
    shutdown();
    res_.faults = log_->counts;
    res_.faults.erase("faults_end");
    res_.submitted = submitted_;
    res_.oracles = n_;
    if (opt_.trace)
      res_.trace = log_->lines.str();
    return res_;
  }

  void shutdown() {
    if (!sys_ || shut_)
      return;
    shut_ = true;
    sched_->run();
    for (auto& m : miners_) {
      if (m.node)
        caf::anon_send_exit(m.node, caf::exit_reason::kill);
      if (m.link)
        caf::anon_send_exit(m.link, caf::exit_reason::kill);
    }
    for (auto& o : oracles_)
      for (auto& a : {o.actors.gateway, o.actors.validator, o.actors.sessions,
                      o.actors.supervisor, o.actors.backfill})
        if (a)
          caf::anon_send_exit(a, caf::exit_reason::kill);
    sched_->run();
    // A run a violation ended early leaves clients' and probes' requests
    // waiting for answers that will not come: their timeouts end them, so
    // the actor system can close and the seed reports.
    for (int k = 0; k < 200 && sys_->registry().running() > 0; ++k) {
      sched_->advance_time(std::chrono::milliseconds(100));
      sched_->run();
    }
    if (auto left = sys_->registry().running(); left > 0) {
      // Closing the system would wait for them forever: leave it (a seed's
      // worth of memory) so that the seed still reports.
      res_.violations.push_back({seed_, "harness", std::to_string(left)
                                 + " actors still running at the end"});
      (void)sys_.release();
    }
  }

  uint64_t seed_;
  sim_options opt_;
  seeded_rng rng_;
  unsigned n_;
  actor_config cfg_{false};
  std::unique_ptr<caf::actor_system> sys_;
  caf::scheduler::test_coordinator* sched_ = nullptr;
  params p_;
  unsigned election_ms_ = 300;
  double dup_rate_ = 0;  // chance that a message between oracles is sent twice
  seeded_rng dup_rng_{mix64(seed_ ^ 0xd0b1e5ull)};
  seeded_rng crash_rng_{mix64(seed_ ^ 0xc4a5e5ull)};  // crash or freeze, and how
  seeded_rng disk_rng_{mix64(seed_ ^ 0xd15c5e5ull)};  // disks that fail writes
  seeded_rng timer_rng_{mix64(seed_ ^ 0x7153e5ull)};   // election timers
  unsigned snapshot_threshold_ = 32;
  struct raft_fixture f_ {};
  bool fixture_up_ = false;
  bool shut_ = false;
  std::vector<struct raft_io*> ios_;
  std::vector<oracle_slot> oracles_;
  std::map<unsigned, uint64_t> elected_after_;  // member -> a later leader's term
  uint64_t last_term_ = 0;
  std::shared_ptr<applied_log> applied_ = std::make_shared<applied_log>();
  std::shared_ptr<std::string> archive_errors_ = std::make_shared<std::string>();
  std::shared_ptr<std::vector<bool>> leads_ =
    std::make_shared<std::vector<bool>>();
  int leader_hint_ = -1;
  std::shared_ptr<fault_log> log_ = std::make_shared<fault_log>();
  std::shared_ptr<net_faults> net_ = std::make_shared<net_faults>();
  std::vector<miner_slot> miners_;
  std::map<std::string, int> conn_;  // miner -> oracle it is linked to, or -1
  std::map<std::pair<std::string, unsigned>, bool> cut_;
  uint64_t sessions_wanted_ = 0;
  uint64_t submitted_ = 0;
  std::map<std::string, pb::SubmitSession> requests_;
  std::shared_ptr<std::map<std::string, answer>> answers_ptr_ =
    std::make_shared<std::map<std::string, answer>>();
  std::map<std::string, answer>& answers_ = *answers_ptr_;
  sim_result res_;
};

} // namespace

sim_result run_cluster_sim(uint64_t seed, const sim_options& opt) {
  cluster_simulation s{seed, opt};
  return s.run();
}

} // namespace nodepool
