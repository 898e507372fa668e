#include "embedding.hpp"

#include <cmath>
#include <cstdint>

namespace nodepool {

embedding embed(const std::string& text) {
  embedding v{};
  if (text.size() < 3) {
    for (unsigned char c : text)
      v[c % v.size()] += 1.0f;
  }
  for (size_t i = 0; i + 3 <= text.size(); ++i) {
    uint32_t h = 2166136261u;
    for (size_t k = i; k < i + 3; ++k) {
      h ^= static_cast<unsigned char>(text[k]);
      h *= 16777619u;
    }
    v[h % v.size()] += 1.0f;
  }
  double norm = 0;
  for (auto x : v)
    norm += static_cast<double>(x) * x;
  if (norm > 0) {
    auto inv = static_cast<float>(1.0 / std::sqrt(norm));
    for (auto& x : v)
      x *= inv;
  }
  return v;
}

double cosine(const embedding& a, const embedding& b) {
  double dot = 0, na = 0, nb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    dot += static_cast<double>(a[i]) * b[i];
    na += static_cast<double>(a[i]) * a[i];
    nb += static_cast<double>(b[i]) * b[i];
  }
  if (na == 0 || nb == 0)
    return 0;
  return dot / std::sqrt(na * nb);
}

std::vector<size_t> outliers(const std::vector<std::string>& outputs,
                             double threshold) {
  std::vector<size_t> out;
  auto n = outputs.size();
  if (n < 2)
    return out;
  std::vector<embedding> es;
  for (auto& o : outputs)
    es.push_back(embed(o));
  // An output is an outlier when it agrees (cosine >= threshold) with fewer
  // than half of the others.
  for (size_t i = 0; i < n; ++i) {
    size_t agree = 0;
    for (size_t j = 0; j < n; ++j)
      if (j != i && cosine(es[i], es[j]) >= threshold)
        ++agree;
    if (agree * 2 < n - 1)
      out.push_back(i);
  }
  // A real majority exists only when some outputs agree; if everyone is an
  // outlier there is nothing to compare against (n >= 3) and no one is blamed.
  if (n >= 3 && out.size() == n)
    out.clear();
  return out;
}

} // namespace nodepool
