#include "http/router.hpp"

#include "accept_guard.hpp"
#include "cluster_config.hpp"

#include <algorithm>
#include <limits>
#include <cctype>
#include <chrono>
#include <cmath>
#include <set>
#include <sstream>

#include "bounds.hpp"
#include "http/dashboard.hpp"
#include "log.hpp"
#include "metrics.hpp"
#include "pool_state.hpp"

namespace nodepool::http {

using nlohmann::json;

namespace {

int64_t unix_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
           std::chrono::system_clock::now().time_since_epoch())
    .count();
}

std::string lower(std::string s) {
  for (auto& c : s)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

response json_response(int status, const json& body) {
  response r;
  r.status = status;
  r.body = body.dump(-1, ' ', false, json::error_handler_t::replace);
  return r;
}

response error_response(int status, const std::string& code,
                        const std::string& message) {
  json j;
  j["error"]["code"] = code;
  j["error"]["message"] = message;
  auto r = json_response(status, j);
  if (status == 401)
    r.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"nodepool\"");
  return r;
}

std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> parts;
  std::string cur;
  for (char c : path) {
    if (c == '/') {
      if (!cur.empty())
        parts.push_back(cur);
      cur.clear();
    } else
      cur += c;
  }
  if (!cur.empty())
    parts.push_back(cur);
  return parts;
}

/// A rough token count (whitespace-separated words): what `usage` reports.
uint32_t words(const std::string& s) {
  uint32_t n = 0;
  bool in = false;
  for (unsigned char c : s) {
    bool sp = std::isspace(c) != 0;
    if (!sp && !in)
      ++n;
    in = !sp;
  }
  return n;
}

/// The answer cut into pieces for a stream: one word (with the space
/// before it) per piece.
std::vector<std::string> pieces(const std::string& text) {
  std::vector<std::string> out;
  std::string cur;
  for (size_t i = 0; i < text.size(); ++i) {
    if (std::isspace(static_cast<unsigned char>(text[i])) && !cur.empty()
        && !std::isspace(static_cast<unsigned char>(cur.back()))) {
      out.push_back(cur);
      cur.clear();
    }
    cur += text[i];
  }
  if (!cur.empty())
    out.push_back(cur);
  return out;
}

/// A field of the body: absent is fine; present, it must have the type.
template <class T>
bool field(const json& j, const char* name, T& out, api_error& err,
           const char* expected) {
  auto i = j.find(name);
  if (i == j.end() || i->is_null())
    return true;
  try {
    if constexpr (std::is_same_v<T, std::string>) {
      if (!i->is_string())
        throw std::invalid_argument("");
    } else if constexpr (std::is_same_v<T, bool>) {
      if (!i->is_boolean())
        throw std::invalid_argument("");
    } else if constexpr (std::is_floating_point_v<T>) {
      if (!i->is_number())
        throw std::invalid_argument("");
    } else {
      if (!i->is_number_integer() && !i->is_number_unsigned())
        throw std::invalid_argument("");
      // Out of T's range (an unsigned above INT64_MAX read as int64_t
      // would wrap to a negative number): refused, not wrapped.
      using lim = std::numeric_limits<T>;
      bool fits = false;
      if (i->is_number_unsigned()) {
        fits = i->template get<uint64_t>() <= static_cast<uint64_t>(lim::max());
      } else {
        auto v = i->template get<int64_t>();
        if constexpr (std::is_signed_v<T>)
          fits = v >= static_cast<int64_t>(lim::min())
                 && v <= static_cast<int64_t>(lim::max());
        else
          fits = v >= 0 && static_cast<uint64_t>(v) <= static_cast<uint64_t>(lim::max());
      }
      if (!fits)
        throw std::out_of_range("");
    }
    out = i->get<T>();
  } catch (const std::out_of_range&) {
    err = {"bad_field", std::string{name} + ": out of range"};
    return false;
  } catch (const std::exception&) {
    err = {"bad_field", std::string{name} + ": expected " + expected};
    return false;
  }
  return true;
}

bool in_range(int64_t v, int64_t lo, int64_t hi, const char* name,
              api_error& err) {
  if (v >= lo && v <= hi)
    return true;
  err = {"bad_field", std::string{name} + ": must be between "
                        + std::to_string(lo) + " and " + std::to_string(hi)};
  return false;
}

std::string node_state_name(pb::NodeState s) { return lower(pb::NodeState_Name(s)); }
std::string session_state_name(pb::SessionState s) {
  return lower(pb::SessionState_Name(s));
}

} // namespace

int status_for(const std::string& code) {
  static const std::map<std::string, int> codes = {
    {"unknown_session", 404},   {"not_found", 404},
    {"duplicate_session", 409}, {"session_ended", 409},
    {"session_not_active", 409}, {"max_tasks_reached", 409},
    {"not_interactive", 409},   {"busy", 429},
    {"rate_limited", 429},      {"queue_full", 429},
    {"not_leader", 503},        {"unavailable", 503},
    {"overloaded", 503},
    {"timeout", 504},           {"no_answer", 504},
    {"malformed", 400},         {"bad_field", 400},
    {"bad_json", 400},          {"bad_session_shape", 400},
    {"bad_level", 400},         {"bad_reserve_period", 400},
    {"bad_session_id", 400},    {"empty_command", 400},
    {"unknown_node", 404},      {"retired", 409},
    {"no_change", 409},         {"not_supported", 501},
    {"transfer_failed", 409},   {"membership_refused", 409},
  };
  auto i = codes.find(code);
  return i == codes.end() ? 500 : i->second;
}

std::optional<json> parse_body(const std::string& body, api_error& err) {
  if (body.empty()) {
    err = {"bad_json", "the request needs a JSON object body"};
    return std::nullopt;
  }
  auto j = json::parse(body, nullptr, false);
  if (j.is_discarded()) {
    err = {"bad_json", "the body is not valid JSON"};
    return std::nullopt;
  }
  if (!j.is_object()) {
    err = {"bad_json", "the body must be a JSON object"};
    return std::nullopt;
  }
  return j;
}

std::optional<pb::SubmitSession> session_from_json(const json& j, api_error& err) {
  std::string id, model, sla, client;
  int64_t min_nodes = 0, max_nodes = 0, redundancy = 0, level = -1,
          reserve_period = 0, max_tasks = 1;
  if (!field(j, "session_id", id, err, "a string")
      || !field(j, "model", model, err, "a string")
      || !field(j, "min_nodes", min_nodes, err, "an integer")
      || !field(j, "max_nodes", max_nodes, err, "an integer")
      || !field(j, "redundancy", redundancy, err, "an integer")
      || !field(j, "level", level, err, "an integer")
      || !field(j, "sla", sla, err, "low, medium or high")
      || !field(j, "reserve_period", reserve_period, err, "seconds, an integer")
      || !field(j, "max_tasks", max_tasks, err, "an integer")
      || !field(j, "client_reference", client, err, "a string"))
    return std::nullopt;
  if (!in_range(min_nodes, 0, 64, "min_nodes", err)
      || !in_range(max_nodes, 0, 64, "max_nodes", err)
      || !in_range(redundancy, 0, 64, "redundancy", err)
      || !in_range(level, -1, 100, "level", err)
      || !in_range(reserve_period, 0, bounds::reserve_period_s, "reserve_period", err)
      || !in_range(max_tasks, 1, 100000, "max_tasks", err))
    return std::nullopt;
  if (id.size() > bounds::id) {
    err = {"bad_field", bounds::at_most("session_id", bounds::id)};
    return std::nullopt;
  }
  if (model.size() > bounds::model || client.size() > bounds::client) {
    err = {"bad_field", model.size() > bounds::model
                          ? bounds::at_most("model", bounds::model)
                          : bounds::at_most("client_reference", bounds::client)};
    return std::nullopt;
  }
  // The SLA picks the nodes' minimum level unless `level` says it.
  if (!sla.empty() && sla != "low" && sla != "medium" && sla != "high") {
    err = {"bad_field", "sla: expected low, medium or high"};
    return std::nullopt;
  }
  if (level < 0)
    level = sla == "high" ? 2 : sla == "medium" ? 1 : 0;
  pb::SubmitSession s;
  s.set_session_id(id);
  s.set_model(model);
  s.set_min_nodes(static_cast<uint32_t>(min_nodes));
  s.set_max_nodes(static_cast<uint32_t>(max_nodes));
  s.set_redundancy(static_cast<uint32_t>(redundancy));
  s.set_min_level(static_cast<uint32_t>(level));
  s.set_reserve_period_ms(reserve_period * 1000);
  s.set_max_tasks(static_cast<uint32_t>(max_tasks));
  s.set_client(client);
  s.set_interactive(true);
  return s;
}

