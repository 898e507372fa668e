// The HTTP API's router without sockets: requests go in, the replies are
// captured, and the pool behind it is a fake that records what it was asked.
#include <gtest/gtest.h>

#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "http/api_keys.hpp"
#include "http/router.hpp"
#include "metrics.hpp"

using namespace nodepool;
using namespace nodepool::http;
using nlohmann::json;

namespace {

/// A reply that keeps what the router answered.
struct captured : reply {
  response whole;
  bool sent = false;
  bool streamed = false;
  bool ended = false;
  std::vector<std::string> chunks;
  std::function<void(std::string)> ws;
  void send(response r) override {
    EXPECT_FALSE(sent) << "answered twice";
    whole = std::move(r);
    sent = true;
  }
  void begin_stream(response head) override {
    whole = std::move(head);
    sent = streamed = true;
  }
  void chunk(std::string d) override { chunks.push_back(std::move(d)); }
  void end() override { ended = true; }
  void accept_websocket(std::function<void(std::string)> f) override {
    ws = std::move(f);
  }
  json body() const { return json::parse(whole.body); }
};

/// The pool as the tests want it: one node, sessions by id, and answers
/// chosen per test.
struct fake_pool : pool_api {
  pb::Snapshot snap;
  json view = {{"role", "single"}, {"applied_index", 42}};
  std::map<std::string, pb::SessionRecord> sessions;
  std::vector<pb::SubmitSession> submitted;
  std::vector<pb::PromptRequest> prompts;
  std::vector<pb::Command> commands;
  std::optional<api_error> refuse_submit, refuse_prompt, refuse_state,
    refuse_command;
  std::string output = "forty two";

  fake_pool() {
    auto* n = snap.add_nodes();
    n->set_id("n1");
    n->set_state(pb::EPHEMERAL);
    n->add_models("llama");
    n->set_reputation(0.9);
    auto* s = snap.add_sessions();
    s->set_id("live");
    s->set_state(pb::ACTIVE);
    s->set_model("llama");
    sessions["live"] = *s;
    pb::SessionRecord done;
    done.set_id("old");
    done.set_state(pb::COMPLETED);
    sessions["old"] = done;
  }
  json seen = {{"n1", 1700000000123}};
  std::optional<api_error> refuse_seen;
  std::vector<pb::StateQuery> reads;     // every bounded read asked
  std::vector<std::string> seen_asked;    // the ids last_seen was asked
  void read(const pb::StateQuery& q, page_cb cb) override {
    reads.push_back(q);
    pool_api::read(q, std::move(cb));
  }
  void last_seen(const std::vector<std::string>& ids, json_cb cb) override {
    seen_asked.insert(seen_asked.end(), ids.begin(), ids.end());
    if (refuse_seen)
      return cb({}, refuse_seen);
    cb(seen, std::nullopt);
  }
  void state(state_cb cb) override {
    if (refuse_state)
      return cb(std::nullopt, {}, refuse_state);
    cb(snap, view, std::nullopt);
  }
  void archive(const pb::ArchiveQuery& q, archive_cb cb) override {
    pb::ArchiveAnswer a;
    if (auto i = sessions.find(q.id()); i != sessions.end())
      *a.add_sessions() = i->second;
    cb(a, std::nullopt);
  }
  void submit(const pb::SubmitSession& s, done_cb cb) override {
    submitted.push_back(s);
    if (!refuse_submit) {
      pb::SessionRecord r;
      r.set_id(s.session_id());
      r.set_state(pb::QUEUED);
      sessions[s.session_id()] = r;
    }
    cb(refuse_submit);
  }
  void prompt(const pb::PromptRequest& p, prompt_cb cb) override {
    prompts.push_back(p);
    if (refuse_prompt)
      return cb({}, refuse_prompt);
    pb::PromptAnswer a;
    a.set_session_id(p.session_id());
    a.set_output(output);
    a.set_model("llama");
    a.set_nodes(3);
    a.set_agreeing(2);
    cb(a, std::nullopt);
  }
  void command(const pb::Command& c, done_cb cb) override {
    commands.push_back(c);
    cb(refuse_command);
  }
  void snapshot(index_cb cb) override { cb(7, std::nullopt); }
};

const std::string client_key = "client-key-0123456789";
const std::string admin_key = "admin-key-0123456789ab";

struct api : ::testing::Test {
  std::shared_ptr<fake_pool> pool = std::make_shared<fake_pool>();
  router_config cfg;
  std::unique_ptr<router> r;

  void make(bool keys = true) {
    if (keys)
      cfg.keys = api_keys::parse(client_key + " client\n" + admin_key
                                   + " admin # the operator\n",
                                 "keys");
    r = std::make_unique<router>(cfg, pool);
  }
  std::shared_ptr<captured> call(const std::string& method,
                                 const std::string& path,
                                 const std::string& body = "",
                                 const std::string& key = client_key) {
    if (!r)
      make();
    request q;
    q.method = method;
    q.target = path;
    EXPECT_TRUE(split_target(path, q)) << path;
    q.body = body;
    if (!key.empty())
      q.headers["authorization"] = "Bearer " + key;
    auto rep = std::make_shared<captured>();
    r->handle(q, rep);
    EXPECT_TRUE(rep->sent || rep->ws) << method << " " << path << " unanswered";
    return rep;
  }
};

void expect_error(const captured& c, int status, const std::string& code) {
  EXPECT_EQ(c.whole.status, status) << c.whole.body;
  auto j = json::parse(c.whole.body, nullptr, false);
  ASSERT_TRUE(j.is_object()) << c.whole.body;
  EXPECT_EQ(j["error"]["code"], code) << c.whole.body;
  EXPECT_TRUE(j["error"]["message"].is_string());
}

} // namespace

// -- keys ----------------------------------------------------------------------

TEST(ApiKeys, FileHasKeysRolesAndComments) {
  auto k = api_keys::parse("# operators\n\n" + admin_key + " admin\n  " + client_key
                             + "   client   # app\n",
                           "f");
  EXPECT_EQ(k.size(), 2u);
  EXPECT_EQ(k.check(admin_key), role::admin);
  EXPECT_EQ(k.check(client_key), role::client);
  EXPECT_FALSE(k.check(client_key + "x"));
  EXPECT_FALSE(k.check(""));
  EXPECT_NE(api_keys::fingerprint(admin_key), api_keys::fingerprint(client_key));
  EXPECT_EQ(api_keys::fingerprint(admin_key).size(), 8u);
}

