#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "flat_index.hpp"
#include "id_window.hpp"
#include "nodepool.pb.h"
#include "params.hpp"
#include "refusal.hpp"
#include "selection.hpp"

namespace nodepool {

/// What applying one command did.
struct apply_result {
  std::vector<pb::Event> events;
  std::optional<refusal> refused;
  /// False when the command was refused or was a tick that found nothing to
  /// do: such commands need not be persisted, replaying them changes nothing.
  bool changed = false;
  /// Final records of the sessions this command ended. They have left the
  /// pool; whoever persists the command writes them to the archive in the
  /// same atomic batch (storage.hpp), so no ended session is ever lost.
  std::vector<pb::SessionRecord> archived;
};

/// One broken invariant (I1..I5 of DESIGN.md).
struct violation {
  std::string invariant;  // "I1" .. "I5"
  std::string detail;
};

/// What the pool's counts by model and level count a node as (one
/// definition for the indexes and for the checks that recount them).
bool counts_as_alive(const pb::NodeRecord& n);
/// In the pool, taking sessions, and reachable (not waiting to rejoin after
/// a change of leader).
bool counts_as_available(const pb::NodeRecord& n);
/// Its test was sent and has not finished: it holds one of
/// max_tests_in_flight.
bool test_sent(const pb::NodeRecord& n);
/// Asked for a test that waits to be sent (max_tests_in_flight). A node
/// waiting to rejoin after a change of leader is not (its test is asked for
/// again when it is back).
bool test_waiting(const pb::NodeRecord& n);

/// The node pool as a pure, deterministic state machine.
///
///             register                     pass
///   (new) ----------> REGISTERED --> TESTING -----> EPHEMERAL <-------------+
///                                      |  ^            |  (in pool)         |
///                                fail  |  | backoff    | reserve(session)   | pass
///                                      v  |  elapsed   v                    |
///                                  QUARANTINED       RESERVED --release--> REVALIDATING
///                                      |  ^            |                    |
///                fails >= max_strikes  |  +------------+--------------------+ fail
///                                      v
///                                   RETIRED
///   any state --heartbeat missed / actor down--> LOST --registers again--> TESTING
///   EPHEMERAL --ephemeral window expired--> TESTING
///
/// A node in TESTING may wait for its test to be sent: at most
/// max_tests_in_flight admission tests and retests are out at a time, the
/// others wait in the order they were asked for (test_waiting), and a
/// test's deadline starts when it is sent.
///
/// No clock, no I/O, no global randomness: the time comes with each command
/// and random choices draw from a generator whose state is part of the pool.
/// The same commands with the same times always give the same state and
/// events, which is what lets the command log be persisted, replayed and
/// replicated. Owned by whoever applies commands (the pool supervisor actor).
/// The transitions are split by concern over admission.cpp, reservation.cpp,
/// revalidation.cpp and pool_state.cpp.
class pool_state {
public:
  explicit pool_state(params p = {});
  /// Movable, not copyable: the indexes point into the pool's own maps
  /// and heap blocks (which a move keeps where they are; a copy would
  /// not). A moved-from pool may only be destroyed or assigned to.
  pool_state(const pool_state&) = delete;
  pool_state& operator=(const pool_state&) = delete;
  pool_state(pool_state&&) = default;
  pool_state& operator=(pool_state&&) = default;

  /// Applies one command at time `now` (milliseconds).
  apply_result apply(const pb::Command& cmd, int64_t now);

  // -- queries ---------------------------------------------------------------

