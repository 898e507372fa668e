// `nodepool ctl`: an operator's client of the oracle's HTTP API.
#ifndef CPPHTTPLIB_OPENSSL_SUPPORT
#define CPPHTTPLIB_OPENSSL_SUPPORT
#endif
#include <httplib.h>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "cli/common.hpp"

namespace nodepool::cli {

namespace {

using nlohmann::json;

struct ctl_options {
  std::string url;   // default $NODEPOOL_URL, else http://127.0.0.1:5010
  std::string key;   // default $NODEPOOL_KEY
  std::string ca;    // CA file to trust for https
  bool json_out = false;
  double timeout_s = 30;
};

/// What the API answered: the status and the JSON body.
struct answer {
  int status = 0;
  json body;
};

class api_client {
 public:
  explicit api_client(const ctl_options& o) : o_(o) {
    url_ = o.url;
    if (url_.empty())
      if (auto* e = std::getenv("NODEPOOL_URL"))
        url_ = e;
    if (url_.empty())
      url_ = "http://127.0.0.1:5010";
    while (!url_.empty() && url_.back() == '/')
      url_.pop_back();
    key_ = o.key;
    if (key_.empty())
      if (auto* e = std::getenv("NODEPOOL_KEY"))
        key_ = e;
    if (url_.rfind("http://", 0) != 0 && url_.rfind("https://", 0) != 0)
      throw std::runtime_error("--url must start with http:// or https:// (got '"
                               + url_ + "')");
  }

  answer get(const std::string& path) { return call("GET", path, ""); }
  answer post(const std::string& path, const std::string& body = "") {
    return call("POST", path, body);
  }

 private:
  answer call(const std::string& method, const std::string& path,
              const std::string& body) {
    httplib::Client c{url_};
    auto secs = static_cast<time_t>(o_.timeout_s);
    c.set_connection_timeout(secs, 0);
    c.set_read_timeout(secs, 0);
    if (!o_.ca.empty()) {
      c.set_ca_cert_path(o_.ca.c_str());
      c.enable_server_certificate_verification(true);
    }
    if (!key_.empty())
      c.set_bearer_token_auth(key_.c_str());
    // A cluster member that does not lead sends operators to the leader.
    c.set_follow_location(true);
    auto r = method == "GET" ? c.Get(path.c_str())
                             : c.Post(path.c_str(), body, "application/json");
    if (!r)
      throw std::runtime_error("cannot reach " + url_ + ": "
                               + httplib::to_string(r.error()));
    answer a;
    a.status = r->status;
    a.body = json::parse(r->body, nullptr, false);
    if (a.body.is_discarded())
      throw std::runtime_error(url_ + path + " answered " + std::to_string(r->status)
                               + " with a body that is not JSON");
    return a;
  }

  const ctl_options& o_;
  std::string url_, key_;
};

/// Prints rows as an aligned table (the first row is the header).
void table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (auto& r : rows)
    for (size_t i = 0; i < r.size(); ++i) {
      if (width.size() <= i)
        width.push_back(0);
      width[i] = std::max(width[i], r[i].size());
    }
  for (auto& r : rows) {
    std::string line;
    for (size_t i = 0; i < r.size(); ++i) {
      line += r[i];
      if (i + 1 < r.size())
        line += std::string(width[i] - r[i].size() + 2, ' ');
    }
    std::printf("%s\n", line.c_str());
  }
}

std::string text(const json& v) {
  if (v.is_string())
    return v.get<std::string>();
  if (v.is_null())
    return "-";
  if (v.is_number_float()) {
    char b[32];
    std::snprintf(b, sizeof b, "%.2f", v.get<double>());
    return b;
  }
  return v.dump();
}

/// Exits with a clear message when the API refused.
int check(const answer& a, bool json_out) {
  if (a.status >= 200 && a.status < 300)
    return 0;
  if (json_out)
    std::printf("%s\n", a.body.dump().c_str());
  auto code = a.body.contains("error") ? text(a.body["error"]["code"]) : "?";
  auto msg = a.body.contains("error") ? text(a.body["error"]["message"]) : a.body.dump();
  std::fprintf(stderr, "nodepool ctl: %d %s: %s\n", a.status, code.c_str(),
               msg.c_str());
  return a.status == 401 || a.status == 403 ? 3 : 1;
}

int show_status(api_client& c, bool json_out) {
  auto a = c.get("/api/v1/status");
  if (int rc = check(a, json_out))
    return rc;
  if (json_out)
    return std::printf("%s\n", a.body.dump().c_str()), 0;
  auto& j = a.body;
  std::vector<std::vector<std::string>> rows{{"NODES", "COUNT"}};
  for (auto& [k, v] : j["nodes"]["by_state"].items())
    rows.push_back({k, text(v)});
  table(rows);
  std::printf("\n");
  table({{"SESSIONS", "COUNT"},
         {"queued", text(j["sessions"]["queued"])},
         {"active", text(j["sessions"]["active"])},
         {"completed", text(j["sessions"]["completed"])},
         {"failed", text(j["sessions"]["failed"])}});
  std::printf("\nrole %s  term %s  leader %s  applied index %s\n",
              text(j["oracle"].value("role", json("single"))).c_str(),
              text(j["term"]).c_str(), text(j["leader"]).c_str(),
              text(j["applied_index"]).c_str());
  return 0;
}

int show_miners(api_client& c, bool json_out) {
  auto a = c.get("/api/v1/miners");
  if (int rc = check(a, json_out))
    return rc;
  if (json_out)
    return std::printf("%s\n", a.body.dump().c_str()), 0;
  std::vector<std::vector<std::string>> rows{
    {"NODE", "STATE", "LEVEL", "REPUTATION", "LATENCY_MS", "MODELS", "SESSION",
     "SEEN"}};
  auto now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                  std::chrono::system_clock::now().time_since_epoch())
                  .count();
  for (auto& m : a.body["miners"]) {
    // When the leader last heard from it; "-" when not connected to it.
    std::string seen = "-";
    if (m.contains("last_seen") && m["last_seen"].is_number_integer())
      seen = std::to_string(std::max<int64_t>(
               0, (now_ms - m["last_seen"].get<int64_t>()) / 1000))
             + "s ago";
    std::string models;
    for (auto& x : m["models"])
      models += (models.empty() ? "" : ",") + text(x);
    auto state = text(m["state"]);
    if (m.value("drained", false))
      state += " (drained)";
    rows.push_back({text(m["node_id"]), state, text(m["level"]),
                    text(m["reputation"]), text(m["latency_ms"]), models,
                    m.contains("session_id") ? text(m["session_id"]) : "-",
                    seen});
  }
  if (a.body.contains("last_seen_unavailable"))
    std::fprintf(stderr, "seen: unknown (%s)\n",
                 text(a.body["last_seen_unavailable"]).c_str());
  table(rows);
  return 0;
}

