#include "task_round.hpp"

#include <algorithm>

#include "digest.hpp"
#include "embedding.hpp"

namespace nodepool {

task_round::task_round(uint32_t task_no, const std::vector<std::string>& nodes,
                       int64_t now, int64_t phase_ms)
  : task_no_(task_no), started_(now), phase_ms_(phase_ms) {
  parts_.reserve(nodes.size());
  for (auto& n : nodes)
    parts_.emplace_back().node = n;
}

uint32_t task_round::task_of(const pb::MinerMsg& m) {
  return m.has_task_ack()         ? m.task_ack().task_no()
         : m.has_task_precommit() ? m.task_precommit().task_no()
                                  : m.task_commit().task_no();
}

std::optional<refusal>
task_round::on(const std::string& node, const pb::MinerMsg& m, int64_t now) {
  auto task_no = task_of(m);
  auto it = std::find_if(parts_.begin(), parts_.end(),
                         [&](auto& p) { return p.node == node; });
  if (it == parts_.end() || task_no != task_no_)
    return refusal{pb::REFUSAL_STALE_TASK, "task " + std::to_string(task_no)
                                   + " is not waiting for this node"};
  auto& p = *it;
  if (p.failed)
    return refusal{pb::REFUSAL_AFTER_DEADLINE, "task " + std::to_string(task_no)
                                       + " already ended for this node"};
  if (m.has_task_ack()) {
    if (p.phase != 0)
      return refusal{pb::REFUSAL_OUT_OF_ORDER, "task already acknowledged"};
    p.phase = 1;
  } else if (m.has_task_precommit()) {
    if (p.phase != 1 || m.task_precommit().output_hash().size() != 64)
      return refusal{pb::REFUSAL_OUT_OF_ORDER,
                     "precommit needs an ack first and a 64-hex-digit hash"};
    p.hash = m.task_precommit().output_hash();
    p.phase = 2;
  } else {
    if (p.phase != 2)
      return refusal{pb::REFUSAL_OUT_OF_ORDER, "commit needs a precommit first"};
    if (sha256_hex(m.task_commit().output()) != p.hash) {
      p.failed = true;
      p.outcome = pb::MISMATCH;
      return refusal{pb::REFUSAL_REVEAL_MISMATCH,
                     "revealed output does not match the precommitted hash"};
    }
    p.output = m.task_commit().output();
    p.phase = 3;
    p.latency_ms = now - started_;
  }
  return std::nullopt;
}

void task_round::expire(int64_t now) {
  for (int phase = 1; phase <= 3; ++phase) {
    if (now < started_ + phase_ms_ * phase)
      break;
    for (auto& p : parts_)
      if (!p.failed && p.phase < phase) {
        p.failed = true;
        p.outcome = pb::TIMEOUT;
      }
  }
}

std::optional<int64_t> task_round::next_deadline() const {
  for (int phase = 1; phase <= 3; ++phase)
    if (std::any_of(parts_.begin(), parts_.end(),
                    [&](auto& p) { return !p.failed && p.phase < phase; }))
      return started_ + phase_ms_ * phase;
  return std::nullopt;
}

bool task_round::drop(const std::string& node) {
  auto before = parts_.size();
  parts_.erase(std::remove_if(parts_.begin(), parts_.end(),
                              [&](auto& p) { return p.node == node; }),
               parts_.end());
  return parts_.size() != before;
}

bool task_round::keep_only(const std::vector<std::string>& nodes) {
  auto before = parts_.size();
  parts_.erase(std::remove_if(parts_.begin(), parts_.end(),
                              [&](auto& p) {
                                return std::find(nodes.begin(), nodes.end(),
                                                 p.node)
                                       == nodes.end();
                              }),
               parts_.end());
  return parts_.size() != before;
}

bool task_round::done() const {
  return std::all_of(parts_.begin(), parts_.end(),
                     [](auto& p) { return p.failed || p.phase == 3; });
}

void task_round::judge(double threshold) {
  std::vector<size_t> ok;
  std::vector<std::string> outputs;
  for (size_t i = 0; i < parts_.size(); ++i)
    if (!parts_[i].failed) {
      ok.push_back(i);
      outputs.push_back(parts_[i].output);
    }
  for (auto k : outliers(outputs, threshold))
    parts_[ok[k]].outcome = pb::OUTLIER;
}

} // namespace nodepool
