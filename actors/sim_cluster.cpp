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
//     the copy up to 100 ms later (in half the runs), leaders and followers stopped at random
//     points (a stopped oracle's actors die; its member freezes, then resumes
//     from its disk and memory), miners cut off from some oracles, killed and
//     silenced, and oracle clocks jumping.
// Checks: I1-I5 after every applied entry on every replica; each pool index
// holds the same batch on every member that applied it (log matching); at
// the end every member applied the same entries and holds the same state,
// byte for byte; every session acknowledged to a client is live or archived
// on every member; nothing is left unfinished after the quiet.
//
// What raft_fixture cannot do, so this does not: a member restarting from
// disk (a stopped member resumes with its memory; real restarts are the
// process tests' and `bench --only failover`'s) and losing an unsynced tail
// (raft syncs every append before it is acknowledged).
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
  bool restore(std::string_view bytes, std::string& error) override {
    return inner_.restore(bytes, error);
  }
  replica_machine& inner() { return inner_; }

private:
  replica& rep_;
  replica_machine inner_;
  unsigned member_;
  std::shared_ptr<applied_log> log_;
};

/// raft_fixture's in-memory disk (libraft 0.15, src/fixture.c) numbers its
/// entries from 1 whatever happened: after a member installs a snapshot it
/// drops every entry and appends the next ones from index 1 of its array,
/// so a later truncation (a follower dropping a deposed leader's entries)
/// copies past the end of the array. The real disk (raft_uv) keeps the
/// index. Here each member's truncate is handed the index in the stub's own
/// numbering: `origin` is the log index of the stub's first entry.
struct stub_disk {
  int (*truncate)(struct raft_io*, raft_index) = nullptr;
  int (*snapshot_put)(struct raft_io*, unsigned, struct raft_io_snapshot_put*,
                      const struct raft_snapshot*,
                      raft_io_snapshot_put_cb) = nullptr;
  std::deque<raft_index> installs;  // pending puts that drop the log
  raft_index origin = 1;
  // The network's duplicates (below raft and its guard): a copy of a sent
  // message, sent again later (see stub_send).
  int (*send)(struct raft_io*, struct raft_io_send*, const struct raft_message*,
              raft_io_send_cb) = nullptr;
  std::function<std::optional<raft_time>()> duplicate;  // delay, or none
  struct copy;
  std::deque<std::pair<raft_time, std::unique_ptr<copy>>> copies;  // due, copy
};
std::map<struct raft_io*, stub_disk> stub_disks;

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
  return d.send(io, req, m, cb);
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

int stub_truncate(struct raft_io* io, raft_index index) {
  auto& d = stub_disks.at(io);
  if (index == 1 && !d.installs.empty()) {
    // The stub itself, after writing a snapshot that keeps no entry.
    auto rv = d.truncate(io, 1);
    d.origin = d.installs.front() + 1;
    d.installs.pop_front();
    return rv;
  }
  return d.truncate(io, index - d.origin + 1);
}

int stub_snapshot_put(struct raft_io* io, unsigned trailing,
                      struct raft_io_snapshot_put* req,
                      const struct raft_snapshot* snap,
                      raft_io_snapshot_put_cb cb) {
  auto& d = stub_disks.at(io);
  if (trailing == 0)
    d.installs.push_back(snap->index);
  return d.snapshot_put(io, trailing, req, snap, cb);
}

