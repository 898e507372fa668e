// A peer that reaches an oracle's gateway as miners and clients do, and
// sends it the messages only the oracle's own actors may send: new routes
// to nowhere, a term no leader reaches, a refusal that retires a node, the
// same said as a node's refusal. Then it asks the gateway for the pool's
// state and says which actor answered.
//
//   hostile_peer HOST PORT NODE
//
// Prints one JSON line: {"sent":4,"state_bytes":N,"answered_by_gateway":B}.
#include <caf/all.hpp>
#include <caf/io/all.hpp>

#include <cstdint>
#include <iostream>
#include <limits>

#include <nlohmann/json.hpp>

#include "actors/config.hpp"
#include "actors/node.hpp"
#include "nodepool.pb.h"

int main(int argc, char** argv) {
  using namespace nodepool;
  if (argc < 4) {
    std::cerr << "usage: hostile_peer HOST PORT NODE\n";
    return 2;
  }
  actor_config cfg;
  caf::actor_system sys{cfg};
  auto gw = connect_oracle(sys, argv[1], static_cast<uint16_t>(std::stoi(argv[2])));
  if (!gw) {
    std::cerr << "cannot reach oracle: " << sys.render(gw.error()) << "\n";
    return 1;
  }
  std::string node = argv[3];
  caf::scoped_actor self{sys};
  self->send(*gw, connect_atom::value, caf::actor{}, caf::actor{});
  self->send(*gw, lead_atom::value, std::numeric_limits<uint64_t>::max());
  pb::OracleMsg quit;
  quit.mutable_refusal()->set_code("retired");
  quit.mutable_refusal()->set_detail("forged");
  self->send(*gw, send_atom::value, node, quit.SerializeAsString());
  self->send(*gw, refused_atom::value, node, std::string{"retired"},
             std::string{"forged"});
  nlohmann::json out;
  out["sent"] = 4;
  int rc = 0;
  self->request(*gw, std::chrono::seconds(10), state_atom::value)
    .receive(
      [&](const std::string& bytes) {
        out["state_bytes"] = bytes.size();
        out["answered_by_gateway"] =
          self->current_sender() == caf::actor_cast<caf::strong_actor_ptr>(*gw);
      },
      [&](caf::error& e) {
        std::cerr << "no state: " << sys.render(e) << "\n";
        rc = 1;
      });
  std::cout << out.dump() << std::endl;
  return rc;
}
