#include "params.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <limits>
#include <optional>
#include <stdexcept>
#include <utility>
#include <variant>

#include <nlohmann/json.hpp>

#define TOML_HEADER_ONLY 1
#include <toml++/toml.h>

namespace nodepool {

namespace {

/// "4000,3500,..." as numbers; `err` says what is wrong.
std::vector<int64_t> latency_list(const std::string& text, std::string& err) {
  std::vector<int64_t> out;
  size_t at = 0;
  while (at <= text.size()) {
    auto comma = text.find(',', at);
    auto part = text.substr(at, comma == std::string::npos ? std::string::npos
                                                           : comma - at);
    auto b = part.find_first_not_of(' '), e = part.find_last_not_of(' ');
    part = b == std::string::npos ? "" : part.substr(b, e - b + 1);
    if (part.empty() || part.size() > 12
        || part.find_first_not_of("0123456789") != std::string::npos) {
      err = "expected milliseconds per level, comma-separated (\"4000,3000\")";
      return {};
    }
    out.push_back(std::stoll(part));
    if (out.back() > params::max_duration_ms) {
      err = "a bound is over " + std::to_string(params::max_duration_ms) + " ms";
      return {};
    }
    if (comma == std::string::npos)
      break;
    at = comma + 1;
  }
  if (out.size() > 101) {
    err = "more than 101 levels";
    return {};
  }
  return out;
}

std::string latency_list_error(const std::string& text) {
  std::string err;
  latency_list(text, err);
  return err;
}

} // namespace

std::vector<int64_t> test_latency_bounds(const params& p) {
  std::string err;
  return latency_list(p.test_latency_ms, err);
}

int64_t latency_bound_at(const std::vector<int64_t>& bounds, uint32_t level) {
  return bounds.empty() ? 0 : bounds[std::min<size_t>(level, bounds.size() - 1)];
}

int64_t test_latency_bound_ms(const params& p, uint32_t level) {
  return latency_bound_at(test_latency_bounds(p), level);
}

std::string params::validate() const {
  if (test_deadline_ms <= 0) return "test_deadline_ms must be > 0";
  if (challenges_per_test == 0) return "challenges_per_test must be > 0";
  // Written so that NaN fails too (a TOML file may say `nan`).
  if (!(pass_mark > 0 && pass_mark <= 1)) return "pass_mark must be in (0, 1]";
  if (auto e = latency_list_error(test_latency_ms); !e.empty())
    return "test_latency_ms: " + e;
  if (!(test_min_tokens_per_s >= 0 && std::isfinite(test_min_tokens_per_s)))
    return "test_min_tokens_per_s must be >= 0";
  if (!(peer_share >= 0 && peer_share < 1)) return "peer_share must be in [0, 1)";
  if (max_answer_bytes < 16) return "max_answer_bytes must be >= 16";
  if (min_nodes == 0 || min_nodes > max_nodes)
    return "need 1 <= min_nodes <= max_nodes";
  if (redundancy == 0 || redundancy > max_nodes)
    return "need 1 <= redundancy <= max_nodes";
  if (tasks_before_release == 0) return "tasks_before_release must be > 0";
  if (reserve_period_ms <= 0) return "reserve_period_ms must be > 0";
  if (idle_threshold_ms <= 0) return "idle_threshold_ms must be > 0";
  if (queue_timeout_ms <= 0) return "queue_timeout_ms must be > 0";
  if (max_queued_sessions == 0) return "max_queued_sessions must be > 0";
  if (session_id_retention_ms <= 0)
    return "session_id_retention_ms must be > 0";
  if (task_phase_timeout_ms <= 0) return "task_phase_timeout_ms must be > 0";
  if (ephemeral_window_ms <= 0) return "ephemeral_window_ms must be > 0";
  if (lost_retention_ms < 0) return "lost_retention_ms must be >= 0 (0: kept for ever)";
  if (retired_retention_ms < 0)
    return "retired_retention_ms must be >= 0 (0: kept for ever)";
  if (heartbeat_interval_ms <= 0 || heartbeat_timeout_ms <= heartbeat_interval_ms)
    return "need 0 < heartbeat_interval_ms < heartbeat_timeout_ms";
  if (quarantine_backoff_ms <= 0 || quarantine_backoff_max_ms < quarantine_backoff_ms)
    return "need 0 < quarantine_backoff_ms <= quarantine_backoff_max_ms";
  if (max_strikes == 0) return "max_strikes must be > 0";
  if (!(panic_share >= 0 && panic_share <= 1))
    return "panic_share must be in [0, 1]";
  if (!(embedding_threshold >= -1 && embedding_threshold <= 1))
    return "embedding_threshold must be in [-1, 1]";
  if (!(reputation_alpha > 0 && reputation_alpha <= 1))
    return "reputation_alpha must be in (0, 1]";
  if (max_level > 5) return "max_level must be <= 5";
  if (recent_size == 0) return "recent_size must be > 0";
  if (selection != "reputation" && selection != "random"
      && selection != "latency")
    return "selection must be 'reputation', 'random' or 'latency'";
  if (snapshot_every == 0) return "snapshot_every must be > 0";
  if (tick_interval_ms <= 0) return "tick_interval_ms must be > 0";
  // Times are added to the clock: bounded, so that no sum can overflow.
  const std::pair<const char*, int64_t> durations[] = {
    {"test_deadline_ms", test_deadline_ms},
    {"reserve_period_ms", reserve_period_ms},
    {"idle_threshold_ms", idle_threshold_ms},
    {"queue_timeout_ms", queue_timeout_ms},
    {"session_id_retention_ms", session_id_retention_ms},
    {"task_phase_timeout_ms", task_phase_timeout_ms},
    {"ephemeral_window_ms", ephemeral_window_ms},
    {"heartbeat_interval_ms", heartbeat_interval_ms},
    {"heartbeat_timeout_ms", heartbeat_timeout_ms},
    {"lost_retention_ms", lost_retention_ms},
    {"retired_retention_ms", retired_retention_ms},
    {"quarantine_backoff_ms", quarantine_backoff_ms},
    {"quarantine_backoff_max_ms", quarantine_backoff_max_ms},
    {"tick_interval_ms", tick_interval_ms}};
  for (auto& [name, v] : durations)
    if (v > max_duration_ms)
      return std::string{name} + " must be <= " + std::to_string(max_duration_ms)
             + " (about 34 years)";
  return {};
}

namespace {

using member = std::variant<int64_t params::*, uint32_t params::*,
                            uint64_t params::*, double params::*,
                            std::string params::*>;

const std::vector<std::pair<std::string, member>>& fields() {
  static const std::vector<std::pair<std::string, member>> xs{
    {"test_deadline_ms", &params::test_deadline_ms},
    {"challenges_per_test", &params::challenges_per_test},
    {"pass_mark", &params::pass_mark},
    {"test_latency_ms", &params::test_latency_ms},
    {"test_min_tokens_per_s", &params::test_min_tokens_per_s},
    {"peer_share", &params::peer_share},
    {"max_answer_bytes", &params::max_answer_bytes},
    {"max_tests_in_flight", &params::max_tests_in_flight},
    {"min_nodes", &params::min_nodes},
    {"max_nodes", &params::max_nodes},
    {"redundancy", &params::redundancy},
    {"tasks_before_release", &params::tasks_before_release},
    {"reserve_period_ms", &params::reserve_period_ms},
    {"idle_threshold_ms", &params::idle_threshold_ms},
    {"queue_timeout_ms", &params::queue_timeout_ms},
    {"max_queued_sessions", &params::max_queued_sessions},
    {"session_id_retention_ms", &params::session_id_retention_ms},
    {"task_phase_timeout_ms", &params::task_phase_timeout_ms},
    {"ephemeral_window_ms", &params::ephemeral_window_ms},
    {"heartbeat_interval_ms", &params::heartbeat_interval_ms},
    {"heartbeat_timeout_ms", &params::heartbeat_timeout_ms},
    {"lost_retention_ms", &params::lost_retention_ms},
    {"retired_retention_ms", &params::retired_retention_ms},
    {"quarantine_backoff_ms", &params::quarantine_backoff_ms},
    {"quarantine_backoff_max_ms", &params::quarantine_backoff_max_ms},
    {"max_strikes", &params::max_strikes},
    {"panic_share", &params::panic_share},
    {"embedding_threshold", &params::embedding_threshold},
    {"reputation_alpha", &params::reputation_alpha},
    {"max_level", &params::max_level},
    {"promote_after", &params::promote_after},
    {"recent_size", &params::recent_size},
    {"selection", &params::selection},
    {"seed", &params::seed},
    {"snapshot_every", &params::snapshot_every},
    {"tick_interval_ms", &params::tick_interval_ms},
  };
  return xs;
}

const member* find_field(const std::string& key) {
  for (auto& [name, m] : fields())
    if (name == key)
      return &m;
  return nullptr;
}

/// Assigns an integer with a range check for the member's type.
template <class T>
std::string assign_int(params& p, T params::*m, int64_t v) {
  if (v < 0)
    return "expected a non-negative integer";
  if (static_cast<uint64_t>(v) > std::numeric_limits<T>::max())
    return "value too large";
  p.*m = static_cast<T>(v);
  return {};
}

/// Sets a field from a TOML node or JSON value through three accessors:
/// as integer, as number, as string (each empty when it is not one).
template <class AsInt, class AsReal, class AsString>
std::string assign(params& p, const member& m, AsInt as_int, AsReal as_real,
                   AsString as_string) {
  return std::visit(
    [&](auto mp) -> std::string {
      using T = std::decay_t<decltype(p.*mp)>;
      if constexpr (std::is_same_v<T, std::string>) {
        auto v = as_string();
        if (!v)
          return "expected a string";
        p.*mp = *v;
        return {};
      } else if constexpr (std::is_same_v<T, double>) {
        auto v = as_real();
        if (!v)
          return "expected a number";
        p.*mp = *v;
        return {};
      } else {
        auto v = as_int();
        if (!v)
          return "expected an integer";
        return assign_int(p, mp, *v);
      }
    },
    m);
}

} // namespace

std::vector<std::string> param_names() {
  std::vector<std::string> out;
  for (auto& [name, m] : fields())
    out.push_back(name);
  return out;
}

std::string to_json(const params& p) {
  nlohmann::json j = nlohmann::json::object();
  for (auto& [name, m] : fields())
    std::visit([&, n = name](auto mp) { j[n] = p.*mp; }, m);
  return j.dump();
}

params params_from_json(const std::string& text, params base,
                        std::string& err) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    err = "parameters are not a JSON object";
    return base;
  }
  // Stored before the limit existed: the pool ran without one, and a
  // replay must do the same.
  if (!j.contains("max_tests_in_flight"))
    base.max_tests_in_flight = 0;
  for (auto& item : j.items()) {
    // Not a structured binding: lambdas below capture these (C++17).
    const auto& key = item.key();
    const auto& v = item.value();
    auto* m = find_field(key);
    if (!m) {
      err = "unknown parameter " + key;
      return base;
    }
    auto e = assign(
      base, *m,
      [&]() -> std::optional<int64_t> {
        if (v.is_number_integer()) return v.get<int64_t>();
        return std::nullopt;
      },
      [&]() -> std::optional<double> {
        if (v.is_number()) return v.get<double>();
        return std::nullopt;
      },
      [&]() -> std::optional<std::string> {
        if (v.is_string()) return v.get<std::string>();
        return std::nullopt;
      });
    if (!e.empty()) {
      err = key + ": " + e;
      return base;
    }
  }
  return base;
}

