#include "bank.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <fstream>
#include <initializer_list>
#include <map>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "sim_backend.hpp"

namespace nodepool {

// deploy/banks/default.jsonl, compiled in (tools/embed_text.cmake).
extern const char default_bank_text[];
extern const size_t default_bank_size;

namespace {

constexpr size_t max_prompt_bytes = 4096;
constexpr size_t max_answer_bytes = 4096;
constexpr uint32_t max_bank_level = 100;

std::optional<grade_mode> parse_grade(const std::string& s) {
  for (auto m : {grade_mode::exact, grade_mode::number, grade_mode::similar,
                 grade_mode::peer})
    if (to_string(m) == s)
      return m;
  return std::nullopt;
}

/// The number a reference answer holds: the whole text, a plain decimal
/// ("-12", "0.05"; no exponent, sign '+', hex or spaces), as answers are
/// read.
std::optional<double> whole_number(const std::string& s) {
  size_t i = s.size() > 0 && s[0] == '-' ? 1 : 0;
  size_t digits = 0;
  while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i])))
    ++i, ++digits;
  if (digits == 0 || digits > 15)
    return std::nullopt;
  if (i < s.size() && s[i] == '.') {
    size_t frac = 0;
    ++i;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i])))
      ++i, ++frac;
    if (frac == 0 || frac > 15)
      return std::nullopt;
  }
  if (i != s.size())
    return std::nullopt;
  return std::strtod(s.c_str(), nullptr);
}

bank_item parse_item(const nlohmann::json& j, const std::string& where) {
  auto fail = [&](const std::string& why) { return bank_error(where + ": " + why); };
  if (!j.is_object())
    throw fail("expected a JSON object");
  bank_item it;
  bool has_grade = false, has_level = false, has_answer = false;
  bool has_threshold = false, has_tolerance = false, has_max = false;
  for (auto& [k, v] : j.items()) {
    if (k == "id" || k == "prompt" || k == "answer") {
      if (!v.is_string() || v.get<std::string>().empty())
        throw fail(k + ": expected a non-empty string");
      auto s = v.get<std::string>();
      if (k == "id") {
        if (s.size() > 128)
          throw fail("id: longer than 128 bytes");
        it.id = s;
      } else if (k == "prompt") {
        if (s.size() > max_prompt_bytes)
          throw fail("prompt: longer than " + std::to_string(max_prompt_bytes)
                     + " bytes");
        it.prompt = s;
      } else {
        if (s.size() > max_answer_bytes)
          throw fail("answer: longer than " + std::to_string(max_answer_bytes)
                     + " bytes");
        it.answer = s;
        has_answer = true;
      }
    } else if (k == "level") {
      if (!v.is_number_unsigned() || v.get<uint64_t>() > max_bank_level)
        throw fail("level: expected an integer 0.." + std::to_string(max_bank_level));
      it.level = v.get<uint32_t>();
      has_level = true;
    } else if (k == "grade") {
      auto g = v.is_string() ? parse_grade(v.get<std::string>()) : std::nullopt;
      if (!g)
        throw fail("grade: expected exact, number, similar or peer");
      it.grade = *g;
      has_grade = true;
    } else if (k == "tolerance") {
      if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() < 0)
        throw fail("tolerance: expected a number >= 0");
      it.tolerance = v.get<double>();
      has_tolerance = true;
    } else if (k == "threshold") {
      if (!v.is_number() || !(v.get<double>() > 0 && v.get<double>() <= 1))
        throw fail("threshold: expected a number in (0, 1]");
      it.threshold = v.get<double>();
      has_threshold = true;
    } else if (k == "max_tokens") {
      if (!v.is_number_unsigned() || v.get<uint64_t>() == 0
          || v.get<uint64_t>() > 4096)
        throw fail("max_tokens: expected an integer 1..4096");
      it.max_tokens = v.get<uint32_t>();
      has_max = true;
    } else if (k == "must" || k == "must_not") {
      // "must": ["tilt|axis", ...]; "must_not": ["closer to the sun", ...]
      auto what = k + ": expected a non-empty list of phrases (at most 16, "
                      "each 1..128 bytes with a letter or digit"
                  + std::string{k == "must" ? "; '|' between alternatives)" : ")"};
      if (!v.is_array() || v.empty() || v.size() > 16)
        throw fail(what);
      for (auto& x : v) {
        if (!x.is_string())
          throw fail(what);
        auto text = x.get<std::string>();
        std::vector<std::string> alts;
        if (k == "must") {
          std::stringstream in{text};
          for (std::string a; std::getline(in, a, '|');)
            alts.push_back(a);
          if (!text.empty() && text.back() == '|')
            alts.push_back("");
        } else {
          alts.push_back(text);
        }
        for (auto& a : alts)
          if (a.empty() || a.size() > 128
              || std::none_of(a.begin(), a.end(), [](unsigned char c) {
                   return std::isalnum(c) || c >= 0x80;
                 }))
            throw fail(what);
        if (k == "must")
          it.must.push_back(std::move(alts));
        else
          it.must_not.push_back(std::move(text));
      }
    } else if (k == "models") {
      if (!v.is_array() || v.empty())
        throw fail("models: expected a non-empty list of model names");
      for (auto& m : v) {
        if (!m.is_string() || m.get<std::string>().empty())
          throw fail("models: expected a non-empty list of model names");
        it.models.push_back(m.get<std::string>());
      }
    } else {
      throw fail("unknown key '" + k
                 + "' (expected id, level, grade, prompt, answer, tolerance, "
                   "threshold, must, must_not, max_tokens, models)");
    }
  }
  if (it.id.empty())
    throw fail("id is missing");
  if (it.prompt.empty())
    throw fail("prompt is missing");
  if (!has_level)
    throw fail("level is missing");
  if (!has_grade)
    throw fail("grade is missing");
  if (it.grade == grade_mode::peer && has_answer)
    throw fail("a peer item has no answer: nodes in good standing give it");
  if (it.grade != grade_mode::peer && !has_answer)
    throw fail("answer is missing");
  if (it.grade == grade_mode::number && !whole_number(it.answer))
    throw fail("answer: '" + it.answer + "' is not a number (digits, with "
               "a '-' and a '.' if need be)");
  if (it.grade != grade_mode::peer && normalize_answer(it.answer).empty())
    throw fail("answer: nothing left once quotes and white space are removed");
  if (has_tolerance && it.grade != grade_mode::number)
    throw fail("tolerance is only for grade number");
  if (has_threshold && it.grade != grade_mode::similar)
    throw fail("threshold is only for grade similar");
  if ((!it.must.empty() || !it.must_not.empty()) && it.grade != grade_mode::similar)
    throw fail("must and must_not are only for grade similar");
  // The reference itself must pass: a healthy model answering as it does
  // would fail otherwise.
  if (auto why = missing_concept(it, it.answer); !why.empty())
    throw fail("answer: the reference fails its own " + why);
  if (!has_max)
    it.max_tokens = it.grade == grade_mode::peer      ? 96
                    : it.grade == grade_mode::similar ? 64
                                                      : 16;
  return it;
}

} // namespace

