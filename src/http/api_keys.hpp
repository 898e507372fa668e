#pragma once

// API keys of the HTTP front: `Authorization: Bearer <key>`. Only SHA-256
// digests are kept in memory, and a presented key is compared with each in
// constant time.

#include <array>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace nodepool::http {

enum class role { client, admin };

const char* to_string(role r);

class api_keys {
 public:
  using digest = std::array<unsigned char, 32>;

  /// Reads a keys file: one key per line, a space, then `client` or
  /// `admin`; `#` starts a comment, blank lines are skipped. Throws
  /// std::runtime_error naming the line that is wrong.
  static api_keys load(const std::string& path);
  /// The same from text (tests).
  static api_keys parse(const std::string& text, const std::string& name);

  void add(const std::string& key, role r);
  size_t size() const { return keys_.size(); }
  bool empty() const { return keys_.empty(); }

  /// The role of `key`, or nothing if it is not one of ours.
  std::optional<role> check(const std::string& key) const;
  /// A short, non-secret name of a key for logs and rate limits: the first
  /// 8 hex digits of its digest.
  static std::string fingerprint(const std::string& key);

 private:
  struct entry {
    digest sha;
    role r;
  };
  std::vector<entry> keys_;
};

/// A fresh random key (32 bytes from OpenSSL's RNG, as "np_" + 64 hex).
std::string random_api_key();

/// Per-key token buckets: `rate` requests per second, bursts of `burst`.
class rate_limiter {
 public:
  rate_limiter(double rate, double burst) : rate_(rate), burst_(burst) {}
  /// False if `who` is over its rate now (then it should wait).
  bool allow(const std::string& who, std::chrono::steady_clock::time_point now);
  bool enabled() const { return rate_ > 0; }

 private:
  struct bucket {
    double tokens = 0;
    std::chrono::steady_clock::time_point at;
  };
  double rate_, burst_;
  std::mutex mu_;
  std::unordered_map<std::string, bucket> buckets_;
};

} // namespace nodepool::http
