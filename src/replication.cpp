#include "replication.hpp"

namespace nodepool {

const char* to_string(propose_status s) {
  switch (s) {
    case propose_status::committed: return "committed";
    case propose_status::not_leader: return "not_leader";
    case propose_status::leadership_lost: return "leadership_lost";
    case propose_status::shutdown: return "shutdown";
    case propose_status::failed: return "failed";
  }
  return "unknown";
}

const char* to_string(log_member::kind k) {
  switch (k) {
    case log_member::kind::voter: return "voter";
    case log_member::kind::standby: return "standby";
    case log_member::kind::spare: return "spare";
  }
  return "unknown";
}

const char* to_string(log_role r) {
  switch (r) {
    case log_role::unavailable: return "unavailable";
    case log_role::follower: return "follower";
    case log_role::candidate: return "candidate";
    case log_role::leader: return "leader";
  }
  return "unknown";
}

void role_relay::publish(const log_status& s) {
  std::function<void(const log_status&)> f;
  {
    std::lock_guard<std::mutex> g{mu_};
    last_ = s;
    have_ = true;
    f = f_;
  }
  if (f)
    f(s);
}

void role_relay::listen(std::function<void(const log_status&)> f) {
  log_status last;
  bool have;
  {
    std::lock_guard<std::mutex> g{mu_};
    f_ = f;
    last = last_;
    have = have_;
  }
  if (have && f)
    f(last);
}

memory_log::memory_log(state_machine& sm, role_fn role, uint64_t id)
    : sm_(sm), role_(std::move(role)) {
  st_.id = id;
}

void memory_log::start() {
  log_status copy;
  {
    std::lock_guard<std::mutex> g{mu_};
    st_.role = log_role::leader;
    st_.term = 1;
    st_.leader_id = st_.id;
    st_.ready = true;
    copy = st_;
  }
  if (role_)
    role_(copy);
}

void memory_log::propose(std::string entry, done_fn done) {
  uint64_t index = 0;
  {
    std::lock_guard<std::mutex> g{mu_};
    if (st_.role != log_role::leader) {
      done(propose_status::not_leader, 0);
      return;
    }
    index = ++st_.last_index;
  }
  sm_.apply(entry);
  {
    std::lock_guard<std::mutex> g{mu_};
    st_.commit_index = st_.applied_index = index;
  }
  done(propose_status::committed, index);
}

void memory_log::stop() {
  std::lock_guard<std::mutex> g{mu_};
  st_.role = log_role::unavailable;
  st_.ready = false;
}

log_status memory_log::status() const {
  std::lock_guard<std::mutex> g{mu_};
  return st_;
}

} // namespace nodepool