TEST(ApiKeys, BadLinesAreNamed) {
  try {
    api_keys::parse("# ok\n" + client_key + " root\n", "keys.txt");
    FAIL() << "a bad role was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string{e.what()}.find("keys.txt:2"), std::string::npos) << e.what();
  }
  EXPECT_THROW(api_keys::parse(client_key + "\n", "k"), std::runtime_error);
  EXPECT_THROW(api_keys::parse("short admin\n", "k"), std::runtime_error);
  EXPECT_THROW(api_keys::parse(client_key + " client extra\n", "k"),
               std::runtime_error);
}

TEST(ApiKeys, RandomKeysDiffer) {
  auto a = random_api_key(), b = random_api_key();
  EXPECT_NE(a, b);
  EXPECT_EQ(a.size(), 3u + 64u);
  auto k = api_keys::parse(a + " client\n", "k");
  EXPECT_TRUE(k.check(a));
}

TEST(RateLimiter, RefusesOverTheRateAndRefills) {
  rate_limiter l(1.0, 2.0);
  auto t = std::chrono::steady_clock::time_point{} + std::chrono::hours(1);
  EXPECT_TRUE(l.allow("k", t));
  EXPECT_TRUE(l.allow("k", t));
  EXPECT_FALSE(l.allow("k", t));
  EXPECT_TRUE(l.allow("other", t));  // per key
  EXPECT_TRUE(l.allow("k", t + std::chrono::milliseconds(1001)));
  EXPECT_FALSE(l.allow("k", t + std::chrono::milliseconds(1001)));
}

// -- auth ------------------------------------------------------------------------

TEST_F(api, MissingOrWrongKeyIs401WithChallenge) {
  for (auto key : {std::string{}, std::string{"wrong-key-0123456789"}}) {
    auto c = call("GET", "/api/v1/status", "", key);
    expect_error(*c, 401, "unauthorized");
    bool challenge = false;
    for (auto& [k, v] : c->whole.headers)
      challenge |= k == "WWW-Authenticate" && v.rfind("Bearer", 0) == 0;
    EXPECT_TRUE(challenge);
  }
  EXPECT_EQ(r->stats().unauthorized, 2u);
}

TEST_F(api, ClientKeyOnAdminRouteIs403) {
  auto c = call("POST", "/api/v1/admin/miners/n1/drain", "", client_key);
  expect_error(*c, 403, "forbidden");
  EXPECT_TRUE(pool->commands.empty());
  c = call("POST", "/api/v1/admin/miners/n1/drain", "", admin_key);
  EXPECT_EQ(c->whole.status, 200) << c->whole.body;
  ASSERT_EQ(pool->commands.size(), 1u);
  EXPECT_EQ(pool->commands[0].admin_node().node_id(), "n1");
  EXPECT_EQ(pool->commands[0].admin_node().action(), pb::DRAIN);
}

TEST_F(api, WithoutKeysEveryoneIsAdmin) {
  make(false);
  auto c = call("POST", "/api/v1/admin/sessions/live/end", R"({"failed":true})", "");
  EXPECT_EQ(c->whole.status, 200) << c->whole.body;
  ASSERT_EQ(pool->commands.size(), 1u);
  EXPECT_TRUE(pool->commands[0].end_session().failed());
}

// Without keys, a browser on the operator's host must not be a way in: a
// page of another site (Origin) or a name rebound to loopback (Host) is
// refused, and nothing is done; the API's own pages and local clients are
// served.
TEST_F(api, WithoutKeysOnlyThisHostsOwnClientsAreServed) {
  make(false);
  auto send = [&](const std::string& host, const std::string& origin) {
    request q;
    q.method = "POST";
    q.target = q.path = "/api/v1/admin/sessions/live/end";
    if (!host.empty())
      q.headers["host"] = host;
    if (!origin.empty())
      q.headers["origin"] = origin;
    auto rep = std::make_shared<captured>();
    r->handle(q, rep);
    EXPECT_TRUE(rep->sent);
    return rep;
  };
  expect_error(*send("127.0.0.1:5010", "https://evil.example"), 403, "cross_origin");
  expect_error(*send("127.0.0.1:5010", "null"), 403, "cross_origin");
  expect_error(*send("evil.example:5010", ""), 403, "cross_origin");
  expect_error(*send("evil.example:5010", "http://evil.example:5010"), 403,
               "cross_origin");
  EXPECT_TRUE(pool->commands.empty());
  EXPECT_EQ(r->stats().unauthorized, 4u);
  EXPECT_EQ(send("127.0.0.1:5010", "http://127.0.0.1:5010")->whole.status, 200);
  EXPECT_EQ(send("localhost:5010", "")->whole.status, 200);
  EXPECT_EQ(send("[::1]:5010", "")->whole.status, 200);
  EXPECT_EQ(pool->commands.size(), 3u);
}

TEST_F(api, RateLimitIs429) {
  cfg.rate_per_key = 0.001;
  cfg.rate_burst = 2;
  make();
  EXPECT_EQ(call("GET", "/api/v1/info")->whole.status, 200);
  EXPECT_EQ(call("GET", "/api/v1/info")->whole.status, 200);
  expect_error(*call("GET", "/api/v1/info"), 429, "rate_limited");
  EXPECT_EQ(call("GET", "/api/v1/info", "", admin_key)->whole.status, 200);
  EXPECT_EQ(r->stats().rate_limited, 1u);
}

// -- routes and errors -------------------------------------------------------------

TEST_F(api, UnknownPathIs404AndWrongMethodIs405) {
  expect_error(*call("GET", "/api/v1/nothing"), 404, "not_found");
  expect_error(*call("GET", "/api/v2/status"), 404, "not_found");
  // Bytes that are not UTF-8 in the path still get a JSON answer (found by
  // fuzz_http: the error message quotes the path).
  expect_error(*call("GET", "/api\xcav1/status"), 404, "not_found");
  auto c = call("DELETE", "/api/v1/status");
  expect_error(*c, 405, "method_not_allowed");
  bool allow = false;
  for (auto& [k, v] : c->whole.headers)
    allow |= k == "Allow" && v == "GET";
  EXPECT_TRUE(allow);
  expect_error(*call("GET", "/v1/chat/completions"), 405, "method_not_allowed");
}