  const params& config() const { return params_; }
  const pb::NodeRecord* node(const std::string& id) const;
  /// Live sessions only (queued or active); an ended one is archived.
  const pb::SessionRecord* session(const std::string& id) const;
  const std::map<std::string, pb::NodeRecord>& nodes() const { return nodes_; }
  /// Live sessions by id, in no particular order (ordered_sessions() holds
  /// them by id).
  const flat_table<pb::SessionRecord>& sessions() const {
    return sessions_;
  }
  /// Node counts indexed by pb::NodeState, maintained on every transition.
  const std::array<uint64_t, 9>& count_by_state() const { return counts_; }
  /// Sessions by pb::SessionState: live ones counted in the pool, ended ones
  /// by the counters (O(1)).
  std::array<uint64_t, 5> session_counts() const;
  /// Sessions ever accepted: live + completed + failed.
  uint64_t sessions_accepted() const { return next_session_seq_ - 1; }
  /// True while `id` is in the idempotency window (ended recently).
  bool recently_ended(const std::string& id) const {
    return recent_ids_.contains(id);
  }
  const id_window& recent_ids() const { return recent_ids_; }
  uint64_t tests_passed() const { return tests_passed_; }
  /// Tests sent and not finished (re-validations included), and admission
  /// tests and retests waiting to be sent (max_tests_in_flight). O(1).
  uint64_t tests_in_flight() const { return tests_in_flight_; }
  uint64_t tests_waiting() const { return test_queue_.size(); }
  uint64_t tests_failed() const { return tests_failed_; }
  /// Times an active session lost its nodes and went back to the queue.
  uint64_t sessions_requeued() const { return sessions_requeued_; }
  int64_t last_now() const { return last_now_; }
  /// Pool entries and queue heads looked at by reservations so far (not in
  /// snapshots): what the tests of a command's cost count, instead of
  /// timing it.
  uint64_t walk_steps() const { return walk_steps_; }
  /// Inserts into and erases from the live sessions' id order so far (not
  /// in snapshots), counted as walk_steps() is.
  uint64_t order_steps() const { return order_steps_; }

  /// A page of the live state (the HTTP API's lists), or the models live
  /// nodes serve. Nodes: O(log nodes + limit), from the map by id; live
  /// sessions: O(log live sessions + limit), from ordered_sessions() (the
  /// sessions admitted since the last read enter it first); models:
  /// O(models). Never a copy of the pool. A query out of bounds gets
  /// `error` and nothing else.
  pb::StatePage read(const pb::StateQuery& q) const;

  /// Checks I1..I5 on the whole state: O(nodes + sessions). Run at every
  /// snapshot and at the end of a history.
  std::vector<violation> check_invariants() const;
  /// Checks I1..I5 on the records a command touched, plus the O(1)
  /// counters: O(records touched). `cmd` and `r` are the last command
  /// applied and what applying it returned: the records they name
  /// (touched.hpp) and those the pool noted while applying it are every
  /// record it changed.
  std::vector<violation> check_after(const pb::Command& cmd,
                                     const apply_result& r) const;
  /// The same on named records (tests break a state and name the record).
  std::vector<violation> check_records(
    const std::vector<std::string>& node_ids,
    const std::vector<std::string>& session_ids,
    const std::vector<pb::SessionRecord>& archived = {}) const;

  // -- snapshots -------------------------------------------------------------

