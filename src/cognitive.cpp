#include "cognitive.hpp"
#include "random.hpp"

#include <algorithm>
#include <cstdio>
#include <cctype>
#include <cstring>
#include <functional>

namespace nodepool {

namespace {

/// What a model's answer is compared by: without surrounding white space,
/// quotes or back-ticks and a final full stop ("`391.`" is "391"), in lower
/// case. Real models decorate answers; the content must still be exact.
std::string normalize(const std::string& s) {
  const char* strip = " \t\r\n\"'`";
  auto trim = [&](const std::string& x) -> std::string {
    auto b = x.find_first_not_of(strip);
    if (b == std::string::npos)
      return {};
    return x.substr(b, x.find_last_not_of(strip) - b + 1);
  };
  auto out = trim(s);
  // The full stop may sit inside the decoration or outside it ("`391.`",
  // "\"391\"."): one of them goes, then what surrounded it.
  if (!out.empty() && out.back() == '.') {
    out.pop_back();
    out = trim(out);
  }
  for (auto& c : out)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

} // namespace

std::vector<challenge> make_challenges(uint64_t test_id,
                                       const std::string& node_id,
                                       uint32_t count, uint32_t level) {
  // FNV-1a of the node id: the same questions with any standard library.
  uint64_t fnv = 1469598103934665603ULL;
  for (unsigned char c : node_id)
    fnv = (fnv ^ c) * 1099511628211ULL;
  uint64_t h = mix64(test_id ^ fnv);
  std::vector<challenge> out;
  uint64_t scale = 10;
  for (uint32_t i = 0; i <= level; ++i)
    scale *= 10;
  for (uint32_t i = 0; i < count; ++i) {
    h = mix64(h + i);
    auto a = h % scale, b = (h >> 20) % scale;
    std::string prompt;
    switch ((h >> 40) % 3) {
      case 0:
        prompt = "Compute " + std::to_string(a) + " + " + std::to_string(b)
                 + ". Answer with the number only.";
        break;
      case 1:
        prompt = "Compute " + std::to_string(a % 1000) + " * "
                 + std::to_string(b % 1000) + ". Answer with the number only.";
        break;
      default: {
        std::string w;
        for (uint32_t k = 0; k < 4 + level * 2; ++k)
          w += static_cast<char>('a' + (mix64(h + k) % 26));
        prompt = "Reverse the word " + w + ". Answer with the word only.";
      }
    }
    out.push_back(challenge{std::to_string(test_id) + "." + std::to_string(i),
                            prompt, solve(prompt)});
  }
  return out;
}

uint32_t grade(const std::vector<challenge>& xs,
               const std::vector<std::string>& answers) {
  uint32_t ok = 0;
  for (size_t i = 0; i < xs.size() && i < answers.size(); ++i)
    if (normalize(answers[i]) == xs[i].answer)
      ++ok;
  return ok;
}

std::string solve(const std::string& prompt) {
  unsigned long long a = 0, b = 0;
  char word[64] = {0};
  if (std::sscanf(prompt.c_str(), "Compute %llu + %llu.", &a, &b) == 2)
    return std::to_string(a + b);
  if (std::sscanf(prompt.c_str(), "Compute %llu * %llu.", &a, &b) == 2)
    return std::to_string(a * b);
  if (std::sscanf(prompt.c_str(), "Reverse the word %63[a-z].", word) == 1) {
    std::string w{word};
    std::reverse(w.begin(), w.end());
    return w;
  }
  return {};
}

} // namespace nodepool
