#include "sim_backend.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "bank.hpp"
#include "random.hpp"

namespace nodepool {

std::string to_string(behaviour b) {
  switch (b) {
    case behaviour::healthy: return "healthy";
    case behaviour::slow: return "slow";
    case behaviour::wrong: return "wrong";
    case behaviour::flaky: return "flaky";
    case behaviour::crash: return "crash";
    case behaviour::garbage: return "garbage";
    case behaviour::solver: return "solver";
    case behaviour::copycat: return "copycat";
  }
  return "?";
}

std::optional<behaviour> parse_behaviour(const std::string& s) {
  for (auto b : {behaviour::healthy, behaviour::slow, behaviour::wrong,
                 behaviour::flaky, behaviour::crash, behaviour::garbage,
                 behaviour::solver, behaviour::copycat})
    if (to_string(b) == s)
      return b;
  return std::nullopt;
}

std::vector<behaviour> expand_mix(const std::string& mix, size_t nodes,
                                  uint64_t seed, std::string& err) {
  std::vector<std::pair<behaviour, double>> weights;
  double total = 0;
  std::stringstream in{mix};
  std::string item;
  while (std::getline(in, item, ',')) {
    auto colon = item.find(':');
    auto name = item.substr(0, colon);
    double w = 1;
    if (colon != std::string::npos) {
      // The whole rest must be a finite, non-negative number: NaN or
      // infinity would turn into garbage node counts below.
      auto text = item.substr(colon + 1);
      size_t used = 0;
      try {
        w = std::stod(text, &used);
      } catch (...) {
        used = 0;
      }
      if (used == 0 || used != text.size() || !std::isfinite(w) || w < 0) {
        err = "bad weight in '" + item + "'";
        return {};
      }
    }
    auto b = parse_behaviour(name);
    if (!b) {
      err = "unknown behaviour '" + name
            + "' (healthy, slow, wrong, flaky, crash, garbage, solver, "
              "copycat)";
      return {};
    }
    weights.emplace_back(*b, w);
    total += w;
  }
  if (weights.empty() || total <= 0 || !std::isfinite(total)) {
    err = "empty behaviour mix";
    return {};
  }
  // Largest-remainder apportionment, then a seeded shuffle: the counts are
  // as close to the weights as whole nodes allow, the order is random.
  std::vector<behaviour> out;
  std::vector<std::pair<double, behaviour>> rest;
  for (auto& [b, w] : weights) {
    double exact = nodes * w / total;
    auto whole = static_cast<size_t>(exact);
    out.insert(out.end(), whole, b);
    rest.emplace_back(exact - whole, b);
  }
  std::stable_sort(rest.begin(), rest.end(),
                   [](auto& x, auto& y) { return x.first > y.first; });
  for (size_t i = 0; out.size() < nodes; ++i)
    out.push_back(rest[i % rest.size()].second);
  seeded_rng rnd{seed};
  shuffle(out, rnd);
  return out;
}

sim_backend::sim_backend(behaviour b, uint64_t seed, int64_t deadline_ms,
                         std::shared_ptr<const sim_knowledge> knowledge)
  : behaviour_(b),
    knowledge_(knowledge ? std::move(knowledge) : sim_knowledge::builtin()),
    rng_(seed * 2654435761ULL + 1),
    deadline_ms_(deadline_ms) {
  life_ = 5 + static_cast<uint32_t>(next() % 20);
}

uint64_t sim_backend::next() { return rng_.next(); }

bool sim_backend::chance(double p) { return rng_.chance(p); }

void sim_backend::count_message() {
  if (behaviour_ == behaviour::crash && life_ > 0 && --life_ == 0)
    crashed_ = true;
}

std::string sim_backend::healthy_output(const std::string& prompt) {
  // A stand-in for a model's answer: the prompt's words echoed into a fixed
  // sentence. Deterministic, so healthy redundant nodes agree.
  return "Considering the request '" + prompt
         + "', the answer is that the pool serves it with tested nodes.";
}

std::string sim_backend::unrelated_output(uint64_t r) {
  static const char* lines[] = {
    "Many people enjoy a quiet walk in the park on a Sunday morning.",
    "The recipe needs two eggs, a cup of flour and a pinch of salt.",
    "Our team will review the quarterly figures before the meeting.",
    "Remember to water the plants twice a week during the summer.",
  };
  return lines[r % 4];
}

std::string sim_backend::arithmetic_solver(const std::string& prompt) {
  unsigned long long a = 0, b = 0;
  char word[64] = {0};
  if (std::sscanf(prompt.c_str(), "Compute %llu + %llu.", &a, &b) == 2)
    return std::to_string(a + b);
  if (std::sscanf(prompt.c_str(), "Compute %llu * %llu.", &a, &b) == 2)
    return std::to_string(a * b);
  if (std::sscanf(prompt.c_str(), "Reverse the word %63[a-z].", word) == 1) {
    std::string w{word};
    std::reverse(w.begin(), w.end());
    return w;
  }
  return {};
}

sim_reply sim_backend::answer(const std::string& prompt, int64_t bound_ms,
                              int64_t deadline_ms) {
  count_message();
  sim_reply r;
  r.text = knowledge_->answer(prompt);
  r.delay_ms = 1 + static_cast<int64_t>(next() % 20);
  switch (behaviour_) {
    case behaviour::slow:
      // Right answers, past the latency bound: between it and the deadline
      // when there is room, else past the deadline too.
      r.delay_ms = bound_ms > 0 && bound_ms + 2 < deadline_ms
                     ? (bound_ms + deadline_ms) / 2
                     : deadline_ms + deadline_ms / 2;
      break;
    case behaviour::wrong:
      r.text = knowledge_->wrong_answer(prompt, next());
      break;
    case behaviour::flaky:
      if (chance(0.3))
        r.text = knowledge_->wrong_answer(prompt, next());
      break;
    case behaviour::garbage:
      r.garbage = chance(0.5);
      if (!r.garbage)
        r.text = "?";
      break;
    case behaviour::solver:
      r.text = arithmetic_solver(prompt);
      break;
    case behaviour::copycat:
      r.text.clear();  // no model: it answers with what it copies
      break;
    default:
      break;
  }
  return r;
}

sim_reply sim_backend::infer(const std::string& prompt) {
  count_message();
  sim_reply r;
  r.text = healthy_output(prompt);
  r.delay_ms = 2 + static_cast<int64_t>(next() % 30);
  switch (behaviour_) {
    case behaviour::slow:
      r.delay_ms = deadline_ms_ + deadline_ms_ / 2;
      break;
    case behaviour::wrong:
      r.text = "zq" + std::to_string(next()) + " xv " + std::to_string(next());
      break;
    case behaviour::flaky:
      if (chance(0.2))
        r.text = "kw" + std::to_string(next()) + " jj " + std::to_string(next());
      else if (chance(0.1))
        r.silent = true;
      break;
    case behaviour::garbage:
      if (chance(0.5))
        r.garbage = true;
      else
        r.bad_reveal = true;
      break;
    default:
      break;
  }
  return r;
}

} // namespace nodepool