  /// The whole state, copied now.
  pb::Snapshot snapshot() const;
  /// The live records as the last freeze() left them, in id order (the
  /// order of a snapshot): defined in pool_state.cpp.
  struct record_copies;
  /// A snapshot in two steps: freeze() stops the caller only to bring a
  /// copy of the live records up to date, and to share it and the
  /// idempotency window's full chunks; finish() builds the message, on any
  /// thread, while the pool goes on. In a pool of at least
  /// set_kept_copy_from() records the copy is kept from one freeze to the
  /// next, and only the records changed since the last one (those each
  /// applied command named or noted, touched.hpp) are copied again: the
  /// stop depends on what changed, not on the size of the pool. A copy
  /// still shared with an unfinished snapshot is first copied whole, so a
  /// slow writer costs time, never a wrong snapshot.
  struct frozen {
    pb::Snapshot records;  // everything but the live records and the window
    std::shared_ptr<const record_copies> live;  // released by finish()
    id_window::frozen recent_ids;
    pb::Snapshot finish() &&;
    /// finish().SerializeAsString(), byte for byte, written straight from
    /// the kept copy of the records: no message of them is built first.
    std::string encode() &&;
    /// I1-I5 on the frozen records alone (check_snapshot), read from the
    /// kept copy: the pool's indexes are not in a snapshot, so there is
    /// nothing to restore them for. Before encode() or finish().
    std::vector<violation> check() const;
  };
  frozen freeze();
  /// Brings up to `budget` of the records changed since the last freeze
  /// into the kept copy now, leaving `leave` of them for the freeze, so
  /// that the next freeze() has at most about that many to copy: called
  /// between group commits, it spreads over them the copying a freeze
  /// would do at once. A record changed again is noted again; leaving some
  /// lets the records changed in bursts (a node reserved, released and
  /// tested within milliseconds) finish theirs before they are copied.
  /// Does nothing when no copy is kept, or while a snapshot still reads
  /// it. Returns the records copied (or dropped, for a session that ended).
  size_t copy_ahead(size_t budget, size_t leave = 0);
  /// The copy is kept, and changes noted after each command, only in a
  /// pool of at least this many live records (nodes and sessions): a
  /// smaller one is copied whole at each freeze, in about a microsecond a
  /// record, and its commands pay nothing for the bookkeeping. Tests set
  /// it to 0.
  void set_kept_copy_from(size_t records) { kept_copy_from_ = records; }
  size_t kept_copy_from() const { return kept_copy_from_; }
  static constexpr size_t default_kept_copy_from = 16384;
  /// Records the next freeze() copies again (tests: bounded by the live
  /// records and the snapshot interval, not by how long since a freeze).
  size_t changes_pending() const {
    return changed_nodes_.size() + changed_sessions_.size();
  }
  /// Replaces the state by a snapshot's. Indexes are rebuilt. Without
  /// `with_recent_ids` the idempotency window stays empty (a copy made only
  /// to check I1-I5 need not rebuild it).
  void restore(const pb::Snapshot& snap, bool with_recent_ids = true);

private:
  // pool_state.cpp
  void set_state(pb::NodeRecord& n, pb::NodeState to, const std::string& why,
                 apply_result& out);
  /// One changed record into the kept copy (freeze, copy_ahead).
  void copy_node(const pb::NodeRecord* n);
  void copy_session(const std::string& id);
  void note_changed_node(const pb::NodeRecord* n);
  void record_outcome(pb::NodeRecord& n, bool good);
  void apply_tick(int64_t now, apply_result& out);
  void apply_recover(int64_t now, apply_result& out);
  void apply_takeover(int64_t now, apply_result& out);
  /// Emits SessionStarted again for an active session whose nodes have all
  /// rejoined after a TakeOver (the new leader's session actor resumes it).
  void maybe_resume(const pb::SessionRecord& s, apply_result& out);
  void apply_configure(const pb::Configure& c, apply_result& out);
  void apply_heartbeat(const pb::Heartbeat& c, int64_t now, apply_result& out);
  void apply_node_down(const pb::NodeDown& c, int64_t now, apply_result& out);
  void apply_admin_node(const pb::AdminNode& c, int64_t now, apply_result& out);
  /// The node of a command, or null with `unknown_node` refused.
  pb::NodeRecord* known_node(const std::string& id, apply_result& out);
  /// Drops a node lost for lost_retention_ms, or retired for
  /// retired_retention_ms, from every record and index (NodeForgotten).
  /// Only a LOST or RETIRED node: it holds no session and sits in no pool
  /// index.
  void forget(pb::NodeRecord& n, apply_result& out);
  void lose(pb::NodeRecord& n, const std::string& why, int64_t now,
            apply_result& out);
  /// Out of the pool for `to` (LOST, RETIRED): released from its session
  /// first, its test and rejoin wait dropped.
  void take_out(pb::NodeRecord& n, pb::NodeState to, const std::string& why,
                int64_t now, apply_result& out);
  uint64_t next_random();

  // admission.cpp
  void apply_register(const pb::Register& c, int64_t now, apply_result& out);
  /// Asks for a test of `n`: sent now (TestRequested, deadline from now),
  /// or, an admission test or retest while max_tests_in_flight are out or
  /// others wait, queued behind them (no deadline yet).
  void start_test(pb::NodeRecord& n, pb::TestKind kind, int64_t now,
                  apply_result& out);
  /// Sends the test `n` was asked for (its deadline starts now).
  void send_test(pb::NodeRecord& n, int64_t now, apply_result& out);
  /// The TestRequested event of the test `n` was just sent.
  void test_requested(const pb::NodeRecord& n, apply_result& out);
  /// Sends the tests that wait, oldest first, while the limit allows: at the
  /// end of every command that changed something (a test that ended, or a
  /// Configure that raised the limit, frees a place).
  void send_waiting_tests(int64_t now, apply_result& out);