std::optional<pb::PromptRequest> prompt_from_json(const json& j,
                                                  int64_t default_timeout_ms,
                                                  int64_t max_timeout_ms,
                                                  api_error& err) {
  std::string prompt, client, sid;
  int64_t max_tokens = 0;
  double temperature = 0, top_p = 0, timeout = 0;
  if (!field(j, "prompt", prompt, err, "a string")
      || !field(j, "session_id", sid, err, "a string")
      || !field(j, "max_tokens", max_tokens, err, "an integer")
      || !field(j, "temperature", temperature, err, "a number")
      || !field(j, "top_p", top_p, err, "a number")
      || !field(j, "timeout", timeout, err, "seconds, a number")
      || !field(j, "client_reference", client, err, "a string"))
    return std::nullopt;
  if (prompt.empty()) {
    err = {"bad_field", "prompt: required, a non-empty string"};
    return std::nullopt;
  }
  if (!in_range(max_tokens, 0, 1 << 20, "max_tokens", err))
    return std::nullopt;
  if (!(temperature >= 0 && temperature <= 2)) {
    err = {"bad_field", "temperature: must be between 0 and 2"};
    return std::nullopt;
  }
  if (!(top_p >= 0 && top_p <= 1)) {
    err = {"bad_field", "top_p: must be between 0 and 1"};
    return std::nullopt;
  }
  if (!(timeout >= 0 && timeout * 1000 <= static_cast<double>(max_timeout_ms))) {
    err = {"bad_field", "timeout: must be between 0 and "
                          + std::to_string(max_timeout_ms / 1000) + " seconds"};
    return std::nullopt;
  }
  pb::PromptRequest r;
  r.set_session_id(sid);
  r.set_prompt(prompt);
  r.set_max_tokens(static_cast<uint32_t>(max_tokens));
  r.set_temperature(temperature);
  r.set_top_p(top_p);
  // 0 means "the default" downstream: a timeout under a millisecond is
  // one millisecond, not none.
  r.set_timeout_ms(timeout > 0 ? std::max<int64_t>(1, static_cast<int64_t>(timeout * 1000))
                               : default_timeout_ms);
  r.set_client_reference(client);
  return r;
}

json session_json(const pb::SessionRecord& s) {
  json j;
  j["session_id"] = s.id();
  j["state"] = session_state_name(s.state());
  j["model"] = s.model();
  j["min_nodes"] = s.min_nodes();
  j["max_nodes"] = s.max_nodes();
  j["redundancy"] = s.redundancy();
  j["level"] = s.min_level();
  j["reserve_period"] = s.reserve_period_ms() / 1000;
  j["max_tasks"] = s.max_tasks();
  j["tasks_done"] = s.tasks_done();
  j["nodes"] = std::vector<std::string>(s.nodes().begin(), s.nodes().end());
  j["client_reference"] = s.client();
  j["interactive"] = s.interactive();
  j["submitted_at"] = s.submitted_at();
  j["started_at"] = s.started_at();
  j["ended_at"] = s.ended_at();
  if (!s.reason().empty())
    j["reason"] = s.reason();
  return j;
}

// ------------------------------------------------------------------ router

struct router::call {
  request req;
  std::shared_ptr<reply> rep;
  role who = role::admin;
  std::string key_name;  // fingerprint, "" without keys
  std::string label;     // the route, as /metrics names it
  std::vector<std::string> parts;  // the path's segments
};

namespace {

/// Counts every answer by route and status as it goes out.
class counted_reply final : public reply {
 public:
  counted_reply(std::shared_ptr<reply> inner,
                std::function<void(int)> count)
    : inner_(std::move(inner)), count_(std::move(count)) {}
  void send(response r) override {
    count_(r.status);
    inner_->send(std::move(r));
  }
  void begin_stream(response head) override {
    count_(head.status);
    inner_->begin_stream(std::move(head));
  }
  void chunk(std::string data) override { inner_->chunk(std::move(data)); }
  void end() override { inner_->end(); }
  void accept_websocket(std::function<void(std::string)> f) override {
    count_(101);
    inner_->accept_websocket(std::move(f));
  }
  bool closed() const override { return inner_->closed(); }

 private:
  std::shared_ptr<reply> inner_;
  std::function<void(int)> count_;
};

} // namespace

namespace {

/// route_label() of a path already split (once per request).
std::string label_of(const std::vector<std::string>& parts,
                     const std::string& path) {
  // A pattern's "*" matches any one segment.
  static const std::vector<std::pair<std::vector<std::string>, std::string>>
    routes = {
      {{"api", "v1", "info"}, "/api/v1/info"},
      {{"api", "v1", "status"}, "/api/v1/status"},
      {{"api", "v1", "miners"}, "/api/v1/miners"},
      {{"api", "v1", "sessions"}, "/api/v1/sessions"},
      {{"api", "v1", "create"}, "/api/v1/create"},
      {{"api", "v1", "sessions", "*"}, "/api/v1/sessions/{id}"},
      {{"api", "v1", "tasks", "*"}, "/api/v1/tasks/{session_id}"},
      {{"api", "v1", "tasks", "*", "*"}, "/api/v1/tasks/{session_id}/{task_id}"},
      {{"api", "v1", "completions"}, "/api/v1/completions"},
      {{"api", "v1", "completions", "*"}, "/api/v1/completions/{session_id}"},
      {{"api", "v1", "members"}, "/api/v1/members"},
      {{"api", "v1", "events"}, "/api/v1/events"},
      {{"api", "v1", "ws"}, "/api/v1/ws"},
      {{"v1", "models"}, "/v1/models"},
      {{"v1", "chat", "completions"}, "/v1/chat/completions"},
      {{"v1", "completions"}, "/v1/completions"},
      {{"metrics"}, "/metrics"},
    };
  auto is = [&](const std::vector<std::string>& want) {
    if (parts.size() != want.size())
      return false;
    for (size_t i = 0; i < want.size(); ++i)
      if (want[i] != "*" && parts[i] != want[i])
        return false;
    return true;
  };
  for (auto& [want, label] : routes)
    if (is(want))
      return label;
  if (parts.size() >= 3 && parts[0] == "api" && parts[1] == "v1"
      && parts[2] == "admin")
    return "/api/v1/admin";
  if (dashboard_file(path))
    return "/dashboard";
  return "other";
}

} // namespace

std::string route_label(const std::string& path) {
  return label_of(split_path(path), path);
}

router::router(router_config cfg, std::shared_ptr<pool_api> pool)
  : cfg_(std::move(cfg)), pool_(std::move(pool)),
    limiter_(cfg_.rate_per_key, cfg_.rate_burst) {}

router::counters router::stats() const {
  std::lock_guard<std::mutex> g{mu_};
  return stats_;
}

std::map<std::pair<std::string, int>, uint64_t> router::responses() const {
  std::lock_guard<std::mutex> g{*responses_mu_};
  return *responses_;
}

namespace {

/// host[:port] names this host's loopback ("" for none at all, as an
/// HTTP/1.0 request or a test's may send).
bool loopback_host(const std::string& host_port) {
  if (host_port.empty())
    return true;
  auto host = host_port;
  if (host.front() == '[')  // [::1]:port
    host = host.substr(0, host.find(']') + 1);
  else if (auto colon = host.rfind(':'); colon != std::string::npos)
    host = host.substr(0, colon);
  host = lower(host);
  return host == "localhost" || host == "[::1]" || host.rfind("127.", 0) == 0;
}

} // namespace

/// Why a request without a key is refused as coming from elsewhere than
/// this host's own clients ("" when it is not): a Host that is not
/// loopback (a name rebound to it), or an Origin other than the Host (a
/// page of another site; the dashboard, served from here, is the same).
std::string router::not_from_this_host(const request& q) {
  auto& host = q.header("host");
  if (!loopback_host(host))
    return "without API keys this API answers only on this host (Host: "
           + host.substr(0, 64) + ")";
  auto& origin = q.header("origin");
  if (origin.empty())
    return {};
  auto o = lower(origin);
  for (auto* scheme : {"http://", "https://"})
    if (o.rfind(scheme, 0) == 0)
      o = o.substr(std::char_traits<char>::length(scheme));
  if (!host.empty() && o == lower(host))
    return {};
  return "without API keys this API answers only pages it served itself "
         "(Origin: " + origin.substr(0, 64) + ")";
}

