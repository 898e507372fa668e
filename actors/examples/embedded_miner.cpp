// A miner program embedding nodepool node actors in its own actor system.
//
//   example_miner HOST PORT [NODES]
//
// Connects to the oracle at HOST:PORT and serves NODES healthy simulated
// nodes until interrupted. A real miner would give each node an inference
// backend of its own; the node actor is the same.
#include <caf/all.hpp>
#include <caf/io/all.hpp>
#include <iostream>

#include "actors/config.hpp"
#include "actors/node.hpp"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: example_miner HOST PORT [NODES]\n";
    return 2;
  }
  nodepool::actor_config cfg;
  caf::actor_system sys{cfg};
  auto gw = nodepool::connect_oracle(sys, argv[1],
                                     static_cast<uint16_t>(std::stoi(argv[2])));
  if (!gw) {
    std::cerr << "cannot reach oracle: " << sys.render(gw.error()) << "\n";
    return 1;
  }
  int n = argc > 3 ? std::stoi(argv[3]) : 1;
  for (int i = 0; i < n; ++i) {
    nodepool::node_config nc;
    nc.id = "example-" + std::to_string(i);
    nc.seed = static_cast<uint64_t>(i) + 1;
    nodepool::spawn_node(sys, nc, *gw);
  }
  std::cout << "serving " << n << " node(s); Ctrl-C to stop" << std::endl;
  sys.await_all_actors_done();
}
