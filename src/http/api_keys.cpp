#include "http/api_keys.hpp"

#include <fstream>
#include <sstream>
#include <stdexcept>

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

namespace nodepool::http {

const char* to_string(role r) { return r == role::admin ? "admin" : "client"; }

namespace {

api_keys::digest sha(const std::string& key) {
  api_keys::digest d{};
  SHA256(reinterpret_cast<const unsigned char*>(key.data()), key.size(), d.data());
  return d;
}

std::string hex(const unsigned char* p, size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    out += digits[p[i] >> 4];
    out += digits[p[i] & 15];
  }
  return out;
}

} // namespace

api_keys api_keys::parse(const std::string& text, const std::string& name) {
  api_keys keys;
  std::istringstream in{text};
  std::string line;
  int no = 0;
  while (std::getline(in, line)) {
    ++no;
    if (auto h = line.find('#'); h != std::string::npos)
      line.erase(h);
    std::istringstream words{line};
    std::string key, r, extra;
    if (!(words >> key))
      continue;
    auto where = name + ":" + std::to_string(no) + ": ";
    if (!(words >> r))
      throw std::runtime_error(where + "a key needs a role after it (client or admin)");
    if (words >> extra)
      throw std::runtime_error(where + "expected KEY ROLE, found more");
    if (r != "client" && r != "admin")
      throw std::runtime_error(where + "unknown role '" + r
                               + "' (expected client or admin)");
    if (key.size() < 16)
      throw std::runtime_error(where + "key shorter than 16 characters");
    keys.add(key, r == "admin" ? role::admin : role::client);
  }
  return keys;
}

api_keys api_keys::load(const std::string& path) {
  std::ifstream f{path, std::ios::binary};
  if (!f)
    throw std::runtime_error(path + ": cannot be read");
  std::string text{std::istreambuf_iterator<char>{f}, {}};
  auto keys = parse(text, path);
  if (keys.empty())
    throw std::runtime_error(path + ": holds no key");
  return keys;
}

void api_keys::add(const std::string& key, role r) { keys_.push_back({sha(key), r}); }

std::optional<role> api_keys::check(const std::string& key) const {
  auto d = sha(key);
  std::optional<role> found;
  // Every entry is compared, in constant time each: how long this takes
  // says nothing about which key (or how much of one) matched.
  for (auto& e : keys_)
    if (CRYPTO_memcmp(d.data(), e.sha.data(), d.size()) == 0)
      found = e.r;
  return found;
}

std::string api_keys::fingerprint(const std::string& key) {
  auto d = sha(key);
  return hex(d.data(), 4);
}

std::string random_api_key() {
  unsigned char b[32];
  if (RAND_bytes(b, sizeof b) != 1)
    throw std::runtime_error("the system's random number generator failed");
  return "np_" + hex(b, sizeof b);
}

bool rate_limiter::allow(const std::string& who,
                         std::chrono::steady_clock::time_point now) {
  if (rate_ <= 0)
    return true;
  std::lock_guard<std::mutex> g{mu_};
  if (buckets_.size() > 100000)
    buckets_.clear();  // bounded: forgetting means a fresh burst, no more
  auto [it, fresh] = buckets_.try_emplace(who);
  auto& b = it->second;
  if (fresh) {
    b.tokens = burst_;
    b.at = now;
  }
  double dt = std::chrono::duration<double>(now - b.at).count();
  b.at = now;
  b.tokens = std::min(burst_, b.tokens + dt * rate_);
  if (b.tokens < 1)
    return false;
  b.tokens -= 1;
  return true;
}

} // namespace nodepool::http
