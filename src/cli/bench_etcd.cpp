// The etcd section of `nodepool bench`: the reservation table people would
// build on etcd instead of a replicated pool. Three etcd members (Debian's
// etcd-server) on loopback, each with a data directory of its own (etcd
// fsyncs its log before it answers), timed like our cluster (heartbeat
// 50 ms, election timeout 400 ms), and the cycle of the durable section as
// transactions through etcd's JSON gateway (POST /v3/kv/txn):
//   reserve     compare node/<id> == "free", then put it "reserved:<sid>"
//               and put session/<sid> "active";
//   release     compare node/<id> == "reserved:<sid>", then put it
//               "revalidating" and session/<sid> "completed";
//   revalidated compare node/<id> == "revalidating", then put it "free".
// The same number of clients as the durable section, each on a keep-alive
// connection to one member (spread over the three), in a closed loop. Then
// etcd's failover, measured as ours: its leader killed (SIGKILL) under that
// load, the time until a reservation succeeds again, `failover_kills` times.
#include <atomic>
#include <csignal>
#include <memory>
#include <random>
#include <thread>

#include <httplib.h>
#include <openssl/evp.h>

#include "cli/bench_common.hpp"
#include "cluster_config.hpp"

namespace nodepool::cli::bench {

namespace {

using namespace std::chrono_literals;

std::string b64(const std::string& s) {
  std::string out(4 * ((s.size() + 2) / 3), '\0');
  auto n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                           reinterpret_cast<const unsigned char*>(s.data()),
                           static_cast<int>(s.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

nlohmann::json put(const std::string& key, const std::string& value) {
  return {{"request_put", {{"key", b64(key)}, {"value", b64(value)}}}};
}

/// A transaction: if `key` holds `expect`, do `puts`. Whether it did.
nlohmann::json txn(const std::string& key, const std::string& expect,
                   nlohmann::json puts) {
  return {{"compare", nlohmann::json::array({{{"key", b64(key)},
                                              {"target", "VALUE"},
                                              {"result", "EQUAL"},
                                              {"value", b64(expect)}}})},
          {"success", std::move(puts)}};
}

/// One etcd member: its ports and process.
struct member {
  std::string name, dir;
  uint16_t client = 0, peer = 0;
  std::unique_ptr<child_process> proc;  // none: not running
  std::string url() const { return "http://127.0.0.1:" + std::to_string(client); }
};

class etcd_cluster {
public:
  explicit etcd_cluster(std::string bin) : bin_(std::move(bin)), root_("etcd") {
    for (int i = 0; i < 3; ++i) {
      member m;
      m.name = "m" + std::to_string(i + 1);
      m.dir = root_.path + "/" + m.name;
      m.client = free_loopback_port();
      m.peer = free_loopback_port();
      members_.push_back(std::move(m));
    }
    for (auto& m : members_)
      initial_ += (initial_.empty() ? "" : ",") + m.name + "=http://127.0.0.1:"
                  + std::to_string(m.peer);
    try {
      for (size_t i = 0; i < members_.size(); ++i)
        start(i, "new");
      for (size_t i = 0; i < members_.size(); ++i)
        wait_healthy(i);
    } catch (...) {
      stop_all();  // no destructor runs for a half-built cluster (Ctrl-C)
      throw;
    }
  }
  etcd_cluster(const etcd_cluster&) = delete;
  etcd_cluster& operator=(const etcd_cluster&) = delete;

  ~etcd_cluster() { stop_all(); }

  /// Every member asked to stop at once, then each waited for.
  void stop_all() {
    std::vector<child_process*> procs;
    for (auto& m : members_)
      procs.push_back(m.proc.get());
    end_children(procs, 10s);
    for (auto& m : members_)
      m.proc.reset();
  }

  const std::vector<member>& members() const { return members_; }

  void start(size_t i, const std::string& state) {
    auto& m = members_[i];
    auto peer = "http://127.0.0.1:" + std::to_string(m.peer);
    m.proc = std::make_unique<child_process>(
      std::vector<std::string>{
        "--name", m.name, "--data-dir", m.dir, "--listen-client-urls", m.url(),
        "--advertise-client-urls", m.url(), "--listen-peer-urls", peer,
        "--initial-advertise-peer-urls", peer, "--initial-cluster", initial_,
        "--initial-cluster-state", state, "--initial-cluster-token",
        "nodepool-bench", "--heartbeat-interval", "50", "--election-timeout",
        "400", "--log-level", "error"},
      root_.path + "/" + m.name + ".log", bench_child(bin_));
  }

  void wait_healthy(size_t i) {
    auto t0 = clock::now();
    httplib::Client c{members_[i].url()};
    c.set_connection_timeout(1, 0);
    c.set_read_timeout(2, 0);
    for (;;) {
      check_stop();
      auto r = c.Get("/health");
      if (r && r->status == 200 && r->body.find("\"true\"") != std::string::npos)
        return;
      if (!members_[i].proc->running()) {
        members_[i].proc.reset();
        throw std::runtime_error("etcd member " + members_[i].name
                                 + " exited at start (see " + root_.path + "/"
                                 + members_[i].name + ".log)");
      }
      if (seconds_since(t0) > 30)
        throw std::runtime_error("etcd member " + members_[i].name
                                 + " not healthy within 30 s");
      std::this_thread::sleep_for(20ms);
    }
  }

  /// Index of the member that leads, or -1.
  int leader() {
    for (size_t i = 0; i < members_.size(); ++i) {
      if (!members_[i].proc)
        continue;
      httplib::Client c{members_[i].url()};
      c.set_connection_timeout(0, 300000);
      c.set_read_timeout(1, 0);
      auto r = c.Post("/v3/maintenance/status", "{}", "application/json");
      if (!r || r->status != 200)
        continue;
      auto j = nlohmann::json::parse(r->body, nullptr, false);
      if (j.is_discarded() || !j.contains("leader") || !j.contains("header"))
        continue;
      if (j["leader"] == j["header"].value("member_id", nlohmann::json()))
        return static_cast<int>(i);
    }
    return -1;
  }

  void kill9(size_t i) {
    members_[i].proc->signal(SIGKILL);
    members_[i].proc->wait(std::chrono::seconds(10));
    members_[i].proc.reset();
  }

private:
  std::string bin_;
  temp_tree root_;
  std::vector<member> members_;
  std::string initial_;
};

/// The clients: `n` threads in a closed loop of reserve, release and
/// revalidated, each starting on member t % 3 and moving to the next one
/// when its member does not answer.
class load {
public:
  load(const etcd_cluster& c, uint32_t clients, uint32_t nodes)
    : urls_(), nodes_(nodes) {
    for (auto& m : c.members())
      urls_.push_back(m.url());
    for (uint32_t t = 0; t < clients; ++t)
      threads_.emplace_back([this, t] { run(t); });
  }
  ~load() { stop(); }

  void stop() {
    stop_ = true;
    for (auto& th : threads_)
      if (th.joinable())
        th.join();
  }

  uint64_t cycles() const { return cycles_; }
  uint64_t conflicts() const { return conflicts_; }
  std::string error() const {
    std::lock_guard<std::mutex> lock{m_};
    return error_;
  }

private:
  void run(uint32_t t) {
    size_t at = t % urls_.size();
    auto client = [&] {
      auto c = std::make_unique<httplib::Client>(urls_[at]);
      c->set_keep_alive(true);
      c->set_connection_timeout(0, 300000);
      c->set_read_timeout(2, 0);
      c->set_write_timeout(2, 0);
      return c;
    };
    auto c = client();
    std::mt19937_64 rng{t + 1};
    uint64_t k = 0;
    // One transaction; false when the comparison failed. A member that
    // does not answer (killed, or no leader yet) sends the client on; then
    // `retried` is set: the unanswered attempt may have committed.
    bool retried = false;
    auto call = [&](const nlohmann::json& body) -> bool {
      retried = false;
      for (;;) {
        if (stop_)
          throw std::runtime_error("stopped");
        auto r = c->Post("/v3/kv/txn", body.dump(), "application/json");
        if (r && r->status == 200) {
          auto j = nlohmann::json::parse(r->body, nullptr, false);
          if (j.is_discarded())
            throw std::runtime_error("etcd answered something that is not JSON");
          return j.value("succeeded", false);
        }
        retried = true;
        at = (at + 1) % urls_.size();
        c = client();
        std::this_thread::sleep_for(5ms);
      }
    };
    try {
      while (!stop_) {
        auto sid = "c" + std::to_string(t) + "-" + std::to_string(k++);
        std::string node;
        for (;;) {
          char id[32];
          std::snprintf(id, sizeof id, "node/n-%06u",
                        static_cast<unsigned>(rng() % nodes_));
          node = id;
          if (call(txn(node, "free",
                       {put(node, "reserved:" + sid), put("session/" + sid, "active")})))
            break;
          // An attempt whose answer was lost may have been ours: the
          // session's key says.
          if (retried && call(txn("session/" + sid, "active", nlohmann::json::array())))
            break;
          ++conflicts_;  // taken by another client: try another node
        }
        if (!call(txn(node, "reserved:" + sid,
                      {put(node, "revalidating"), put("session/" + sid, "completed")}))
            && !(retried && call(txn("session/" + sid, "completed", nlohmann::json::array()))))
          throw std::runtime_error("etcd: " + node + " was not reserved by " + sid);
        // Only this client moves its node out of revalidating: after a lost
        // answer, a failed comparison means the first attempt committed.
        if (!call(txn(node, "revalidating", {put(node, "free")})) && !retried)
          throw std::runtime_error("etcd: " + node + " was not revalidating");
        ++cycles_;
      }
    } catch (const std::exception& e) {
      if (!stop_) {
        std::lock_guard<std::mutex> lock{m_};
        error_ = e.what();
      }
    }
  }

  std::vector<std::string> urls_;
  uint32_t nodes_;
  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> cycles_{0}, conflicts_{0};
  mutable std::mutex m_;
  std::string error_;
};

/// After the leader `dead` was killed: fresh reservations (of a node kept
/// for the probe) sent every few milliseconds to the other members, each
/// with a short timeout, until one commits. Milliseconds from `t0` to that
/// commit's answer, or -1 after 30 s. Requests in flight at the kill are
/// the clients'; they wait for etcd's own request timeout and are not what
/// this measures.
double first_reservation_after(const etcd_cluster& c, size_t dead,
                               clock::time_point t0, const std::string& node) {
  uint64_t k = 0;
  while (seconds_since(t0) < 30) {
    check_stop();
    for (size_t i = 0; i < c.members().size(); ++i) {
      if (i == dead)
        continue;
      httplib::Client h{c.members()[i].url()};
      h.set_connection_timeout(0, 100000);
      h.set_read_timeout(0, 150000);
      auto sid = "probe-" + std::to_string(k++);
      // Reserve the probe's node, then free it: a reservation committed.
      auto r = h.Post("/v3/kv/txn",
                      txn(node, "free", {put(node, "reserved:" + sid),
                                         put("session/" + sid, "active")})
                        .dump(),
                      "application/json");
      if (r && r->status == 200
          && nlohmann::json::parse(r->body, nullptr, false).value("succeeded", false)) {
        double ms = seconds_since(t0) * 1000;
        h.set_read_timeout(5, 0);
        h.Post("/v3/kv/txn", nlohmann::json{{"success", {put(node, "free")}}}.dump(),
               "application/json");
        return ms;
      }
    }
    std::this_thread::sleep_for(5ms);
  }
  return -1;
}

} // namespace

nlohmann::json etcd(options& o) {
  auto bin = find_or_install("etcd", "etcd-server", "etcd");
  etcd_cluster cluster{bin};
  {
    // The pool: every node free, in transactions of 100 puts.
    httplib::Client c{cluster.members()[0].url()};
    c.set_read_timeout(10, 0);
    auto r = c.Post("/v3/kv/txn",
                    nlohmann::json{{"success", {put("node/probe", "free")}}}.dump(),
                    "application/json");
    if (!r || r->status != 200)
      throw std::runtime_error("etcd: cannot load the pool");
    for (uint32_t i = 0; i < o.nodes; i += 100) {
      nlohmann::json puts = nlohmann::json::array();
      for (uint32_t k = i; k < std::min(o.nodes, i + 100); ++k) {
        char id[32];
        std::snprintf(id, sizeof id, "node/n-%06u", k);
        puts.push_back(put(id, "free"));
      }
      auto r = c.Post("/v3/kv/txn", nlohmann::json{{"success", puts}}.dump(),
                      "application/json");
      if (!r || r->status != 200)
        throw std::runtime_error("etcd: cannot load the pool");
    }
  }
  load clients{cluster, o.clients, o.nodes};
  auto fail_on_error = [&] {
    if (auto e = clients.error(); !e.empty())
      throw std::runtime_error(e);
  };
  nlohmann::json j;
  sleep_unless_stopped(o.warmup);
  auto xs = repeat(o.reps, [&](int) {
    auto c0 = clients.cycles();
    auto t0 = clock::now();
    sleep_unless_stopped(o.seconds);
    fail_on_error();
    return (clients.cycles() - c0) / seconds_since(t0);
  });
  j["cycles_per_s"] = median(xs);
  j["cycles_per_s_reps"] = xs;
  note("etcd: %.0f cycles/s", median(xs));
  // Failover: kill the leader under load; time until a reservation
  // succeeds again; the member comes back before the next kill.
  std::vector<double> grant_ms;
  unsigned missed = 0;
  for (unsigned k = 0; k < o.failover_kills; ++k) {
    sleep_unless_stopped(1);  // a second of load under this leader
    int l = -1;
    for (int tries = 0; tries < 300 && l < 0; ++tries) {
      l = cluster.leader();
      if (l < 0)
        std::this_thread::sleep_for(20ms);
    }
    if (l < 0)
      throw std::runtime_error("etcd: no leader before kill " + std::to_string(k + 1));
    auto t_kill = clock::now();
    cluster.kill9(static_cast<size_t>(l));
    auto ms = first_reservation_after(cluster, static_cast<size_t>(l), t_kill,
                                      "node/probe");
    fail_on_error();
    if (ms >= 0)
      grant_ms.push_back(ms);
    else
      ++missed;
    note("etcd failover: kill %u of %u (member %d): first reservation after %.0f ms",
         k + 1, o.failover_kills, l + 1, grant_ms.empty() ? -1.0 : grant_ms.back());
    cluster.start(static_cast<size_t>(l), "existing");
    cluster.wait_healthy(static_cast<size_t>(l));
  }
  clients.stop();
  fail_on_error();
  std::sort(grant_ms.begin(), grant_ms.end());
  j["failover"]["kills"] = o.failover_kills;
  j["failover"]["election_timeout_ms"] = 400;
  j["failover"]["no_reservation_within_30s"] = missed;
  j["failover"]["kill_to_first_reservation_ms"] = grant_ms;
  if (!grant_ms.empty()) {
    j["failover"]["median_ms"] = quantile(grant_ms, 0.5);
    j["failover"]["p90_ms"] = quantile(grant_ms, 0.9);
    j["failover"]["max_ms"] = grant_ms.back();
  }
  j["conflicts"] = clients.conflicts();
  j["clients"] = o.clients;
  j["nodes"] = o.nodes;
  j["members"] = 3;
  j["server"] = bin;
  return j;
}

} // namespace nodepool::cli::bench