namespace {

/// The words of a text, and for each the index of the first word of its
/// clause.
struct words_and_clauses {
  std::vector<std::string> words;
  std::vector<size_t> clause_start;
};

/// Whether words `w` of `t` begin at j.
bool words_at(const std::vector<std::string>& t, size_t j,
              std::initializer_list<const char*> w) {
  if (j + w.size() > t.size())
    return false;
  for (auto* x : w)
    if (t[j++] != x)
      return false;
  return true;
}

/// Whether word j of `t` denies what follows it: "not", "no", "never",
/// "nothing", "unrelated", "far" in "is far from", ...; "isn't" is the words
/// "isn" and "t", "can't" "can" and "t".
bool denies(const std::vector<std::string>& t, size_t j) {
  static const std::set<std::string> words{
    "not", "no", "never", "neither", "nor", "cannot", "without", "isn",
    "aren", "wasn", "weren", "doesn", "don", "didn", "hasn", "haven",
    "hadn", "couldn", "wouldn", "shouldn", "mustn", "needn", "ain", "isnt",
    "doesnt", "dont", "nothing", "unrelated"};
  if (t[j] == "can" || t[j] == "won")
    return j + 1 < t.size() && t[j + 1] == "t";
  // "is far from dense", not "tilted far from the Sun".
  if (t[j] == "far") {
    static const std::set<std::string> be{"is", "are", "was", "were", "be",
                                          "been", "being", "s", "re"};
    return j > 0 && be.count(t[j - 1]) && words_at(t, j + 1, {"from"});
  }
  return words.count(t[j]) > 0;
}

/// How many words after a denial at j it reaches: four, and the words of
/// its phrase ("nothing to do with", "far from") besides.
size_t denial_reach(const std::vector<std::string>& t, size_t j) {
  if (words_at(t, j, {"nothing", "to", "do", "with"}))
    return 7;
  if (words_at(t, j, {"far", "from"}))
    return 5;
  return 4;
}

/// A text's words, ASCII lower-cased, and its clauses. A clause ends at
/// punctuation (. , ; : ! ? and brackets) and before "but", "because",
/// "since", "although", "though", "whereas", "while", "yet", "so", "and",
/// "or", "instead" and "rather", unless a denial comes just before the
/// word ("not because of the tilt" is one clause).
words_and_clauses split_words(const std::string& text) {
  static const std::set<std::string> openers{
    "but",   "because", "since", "although", "though", "whereas", "while",
    "yet",   "so",      "and",   "or",       "instead", "rather"};
  words_and_clauses out;
  std::string w;
  size_t start = 0;
  auto end_word = [&] {
    if (w.empty())
      return;
    auto& t = out.words;
    if (openers.count(w) && !(t.size() > 0 && denies(t, t.size() - 1)))
      start = t.size();
    t.push_back(std::move(w));
    out.clause_start.push_back(start);
    w.clear();
  };
  for (size_t i = 0; i < text.size(); ++i) {
    auto c = static_cast<unsigned char>(text[i]);
    // A typographic apostrophe or quote (U+2018, U+2019) separates words
    // as "'" does: "isn’t" is "isn" and "t".
    if (text.compare(i, 3, "\xE2\x80\x98") == 0
        || text.compare(i, 3, "\xE2\x80\x99") == 0) {
      end_word();
      i += 2;
      continue;
    }
    // Other bytes of UTF-8 sequences (>= 0x80) are letters: "été" is one
    // word, not "t" between two separators.
    if (std::isalnum(c) || c >= 0x80) {
      w += static_cast<char>(std::tolower(c));
      continue;
    }
    end_word();
    if (c != 0 && std::strchr(".,;:!?()[]", static_cast<char>(c)))
      start = out.words.size();
  }
  end_word();
  return out;
}

/// Whether a word of t[i]'s clause, at most four words before it (seven
/// from "nothing to do with", five from "far from"), denies it: "not less
/// dense", "not caused by the tilt", "has nothing to do with the tilt".
/// "Not only", "not just", "not as", "no doubt", "no wonder", "nothing but",
/// "nothing more than", "nothing less than" and "nothing other than" deny
/// nothing.
bool denied_at(const words_and_clauses& t, size_t i) {
  static const std::set<std::string> no_denial{"only", "just", "as", "doubt",
                                               "wonder", "but"};
  auto& w = t.words;
  for (size_t j = std::max(t.clause_start[i], i >= 7 ? i - 7 : 0); j < i; ++j) {
    if (!denies(w, j) || i - j > denial_reach(w, j))
      continue;
    if (j + 1 < i && no_denial.count(w[j + 1]))
      continue;
    if (w[j] == "nothing" && j + 1 < i
        && (w[j + 1] == "more" || w[j + 1] == "less" || w[j + 1] == "other"))
      continue;
    return true;
  }
  return false;
}

} // namespace

