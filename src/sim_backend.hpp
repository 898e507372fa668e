#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "random.hpp"

namespace nodepool {

class sim_knowledge;

/// How a simulated miner node behaves.
enum class behaviour {
  healthy,  // right answers, fast
  slow,     // right answers, but past the deadline
  wrong,    // fast, wrong answers and unrelated task outputs
  flaky,    // healthy most of the time, wrong or silent now and then
  crash,    // healthy until it dies after a few messages
  garbage,  // sends bytes that do not decode, or reveals that miss their hash
  // Cheats: no model at all.
  solver,   // answers tests with a hand-written solver of arithmetic prompts
  copycat,  // answers tests with the answers another node gave to its own
};

std::string to_string(behaviour b);
std::optional<behaviour> parse_behaviour(const std::string& s);

/// A mix like "healthy:8,wrong:1,slow:1" expanded, seeded, into one
/// behaviour per node. Returns an error message in `err` on a bad spec.
std::vector<behaviour> expand_mix(const std::string& mix, size_t nodes,
                                  uint64_t seed, std::string& err);

/// What a simulated node decides to do with one request.
struct sim_reply {
  std::string text;        // answer or output
  int64_t delay_ms = 0;    // how long to wait before replying
  bool silent = false;     // do not reply at all
  bool garbage = false;    // send undecodable bytes instead
  bool bad_reveal = false; // reveal an output other than the hashed one
};

/// The deterministic `sim` inference backend: one per node, seeded, so a run
/// with the same seed behaves the same. Its "model" is `knowledge`: the
/// challenge bank's answers, which the simulation hands it (the builtin
/// bank's when null); it never learns them through the protocol.
class sim_backend {
public:
  sim_backend(behaviour b, uint64_t seed, int64_t deadline_ms,
              std::shared_ptr<const sim_knowledge> knowledge = nullptr);

  behaviour kind() const { return behaviour_; }
  /// The answer to one challenge of a test that must be answered within
  /// `bound_ms` (the latency bound; 0: none) and `deadline_ms`.
  sim_reply answer(const std::string& challenge_prompt, int64_t bound_ms,
                   int64_t deadline_ms);
  sim_reply infer(const std::string& task_prompt);
  /// True once a `crash` node has used up its life.
  bool crashed() const { return crashed_; }

  /// What a healthy model outputs for a task prompt (deterministic).
  static std::string healthy_output(const std::string& prompt);
  /// Fluent text about nothing asked (a wrong model's output).
  static std::string unrelated_output(uint64_t r);
  /// The cheat of a miner with no model: a hand-written solver of the
  /// arithmetic and word prompts that tests once were. Empty when it cannot.
  static std::string arithmetic_solver(const std::string& prompt);

private:
  uint64_t next();
  bool chance(double p);
  void count_message();

  behaviour behaviour_;
  std::shared_ptr<const sim_knowledge> knowledge_;
  seeded_rng rng_;
  int64_t deadline_ms_;
  uint32_t life_;  // messages until a crash node dies
  bool crashed_ = false;
};

} // namespace nodepool
