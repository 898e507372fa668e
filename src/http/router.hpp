#pragma once

// The oracle's HTTP API: router v1 (/api/v1/...), an OpenAI-compatible
// front (/v1/...), Bearer auth and JSON errors. It knows HTTP and JSON, not
// actors: what it needs of the pool comes through `pool_api`, whose answers
// may arrive on any thread.

#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "http/api_keys.hpp"
#include "http/event_feed.hpp"
#include "http/server.hpp"
#include "nodepool.pb.h"

namespace nodepool::http {

/// A refusal from the pool: its machine-readable code and what it means.
struct api_error {
  std::string code;
  std::string message;
  /// not_leader on a cluster: the leader's HTTP API (host:port), if known.
  std::string leader_http = {};
};

/// The HTTP status for a refusal code of the pool (404 for an unknown
/// session, 503 while no leader is known, ...).
int status_for(const std::string& code);

/// The pool's counts, as GET /api/v1/status shows them.
struct pool_counts {
  std::map<pb::NodeState, uint64_t> nodes;  // by state
  uint64_t queued = 0, active = 0, completed = 0, failed = 0, accepted = 0;
  uint64_t tests_passed = 0, tests_failed = 0;
  /// Tests sent and not finished, and tests waiting to be sent
  /// (max_tests_in_flight).
  uint64_t tests_in_flight = 0, tests_waiting = 0;
  /// Sessions this oracle's supervisor granted nodes to, and the sum of
  /// their waits (submission to reservation, ms): a mean over any interval
  /// is the difference of two reads.
  uint64_t grants = 0;
  double grant_latency_ms_sum = 0;
  /// From a whole snapshot (what a pool without cheaper counts gives).
  static pool_counts of(const pb::Snapshot& s);
};

/// What the API needs of the pool. Every callback is called exactly once.
class pool_api {
 public:
  virtual ~pool_api() = default;
  /// The pool as this oracle holds it (on a cluster: what committed here),
  /// and this oracle's view of the cluster as JSON (role, term, leader,
  /// applied_index; a single oracle says role "single").
  using state_cb = std::function<void(std::optional<pb::Snapshot>,
                                      nlohmann::json, std::optional<api_error>)>;
  virtual void state(state_cb cb) = 0;
  /// A page of the live state, or the models on offer (pb::StateQuery),
  /// and the view as state() gives it: what the lists ask, so that a list
  /// costs the pool what it shows. The default pages a whole state().
  using page_cb = std::function<void(std::optional<pb::StatePage>,
                                     nlohmann::json, std::optional<api_error>)>;
  virtual void read(const pb::StateQuery& q, page_cb cb);
  /// This oracle's view of the cluster alone (state()'s second part).
  using view_cb = std::function<void(nlohmann::json, std::optional<api_error>)>;
  virtual void view(view_cb cb) {
    state([cb](std::optional<pb::Snapshot>, nlohmann::json v,
               std::optional<api_error> err) { cb(std::move(v), err); });
  }
  /// The counts alone (and the view, as state() gives it). The default
  /// derives them from state(); an oracle answers from counters it keeps,
  /// without copying every record.
  using counts_cb = std::function<void(pool_counts, nlohmann::json,
                                       std::optional<api_error>)>;
  virtual void counts(counts_cb cb) {
    state([cb](std::optional<pb::Snapshot> s, nlohmann::json view,
               std::optional<api_error> err) {
      if (err)
        return cb({}, std::move(view), err);
      cb(pool_counts::of(*s), std::move(view), std::nullopt);
    });
  }
  /// What GET /metrics shows of the pool, as JSON:
  ///   {"supervisor": {"committed": {counts as the supervisor's stats},
  ///                   "refusals": {code: n}, "reservations": n,
  ///                   "releases": n, "histograms": {name: histogram JSON}},
  ///    "gateway": {"refused": {code: n}, "connected": n, ...},
  ///    "cluster": the view state() gives}
  /// Any part may be missing. The default has the counts alone.
  using json_cb = std::function<void(nlohmann::json, std::optional<api_error>)>;
  virtual void metrics(json_cb cb) {
    counts([cb](pool_counts n, nlohmann::json view,
                std::optional<api_error> err) {
      if (err)
        return cb({}, err);
      nlohmann::json c;
      nlohmann::json nodes = nlohmann::json::object();
      for (auto& [k, v] : n.nodes)
        nodes[std::to_string(static_cast<int>(k))] = v;
      c["nodes"] = nodes;
      c["queued"] = n.queued;
      c["active"] = n.active;
      c["completed"] = n.completed;
      c["failed"] = n.failed;
      c["accepted"] = n.accepted;
      c["tests_passed"] = n.tests_passed;
      c["tests_failed"] = n.tests_failed;
      c["tests_in_flight"] = n.tests_in_flight;
      c["tests_waiting"] = n.tests_waiting;
      nlohmann::json j;
      j["supervisor"]["committed"] = std::move(c);
      j["cluster"] = std::move(view);
      cb(std::move(j), std::nullopt);
    });
  }
  using archive_cb = std::function<void(pb::ArchiveAnswer, std::optional<api_error>)>;
  virtual void archive(const pb::ArchiveQuery& q, archive_cb cb) = 0;
  /// The same, asked where writes go (on a cluster, the leader): what a
  /// client just wrote through any member is there.
  virtual void archive_for_write(const pb::ArchiveQuery& q, archive_cb cb) {
    archive(q, std::move(cb));
  }
  /// Answers once the session is durable (accepted), or with the refusal.
  using done_cb = std::function<void(std::optional<api_error>)>;
  virtual void submit(const pb::SubmitSession& s, done_cb cb) = 0;
  using prompt_cb = std::function<void(pb::PromptAnswer, std::optional<api_error>)>;
  virtual void prompt(const pb::PromptRequest& p, prompt_cb cb) = 0;
  /// An operator's command (AdminNode, EndSession): answered once durable.
  virtual void command(const pb::Command& c, done_cb cb) = 0;
  /// A snapshot now; answers the log index it covers.
  using index_cb = std::function<void(uint64_t, std::optional<api_error>)>;
  virtual void snapshot(index_cb cb) = 0;
  /// When each of these nodes was last heard from by the leader's gateway
  /// (only it has the nodes): {node id: ms since the epoch}, for those it
  /// heard from. The default knows nothing.
  virtual void last_seen(const std::vector<std::string>& ids, json_cb cb) {
    (void)ids;
    cb(nlohmann::json::object(), std::nullopt);
  }
  /// Hands leadership to member `to` (0: the most up-to-date voter);
  /// answers {leader_id, term} once the transfer ended.
  virtual void transfer(uint64_t to, json_cb cb) {
    (void)to;
    cb({}, api_error{"not_supported", "this pool cannot transfer leadership"});
  }
  /// Changes a cluster's membership: `op` "add" (member `id` at `address`,
  /// "RAFT;CLIENT;HTTP") or "remove"; answers {members[]} once done.
  virtual void change_member(const std::string& op, uint64_t id,
                             const std::string& address, json_cb cb) {
    (void)op;
    (void)id;
    (void)address;
    cb({}, api_error{"not_supported", "this pool has no members to change"});
  }
};

struct router_config {
  std::string version = "0.1.0";
  std::string oracle_id = "oracle";
  std::string scheme = "http";  // of this API (and so of the leader's)
  /// Keys; empty: every request is admitted with the admin role (the
  /// server then listens on loopback only).
  api_keys keys;
  double rate_per_key = 0;   // requests per second per key; 0: no limit
  double rate_burst = 50;
  /// Defaults of sessions the OpenAI front opens for one request.
  uint32_t ephemeral_redundancy = 0;  // 0: the pool's default
  int64_t default_timeout_ms = 60000;  // a completion without `timeout`
  int64_t max_timeout_ms = 600000;
  /// Answers kept per oracle for GET /api/v1/tasks: the most recent ones
  /// of the sessions it answered for last (bounded memory, not replicated).
  size_t tasks_kept_sessions = 1000;
  size_t tasks_kept_per_session = 16;
  /// The pool's events for GET /api/v1/events (and the dashboard); null:
  /// that route answers 404.
  std::shared_ptr<event_feed> events;
  /// What the server in front counts (shown by GET /metrics); null: not
  /// shown.
  std::shared_ptr<const server_counters> server;
};

/// The route a path is counted under in /metrics: its template
/// ("/api/v1/sessions/{id}"), "/dashboard" for the dashboard's files, or
/// "other" (so the label's values stay few, whatever clients send).
std::string route_label(const std::string& path);

class router {
 public:
  router(router_config cfg, std::shared_ptr<pool_api> pool);
  /// The server's handler.
  void handle(request req, std::shared_ptr<reply> rep);

