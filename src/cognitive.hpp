#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace nodepool {

/// One question of a cognitive test, with the answer that checks it.
struct challenge {
  std::string id;
  std::string prompt;
  std::string answer;
};

/// Deterministic challenges for one test: the same (test id, node id, level)
/// always gives the same questions, so a validator that restarts can grade
/// answers to a test it did not issue. Higher levels ask harder questions
/// (bigger operands, longer strings).
std::vector<challenge> make_challenges(uint64_t test_id,
                                       const std::string& node_id,
                                       uint32_t count, uint32_t level);

/// Number of answers equal to the expected ones, ignoring surrounding white
/// space, quotes, a final full stop and case.
uint32_t grade(const std::vector<challenge>& xs,
               const std::vector<std::string>& answers);

/// Reference solver for the prompts make_challenges writes; what a correct
/// model answers. Returns an empty string for a prompt it does not know.
std::string solve(const std::string& prompt);

} // namespace nodepool
