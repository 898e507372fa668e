// A miner program embedding nodepool node actors in its own actor system.
//
//   example_miner HOST PORT [NODES]
//
// Connects to the oracle at HOST:PORT and serves NODES healthy simulated
// nodes until interrupted (SIGINT or SIGTERM: exit 0). When the oracle goes
// away (restarted, upgraded), the program connects again, for up to a
// minute, and hands the new connection to its nodes, which register again;
// an oracle that does not come back ends it with 1. A real miner would give
// each node an inference backend of its own; the node actor is the same.
#include <caf/all.hpp>
#include <caf/io/all.hpp>
#include <csignal>
#include <iostream>
#include <thread>

#include "actors/config.hpp"
#include "actors/node.hpp"
#include "messages/type_ids.hpp"

namespace {

volatile std::sig_atomic_t stop = 0;

extern "C" void on_signal(int) {
  stop = 1;
}

/// Tries to reach the oracle again every 250 ms for `limit`, or until a
/// signal.
caf::expected<caf::actor> reconnect(caf::actor_system& sys,
                                    const std::string& host, uint16_t port,
                                    std::chrono::seconds limit) {
  auto end = std::chrono::steady_clock::now() + limit;
  auto gw = nodepool::connect_oracle(sys, host, port);
  while (!gw && !stop && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    gw = nodepool::connect_oracle(sys, host, port);
  }
  return gw;
}

} // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: example_miner HOST PORT [NODES]\n";
    return 2;
  }
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  std::string host = argv[1];
  auto port = static_cast<uint16_t>(std::stoi(argv[2]));
  nodepool::actor_config cfg;
  caf::actor_system sys{cfg};
  auto gw = nodepool::connect_oracle(sys, host, port);
  if (!gw) {
    std::cerr << "cannot reach oracle: " << sys.render(gw.error()) << "\n";
    return 1;
  }
  int n = argc > 3 ? std::stoi(argv[3]) : 1;
  std::vector<caf::actor> nodes;
  for (int i = 0; i < n; ++i) {
    nodepool::node_config nc;
    nc.id = "example-" + std::to_string(i);
    nc.seed = static_cast<uint64_t>(i) + 1;
    nodes.push_back(nodepool::spawn_node(sys, nc, *gw));
  }
  std::cout << "serving " << n << " node(s); Ctrl-C to stop" << std::endl;
  caf::scoped_actor self{sys};
  self->monitor(*gw);
  int rc = 0;
  while (!stop) {
    self->receive(
      [&](caf::down_msg& dm) {
        if (dm.source != gw->address())
          return;
        std::cout << "oracle gone; connecting again" << std::endl;
        gw = reconnect(sys, host, port, std::chrono::seconds(60));
        if (!gw) {
          if (!stop) {
            std::cerr << "oracle did not come back: "
                      << sys.render(gw.error()) << "\n";
            rc = 1;
          }
          stop = 1;
          return;
        }
        self->monitor(*gw);
        for (auto& node : nodes)
          self->send(node, nodepool::connect_atom::value, *gw);
        std::cout << "connected again" << std::endl;
      },
      caf::after(std::chrono::milliseconds(100)) >> [] {});
  }
  for (auto& node : nodes)
    self->send_exit(node, caf::exit_reason::user_shutdown);
  return rc;
}
