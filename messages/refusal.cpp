#include "refusal.hpp"

#include <algorithm>
#include <cctype>
#include <unordered_map>
#include <vector>

namespace nodepool {
namespace {

/// The texts, read once from the generated descriptor (the enum's names are
/// written nowhere else).
struct texts {
  std::vector<std::string> by_value;
  std::unordered_map<std::string, pb::RefusalCode> by_text;

  texts() {
    const auto* d = pb::RefusalCode_descriptor();
    const std::string prefix = "REFUSAL_";
    for (int i = 0; i < d->value_count(); ++i) {
      const auto* v = d->value(i);
      if (v->number() <= 0)
        continue;  // REFUSAL_NONE has no text
      std::string t = v->name().substr(prefix.size());
      std::transform(t.begin(), t.end(), t.begin(),
                     [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
      auto n = static_cast<size_t>(v->number());
      if (by_value.size() <= n)
        by_value.resize(n + 1);
      by_value[n] = t;
      by_text.emplace(std::move(t), static_cast<pb::RefusalCode>(v->number()));
    }
  }
};

const texts& all() {
  static const texts t;
  return t;
}

} // namespace

const std::string& refusal_name(pb::RefusalCode code) {
  static const std::string none;
  auto& v = all().by_value;
  auto n = static_cast<size_t>(code);
  return code > 0 && n < v.size() ? v[n] : none;
}

pb::RefusalCode refusal_code(std::string_view text) {
  auto& m = all().by_text;
  auto i = m.find(std::string{text});
  return i == m.end() ? pb::REFUSAL_NONE : i->second;
}

} // namespace nodepool
