#include "cognitive.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <set>
#include <fcntl.h>
#include <fstream>
#include <stdexcept>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "embedding.hpp"
#include "identity.hpp"
#include "random.hpp"

namespace nodepool {

namespace {

/// The last number in a text ("The answer is 42." -> 42), if any. A comma
/// followed by exactly three digits separates thousands ("86,400").
std::optional<double> last_number(const std::string& s) {
  auto digit = [&](size_t k) {
    return k < s.size() && std::isdigit(static_cast<unsigned char>(s[k]));
  };
  std::optional<double> found;
  size_t i = 0;
  while (i < s.size()) {
    if (!digit(i) || (i > 0 && (std::isalnum(static_cast<unsigned char>(s[i - 1]))
                                || s[i - 1] == '.'))) {
      ++i;
      continue;
    }
    std::string t;
    if (i > 0 && s[i - 1] == '-')
      t += '-';
    size_t j = i;
    for (;;) {
      while (digit(j))
        t += s[j++];
      if (j < s.size() && s[j] == ',' && digit(j + 1) && digit(j + 2)
          && digit(j + 3) && !digit(j + 4)) {
        ++j;
        continue;
      }
      break;
    }
    if (j + 1 < s.size() && s[j] == '.' && digit(j + 1)) {
      t += s[j++];
      while (digit(j))
        t += s[j++];
    }
    double v = std::strtod(t.c_str(), nullptr);
    if (std::isfinite(v))
      found = v;
    i = j;
  }
  return found;
}

} // namespace

test_plan choose_challenges(const std::string& secret, uint64_t test_id,
                            const std::string& node_id, uint32_t level,
                            const std::vector<std::string>& models,
                            uint32_t count, double peer_share,
                            const challenge_bank& bank) {
  std::string msg = "nodepool-test";
  msg += '\0';
  for (int i = 0; i < 8; ++i)
    msg += static_cast<char>((test_id >> (8 * i)) & 0xff);
  msg += node_id;
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), mac, &len);
  uint64_t seed = 0;
  for (int i = 0; i < 8; ++i)
    seed = (seed << 8) | mac[i];
  seeded_rng rng{seed};
  test_plan plan;
  plan.nonce = to_hex(std::string(reinterpret_cast<const char*>(mac + 16), 16));
  auto graded = bank.candidates(level, models, false);
  auto peers = bank.candidates(level, models, true);
  uint32_t n_peer = 0;
  if (!peers.empty() && count > 1)
    n_peer = std::min<uint32_t>(count - 1,
                                static_cast<uint32_t>(std::lround(count * peer_share)));
  auto draw = [&](std::vector<std::vector<const bank_item*>> groups, uint32_t n) {
    for (auto& g : groups) {
      // A partial Fisher-Yates shuffle: the first `take` are a random
      // subset, in random order.
      size_t take = std::min<size_t>(n, g.size());
      for (size_t i = 0; i < take; ++i) {
        std::swap(g[i], g[i + rng.below(g.size() - i)]);
        plan.items.push_back(g[i]);
      }
      n -= static_cast<uint32_t>(take);
      if (n == 0)
        break;
    }
  };
  draw(std::move(graded), count - n_peer);
  draw(std::move(peers), n_peer);
  shuffle(plan.items, rng);
  return plan;
}


double copied_share(const std::string& answer, const std::string& prompt) {
  constexpr size_t run = 4;
  auto a = words_of(answer), p = words_of(prompt);
  if (a.empty())
    return 0;
  std::set<std::vector<std::string>> runs;
  for (size_t i = 0; i + run <= p.size(); ++i)
    runs.emplace(p.begin() + static_cast<std::ptrdiff_t>(i),
                 p.begin() + static_cast<std::ptrdiff_t>(i + run));
  std::vector<bool> copied(a.size(), false);
  for (size_t i = 0; i + run <= a.size(); ++i)
    if (runs.count({a.begin() + static_cast<std::ptrdiff_t>(i),
                    a.begin() + static_cast<std::ptrdiff_t>(i + run)}))
      std::fill(copied.begin() + static_cast<std::ptrdiff_t>(i),
                copied.begin() + static_cast<std::ptrdiff_t>(i + run), true);
  return static_cast<double>(std::count(copied.begin(), copied.end(), true))
         / static_cast<double>(a.size());
}

bool grade_answer(const bank_item& item, const std::string& answer) {
  switch (item.grade) {
    case grade_mode::exact:
      return normalize_answer(answer) == normalize_answer(item.answer);
    case grade_mode::number: {
      auto got = last_number(answer);
      double want = std::strtod(item.answer.c_str(), nullptr);
      return got && std::fabs(*got - want) <= item.tolerance + 1e-9;
    }
    case grade_mode::similar: {
      auto a = normalize_answer(answer);
      if (a.empty() || copied_share(answer, item.prompt) > 0.5)
        return false;
      // The idea the question is about, named, and no wrong one: words in
      // common with the reference alone do not make an answer right.
      if (!missing_concept(item, answer).empty())
        return false;
      return cosine(embed(a), embed(normalize_answer(item.answer))) >= item.threshold;
    }
    case grade_mode::peer:
      return false;
  }
  return false;
}

bool agrees_with_peers(const std::string& answer,
                       const std::vector<std::string>& references,
                       double threshold) {
  if (references.empty())
    return false;
  auto e = embed(normalize_answer(answer));
  size_t agree = 0;
  for (auto& r : references)
    if (cosine(e, embed(normalize_answer(r))) >= threshold)
      ++agree;
  return agree * 2 >= references.size();
}

std::string load_or_create_secret(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) {
    // Written whole under another name, then linked into place: oracles
    // starting at once on one file (a cluster on one host) all end up
    // with the one that was linked first.
    unsigned char raw[32];
    if (RAND_bytes(raw, sizeof raw) != 1)
      throw std::runtime_error("cannot draw a random test secret");
    auto text = to_hex(std::string(reinterpret_cast<const char*>(raw), sizeof raw));
    unsigned char tag[6];
    if (RAND_bytes(tag, sizeof tag) != 1)
      throw std::runtime_error("cannot draw a random name");
    auto tmp = path + ".new." + std::to_string(::getpid()) + "."
               + to_hex(std::string(reinterpret_cast<const char*>(tag), sizeof tag));
    int w = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (w < 0)
      throw std::runtime_error(path + ": cannot create the test secret: "
                               + std::strerror(errno));
    bool ok = ::write(w, text.data(), text.size())
                == static_cast<ssize_t>(text.size())
              && ::write(w, "\n", 1) == 1 && ::fsync(w) == 0;
    ::close(w);
    int linked = ok ? ::link(tmp.c_str(), path.c_str()) : -1;
    int link_errno = errno;
    ::unlink(tmp.c_str());
    if (!ok || (linked != 0 && link_errno != EEXIST))
      throw std::runtime_error(path + ": cannot write the test secret");
    if (linked == 0)
      return text;
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);  // another one won
  }
  if (fd < 0)
    throw std::runtime_error(path + ": cannot read the test secret: "
                             + std::strerror(errno));
  struct stat st {};
  ::fstat(fd, &st);
  ::close(fd);
  if (st.st_mode & 077)
    throw std::runtime_error(path + ": the test secret is readable by others "
                                    "than its owner (chmod 600 it)");
  std::ifstream f{path, std::ios::binary};
  std::string text{std::istreambuf_iterator<char>{f}, {}};
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back())))
    text.pop_back();
  if (text.size() < 32)
    throw std::runtime_error(path + ": the test secret is shorter than 32 "
                                    "characters");
  return text;
}

} // namespace nodepool