std::string set_param(params& p, const std::string& key,
                      const std::string& value) {
  auto* m = find_field(key);
  if (!m)
    return "unknown parameter '" + key + "'";
  auto e = assign(
    p, *m,
    [&]() -> std::optional<int64_t> {
      try {
        size_t used = 0;
        auto v = std::stoll(value, &used);
        if (used == value.size()) return v;
      } catch (...) {
      }
      return std::nullopt;
    },
    [&]() -> std::optional<double> {
      try {
        size_t used = 0;
        auto v = std::stod(value, &used);
        if (used == value.size()) return v;
      } catch (...) {
      }
      return std::nullopt;
    },
    [&]() -> std::optional<std::string> { return value; });
  return e.empty() ? e : key + ": " + e;
}

namespace {

/// The [pool] table of a parsed TOML document over `base`; `path` names the
/// document in error messages.
params params_from_table(const toml::table& tbl, const std::string& path,
                         params base) {
  // Parameters live in [pool]; other tables ([oracle], ...) belong to the
  // command line and are read there.
  if (tbl.contains("pool") && !tbl["pool"].is_table())
    throw std::runtime_error(path + ": pool must be a table ([pool])");
  auto* pool = tbl["pool"].as_table();
  if (pool) {
    for (auto& kv : *pool) {
      const auto& k = kv.first;
      const auto& v = kv.second;
      auto key = std::string{k.str()};
      auto* m = find_field(key);
      if (!m)
        throw std::runtime_error(path + ": unknown key pool." + key);
      auto e = assign(
        base, *m,
        [&]() -> std::optional<int64_t> {
          if (v.is_integer()) return v.value<int64_t>();
          return std::nullopt;
        },
        [&]() -> std::optional<double> {
          if (v.is_integer() || v.is_floating_point()) return v.value<double>();
          return std::nullopt;
        },
        [&]() -> std::optional<std::string> {
          if (v.is_string()) return v.value<std::string>();
          return std::nullopt;
        });
      if (!e.empty())
        throw std::runtime_error(path + ": pool." + key + ": " + e);
    }
  }
  if (auto err = base.validate(); !err.empty())
    throw std::runtime_error(path + ": " + err);
  return base;
}


} // namespace

