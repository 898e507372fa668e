#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "replication.hpp"

struct raft;
struct raft_fsm;
struct raft_buffer;
struct raft_io;

namespace nodepool {

/// The pool's side of one libraft member, whoever drives raft's loop: the
/// libuv thread of `raft_log` in an oracle, or `raft_fixture`'s hand-stepped
/// clock and network in tests. Everything here runs on that loop's thread.
///
/// - `fsm()` is the `raft_fsm` to give raft: committed entries go to the
///   state machine in order; snapshots are the state machine's bytes.
/// - `propose` appends one entry (`raft_apply`, with a buffer raft owns).
/// - `poll` is called after raft ran: it notices a change of role or term.
///   A member that becomes leader appends a barrier first and only reports
///   itself ready (and accepts proposals) once the barrier is applied, so
///   its state machine holds everything committed before its term.
class raft_member {
public:
  /// `guard`: close holes of libraft 0.15 (log matching, and an answer sent
  /// to a leader it no longer has; see raft_member.cpp); off only in the
  /// test that shows they are there.
  explicit raft_member(state_machine& sm, bool guard = true);
  ~raft_member();
  raft_member(const raft_member&) = delete;
  raft_member& operator=(const raft_member&) = delete;

  struct raft_fsm* fsm();
  /// After `raft_init` (or once the fixture made the server).
  void attach(struct raft* r);
  void propose(std::string entry, replicated_log::done_fn done);
  void poll();
  log_status status() const;
  void on_role_change(replicated_log::role_fn f);
  /// Why raft's last restore of a snapshot was refused ("" if none was):
  /// at start, raft_start fails with only raft's code for it.
  std::string refused_snapshot() const;
  /// After raft_start: whether the entries raft loaded past its snapshot
  /// follow the state restored from that snapshot
  /// (state_machine::follows): "" if so, else why not. See
  /// raft_member.cpp (12.).
  std::string check_loaded_log() const;

  struct impl;  // raft's callbacks reach it through raft_fsm::data

private:
  std::unique_ptr<impl> p_;
};

/// What the guard (see raft_member.cpp) dropped on `io`: messages from
/// servers outside the configuration, and answers a follower's write would
/// have sent after it stopped being a follower (or with no leader known).
uint64_t refused_peers_of(struct raft_io* io);
/// Snapshots from a leader that the state machine's check refused before
/// raft saw them (see raft_member.cpp, 7.).
uint64_t snapshots_refused_of(struct raft_io* io);
/// Answers on which a leader's commit index was raised to what a majority
/// holds (hole 8), and answers capped below an older term's entry so that
/// it is not committed by counting (hole 9).
uint64_t commits_raised_of(struct raft_io* io);
uint64_t old_term_capped_of(struct raft_io* io);
/// A follower's answers to entries it wrote, dropped because its term
/// changed while it wrote them (hole 10).
uint64_t stale_answers_of(struct raft_io* io);
/// Pre-votes refused with this member's own, higher term instead of the
/// one asked for, so that the candidate takes it up (hole 11).
uint64_t pre_vote_terms_told_of(struct raft_io* io);
uint64_t unaddressed_results_of(struct raft_io* io);
/// AppendEntries whose entries at or below this member's snapshot the guard
/// took off (hole 5).
uint64_t trimmed_to_snapshot_of(struct raft_io* io);
/// The guard's counts above, on `io`, as log_status carries them.
log_status::guard_counts guard_counts_of(struct raft_io* io);
/// The raft error code of the first write to the log on `io` that failed
/// since raft started on it (0: none).
int write_error_of(struct raft_io* io);
/// The same failure as text: raft's name for the code and what the I/O
/// said of it ("" when none).
std::string write_error_text_of(struct raft_io* io);
/// When the guard last heard from `server` on `io` (raft's clock, ms; 0:
/// never).
uint64_t heard_from(struct raft_io* io, uint64_t server);

/// Whether a leader may remove a voter: a majority of the voters left must
/// have been heard from within an election timeout (the leader counts
/// itself). A leader that took over less than an election timeout ago may
/// not have heard from them yet (as a follower it heard only from its
/// leader, and it won its election on the first votes that came in), so it
/// waits before it refuses.
struct removal_check {
  enum { proceed, wait, refuse } verdict = proceed;
  std::string why;  // refuse: the reason
};
removal_check check_removal(uint64_t id, unsigned voters_left,
                            unsigned heard_left, uint64_t leading_for_ms,
                            uint64_t election_timeout_ms);

/// Whether a leader hands leadership to member `to`, which it has `heard`
/// from within an election timeout or not. The same reasoning as for a
/// removal: a leader new to its term may not have heard from `to` yet (a
/// hand-over asked right after an election, a rotation's next step), so it
/// waits up to an election timeout of leading before it refuses.
removal_check check_transfer(uint64_t to, bool heard, uint64_t leading_for_ms,
                             uint64_t election_timeout_ms);

/// The bytes of an entry as raft_member frames them (raft_uv stores
/// 8-byte units): empty when the frame is not valid.
std::string_view unframed(const struct raft_buffer& b);

/// A snapshot's bytes framed for raft (from raft_malloc; base null when out
/// of memory): an entry's frame with a SHA-256 digest of the bytes after
/// the length, whose top bit says so.
struct raft_buffer frame_snapshot(std::string_view bytes);
/// The bytes of a snapshot framed by frame_snapshot, checked against their
/// digest; a frame without one (written before snapshots had digests) is
/// read as an entry's. False with `error` set when the frame is not valid
/// or the bytes do not match their digest.
bool unframed_snapshot(const struct raft_buffer& b, std::string_view& out,
                       std::string& error);

} // namespace nodepool