  /// Counters (for tests and, later, metrics).
  struct counters {
    uint64_t requests = 0;
    uint64_t unauthorized = 0;
    uint64_t forbidden = 0;
    uint64_t rate_limited = 0;
    uint64_t completions = 0;
    uint64_t admin = 0;
  };
  counters stats() const;
  /// Answers sent, by (route label, HTTP status).
  std::map<std::pair<std::string, int>, uint64_t> responses() const;

 private:
  struct call;
  void route(const std::shared_ptr<call>& c);
  void get_info(const std::shared_ptr<call>& c);
  void get_status(const std::shared_ptr<call>& c);
  void get_miners(const std::shared_ptr<call>& c);
  static void send_miners(const std::shared_ptr<call>& c, const pb::StatePage& s,
                          const nlohmann::json& view, const nlohmann::json& seen,
                          const std::optional<api_error>& seen_err);
  void get_sessions(const std::shared_ptr<call>& c);
  void get_session(const std::shared_ptr<call>& c, const std::string& id);
  void get_tasks(const std::shared_ptr<call>& c, const std::string& sid,
                 const std::string* task);
  void post_session(const std::shared_ptr<call>& c);
  void post_completion(const std::shared_ptr<call>& c, std::string sid);
  void get_models(const std::shared_ptr<call>& c);
  void get_members(const std::shared_ptr<call>& c);
  void get_events(const std::shared_ptr<call>& c);
  void get_metrics(const std::shared_ptr<call>& c);
  void post_openai(const std::shared_ptr<call>& c, bool chat);
  void websocket(const std::shared_ptr<call>& c);
  /// Sends a prompt to its session once the pool says the session exists
  /// and has not ended: a prompt for an unknown one is refused at once,
  /// instead of waiting its whole timeout in a place of the queue's.
  void prompt_known_session(const pb::PromptRequest& req, pool_api::prompt_cb cb);
  void admin(const std::shared_ptr<call>& c, const std::vector<std::string>& parts);
  void remember(const pb::PromptAnswer& a, const std::string& prompt);
  static std::string not_from_this_host(const request& q);

