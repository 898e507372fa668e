#include "params.hpp"

#include <functional>
#include <map>
#include <stdexcept>

#define TOML_HEADER_ONLY 1
#include <toml++/toml.h>

namespace nodepool {

std::string params::validate() const {
  if (test_deadline_ms <= 0) return "test_deadline_ms must be > 0";
  if (challenges_per_test == 0) return "challenges_per_test must be > 0";
  if (pass_mark <= 0 || pass_mark > 1) return "pass_mark must be in (0, 1]";
  if (min_nodes == 0 || min_nodes > max_nodes)
    return "need 1 <= min_nodes <= max_nodes";
  if (redundancy == 0 || redundancy > max_nodes)
    return "need 1 <= redundancy <= max_nodes";
  if (tasks_before_release == 0) return "tasks_before_release must be > 0";
  if (reserve_period_ms <= 0) return "reserve_period_ms must be > 0";
  if (idle_threshold_ms <= 0) return "idle_threshold_ms must be > 0";
  if (queue_timeout_ms <= 0) return "queue_timeout_ms must be > 0";
  if (task_phase_timeout_ms <= 0) return "task_phase_timeout_ms must be > 0";
  if (ephemeral_window_ms <= 0) return "ephemeral_window_ms must be > 0";
  if (heartbeat_interval_ms <= 0 || heartbeat_timeout_ms <= heartbeat_interval_ms)
    return "need 0 < heartbeat_interval_ms < heartbeat_timeout_ms";
  if (quarantine_backoff_ms <= 0 || quarantine_backoff_max_ms < quarantine_backoff_ms)
    return "need 0 < quarantine_backoff_ms <= quarantine_backoff_max_ms";
  if (max_strikes == 0) return "max_strikes must be > 0";
  if (panic_share < 0 || panic_share > 1) return "panic_share must be in [0, 1]";
  if (embedding_threshold < -1 || embedding_threshold > 1)
    return "embedding_threshold must be in [-1, 1]";
  if (reputation_alpha <= 0 || reputation_alpha > 1)
    return "reputation_alpha must be in (0, 1]";
  if (max_level > 5) return "max_level must be <= 5";
  if (recent_size == 0) return "recent_size must be > 0";
  if (selection != "reputation" && selection != "random")
    return "selection must be 'reputation' or 'random'";
  if (snapshot_every == 0) return "snapshot_every must be > 0";
  if (tick_interval_ms <= 0) return "tick_interval_ms must be > 0";
  return {};
}

namespace {

using setter = std::function<void(params&, const toml::node&)>;

template <class T>
setter int_field(T params::*m) {
  return [m](params& p, const toml::node& n) {
    auto v = n.value<int64_t>();
    if (!v || *v < 0)
      throw std::runtime_error("expected a non-negative integer");
    p.*m = static_cast<T>(*v);
  };
}

setter real_field(double params::*m) {
  return [m](params& p, const toml::node& n) {
    auto v = n.value<double>();
    if (!v)
      throw std::runtime_error("expected a number");
    p.*m = *v;
  };
}

setter string_field(std::string params::*m) {
  return [m](params& p, const toml::node& n) {
    auto v = n.value<std::string>();
    if (!v)
      throw std::runtime_error("expected a string");
    p.*m = *v;
  };
}

const std::map<std::string, setter>& fields() {
  static const std::map<std::string, setter> xs{
    {"test_deadline_ms", int_field(&params::test_deadline_ms)},
    {"challenges_per_test", int_field(&params::challenges_per_test)},
    {"pass_mark", real_field(&params::pass_mark)},
    {"min_nodes", int_field(&params::min_nodes)},
    {"max_nodes", int_field(&params::max_nodes)},
    {"redundancy", int_field(&params::redundancy)},
    {"tasks_before_release", int_field(&params::tasks_before_release)},
    {"reserve_period_ms", int_field(&params::reserve_period_ms)},
    {"idle_threshold_ms", int_field(&params::idle_threshold_ms)},
    {"queue_timeout_ms", int_field(&params::queue_timeout_ms)},
    {"task_phase_timeout_ms", int_field(&params::task_phase_timeout_ms)},
    {"ephemeral_window_ms", int_field(&params::ephemeral_window_ms)},
    {"heartbeat_interval_ms", int_field(&params::heartbeat_interval_ms)},
    {"heartbeat_timeout_ms", int_field(&params::heartbeat_timeout_ms)},
    {"quarantine_backoff_ms", int_field(&params::quarantine_backoff_ms)},
    {"quarantine_backoff_max_ms", int_field(&params::quarantine_backoff_max_ms)},
    {"max_strikes", int_field(&params::max_strikes)},
    {"panic_share", real_field(&params::panic_share)},
    {"embedding_threshold", real_field(&params::embedding_threshold)},
    {"reputation_alpha", real_field(&params::reputation_alpha)},
    {"max_level", int_field(&params::max_level)},
    {"promote_after", int_field(&params::promote_after)},
    {"recent_size", int_field(&params::recent_size)},
    {"selection", string_field(&params::selection)},
    {"seed", int_field(&params::seed)},
    {"snapshot_every", int_field(&params::snapshot_every)},
    {"tick_interval_ms", int_field(&params::tick_interval_ms)},
  };
  return xs;
}

} // namespace

params load_params(const std::string& path, params base) {
  toml::table tbl;
  try {
    tbl = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    throw std::runtime_error(path + ": " + std::string{e.description()});
  }
  // Parameters live in [pool]; other tables ([oracle], ...) belong to the
  // command line and are read there.
  auto* pool = tbl["pool"].as_table();
  if (pool) {
    for (auto& [k, v] : *pool) {
      auto key = std::string{k.str()};
      auto i = fields().find(key);
      if (i == fields().end())
        throw std::runtime_error(path + ": unknown key pool." + key);
      try {
        i->second(base, v);
      } catch (const std::runtime_error& e) {
        throw std::runtime_error(path + ": pool." + key + ": " + e.what());
      }
    }
  }
  if (auto err = base.validate(); !err.empty())
    throw std::runtime_error(path + ": " + err);
  return base;
}

} // namespace nodepool