TEST_F(api, StatusCountsNodesAndSaysWhatIndexItReflects) {
  auto c = call("GET", "/api/v1/status");
  ASSERT_EQ(c->whole.status, 200);
  auto j = c->body();
  EXPECT_EQ(j["nodes"]["total"], 1);
  EXPECT_EQ(j["nodes"]["by_state"]["ephemeral"], 1);
  EXPECT_EQ(j["nodes"]["by_state"]["reserved"], 0);
  EXPECT_EQ(j["sessions"]["active"], 1);
  EXPECT_EQ(j["applied_index"], 42);
  EXPECT_EQ(j["index"], 42);
  bool header = false;
  for (auto& [k, v] : c->whole.headers)
    header |= k == "X-Nodepool-Index" && v == "42";
  EXPECT_TRUE(header);
}

TEST_F(api, StatusCountsTheTestsSentAndThoseWaiting) {
  auto add = [&](const char* id, int64_t deadline) {
    auto* n = pool->snap.add_nodes();
    n->set_id(id);
    n->set_state(pb::TESTING);
    n->set_test_id(id[1]);
    n->set_test_deadline(deadline);  // 0: not sent yet
  };
  add("t1", 5000);
  add("t2", 0);
  add("t3", 0);
  auto j = call("GET", "/api/v1/status")->body();
  EXPECT_EQ(j["tests"]["in_flight"], 1) << j.dump();
  EXPECT_EQ(j["tests"]["waiting"], 2) << j.dump();
  EXPECT_EQ(j["nodes"]["by_state"]["testing"], 3);
}

TEST_F(api, NoLeaderIs503) {
  pool->refuse_state = api_error{"not_leader", "no leader known"};
  expect_error(*call("GET", "/api/v1/status"), 503, "not_leader");
  pool->refuse_submit = api_error{"not_leader", "leader is 2"};
  expect_error(*call("POST", "/api/v1/sessions", R"({"model":"llama"})"), 503,
               "not_leader");
}

TEST_F(api, MinersAndModels) {
  auto j = call("GET", "/api/v1/miners")->body();
  ASSERT_EQ(j["miners"].size(), 1u);
  EXPECT_EQ(j["miners"][0]["node_id"], "n1");
  EXPECT_EQ(j["miners"][0]["state"], "ephemeral");
  EXPECT_EQ(j["miners"][0]["models"][0], "llama");
  auto m = call("GET", "/v1/models")->body();
  EXPECT_EQ(m["object"], "list");
  ASSERT_EQ(m["data"].size(), 1u);
  EXPECT_EQ(m["data"][0]["id"], "llama");
  // A retired node's models are on offer in neither list.
  auto* gone = pool->snap.add_nodes();
  gone->set_id("n2");
  gone->set_state(pb::RETIRED);
  gone->add_models("only-on-a-retired-node");
  EXPECT_EQ(call("GET", "/v1/models")->body()["data"].size(), 1u);
  EXPECT_EQ(call("GET", "/api/v1/info")->body()["models"],
            nlohmann::json::array({"llama"}));
}

TEST_F(api, MinersSayWhenTheLeaderLastHeardFromEach) {
  auto* gone = pool->snap.add_nodes();
  gone->set_id("n2");
  gone->set_state(pb::RETIRED);
  auto j = call("GET", "/api/v1/miners")->body();
  ASSERT_EQ(j["miners"].size(), 2u);
  EXPECT_EQ(j["miners"][0]["last_seen"], 1700000000123) << j.dump();
  // Not connected to the leader: no time at all, rather than a stale one.
  EXPECT_FALSE(j["miners"][1].contains("last_seen")) << j.dump();
  EXPECT_FALSE(j.contains("last_seen_unavailable")) << j.dump();
  // The leader cannot be asked (an election): the list is still served,
  // and says why it has no times.
  pool->refuse_seen = api_error{"not_leader", "no leader is known yet"};
  auto c = call("GET", "/api/v1/miners");
  ASSERT_EQ(c->whole.status, 200) << c->whole.body;
  j = c->body();
  ASSERT_EQ(j["miners"].size(), 2u);
  EXPECT_FALSE(j["miners"][0].contains("last_seen")) << j.dump();
  EXPECT_EQ(j["last_seen_unavailable"], "not_leader: no leader is known yet");
}

// The lists are read a page at a time: the page the client asked for, or
// the whole list in pages of at most 1000, so that no read stops the pool
// for all of it.
TEST_F(api, ListsAreReadPageByPage) {
  pool->snap.clear_nodes();
  for (int i = 0; i < 2500; ++i) {
    auto* n = pool->snap.add_nodes();
    char id[16];
    std::snprintf(id, sizeof id, "n%04d", 2499 - i);  // not in id order
    n->set_id(id);
    n->set_state(pb::EPHEMERAL);
    n->add_models("llama");
  }
  auto j = call("GET", "/api/v1/miners")->body();
  ASSERT_EQ(j["miners"].size(), 2500u);
  EXPECT_EQ(j["more"], false);
  for (int i = 0; i < 2500; ++i) {
    char id[16];
    std::snprintf(id, sizeof id, "n%04d", i);
    ASSERT_EQ(j["miners"][i]["node_id"], id);
  }
  ASSERT_EQ(pool->reads.size(), 3u);
  for (auto& q : pool->reads) {
    EXPECT_EQ(q.what(), pb::StateQuery::NODES);
    EXPECT_EQ(q.limit(), 1000u);
  }
  EXPECT_EQ(pool->reads[1].after(), "n0999");
  EXPECT_EQ(pool->reads[2].after(), "n1999");
  EXPECT_EQ(pool->seen_asked.size(), 2500u);

  // One page, and the next after its last id.
  pool->reads.clear();
  pool->seen_asked.clear();
  j = call("GET", "/api/v1/miners?limit=2")->body();
  ASSERT_EQ(j["miners"].size(), 2u);
  EXPECT_EQ(j["miners"][1]["node_id"], "n0001");
  EXPECT_EQ(j["more"], true);
  EXPECT_EQ(pool->reads.size(), 1u);
  EXPECT_EQ(pool->seen_asked, (std::vector<std::string>{"n0000", "n0001"}));
  j = call("GET", "/api/v1/miners?limit=1000&after_id=n1999")->body();
  ASSERT_EQ(j["miners"].size(), 500u);
  EXPECT_EQ(j["miners"][0]["node_id"], "n2000");
  EXPECT_EQ(j["more"], false);

  // Live sessions the same way.
  for (auto id : {"b", "a", "c"}) {
    auto* s = pool->snap.add_sessions();
    s->set_id(id);
    s->set_state(pb::QUEUED);
  }
  j = call("GET", "/api/v1/sessions?limit=2&after_id=a")->body();
  ASSERT_EQ(j["sessions"].size(), 2u) << j.dump();
  EXPECT_EQ(j["sessions"][0]["session_id"], "b");
  EXPECT_EQ(j["sessions"][1]["session_id"], "c");
  EXPECT_EQ(j["more"], true);  // "live" is after "c"

  // A limit out of bounds is refused before anything is read.
  pool->reads.clear();
  for (auto bad : {"0", "1001", "ten", "5x", ""})
    for (auto route : {"/api/v1/miners", "/api/v1/sessions"}) {
      auto c = call("GET", std::string{route} + "?limit=" + bad);
      EXPECT_EQ(c->whole.status, 400) << route << " limit=" << bad;
      EXPECT_EQ(c->body()["error"]["code"], "bad_field") << c->whole.body;
    }
  EXPECT_TRUE(pool->reads.empty());
}