  // revalidation.cpp
  void apply_test_result(const pb::TestResult& c, int64_t now,
                         apply_result& out);
  void pass_test(pb::NodeRecord& n, int64_t now, apply_result& out);
  /// `code` names the failure in the TestFinished event (wrong_answers,
  /// cross_check, too_slow; empty for a deadline), `why` explains it.
  void fail_test(pb::NodeRecord& n, const std::string& code,
                 const std::string& why, int64_t now, apply_result& out);
  void quarantine(pb::NodeRecord& n, const std::string& why, int64_t now,
                  apply_result& out);

  // reservation.cpp
  void apply_submit(const pb::SubmitSession& c, int64_t now,
                    apply_result& out);
  void apply_task_done(const pb::TaskDone& c, int64_t now, apply_result& out);
  void apply_end_session(const pb::EndSession& c, int64_t now,
                         apply_result& out);
  void release(pb::NodeRecord& n, const std::string& why, int64_t now,
               apply_result& out);
  void end_session(pb::SessionRecord& s, pb::SessionState st,
                   const std::string& why, int64_t now, apply_result& out);
  void detach(pb::SessionRecord& s, const std::string& node_id, int64_t now,
              apply_result& out);
  void requeue(pb::SessionRecord& s, int64_t now, apply_result& out);
  struct level_counts;  // defined with the indexes, below
  void try_assign(int64_t now, apply_result& out);
  void archive(pb::SessionRecord& s, int64_t now, apply_result& out);
  /// The live session `id`, or nullptr with the refusal set in `out`.
  pb::SessionRecord* live_or_refuse(const std::string& id, apply_result& out);
  uint32_t reserve_for(pb::SessionRecord& s, uint32_t want, int64_t now,
                       apply_result& out,
                       const std::vector<const pb::SessionRecord*>& held = {});
  bool held_for(const pb::NodeRecord& n,
                const std::vector<const pb::SessionRecord*>& held) const;
  bool suitable(const pb::NodeRecord& n, const pb::SessionRecord& s) const;
  /// Whether enough live nodes of a model (counted in `c`, from
  /// counts_for) and level exist to serve a session some day.
  bool could_ever_serve(const level_counts* c, uint32_t min_level,
                        uint32_t min_nodes) const;

  // schedule.cpp: the indexes that keep a command's cost independent of the
  // pool's size, the queue's depth and the history's length.
  /// A node's fields changed: its counts are updated now, its timer at the
  /// end of the command.
  void note_node(const pb::NodeRecord& n);
  /// A session's state, nodes or activity changed (the same for it).
  void note_session(const pb::SessionRecord& s);
  /// Reschedules the timers of every record noted during the command.
  void flush_notes();
  /// Drops a session's timer (before its record leaves the pool).
  void unschedule(const pb::SessionRecord& s);
  void enqueue(pb::SessionRecord& s);
  void dequeue(const pb::SessionRecord& s);
  void rebuild_indexes();
  /// The due time of a record with no timer (node_due, session_due).
  static constexpr int64_t never = INT64_MAX;
  int64_t node_due(const pb::NodeRecord& n) const;
  int64_t node_state_due(const pb::NodeRecord& n) const;
  int64_t session_due(const pb::SessionRecord& s) const;
  /// How long an active session may go without a task's outcome before it
  /// counts as idle: idle_threshold_ms, and for an interactive one the
  /// longest a prompt may still be under way besides (three phases), so
  /// that one sent just before the threshold is answered, not cut off.
  int64_t idle_limit(const pb::SessionRecord& s) const;
  /// At least as many nodes as could serve a session now (EPHEMERAL,
  /// AVAILABLE, of the model counted in `c`, at `min_level` or above): an
  /// upper bound from counts, O(levels).
  uint64_t available_bound(const level_counts* c, uint32_t min_level) const;
  /// Whether the pool holds min_nodes nodes that can serve `s` now and that
  /// no session in `held` could use: a walk of the pool.
  bool servable_now(const pb::SessionRecord& s, int64_t now,
                    const std::vector<const pb::SessionRecord*>& held) const;
  void check_indexes(const pb::NodeRecord& n, std::vector<violation>& out) const;
  void check_indexes(const pb::SessionRecord& s,
                     std::vector<violation>& out) const;

