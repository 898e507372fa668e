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

caf::error make_refusal(const std::string& code, const std::string& detail) {
  return caf::error{static_cast<uint8_t>(1), caf::atom("nodepool"),
                    caf::make_message(code, detail)};
}

std::pair<std::string, std::string> read_refusal(caf::actor_system& sys,
                                                 const caf::error& err) {
  if (err.category() == caf::atom("nodepool")
      && err.context().match_elements<std::string, std::string>())
    return {err.context().get_as<std::string>(0),
            err.context().get_as<std::string>(1)};
  return {"unavailable", sys.render(err)};
}

} // namespace nodepool