std::vector<std::string> words_of(const std::string& text) {
  return split_words(text).words;
}

namespace {

/// Where `phrase`'s words begin consecutive words of `text`: the index of
/// the first word of each place.
std::vector<size_t> places_of(const words_and_clauses& text,
                              const std::string& phrase) {
  std::vector<size_t> at;
  auto& t = text.words;
  auto p = words_of(phrase);
  if (p.empty() || p.size() > t.size())
    return at;
  for (size_t i = 0; i + p.size() <= t.size(); ++i) {
    size_t k = 0;
    while (k < p.size() && t[i + k].compare(0, p[k].size(), p[k]) == 0)
      ++k;
    if (k == p.size())
      at.push_back(i);
  }
  return at;
}

/// Whether one of a concept's phrases is named in a clause where none of
/// them is denied: in "not caused by the tilt of the Earth's axis" the
/// denial of "tilt" takes "axis", of the same concept and clause, along.
bool affirmed_in(const words_and_clauses& text,
                 const std::vector<std::string>& phrases) {
  std::set<size_t> named, denied;  // clauses, by their first word
  for (auto& p : phrases)
    for (auto i : places_of(text, p))
      (denied_at(text, i) ? denied : named).insert(text.clause_start[i]);
  for (auto c : named)
    if (!denied.count(c))
      return true;
  return false;
}

} // namespace

