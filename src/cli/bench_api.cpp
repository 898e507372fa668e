// `nodepool bench --only api`: completions through the HTTP API against
// simulated miners, with many concurrent keep-alive connections, beside the
// same completions asked of the oracle's actors in-process.
#include <malloc.h>

#include <atomic>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <caf/all.hpp>

#include "actors/config.hpp"
#include "actors/node.hpp"
#include "actors/oracle.hpp"
#include "actors/wire.hpp"
#include "cli/bench_common.hpp"
#include "cli/common.hpp"
#include "storage.hpp"

namespace nodepool::cli::bench {

namespace {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;

/// What one measuring run saw.
struct tally {
  std::mutex mu;
  std::vector<double> latency_ms;  // of the answers with status 200
  std::map<int, uint64_t> by_status;
  uint64_t sent = 0;
  uint64_t answered = 0;
  uint64_t transport_errors = 0;
};

/// One keep-alive connection that asks completions of its own session, one
/// after the other, until `stop`.
class http_client : public std::enable_shared_from_this<http_client> {
 public:
  http_client(net::io_context& io, tcp::endpoint ep, std::string sid,
              tally& t, std::atomic<bool>& stop)
    : sock_(io), ep_(ep), sid_(std::move(sid)), t_(t), stop_(stop) {}

  void start() {
    auto self = shared_from_this();
    sock_.async_connect(ep_, [self](beast::error_code ec) {
      if (ec) {
        std::lock_guard<std::mutex> g{self->t_.mu};
        ++self->t_.transport_errors;
        return;
      }
      self->ask();
    });
  }

 private:
  void ask() {
    if (stop_)
      return;
    req_ = {};
    req_.method(bhttp::verb::post);
    req_.target("/api/v1/completions/" + sid_);
    req_.version(11);
    req_.set(bhttp::field::host, "127.0.0.1");
    req_.set(bhttp::field::content_type, "application/json");
    req_.keep_alive(true);
    req_.body() = R"({"prompt":"How many nodes agree? )" + std::to_string(n_++)
                  + R"(","timeout":30})";
    req_.prepare_payload();
    started_ = clock::now();
    {
      std::lock_guard<std::mutex> g{t_.mu};
      ++t_.sent;
    }
    auto self = shared_from_this();
    bhttp::async_write(sock_, req_, [self](beast::error_code ec, size_t) {
      if (ec)
        return self->failed();
      self->res_ = {};
      bhttp::async_read(self->sock_, self->buf_, self->res_,
                        [self](beast::error_code ec, size_t) {
                          if (ec)
                            return self->failed();
                          self->answered();
                        });
    });
  }

  void answered() {
    double ms = std::chrono::duration<double, std::milli>(clock::now() - started_)
                  .count();
    {
      std::lock_guard<std::mutex> g{t_.mu};
      ++t_.answered;
      ++t_.by_status[res_.result_int()];
      if (res_.result_int() == 200)
        t_.latency_ms.push_back(ms);
    }
    ask();
  }

  void failed() {
    std::lock_guard<std::mutex> g{t_.mu};
    ++t_.transport_errors;
  }

  tcp::socket sock_;
  tcp::endpoint ep_;
  std::string sid_;
  tally& t_;
  std::atomic<bool>& stop_;
  beast::flat_buffer buf_;
  bhttp::request<bhttp::string_body> req_;
  bhttp::response<bhttp::string_body> res_;
  clock::time_point started_;
  uint64_t n_ = 0;
};

/// A POST answered in full (setup: sessions), on a connection of its own.
int post_once(tcp::endpoint ep, const std::string& target, const std::string& body) {
  net::io_context io;
  tcp::socket s{io};
  s.connect(ep);
  bhttp::request<bhttp::string_body> q{bhttp::verb::post, target, 11};
  q.set(bhttp::field::host, "127.0.0.1");
  q.body() = body;
  q.prepare_payload();
  bhttp::write(s, q);
  beast::flat_buffer b;
  bhttp::response<bhttp::string_body> r;
  bhttp::read(s, b, r);
  return r.result_int();
}