  router_config cfg_;
  std::shared_ptr<pool_api> pool_;
  rate_limiter limiter_;
  mutable std::mutex mu_;
  counters stats_;
  std::shared_ptr<std::mutex> responses_mu_ = std::make_shared<std::mutex>();
  std::shared_ptr<std::map<std::pair<std::string, int>, uint64_t>> responses_ =
    std::make_shared<std::map<std::pair<std::string, int>, uint64_t>>();
  // GET /api/v1/tasks: the answers this oracle gave, by session (bounded).
  std::map<std::string, std::vector<nlohmann::json>> tasks_;
  std::deque<std::string> tasks_order_;
};

/// Parses a JSON body; on failure fills `err` (400, naming the problem).
std::optional<nlohmann::json> parse_body(const std::string& body, api_error& err);

/// Checks the fields of a session request and builds the command; on a bad
/// field fills `err` naming it.
std::optional<pb::SubmitSession> session_from_json(const nlohmann::json& j,
                                                   api_error& err);

/// Reads prompt, max_tokens, temperature, top_p, timeout (seconds),
/// client_reference; on a bad field fills `err` naming it.
std::optional<pb::PromptRequest> prompt_from_json(const nlohmann::json& j,
                                                  int64_t default_timeout_ms,
                                                  int64_t max_timeout_ms,
                                                  api_error& err);

/// JSON of a session record (the field names the README documents).
nlohmann::json session_json(const pb::SessionRecord& s);

/// The Prometheus text (format 0.0.4) of what pool_api::metrics gave, with
/// the HTTP answers by route and status, and what the process says of
/// itself.
struct process_figures {
  size_t event_streams = 0;
  /// What the HTTP server counts (when it is known): connections it failed
  /// to accept, turned away past its most, and open; requests whose client
  /// left before the answer began.
  struct http_server {
    uint64_t accept_errors = 0, over_capacity = 0, abandoned = 0;
    int64_t open = 0;
  };
  std::optional<http_server> server;
  /// Connections closed at once for want of descriptors, and connections
  /// shut down because their peer said nothing (accept_guard.hpp).
  uint64_t connections_shed = 0;
  uint64_t connections_silent_closed = 0;
  /// Descriptors open, and the limit (0: not known).
  uint64_t open_fds = 0, max_fds = 0;
};
std::string prometheus_text(
  const nlohmann::json& pool,
  const std::map<std::pair<std::string, int>, uint64_t>& responses,
  const process_figures& figures);

} // namespace nodepool::http
