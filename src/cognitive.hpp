#pragma once

// The grader of cognitive tests: which bank items a test asks (chosen with
// a secret only the oracles hold) and whether an answer is right. Linked by
// oracles only (nodepool_grader); the miner library has none of it.
#include <cstdint>
#include <string>
#include <vector>

#include "bank.hpp"

namespace nodepool {

/// The questions of one test, and the nonce the answers must echo.
struct test_plan {
  std::vector<const bank_item*> items;  // into the bank; in asking order
  std::string nonce;                    // hex, unpredictable without the secret
};

/// Chooses `count` items for test `test_id` of `node_id` at `level`, among
/// the items for `models`: HMAC-SHA-256(secret, test id, node id) seeds the
/// draw, so the same secret and ids always give the same test (a validator
/// can rebuild it) and a miner, without the secret, cannot know its
/// questions before they are sent. round(count * peer_share) of them are
/// peer items when the bank has some (at least one item is graded).
test_plan choose_challenges(const std::string& secret, uint64_t test_id,
                            const std::string& node_id, uint32_t level,
                            const std::vector<std::string>& models,
                            uint32_t count, double peer_share,
                            const challenge_bank& bank);

/// Whether `answer` is right for a graded item (exact, number, similar).
/// A peer item is never right by itself: see agrees_with_peers.
bool grade_answer(const bank_item& item, const std::string& answer);

/// The share of `answer`'s words that lie in runs of 4 or more words found
/// in the same order in `prompt` (words: letters and digits, any case).
/// A `similar` answer mostly made of the question's own phrases restates
/// it rather than answering it, and fails (over 0.5).
double copied_share(const std::string& answer, const std::string& prompt);

/// Whether `answer` agrees (text embedding, cosine >= threshold) with at
/// least half of `references`, the answers of nodes in good standing.
bool agrees_with_peers(const std::string& answer,
                       const std::vector<std::string>& references,
                       double threshold);

/// The oracles' secret for choosing challenges: read from `path`, or
/// created there (32 random bytes, hex, mode 0600) when it does not exist.
/// Throws std::runtime_error when the file is readable by others than its
/// owner, shorter than 32 characters, or cannot be read or written.
std::string load_or_create_secret(const std::string& path);

} // namespace nodepool
