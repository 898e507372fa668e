#pragma once

// A challenge bank: the prompts a cognitive test draws from, with their
// reference answers. Operators give one as a JSONL file (one item per line):
//
//   {"id":"sheep","level":3,"grade":"number","prompt":"...","answer":"9"}
//
// Keys: id (unique), level (0..100), grade (exact | number | similar |
// peer), prompt, answer (all but peer), tolerance (number; default 0),
// threshold (similar; default 0.8), max_tokens (default 16, 64 for
// similar, 96 for peer), models (list; default: any model). Blank lines
// are skipped; anything else that is not such an object is an error naming
// the line. deploy/banks/default.jsonl is compiled in as the default bank.
//
// Parsing a bank is not grading it: the grader lives with the oracles
// (cognitive.hpp); a miner only ever sees prompts.
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace nodepool {

enum class grade_mode {
  exact,    // equal after normalisation (case, white space, decoration)
  number,   // a number within `tolerance` of the reference
  similar,  // text embedding within `threshold` (cosine) of the reference
  peer,     // no reference: compared with nodes in good standing
};

std::string to_string(grade_mode m);

/// An answer without surrounding white space, quotes, back-ticks or a
/// final full stop, in lower case, inner white space collapsed: what
/// `exact` compares.
std::string normalize_answer(const std::string& s);

struct bank_item {
  std::string id;
  uint32_t level = 0;
  grade_mode grade = grade_mode::exact;
  std::string prompt;
  std::string answer;
  double tolerance = 0;
  double threshold = 0.8;
  /// `similar` only: concepts the answer must mention, each a list of
  /// alternatives ("tilt|axis"), and phrases it must not ("closer to the
  /// sun"). A phrase is mentioned when its words begin consecutive words
  /// of the answer ("dens" is in "less dense", "density").
  std::vector<std::vector<std::string>> must;
  std::vector<std::string> must_not;
  uint32_t max_tokens = 16;
  std::vector<std::string> models;  // empty: any model

  bool for_model(const std::string& m) const;
};

/// The words of `text`: runs of letters and digits (and of bytes of UTF-8
/// sequences), ASCII lower-cased.
std::vector<std::string> words_of(const std::string& text);

/// Whether `phrase`'s words begin consecutive words of `text` (letters and
/// digits, any case): "less dens" is in "It is less dense.". A phrase
/// without a word is in nothing.
bool mentions(const std::string& text, const std::string& phrase);
/// The same, in a clause where none of the four words before it denies it
/// ("not", "no", "never", "isn't", "can't", ...; "not only", "not as", "no
/// doubt" do not): "less dense" is mentioned in "ice is not less dense",
/// and not affirmed. A clause ends at punctuation and before "but",
/// "because", "and", "or", "so", ... (not right after a denial: "not
/// because of the tilt"), so "not heavier but less dense" affirms it.
/// Words, not understanding: a denial in other words ("far from") is not
/// seen.
bool affirms(const std::string& text, const std::string& phrase);

/// What a `similar` item requires that `answer` lacks: "" when it affirms
/// one alternative of every `must` concept (where one of a concept's
/// alternatives is denied, the others in that clause count as denied too:
/// "not caused by the tilt of the axis" names neither) and mentions no `must_not`
/// phrase (denied or not: a wrong claim fails the answer either way);
/// otherwise the first concept missing ("must tilt|axis") or phrase found
/// ("must_not closer to the sun").
std::string missing_concept(const bank_item& item, const std::string& answer);

/// A bank file that cannot be used: `what()` names the file and line.
struct bank_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class challenge_bank {
public:
  /// Parses JSONL text; `source` names it in errors. Throws bank_error.
  static challenge_bank parse(const std::string& text, const std::string& source);
  /// Reads and parses a file. Throws bank_error.
  static challenge_bank load(const std::string& path);
  /// deploy/banks/default.jsonl, compiled in (parsed once).
  static std::shared_ptr<const challenge_bank> builtin();

  const std::vector<bank_item>& items() const { return items_; }
  const bank_item* find(const std::string& id) const;
  /// The levels that have graded (not peer) items, ascending.
  std::vector<uint32_t> levels() const;
  /// Items a test at `level` for a node serving `models` may ask, peer
  /// items or graded ones, in groups by preference: the highest level of
  /// the bank at or under `level` first (the node's level), then the levels
  /// under it, then those above it. Each group is in bank order.
  std::vector<std::vector<const bank_item*>> candidates(
    uint32_t level, const std::vector<std::string>& models, bool peer) const;

private:
  std::vector<bank_item> items_;
  std::unordered_map<std::string, size_t> by_id_;
};

/// Prompt and token counts of a test at each level: what a test costs a
/// miner (README). Tokens are estimated at 4 bytes each.
struct level_cost {
  uint32_t level = 0;
  uint32_t prompts = 0;       // per test
  uint32_t graded_items = 0;  // in the bank at this level
  uint32_t peer_items = 0;
  uint64_t prompt_tokens = 0;  // sent to the model per test (mean)
  uint64_t answer_tokens = 0;  // at most, per test (sum of max_tokens, mean)
};
std::vector<level_cost> test_costs(const challenge_bank& bank, uint32_t per_test,
                                   double peer_share, uint32_t max_level);

/// What the `sim` backend's healthy "model" knows: the bank's reference
/// answers, given to it by the simulation (never through the protocol).
/// Prompts it does not know get the generic output of a healthy model.
class sim_knowledge {
public:
  explicit sim_knowledge(const challenge_bank& bank);
  static std::shared_ptr<const sim_knowledge> builtin();

  /// A healthy model's answer.
  std::string answer(const std::string& prompt) const;
  /// A plausible wrong one: another number, or another item's answer.
  std::string wrong_answer(const std::string& prompt, uint64_t r) const;

private:
  struct known {
    grade_mode grade;
    std::string answer;
  };
  std::unordered_map<std::string, known> by_prompt_;
  std::vector<std::string> words_;  // exact answers, for wrong ones
};

} // namespace nodepool