TEST_F(api, SessionsByIdAnd404) {
  auto c = call("GET", "/api/v1/sessions/live");
  ASSERT_EQ(c->whole.status, 200);
  EXPECT_EQ(c->body()["state"], "active");
  expect_error(*call("GET", "/api/v1/sessions/ghost"), 404, "unknown_session");
  expect_error(*call("GET", "/api/v1/tasks/ghost"), 404, "unknown_session");
  expect_error(*call("GET", "/api/v1/tasks/live/3"), 404, "not_found");
  expect_error(*call("GET", "/api/v1/sessions?since=x"), 400, "bad_field");
}

TEST_F(api, CreateSessionValidatesEveryField) {
  auto c = call("POST", "/api/v1/sessions",
                R"({"model":"llama","min_nodes":1,"max_nodes":3,"redundancy":3,
                    "sla":"high","reserve_period":60,"max_tasks":5,
                    "client_reference":"app-1"})");
  ASSERT_EQ(c->whole.status, 201) << c->whole.body;
  ASSERT_EQ(pool->submitted.size(), 1u);
  auto& s = pool->submitted[0];
  EXPECT_EQ(c->body()["session_id"], s.session_id());
  EXPECT_TRUE(s.interactive());
  EXPECT_EQ(s.min_level(), 2u);  // sla high
  EXPECT_EQ(s.reserve_period_ms(), 60000);
  EXPECT_EQ(s.max_tasks(), 5u);
  EXPECT_EQ(s.client(), "app-1");
  // /api/v1/create is the same.
  EXPECT_EQ(call("POST", "/api/v1/create", R"({"session_id":"mine"})")->whole.status,
            201);
  struct bad {
    const char* body;
    const char* field;
  };
  for (auto b : {bad{R"({"max_nodes":"three"})", "max_nodes"},
                 bad{R"({"max_nodes":65})", "max_nodes"},
                 bad{R"({"redundancy":-1})", "redundancy"},
                 bad{R"({"sla":"gold"})", "sla"},
                 bad{R"({"max_tasks":0})", "max_tasks"},
                 bad{R"({"reserve_period":1.5})", "reserve_period"},
                 bad{R"({"model":7})", "model"},
                 // Above INT64_MAX: wrapped, it read as -1 (the SLA's
                 // default level) and was taken.
                 bad{R"({"level":18446744073709551615})", "level"},
                 bad{R"({"max_tasks":9223372036854775808})", "max_tasks"},
                 bad{R"({"level":-9223372036854775808})", "level"}}) {
    auto e = call("POST", "/api/v1/sessions", b.body);
    expect_error(*e, 400, "bad_field");
    EXPECT_NE(e->body()["error"]["message"].get<std::string>().find(b.field),
              std::string::npos)
      << b.body << " -> " << e->whole.body;
  }
  expect_error(*call("POST", "/api/v1/sessions", "{nope"), 400, "bad_json");
  expect_error(*call("POST", "/api/v1/sessions", "[1,2]"), 400, "bad_json");
  expect_error(*call("POST", "/api/v1/sessions", ""), 400, "bad_json");
  EXPECT_EQ(pool->submitted.size(), 2u);  // nothing bad reached the pool
  // Each is counted, undecodable or not: 10 bad fields, 3 bad bodies.
  EXPECT_NE(call("GET", "/metrics")->whole.body.find(
              "nodepool_http_requests_total{route=\"/api/v1/sessions\","
              "status=\"400\"} 13\n"),
            std::string::npos);
  pool->refuse_submit = api_error{"queue_full", "1000000 sessions wait already"};
  expect_error(*call("POST", "/api/v1/sessions", R"({"session_id":"more"})"), 429,
               "queue_full");
  // An answer that came too late: the outcome is unknown, and the id the
  // oracle chose comes back so that the client can ask again with it.
  pool->refuse_submit = api_error{"timeout", "no answer within 60 s"};
  auto late = call("POST", "/api/v1/sessions", R"({"model":"llama"})");
  expect_error(*late, 504, "timeout");
  EXPECT_EQ(late->body()["error"]["session_id"], pool->submitted.back().session_id());
  pool->refuse_submit = api_error{"duplicate_session", "seen"};
  expect_error(*call("POST", "/api/v1/sessions", R"({"session_id":"mine"})"), 409,
               "duplicate_session");
}