void router::handle(request req, std::shared_ptr<reply> rep) {
  auto c = std::make_shared<call>();
  c->req = std::move(req);
  c->parts = split_path(c->req.path);
  c->label = label_of(c->parts, c->req.path);
  // The counts outlive the router if a reply does (an answer in flight).
  c->rep = std::make_shared<counted_reply>(
    std::move(rep), [mu = responses_mu_, by = responses_,
                     label = c->label](int status) {
      std::lock_guard<std::mutex> g{*mu};
      ++(*by)[{label, status}];
    });
  {
    std::lock_guard<std::mutex> g{mu_};
    ++stats_.requests;
  }
  // The dashboard's files hold no data: served to anyone (its page asks
  // for a key before it reads anything).
  if (c->label == "/dashboard") {
    if (c->req.method != "GET") {
      auto r = error_response(405, "method_not_allowed",
                              "the dashboard is read with GET");
      r.headers.emplace_back("Allow", "GET");
      return c->rep->send(std::move(r));
    }
    auto* f = dashboard_file(c->req.path);
    response r;
    r.content_type = f->content_type;
    r.body.assign(f->data, f->size);
    r.headers.emplace_back("Cache-Control", "no-cache");
    r.headers.emplace_back("X-Content-Type-Options", "nosniff");
    return c->rep->send(std::move(r));
  }
  if (!cfg_.keys.empty()) {
    auto& auth = c->req.header("authorization");
    std::string key;
    if (auth.size() > 7 && lower(auth.substr(0, 7)) == "bearer ")
      key = auth.substr(7);
    while (!key.empty() && key.back() == ' ')
      key.pop_back();
    auto r = key.empty() ? std::nullopt : cfg_.keys.check(key);
    if (!r) {
      {
        std::lock_guard<std::mutex> g{mu_};
        ++stats_.unauthorized;
      }
      c->rep->send(error_response(
        401, "unauthorized",
        key.empty() ? "this API needs Authorization: Bearer <key>"
                    : "the key is not valid"));
      return;
    }
    c->who = *r;
    c->key_name = api_keys::fingerprint(key);
  } else if (auto why = not_from_this_host(c->req); !why.empty()) {
    // Without keys every caller is an operator, and the API listens on
    // loopback only; a web page open in a browser on this host must still
    // not act for it (a form or fetch to 127.0.0.1, or a name rebound to
    // it).
    {
      std::lock_guard<std::mutex> g{mu_};
      ++stats_.unauthorized;
    }
    return c->rep->send(error_response(403, "cross_origin", why));
  }
  if (limiter_.enabled()
      && !limiter_.allow(c->key_name.empty() ? c->req.remote : c->key_name,
                         std::chrono::steady_clock::now())) {
    {
      std::lock_guard<std::mutex> g{mu_};
      ++stats_.rate_limited;
    }
    auto r = error_response(429, "rate_limited",
                            "over this key's rate of requests; retry later");
    r.headers.emplace_back("Retry-After", "1");
    c->rep->send(std::move(r));
    return;
  }
  route(c);
}

void router::route(const std::shared_ptr<call>& c) {
  auto& parts = c->parts;
  auto& m = c->req.method;
  auto& l = c->label;
  auto method_not_allowed = [&](const char* allowed) {
    auto r = error_response(405, "method_not_allowed",
                            m + " is not allowed on " + c->req.path
                              + " (allowed: " + allowed + ")");
    r.headers.emplace_back("Allow", allowed);
    c->rep->send(std::move(r));
  };
  auto get_only = [&](auto f) {
    if (m != "GET")
      return method_not_allowed("GET");
    f();
  };
  auto post_only = [&](auto f) {
    if (m != "POST")
      return method_not_allowed("POST");
    f();
  };
  if (l == "/api/v1/info")
    return get_only([&] { get_info(c); });
  if (l == "/api/v1/status")
    return get_only([&] { get_status(c); });
  if (l == "/api/v1/miners")
    return get_only([&] { get_miners(c); });
  if (l == "/api/v1/sessions") {
    if (m == "GET")
      return get_sessions(c);
    if (m == "POST")
      return post_session(c);
    return method_not_allowed("GET, POST");
  }
  if (l == "/api/v1/create")
    return post_only([&] { post_session(c); });
  if (l == "/api/v1/sessions/{id}")
    return get_only([&] { get_session(c, parts[3]); });
  if (l == "/api/v1/tasks/{session_id}")
    return get_only([&] { get_tasks(c, parts[3], nullptr); });
  if (l == "/api/v1/tasks/{session_id}/{task_id}")
    return get_only([&] { get_tasks(c, parts[3], &parts[4]); });
  if (l == "/api/v1/completions")
    return post_only([&] { post_completion(c, ""); });
  if (l == "/api/v1/completions/{session_id}")
    return post_only([&] { post_completion(c, parts[3]); });
  if (l == "/api/v1/members")
    return get_only([&] { get_members(c); });
  if (l == "/api/v1/events")
    return get_only([&] { get_events(c); });
  if (l == "/api/v1/ws")
    return get_only([&] { websocket(c); });
  if (l == "/api/v1/admin") {
    if (c->who != role::admin) {
      {
        std::lock_guard<std::mutex> g{mu_};
        ++stats_.forbidden;
      }
      return c->rep->send(error_response(403, "forbidden",
                                         "this route needs an admin key"));
    }
    return post_only([&] { admin(c, parts); });
  }
  if (l == "/v1/models")
    return get_only([&] { get_models(c); });
  if (l == "/v1/chat/completions")
    return post_only([&] { post_openai(c, true); });
  if (l == "/v1/completions")
    return post_only([&] { post_openai(c, false); });
  if (l == "/metrics")
    return get_only([&] { get_metrics(c); });
  c->rep->send(error_response(404, "not_found", "no route " + c->req.path));
}

namespace {

/// Sends the pool's refusal as its HTTP status.
void send_error(const std::shared_ptr<reply>& rep, const api_error& e) {
  rep->send(error_response(status_for(e.code), e.code, e.message));
}

void send_bad(const std::shared_ptr<reply>& rep, const api_error& e) {
  rep->send(error_response(400, e.code.empty() ? "bad_request" : e.code,
                           e.message));
}

/// Adds what a read reflects: this oracle's applied index (and term).
void stamp(json& j, const json& view, response& r) {
  if (view.contains("applied_index")) {
    j["index"] = view["applied_index"];
    r.headers.emplace_back("X-Nodepool-Index",
                           std::to_string(view["applied_index"].get<uint64_t>()));
  }
}

} // namespace

/// The models the pool's live nodes serve (a retired or lost node's are
/// not on offer), in order: from the pool's counts, not a copy of it.
static void live_models(pool_api& pool,
                        std::function<void(std::vector<std::string>,
                                           std::optional<api_error>)> cb) {
  pb::StateQuery q;
  q.set_what(pb::StateQuery::MODELS);
  pool.read(q, [cb](std::optional<pb::StatePage> p, json,
                    std::optional<api_error> err) {
    if (err)
      return cb({}, err);
    cb(std::vector<std::string>(p->models().begin(), p->models().end()),
       std::nullopt);
  });
}

void pool_api::read(const pb::StateQuery& q, page_cb cb) {
  // A pool without bounded reads (the tests' fakes): its whole state,
  // restored and read by the pool's own read, so that the rules of a page
  // are written once.
  state([q, cb](std::optional<pb::Snapshot> s, nlohmann::json view,
                std::optional<api_error> err) {
    if (err)
      return cb(std::nullopt, std::move(view), err);
    pool_state ps;
    ps.restore(*s, false);
    auto p = ps.read(q);
    p.set_index(view.value("applied_index", uint64_t{0}));
    cb(std::move(p), std::move(view), std::nullopt);
  });
}

namespace {

/// A list's query from the client's `limit` and `after_id`: one page when
/// it gave a limit, else the whole list.
bool list_query(const request& req, pb::StateQuery& q, bool& whole,
                api_error& e) {
  auto& x = req.query;
  whole = true;
  q.set_limit(bounds::page);
  if (auto l = x.find("limit"); l != x.end()) {
    whole = false;
    auto& t = l->second;
    bool digits = !t.empty() && t.size() <= 4
                  && std::all_of(t.begin(), t.end(),
                                 [](unsigned char c) { return std::isdigit(c); });
    auto v = digits ? std::stoul(t) : 0;
    if (v < 1 || v > bounds::page) {
      e = {"bad_field", "limit: 1.." + std::to_string(bounds::page)};
      return false;
    }
    q.set_limit(static_cast<uint32_t>(v));
  }
  if (auto a = x.find("after_id"); a != x.end())
    q.set_after(a->second);
  return true;
}

/// Reads a list: the page asked, or (whole) every page in turn, each a
/// separate bounded read, so that the pool is never stopped for the whole
/// list at once. A record added meanwhile below the pages read is not in
/// the list; no record is in it twice.
void read_list(const std::shared_ptr<pool_api>& pool, pb::StateQuery q,
               bool whole, std::shared_ptr<pb::StatePage> acc,
               pool_api::page_cb done) {
  pool->read(q, [=](std::optional<pb::StatePage> p, json view,
                    std::optional<api_error> err) mutable {
    if (err || !p->error().empty())
      return done(std::move(p), std::move(view), err);
    acc->mutable_nodes()->MergeFrom(p->nodes());
    acc->mutable_sessions()->MergeFrom(p->sessions());
    acc->set_more(p->more());
    acc->set_index(p->index());
    std::string last = p->nodes_size() > 0 ? p->nodes().rbegin()->id()
                       : p->sessions_size() > 0 ? p->sessions().rbegin()->id()
                                                : std::string{};
    if (!whole || !p->more() || last.empty())
      return done(std::move(*acc), std::move(view), std::nullopt);
    q.set_after(last);
    read_list(pool, q, whole, acc, std::move(done));
  });
}

} // namespace

