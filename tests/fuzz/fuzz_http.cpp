// The HTTP API's front: the bytes are parsed as one request by the server's
// own parser (Beast's, with its limits), then routed with an admin key to a
// fake pool. Properties: every request that parses gets exactly one answer;
// an error is JSON {"error": {"code", "message"}} with a 4xx/5xx status; a
// 2xx body is JSON (or an event stream ending with [DONE]); and what reaches
// the pool is within the ranges the API promises (so PoolState gets only
// shapes the router checked).
//
// Input: an HTTP request, as a client would send it.
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "fuzz_common.hpp"
#include "http/router.hpp"
#include "http/server.hpp"

using namespace nodepool;
using namespace nodepool::http;

namespace {

const std::string admin = "fuzz-admin-key-0123456789";

struct answer : reply {
  int answers = 0;
  response got;
  bool stream = false, ended = false, ws = false;
  std::string chunks;
  void send(response r) override {
    ++answers;
    got = std::move(r);
  }
  void begin_stream(response h) override {
    ++answers;
    got = std::move(h);
    stream = true;
  }
  void chunk(std::string d) override { chunks += d; }
  void end() override { ended = true; }
  void accept_websocket(std::function<void(std::string)> f) override {
    ++answers;
    ws = true;
    // What a client would send next on the socket: the body, as a message.
    f("{\"session_id\":\"s\",\"prompt\":\"p\"}");
  }
};

struct pool : pool_api {
  void state(state_cb cb) override {
    pb::Snapshot s;
    auto* n = s.add_nodes();
    n->set_id("n");
    n->add_models("m");
    n->set_state(pb::EPHEMERAL);
    cb(s, nlohmann::json{{"role", "single"}, {"applied_index", 1}}, std::nullopt);
  }
  void archive(const pb::ArchiveQuery& q, archive_cb cb) override {
    pb::ArchiveAnswer a;
    if (q.id() == "s") {
      auto* r = a.add_sessions();
      r->set_id("s");
      r->set_state(pb::ACTIVE);
    }
    cb(a, std::nullopt);
  }
  void submit(const pb::SubmitSession& s, done_cb cb) override {
    if (s.max_nodes() > 64 || s.min_nodes() > 64 || s.redundancy() > 64
        || s.max_tasks() == 0 || s.reserve_period_ms() < 0
        || s.session_id().size() > 128 || !s.interactive())
      fuzz::fail("the router let through " + s.ShortDebugString());
    cb(std::nullopt);
  }
  void prompt(const pb::PromptRequest& p, prompt_cb cb) override {
    if (p.prompt().empty() || p.session_id().empty() || p.timeout_ms() <= 0
        || p.temperature() < 0 || p.temperature() > 2 || p.top_p() < 0
        || p.top_p() > 1)
      fuzz::fail("the router let through " + p.ShortDebugString());
    pb::PromptAnswer a;
    a.set_session_id(p.session_id());
    a.set_output("out " + p.prompt().substr(0, 16));
    a.set_agreeing(1);
    a.set_nodes(1);
    cb(a, std::nullopt);
  }
  void command(const pb::Command& c, done_cb cb) override {
    if (!c.has_admin_node() && !c.has_end_session())
      fuzz::fail("an admin route sent " + c.ShortDebugString());
    cb(std::nullopt);
  }
  void snapshot(index_cb cb) override { cb(1, std::nullopt); }
};

router& the_router() {
  static router r = [] {
    router_config cfg;
    cfg.keys.add(admin, role::admin);
    cfg.keys.add("fuzz-client-key-0123456789", role::client);
    return router{cfg, std::make_shared<pool>()};
  }();
  return r;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string bytes(reinterpret_cast<const char*>(data), size);
  request q;
  if (!parse_request(bytes, q, 64 * 1024).empty())
    return 0;
  // Half the inputs as an admin, the rest with whatever key they carry.
  if (size % 2 == 0)
    q.headers["authorization"] = "Bearer " + admin;
  auto a = std::make_shared<answer>();
  the_router().handle(q, a);
  if (a->answers != 1)
    fuzz::fail(std::to_string(a->answers) + " answers to " + q.method + " "
               + q.target);
  if (a->ws)
    return 0;
  if (a->stream) {
    if (!a->ended || a->chunks.size() < 14
        || a->chunks.compare(a->chunks.size() - 14, 14, "data: [DONE]\n\n") != 0)
      fuzz::fail("a stream did not end with [DONE]: " + a->chunks);
    return 0;
  }
  auto j = nlohmann::json::parse(a->got.body, nullptr, false);
  if (j.is_discarded())
    fuzz::fail("not JSON (" + std::to_string(a->got.status) + "): " + a->got.body);
  if (a->got.status >= 400) {
    if (a->got.status > 599 || !j.contains("error") || !j["error"]["code"].is_string()
        || !j["error"]["message"].is_string())
      fuzz::fail("an error without its shape: " + a->got.body);
  } else if (a->got.status < 200 || a->got.status > 299) {
    fuzz::fail("status " + std::to_string(a->got.status));
  }
  return 0;
}
