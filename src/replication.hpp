#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>
#include <string_view>

namespace nodepool {

/// What a replicated log drives on every member: committed entries, in log
/// order, on the log's own thread. `replica` (replica.hpp) is the pool's.
class state_machine {
public:
  virtual ~state_machine() = default;
  virtual void apply(std::string_view entry) = 0;
  virtual std::string snapshot() = 0;
  /// A snapshot in two steps, so that the applying thread stops only for
  /// the first: this one runs there and takes what the snapshot needs (a
  /// copy of the state); the function it returns runs once, on another
  /// thread, while entries go on being applied, and gives the bytes. By
  /// default the first step does it all.
  virtual std::function<std::string()> snapshot_later() {
    return [bytes = snapshot()]() mutable { return std::move(bytes); };
  }
  /// False (state unchanged, `error` set) for a snapshot that is not valid.
  virtual bool restore(std::string_view bytes, std::string& error) = 0;
  /// Whether `restore` would take these bytes, changing nothing: a member
  /// asks before it lets a snapshot sent by its leader in (raft writes a
  /// snapshot to disk and drops its log before it restores it, so a refusal
  /// at that point leaves nothing to go on with). By default every snapshot
  /// passes.
  virtual bool check(std::string_view /*bytes*/, std::string& /*error*/) const {
    return true;
  }
  /// Applies what `apply` left for later, if the machine defers its work
  /// (replica_machine's `deferred`). The log calls it on its own thread
  /// once the callbacks of what it just received have run: a leader then
  /// answers a commit before the work of applying it.
  virtual void catch_up() {}
  /// Why this machine can no longer follow the log it is given ("" while
  /// it can): an entry came that is not the next one its state needs, so
  /// every later entry would be refused too. The member then stops taking
  /// part (raft_member.cpp): its log is not the cluster's.
  virtual std::string broken() const { return {}; }
  /// Whether the entries a member holds past its state (in log order, as
  /// raft loaded them at start) can follow that state: "" if so, else why
  /// not, with `bad` the position of the first that cannot; changes
  /// nothing. By default every log can.
  virtual std::string follows(const std::vector<std::string_view>& entries,
                              size_t& bad) const {
    (void)entries;
    (void)bad;
    return {};
  }
};

/// How a proposal ended. Only `committed` means a majority holds it
/// durably and it has been applied here (handed to the state machine,
/// which may defer the work but shows no reader a state without it).
/// `leadership_lost` means the outcome is unknown: the entry may still
/// commit under the next leader, which is why commands carry ids and take
/// effect at most once.
enum class propose_status {
  committed,
  not_leader,       // never appended
  leadership_lost,  // appended, outcome unknown
  shutdown,
  failed,           // I/O error, no space, ...
};
const char* to_string(propose_status s);

enum class log_role { unavailable, follower, candidate, leader };
const char* to_string(log_role r);

/// A member's view of the log.
/// A member of the group as the log's configuration has it.
struct log_member {
  uint64_t id = 0;
  std::string address;  // as the configuration holds it (member_config_address)
  enum class kind { voter, standby, spare } role = kind::voter;
  /// On a leader: this member, or one heard from within an election
  /// timeout. Elsewhere false.
  bool reachable = false;
};
const char* to_string(log_member::kind k);

struct log_status {
  uint64_t id = 0;
  log_role role = log_role::unavailable;
  uint64_t term = 0;
  uint64_t leader_id = 0;        // 0: no leader known
  std::string leader_address;
  uint64_t commit_index = 0;
  uint64_t applied_index = 0;
  uint64_t last_index = 0;
  /// Leader only: the barrier of this term has been applied, so the state
  /// machine holds everything committed before the term began. A leader
  /// proposes only once it is ready.
  bool ready = false;
  /// Messages refused because their sender is not a member (a stranger on
  /// the Raft port, or an oracle of another cluster file).
  uint64_t refused_peers = 0;
  /// Snapshots from a leader refused before raft saw them: they did not
  /// pass `state_machine::check`.
  uint64_t snapshots_refused = 0;
  /// What the guard of libraft 0.15's holes did (src/raft/raft_member.cpp),
  /// for an operator who wants to see it work: AppendEntries trimmed to the
  /// snapshot (5.), answers dropped for want of a leader (4.), commit
  /// indexes raised to what a majority holds (8.), answers capped below an
  /// older term's entry (9.), answers to entries written in an earlier
  /// term dropped (10.), pre-votes refused with this member's higher term
  /// (11.). Zero for a log without that guard.
  struct guard_counts {
    uint64_t trimmed_to_snapshot = 0;
    uint64_t unaddressed_results = 0;
    uint64_t commits_raised = 0;
    uint64_t old_term_capped = 0;
    uint64_t stale_answers = 0;
    uint64_t pre_vote_terms_told = 0;
    /// Each count with its name (as the cluster view, /metrics and the
    /// simulation name them), in one place.
    template <class F>
    void each(F f) const {
      f("trimmed_to_snapshot", trimmed_to_snapshot);
      f("unaddressed_results", unaddressed_results);
      f("commits_raised", commits_raised);
      f("old_term_capped", old_term_capped);
      f("stale_answers", stale_answers);
      f("pre_vote_terms_told", pre_vote_terms_told);
    }
  } guard;
  /// The configuration this member knows (the latest it holds, committed or
  /// not), in id order.
  std::vector<log_member> members;
  /// A membership change under way here (leader): what it is doing.
  std::string changing;
  /// A write to this member's log failed (a full disk, say): what raft
  /// said. The member is then unavailable for good; an oracle stops.
  std::string write_error;
  /// A snapshot from the leader passed `state_machine::check` but its
  /// restore failed: why. Raft had already written it and dropped the log
  /// below it, so the member stops taking part for good; an oracle stops.
  std::string restore_error;
  /// The state machine can no longer follow this member's log
  /// (`state_machine::broken`): why. The member stops taking part for
  /// good, takes no more snapshots, and an oracle stops.
  std::string apply_error;
};

/// The seam between the pool and a consensus library: PoolState and the
/// actors see only this. Implementations: `memory_log` below (one member,
/// for tests and a plain single oracle) and `raft_log` (libraft, src/raft/).
class replicated_log {
public:
  using done_fn = std::function<void(propose_status, uint64_t index)>;
  /// Called on the log's thread when this member becomes a ready leader or
  /// stops being one. Given when the log is made.
  using role_fn = std::function<void(const log_status&)>;

