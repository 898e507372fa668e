#include "identity.hpp"

#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <sys/stat.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

namespace nodepool {

namespace {

EVP_PKEY* as_pkey(void* p) { return static_cast<EVP_PKEY*>(p); }

std::string raw_public(EVP_PKEY* k) {
  std::string out(32, '\0');
  size_t len = out.size();
  if (EVP_PKEY_get_raw_public_key(k, reinterpret_cast<unsigned char*>(out.data()),
                                  &len) != 1 || len != 32)
    throw std::runtime_error("cannot read the public half of an Ed25519 key");
  return out;
}

std::string random_bytes(size_t n) {
  std::string out(n, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(out.data()),
                 static_cast<int>(n)) != 1)
    throw std::runtime_error("no randomness from OpenSSL");
  return out;
}

std::string trim(const std::string& s) {
  auto b = s.find_first_not_of(" \t\r");
  if (b == std::string::npos)
    return {};
  auto e = s.find_last_not_of(" \t\r");
  return s.substr(b, e - b + 1);
}

/// Calls f(line number, first word) for every line with content.
template <class F>
void for_each_entry(const std::string& path, F f) {
  std::ifstream in(path);
  if (!in)
    throw std::runtime_error("cannot read " + path);
  std::string line;
  int no = 0;
  while (std::getline(in, line)) {
    ++no;
    auto hash = line.find('#');
    if (hash != std::string::npos)
      line.resize(hash);
    line = trim(line);
    if (line.empty())
      continue;
    f(no, line.substr(0, line.find_first_of(" \t")));
  }
}

} // namespace

node_key node_key::generate() {
  node_key k;
  auto* ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, nullptr);
  EVP_PKEY* p = nullptr;
  bool ok = ctx && EVP_PKEY_keygen_init(ctx) == 1 && EVP_PKEY_keygen(ctx, &p) == 1;
  EVP_PKEY_CTX_free(ctx);
  if (!ok)
    throw std::runtime_error("cannot generate an Ed25519 key");
  k.pkey_ = p;
  k.public_ = raw_public(p);
  return k;
}

node_key node_key::load(const std::string& path) {
  auto* f = std::fopen(path.c_str(), "r");
  if (!f)
    throw std::runtime_error("cannot read key file " + path);
  auto no_passphrase = [](char*, int, int, void*) { return 0; };
  auto* p = PEM_read_PrivateKey(f, nullptr, no_passphrase, nullptr);
  std::fclose(f);
  if (!p)
    throw std::runtime_error(path + " holds no readable PEM private key "
                                    "(make one with nodepool keygen)");
  if (EVP_PKEY_id(p) != EVP_PKEY_ED25519) {
    EVP_PKEY_free(p);
    throw std::runtime_error(path + " is not an Ed25519 key");
  }
  node_key k;
  k.pkey_ = p;
  k.public_ = raw_public(p);
  return k;
}

void node_key::save(const std::string& path) const {
  auto old = ::umask(077);
  auto* f = std::fopen(path.c_str(), "w");
  ::umask(old);
  if (!f)
    throw std::runtime_error("cannot write " + path);
  // The umask holds for a file created here; one replaced (--force) keeps
  // its mode unless told: the key is written only once it is 0600.
  if (::fchmod(::fileno(f), 0600) != 0) {
    std::fclose(f);
    throw std::runtime_error("cannot make " + path + " private (mode 0600)");
  }
  bool ok = PEM_write_PrivateKey(f, as_pkey(pkey_), nullptr, nullptr, 0,
                                 nullptr, nullptr) == 1;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok)
    throw std::runtime_error("cannot write the key to " + path);
}

std::string node_key::sign(const std::string& message) const {
  auto* ctx = EVP_MD_CTX_new();
  std::string sig(64, '\0');
  size_t len = sig.size();
  bool ok = ctx && EVP_DigestSignInit(ctx, nullptr, nullptr, nullptr, as_pkey(pkey_)) == 1
            && EVP_DigestSign(ctx, reinterpret_cast<unsigned char*>(sig.data()), &len,
                              reinterpret_cast<const unsigned char*>(message.data()),
                              message.size()) == 1;
  EVP_MD_CTX_free(ctx);
  if (!ok)
    throw std::runtime_error("Ed25519 signing failed");
  sig.resize(len);
  return sig;
}

node_key::node_key(node_key&& o) noexcept : pkey_(o.pkey_), public_(std::move(o.public_)) {
  o.pkey_ = nullptr;
}

node_key& node_key::operator=(node_key&& o) noexcept {
  std::swap(pkey_, o.pkey_);
  std::swap(public_, o.public_);
  return *this;
}

