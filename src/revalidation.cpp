// Test outcomes: entry into the pool, quarantine with backoff, retirement.
#include "pool_state.hpp"

#include <algorithm>

namespace nodepool {

void pool_state::apply_test_result(const pb::TestResult& c, int64_t now,
                                   apply_result& out) {
  auto* known = known_node(c.node_id(), out);
  if (!known)
    return;
  auto& n = *known;
  if (n.state() != pb::TESTING && n.state() != pb::REVALIDATING) {
    out.refused = refusal{pb::REFUSAL_NO_TEST_IN_FLIGHT,
                          "node " + n.id() + " is " + to_string(n.state())};
    return;
  }
  if (!test_sent(n)) {
    out.refused = refusal{pb::REFUSAL_NO_TEST_IN_FLIGHT,
                          "the test of node " + n.id() + " has not been sent yet"};
    return;
  }
  if (c.test_id() != n.test_id()) {
    out.refused = refusal{pb::REFUSAL_STALE_TEST, "test " + std::to_string(c.test_id())
                                          + " is not the one in flight ("
                                          + std::to_string(n.test_id()) + ")"};
    return;
  }
  if (now > n.test_deadline()) {
    out.refused = refusal{pb::REFUSAL_AFTER_DEADLINE, "result came after the deadline"};
    return;
  }
  if (c.total() == 0 || c.correct() > c.total()
      || c.peer_correct() > c.peer_total() || c.latency_ms() < 0) {
    out.refused = refusal{pb::REFUSAL_BAD_RESULT, "correct must be <= total, total > 0, "
                                        "peer_correct <= peer_total, "
                                        "latency_ms >= 0"};
    return;
  }
  // Right answers first, then agreement with the nodes in good standing,
  // then speed: a node must meet all three.
  auto pct = [](double x) { return std::to_string(static_cast<int>(x * 100 + 0.5)) + "%"; };
  double score = static_cast<double>(c.correct()) / c.total();
  if (score < params_.pass_mark) {
    fail_test(n, "wrong_answers",
              "failed test: " + std::to_string(c.correct()) + " of "
                + std::to_string(c.total()) + " right, pass mark "
                + pct(params_.pass_mark),
              now, out);
    return;
  }
  if (c.peer_total() > 0
      && static_cast<double>(c.peer_correct()) / c.peer_total() < params_.pass_mark) {
    fail_test(n, "cross_check",
              "cross_check: " + std::to_string(c.peer_total() - c.peer_correct())
                + " of " + std::to_string(c.peer_total())
                + " answers far from those of nodes in good standing",
              now, out);
    return;
  }
  auto bound = latency_bound_at(latency_bounds_, n.level());
  if (bound > 0 && c.latency_ms() > bound) {
    fail_test(n, "too_slow",
              "too_slow: answered in " + std::to_string(c.latency_ms())
                + " ms, bound " + std::to_string(bound) + " ms at level "
                + std::to_string(n.level()),
              now, out);
    return;
  }
  if (params_.test_min_tokens_per_s > 0 && c.tokens() > 0) {
    double rate = c.tokens() * 1000.0 / std::max<int64_t>(1, c.latency_ms());
    if (rate < params_.test_min_tokens_per_s) {
      fail_test(n, "too_slow",
                "too_slow: " + std::to_string(static_cast<int64_t>(rate))
                  + " tokens/s, at least "
                  + std::to_string(static_cast<int64_t>(params_.test_min_tokens_per_s))
                  + " needed",
                now, out);
      return;
    }
  }
  pass_test(n, now, out);
}

void pool_state::pass_test(pb::NodeRecord& n, int64_t now, apply_result& out) {
  ++tests_passed_;
  record_outcome(n, true);
  n.set_strikes(0);
  n.set_last_test_failed(false);
  n.set_passed_at(now);
  n.set_ephemeral_at(now);
  n.set_consecutive_passes(n.consecutive_passes() + 1);
  if (params_.promote_after > 0
      && n.consecutive_passes() % params_.promote_after == 0
      && n.level() < params_.max_level)
    n.set_level(n.level() + 1);
  auto id = n.test_id();
  n.set_test_id(0);
  set_state(n, pb::EPHEMERAL, "passed test", out);
  out.events.emplace_back();
  auto* f = out.events.back().mutable_test_finished();
  f->set_node_id(n.id());
  f->set_test_id(id);
  f->set_passed(true);
}

void pool_state::fail_test(pb::NodeRecord& n, const std::string& code,
                           const std::string& why, int64_t now,
                           apply_result& out) {
  ++tests_failed_;
  auto id = n.test_id();
  n.set_test_id(0);
  out.events.emplace_back();
  auto* f = out.events.back().mutable_test_finished();
  f->set_node_id(n.id());
  f->set_test_id(id);
  f->set_passed(false);
  f->set_reason(code);
  quarantine(n, why, now, out);
}

void pool_state::quarantine(pb::NodeRecord& n, const std::string& why,
                            int64_t now, apply_result& out) {
  record_outcome(n, false);
  n.set_last_test_failed(true);
  n.set_consecutive_passes(0);
  if (n.level() > 0)
    n.set_level(n.level() - 1);
  n.set_strikes(n.strikes() + 1);
  if (n.strikes() >= params_.max_strikes) {
    set_state(n, pb::RETIRED, why + "; retired after "
                                + std::to_string(n.strikes()) + " strikes",
              out);
    return;
  }
  // Backoff doubles with each strike: base, 2 base, 4 base, ... up to max.
  int64_t backoff = params_.quarantine_backoff_ms;
  for (uint32_t k = 1; k < n.strikes() && backoff < params_.quarantine_backoff_max_ms; ++k)
    backoff *= 2;
  backoff = std::min(backoff, params_.quarantine_backoff_max_ms);
  n.set_quarantine_until(now + backoff);
  n.set_quarantine_count(n.quarantine_count() + 1);
  set_state(n, pb::QUARANTINED, why, out);
}

} // namespace nodepool
