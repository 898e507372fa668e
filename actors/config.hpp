#pragma once

#include <cstddef>
#include <cstdint>

#include <caf/actor_system_config.hpp>
#include <caf/local_actor.hpp>

#include "messages/type_ids.hpp"

namespace nodepool {

/// How many times an idle CAF worker polls for a job with a 50 us sleep in
/// between, after its busy loop and before it waits on its condition
/// variable (10 ms at a time). CAF's default is 500, about 25-50 ms of
/// polling: an actor woken more often than that (a timer, a heartbeat)
/// keeps every idle worker polling for good. On 2 cores an idle oracle then
/// spent 6-7 % of a core on sleeps of 50 us, and under load the polling
/// workers took the cores from the ones with work (BENCHMARKS.md, "Idle
/// workers that poll"). Each of those sleeps is a trip through the
/// scheduler, dear on this guest: five, not fifty, lifted the replicated
/// cycle 14 % and did not lower the durable one ("Fewer polls still").
constexpr size_t moderate_poll_attempts = 5;

/// The one actor-system configuration shared by every binary and test: loads
/// CAF's middleman (BASP over TCP) unless `network` is false (in-process
/// tests), keeps CAF's own logging quiet, and lets idle scheduler workers
/// sleep sooner (moderate_poll_attempts).
class actor_config : public caf::actor_system_config {
public:
  explicit actor_config(bool network = true);
  /// Switches to CAF's deterministic test_coordinator: nothing runs until a
  /// test calls sched.run(), timers fire only on advance_time().
  actor_config& testing();
};

/// Time as the pool sees it, in milliseconds. Under the test coordinator
/// (`sim_time`), the actor clock, which a test advances by hand, starting at
/// a fixed base; otherwise the wall clock, so that stored times stay
/// meaningful across restarts.
int64_t now_ms(caf::local_actor* self, bool sim_time);

/// The base the simulated clock starts at (so no event happens at time 0).
constexpr int64_t sim_time_base_ms = 1000000;

} // namespace nodepool

#include <caf/error.hpp>
#include <string>

#include "refusal.hpp"

namespace nodepool {

/// Refusals travel between actors as caf::error of category "nodepool"
/// with (code's text, detail) as context, so request(...).then() can tell them from
/// an accepted reply with its error handler.
caf::error make_refusal(pb::RefusalCode code, const std::string& detail);

/// Code and detail of a refusal; other errors (a peer gone, a timeout) come
/// out as code "unavailable" with CAF's rendering as detail.
std::pair<std::string, std::string> read_refusal(caf::actor_system& sys,
                                                 const caf::error& err);

} // namespace nodepool

namespace nodepool {

/// Mutual TLS between oracle and miners (CAF's openssl module): every side
/// presents a certificate signed by a CA the other side trusts.
struct tls_files {
  std::string certificate;  // PEM certificate chain of this side
  std::string key;          // PEM private key
  std::string ca;           // PEM file of the CAs to trust
  bool enabled() const { return !certificate.empty(); }
};

/// Checks that the three files are there, parse, and that the key belongs to
/// the certificate. Returns what is wrong, empty when all is well. (CAF
/// itself would only fail at the first connection, less clearly.)
std::string check_tls_files(const tls_files& tls);

/// Loads CAF's openssl module with these files into `cfg` (before the actor
/// system is made from it).
void use_tls(actor_config& cfg, const tls_files& tls);

} // namespace nodepool
