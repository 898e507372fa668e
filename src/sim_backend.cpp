#include "sim_backend.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "cognitive.hpp"
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
  }
  return "?";
}

std::optional<behaviour> parse_behaviour(const std::string& s) {
  for (auto b : {behaviour::healthy, behaviour::slow, behaviour::wrong,
                 behaviour::flaky, behaviour::crash, behaviour::garbage})
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
            + "' (healthy, slow, wrong, flaky, crash, garbage)";
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

sim_backend::sim_backend(behaviour b, uint64_t seed, int64_t deadline_ms)
  : behaviour_(b), rng_(seed * 2654435761ULL + 1), deadline_ms_(deadline_ms) {
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

sim_reply sim_backend::answer(const std::string& prompt) {
  count_message();
  sim_reply r;
  r.text = solve(prompt);
  r.delay_ms = 1 + static_cast<int64_t>(next() % 20);
  switch (behaviour_) {
    case behaviour::slow:
      r.delay_ms = deadline_ms_ + deadline_ms_ / 2;
      break;
    case behaviour::wrong:
      r.text = std::to_string(next() % 100000);
      break;
    case behaviour::flaky:
      if (chance(0.3))
        r.text = std::to_string(next() % 100000);
      break;
    case behaviour::garbage:
      r.garbage = chance(0.5);
      if (!r.garbage)
        r.text = "?";
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