void router::get_info(const std::shared_ptr<call>& c) {
  pool_->view([this, c](json view, std::optional<api_error> err) {
    if (err)
      return send_error(c->rep, *err);
    live_models(*pool_, [this, c, view](std::vector<std::string> models,
                                        std::optional<api_error> err) {
      if (err)
        return send_error(c->rep, *err);
      json j;
      j["name"] = "nodepool";
      j["version"] = cfg_.version;
      j["oracle_id"] = cfg_.oracle_id;
      j["role"] = view.value("role", "single");
      j["models"] = std::move(models);
      j["auth"] = cfg_.keys.empty() ? "none (loopback only)" : "bearer";
      j["your_role"] = to_string(c->who);
      c->rep->send(json_response(200, j));
    });
  });
}

pool_counts pool_counts::of(const pb::Snapshot& s) {
  pool_counts c;
  for (auto& n : s.nodes()) {
    ++c.nodes[n.state()];
    c.tests_in_flight += test_sent(n) ? 1 : 0;
    c.tests_waiting += test_waiting(n) ? 1 : 0;
  }
  for (auto& x : s.sessions())
    (x.state() == pb::QUEUED ? c.queued : c.active) += 1;
  c.completed = s.sessions_completed();
  c.failed = s.sessions_failed();
  c.accepted = s.next_session_seq() > 0 ? s.next_session_seq() - 1 : 0;
  c.tests_passed = s.tests_passed();
  c.tests_failed = s.tests_failed();
  return c;
}

void router::get_status(const std::shared_ptr<call>& c) {
  // From the pool's counters: this route is polled, and a whole snapshot
  // per poll would cost the pool's size.
  pool_->counts([c](pool_counts n, json view, std::optional<api_error> err) {
    if (err)
      return send_error(c->rep, *err);
    json by_state = json::object();
    uint64_t total = 0;
    for (int s = pb::REGISTERED; s <= pb::LOST; ++s) {
      auto st = static_cast<pb::NodeState>(s);
      auto i = n.nodes.find(st);
      by_state[node_state_name(st)] = i == n.nodes.end() ? 0 : i->second;
      total += i == n.nodes.end() ? 0 : i->second;
    }
    json j;
    j["nodes"]["total"] = total;
    j["nodes"]["by_state"] = by_state;
    j["sessions"]["queued"] = n.queued;
    j["sessions"]["active"] = n.active;
    j["sessions"]["completed"] = n.completed;
    j["sessions"]["failed"] = n.failed;
    j["sessions"]["accepted"] = n.accepted;
    j["queue_depth"] = n.queued;
    j["tests"]["passed"] = n.tests_passed;
    j["tests"]["failed"] = n.tests_failed;
    j["tests"]["in_flight"] = n.tests_in_flight;
    j["tests"]["waiting"] = n.tests_waiting;
    j["grants"]["total"] = n.grants;
    j["grants"]["latency_ms_sum"] = n.grant_latency_ms_sum;
    j["oracle"] = view;
    j["leader"] = view.value("leader_id", uint64_t{0});
    j["term"] = view.value("term", uint64_t{0});
    j["applied_index"] = view.value("applied_index", uint64_t{0});
    auto r = json_response(200, j);
    stamp(j, view, r);
    r.body = j.dump(-1, ' ', false, json::error_handler_t::replace);
    c->rep->send(std::move(r));
  });
}

void router::get_miners(const std::shared_ptr<call>& c) {
  pb::StateQuery q;
  bool whole = true;
  api_error e;
  if (!list_query(c->req, q, whole, e))
    return send_bad(c->rep, e);
  q.set_what(pb::StateQuery::NODES);
  read_list(pool_, q, whole, std::make_shared<pb::StatePage>(),
            [c, pool = pool_](std::optional<pb::StatePage> page, json view,
                              std::optional<api_error> err) {
    if (err)
      return send_error(c->rep, *err);
    if (!page->error().empty())
      return send_bad(c->rep, {"bad_field", page->error()});
    if (!view.contains("applied_index"))
      view["applied_index"] = page->index();
    // When the leader's gateway last heard from each node: asked after the
    // state, so that a node it names is in that state or was added since.
    std::vector<std::string> ids;
    ids.reserve(page->nodes_size());
    for (auto& n : page->nodes())
      ids.push_back(n.id());
    pool->last_seen(ids, [c, page = std::move(*page), view = std::move(view)](
                      json seen, std::optional<api_error> seen_err) mutable {
      send_miners(c, page, view, seen, seen_err);
    });
  });
}

void router::send_miners(const std::shared_ptr<call>& c, const pb::StatePage& s,
                         const json& view, const json& seen,
                         const std::optional<api_error>& seen_err) {
  json list = json::array();
  for (auto& n : s.nodes()) {
    json x;
    x["node_id"] = n.id();
    x["state"] = node_state_name(n.state());
    x["models"] = std::vector<std::string>(n.models().begin(), n.models().end());
    x["level"] = n.level();
    x["reputation"] = n.reputation();
    x["latency_ms"] = n.latency_ms();
    x["tasks_served"] = n.tasks_served();
    x["strikes"] = n.strikes();
    x["drained"] = n.drained();
    if (!n.session_id().empty())
      x["session_id"] = n.session_id();
    x["last_heartbeat"] = n.last_heartbeat();
    if (auto t = seen.find(n.id()); t != seen.end() && t->is_number_integer())
      x["last_seen"] = *t;
    // The node's recent test outcomes (its reputation's ring buffer).
    uint64_t passed = 0;
    for (bool ok : n.recent())
      passed += ok;
    x["tests"]["passed"] = passed;
    x["tests"]["failed"] = static_cast<uint64_t>(n.recent_size()) - passed;
    if (!n.state_reason().empty())
      x["reason"] = n.state_reason();
    list.push_back(std::move(x));
  }
  json j;
  j["miners"] = std::move(list);
  j["more"] = s.more();
  // The list is still worth having when the leader cannot be asked (an
  // election): said, not failed.
  if (seen_err)
    j["last_seen_unavailable"] = seen_err->code + ": " + seen_err->message;
  auto r = json_response(200, j);
  stamp(j, view, r);
  r.body = j.dump(-1, ' ', false, json::error_handler_t::replace);
  c->rep->send(std::move(r));
}

void router::get_sessions(const std::shared_ptr<call>& c) {
  // Live sessions from the pool; with ?since=MS (and ?limit, ?after_id)
  // the ended ones from the archive too.
  auto& q = c->req.query;
  auto since = q.find("since");
  if (since == q.end()) {
    pb::StateQuery sq;
    bool whole = true;
    api_error e;
    if (!list_query(c->req, sq, whole, e))
      return send_bad(c->rep, e);
    sq.set_what(pb::StateQuery::SESSIONS);
    read_list(pool_, sq, whole, std::make_shared<pb::StatePage>(),
              [c](std::optional<pb::StatePage> page, json view,
                  std::optional<api_error> err) {
      if (err)
        return send_error(c->rep, *err);
      if (!page->error().empty())
        return send_bad(c->rep, {"bad_field", page->error()});
      if (!view.contains("applied_index"))
        view["applied_index"] = page->index();
      json list = json::array();
      for (auto& s : page->sessions())
        list.push_back(session_json(s));
      json j;
      j["sessions"] = std::move(list);
      j["more"] = page->more();
      auto r = json_response(200, j);
      stamp(j, view, r);
      r.body = j.dump(-1, ' ', false, json::error_handler_t::replace);
      c->rep->send(std::move(r));
    });
    return;
  }
  pb::ArchiveQuery aq;
  try {
    size_t used = 0;
    aq.set_since(std::stoll(since->second, &used));
    if (used != since->second.size())
      throw std::invalid_argument("");
    if (auto l = q.find("limit"); l != q.end()) {
      auto v = std::stoll(l->second, &used);
      if (used != l->second.size() || v < 1 || v > 1000)
        throw std::out_of_range("");
      aq.set_limit(static_cast<uint32_t>(v));
    }
  } catch (const std::exception&) {
    return send_bad(c->rep, {"bad_field", "since: milliseconds since the "
                                          "epoch; limit: 1..1000"});
  }
  if (auto a = q.find("after_id"); a != q.end())
    aq.set_after_id(a->second);
  pool_->archive(aq, [c](pb::ArchiveAnswer a, std::optional<api_error> err) {
    if (err)
      return send_error(c->rep, *err);
    if (!a.error().empty())
      return send_bad(c->rep, {"bad_field", a.error()});
    json list = json::array();
    for (auto& s : a.sessions())
      list.push_back(session_json(s));
    json j;
    j["sessions"] = std::move(list);
    j["more"] = a.more();
    j["complete_through"] = a.complete_through();
    c->rep->send(json_response(200, j));
  });
}