  // invariants.cpp
  void check_node(const pb::NodeRecord& n, std::vector<violation>& out) const;
  void check_session(const pb::SessionRecord& s,
                     std::vector<violation>& out) const;
  void check_ended(const pb::SessionRecord& s,
                   std::vector<violation>& out) const;
  void check_counters(std::vector<violation>& out) const;

  params params_;
  std::vector<int64_t> latency_bounds_;  // params_.test_latency_ms, parsed
  std::unique_ptr<selection_strategy> selector_;
  std::map<std::string, pb::NodeRecord> nodes_;
  /// The same nodes by id in a flat hash index (map nodes do not move; a
  /// record is dropped only by forget(), which takes it out of every index
  /// first): a lookup costs the same whatever the pool's size. nodes_ stays
  /// ordered for snapshots and full checks.
  flat_index<pb::NodeRecord> node_index_;
  pb::NodeRecord* live_node(const std::string& id) const {
    return node_index_.find(id);
  }
  /// A node the command's checks already found.
  pb::NodeRecord& known(const std::string& id) const {
    auto* n = node_index_.find(id);
    if (n == nullptr)
      throw std::out_of_range("no node " + id);
    return *n;
  }
  /// Live sessions in a flat hash table (flat_index.hpp): finding one
  /// costs the same whatever the number of live sessions. Its entries do
  /// not move, so the indexes point at the records; session_order_ below
  /// holds them by id (a tree insert and an erase for each session that
  /// lives until the order is read; see fresh_sessions_).
  flat_table<pb::SessionRecord> sessions_;
  /// The live sessions again, in id order: a page of them (read()) and a
  /// snapshot walk it instead of sorting the table. Each entry carries the
  /// id's first 8 bytes as a number that orders as the bytes do: a step of
  /// an insert or an erase compares that number in the tree's own node,
  /// and reads the record's id only when two ids share those 8 bytes.
  /// (Through the record, every step read two more cache lines: 136-139
  /// ns against 88-90 for an insert, a find and an erase in a tree of
  /// 10,000; BENCHMARKS.md, "Events shared inside the oracle, and two
  /// tries that moved nothing".)
  struct session_key {
    uint64_t prefix;
    const pb::SessionRecord* rec;
  };
  /// An id looked for (a page's `after`): its prefix computed once.
  struct id_probe {
    uint64_t prefix;
    const std::string* id;
  };
  static uint64_t id_prefix(const std::string& id);
  static session_key key_of(const pb::SessionRecord& s) {
    return {id_prefix(s.id()), &s};
  }
  static id_probe probe_of(const std::string& id) { return {id_prefix(id), &id}; }
  struct session_id_less {
    using is_transparent = void;
    template <class A, class B>
    bool operator()(const A& a, const B& b) const {
      if (a.prefix != b.prefix)
        return a.prefix < b.prefix;
      return id_of(a) < id_of(b);
    }
    static const std::string& id_of(const session_key& k) { return k.rec->id(); }
    static const std::string& id_of(const id_probe& p) { return *p.id; }
  };
  /// Kept up to date when read (ordered_sessions()): a mutable cache of
  /// the order, not part of the state.
  mutable std::set<session_key, session_id_less> session_order_;
  /// Sessions admitted since the order was last read, in no order (at most
  /// max_fresh_sessions; beyond, they go into the tree together). A
  /// session that ends before anything reads the order (a page, a
  /// snapshot, a check) leaves without touching the tree: a short session's
  /// commands cost no more behind ten thousand live ones than behind none
  /// (BENCHMARKS.md, "Queue depth: the id order kept when it is read").
  mutable std::vector<const pb::SessionRecord*> fresh_sessions_;
  mutable uint64_t order_steps_ = 0;
  static constexpr size_t max_fresh_sessions = 64;
  /// session_order_ with the fresh sessions in it.
  const std::set<session_key, session_id_less>& ordered_sessions() const;
  /// Enters a new live session in the order; takes it out when it ends.
  void order_session(const pb::SessionRecord& s);
  void unorder_session(const pb::SessionRecord& s);
  pb::SessionRecord* live_session(const std::string& id) const {
    return sessions_.find(id);
  }
  /// Moves a live session to `to`, keeping the count of active ones.
  void set_session_state(pb::SessionRecord& s, pb::SessionState to);
  /// QUEUED sessions (they are the members of the queue's classes below).
  uint64_t queued_ = 0;
  /// ACTIVE sessions (set_session_state keeps the count).
  uint64_t active_ = 0;
  // EPHEMERAL nodes in selection order: (rank, pool_key, id). std::map
  // nodes do not move, so the index points at the records.
  struct pool_entry {
    node_rank rank;
    uint64_t key;
    const pb::NodeRecord* node;
  };
  /// Everything at or after (rank, key) in the order of pool_entry.
  struct pool_probe {
    node_rank rank;
    uint64_t key;
  };
  struct pool_order {
    using is_transparent = void;
    bool operator()(const pool_entry& a, const pool_entry& b) const;
    bool operator()(const pool_entry& a, const pool_probe& b) const;
    bool operator()(const pool_probe& a, const pool_entry& b) const;
  };
  using pool_index = std::set<pool_entry, pool_order>;
  pool_entry entry_of(const pb::NodeRecord& n) const;
  void rebuild_pool();
  /// A node enters or leaves the pool: pool_ and the index of each model it
  /// serves. Its rank, key and models must not change in between.
  void pool_add(const pb::NodeRecord& n);
  void pool_remove(const pb::NodeRecord& n);
  /// The ephemeral nodes a session of `model` is picked from: the model's
  /// own index (same order as pool_), or pool_ itself for any model. A
  /// walk for one model never steps over the nodes of others.
  const pool_index& pool_for(const std::string& model) const;
  pool_index pool_;
  /// Per model, the ephemeral nodes that serve it; a model with none has no
  /// entry (the names come from miners).
  std::unordered_map<std::string, pool_index> pool_by_model_;