TEST_F(api, CompletionIsTheAgreedOutputOpenAIStyle) {
  auto c = call("POST", "/api/v1/completions/live",
                R"({"prompt":"What is six times seven?","max_tokens":16,
                    "temperature":0,"timeout":5})");
  ASSERT_EQ(c->whole.status, 200) << c->whole.body;
  auto j = c->body();
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["choices"][0]["text"], "forty two");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(j["model"], "llama");
  EXPECT_EQ(j["usage"]["completion_tokens"], 2);
  EXPECT_EQ(j["usage"]["prompt_tokens"], 5);
  EXPECT_EQ(j["agreeing"], 2);
  ASSERT_EQ(pool->prompts.size(), 1u);
  EXPECT_EQ(pool->prompts[0].session_id(), "live");
  EXPECT_EQ(pool->prompts[0].timeout_ms(), 5000);
  EXPECT_EQ(pool->prompts[0].max_tokens(), 16u);
  // A timeout under a millisecond is one millisecond (0 would mean "the
  // default" further on).
  pool->prompts.clear();
  ASSERT_EQ(call("POST", "/api/v1/completions/live",
                 R"({"prompt":"quick","timeout":0.0004})")->whole.status,
            200);
  ASSERT_EQ(pool->prompts.size(), 1u);
  EXPECT_EQ(pool->prompts[0].timeout_ms(), 1);
  pool->prompts.clear();
  // The session id in the body works the same; the task is listed after.
  EXPECT_EQ(call("POST", "/api/v1/completions",
                 R"({"session_id":"live","prompt":"again"})")->whole.status,
            200);
  auto t = call("GET", "/api/v1/tasks/live")->body();
  EXPECT_EQ(t["tasks"].size(), 3u);
  EXPECT_EQ(t["tasks"][0]["output"], "forty two");
}

TEST_F(api, CompletionErrors) {
  expect_error(*call("POST", "/api/v1/completions/ghost", R"({"prompt":"x"})"),
               404, "unknown_session");
  expect_error(*call("POST", "/api/v1/completions/old", R"({"prompt":"x"})"),
               409, "session_ended");
  expect_error(*call("POST", "/api/v1/completions/live", R"({"prompt":""})"),
               400, "bad_field");
  expect_error(*call("POST", "/api/v1/completions/live",
                     R"({"prompt":"x","temperature":3})"),
               400, "bad_field");
  expect_error(*call("POST", "/api/v1/completions/live",
                     R"({"prompt":"x","timeout":100000})"),
               400, "bad_field");
  expect_error(*call("POST", "/api/v1/completions", R"({"prompt":"x"})"), 400,
               "bad_field");
  EXPECT_TRUE(pool->prompts.empty());
  pool->refuse_prompt = api_error{"timeout", "no answer within 5000 ms"};
  expect_error(*call("POST", "/api/v1/completions/live", R"({"prompt":"x"})"),
               504, "timeout");
  pool->refuse_prompt = api_error{"busy", "16 prompts waiting"};
  expect_error(*call("POST", "/api/v1/completions/live", R"({"prompt":"x"})"),
               429, "busy");
}

TEST_F(api, StreamIsServerSentEventsEndingWithDone) {
  pool->output = "the answer is forty two";
  auto c = call("POST", "/api/v1/completions/live",
                R"({"prompt":"q","stream":true})");
  ASSERT_TRUE(c->streamed);
  EXPECT_EQ(c->whole.content_type, "text/event-stream");
  ASSERT_GE(c->chunks.size(), 3u);
  EXPECT_EQ(c->chunks.back(), "data: [DONE]\n\n");
  EXPECT_TRUE(c->ended);
  std::string text;
  for (size_t i = 0; i + 1 < c->chunks.size(); ++i) {
    auto& ch = c->chunks[i];
    ASSERT_EQ(ch.rfind("data: ", 0), 0u) << ch;
    auto j = json::parse(ch.substr(6));
    text += j["choices"][0]["text"].get<std::string>();
  }
  EXPECT_EQ(text, "the answer is forty two");
}

TEST_F(api, ChatCompletionOpensAnEphemeralSession) {
  cfg.ephemeral_redundancy = 3;
  make();
  auto c = call("POST", "/v1/chat/completions",
                R"({"model":"llama","messages":[{"role":"user","content":"hi"}]})");
  ASSERT_EQ(c->whole.status, 200) << c->whole.body;
  auto j = c->body();
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["message"]["content"], "forty two");
  ASSERT_EQ(pool->submitted.size(), 1u);
  auto& s = pool->submitted[0];
  EXPECT_EQ(s.max_tasks(), 1u);  // closed after the answer
  EXPECT_EQ(s.redundancy(), 3u);
  EXPECT_EQ(s.model(), "llama");
  EXPECT_TRUE(s.interactive());
  ASSERT_EQ(pool->prompts.size(), 1u);
  EXPECT_EQ(pool->prompts[0].session_id(), s.session_id());
  EXPECT_EQ(pool->prompts[0].prompt(), "hi");
  expect_error(*call("POST", "/v1/chat/completions", R"({"model":"llama"})"), 400,
               "bad_field");
  expect_error(*call("POST", "/v1/chat/completions",
                     R"({"messages":[{"role":"user","content":"hi"}]})"),
               400, "bad_field");
  // The model's name goes to the log, the record and the archive: bounded
  // here as on /api/v1/sessions.
  // A prompt refused after its session was opened: the session, opened
  // for it alone, is ended (a timeout the oracle ends itself).
  auto commands = pool->commands.size();
  pool->refuse_prompt = api_error{"busy", "4096 prompts waiting"};
  expect_error(*call("POST", "/v1/chat/completions",
                     R"({"model":"llama","messages":[{"role":"user","content":"hi"}]})"),
               429, "busy");
  ASSERT_EQ(pool->commands.size(), commands + 1);
  auto& end = pool->commands.back();
  ASSERT_TRUE(end.has_end_session());
  EXPECT_EQ(end.end_session().session_id(), pool->submitted.back().session_id());
  EXPECT_TRUE(end.end_session().failed());
  pool->refuse_prompt = api_error{"timeout", "no answer within 5000 ms"};
  expect_error(*call("POST", "/v1/chat/completions",
                     R"({"model":"llama","messages":[{"role":"user","content":"hi"}]})"),
               504, "timeout");
  EXPECT_EQ(pool->commands.size(), commands + 1);
  pool->refuse_prompt.reset();
  auto submitted = pool->submitted.size();
  expect_error(*call("POST", "/v1/chat/completions",
                     R"({"model":")" + std::string(129, 'm')
                       + R"(","messages":[{"role":"user","content":"hi"}]})"),
               400, "bad_field");
  EXPECT_EQ(pool->submitted.size(), submitted);
  // Streamed: a role chunk, content chunks, a stop chunk, [DONE].
  auto st = call("POST", "/v1/chat/completions",
                 R"({"model":"llama","stream":true,
                     "messages":[{"role":"system","content":"be brief"},
                                 {"role":"user","content":"hi"}]})");
  ASSERT_TRUE(st->streamed);
  EXPECT_EQ(pool->prompts.back().prompt(), "system: be brief\nuser: hi\n");
  auto first = json::parse(st->chunks.front().substr(6));
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  auto last = json::parse(st->chunks[st->chunks.size() - 2].substr(6));
  EXPECT_EQ(last["choices"][0]["finish_reason"], "stop");
}