void fix_stub_disk(struct raft_io* io) {
  auto& d = stub_disks[io];
  d = stub_disk{};
  d.truncate = io->truncate;
  d.snapshot_put = io->snapshot_put;
  d.send = io->send;
  io->truncate = stub_truncate;
  io->snapshot_put = stub_snapshot_put;
  io->send = stub_send;
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
  std::vector<replica::archive_gap> gaps;
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
      // As an oracle does (member_archive.hpp): ended sessions to the
      // archive, gaps a snapshot install leaves recorded for the backfill.
      auto errors = archive_errors_;
      o.rep = member_replica(o.archive, true, [errors](const std::string& e) {
        if (errors->empty())
          *errors = e;
      });
      o.rec = std::make_unique<recording_machine>(*o.rep, i, applied_);
      o.raft = std::make_unique<raft_member>(*o.rec, opt_.raft_guard);
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
      o.raft->attach(r);
      ios_.push_back(r->io);
      raft_set_election_timeout(r, election_ms_);
      raft_set_heartbeat_timeout(r, 50);
      raft_set_snapshot_threshold(r, snapshot_threshold_);
      raft_set_snapshot_trailing(r, 4 + snapshot_threshold_ / 4);
      raft_set_pre_vote(r, true);
      raft_set_install_snapshot_timeout(r, 2000);
      raft_fixture_set_network_latency(&f_, i, 2 + rng_.below(20));
      raft_fixture_set_disk_latency(&f_, i, 1 + rng_.below(15));
      o.roles = std::make_shared<role_relay>();
      auto roles = o.roles;
      o.raft->on_role_change([roles](const log_status& s) { roles->publish(s); });
      o.log = std::make_shared<fixture_log>(*o.raft, opt_.lying_log);
    }
    struct raft_configuration conf;
    if (raft_fixture_configuration(&f_, n_, &conf) != 0
        || raft_fixture_bootstrap(&f_, &conf) != 0) {
      violation("harness", "raft_fixture_bootstrap failed");
      return false;
    }
    raft_configuration_close(&conf);
    if (raft_fixture_start(&f_) != 0) {
      violation("harness", "raft_fixture_start failed");
      return false;
    }
    for (unsigned i = 0; i < n_; ++i)
      start_oracle_now(i);
    return true;
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

  void stop_oracle_now(unsigned i, const std::string& kind) {
    auto& o = oracles_[i];
    for (auto& a : {o.actors.gateway, o.actors.validator, o.actors.sessions,
                    o.actors.supervisor, o.actors.backfill})
      caf::anon_send_exit(a, caf::exit_reason::kill);
    o.up = false;
    auto* r = raft_fixture_get(&f_, i);
    o.stopped_term = r->current_term;
    o.stopped_leading = raft_state(r) == RAFT_LEADER;
    raft_fixture_kill(&f_, i);
    o.down_steps = 5 + static_cast<int>(rng_.below(60));
    log_->note(kind, "oracle " + std::to_string(i + 1) + " in term "
                       + std::to_string(o.stopped_term));
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
      if (o.stopped_leading && elected_after_[i] <= o.stopped_term)
        continue;
      raft_fixture_revive(&f_, i);
      log_->note("oracle_resume", std::to_string(i + 1));
      start_oracle_now(i);
    }
  }

  unsigned alive_count() const {
    unsigned k = 0;
    for (auto& o : oracles_)
      k += o.up;
    return k;
  }

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
    // Stops: at most a minority at a time.
    bool room = n_ - alive_count() < (n_ - 1) / 2;
    if (room && rng_.chance(0.003))
      if (auto l = raft_leader(); l && oracles_[*l].up)
        stop_oracle_now(*l, "leader_stop");
    if (room && oracles_[i].up && rng_.chance(0.002)) {
      auto l = raft_leader();
      if (!l || *l != i)
        stop_oracle_now(i, "follower_stop");
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
    if (rng_.chance(0.002)) {
      auto d = 200 + static_cast<int64_t>(rng_.below(2000));
      bool back = rng_.chance(0.5);
      *oracles_[i].skew += back ? -d : d;
      log_->note("clock_jump", "oracle " + name(i) + (back ? " back " : " forward ")
                                 + std::to_string(d) + "ms");
    }
  }

  /// Runs raft and the actors for `ms_` of simulated time.
  void advance(int ms_) {
    auto target = raft_fixture_time(&f_) + static_cast<raft_time>(ms_);
    while (raft_fixture_time(&f_) < target && ok()) {
      raft_fixture_step(&f_);
      after_raft_step();
    }
    sched_->advance_time(ms(ms_));
    drain();
  }

  void after_raft_step() {
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
    }
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
    res_.faults = log_->counts;
    res_.faults.erase("faults_end");
    res_.submitted = submitted_;
    res_.oracles = n_;
    if (opt_.trace)
      res_.trace = log_->lines.str();
    return res_;
  }

  void shutdown() {
    if (!sys_)
      return;
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
  unsigned snapshot_threshold_ = 32;
  struct raft_fixture f_ {};
  bool fixture_up_ = false;
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