node_key::~node_key() {
  if (pkey_)
    EVP_PKEY_free(as_pkey(pkey_));
}

bool verify_signature(const std::string& public_key, const std::string& message,
                      const std::string& signature) {
  if (public_key.size() != 32 || signature.size() != 64)
    return false;
  auto* p = EVP_PKEY_new_raw_public_key(
    EVP_PKEY_ED25519, nullptr,
    reinterpret_cast<const unsigned char*>(public_key.data()), public_key.size());
  if (!p)
    return false;
  auto* ctx = EVP_MD_CTX_new();
  bool ok = ctx && EVP_DigestVerifyInit(ctx, nullptr, nullptr, nullptr, p) == 1
            && EVP_DigestVerify(ctx,
                                reinterpret_cast<const unsigned char*>(signature.data()),
                                signature.size(),
                                reinterpret_cast<const unsigned char*>(message.data()),
                                message.size()) == 1;
  EVP_MD_CTX_free(ctx);
  EVP_PKEY_free(p);
  return ok;
}

std::string to_hex(const std::string& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

std::optional<std::string> from_hex(const std::string& text) {
  if (text.size() % 2)
    return std::nullopt;
  auto val = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  for (size_t i = 0; i < text.size(); i += 2) {
    int hi = val(text[i]), lo = val(text[i + 1]);
    if (hi < 0 || lo < 0)
      return std::nullopt;
    out += static_cast<char>(hi * 16 + lo);
  }
  return out;
}

std::string registration_message(const std::string& node_id,
                                 const std::string& public_key,
                                 const std::string& nonce) {
  std::string m = "nodepool-register-v1";
  for (auto* part : {&node_id, &public_key, &nonce}) {
    m += '\0';
    m += std::to_string(part->size());
    m += ':';
    m += *part;
  }
  return m;
}

void load_allow_list(const std::string& path, admission_policy& into) {
  into.listed = true;
  for_each_entry(path, [&](int no, const std::string& word) {
    auto key = from_hex(word);
    if (!key || key->size() != 32)
      throw std::runtime_error(path + ":" + std::to_string(no)
                               + ": expected a 64-digit hex Ed25519 public key "
                                 "(as nodepool keygen prints it)");
    into.allowed_keys.insert(*key);
  });
}

void load_join_tokens(const std::string& path, admission_policy& into) {
  into.listed = true;
  for_each_entry(path, [&](int no, const std::string& word) {
    if (word.size() < 16)
      throw std::runtime_error(path + ":" + std::to_string(no)
                               + ": a join token has at least 16 characters");
    into.join_tokens.insert(word);
  });
}

std::string make_join_token() { return to_hex(random_bytes(24)); }

authenticator::authenticator(admission_policy policy) : policy_(std::move(policy)) {}

std::optional<refusal> authenticator::check(uint64_t conn, const pb::Register& r,
                                            std::string& challenge) {
  challenge.clear();
  if (r.public_key().empty()) {
    if (policy_.open())
      return std::nullopt;
    return refusal{pb::REFUSAL_KEY_REQUIRED,
                   "this oracle admits only nodes with a key on its "
                   "allow-list or a join token: start the miner with --key"};
  }
  if (r.public_key().size() != 32)
    return refusal{pb::REFUSAL_BAD_KEY, "a public key is 32 bytes (Ed25519)"};
  if (r.signature().empty()) {
    // First step: prove you hold the key by signing this.
    auto nonce = random_bytes(32);
    nonces_[conn] = nonce;
    challenge = nonce;
    return std::nullopt;
  }
  auto i = nonces_.find(conn);
  if (i == nonces_.end() || i->second != r.nonce())
    return refusal{pb::REFUSAL_BAD_NONCE,
                   "the signature is over a nonce this connection was not "
                   "given, or was given and used already (a replay?)"};
  nonces_.erase(i);  // one use, whatever the outcome
  if (!verify_signature(r.public_key(),
                        registration_message(r.node_id(), r.public_key(), r.nonce()),
                        r.signature()))
    return refusal{pb::REFUSAL_BAD_SIGNATURE,
                   "the signature does not verify with the key presented"};
  if (policy_.open() || policy_.allowed_keys.count(r.public_key())
      || (!r.join_token().empty() && policy_.join_tokens.count(r.join_token())))
    return std::nullopt;
  return refusal{pb::REFUSAL_KEY_NOT_ALLOWED,
                 "key " + to_hex(r.public_key())
                   + " is not on this oracle's allow-list and no valid join "
                     "token was given"};
}

} // namespace nodepool
