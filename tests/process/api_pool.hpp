#pragma once

// An oracle process with its HTTP API on a free port and real miner
// processes, for the tests of the HTTP API and of what it shows.
#ifndef CPPHTTPLIB_OPENSSL_SUPPORT
#define CPPHTTPLIB_OPENSSL_SUPPORT
#endif
#include <httplib.h>

#include <fstream>
#include <functional>
#include <memory>
#include <thread>

#include <nlohmann/json.hpp>

#include "process/proc.hpp"

namespace nodepool::testing {

using namespace std::chrono_literals;
using nlohmann::json;

inline const std::string client_key = "np_client_key_for_the_api_test";
inline const std::string admin_key = "np_admin_key_for_the_api_test_";

/// The port an oracle printed for its HTTP API ("HTTP API on http://H:P/").
inline int http_port(const std::string& out) {
  auto i = out.find("HTTP API on ");
  if (i == std::string::npos)
    return 0;
  auto colon = out.find(':', out.find("//", i));
  return std::stoi(out.substr(colon + 1));
}

/// Polls GET /api/v1/status through `c` until `ok`, for up to `limit`;
/// returns the last status read.
inline json poll_status(httplib::Client& c, const std::function<bool(const json&)>& ok,
                        std::chrono::seconds limit) {
  auto end = std::chrono::steady_clock::now() + limit;
  json j;
  while (std::chrono::steady_clock::now() < end) {
    if (auto r = c.Get("/api/v1/status"); r && r->status == 200) {
      j = json::parse(r->body);
      if (ok(j))
        return j;
    }
    std::this_thread::sleep_for(50ms);
  }
  return j;
}

/// An oracle with its HTTP API on a free port, keys in `dir`/keys, and
/// `nodes` healthy miner nodes.
struct api_pool {
  std::string dir;
  std::unique_ptr<child> oracle, miner;
  int port = 0;

  /// `miner_extra`: more arguments for the miner (--behaviour, say).
  api_pool(const std::string& d, int nodes, std::vector<std::string> extra = {},
           std::vector<std::string> miner_extra = {})
    : dir(d) {
    {
      std::ofstream k{dir + "/keys"};
      k << "# the test's keys\n" << client_key << " client\n" << admin_key
        << " admin\n";
    }
    std::vector<std::string> a{"--http", "127.0.0.1:0", "--api-keys", dir + "/keys"};
    a.insert(a.end(), extra.begin(), extra.end());
    oracle = std::make_unique<child>(oracle_args(dir + "/db", "0", a),
                                     dir + "/oracle.out");
    if (!oracle->wait_for_output("HTTP API on", 20s))
      return;
    port = http_port(oracle->output());
    if (nodes > 0) {
      auto target = "127.0.0.1:" + listening_port(oracle->output());
      std::vector<std::string> m{"miner", "--oracle", target, "--nodes",
                                 std::to_string(nodes)};
      m.insert(m.end(), miner_extra.begin(), miner_extra.end());
      miner = std::make_unique<child>(m, dir + "/miner.out");
    }
  }

  httplib::Client client(const std::string& key = client_key) const {
    httplib::Client c{"127.0.0.1", port};
    c.set_read_timeout(60, 0);
    c.set_bearer_token_auth(key.c_str());
    return c;
  }

  /// Polls /api/v1/status until `n` nodes are in the pool (30 s at most);
  /// returns the last status.
  json wait_nodes(int n) {
    return wait_status(
      [n](const json& j) { return j["nodes"]["by_state"]["ephemeral"] == n; }, 30s);
  }

  /// Polls /api/v1/status until `ok`, for up to `limit`.
  json wait_status(const std::function<bool(const json&)>& ok,
                   std::chrono::seconds limit) {
    auto c = client();
    return poll_status(c, ok, limit);
  }
};

} // namespace nodepool::testing