int show_sessions(api_client& c, bool json_out) {
  auto a = c.get("/api/v1/sessions");
  if (int rc = check(a, json_out))
    return rc;
  if (json_out)
    return std::printf("%s\n", a.body.dump().c_str()), 0;
  std::vector<std::vector<std::string>> rows{
    {"SESSION", "STATE", "MODEL", "NODES", "TASKS", "CLIENT"}};
  for (auto& s : a.body["sessions"])
    rows.push_back({text(s["session_id"]), text(s["state"]), text(s["model"]),
                    std::to_string(s["nodes"].size()),
                    text(s["tasks_done"]) + "/" + text(s["max_tasks"]),
                    text(s["client_reference"])});
  table(rows);
  return 0;
}

int show_session(api_client& c, const std::string& id, bool json_out) {
  auto a = c.get("/api/v1/sessions/" + id);
  if (int rc = check(a, json_out))
    return rc;
  if (json_out)
    return std::printf("%s\n", a.body.dump().c_str()), 0;
  std::vector<std::vector<std::string>> rows;
  for (auto& [k, v] : a.body.items())
    rows.push_back({k, text(v)});
  table(rows);
  return 0;
}

int do_post(api_client& c, const std::string& path, const std::string& body,
            bool json_out) {
  auto a = c.post(path, body);
  if (int rc = check(a, json_out))
    return rc;
  if (json_out)
    std::printf("%s\n", a.body.dump().c_str());
  else {
    std::vector<std::vector<std::string>> rows;
    for (auto& [k, v] : a.body.items())
      rows.push_back({k, text(v)});
    table(rows);
  }
  return 0;
}

} // namespace