nlohmann::json summary(tally& t, double seconds, uint64_t rss_before,
                       uint64_t rss_after, const store& db) {
  std::lock_guard<std::mutex> g{t.mu};
  nlohmann::json j;
  j["requests_per_s"] = static_cast<double>(t.latency_ms.size()) / seconds;
  j["p50_ms"] = quantile(t.latency_ms, 0.5);
  j["p90_ms"] = quantile(t.latency_ms, 0.9);
  j["p99_ms"] = quantile(t.latency_ms, 0.99);
  j["max_ms"] = quantile(t.latency_ms, 1.0);
  j["sent"] = t.sent;
  j["answered"] = t.answered;
  j["ok"] = t.latency_ms.size();
  nlohmann::json st = nlohmann::json::object();
  for (auto& [k, v] : t.by_status)
    st[std::to_string(k)] = v;
  j["by_status"] = st;
  j["transport_errors"] = t.transport_errors;
  // Every request sent got its answer once the clients stopped asking.
  j["unanswered"] = t.sent - t.answered - t.transport_errors;
  j["rss_mb_before"] = static_cast<double>(rss_before) / (1 << 20);
  j["rss_mb_after"] = static_cast<double>(rss_after) / (1 << 20);
  // What the process holds, rather than what the allocator kept of the
  // burst (many threads allocate here: CAF's, the HTTP server's, RocksDB's).
  malloc_trim(0);
  j["rss_mb_after_trim"] = static_cast<double>(rss_bytes()) / (1 << 20);
  // Of it, RocksDB's memtables, table readers and block cache (bounded by
  // its write buffers: the log is on disk).
  j["store_mb_after"] = static_cast<double>(db.memory_bytes()) / (1 << 20);
  return j;
}

} // namespace