TEST_F(api, WebSocketAnswersEachMessage) {
  request q;
  q.method = "GET";
  q.path = q.target = "/api/v1/ws";
  q.websocket = true;
  q.headers["authorization"] = "Bearer " + client_key;
  make();
  auto rep = std::make_shared<captured>();
  r->handle(q, rep);
  ASSERT_TRUE(rep->ws);
  rep->ws(R"({"session_id":"live","prompt":"q"})");
  ASSERT_FALSE(rep->chunks.empty());
  EXPECT_EQ(rep->chunks.back(), "[DONE]");
  rep->chunks.clear();
  rep->ws("not json");
  ASSERT_EQ(rep->chunks.size(), 1u);
  EXPECT_EQ(json::parse(rep->chunks[0])["error"]["code"], "bad_json");
  // Without the upgrade it is a plain 400.
  auto c = call("GET", "/api/v1/ws");
  expect_error(*c, 400, "bad_request");
}

TEST_F(api, AdminRoutes) {
  auto c = call("POST", "/api/v1/admin/snapshot", "", admin_key);
  EXPECT_EQ(c->body()["snapshot_index"], 7);
  expect_error(*call("POST", "/api/v1/admin/miners/n1/explode", "", admin_key), 404,
               "not_found");
  expect_error(*call("GET", "/api/v1/admin/snapshot", "", admin_key), 405,
               "method_not_allowed");
  c = call("POST", "/api/v1/admin/miners/n1/retire", R"({"reason":"bad GPU"})",
           admin_key);
  ASSERT_EQ(c->whole.status, 200);
  EXPECT_EQ(pool->commands.back().admin_node().action(), pb::RETIRE);
  EXPECT_EQ(pool->commands.back().admin_node().reason(), "bad GPU");
  // An id the pool could never hold is refused here, and no command goes.
  auto sent = pool->commands.size();
  expect_error(*call("POST", "/api/v1/admin/miners/bad%FFid/drain", "", admin_key),
               400, "bad_node_id");
  expect_error(*call("POST", "/api/v1/admin/sessions/a%20b/end", "", admin_key),
               400, "bad_session_id");
  EXPECT_EQ(pool->commands.size(), sent);
}

TEST(HttpStatus, RefusalCodesMapToStatuses) {
  EXPECT_EQ(status_for("unknown_session"), 404);
  EXPECT_EQ(status_for("not_leader"), 503);
  EXPECT_EQ(status_for("timeout"), 504);
  EXPECT_EQ(status_for("busy"), 429);
  EXPECT_EQ(status_for("duplicate_session"), 409);
  EXPECT_EQ(status_for("bad_session_shape"), 400);
  EXPECT_EQ(status_for("something_new"), 500);
}

TEST_F(api, TasksKeptAreTheMostRecentAndBounded) {
  cfg.tasks_kept_per_session = 2;
  cfg.tasks_kept_sessions = 1;
  make();
  for (auto p : {"first", "second", "third"})
    ASSERT_EQ(call("POST", "/api/v1/completions/live",
                   json{{"prompt", p}}.dump())->whole.status, 200);
  auto t = call("GET", "/api/v1/tasks/live")->body();
  ASSERT_EQ(t["tasks"].size(), 2u) << t.dump();
  EXPECT_EQ(t["tasks"][0]["prompt"], "second");
  EXPECT_EQ(t["tasks"][1]["prompt"], "third");
  // Another session's answers push the oldest session's out.
  pool->sessions["other"] = pool->sessions["live"];
  pool->sessions["other"].set_id("other");
  ASSERT_EQ(call("POST", "/api/v1/completions/other", R"({"prompt":"x"})")->whole.status,
            200);
  EXPECT_TRUE(call("GET", "/api/v1/tasks/live")->body()["tasks"].empty());
}

TEST_F(api, AFollowerSendsOperatorsToTheLeader) {
  pool->refuse_command = api_error{"not_leader", "the leader is member 2", "10.0.0.2:5010"};
  auto c = call("POST", "/api/v1/admin/miners/n1/retire?x=1", "", admin_key);
  EXPECT_EQ(c->whole.status, 307) << c->whole.body;
  std::string location;
  for (auto& [k, v] : c->whole.headers)
    if (k == "Location")
      location = v;
  EXPECT_EQ(location, "http://10.0.0.2:5010/api/v1/admin/miners/n1/retire?x=1");
  // Without the leader's API known: 503.
  pool->refuse_command = api_error{"not_leader", "no leader is known yet"};
  expect_error(*call("POST", "/api/v1/admin/miners/n1/retire", "", admin_key), 503,
               "not_leader");
}

TEST_F(api, MembersOfASingleOracleAndTransferWithout) {
  auto m = call("GET", "/api/v1/members")->body();
  EXPECT_EQ(m["role"], "single");
  EXPECT_TRUE(m["members"].empty());
  expect_error(*call("POST", "/api/v1/admin/transfer-leader", R"({"to":2})", admin_key),
               501, "not_supported");
  expect_error(*call("POST", "/api/v1/admin/transfer-leader", R"({"to":"two"})",
                     admin_key),
               400, "bad_field");
  expect_error(*call("POST", "/api/v1/admin/transfer-leader", "", client_key), 403,
               "forbidden");
}