void router::get_session(const std::shared_ptr<call>& c, const std::string& id) {
  pb::ArchiveQuery aq;
  aq.set_id(id);
  pool_->archive(aq, [c, id](pb::ArchiveAnswer a, std::optional<api_error> err) {
    if (err)
      return send_error(c->rep, *err);
    if (!a.error().empty())
      return send_bad(c->rep, {"bad_field", a.error()});
    if (a.sessions_size() == 0)
      return send_error(c->rep, {"unknown_session", "no session '" + id + "'"});
    c->rep->send(json_response(200, session_json(a.sessions(0))));
  });
}

void router::remember(const pb::PromptAnswer& a, const std::string& prompt) {
  json t;
  t["task_id"] = a.task_no();
  t["session_id"] = a.session_id();
  t["prompt"] = prompt;
  t["output"] = a.output();
  t["nodes"] = a.nodes();
  t["agreeing"] = a.agreeing();
  t["created"] = unix_seconds();
  std::lock_guard<std::mutex> g{mu_};
  auto [it, fresh] = tasks_.try_emplace(a.session_id());
  if (fresh) {
    tasks_order_.push_back(a.session_id());
    while (tasks_order_.size() > cfg_.tasks_kept_sessions) {
      tasks_.erase(tasks_order_.front());
      tasks_order_.pop_front();
    }
  }
  // The most recent ones: at most tasks_kept_per_session.
  auto& kept = it->second;
  kept.push_back(std::move(t));
  if (kept.size() > cfg_.tasks_kept_per_session)
    kept.erase(kept.begin());
}

void router::get_tasks(const std::shared_ptr<call>& c, const std::string& sid,
                       const std::string* task) {
  pb::ArchiveQuery aq;
  aq.set_id(sid);
  pool_->archive(aq, [this, c, sid, task = task ? std::optional<std::string>{*task}
                                                : std::nullopt](
                       pb::ArchiveAnswer a, std::optional<api_error> err) {
    if (err)
      return send_error(c->rep, *err);
    if (a.sessions_size() == 0)
      return send_error(c->rep, {"unknown_session", "no session '" + sid + "'"});
    std::vector<json> kept;
    {
      std::lock_guard<std::mutex> g{mu_};
      if (auto i = tasks_.find(sid); i != tasks_.end())
        kept = i->second;
    }
    if (task) {
      for (auto& t : kept)
        if (std::to_string(t["task_id"].get<uint32_t>()) == *task)
          return c->rep->send(json_response(200, t));
      return send_error(c->rep, {"not_found", "no task '" + *task
                                                + "' of session " + sid
                                                + " on this oracle"});
    }
    json j;
    j["session_id"] = sid;
    j["tasks_done"] = a.sessions(0).tasks_done();
    j["max_tasks"] = a.sessions(0).max_tasks();
    j["tasks"] = kept;
    c->rep->send(json_response(200, j));
  });
}

void router::post_session(const std::shared_ptr<call>& c) {
  api_error e;
  auto j = parse_body(c->req.body, e);
  if (!j)  // counted with every answer, by route and status
    return send_bad(c->rep, e);
  auto s = session_from_json(*j, e);
  if (!s)
    return send_bad(c->rep, e);
  if (s->session_id().empty()) {
    std::lock_guard<std::mutex> g{mu_};
    s->set_session_id("s-" + cfg_.oracle_id + "-" + random_api_key().substr(3, 16));
  }
  auto sub = *s;
  pool_->submit(sub, [c, sub](std::optional<api_error> err) {
    if (err) {
      // The id goes back with any error: after one whose outcome is
      // unknown (a timeout, a leader that stepped down) the client sends
      // the same body with this id again, and a 409 duplicate_session then
      // says it had been stored; even an id the oracle chose.
      json j;
      j["error"]["code"] = err->code;
      j["error"]["message"] = err->message;
      j["error"]["session_id"] = sub.session_id();
      return c->rep->send(json_response(status_for(err->code), j));
    }
    json out;
    out["session_id"] = sub.session_id();
    out["state"] = "queued";
    out["max_tasks"] = sub.max_tasks();
    auto r = json_response(201, out);
    r.headers.emplace_back("Location", "/api/v1/sessions/" + sub.session_id());
    c->rep->send(std::move(r));
  });
}