  /// Per model (and for all models: any_), by level: live nodes (neither
  /// retired nor lost) and available ones (ephemeral and AVAILABLE).
  struct level_counts {
    std::array<uint64_t, 6> alive{};
    std::array<uint64_t, 6> available{};
  };
  std::unordered_map<std::string, level_counts> by_model_;  // references stay put
  // On the heap, so that a move keeps the queue classes' pointers to it
  // (by_model_'s nodes stay put in a move; a member would not).
  std::unique_ptr<level_counts> any_ = std::make_unique<level_counts>();
  /// Timers by due time: a tick visits what is due, not every record. Ties
  /// are ordered by address, so a tick sorts what is due by id before it
  /// acts (the order of events must not depend on where records live).
  /// Each record keeps its entry's position: moving a timer erases there
  /// (no search), and a new deadline, usually the latest, goes in with the
  /// end as hint.
  using node_timer_set = std::set<std::pair<int64_t, const pb::NodeRecord*>>;
  using session_timer_set =
    std::set<std::pair<int64_t, const pb::SessionRecord*>>;
  /// What a node is counted as in by_model_ / any_, and its timer.
  struct node_aux {
    uint32_t level = 0;
    bool alive = false;
    bool available = false;
    std::vector<level_counts*> models;
    int64_t due = never;
    node_timer_set::iterator timer;  // valid while due != never
    bool test_sent = false;     // counted in tests_in_flight_
    uint64_t waiting_test = 0;  // its key in test_queue_ (0: not there)
  };
  struct session_timer {
    int64_t due;
    session_timer_set::iterator at;
  };
  std::unordered_map<const pb::NodeRecord*, node_aux> node_aux_;  // nodes never move
  node_timer_set node_timers_;
  session_timer_set session_timers_;
  std::unordered_map<const pb::SessionRecord*, session_timer> session_due_;
  std::vector<const pb::NodeRecord*> noted_nodes_;
  /// Sessions touched by the command being applied (archive() takes a
  /// session out before its record goes).
  std::vector<const pb::SessionRecord*> noted_sessions_;
  /// What the last command noted: flush_notes() hands its lists over here
  /// (no copy) for check_after() and note_changed(); valid until the next
  /// command (nodes never move, and archive() drops a session from the
  /// notes before its record goes).
  std::vector<const pb::NodeRecord*> last_noted_nodes_;
  std::vector<const pb::SessionRecord*> last_noted_sessions_;  // live then
  /// Queued sessions by what they need: within a class every session is
  /// served by the same nodes, so only its head is looked at per command.
  struct class_key {
    std::string model;
    uint32_t min_level;
    uint32_t min_nodes;
    bool operator<(const class_key& o) const {
      return std::tie(model, min_level, min_nodes)
             < std::tie(o.model, o.min_level, o.min_nodes);
    }
  };
  struct queue_class {
    std::map<uint64_t, pb::SessionRecord*> members;  // by acceptance order
    std::multiset<int64_t> entered;  // their last_activity (queue entry)
    /// The counts of the class's model (any_ for any model; null while no
    /// node has it): the walk of the queue's heads reads them without
    /// hashing the model's name. Set at the class's creation, and when a
    /// node brings the model (note_node).
    const level_counts* counts = nullptr;
  };
  /// The counts a session of `model` is served from; null if no node ever
  /// registered it.
  const level_counts* counts_for(const std::string& model) const;
  std::map<class_key, queue_class> classes_;
  /// Classes by the acceptance order of their head (seqs are unique); map
  /// nodes do not move, so each entry points at its class. Only classes of
  /// a model some node has registered (counts set): the names clients
  /// invent cost the walk nothing until a node brings one.
  using class_entry = std::pair<const class_key, queue_class>;
  struct head_order {
    bool operator()(const std::pair<uint64_t, class_entry*>& a,
                    const std::pair<uint64_t, class_entry*>& b) const {
      return a.first < b.first;
    }
  };
  std::set<std::pair<uint64_t, class_entry*>, head_order> heads_;
  /// ACTIVE sessions with fewer nodes than their redundancy, by id.
  std::set<std::string> short_;