nlohmann::json api(const options& o) {
  const uint32_t conns = o.quick ? 50 : o.api_connections;
  const double seconds = o.quick ? 2.0 : o.api_seconds;
  const uint32_t nodes = std::max<uint32_t>(conns + conns / 2, 64);
  temp_tree dir{"api"};
  auto storage = open_store(dir.path);
  actor_config cfg;
  caf::actor_system sys{cfg};
  params p = o.pool;
  p.heartbeat_interval_ms = 1000;
  p.heartbeat_timeout_ms = 10000;
  supervisor_config sc;
  sc.pool = p;
  sc.storage = storage;
  auto h = start_oracle(sys, sc);
  std::vector<caf::actor> miners;
  for (uint32_t i = 0; i < nodes; ++i) {
    node_config nc;
    nc.id = "bench-" + std::to_string(i);
    nc.kind = behaviour::healthy;
    nc.seed = i + 1;
    miners.push_back(spawn_node(sys, nc, h.gateway));
  }
  http_options ho;
  ho.listen = "127.0.0.1:0";
  auto srv = start_http_api(ho, sys, h, "bench", {});
  std::shared_ptr<void> stop_all{nullptr, [&](void*) {
    if (srv.server)
      srv.server->stop();
    caf::scoped_actor self{sys};
    for (auto& m : miners)
      self->send_exit(m, caf::exit_reason::user_shutdown);
    stop_oracle(h);
    self->wait_for(h.supervisor);
  }};
  if (!srv.server)
    throw std::runtime_error("bench api: the HTTP API did not start");
  tcp::endpoint ep{net::ip::make_address("127.0.0.1"), srv.server->port()};

  // Wait until the nodes are in the pool.
  caf::scoped_actor self{sys};
  for (int k = 0; k < 600; ++k) {
    check_stop();
    pb::Snapshot snap;
    bool ok = false;
    self->request(h.supervisor, std::chrono::seconds(10), state_atom::value)
      .receive([&](const std::string& b) { ok = snap.ParseFromString(b); },
               [&](caf::error&) {});
    uint32_t settled = 0;  // through their admission test, either way
    for (auto& n : snap.nodes())
      settled += n.state() != pb::REGISTERED && n.state() != pb::TESTING;
    if (ok && settled >= nodes)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }

  // One interactive session per connection (redundancy 1; the nodes are
  // released every tasks_before_release tasks and revalidated, as usual).
  auto open_sessions = [&](const std::string& prefix) {
    std::vector<std::string> ids;
    for (uint32_t i = 0; i < conns; ++i) {
      ids.push_back(prefix + std::to_string(i));
      auto st = post_once(ep, "/api/v1/sessions",
                          R"({"session_id":")" + ids.back()
                            + R"(","redundancy":1,"min_nodes":1,"max_nodes":1,"max_tasks":100000})");
      if (st != 201)
        throw std::runtime_error("bench api: a session was refused (" +
                                 std::to_string(st) + ")");
    }
    return ids;
  };

  // Ends a run's sessions, so the next run finds the same pool.
  auto end_sessions = [&](const std::vector<std::string>& ids) {
    for (auto& id : ids)
      post_once(ep, "/api/v1/admin/sessions/" + id + "/end", "");
  };

  nlohmann::json out;
  out["connections"] = conns;
  out["nodes"] = nodes;
  out["seconds"] = seconds;

  // 1. Over HTTP: `conns` keep-alive connections on one client thread.
  {
    note("api: %u connections over HTTP for %.0f s", conns, seconds);
    auto ids = open_sessions("http-");
    tally t;
    std::atomic<bool> stop{false};
    net::io_context io;
    for (auto& id : ids)
      std::make_shared<http_client>(io, ep, id, t, stop)->start();
    auto rss0 = rss_bytes();
    std::thread client{[&] { io.run(); }};
    auto t0 = clock::now();
    while (seconds_since(t0) < seconds && !stop_requested)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    stop = true;
    auto measured = seconds_since(t0);
    // The requests in flight are answered; then the client thread ends.
    client.join();
    out["http"] = summary(t, measured, rss0, rss_bytes(), *storage);
    end_sessions(ids);
    check_stop();
  }

  // 2. In-process: the same prompts as messages to the gateway, `conns`
  // at a time, each waiting for its answer before the next.
  {
    note("api: %u clients in-process for %.0f s", conns, seconds);
    auto ids = open_sessions("local-");
    tally t;
    std::atomic<bool> stop{false};
    std::atomic<uint32_t> done_clients{0};
    std::mutex errors_mu;
    std::map<std::string, uint64_t> errors;  // refusal code -> count
    auto gw = h.gateway;
    for (auto& id : ids) {
      sys.spawn([&, id, gw](caf::event_based_actor* me) {
        auto n = std::make_shared<uint64_t>(0);
        auto ask = std::make_shared<std::function<void()>>();
        // Itself only weakly: a request in flight keeps it (strongly).
        std::weak_ptr<std::function<void()>> weak = ask;
        *ask = [&, me, id, gw, n, weak] {
          auto ask = weak.lock();
          if (stop) {
            ++done_clients;
            me->quit();
            return;
          }
          pb::PromptRequest r;
          r.set_session_id(id);
          r.set_prompt("How many nodes agree? " + std::to_string((*n)++));
          r.set_timeout_ms(30000);
          auto t0 = clock::now();
          {
            std::lock_guard<std::mutex> g{t.mu};
            ++t.sent;
          }
          // No timeout, as the HTTP path's own local requests: the session
          // answers by its deadline (a timeout would be a message pending
          // per request).
          me->request(gw, caf::infinite, prompt_atom::value,
                      r.SerializeAsString())
            .then(
              [&, t0, ask](const std::string&) {
                {
                  std::lock_guard<std::mutex> g{t.mu};
                  ++t.answered;
                  ++t.by_status[200];
                  t.latency_ms.push_back(
                    std::chrono::duration<double, std::milli>(clock::now() - t0)
                      .count());
                }
                (*ask)();
              },
              [&, ask](caf::error& e) {
                {
                  std::lock_guard<std::mutex> g{t.mu};
                  ++t.answered;
                  ++t.by_status[500];
                }
                {
                  std::lock_guard<std::mutex> g{errors_mu};
                  ++errors[read_refusal(sys, e).first];
                }
                (*ask)();
              });
        };
        (*ask)();
      });
    }
    auto rss0 = rss_bytes();
    auto t0 = clock::now();
    while (seconds_since(t0) < seconds && !stop_requested)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    stop = true;
    auto measured = seconds_since(t0);
    while (done_clients < conns)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    out["in_process"] = summary(t, measured, rss0, rss_bytes(), *storage);
    end_sessions(ids);
    {
      std::lock_guard<std::mutex> g{errors_mu};
      out["in_process"]["refusals"] = errors;
    }
    check_stop();
  }
  auto http_rps = out["http"]["requests_per_s"].get<double>();
  auto local_rps = out["in_process"]["requests_per_s"].get<double>();
  out["http_to_in_process"] = local_rps > 0 ? http_rps / local_rps : 0.0;
  return out;
}

} // namespace nodepool::cli::bench
