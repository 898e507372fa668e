#pragma once

// Prometheus text exposition format 0.0.4, and the histograms the oracle
// keeps. Debian packages no C++ client for it, and the format is small:
// this file is all of it.
//
//   exposition out;
//   out.family("nodepool_nodes", "gauge", "Nodes by state.");
//   out.sample("nodepool_nodes", {{"state", "ephemeral"}}, 9);
//   out.histogram("nodepool_grant_latency_seconds", "...", h, 0.001);
//   std::string text = out.str();

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace nodepool {

/// A histogram with fixed upper bounds (cumulative counts are made when
/// written). Adding is O(log buckets); not thread-safe (one owner).
class histogram {
 public:
  histogram() = default;
  explicit histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

  /// Bounds growing by `factor` from `first`, `n` of them.
  static histogram exponential(double first, double factor, size_t n) {
    std::vector<double> b;
    for (double x = first; b.size() < n; x *= factor)
      b.push_back(x);
    return histogram{std::move(b)};
  }

  void add(double v) {
    size_t lo = 0, hi = bounds_.size();
    while (lo < hi) {  // first bound >= v
      auto mid = (lo + hi) / 2;
      if (bounds_[mid] < v)
        lo = mid + 1;
      else
        hi = mid;
    }
    ++counts_[lo];
    sum_ += v;
    ++count_;
  }

  const std::vector<double>& bounds() const { return bounds_; }
  /// Per bucket (not cumulative); the last one is above every bound.
  const std::vector<uint64_t>& counts() const { return counts_; }
  double sum() const { return sum_; }
  uint64_t count() const { return count_; }

  nlohmann::json to_json() const {
    return {{"bounds", bounds_}, {"counts", counts_}, {"sum", sum_},
            {"count", count_}};
  }
  /// False (and this unchanged) when `j` is not a histogram's JSON.
  bool from_json(const nlohmann::json& j) {
    if (!j.is_object() || !j.contains("bounds") || !j.contains("counts"))
      return false;
    try {
      auto b = j["bounds"].get<std::vector<double>>();
      auto c = j["counts"].get<std::vector<uint64_t>>();
      if (c.size() != b.size() + 1)
        return false;
      bounds_ = std::move(b);
      counts_ = std::move(c);
      sum_ = j.value("sum", 0.0);
      count_ = j.value("count", uint64_t{0});
      return true;
    } catch (const nlohmann::json::exception&) {
      return false;
    }
  }

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_ = {0};
  double sum_ = 0;
  uint64_t count_ = 0;
};

using metric_labels = std::vector<std::pair<std::string, std::string>>;

/// Writes metric families in the text format. Each family is declared once
/// (HELP and TYPE), then its samples follow.
class exposition {
 public:
  void family(const std::string& name, const char* type,
              const std::string& help) {
    out_ += "# HELP " + name + ' ' + escape(help, false) + '\n';
    out_ += "# TYPE " + name + ' ' + type + '\n';
  }

  void sample(const std::string& name, const metric_labels& labels,
              double value) {
    out_ += name;
    if (!labels.empty()) {
      out_ += '{';
      bool first = true;
      for (auto& [k, v] : labels) {
        if (!first)
          out_ += ',';
        first = false;
        out_ += k + "=\"" + escape(v, true) + '"';
      }
      out_ += '}';
    }
    out_ += ' ' + number(value) + '\n';
  }

  /// A family of one sample without labels.
  void single(const std::string& name, const char* type,
              const std::string& help, double value) {
    family(name, type, help);
    sample(name, {}, value);
  }

  /// A whole histogram family; values are multiplied by `scale` (1e-3
  /// turns milliseconds into the seconds Prometheus names prefer).
  void histogram(const std::string& name, const std::string& help,
                 const nodepool::histogram& h, double scale = 1,
                 const metric_labels& labels = {}) {
    family(name, "histogram", help);
    histogram_samples(name, h, scale, labels);
  }

  /// The samples of one histogram of a family already declared.
  void histogram_samples(const std::string& name, const nodepool::histogram& h,
                         double scale, const metric_labels& labels) {
    uint64_t cumulative = 0;
    for (size_t i = 0; i < h.bounds().size(); ++i) {
      cumulative += h.counts()[i];
      auto l = labels;
      l.emplace_back("le", number(h.bounds()[i] * scale));
      sample(name + "_bucket", l, static_cast<double>(cumulative));
    }
    auto l = labels;
    l.emplace_back("le", "+Inf");
    sample(name + "_bucket", l, static_cast<double>(h.count()));
    sample(name + "_sum", labels, h.sum() * scale);
    sample(name + "_count", labels, static_cast<double>(h.count()));
  }

  const std::string& str() const { return out_; }

  /// A value as the format writes it: integers without a fraction, and
  /// +Inf, -Inf, NaN by name.
  static std::string number(double v) {
    if (std::isnan(v))
      return "NaN";
    if (std::isinf(v))
      return v > 0 ? "+Inf" : "-Inf";
    char buf[32];
    if (v == std::floor(v) && std::fabs(v) < 1e15)
      std::snprintf(buf, sizeof buf, "%.0f", v);
    else {
      std::snprintf(buf, sizeof buf, "%.15g", v);  // short when exact
      if (std::strtod(buf, nullptr) != v)
        std::snprintf(buf, sizeof buf, "%.17g", v);
    }
    return buf;
  }

  /// HELP text escapes backslash and newline; label values also '"'.
  static std::string escape(const std::string& s, bool quote) {
    std::string r;
    r.reserve(s.size());
    for (char ch : s) {
      if (ch == '\\')
        r += "\\\\";
      else if (ch == '\n')
        r += "\\n";
      else if (ch == '"' && quote)
        r += "\\\"";
      else
        r += ch;
    }
    return r;
  }

 private:
  std::string out_;
};

} // namespace nodepool