  std::array<uint64_t, 9> counts_{};
  /// Tests asked for and not yet sent, by test id (the order they were
  /// asked in); kept by note_node from the records (test_waiting()).
  std::map<uint64_t, const pb::NodeRecord*> test_queue_;
  uint64_t tests_in_flight_ = 0;  // nodes with test_sent()
  uint64_t next_test_id_ = 1;
  uint64_t next_session_seq_ = 1;
  uint64_t rng_state_ = 0;
  uint64_t tests_passed_ = 0;
  uint64_t tests_failed_ = 0;
  uint64_t sessions_completed_ = 0;
  uint64_t sessions_failed_ = 0;
  uint64_t sessions_requeued_ = 0;
  mutable uint64_t walk_steps_ = 0;  // see walk_steps()
  id_window recent_ids_;
  int64_t last_now_ = 0;

  // pool_state.cpp: the copy freeze() keeps (null: none, or dropped) and
  // what changed since it was brought up to date. Nodes are never dropped,
  // so they are named by address; a session by id, since its record leaves
  // the pool when it ends.
  std::shared_ptr<record_copies> copies_;
  size_t kept_copy_from_ = default_kept_copy_from;
  std::unordered_set<const pb::NodeRecord*> changed_nodes_;
  /// The same nodes in the order they were first noted since their last
  /// copy (copy_ahead takes the oldest).
  std::deque<const pb::NodeRecord*> changed_order_;
  std::unordered_set<std::string> changed_sessions_;
  /// Notes what an applied command changed, for the next freeze().
  void note_changed(const pb::Command& cmd, const apply_result& r);
  /// A snapshot of everything, copied now (nothing kept).
  frozen copy_whole() const;
  /// The scalars of a snapshot (everything but records and window).
  pb::Snapshot snapshot_scalars() const;
};

/// The idempotency window as a snapshot holds it.
id_window::image recent_ids_image(const pb::Snapshot& snap);

/// I1-I5 on a snapshot's records alone (record_checks.hpp), in time linear
/// in its records: each node and live session checked against the records
/// it names, an id given twice, and the sessions accounted for. What a
/// restore would rebuild (the indexes) is not in a snapshot, so is not
/// checked here.
std::vector<violation> check_snapshot(const pb::Snapshot& snap);

/// Human-readable name of a node state ("ephemeral", ...).
std::string to_string(pb::NodeState s);
std::string to_string(pb::SessionState s);

} // namespace nodepool
