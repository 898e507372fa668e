#pragma once

// Bounds on what clients and miners send, the same on every way in (the
// HTTP API, and the gateway and session queue on the CAF port) and in the
// pool, which refuses what passes none of them.
#include <algorithm>
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <string>

namespace nodepool::bounds {

constexpr size_t id = 128;      // a node's or a session's id
constexpr size_t model = 128;   // a model's name
constexpr size_t client = 256;  // a session's client reference
constexpr int models = 64;      // the models one node serves
constexpr int64_t reserve_period_s = 30 * 86400;  // 30 days
constexpr int64_t reserve_period_ms = reserve_period_s * 1000;
constexpr uint32_t page = 1000;  // records in one page of a list (StateQuery)

/// "what: at most N characters", the text of a refusal.
inline std::string at_most(const char* what, size_t n) {
  return std::string{what} + ": at most " + std::to_string(n) + " characters";
}

/// The refusal's text for a reserve period out of bounds.
inline std::string reserve_period_range(const char* what) {
  return std::string{what} + ": 0.." + std::to_string(reserve_period_s / 86400)
         + " days (0: the pool's)";
}

/// A node or session id: 1..`id` characters of [A-Za-z0-9-_.:].
inline bool valid_id(const std::string& x) {
  if (x.empty() || x.size() > id)
    return false;
  for (char c : x)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_'
          || c == '.' || c == ':'))
      return false;
  return true;
}

/// A node's models: 1..`models` names of 1..`model` characters each
/// (none at all is the pool's `no_models`).
template <class Names>
bool valid_models(const Names& xs) {
  return static_cast<int64_t>(xs.size()) <= models
         && std::none_of(xs.begin(), xs.end(), [](const std::string& x) {
              return x.empty() || x.size() > model;
            });
}

/// The refusal's text for models out of bounds.
inline std::string models_rule() {
  return "a node serves at most " + std::to_string(models)
         + " models, each named by 1.." + std::to_string(model) + " characters";
}

} // namespace nodepool::bounds