namespace {

/// One completion's answer, in the shape of OpenAI's text completion (with
/// the pool's own fields added).
json completion_json(const std::string& id, const pb::PromptAnswer& a,
                     const std::string& prompt, bool chat) {
  json j;
  j["id"] = id;
  j["object"] = chat ? "chat.completion" : "text_completion";
  j["created"] = unix_seconds();
  j["model"] = a.model();
  json choice;
  choice["index"] = 0;
  if (chat) {
    choice["message"]["role"] = "assistant";
    choice["message"]["content"] = a.output();
  } else {
    choice["text"] = a.output();
    choice["logprobs"] = nullptr;
  }
  choice["finish_reason"] = "stop";
  j["choices"] = json::array({choice});
  auto pt = words(prompt), ct = words(a.output());
  j["usage"]["prompt_tokens"] = pt;
  j["usage"]["completion_tokens"] = ct;
  j["usage"]["total_tokens"] = pt + ct;
  j["session_id"] = a.session_id();
  j["task_id"] = a.task_no();
  j["nodes"] = a.nodes();
  j["agreeing"] = a.agreeing();
  return j;
}

/// The same answer as a stream of chunks (server-sent events or WebSocket
/// messages): the pool releases an output only once the session's nodes
/// agreed on it, so the stream starts then, one word per chunk.
std::vector<json> completion_chunks(const std::string& id,
                                    const pb::PromptAnswer& a, bool chat) {
  std::vector<json> out;
  auto created = unix_seconds();
  auto base = [&] {
    json j;
    j["id"] = id;
    j["object"] = chat ? "chat.completion.chunk" : "text_completion";
    j["created"] = created;
    j["model"] = a.model();
    return j;
  };
  if (chat) {
    auto j = base();
    json ch;
    ch["index"] = 0;
    ch["delta"]["role"] = "assistant";
    ch["finish_reason"] = nullptr;
    j["choices"] = json::array({ch});
    out.push_back(j);
  }
  for (auto& p : pieces(a.output())) {
    auto j = base();
    json ch;
    ch["index"] = 0;
    if (chat)
      ch["delta"]["content"] = p;
    else {
      ch["text"] = p;
      ch["logprobs"] = nullptr;
    }
    ch["finish_reason"] = nullptr;
    j["choices"] = json::array({ch});
    out.push_back(j);
  }
  auto j = base();
  json ch;
  ch["index"] = 0;
  if (chat)
    ch["delta"] = json::object();
  else
    ch["text"] = "";
  ch["finish_reason"] = "stop";
  j["choices"] = json::array({ch});
  out.push_back(j);
  return out;
}

void send_stream(const std::shared_ptr<reply>& rep, const std::vector<json>& chunks) {
  response head;
  head.content_type = "text/event-stream";
  rep->begin_stream(head);
  for (auto& c : chunks)
    rep->chunk("data: " + c.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n");
  rep->chunk("data: [DONE]\n\n");
  rep->end();
}

} // namespace

void router::post_completion(const std::shared_ptr<call>& c, std::string sid) {
  api_error e;
  auto j = parse_body(c->req.body, e);
  if (!j)
    return send_bad(c->rep, e);
  auto p = prompt_from_json(*j, cfg_.default_timeout_ms, cfg_.max_timeout_ms, e);
  if (!p)
    return send_bad(c->rep, e);
  bool stream = false;
  if (!field(*j, "stream", stream, e, "true or false"))
    return send_bad(c->rep, e);
  if (sid.empty())
    sid = p->session_id();
  if (sid.empty())
    return send_bad(c->rep, {"bad_field", "session_id: required (in the path "
                                          "or the body)"});
  p->set_session_id(sid);
  {
    std::lock_guard<std::mutex> g{mu_};
    ++stats_.completions;
  }
  auto req = *p;
  prompt_known_session(req, [this, c, req, stream](pb::PromptAnswer ans,
                                                   std::optional<api_error> err) {
    if (err)
      return send_error(c->rep, *err);
    remember(ans, req.prompt());
    auto id = "cmpl-" + ans.session_id() + "-" + std::to_string(ans.task_no());
    if (stream)
      return send_stream(c->rep, completion_chunks(id, ans, false));
    c->rep->send(json_response(200, completion_json(id, ans, req.prompt(), false)));
  });
}

void router::prompt_known_session(const pb::PromptRequest& req,
                                  pool_api::prompt_cb cb) {
  // Asked where the prompt goes: a session just created is there.
  pb::ArchiveQuery aq;
  aq.set_id(req.session_id());
  pool_->archive_for_write(aq, [this, req, cb = std::move(cb)](
                                 pb::ArchiveAnswer a,
                                 std::optional<api_error> err) mutable {
    if (err)
      return cb({}, std::move(err));
    if (a.sessions_size() == 0)
      return cb({}, api_error{"unknown_session",
                              "no session '" + req.session_id() + "'"});
    auto st = a.sessions(0).state();
    if (st == pb::COMPLETED || st == pb::FAILED)
      return cb({}, api_error{"session_ended",
                              "session " + req.session_id() + " has ended ("
                                + session_state_name(st) + ")"});
    pool_->prompt(req, std::move(cb));
  });
}

void router::admin(const std::shared_ptr<call>& c,
                   const std::vector<std::string>& parts) {
  {
    std::lock_guard<std::mutex> g{mu_};
    ++stats_.admin;
  }
  // The body is optional: {"reason": "..."} (and "failed" to end a session).
  json body = json::object();
  if (!c->req.body.empty()) {
    api_error e;
    auto j = parse_body(c->req.body, e);
    if (!j)
      return send_bad(c->rep, e);
    body = *j;
  }
  api_error e;
  std::string reason;
  bool failed = false;
  if (!field(body, "reason", reason, e, "a string")
      || !field(body, "failed", failed, e, "true or false"))
    return send_bad(c->rep, e);
  // A member that does not lead sends operators to the leader's API: 307
  // keeps the method, the body and (with most clients) the key.
  auto refused = [this, c](const api_error& err) {
    if (err.code != "not_leader" || err.leader_http.empty())
      return send_error(c->rep, err);
    auto r = error_response(307, err.code, err.message);
    r.headers.emplace_back("Location",
                           cfg_.scheme + "://" + err.leader_http + c->req.target);
    c->rep->send(std::move(r));
  };
  auto done = [c, refused](json ok) {
    return [c, ok, refused](std::optional<api_error> err) {
      if (err)
        return refused(*err);
      c->rep->send(json_response(200, ok));
    };
  };
  // /api/v1/admin/snapshot
  if (parts.size() == 4 && parts[3] == "snapshot")
    return pool_->snapshot([c, refused](uint64_t index, std::optional<api_error> err) {
      if (err)
        return refused(*err);
      c->rep->send(json_response(200, {{"snapshot_index", index}}));
    });
  // /api/v1/admin/transfer-leader, body {"to": ID} (absent or 0: the most
  // up-to-date voter)
  if (parts.size() == 4 && parts[3] == "transfer-leader") {
    int64_t to = 0;
    if (!field(body, "to", to, e, "a member id, an integer"))
      return send_bad(c->rep, e);
    if (to < 0)
      return send_bad(c->rep, {"bad_field", "to: a member id, >= 0"});
    return pool_->transfer(static_cast<uint64_t>(to),
                           [c, refused](json out, std::optional<api_error> err) {
                             if (err)
                               return refused(*err);
                             c->rep->send(json_response(200, out));
                           });
  }
  // /api/v1/admin/members, body {id, raft, address, http}: a new member
  // (started with --join) is added as a non-voter, caught up, then made a
  // voter; /api/v1/admin/members/{id}/remove takes one out.
  if (parts.size() == 4 && parts[3] == "members") {
    int64_t id = 0;
    std::string raft, address, http;
    if (!field(body, "id", id, e, "a member id, an integer")
        || !field(body, "raft", raft, e, "host:port of its Raft listener")
        || !field(body, "address", address, e, "host:port for miners and clients")
        || !field(body, "http", http, e, "host:port of its HTTP API"))
      return send_bad(c->rep, e);
    if (id <= 0)
      return send_bad(c->rep, {"bad_field", "id: a member id, > 0"});
    for (auto [name, v] : {std::pair{"raft", &raft}, {"address", &address}})
      if (!member_address_ok(*v))
        return send_bad(c->rep, {"bad_field", std::string{name} + ": required, host:port"});
    if (!http.empty() && !member_address_ok(http))
      return send_bad(c->rep, {"bad_field", "http: host:port"});
    if (auto why = raft_address_error(raft); !why.empty())
      return send_bad(c->rep, {"bad_field", "raft: " + why});
    cluster_member m;
    m.id = static_cast<uint64_t>(id);
    m.raft = raft;
    m.address = address;
    m.http = http;
    return pool_->change_member("add", m.id, member_config_address(m),
                                [c, refused](json out, std::optional<api_error> err) {
                                  if (err)
                                    return refused(*err);
                                  c->rep->send(json_response(200, out));
                                });
  }
  if (parts.size() == 6 && parts[3] == "members" && parts[5] == "remove") {
    uint64_t id = 0;
    auto& t = parts[4];
    if (t.empty() || t.size() > 19 || t.find_first_not_of("0123456789") != std::string::npos
        || (id = std::stoull(t)) == 0)
      return send_bad(c->rep, {"bad_field", "member id: a positive integer"});
    return pool_->change_member("remove", id, "",
                                [c, refused](json out, std::optional<api_error> err) {
                                  if (err)
                                    return refused(*err);
                                  c->rep->send(json_response(200, out));
                                });
  }
  // The id in the path is outside input, checked here as the pool checks
  // every id (bounds::valid_id): the command goes to the supervisor as
  // built, never decoded on the way, so nothing else would.
  if (parts.size() == 6 && (parts[3] == "miners" || parts[3] == "sessions")
      && !bounds::valid_id(parts[4]))
    return send_bad(c->rep, {parts[3] == "miners" ? "bad_node_id" : "bad_session_id",
                             "id: 1.." + std::to_string(bounds::id)
                               + " characters of [A-Za-z0-9-_.:]"});
  // /api/v1/admin/miners/{id}/{drain,undrain,retire}
  if (parts.size() == 6 && parts[3] == "miners") {
    static const std::map<std::string, pb::AdminAction> actions = {
      {"drain", pb::DRAIN}, {"undrain", pb::UNDRAIN}, {"retire", pb::RETIRE}};
    auto a = actions.find(parts[5]);
    if (a == actions.end())
      return c->rep->send(error_response(404, "not_found",
                                         "no admin action '" + parts[5]
                                           + "' (drain, undrain, retire)"));
    pb::Command cmd;
    auto* x = cmd.mutable_admin_node();
    x->set_node_id(parts[4]);
    x->set_action(a->second);
    x->set_reason(reason.empty() ? "by an operator (" + c->key_name + ")" : reason);
    return pool_->command(cmd, done({{"node_id", parts[4]}, {"action", parts[5]}}));
  }
  // /api/v1/admin/sessions/{id}/end
  if (parts.size() == 6 && parts[3] == "sessions" && parts[5] == "end") {
    pb::Command cmd;
    auto* x = cmd.mutable_end_session();
    x->set_session_id(parts[4]);
    x->set_failed(failed);
    x->set_reason(reason.empty() ? "ended by an operator" : reason);
    return pool_->command(cmd, done({{"session_id", parts[4]},
                                     {"state", failed ? "failed" : "completed"}}));
  }
  c->rep->send(error_response(404, "not_found", "no admin route " + c->req.path));
}

void router::get_members(const std::shared_ptr<call>& c) {
  pool_->view([c](json view, std::optional<api_error> err) {
    if (err)
      return send_error(c->rep, *err);
    json j;
    j["role"] = view.value("role", "single");
    j["id"] = view.value("id", uint64_t{0});
    j["leader_id"] = view.value("leader_id", uint64_t{0});
    j["term"] = view.value("term", uint64_t{0});
    j["members"] = json::array();
    if (view.contains("members"))
      for (auto m : view["members"]) {
        m["leader"] = m.value("id", uint64_t{0}) == j["leader_id"].get<uint64_t>();
        j["members"].push_back(m);
      }
    auto r = json_response(200, j);
    stamp(j, view, r);
    r.body = j.dump(-1, ' ', false, json::error_handler_t::replace);
    c->rep->send(std::move(r));
  });
}

void router::get_events(const std::shared_ptr<call>& c) {
  if (!cfg_.events)
    return c->rep->send(error_response(404, "not_found",
                                       "this oracle keeps no event feed"));
  // Where to start: ?after=SEQ, or the Last-Event-ID of a stream resumed
  // (EPOCH-SEQ, as the stream's ids are; either form is taken in both).
  event_feed::cursor after;
  auto& q = c->req.query;
  std::string from = q.count("after") ? q.at("after")
                                      : c->req.header("last-event-id");
  if (!from.empty()) {
    auto parsed = event_feed::parse_cursor(from);
    if (!parsed)
      return c->rep->send(error_response(
        400, "bad_field", "after (or Last-Event-ID) must be an event's seq "
                          "(digits) or a stream's id (EPOCH-SEQ)"));
    after = *parsed;
  }
  auto& accept = c->req.header("accept");
  auto stream = q.find("stream");
  bool wants_stream =
    stream != q.end() ? (stream->second.empty() || stream->second == "1"
                         || stream->second == "true")
                      : accept.find("text/event-stream") != std::string::npos;
  if (wants_stream) {
    if (!cfg_.events->follow(c->rep, after))
      c->rep->send(error_response(503, "unavailable",
                                  "too many event streams are open"));
    return;
  }
  auto got = cfg_.events->read(after, 1000);
  json list = json::array();
  for (auto& e : got.events)
    list.push_back(std::move(e));
  json j;
  j["epoch"] = cfg_.events->epoch();
  // Events missed: older than those kept, or numbered by another process
  // (a restart): the list starts again from the first kept.
  j["gap"] = got.gap;
  j["next"] = got.next;
  // The same, with the epoch: given back as ?after, a restart in between
  // shows as a gap whatever the seqs.
  j["next_id"] = cfg_.events->id_of(got.next);
  j["events"] = std::move(list);
  c->rep->send(json_response(200, j));
}

void router::get_metrics(const std::shared_ptr<call>& c) {
  auto by = responses_;
  auto mu = responses_mu_;
  auto feed = cfg_.events;
  auto counted = cfg_.server;
  pool_->metrics([c, by, mu, feed, counted](json pool, std::optional<api_error> err) {
    // Scraped while the pool is unreachable, the HTTP side still answers
    // (with what it knows), so the scrape itself says what is wrong.
    if (err)
      pool = json::object();
    std::map<std::pair<std::string, int>, uint64_t> responses;
    {
      std::lock_guard<std::mutex> g{*mu};
      responses = *by;
    }
    response r;
    r.content_type = "text/plain; version=0.0.4; charset=utf-8";
    process_figures f;
    f.event_streams = feed ? feed->streams() : 0;
    if (counted)
      f.server = process_figures::http_server{
        counted->accept_errors.load(), counted->over_capacity.load(),
        counted->abandoned.load(), counted->open.load()};
    f.connections_shed = connections_shed();
    f.connections_silent_closed = connections_silent_closed();
    f.open_fds = open_descriptors();
    f.max_fds = descriptor_limit();
    r.body = prometheus_text(pool, responses, f);
    if (err)
      r.body += "# the pool did not answer: " + err->code + "\n";
    c->rep->send(std::move(r));
  });
}

std::string prometheus_text(
  const json& pool,
  const std::map<std::pair<std::string, int>, uint64_t>& responses,
  const process_figures& figures) {
  exposition out;
  auto num = [](const json& j, const char* k) -> double {
    auto i = j.find(k);
    return i != j.end() && i->is_number() ? i->get<double>() : 0.0;
  };
  auto sup = pool.value("supervisor", json::object());
  auto committed = sup.value("committed", json::object());
  if (!committed.empty()) {
    out.family("nodepool_nodes", "gauge", "Miner nodes by state.");
    auto nodes = committed.value("nodes", json::object());
    for (int k = pb::REGISTERED; k <= pb::LOST; ++k)
      out.sample("nodepool_nodes",
                 {{"state", node_state_name(static_cast<pb::NodeState>(k))}},
                 num(nodes, std::to_string(k).c_str()));
    out.family("nodepool_sessions", "gauge", "Live sessions by state.");
    out.sample("nodepool_sessions", {{"state", "queued"}}, num(committed, "queued"));
    out.sample("nodepool_sessions", {{"state", "active"}}, num(committed, "active"));
    out.family("nodepool_sessions_ended_total", "counter",
               "Sessions that ended, by outcome.");
    out.sample("nodepool_sessions_ended_total", {{"outcome", "completed"}},
               num(committed, "completed"));
    out.sample("nodepool_sessions_ended_total", {{"outcome", "failed"}},
               num(committed, "failed"));
    out.single("nodepool_sessions_accepted_total", "counter",
               "Sessions ever accepted.",
               num(committed, "accepted"));
    out.single("nodepool_queue_depth", "gauge",
               "Sessions waiting in the session queue.",
               num(committed, "queued"));
    out.family("nodepool_tests_total", "counter",
               "Cognitive tests finished, by result.");
    out.sample("nodepool_tests_total", {{"result", "passed"}},
               num(committed, "tests_passed"));
    out.sample("nodepool_tests_total", {{"result", "failed"}},
               num(committed, "tests_failed"));
    out.single("nodepool_tests_in_flight", "gauge",
               "Cognitive tests sent and not finished.",
               num(committed, "tests_in_flight"));
    out.single("nodepool_tests_waiting", "gauge",
               "Admission tests and retests waiting to be sent "
               "(max_tests_in_flight).",
               num(committed, "tests_waiting"));
    out.single("nodepool_applied_index", "gauge",
               "The last log entry this oracle's pool holds.",
               num(committed, "index"));
  }
  if (sup.contains("reservations")) {
    out.single("nodepool_reservations_total", "counter",
               "Nodes reserved for sessions by this oracle while it led.",
               num(sup, "reservations"));
    out.single("nodepool_releases_total", "counter",
               "Nodes released by sessions by this oracle while it led.",
               num(sup, "releases"));
  }
  auto refusals = sup.value("refusals", json::object());
  auto gw = pool.value("gateway", json::object());
  auto gw_refused = gw.value("refused", json::object());
  out.family("nodepool_refusals_total", "counter",
             "Commands and messages refused, by where and why.");
  for (auto& [code, n] : refusals.items())
    out.sample("nodepool_refusals_total", {{"source", "pool"}, {"code", code}},
               n.is_number() ? n.get<double>() : 0);
  for (auto& [code, n] : gw_refused.items())
    out.sample("nodepool_refusals_total",
               {{"source", "gateway"}, {"code", code}},
               n.is_number() ? n.get<double>() : 0);
  if (gw.contains("connected")) {
    out.single("nodepool_miners_connected", "gauge",
               "Nodes whose miner is connected to this oracle.",
               num(gw, "connected"));
  }
  if (sup.contains("mailbox")) {
    out.single("nodepool_supervisor_mailbox_messages", "gauge",
               "Messages waiting in the pool supervisor's mailbox when it "
               "answered this scrape (commands, answers, timers).",
               num(sup, "mailbox"));
  }
  if (sup.contains("snapshots_deferred")) {
    out.single("nodepool_snapshots_deferred_total", "counter",
               "Snapshots put off because the writer was still on the one "
               "before (a single oracle; the log keeps every entry since).",
               num(sup, "snapshots_deferred"));
  }
  auto hs = sup.value("histograms", json::object());
  histogram h;
  if (h.from_json(hs.value("grant_latency_ms", json{})))
    out.histogram("nodepool_grant_latency_seconds",
                  "Wait of a session from its submission to its nodes' "
                  "reservation.",
                  h, 1e-3);
  if (h.from_json(hs.value("group_commit_commands", json{})))
    out.histogram("nodepool_group_commit_commands",
                  "Commands per group commit (one log write or Raft entry).",
                  h);
  if (h.from_json(hs.value("commit_latency_ms", json{})))
    out.histogram("nodepool_commit_latency_seconds",
                  "Time to make a group commit durable: the fsync, or on a "
                  "cluster the proposal until a majority holds it.",
                  h, 1e-3);
  if (h.from_json(hs.value("snapshot_copy_ms", json{})))
    out.histogram("nodepool_snapshot_copy_seconds",
                  "Time the supervisor stops for a snapshot: its copy of the "
                  "live records (the rest is done on a writer thread).",
                  h, 1e-3);
  auto cl = pool.value("cluster", json::object());
  if (cl.is_object() && cl.value("role", std::string{"single"}) != "single"
      && cl.contains("term")) {
    out.single("nodepool_raft_term", "gauge", "The Raft term this member is in.",
               num(cl, "term"));
    out.single("nodepool_raft_commit_index", "gauge",
               "The last log index this member knows committed.",
               num(cl, "commit_index"));
    out.single("nodepool_raft_applied_index", "gauge",
               "The last log index applied to this member's replica.",
               num(cl, "applied_index"));
    out.single("nodepool_raft_leader_id", "gauge",
               "The member this one follows as leader (0: none known).",
               num(cl, "leader_id"));
    out.single("nodepool_raft_is_leader", "gauge",
               "1 on the member that leads, else 0.",
               cl.value("role", std::string{}) == "leader" ? 1 : 0);
    out.family("nodepool_raft_refused_total", "counter",
               "Raft messages refused before libraft saw them: from a "
               "server not in the configuration (peer), or a snapshot that "
               "did not decode or broke an invariant (snapshot).");
    out.sample("nodepool_raft_refused_total", {{"what", "peer"}},
               num(cl, "refused_peers"));
    out.sample("nodepool_raft_refused_total", {{"what", "snapshot"}},
               num(cl, "snapshots_refused"));
    auto guard = cl.value("raft_guard", json::object());
    if (guard.is_object() && !guard.empty()) {
      out.family("nodepool_raft_guard_total", "counter",
                 "What the guard of libraft 0.15's holes did, by action "
                 "(README, \"Replicated with Raft\").");
      for (auto& [action, n] : guard.items())
        out.sample("nodepool_raft_guard_total", {{"action", action}},
                   n.is_number() ? n.get<double>() : 0);
    }
  }
  out.family("nodepool_http_requests_total", "counter",
             "HTTP requests answered, by route and status.");
  for (auto& [k, n] : responses)
    out.sample("nodepool_http_requests_total",
               {{"route", k.first}, {"status", std::to_string(k.second)}},
               static_cast<double>(n));
  out.single("nodepool_event_streams", "gauge",
             "Live event streams open (GET /api/v1/events).",
             static_cast<double>(figures.event_streams));
  if (auto& s = figures.server) {
    out.single("nodepool_http_accept_errors_total", "counter",
               "Connections the HTTP server failed to accept (out of file "
               "descriptors, say); it tries again 100 ms later.",
               static_cast<double>(s->accept_errors));
    out.single("nodepool_http_connections", "gauge",
               "HTTP connections open (WebSockets included).",
               static_cast<double>(s->open));
    out.single("nodepool_http_connections_refused_total", "counter",
               "HTTP connections turned away because the most allowed were "
               "open (--http-max-connections).",
               static_cast<double>(s->over_capacity));
    out.single("nodepool_http_requests_abandoned_total", "counter",
               "HTTP requests whose client left before the answer began.",
               static_cast<double>(s->abandoned));
  }
  out.single("nodepool_connections_shed_total", "counter",
             "Connections of miners and clients closed as soon as they were "
             "accepted, for want of file descriptors.",
             static_cast<double>(figures.connections_shed));
  out.single("nodepool_connections_silent_closed_total", "counter",
             "Connections of miners and clients shut down because their peer "
             "sent nothing within 10 s of connecting.",
             static_cast<double>(figures.connections_silent_closed));
  if (figures.max_fds > 0) {
    out.family("process_open_fds", "gauge", "Open file descriptors.");
    out.sample("process_open_fds", {}, static_cast<double>(figures.open_fds));
    out.family("process_max_fds", "gauge", "The limit of open file descriptors.");
    out.sample("process_max_fds", {}, static_cast<double>(figures.max_fds));
  }
  return out.str();
}

void router::get_models(const std::shared_ptr<call>& c) {
  live_models(*pool_, [c](std::vector<std::string> models,
                          std::optional<api_error> err) {
    if (err)
      return send_error(c->rep, *err);
    json data = json::array();
    for (auto& m : models)
      data.push_back({{"id", m}, {"object", "model"}, {"created", 0},
                      {"owned_by", "nodepool"}});
    c->rep->send(json_response(200, {{"object", "list"}, {"data", data}}));
  });
}

void router::post_openai(const std::shared_ptr<call>& c, bool chat) {
  api_error e;
  auto j = parse_body(c->req.body, e);
  if (!j)
    return send_bad(c->rep, e);
  std::string model;
  bool stream = false;
  if (!field(*j, "model", model, e, "a string")
      || !field(*j, "stream", stream, e, "true or false"))
    return send_bad(c->rep, e);
  if (model.empty())
    return send_bad(c->rep, {"bad_field", "model: required"});
  if (model.size() > bounds::model)
    return send_bad(c->rep, {"bad_field", bounds::at_most("model", bounds::model)});
  // The prompt: a completion's `prompt`, or the chat's messages in order.
  auto body = *j;
  if (chat) {
    auto m = j->find("messages");
    if (m == j->end() || !m->is_array() || m->empty())
      return send_bad(c->rep, {"bad_field", "messages: required, a non-empty "
                                            "array of {role, content}"});
    std::string text;
    for (auto& msg : *m) {
      if (!msg.is_object() || !msg.contains("role") || !msg["role"].is_string()
          || !msg.contains("content") || !msg["content"].is_string())
        return send_bad(c->rep, {"bad_field", "messages: each needs a string "
                                              "role and a string content"});
      if (m->size() == 1)
        text = msg["content"].get<std::string>();
      else
        text += msg["role"].get<std::string>() + ": "
                + msg["content"].get<std::string>() + "\n";
    }
    body["prompt"] = text;
  } else if (j->contains("prompt") && (*j)["prompt"].is_array()) {
    auto& arr = (*j)["prompt"];
    if (arr.size() != 1 || !arr[0].is_string())
      return send_bad(c->rep, {"bad_field", "prompt: one string (batches of "
                                            "prompts are not served)"});
    body["prompt"] = arr[0];
  }
  // OpenAI's `timeout` is the client's; ours is the server default.
  body.erase("timeout");
  auto p = prompt_from_json(body, cfg_.default_timeout_ms, cfg_.max_timeout_ms, e);
  if (!p)
    return send_bad(c->rep, e);
  // An ephemeral session for this one request.
  pb::SubmitSession s;
  {
    std::lock_guard<std::mutex> g{mu_};
    ++stats_.completions;
  }
  s.set_session_id((chat ? "chat-" : "cmpl-") + random_api_key().substr(3, 24));
  s.set_model(model);
  s.set_redundancy(cfg_.ephemeral_redundancy);
  if (cfg_.ephemeral_redundancy > 0)
    s.set_max_nodes(cfg_.ephemeral_redundancy);
  s.set_max_tasks(1);
  s.set_interactive(true);
  s.set_client("openai:" + c->key_name);
  p->set_session_id(s.session_id());
  p->set_ends_session(true);
  auto req = *p;
  pool_->submit(s, [this, c, req, chat, stream](std::optional<api_error> err) {
    if (err)
      return send_error(c->rep, *err);
    pool_->prompt(req, [this, c, req, chat, stream](pb::PromptAnswer ans,
                                                    std::optional<api_error> err) {
      if (err) {
        // The session was opened for this prompt alone. Past a timeout the
        // oracle ends it itself; any other refusal (too many prompts
        // waiting, a leader that stepped down) leaves it open, holding
        // nodes for a prompt that will not come: ended here. If it already
        // ended, the pool refuses this, which changes nothing.
        if (err->code != "timeout" && err->code != "session_ended") {
          pb::Command end;
          auto* x = end.mutable_end_session();
          x->set_session_id(req.session_id());
          x->set_failed(true);
          x->set_reason("its only prompt was refused (" + err->code + ")");
          pool_->command(end, [](std::optional<api_error>) {});
        }
        return send_error(c->rep, *err);
      }
      remember(ans, req.prompt());
      auto id = std::string{chat ? "chatcmpl-" : "cmpl-"} + ans.session_id();
      if (stream)
        return send_stream(c->rep, completion_chunks(id, ans, chat));
      c->rep->send(json_response(200, completion_json(id, ans, req.prompt(), chat)));
    });
  });
}

void router::websocket(const std::shared_ptr<call>& c) {
  if (!c->req.websocket)
    return c->rep->send(error_response(400, "bad_request",
                                       "this route needs a WebSocket upgrade"));
  // Each message is a completion request ({session_id, prompt, ...});
  // the answer comes back as chunk messages, then "[DONE]", or as one
  // {"error": ...} message.
  // The callback holds the reply while the socket is open (the server
  // drops the callback when it closes).
  auto rep = c->rep;
  std::weak_ptr<reply> weak = rep;
  rep->accept_websocket([this, rep, weak](std::string text) {
    api_error e;
    auto j = parse_body(text, e);
    std::optional<pb::PromptRequest> p;
    if (j)
      p = prompt_from_json(*j, cfg_.default_timeout_ms, cfg_.max_timeout_ms, e);
    if (p && p->session_id().empty())
      e = {"bad_field", "session_id: required"}, p.reset();
    if (!p) {
      rep->chunk(json{{"error", {{"code", e.code}, {"message", e.message}}}}.dump(-1, ' ', false, json::error_handler_t::replace));
      return;
    }
    prompt_known_session(*p, [this, weak, req = *p](pb::PromptAnswer ans,
                                                    std::optional<api_error> err) {
      auto rep = weak.lock();
      if (!rep)
        return;
      if (err) {
        rep->chunk(json{{"error", {{"code", err->code}, {"message", err->message}}}}.dump(-1, ' ', false, json::error_handler_t::replace));
        return;
      }
      remember(ans, req.prompt());
      auto id = "cmpl-" + ans.session_id() + "-" + std::to_string(ans.task_no());
      for (auto& chunk : completion_chunks(id, ans, false))
        rep->chunk(chunk.dump(-1, ' ', false, json::error_handler_t::replace));
      rep->chunk("[DONE]");
    });
  });
}

} // namespace nodepool::http
