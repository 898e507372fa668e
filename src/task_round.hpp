#pragma once

// One task of a session, run on some of its nodes. Each node acknowledges
// the task (ack), commits to its output by its SHA-256 (precommit), then
// reveals the output (commit), each phase by its deadline: T, 2T and 3T
// after the task was sent (T: task_phase_timeout_ms). A node that misses a
// deadline fails (TIMEOUT), one whose output does not match its hash fails
// (MISMATCH); once every node committed or failed, the outputs are compared
// and those that disagree with the others are outliers.
//
// Pure: a miner's message and the time go in, a refusal or nothing comes
// out. The session actor carries the messages and arms the timer.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "nodepool.pb.h"
#include "refusal.hpp"

namespace nodepool {

class task_round {
public:
  /// Progress of one node on the task.
  struct part {
    std::string node;
    int phase = 0;  // 0 sent, 1 acked, 2 precommitted, 3 committed
    std::string hash;
    std::string output;
    bool failed = false;
    pb::TaskOutcome outcome = pb::OK;
    int64_t latency_ms = 0;  // task sent -> output committed
  };

  task_round() = default;
  /// Task `task_no` sent at `now` to `nodes`, each phase `phase_ms` long.
  task_round(uint32_t task_no, const std::vector<std::string>& nodes,
             int64_t now, int64_t phase_ms);

  /// A miner's TaskAck, TaskPrecommit or TaskCommit from `node`, at `now`.
  /// Nothing: taken. A refusal changes nothing, except a revealed output
  /// that does not match its hash: that fails the node (MISMATCH).
  std::optional<refusal> on(const std::string& node, const pb::MinerMsg& m,
                            int64_t now);
  /// Every node still short of a phase whose deadline is at or before
  /// `now` fails (TIMEOUT).
  void expire(int64_t now);
  /// The deadline of the next phase some node still owes, if any.
  std::optional<int64_t> next_deadline() const;
  /// The node leaves the task (released or lost): its part goes. True if
  /// it had one.
  bool drop(const std::string& node);
  /// Only the parts of these nodes stay. True if one went.
  bool keep_only(const std::vector<std::string>& nodes);
  /// Every node committed or failed (true with no part at all).
  bool done() const;

  /// Once done: the committed outputs that agree (embedding cosine at or
  /// above `threshold`) with fewer than half of the others become OUTLIER.
  void judge(double threshold);

  /// The task a TaskAck, TaskPrecommit or TaskCommit is about.
  static uint32_t task_of(const pb::MinerMsg& m);

  uint32_t task_no() const { return task_no_; }
  int64_t started() const { return started_; }
  const std::vector<part>& parts() const { return parts_; }

private:
  uint32_t task_no_ = 0;
  int64_t started_ = 0;
  int64_t phase_ms_ = 0;
  std::vector<part> parts_;
};

} // namespace nodepool