bool mentions(const std::string& text, const std::string& phrase) {
  return !places_of(split_words(text), phrase).empty();
}

bool affirms(const std::string& text, const std::string& phrase) {
  return affirmed_in(split_words(text), {phrase});
}

std::string missing_concept(const bank_item& item, const std::string& answer) {
  if (item.must.empty() && item.must_not.empty())
    return {};
  auto words = split_words(answer);  // once, for every phrase
  for (auto& concept_ : item.must) {
    if (!affirmed_in(words, concept_)) {
      std::string named;
      for (auto& alt : concept_)
        named += (named.empty() ? "" : "|") + alt;
      return "must " + named;
    }
  }
  for (auto& phrase : item.must_not)
    if (!places_of(words, phrase).empty())
      return "must_not " + phrase;
  return {};
}

std::string normalize_answer(const std::string& s) {
  const char* strip = " \t\r\n\"'`";
  auto trim = [&](const std::string& x) -> std::string {
    auto b = x.find_first_not_of(strip);
    if (b == std::string::npos)
      return {};
    return x.substr(b, x.find_last_not_of(strip) - b + 1);
  };
  auto t = trim(s);
  // The full stop may sit inside the decoration or outside it ("`391.`",
  // "\"391\"."): one of them goes, then what surrounded it.
  if (!t.empty() && t.back() == '.') {
    t.pop_back();
    t = trim(t);
  }
  std::string out;
  bool space = false;
  for (unsigned char c : t) {
    if (std::isspace(c)) {
      space = true;
      continue;
    }
    if (space && !out.empty())
      out += ' ';
    space = false;
    out += static_cast<char>(std::tolower(c));
  }
  return out;
}

std::string to_string(grade_mode m) {
  switch (m) {
    case grade_mode::exact: return "exact";
    case grade_mode::number: return "number";
    case grade_mode::similar: return "similar";
    case grade_mode::peer: return "peer";
  }
  return "?";
}

bool bank_item::for_model(const std::string& m) const {
  return models.empty() || std::find(models.begin(), models.end(), m) != models.end();
}

challenge_bank challenge_bank::parse(const std::string& text,
                                     const std::string& source) {
  challenge_bank b;
  std::istringstream in{text};
  std::string line;
  size_t no = 0;
  while (std::getline(in, line)) {
    ++no;
    if (line.find_first_not_of(" \t\r") == std::string::npos)
      continue;
    auto where = source + ":" + std::to_string(no);
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded())
      throw bank_error(where + ": not valid JSON");
    auto it = parse_item(j, where);
    if (!b.by_id_.emplace(it.id, b.items_.size()).second)
      throw bank_error(where + ": id '" + it.id + "' appears twice");
    b.items_.push_back(std::move(it));
  }
  bool graded = std::any_of(b.items_.begin(), b.items_.end(), [](auto& x) {
    return x.grade != grade_mode::peer;
  });
  if (!graded)
    throw bank_error(source + ": no item with a reference answer (exact, "
                              "number or similar)");
  return b;
}

challenge_bank challenge_bank::load(const std::string& path) {
  std::ifstream f{path, std::ios::binary};
  if (!f)
    throw bank_error(path + ": cannot be read");
  std::string text{std::istreambuf_iterator<char>{f}, {}};
  return parse(text, path);
}

std::shared_ptr<const challenge_bank> challenge_bank::builtin() {
  static const auto b = std::make_shared<const challenge_bank>(
    parse(std::string{default_bank_text, default_bank_size},
          "deploy/banks/default.jsonl"));
  return b;
}

const bank_item* challenge_bank::find(const std::string& id) const {
  auto i = by_id_.find(id);
  return i == by_id_.end() ? nullptr : &items_[i->second];
}

std::vector<uint32_t> challenge_bank::levels() const {
  std::set<uint32_t> xs;
  for (auto& it : items_)
    if (it.grade != grade_mode::peer)
      xs.insert(it.level);
  return {xs.begin(), xs.end()};
}