// Adding a member: its Raft address must be an IPv4 literal (libraft 0.15
// does not resolve names) and no address may hold ';' (the configuration
// joins them with it). Good input reaches the pool, which here has none.
TEST_F(api, AddingAMemberChecksItsAddresses) {
  auto add = [&](const std::string& raft, const std::string& address) {
    return call("POST", "/api/v1/admin/members",
                nlohmann::json{{"id", 4}, {"raft", raft}, {"address", address},
                               {"http", "10.0.0.4:8080"}}.dump(),
                admin_key);
  };
  auto r = add("oracle4.example:7004", "10.0.0.4:7000");
  expect_error(*r, 400, "bad_field");
  EXPECT_NE(r->whole.body.find("IPv4"), std::string::npos) << r->whole.body;
  expect_error(*add("10.0.0.4:7004;10.0.0.9:1", "10.0.0.4:7000"), 400, "bad_field");
  expect_error(*add("10.0.0.4:7004", "a;b:7000"), 400, "bad_field");
  expect_error(*add("10.0.0.4:7004", "oracle4.example:7000"), 501, "not_supported");
}

namespace {

TEST_F(api, metrics_are_prometheus_text_with_answers_by_route_and_status) {
  EXPECT_EQ(call("GET", "/api/v1/status")->whole.status, 200);
  EXPECT_EQ(call("GET", "/api/v1/sessions/nosuch")->whole.status, 404);
  EXPECT_EQ(call("GET", "/metrics", "", "")->whole.status, 401);
  auto m = call("GET", "/metrics");
  ASSERT_EQ(m->whole.status, 200);
  EXPECT_EQ(m->whole.content_type, "text/plain; version=0.0.4; charset=utf-8");
  auto& t = m->whole.body;
  EXPECT_NE(t.find("nodepool_nodes{state=\"ephemeral\"} 1\n"), std::string::npos) << t;
  EXPECT_NE(t.find("nodepool_sessions{state=\"active\"} 1\n"), std::string::npos) << t;
  EXPECT_NE(t.find("nodepool_http_requests_total{route=\"/api/v1/status\","
                   "status=\"200\"} 1\n"),
            std::string::npos)
    << t;
  EXPECT_NE(t.find("{route=\"/api/v1/sessions/{id}\",status=\"404\"} 1\n"),
            std::string::npos)
    << "a session id is not a label value: " << t;
  EXPECT_NE(t.find("{route=\"/metrics\",status=\"401\"} 1\n"), std::string::npos) << t;
  // A single oracle has no Raft gauges.
  EXPECT_EQ(t.find("nodepool_raft_term"), std::string::npos);
}

TEST(prometheus_text, shows_the_supervisor_gateway_and_cluster) {
  histogram h{{1, 10}};
  h.add(3);
  json pool;
  pool["supervisor"]["committed"] = {{"nodes", {{"3", 4}, {"6", 1}}},
                                     {"queued", 2}, {"active", 1},
                                     {"completed", 9}, {"failed", 1},
                                     {"accepted", 13}, {"tests_passed", 7},
                                     {"tests_failed", 2}, {"tests_in_flight", 5},
                                     {"tests_waiting", 6}, {"index", 77}};
  pool["supervisor"]["refusals"] = {{"duplicate_session", 3}};
  pool["supervisor"]["reservations"] = 11;
  pool["supervisor"]["releases"] = 10;
  pool["supervisor"]["mailbox"] = 17;
  pool["supervisor"]["snapshots_deferred"] = 2;
  pool["supervisor"]["histograms"]["grant_latency_ms"] = h.to_json();
  pool["gateway"] = {{"refused", {{"malformed", 5}}}, {"connected", 4}};
  pool["cluster"] = {{"role", "follower"}, {"term", 3}, {"leader_id", 2},
                     {"commit_index", 80}, {"applied_index", 77},
                     {"refused_peers", 1}, {"snapshots_refused", 2},
                     {"raft_guard", {{"commits_raised", 5}, {"stale_answers", 0}}}};
  process_figures f;
  f.event_streams = 2;
  f.server = process_figures::http_server{6, 7, 8, 9};
  f.connections_shed = 3;
  f.connections_silent_closed = 5;
  f.open_fds = 40;
  f.max_fds = 4096;
  auto t = prometheus_text(pool, {{{"/api/v1/status", 200}, 4}}, f);
  for (auto want : {"nodepool_nodes{state=\"ephemeral\"} 4\n",
                    "nodepool_nodes{state=\"quarantined\"} 1\n",
                    "nodepool_nodes{state=\"lost\"} 0\n",
                    "nodepool_queue_depth 2\n",
                    "nodepool_sessions_ended_total{outcome=\"completed\"} 9\n",
                    "nodepool_tests_total{result=\"failed\"} 2\n",
                    "nodepool_tests_in_flight 5\n", "nodepool_tests_waiting 6\n",
                    "nodepool_reservations_total 11\n",
                    "nodepool_releases_total 10\n",
                    "nodepool_refusals_total{source=\"pool\",code=\"duplicate_session\"} 3\n",
                    "nodepool_refusals_total{source=\"gateway\",code=\"malformed\"} 5\n",
                    "nodepool_miners_connected 4\n",
                    "nodepool_supervisor_mailbox_messages 17\n",
                    "nodepool_snapshots_deferred_total 2\n",
                    "nodepool_grant_latency_seconds_bucket{le=\"0.01\"} 1\n",
                    "nodepool_grant_latency_seconds_count 1\n",
                    "nodepool_raft_term 3\n", "nodepool_raft_leader_id 2\n",
                    "nodepool_raft_commit_index 80\n",
                    "nodepool_raft_is_leader 0\n",
                    "nodepool_raft_refused_total{what=\"peer\"} 1\n",
                    "nodepool_raft_refused_total{what=\"snapshot\"} 2\n",
                    "nodepool_raft_guard_total{action=\"commits_raised\"} 5\n",
                    "nodepool_raft_guard_total{action=\"stale_answers\"} 0\n",
                    "nodepool_http_requests_total{route=\"/api/v1/status\",status=\"200\"} 4\n",
                    "nodepool_event_streams 2\n",
                    "nodepool_http_accept_errors_total 6\n",
                    "nodepool_http_connections_refused_total 7\n",
                    "nodepool_http_requests_abandoned_total 8\n",
                    "nodepool_http_connections 9\n",
                    "nodepool_connections_shed_total 3\n",
                    "nodepool_connections_silent_closed_total 5\n",
                    "process_open_fds 40\n", "process_max_fds 4096\n"})
    EXPECT_NE(t.find(want), std::string::npos) << want << "\n" << t;
  // Every family is declared once, before its samples.
  std::set<std::string> declared;
  std::istringstream in{t};
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("# TYPE ", 0) == 0) {
      auto name = line.substr(7, line.find(' ', 7) - 7);
      EXPECT_TRUE(declared.insert(name).second) << name << " declared twice";
    }
  }
  EXPECT_GE(declared.size(), 15u);
  // Without the server's count (a router not behind a server), no family.
  auto bare = prometheus_text(pool, {}, process_figures{});
  EXPECT_EQ(bare.find("nodepool_http_accept_errors_total"), std::string::npos);
  EXPECT_EQ(bare.find("process_max_fds"), std::string::npos);
}

