#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>

#include "bank.hpp"
#include "identity.hpp"
#include "params.hpp"
#include "pool_state.hpp"
#include "replica.hpp"
#include "replication.hpp"
#include "storage.hpp"

namespace nodepool {

/// Settings of the pool supervisor.
/// What cognitive tests ask (used by the oracle's validator).
struct test_config {
  /// The challenge bank; null: the builtin one (deploy/banks/default.jsonl).
  std::shared_ptr<const challenge_bank> bank;
  /// The oracles' secret that chooses each test's items. Empty: derived
  /// from the pool's seed (simulations, so that a seed reproduces); an
  /// oracle process always reads one from a file.
  std::string secret;
  /// (model, peer item) pairs the validator keeps references for, at most:
  /// model names come from miners. Past it a new pair takes the place of
  /// the pair with the fewest nodes behind it (the least recently added to
  /// among those), so a miner inventing names evicts only its own kind.
  size_t max_reference_keys = 4096;
};

/// The supervisor's load, published after each group commit into atomics
/// that any thread reads without asking it: a question through its mailbox
/// would wait behind the very backlog it is meant to show.
struct supervisor_gauges {
  std::atomic<uint64_t> mailbox{0};    // messages waiting, at the last commit
  std::atomic<uint64_t> queued{0};     // sessions in the pool's queue
  std::atomic<uint64_t> active{0};     // sessions being served
  std::atomic<uint64_t> ephemeral{0};  // nodes in the pool, available
  std::atomic<uint64_t> commits{0};    // group commits published with events
};

struct supervisor_config {
  params pool;
  test_config tests;
  std::shared_ptr<store> storage;  // shared with whoever opened it
  bool sim_time = false;           // see now_ms()
  bool sync = true;                // fsync each group commit
  /// Who may register (used by the oracle's gateway); open by default.
  admission_policy admission;
  /// Called after every command that changed the pool, with the pool as it
  /// is then (tests and simulations check invariants here). Must not block.
  std::function<void(const pool_state&, const pb::Command&,
                     const apply_result&)>
    observer;
  /// From how many live records the pool keeps its copy between snapshots
  /// (pool_state::set_kept_copy_from); the simulation keeps it always.
  size_t kept_copy_from = pool_state::default_kept_copy_from;
  /// After each group commit that leaves no command waiting, up to this
  /// many of the records changed since the last snapshot are copied ahead
  /// into the kept copy, leaving copy_ahead_leave of them for the
  /// snapshot's own stop (pool_state::copy_ahead). 0: none (each snapshot
  /// copies every change).
  size_t copy_ahead_per_commit = 256;
  size_t copy_ahead_leave = 2048;
  /// Snapshots are serialized and written on a thread of their own; off
  /// (simulation), they are written inline, so a seeded run stays the same.
  bool async_snapshots = true;
  /// Commands per group commit at most: a drain of a longer mailbox (a
  /// backlog, when more is offered than the pool serves) is written, or
  /// proposed, in parts of this size, so that what one commit holds (its
  /// entries, events and answers) stays small enough to be cheap per
  /// command. Without it a backlog made commits of thousands of commands,
  /// each costlier per command than the last, and throughput fell past
  /// capacity instead of levelling off (BENCHMARKS.md). Zero: no bound.
  size_t max_batch_commands = 256;
  /// Load shedding: a new session is refused (`overloaded`, at once, with
  /// nothing changed) when more than this many messages wait in the
  /// supervisor's mailbox behind it, i.e. when more is offered than the
  /// pool serves. Commands about work already accepted (ends, results,
  /// tests, nodes) are never shed: they are what drains the backlog. Zero:
  /// no bound.
  size_t max_backlog = 10000;
  /// Fault injection (simulation): asked after each group commit is on
  /// storage and before anyone hears of it; true makes the supervisor die
  /// there, as a process crashing between a write and its acknowledgement.
  std::function<bool()> crash_after_write;
  /// Fault injection (simulation): added to the clock the pool sees, so a
  /// simulation can make it jump backwards or forwards. The pool's time never
  /// goes backwards (a command is applied at the latest time seen so far).
  std::shared_ptr<int64_t> clock_skew_ms;
  /// Cluster mode (all three set): this oracle's member of the replicated
  /// log, the replica the log applies committed entries to, and where the
  /// log reports role changes. `storage` then holds the archive only; the
  /// log and its snapshots are the replicated log's. Unset: one oracle with
  /// its own log in `storage`, as before.
  std::shared_ptr<replicated_log> cluster_log;
  std::shared_ptr<replica_machine> replica;
  std::shared_ptr<role_relay> roles;
  /// Where miners and clients reach each member (by member id): named in
  /// not_leader refusals and in the cluster view, so they can move on.
  std::map<uint64_t, std::string> member_addresses;
  /// Their HTTP APIs (those the cluster file names), for the cluster view.
  std::map<uint64_t, std::string> member_http;
  /// Scheduled rotation (cluster mode): once this member has led a term
  /// this long, it hands leadership to the next member in id order (the
  /// one after that if the transfer fails). Zero: never.
  std::chrono::milliseconds rotation_interval{0};
  /// Simulation: the archive backfill reaches peers through this instead
  /// of the network (see backfill_config::peer).
  std::function<caf::actor(uint64_t)> peer_gateway;
  /// Set: kept up to date after every group commit (see supervisor_gauges).
  std::shared_ptr<supervisor_gauges> gauges;
};

/// Spawns the pool supervisor: the one actor that owns the PoolState.
///
/// Protocol (payloads are serialized Protobuf, but for the commands and
/// events that stay in this process, local.hpp):
///   (cmd_atom, Command)       -> (accepted_atom) | a refusal (make_refusal:
///                                 its pb::RefusalCode, text and detail)
///                                 the Command as built (local_command) by
///                                 an actor of this process (local.hpp); no
///                                 peer of another process reaches it
///   (cmd_atom, Command, ticket) sent as a message, not a request: answered
///                                 by (answer_atom, ticket, code, detail), a
///                                 pb::RefusalCode (REFUSAL_NONE: accepted),
///                                 at the same time
///                                 (actors/tickets.hpp says why)
///                                 the reply to an accepted command comes only
///                                 once it is on stable storage
///   (subscribe_atom, actor)   -> subscriber gets (events_atom, event_batch)
///                                 after every durable group commit: one
///                                 batch shared by every subscriber, in
///                                 this process only (local.hpp)
///   (subscribe_atom, actor, bool) the same, or (false) no more
///   (state_atom)              -> (Snapshot bytes) of the current state
///   (state_atom, StateQuery bytes) -> (StatePage bytes): a page of the live
///                                state or the models on offer (HTTP lists)
///   (stats_atom)              -> (JSON text) counters
///
/// Group commit: the first command after a flush schedules a flush_atom to
/// itself; it is handled after every message already in the mailbox, so one
/// synced RocksDB write batch covers the whole drain. Events and replies are
/// held back until that batch is durable, so nobody ever acts on a state that
/// a crash could take back.
///
/// Ended sessions: their final records go to the archive in the batch of
/// the entry that ended them. A submission whose id is in the archive is
/// refused as `duplicate_session` before it reaches the pool (the pool
/// itself refuses ids that ended within `session_id_retention_ms`, whose
/// archive write may still be pending).
///
/// On start it restores the stored snapshot, replays the log after it and,
/// if there was any history, applies a Recover command (nodes must come back
/// and be tested again, active sessions go back to the queue).
///
/// Cluster mode: only the leader's supervisor changes the pool. When the
/// log reports this member a ready leader (its barrier applied), the
/// supervisor starts a `proposer` from the committed replica and applies
/// TakeOver (nodes keep their state if they reconnect in time); each mailbox drain becomes one log entry,
/// and its answers and events are released once the entry is committed, in
/// order. A follower refuses commands with `not_leader` (the detail names
/// the leader). When the term ends (deposed, or a proposal not committed)
/// the speculative state is thrown away, every answer held is
/// `not_leader` (outcome unknown: a retried submission is accepted or
/// refused as duplicate_session, never stored twice) and the subscribers
/// are told to drop their soft state (reset_atom).
///   (cluster_atom)            -> (JSON text) this member's view of the log
///   (transfer_atom, to)       -> (JSON text) {leader_id, term} once this
///                                 leader handed over to `to` (0: the most
///                                 up-to-date voter), or a refusal
caf::actor spawn_supervisor(caf::actor_system& sys, supervisor_config cfg);

} // namespace nodepool