/// toml++ 3.3.0 (Debian 12) reaches __builtin_unreachable() when it asks
/// whether a character in U+00A1..U+0499, U+2C5E..U+3057 (but U+3000) or
/// U+FB26..U+FEFE is whitespace,
/// which it does while scanning a value or a key ("e = \xc3\xa9" is enough).
/// Such characters are replaced by U+FFFD before parsing: where TOML allows
/// them (strings, comments) both are equally valid, elsewhere both are an
/// error; the [pool] keys and values read here are ASCII.
std::string without_toml_trap(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    auto b = [&](size_t k) { return static_cast<unsigned char>(text[i + k]); };
    uint32_t cp = 0;
    size_t len = 1;
    if ((b(0) & 0xE0) == 0xC0 && i + 1 < text.size() && (b(1) & 0xC0) == 0x80) {
      cp = (b(0) & 0x1Fu) << 6 | (b(1) & 0x3Fu);
      len = 2;
    } else if ((b(0) & 0xF0) == 0xE0 && i + 2 < text.size()
               && (b(1) & 0xC0) == 0x80 && (b(2) & 0xC0) == 0x80) {
      cp = (b(0) & 0x0Fu) << 12 | (b(1) & 0x3Fu) << 6 | (b(2) & 0x3Fu);
      len = 3;
    }
    if ((cp >= 0xA1 && cp <= 0x499)
        || (cp >= 0x2C5E && cp <= 0x3057 && cp != 0x3000)
        || (cp >= 0xFB26 && cp <= 0xFEFE))
      out += "\xEF\xBF\xBD";
    else
      out.append(text, i, len);
    i += len;
  }
  return out;
}


params load_params(const std::string& path, params base) {
  std::ifstream f{path, std::ios::binary};
  std::string text;
  try {
    if (f)
      text.assign(std::istreambuf_iterator<char>{f}, {});
  } catch (const std::exception&) {
    f.setstate(std::ios::badbit);  // a directory, say
  }
  if (!f.is_open() || f.bad())
    throw std::runtime_error(path + ": cannot be read");
  return load_params_text(text, path, std::move(base));
}

params load_params_text(const std::string& text, const std::string& source,
                        params base) {
  toml::table tbl;
  try {
    tbl = toml::parse(without_toml_trap(text), source);
  } catch (const toml::parse_error& e) {
    throw std::runtime_error(source + ": " + std::string{e.description()});
  }
  return params_from_table(tbl, source, std::move(base));
}

} // namespace nodepool
