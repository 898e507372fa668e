#include "actors/config.hpp"

#include <chrono>

#include <caf/actor_system.hpp>
#include <caf/io/middleman.hpp>
#include <caf/make_message.hpp>

namespace nodepool {

actor_config::actor_config(bool network) {
  if (network)
    load<caf::io::middleman>();
  set("logger.verbosity", caf::atom("quiet"));
  set("logger.console", caf::atom("none"));
  set("work-stealing.moderate-poll-attempts", moderate_poll_attempts);
}

actor_config& actor_config::testing() {
  set("scheduler.policy", caf::atom("testing"));
  return *this;
}

int64_t now_ms(caf::local_actor* self, bool sim_time) {
  using namespace std::chrono;
  if (sim_time)
    return sim_time_base_ms
           + duration_cast<milliseconds>(self->clock().now().time_since_epoch())
               .count();
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch())
    .count();
}

} // namespace nodepool

namespace nodepool {

caf::error make_refusal(pb::RefusalCode code, const std::string& detail) {
  // The error leaves the oracle (a CAF client's answer): its context holds
  // the code's text and the detail, as before the enum. Its own code stays
  // 1 (a caf::error of code 0 is no error at all).
  return caf::error{static_cast<uint8_t>(1), caf::atom("nodepool"),
                    caf::make_message(refusal_name(code), detail)};
}

std::pair<std::string, std::string> read_refusal(caf::actor_system& sys,
                                                 const caf::error& err) {
  if (err.category() == caf::atom("nodepool")
      && err.context().match_elements<std::string, std::string>())
    return {err.context().get_as<std::string>(0),
            err.context().get_as<std::string>(1)};
  return {refusal_name(pb::REFUSAL_UNAVAILABLE), sys.render(err)};
}

} // namespace nodepool

#include <caf/openssl/manager.hpp>
#include <cstdio>
#include <openssl/pem.h>
#include <openssl/x509.h>

namespace nodepool {

std::string check_tls_files(const tls_files& tls) {
  if (tls.certificate.empty() || tls.key.empty() || tls.ca.empty())
    return "TLS needs a certificate, its key and a CA file (--tls-cert, "
           "--tls-key, --tls-ca)";
  auto read_cert = [](const std::string& path) -> X509* {
    auto* f = std::fopen(path.c_str(), "r");
    if (!f)
      return nullptr;
    auto* x = PEM_read_X509(f, nullptr, nullptr, nullptr);
    std::fclose(f);
    return x;
  };
  auto* cert = read_cert(tls.certificate);
  if (!cert)
    return "cannot read a PEM certificate from " + tls.certificate;
  auto* ca = read_cert(tls.ca);
  if (!ca) {
    X509_free(cert);
    return "cannot read a PEM CA certificate from " + tls.ca;
  }
  X509_free(ca);
  auto* f = std::fopen(tls.key.c_str(), "r");
  // No passphrase prompt: encrypted keys are not supported and say so.
  auto no_passphrase = [](char*, int, int, void*) { return 0; };
  EVP_PKEY* key = f ? PEM_read_PrivateKey(f, nullptr, no_passphrase, nullptr)
                    : nullptr;
  if (f)
    std::fclose(f);
  std::string err;
  if (!key)
    err = "cannot read a PEM private key from " + tls.key
          + " (it must exist and not be encrypted)";
  else if (X509_check_private_key(cert, key) != 1)
    err = "the key in " + tls.key + " does not belong to the certificate in "
          + tls.certificate;
  EVP_PKEY_free(key);
  X509_free(cert);
  return err;
}

void use_tls(actor_config& cfg, const tls_files& tls) {
  cfg.openssl_certificate = tls.certificate;
  cfg.openssl_key = tls.key;
  cfg.openssl_cafile = tls.ca;
  cfg.load<caf::openssl::manager>();
}

} // namespace nodepool
