#include "cli/chaos_settle.hpp"

namespace nodepool::cli {

bool from_current_leader(const nlohmann::json& status, uint64_t newest_term) {
  if (!status.is_object())
    return false;
  auto c = status.value("cluster", nlohmann::json::object());
  return c.is_object() && c.value("role", "") == "leader"
         && c.value("ready", false)
         && c.value("term", uint64_t{0}) >= newest_term;
}

sessions_answer read_sessions_answer(const nlohmann::json& status,
                                     const std::set<std::string>& accepted,
                                     bool cluster, uint64_t newest_term) {
  if (!status.is_object())
    return sessions_answer::no_answer;
  if (cluster && !from_current_leader(status, newest_term))
    return sessions_answer::not_from_the_leader;
  if (!status.contains("session_states"))
    return accepted.empty() ? sessions_answer::settled
                            : sessions_answer::no_answer;
  auto& states = status["session_states"];
  if (!states.is_object())
    return sessions_answer::no_answer;
  for (auto& id : accepted)
    if (states.contains(id))
      return sessions_answer::open;
  return sessions_answer::settled;
}

void archive_watch::answer(size_t k, const nlohmann::json& status,
                           uint64_t newest_term) {
  if (k >= through_.size() || !status.is_object() || !status.contains("cluster"))
    return;
  auto& c = status["cluster"];
  if (!c.is_object() || !c.contains("archive_complete_through"))
    return;
  if (!target_ && from_current_leader(status, newest_term))
    target_ = c.value("pool_index", uint64_t{0});
  through_[k] = c.value("archive_complete_through", uint64_t{0});
  if (target_ && !first_[k])
    first_[k] = through_[k];
}

bool archive_watch::complete() const {
  if (!target_)
    return false;
  for (size_t k = 0; k < through_.size(); ++k)
    if (short_of(k))
      return false;
  return true;
}

size_t archive_watch::next(size_t k) const {
  auto n = through_.size();
  for (size_t step = 1; step <= n; ++step)
    if (short_of((k + step) % n))
      return (k + step) % n;
  return (k + 1) % n;
}

size_t archive_watch::behind() const {
  size_t n = 0;
  for (auto& f : first_)
    n += target_ && f && *f < *target_;
  return n;
}

std::string archive_watch::short_of_target() const {
  std::string s;
  for (size_t k = 0; k < through_.size(); ++k)
    if (short_of(k))
      s += (s.empty() ? "" : ", ") + std::string{"member "} + std::to_string(k + 1)
           + " through "
           + (through_[k] ? std::to_string(*through_[k]) : std::string{"unknown"});
  return s;
}

} // namespace nodepool::cli
