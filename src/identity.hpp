#pragma once

// Node identity: Ed25519 key pairs (OpenSSL), the allow-list and join tokens
// an oracle admits by, and the check of a signed registration. Pure: no
// actor code; the gateway holds an `authenticator` and asks it.
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "nodepool.pb.h"
#include "refusal.hpp"

namespace nodepool {

/// A node's Ed25519 key pair.
class node_key {
public:
  /// A fresh key pair from the system's random source.
  static node_key generate();
  /// Reads a PEM private key written by save(). Throws std::runtime_error
  /// naming the file and what is wrong.
  static node_key load(const std::string& path);
  /// Writes the private key as PEM (mode 0600). Throws on failure.
  void save(const std::string& path) const;

  /// The raw 32-byte public key (what a Register carries).
  const std::string& public_key() const { return public_; }
  std::string sign(const std::string& message) const;

  node_key(node_key&&) noexcept;
  node_key& operator=(node_key&&) noexcept;
  ~node_key();

private:
  node_key() = default;
  void* pkey_ = nullptr;  // EVP_PKEY*
  std::string public_;
};

bool verify_signature(const std::string& public_key, const std::string& message,
                      const std::string& signature);

/// Lowercase hex of raw bytes, and back (nullopt on bad text).
std::string to_hex(const std::string& bytes);
std::optional<std::string> from_hex(const std::string& text);

/// What a node signs to register: it binds the node id, its key and the
/// oracle's one-time nonce, so the signature is good for that one
/// registration only.
std::string registration_message(const std::string& node_id,
                                 const std::string& public_key,
                                 const std::string& nonce);

/// Who may register. Without an allow-list or tokens the pool is open:
/// keys are optional, but a node that presents one still proves it holds
/// it. Once a list is given, keys are required even if it names none (a
/// list emptied of its last key admits no one, it does not open the pool).
struct admission_policy {
  std::set<std::string> allowed_keys;  // raw public keys
  std::set<std::string> join_tokens;
  bool listed = false;  // an allow-list or a token file was read
  bool open() const {
    return !listed && allowed_keys.empty() && join_tokens.empty();
  }
};

/// Reads an allow-list: one hex public key per line (as `nodepool keygen`
/// prints it), '#' starts a comment, blank lines are skipped; anything after
/// the key on its line is a free label. Throws std::runtime_error naming the
/// file and line of a bad entry.
void load_allow_list(const std::string& path, admission_policy& into);
/// Reads join tokens: one per line, at least 16 characters, '#' comments.
void load_join_tokens(const std::string& path, admission_policy& into);
/// A fresh random join token (hex).
std::string make_join_token();

/// Checks registrations against a policy with one-time nonces. The caller
/// (the gateway) keys nonces by connection: a nonce is good for one
/// registration, on the connection it was given to.
class authenticator {
public:
  explicit authenticator(admission_policy policy = {});

  /// What to do with a registration from connection `conn`:
  ///  - nullopt and `challenge` set: send the node this nonce to sign;
  ///  - nullopt and `challenge` empty: admit (forward the registration);
  ///  - a refusal: refuse it.
  std::optional<refusal> check(uint64_t conn, const pb::Register& r,
                               std::string& challenge);
  /// The connection is gone: its nonce with it.
  void forget(uint64_t conn) { nonces_.erase(conn); }

  const admission_policy& policy() const { return policy_; }

private:
  admission_policy policy_;
  std::map<uint64_t, std::string> nonces_;  // connection -> nonce given
};

} // namespace nodepool