std::vector<std::vector<const bank_item*>> challenge_bank::candidates(
  uint32_t level, const std::vector<std::string>& models, bool peer) const {
  std::map<uint32_t, std::vector<const bank_item*>> by_level;
  for (auto& it : items_) {
    if ((it.grade == grade_mode::peer) != peer)
      continue;
    bool ok = models.empty()
              || std::any_of(models.begin(), models.end(),
                             [&](auto& m) { return it.for_model(m); });
    if (ok)
      by_level[it.level].push_back(&it);
  }
  std::vector<std::vector<const bank_item*>> out;
  // At or under the level, nearest first; then above it, nearest first.
  auto upper = by_level.upper_bound(level);
  for (auto i = std::make_reverse_iterator(upper); i != by_level.rend(); ++i)
    out.push_back(i->second);
  for (auto i = upper; i != by_level.end(); ++i)
    out.push_back(i->second);
  return out;
}

std::vector<level_cost> test_costs(const challenge_bank& bank, uint32_t per_test,
                                   double peer_share, uint32_t max_level) {
  std::vector<level_cost> out;
  for (uint32_t level = 0; level <= max_level; ++level) {
    level_cost c;
    c.level = level;
    auto graded = bank.candidates(level, {}, false);
    auto peers = bank.candidates(level, {}, true);
    uint32_t n_peer = peers.empty() ? 0
                      : static_cast<uint32_t>(std::lround(per_test * peer_share));
    n_peer = std::min(n_peer, per_test > 0 ? per_test - 1 : 0);
    c.prompts = per_test;
    if (!graded.empty())
      c.graded_items = static_cast<uint32_t>(graded.front().size());
    if (!peers.empty())
      c.peer_items = static_cast<uint32_t>(peers.front().size());
    // The expected cost: the mean item of the groups a test draws from,
    // nearest group first, as the chooser does.
    auto add = [&](const std::vector<std::vector<const bank_item*>>& groups,
                   uint32_t n) {
      double prompt = 0, answer = 0;
      uint32_t left = n;
      for (auto& g : groups) {
        if (left == 0)
          break;
        uint32_t take = std::min<uint32_t>(left, static_cast<uint32_t>(g.size()));
        double p = 0, a = 0;
        for (auto* it : g) {
          p += std::ceil(it->prompt.size() / 4.0);
          a += it->max_tokens;
        }
        prompt += take * p / g.size();
        answer += take * a / g.size();
        left -= take;
      }
      c.prompt_tokens += static_cast<uint64_t>(std::lround(prompt));
      c.answer_tokens += static_cast<uint64_t>(std::lround(answer));
    };
    add(graded, per_test - n_peer);
    add(peers, n_peer);
    out.push_back(c);
  }
  return out;
}

sim_knowledge::sim_knowledge(const challenge_bank& bank) {
  for (auto& it : bank.items()) {
    auto text = it.grade == grade_mode::peer ? sim_backend::healthy_output(it.prompt)
                                             : it.answer;
    by_prompt_[it.prompt] = known{it.grade, text};
    if (it.grade == grade_mode::exact)
      words_.push_back(it.answer);
  }
}

std::shared_ptr<const sim_knowledge> sim_knowledge::builtin() {
  static const auto k =
    std::make_shared<const sim_knowledge>(*challenge_bank::builtin());
  return k;
}

std::string sim_knowledge::answer(const std::string& prompt) const {
  auto i = by_prompt_.find(prompt);
  return i == by_prompt_.end() ? sim_backend::healthy_output(prompt) : i->second.answer;
}

std::string sim_knowledge::wrong_answer(const std::string& prompt, uint64_t r) const {
  auto i = by_prompt_.find(prompt);
  if (i == by_prompt_.end() || i->second.grade == grade_mode::peer
      || i->second.grade == grade_mode::similar)
    return sim_backend::unrelated_output(r);
  if (i->second.grade == grade_mode::number) {
    double v = std::strtod(i->second.answer.c_str(), nullptr);
    std::ostringstream s;
    s << v + 1 + static_cast<double>(r % 9);
    return s.str();
  }
  // Another item's answer: a plausible word, not this one.
  for (size_t k = 0; k < words_.size(); ++k) {
    auto& w = words_[(r + k) % words_.size()];
    if (w != i->second.answer)
      return w;
  }
  return i->second.answer + "s";
}

} // namespace nodepool