  virtual ~replicated_log() = default;
  /// Proposes one entry. `done` runs exactly once, on the log's thread:
  /// after the entry is committed and applied to the local state machine,
  /// or with the reason it was not. Callable from any thread.
  virtual void propose(std::string entry, done_fn done) = 0;
  /// A consistent copy of this member's view. Callable from any thread.
  virtual log_status status() const = 0;
  /// Asks the leader (this member) to hand leadership to member `to` (0:
  /// the most up-to-date voter). `done` runs once, on the log's thread:
  /// with "" once the transfer ended (who leads now is in status()), or
  /// with why it could not start. Callable from any thread.
  using transfer_fn = std::function<void(std::string error)>;
  virtual void transfer(uint64_t to, transfer_fn done) {
    (void)to;
    done("this log cannot transfer leadership");
  }
  /// Membership, asked of the leader (this member); `done` as for transfer.
  /// add_member: member `id` at `address` joins as a non-voter (standby),
  /// catches up (by snapshot when it is far behind), then becomes a voter.
  /// remove_member: refused when the voters left would not have a reachable
  /// majority, or when `id` is this member (hand leadership over first).
  virtual void add_member(uint64_t id, std::string address, transfer_fn done) {
    (void)id;
    (void)address;
    done("this log has no members to change");
  }
  virtual void remove_member(uint64_t id, transfer_fn done) {
    (void)id;
    done("this log has no members to change");
  }
  /// Stops taking part: proposals still pending end (leadership_lost or
  /// shutdown), later ones end as shutdown, and no callback runs after it
  /// returns. Idempotent; the destructor does it too.
  virtual void stop() = 0;
};

/// Hands a log's role changes to whoever listens, whenever it starts
/// listening: the log is made (and may lead) before the actors that act on
/// it exist. A late listener is told the last change at once.
class role_relay {
public:
  void publish(const log_status& s);
  void listen(std::function<void(const log_status&)> f);

private:
  std::mutex mu_;
  std::function<void(const log_status&)> f_;
  bool have_ = false;
  log_status last_;
};

/// One member, in memory: it is the leader of term 1 from the start, and a
/// proposal commits at once, on the caller's thread. For tests, and to run
/// the cluster's code paths without a cluster.
class memory_log final : public replicated_log {
public:
  explicit memory_log(state_machine& sm, role_fn role = {}, uint64_t id = 1);
  /// Becomes leader (calls the role function).
  void start();
  void propose(std::string entry, done_fn done) override;
  log_status status() const override;
  void stop() override;

private:
  state_machine& sm_;
  role_fn role_;
  mutable std::mutex mu_;
  log_status st_;
};

} // namespace nodepool
