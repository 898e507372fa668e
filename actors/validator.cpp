// The validator: turns TestRequested events into cognitive tests sent to the
// node, grades the answers and reports the score as a TestResult command.
// Whether that score passes, and what follows, is the pool's decision.
#include <caf/all.hpp>

#include "actors/config.hpp"
#include "actors/local.hpp"
#include "actors/oracle.hpp"
#include "actors/tickets.hpp"
#include "actors/wire.hpp"
#include "cognitive.hpp"
#include "digest.hpp"

#include <algorithm>
#include <deque>
#include <unordered_map>
#include "log.hpp"

namespace nodepool {

namespace {

struct pending_test {
  uint64_t test_id = 0;
  int64_t deadline = 0;
  int64_t sent_at = 0;      // validator's clock when the test went out
  std::string nonce;
  std::string model;        // the node's first: cross-checks compare within it
  std::vector<const bank_item*> items;
};

/// A node's answers to peer items, kept until its test ends: they become
/// references for cross-checks only if it passes.
struct peer_answers {
  uint64_t test_id = 0;
  std::string model;
  std::vector<std::pair<const bank_item*, std::string>> answers;
};

/// Answers of nodes in good standing to one peer item of one model.
struct reference_set {
  std::deque<std::pair<std::string, std::string>> by_node;  // (node, answer)
  uint64_t added = 0;  // when a reference was last added (a sequence number)
};

/// At most this many references per (model, item): the newest.
constexpr size_t max_references = 5;
/// Answer lists of this many recent tests are remembered, to refuse one
/// node's answers sent again by another.
constexpr size_t max_seen_answers = 4096;


struct validator_state {
  caf::actor supervisor;
  caf::actor gateway;
  params pool;
  std::vector<int64_t> latency_bounds;  // pool.test_latency_ms, parsed
  bool sim_time = false;
  std::shared_ptr<const challenge_bank> bank;
  std::string secret;
  std::map<std::string, pending_test> pending;  // node id -> test in flight
  std::map<std::string, uint64_t> expired;      // node id -> last test ended
                                                // unanswered (late answers)
  std::map<std::string, peer_answers> awaiting;  // node id -> until it passes
  std::map<std::pair<std::string, std::string>, reference_set> references;
  size_t max_reference_keys = 4096;  // see test_config
  uint64_t reference_seq = 0;
  /// Digest of a recent test's answers -> (node, digest of its items).
  std::unordered_map<std::string, std::pair<std::string, std::string>> seen;
  std::deque<std::string> seen_order;  // oldest first
  command_tickets tickets;  // results sent to the supervisor, not answered yet
  static inline const char* name = "validator";
};

using self_ptr = caf::stateful_actor<validator_state>*;

/// Whether other nodes than `node` gave references for (model, item).
bool others_refer(const validator_state& st, const std::string& model,
                  const std::string& item, const std::string& node) {
  auto r = st.references.find({model, item});
  if (r == st.references.end())
    return false;
  auto& by = r->second.by_node;
  return std::any_of(by.begin(), by.end(), [&](auto& x) { return x.first != node; });
}

/// The model a node's answers to peer items are checked against: of the
/// models it lists, the one with other nodes' references for most of these
/// items (the first listed on a tie). Were it the first listed, a miner
/// could list first a model no other node serves, pass with nothing to
/// compare, and then serve sessions for the others it listed; were its own
/// references counted, it could make that model look served by passing a
/// few tests on it alone first.
std::string checked_model(const validator_state& st, const std::string& node,
                          const std::vector<std::string>& models,
                          const std::vector<const bank_item*>& items) {
  std::string best = models.empty() ? std::string{} : models.front();
  size_t best_refs = 0;
  for (auto& m : models) {
    size_t n = 0;
    for (auto* item : items)
      if (item->grade == grade_mode::peer && others_refer(st, m, item->id, node))
        ++n;
    if (n > best_refs) {
      best = m;
      best_refs = n;
    }
  }
  return best;
}

void refuse(self_ptr self, const std::string& node, pb::RefusalCode code,
            const std::string& detail) {
  self->send(self->state.gateway, refused_atom::value, node, code, detail);
}

/// Sends node `t.node_id()` its test: items chosen with the oracles'
/// secret, so the miner learns them only now.
void send_test(self_ptr self, const pb::TestRequested& t, int64_t batch_now) {
  auto& st = self->state;
  auto& p = st.pending[t.node_id()];
  std::vector<std::string> models(t.models().begin(), t.models().end());
  auto plan = choose_challenges(st.secret, t.test_id(), t.node_id(), t.level(),
                                models, st.pool.challenges_per_test,
                                st.pool.peer_share, *st.bank);
  p.test_id = t.test_id();
  p.deadline = t.deadline();
  p.sent_at = now_ms(self, st.sim_time);
  p.nonce = plan.nonce;
  p.items = std::move(plan.items);
  p.model = checked_model(st, t.node_id(), models, p.items);
  pb::OracleMsg m;
  auto* ct = m.mutable_test();
  ct->set_test_id(t.test_id());
  ct->set_deadline_ms(std::max<int64_t>(0, t.deadline() - batch_now));
  ct->set_nonce(p.nonce);
  ct->set_latency_bound_ms(latency_bound_at(st.latency_bounds, t.level()));
  for (size_t i = 0; i < p.items.size(); ++i) {
    auto* x = ct->add_challenges();
    x->set_id(std::to_string(t.test_id()) + "." + std::to_string(i));
    x->set_prompt(p.items[i]->prompt);
    x->set_max_tokens(p.items[i]->max_tokens);
    x->set_temperature(0);
  }
  self->send(st.gateway, send_atom::value, t.node_id(), m.SerializeAsString());
}

/// The table of references is full: the pair with the fewest nodes behind
/// it goes, the least recently added to among those. A new pair has one
/// node, so one with more stays (a model many nodes serve is not pushed
/// out by names one miner invents). False if nothing could go.
bool make_room(validator_state& st) {
  auto victim = st.references.end();
  for (auto i = st.references.begin(); i != st.references.end(); ++i)
    if (victim == st.references.end()
        || std::make_pair(i->second.by_node.size(), i->second.added)
             < std::make_pair(victim->second.by_node.size(), victim->second.added))
      victim = i;
  if (victim == st.references.end() || victim->second.by_node.size() > 1)
    return false;
  st.references.erase(victim);
  return true;
}

/// A node no longer in good standing (it failed a test, or was retired):
/// its answers stop being references.
void drop_references(validator_state& st, const std::string& node) {
  for (auto i = st.references.begin(); i != st.references.end();) {
    auto& by = i->second.by_node;
    by.erase(std::remove_if(by.begin(), by.end(),
                            [&](auto& x) { return x.first == node; }),
             by.end());
    i = by.empty() ? st.references.erase(i) : std::next(i);
  }
}

/// A node passed: its answers to peer items become references.
void keep_references(self_ptr self, const std::string& node, uint64_t test_id) {
  auto& st = self->state;
  auto i = st.awaiting.find(node);
  if (i == st.awaiting.end())
    return;
  if (i->second.test_id == test_id)
    for (auto& [item, answer] : i->second.answers) {
      std::pair<std::string, std::string> key{i->second.model, item->id};
      if (st.references.size() >= st.max_reference_keys && !st.references.count(key)
          && !make_room(st))
        continue;
      auto& set = st.references[key];
      set.added = ++st.reference_seq;
      auto& refs = set.by_node;
      auto same = std::find_if(refs.begin(), refs.end(),
                               [&](auto& r) { return r.first == node; });
      if (same != refs.end())
        refs.erase(same);
      refs.emplace_back(node, answer);
      if (refs.size() > max_references)
        refs.pop_front();
    }
  st.awaiting.erase(i);
}

void forget_node(self_ptr self, const std::string& node) {
  self->state.pending.erase(node);
  self->state.awaiting.erase(node);
}

void on_events(self_ptr self, const pb::EventBatch& batch) {
  auto& st = self->state;
  for (auto& e : batch.events()) {
    if (e.has_test_requested()) {
      send_test(self, e.test_requested(), batch.now());
    } else if (e.has_test_finished()) {
      auto& f = e.test_finished();
      auto i = st.pending.find(f.node_id());
      if (i != st.pending.end() && i->second.test_id == f.test_id()) {
        // Still pending when the pool ended it: its deadline passed.
        st.expired[i->first] = i->second.test_id;
        st.pending.erase(i);
      }
      if (f.passed()) {
        keep_references(self, f.node_id(), f.test_id());
      } else {
        st.awaiting.erase(f.node_id());
        drop_references(st, f.node_id());
      }
    } else if (e.has_node_state_changed()
               && e.node_state_changed().to() == pb::LOST) {
      forget_node(self, e.node_state_changed().node_id());
    } else if (e.has_node_state_changed()
               && e.node_state_changed().to() == pb::RETIRED) {
      // Tell the miner: its node will not be tested again.
      auto& c = e.node_state_changed();
      refuse(self, c.node_id(), pb::REFUSAL_RETIRED, c.reason());
      forget_node(self, c.node_id());
      drop_references(st, c.node_id());
    }
  }
}

void on_answers(self_ptr self, const std::string& node, const std::string& bytes) {
  auto& st = self->state;
  pb::TestAnswers a;
  if (!a.ParseFromString(bytes)) {
    refuse(self, node, pb::REFUSAL_MALFORMED, "answers do not decode");
    return;
  }
  auto i = st.pending.find(node);
  auto x = st.expired.find(node);
  if (i == st.pending.end() && x != st.expired.end() && x->second == a.test_id()) {
    refuse(self, node, pb::REFUSAL_AFTER_DEADLINE,
           "answers to test " + std::to_string(a.test_id())
             + " came after its deadline");
    return;
  }
  if (i == st.pending.end()) {
    refuse(self, node, pb::REFUSAL_NO_TEST_IN_FLIGHT,
           "no test is waiting for answers from " + node);
    return;
  }
  auto& p = i->second;
  if (a.test_id() != p.test_id) {
    refuse(self, node, pb::REFUSAL_STALE_TEST,
           "answers for test " + std::to_string(a.test_id()) + " but test "
             + std::to_string(p.test_id) + " is in flight");
    return;
  }
  // Without the nonce, the answers were written before the test reached
  // the node: copied from elsewhere. Refused; the test stays in flight
  // until its deadline.
  if (a.nonce() != p.nonce) {
    refuse(self, node, pb::REFUSAL_REPLAY,
           "answers to test " + std::to_string(a.test_id())
             + " do not carry its nonce: written before the test was sent");
    return;
  }
  for (auto& text : a.answers())
    if (text.size() > st.pool.max_answer_bytes) {
      refuse(self, node, pb::REFUSAL_ANSWER_TOO_LARGE,
             "an answer of " + std::to_string(text.size())
               + " bytes; at most " + std::to_string(st.pool.max_answer_bytes));
      return;
    }
  // The tokens the node says it produced set its speed (the pool fails a
  // test slower than test_min_tokens_per_s): no more than the questions
  // allowed, or a slow node could claim any speed.
  uint64_t tokens = 0, most_tokens = 0;
  for (auto t : a.tokens())
    tokens += t;
  for (auto* item : p.items)
    most_tokens += item->max_tokens;
  if (tokens > most_tokens) {
    refuse(self, node, pb::REFUSAL_BAD_TOKENS,
           "answers of " + std::to_string(tokens) + " tokens; the questions "
             "allowed " + std::to_string(most_tokens) + " at most");
    return;
  }
  auto now = now_ms(self, st.sim_time);
  if (now > p.deadline) {
    refuse(self, node, pb::REFUSAL_AFTER_DEADLINE, "answers came after the test deadline");
    return;
  }
  uint32_t correct = 0, total = 0, peer_correct = 0, peer_total = 0;
  peer_answers mine;
  mine.test_id = p.test_id;
  mine.model = p.model;
  static const std::string none;
  for (size_t k = 0; k < p.items.size(); ++k) {
    auto* item = p.items[k];
    auto& text = k < static_cast<size_t>(a.answers_size()) ? a.answers(static_cast<int>(k))
                                                           : none;
    if (item->grade != grade_mode::peer) {
      ++total;
      correct += grade_answer(*item, text) ? 1 : 0;
      continue;
    }
    // A cross-check: graded against other nodes' answers once there are
    // some; the first nodes of a model only give references.
    std::vector<std::string> refs;
    auto r = st.references.find({p.model, item->id});
    if (r != st.references.end())
      for (auto& [who, answer] : r->second.by_node)
        if (who != node)
          refs.push_back(answer);
    if (!refs.empty()) {
      ++peer_total;
      peer_correct += agrees_with_peers(text, refs, st.pool.embedding_threshold) ? 1 : 0;
    }
    if (!text.empty())
      mine.answers.emplace_back(item, text);
  }
  // The same answers as another node's recent test, to other questions,
  // and not all right for these: copied, not computed. (The same questions
  // may well get the same answers; so may other questions that happen to
  // share theirs, and those answers are then all right.)
  // Only the answers to the questions asked: extra ones would change the
  // digest and nothing else.
  std::string joined, asked;
  for (size_t k = 0; k < p.items.size() && k < static_cast<size_t>(a.answers_size()); ++k)
    joined += a.answers(static_cast<int>(k)) + '\0';
  for (auto* item : p.items)
    asked += item->id + '\0';
  auto answers_digest = sha256_hex(joined), items_digest = sha256_hex(asked);
  bool all_right = correct == total && peer_correct == peer_total;
  if (auto seen = st.seen.find(answers_digest);
      !all_right && seen != st.seen.end() && seen->second.first != node
      && seen->second.second != items_digest) {
    refuse(self, node, pb::REFUSAL_REPLAY,
           "answers to test " + std::to_string(a.test_id())
             + " are those node " + seen->second.first
             + " gave to other questions");
    return;
  }
  if (st.seen.emplace(answers_digest, std::make_pair(node, items_digest)).second) {
    st.seen_order.push_back(answers_digest);
    if (st.seen_order.size() > max_seen_answers) {
      st.seen.erase(st.seen_order.front());
      st.seen_order.pop_front();
    }
  }
  auto test_id = p.test_id;
  auto latency = std::max<int64_t>(0, now - p.sent_at);
  st.pending.erase(i);
  st.awaiting[node] = std::move(mine);
  auto cmd = make_command([&](pb::Command& c) {
    auto* r = c.mutable_test_result();
    r->set_node_id(node);
    r->set_test_id(test_id);
    r->set_correct(correct);
    r->set_total(total);
    r->set_peer_correct(peer_correct);
    r->set_peer_total(peer_total);
    r->set_latency_ms(latency);
    r->set_tokens(tokens);
  });
  // A result the pool refuses is counted there: the gateway only tells the
  // node (the last argument says so).
  st.tickets.send(self, st.supervisor, cmd,
                  [=](pb::RefusalCode code, const std::string& detail) {
                    if (code != pb::REFUSAL_NONE)
                      self->send(self->state.gateway, refused_atom::value, node,
                                 code, detail, true);
                  });
}

} // namespace

caf::actor spawn_validator(caf::actor_system& sys, caf::actor supervisor,
                           caf::actor gateway, const params& pool,
                           bool sim_time, test_config tests) {
  return sys.spawn([=](self_ptr self) -> caf::behavior {
    auto& st = self->state;
    st.supervisor = supervisor;
    st.gateway = gateway;
    st.pool = pool;
    st.latency_bounds = test_latency_bounds(pool);
    st.sim_time = sim_time;
    st.bank = tests.bank ? tests.bank : challenge_bank::builtin();
    st.max_reference_keys = std::max<size_t>(1, tests.max_reference_keys);
    // Simulations derive the secret from the seed, so a run reproduces;
    // an oracle process always has one from a file (load_or_create_secret).
    st.secret = !tests.secret.empty()
                  ? tests.secret
                  : "simulation-secret-" + std::to_string(pool.seed);
    // What waits on the supervisor's answers is answered here if it stops.
    self->state.tickets.watch(self, supervisor);
    return {
      // The supervisor's answer to a result sent with a ticket.
      [=](answer_atom, uint64_t ticket, pb::RefusalCode code,
          const std::string& detail) {
        self->state.tickets.answered(self, self->state.supervisor, ticket, code,
                                     detail);
      },
      [=](events_atom, const event_batch& batch) {
        if (batch)
          on_events(self, *batch);
      },
      // The leader's term ended: tests in flight were its soft state. The
      // references stay: they were answers of nodes that passed.
      [=](reset_atom) {
        self->state.pending.clear();
        self->state.expired.clear();
        self->state.awaiting.clear();
      },
      [=](answers_atom, const std::string& node, const std::string& bytes) {
        on_answers(self, node, bytes);
      },
    };
  });
}

} // namespace nodepool