void add_ctl(CLI::App& app) {
  auto o = std::make_shared<ctl_options>();
  auto* cmd = app.add_subcommand(
    "ctl", "operate a running oracle through its HTTP API");
  cmd->require_subcommand(1);
  cmd->add_option("--url", o->url,
                  "the API's base URL (default $NODEPOOL_URL, else "
                  "http://127.0.0.1:5010)");
  cmd->add_option("--key", o->key, "API key (default $NODEPOOL_KEY)");
  cmd->add_option("--ca", o->ca, "CA file that signed the oracle's certificate (https)");
  cmd->add_flag("--json", o->json_out, "print the API's JSON instead of tables");
  cmd->add_option("--timeout", o->timeout_s, "seconds per request (default 30)")
    ->check(CLI::Range(1.0, 3600.0));
  auto run = [o](std::function<int(api_client&)> f) {
    return [o, f] {
      begin();
      // A request already sent is carried out or not whether its answer is
      // waited for: nothing here is left half done by leaving at once.
      exit_at_once = "nodepool ctl: interrupted; a request already sent may "
                     "still be carried out (`nodepool ctl status` shows the "
                     "pool)\n";
      api_client c{*o};
      if (int rc = f(c); rc != 0)
        throw exit_code{rc};
    };
  };
  cmd->add_subcommand("status", "pool counts, queue, leader and index")
    ->callback(run([o](api_client& c) { return show_status(c, o->json_out); }));
  cmd->add_subcommand("miners", "the nodes: state, level, reputation, latency")
    ->callback(run([o](api_client& c) { return show_miners(c, o->json_out); }));
  cmd->add_subcommand("sessions", "the live sessions")
    ->callback(run([o](api_client& c) { return show_sessions(c, o->json_out); }));
  auto sid = std::make_shared<std::string>();
  auto* s = cmd->add_subcommand("session", "one session, live or ended");
  s->add_option("ID", *sid, "session id")->required();
  s->callback(run([o, sid](api_client& c) { return show_session(c, *sid, o->json_out); }));
  auto reason = std::make_shared<std::string>();
  for (auto action : {"drain", "undrain", "retire"}) {
    auto node = std::make_shared<std::string>();
    auto* a = cmd->add_subcommand(
      action, std::string{action == std::string{"drain"}
                            ? "stop reserving a node (its session keeps it)"
                          : action == std::string{"undrain"}
                            ? "let a drained node be reserved again"
                            : "take a node out for good"});
    a->add_option("NODE", *node, "node id")->required();
    a->add_option("--reason", *reason, "why (kept with the node's history)");
    std::string act = action;
    a->callback(run([o, node, reason, act](api_client& c) {
      json b = json::object();
      if (!reason->empty())
        b["reason"] = *reason;
      return do_post(c, "/api/v1/admin/miners/" + *node + "/" + act, b.dump(),
                     o->json_out);
    }));
  }
  auto end_id = std::make_shared<std::string>();
  auto failed = std::make_shared<bool>(false);
  auto* e = cmd->add_subcommand("end-session", "end a session now");
  e->add_option("ID", *end_id, "session id")->required();
  e->add_flag("--failed", *failed, "end it as failed (default: completed)");
  e->callback(run([o, end_id, failed](api_client& c) {
    return do_post(c, "/api/v1/admin/sessions/" + *end_id + "/end",
                   json{{"failed", *failed}}.dump(), o->json_out);
  }));
  auto* mem = cmd->add_subcommand(
    "members", "a cluster's members and which one leads; add or remove one");
  mem->require_subcommand(0, 1);
  mem->callback(run([o, mem](api_client& c) {
    if (!mem->get_subcommands().empty())
      return 0;  // `members add` / `members remove` did the work
    auto a = c.get("/api/v1/members");
    if (int rc = check(a, o->json_out))
      return rc;
    if (o->json_out)
      return std::printf("%s\n", a.body.dump().c_str()), 0;
    std::vector<std::vector<std::string>> rows{
      {"ID", "ADDRESS", "HTTP", "ROLE", "VOTE", "REACHABLE"}};
    for (auto& m : a.body["members"])
      rows.push_back({text(m["id"]), text(m["address"]),
                      m.contains("http") ? text(m["http"]) : "-",
                      m.value("leader", false) ? "leader" : "follower",
                      m.contains("role") ? text(m["role"]) : "voter",
                      m.contains("reachable") ? (m["reachable"].get<bool>() ? "yes" : "no")
                                              : "-"});
    if (a.body["members"].empty())
      std::printf("a single oracle (no cluster)\n");
    else
      table(rows);
    if (a.body.contains("changing"))
      std::printf("\nunder way: %s\n", text(a.body["changing"]).c_str());
    return 0;
  }));
  struct add_args {
    uint64_t id = 0;
    std::string raft, address, http;
  };
  auto add = std::make_shared<add_args>();
  auto* ma = mem->add_subcommand(
    "add", "add a member started with --join: a non-voter until it caught up, "
           "then a voter");
  ma->add_option("ID", add->id, "its member id")->required()->check(CLI::PositiveNumber);
  ma->add_option("RAFT", add->raft, "host:port of its Raft listener")->required();
  ma->add_option("--address", add->address, "host:port for miners and clients")
    ->required();
  ma->add_option("--http", add->http, "host:port of its HTTP API");
  ma->callback(run([o, add](api_client& c) {
    json b{{"id", add->id}, {"raft", add->raft}, {"address", add->address}};
    if (!add->http.empty())
      b["http"] = add->http;
    return do_post(c, "/api/v1/admin/members", b.dump(), o->json_out);
  }));
  auto rm = std::make_shared<uint64_t>(0);
  auto* mr = mem->add_subcommand(
    "remove", "remove a member (the leader hands leadership over first)");
  mr->add_option("ID", *rm, "its member id")->required()->check(CLI::PositiveNumber);
  mr->callback(run([o, rm](api_client& c) {
    return do_post(c, "/api/v1/admin/members/" + std::to_string(*rm) + "/remove",
                   "", o->json_out);
  }));
  auto to = std::make_shared<uint64_t>(0);
  auto* tl = cmd->add_subcommand("transfer-leader",
                                 "hand the cluster's leadership to another member");
  tl->add_option("--to", *to, "member id (default: the most up-to-date follower)");
  tl->callback(run([o, to](api_client& c) {
    return do_post(c, "/api/v1/admin/transfer-leader",
                   json{{"to", *to}}.dump(), o->json_out);
  }));
  cmd->add_subcommand("snapshot", "write a snapshot of the pool now")
    ->callback(run([o](api_client& c) {
      return do_post(c, "/api/v1/admin/snapshot", "", o->json_out);
    }));
}

} // namespace nodepool::cli