TEST(route_label, names_templates_and_keeps_the_values_few) {
  EXPECT_EQ(route_label("/api/v1/sessions/s-123"), "/api/v1/sessions/{id}");
  EXPECT_EQ(route_label("/api/v1/tasks/s/7"), "/api/v1/tasks/{session_id}/{task_id}");
  EXPECT_EQ(route_label("/api/v1/admin/nodes/n1/drain"), "/api/v1/admin");
  EXPECT_EQ(route_label("/v1/chat/completions"), "/v1/chat/completions");
  EXPECT_EQ(route_label("/"), "/dashboard");
  EXPECT_EQ(route_label("/dashboard/app.js"), "/dashboard");
  EXPECT_EQ(route_label("/dashboard/nosuch.js"), "other");
  EXPECT_EQ(route_label("/wp-admin/x.php"), "other");
}

TEST_F(api, the_dashboard_is_served_without_a_key_and_holds_no_data) {
  auto page = call("GET", "/", "", "");
  ASSERT_EQ(page->whole.status, 200);
  EXPECT_EQ(page->whole.content_type, "text/html; charset=utf-8");
  EXPECT_NE(page->whole.body.find("/dashboard/app.js"), std::string::npos);
  EXPECT_EQ(page->whole.body.find("http://"), std::string::npos)
    << "nothing is fetched from elsewhere";
  EXPECT_EQ(page->whole.body.find("https://"), std::string::npos);
  for (auto f : {"/dashboard/app.js", "/dashboard/style.css", "/dashboard/chart.js"}) {
    auto r = call("GET", f, "", "");
    EXPECT_EQ(r->whole.status, 200) << f;
    EXPECT_GT(r->whole.body.size(), 1000u) << f;
  }
  EXPECT_NE(call("GET", "/dashboard/chart.js", "", "")->whole.body.find("Chart"),
            std::string::npos);
  expect_error(*call("POST", "/", "", ""), 405, "method_not_allowed");
  // The data behind it still needs the key.
  expect_error(*call("GET", "/api/v1/status", "", ""), 401, "unauthorized");
}

TEST_F(api, events_are_listed_after_a_seq_and_streamed) {
  expect_error(*call("GET", "/api/v1/events"), 404, "not_found");
  cfg.events = std::make_shared<event_feed>();
  make();
  cfg.events->publish({json{{"type", "session_accepted"}, {"session_id", "a"}},
                       json{{"type", "session_started"}, {"session_id", "a"}}});
  auto all = call("GET", "/api/v1/events");
  ASSERT_EQ(all->whole.status, 200);
  EXPECT_EQ(all->body()["events"].size(), 2u);
  EXPECT_EQ(all->body()["next"], 2);
  auto after = call("GET", "/api/v1/events?after=1");
  ASSERT_EQ(after->body()["events"].size(), 1u);
  EXPECT_EQ(after->body()["events"][0]["type"], "session_started");
  expect_error(*call("GET", "/api/v1/events?after=x"), 400, "bad_field");
  expect_error(*call("GET", "/api/v1/events?after=-1"), 400, "bad_field");
  expect_error(*call("GET", "/api/v1/events?after=+1"), 400, "bad_field");
  expect_error(*call("GET", "/api/v1/events?after=99999999999999999999"), 400,
               "bad_field");
  EXPECT_EQ(all->body()["epoch"], cfg.events->epoch());
  EXPECT_FALSE(all->body()["gap"].get<bool>());
  auto ahead = call("GET", "/api/v1/events?after=50");
  EXPECT_TRUE(ahead->body()["gap"].get<bool>()) << "numbered by another process";
  EXPECT_EQ(ahead->body()["events"].size(), 2u) << "all that is kept";
  EXPECT_EQ(ahead->body()["next"], 2);
  EXPECT_EQ(ahead->body()["next_id"], cfg.events->epoch() + "-2");
  EXPECT_FALSE(call("GET", "/api/v1/events?stream=0")->streamed);
  auto s = call("GET", "/api/v1/events?stream=1");
  EXPECT_TRUE(s->streamed);
  EXPECT_EQ(s->whole.content_type, "text/event-stream");
  cfg.events->publish({json{{"type", "session_ended"}}});
  std::string all_chunks;
  for (auto& c : s->chunks)
    all_chunks += c;
  EXPECT_NE(all_chunks.find("id: " + cfg.events->epoch() + "-3\ndata: "),
            std::string::npos)
    << all_chunks;
  // The stream's ids are taken back as Last-Event-ID or ?after; another
  // process's is a gap, with every kept event.
  auto same = call("GET", "/api/v1/events?after=" + cfg.events->epoch() + "-2");
  ASSERT_EQ(same->whole.status, 200) << same->whole.body;
  EXPECT_FALSE(same->body()["gap"].get<bool>());
  EXPECT_EQ(same->body()["events"].size(), 1u);
  auto other = call("GET", "/api/v1/events?after=0123456789abcdef-50");
  ASSERT_EQ(other->whole.status, 200) << other->whole.body;
  EXPECT_TRUE(other->body()["gap"].get<bool>());
  EXPECT_EQ(other->body()["events"].size(), 3u);
  expect_error(*call("GET", "/api/v1/events?after=abc-1"), 400, "bad_field");
  expect_error(*call("GET", "/api/v1/events", "", ""), 401, "unauthorized");
}

} // namespace
