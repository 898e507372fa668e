// The HTTP API of a real oracle process, with real miners, over real
// sockets: plain and TLS, REST, server-sent events and WebSocket.
#ifndef CPPHTTPLIB_OPENSSL_SUPPORT
#define CPPHTTPLIB_OPENSSL_SUPPORT
#endif
#include <httplib.h>

#include <gtest/gtest.h>

#include <csignal>
#include <sstream>


#include <boost/asio/connect.hpp>
#include <boost/asio/write.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>
#include <nlohmann/json.hpp>

#include "process/api_pool.hpp"

namespace nodepool::testing {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

/// Sends `text` on `sock` and reads until the server closes it.
std::string send_and_read(boost::asio::ip::tcp::socket& sock, const std::string& text) {
  namespace net = boost::asio;
  net::write(sock, net::buffer(text));
  std::string got;
  boost::system::error_code ec;
  char buf[4096];
  for (;;) {
    auto n = sock.read_some(net::buffer(buf), ec);
    if (ec)
      break;
    got.append(buf, n);
  }
  return got;
}

/// Sends `text` on a fresh connection and reads until the server closes it.
std::string raw_http(int port, const std::string& text) {
  namespace net = boost::asio;
  net::io_context io;
  net::ip::tcp::socket sock{io};
  sock.connect({net::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port)});
  return send_and_read(sock, text);
}

json body_of(const httplib::Result& r) {
  if (!r)
    return json{{"transport_error", httplib::to_string(r.error())}};
  return json::parse(r->body, nullptr, false);
}

TEST(api, serves_sessions_and_completions_from_real_miners) {
  auto dir = temp_dir("api");
  cleanup tidy{dir};
  api_pool p{dir, 3};
  ASSERT_GT(p.port, 0) << p.oracle->errors();
  auto st = p.wait_nodes(3);
  ASSERT_EQ(st["nodes"]["by_state"]["ephemeral"], 3) << st.dump();
  auto c = p.client();

  auto info = body_of(c.Get("/api/v1/info"));
  EXPECT_EQ(info["name"], "nodepool");
  EXPECT_EQ(info["models"][0], "llama-3-8b") << info.dump();

  // The miners a page at a time, read from the pool's own index by id.
  auto all = body_of(c.Get("/api/v1/miners"));
  ASSERT_EQ(all["miners"].size(), 3u) << all.dump();
  EXPECT_EQ(all["more"], false);
  auto p1 = body_of(c.Get("/api/v1/miners?limit=2"));
  ASSERT_EQ(p1["miners"].size(), 2u) << p1.dump();
  EXPECT_EQ(p1["more"], true);
  auto last = p1["miners"][1]["node_id"].get<std::string>();
  auto p2 = body_of(c.Get("/api/v1/miners?limit=2&after_id=" + last));
  ASSERT_EQ(p2["miners"].size(), 1u) << p2.dump();
  EXPECT_EQ(p2["more"], false);
  for (int i = 0; i < 3; ++i)
    EXPECT_EQ((i < 2 ? p1["miners"][i] : p2["miners"][0])["node_id"],
              all["miners"][i]["node_id"]);
  EXPECT_TRUE(p2["miners"][0].contains("last_seen")) << p2.dump();
  auto bad = c.Get("/api/v1/miners?limit=0");
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, 400) << bad->body;
  // A single oracle's members say the index they reflect.
  auto members = c.Get("/api/v1/members");
  ASSERT_TRUE(members);
  EXPECT_FALSE(members->get_header_value("X-Nodepool-Index").empty());
  EXPECT_GT(json::parse(members->body).value("index", uint64_t{0}), 0u)
    << members->body;

  // A session of two redundant nodes and two tasks.
  auto r = c.Post("/api/v1/sessions",
                  R"({"model":"llama-3-8b","min_nodes":2,"max_nodes":2,
                      "redundancy":2,"max_tasks":2,"client_reference":"t1"})",
                  "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 201) << r->body;
  auto sid = json::parse(r->body)["session_id"].get<std::string>();
  auto live = body_of(c.Get("/api/v1/sessions?limit=5"));
  ASSERT_EQ(live["sessions"].size(), 1u) << live.dump();
  EXPECT_EQ(live["sessions"][0]["session_id"], sid);
  EXPECT_EQ(live["more"], false);

  r = c.Post("/api/v1/completions/" + sid,
             R"({"prompt":"Why test miner nodes?","timeout":30})",
             "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  auto a = json::parse(r->body);
  EXPECT_EQ(a["object"], "text_completion");
  EXPECT_EQ(a["nodes"], 2);
  EXPECT_EQ(a["agreeing"], 2);
  auto text = a["choices"][0]["text"].get<std::string>();
  EXPECT_NE(text.find("Why test miner nodes?"), std::string::npos) << text;

  // The second task, streamed as server-sent events.
  std::string events;
  r = c.Post(
    "/api/v1/completions", httplib::Headers{},
    json{{"session_id", sid}, {"prompt", "And again?"}, {"stream", true}}.dump(),
    "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(r->get_header_value("Content-Type"), "text/event-stream");
  events = r->body;
  ASSERT_GE(events.size(), 14u);
  EXPECT_EQ(events.substr(events.size() - 14), "data: [DONE]\n\n") << events;
  std::string streamed;
  for (size_t at = 0; (at = events.find("data: {", at)) != std::string::npos;) {
    auto end = events.find("\n\n", at);
    auto j = json::parse(events.substr(at + 6, end - at - 6));
    streamed += j["choices"][0]["text"].get<std::string>();
    at = end;
  }
  EXPECT_NE(streamed.find("And again?"), std::string::npos) << events;

  // Both tasks done: the pool ended the session, and says so.
  auto s = body_of(c.Get("/api/v1/sessions/" + sid));
  for (int i = 0; i < 100 && s["state"] != "completed"; ++i) {
    std::this_thread::sleep_for(50ms);
    s = body_of(c.Get("/api/v1/sessions/" + sid));
  }
  EXPECT_EQ(s["state"], "completed") << s.dump();
  EXPECT_EQ(s["tasks_done"], 2);
  EXPECT_EQ(s["client_reference"], "t1");
  r = c.Post("/api/v1/completions/" + sid, R"({"prompt":"a third?"})",
             "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 409) << r->body;
  auto tasks = body_of(c.Get("/api/v1/tasks/" + sid));
  EXPECT_EQ(tasks["tasks"].size(), 2u) << tasks.dump();
  EXPECT_EQ(body_of(c.Get("/api/v1/tasks/" + sid + "/1"))["prompt"], "And again?");

  // The OpenAI front: one request, one ephemeral session.
  r = c.Post("/v1/chat/completions",
             R"({"model":"llama-3-8b","messages":[{"role":"user","content":"Hello pool"}]})",
             "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  auto chat = json::parse(r->body);
  EXPECT_EQ(chat["object"], "chat.completion");
  EXPECT_NE(chat["choices"][0]["message"]["content"].get<std::string>().find(
              "Hello pool"),
            std::string::npos);
  auto models = body_of(c.Get("/v1/models"));
  EXPECT_EQ(models["data"][0]["id"], "llama-3-8b") << models.dump();

  // Operators: a client key may not drain; an admin key may.
  r = c.Post("/api/v1/admin/miners/miner-0/drain", "", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 403);
  auto admin = p.client(admin_key);
  r = admin.Post("/api/v1/admin/miners/miner-0/drain", R"({"reason":"maintenance"})",
                 "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  r = admin.Post("/api/v1/admin/miners/nobody/drain", "", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404) << r->body;
  r = admin.Post("/api/v1/admin/snapshot", "", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_GT(json::parse(r->body)["snapshot_index"].get<uint64_t>(), 0u);

  // nodepool ctl: the same API from the command line.
  auto url = "http://127.0.0.1:" + std::to_string(p.port);
  auto [crc, cout_] = run({"ctl", "--url", url, "--key", client_key, "--json", "status"},
                          dir + "/ctl-status2.out");
  EXPECT_EQ(crc, 0) << read_file(dir + "/ctl-status2.out.err");
  EXPECT_EQ(last_json_line(cout_)["nodes"]["total"], 3) << cout_;
  auto [mrc, mout] = run({"ctl", "--url", url, "--key", client_key, "miners"},
                         dir + "/ctl-miners.out");
  EXPECT_EQ(mrc, 0);
  EXPECT_NE(mout.find("miner-0  ephemeral (drained)"), std::string::npos) << mout;
  EXPECT_NE(mout.find("SEEN"), std::string::npos) << mout;
  EXPECT_NE(mout.find("s ago"), std::string::npos) << mout;
  auto [frc, fout] = run({"ctl", "--url", url, "--key", client_key, "retire", "miner-1"},
                         dir + "/ctl-forbidden.out");
  EXPECT_EQ(frc, 3);
  EXPECT_NE(read_file(dir + "/ctl-forbidden.out.err").find("403"), std::string::npos);
  auto [arc, aout] = run({"ctl", "--url", url, "--key", admin_key, "undrain", "miner-0"},
                         dir + "/ctl-undrain.out");
  EXPECT_EQ(arc, 0) << read_file(dir + "/ctl-undrain.out.err");
  auto [nrc, nout] = run({"ctl", "--url", url, "--key", client_key, "session", "nobody"},
                         dir + "/ctl-nobody.out");
  EXPECT_EQ(nrc, 1);
  EXPECT_NE(read_file(dir + "/ctl-nobody.out.err").find("unknown_session"),
            std::string::npos);

  // The drain is durable: it is in the log a check replays.
  p.miner->signal(SIGTERM);
  p.oracle->signal(SIGTERM);
  ASSERT_EQ(p.oracle->wait_exit(20s), 0) << p.oracle->errors();
  auto [rc, out] = run({"check", "--data-dir", dir + "/db", "--json"},
                       dir + "/check.out");
  EXPECT_EQ(rc, 0) << out;
}

// The miners' port publishes the gateway. A peer on it that sends what
// only the oracle's own actors may send (new routes, a term, a refusal
// that retires a node) is refused, counted, and changes nothing; a state
// query is answered by the gateway itself, so no other actor of the
// oracle becomes reachable.
TEST(api, a_peer_cannot_drive_the_gateways_own_messages) {
  auto dir = temp_dir("api-peer");
  cleanup tidy{dir};
  api_pool p{dir, 3};
  ASSERT_GT(p.port, 0) << p.oracle->errors();
  auto st = p.wait_nodes(3);
  ASSERT_EQ(st["nodes"]["by_state"]["ephemeral"], 3) << st.dump();
  auto gw = listening_port(p.oracle->output());
  child peer{{"127.0.0.1", gw, "miner-0"}, dir + "/peer.out", HOSTILE_PEER_BIN};
  ASSERT_EQ(peer.wait_exit(30s), 0) << peer.errors();
  auto out = peer.output();
  auto said = last_json_line(out);
  EXPECT_GT(said["state_bytes"].get<int>(), 0) << out;
  EXPECT_TRUE(said["answered_by_gateway"].get<bool>()) << out;
  // Sessions through the gateway still reach the queue, and the released
  // nodes' retests the validator: all three come back to the pool.
  auto [src, sout] = run({"submit", "--oracle", "127.0.0.1:" + gw, "--sessions",
                          "3", "--prefix", "peer", "--max-tasks", "2"},
                         dir + "/submit.out");
  ASSERT_EQ(src, 0) << sout;
  st = p.wait_status(
    [](const json& j) {
      return j["sessions"]["completed"] == 3
             && j["nodes"]["by_state"]["ephemeral"] == 3;
    },
    60s);
  EXPECT_EQ(st["sessions"]["completed"], 3) << st.dump();
  EXPECT_EQ(st["nodes"]["by_state"]["ephemeral"], 3) << st.dump();
  EXPECT_EQ(st["nodes"]["by_state"]["retired"], 0) << st.dump();
  auto c = p.client();
  auto m = c.Get("/metrics");
  ASSERT_TRUE(m && m->status == 200);
  // Routes, a term and what to send a node are the oracle's own messages;
  // a refusal whose code is text is of no form the gateway takes (inside
  // the oracle the code is an enum, which no peer can send).
  EXPECT_NE(m->body.find(
              "nodepool_refusals_total{source=\"gateway\",code=\"internal_message\"} 3"),
            std::string::npos)
    << m->body;
  EXPECT_NE(m->body.find(
              "nodepool_refusals_total{source=\"gateway\",code=\"unexpected_message\"} 1"),
            std::string::npos)
    << m->body;
  p.miner->signal(SIGTERM);
  EXPECT_EQ(p.miner->wait_exit(20s), 0) << p.miner->errors();
}

TEST(api, errors_on_the_wire) {
  auto dir = temp_dir("api-err");
  cleanup tidy{dir};
  api_pool p{dir, 0};
  ASSERT_GT(p.port, 0) << p.oracle->errors();
  auto c = p.client();
  // 401 without a key, with the challenge.
  httplib::Client anon{"127.0.0.1", p.port};
  auto r = anon.Get("/api/v1/status");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(r->get_header_value("WWW-Authenticate").rfind("Bearer", 0), 0u);
  // 413 for a body over the limit (1 MiB), answered from its headers: the
  // server does not read 2 MiB to refuse them.
  auto big = raw_http(p.port, "POST /api/v1/sessions HTTP/1.1\r\nHost: x\r\n"
                              "Authorization: Bearer " + client_key + "\r\n"
                              "Content-Length: 2097152\r\n\r\n");
  EXPECT_EQ(big.rfind("HTTP/1.1 413", 0), 0u) << big;
  EXPECT_NE(big.find("body_too_large"), std::string::npos) << big;
  // 400 for malformed JSON, 404 for an unknown session.
  r = c.Post("/api/v1/sessions", "{\"model\":", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(body_of(r)["error"]["code"], "bad_json");
  r = c.Post("/api/v1/completions/nobody", R"({"prompt":"hi"})", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  // A request that is not HTTP: 400, then the connection closes.
  auto garbage = raw_http(p.port, "NOT HTTP AT ALL\r\n\r\n");
  EXPECT_EQ(garbage.rfind("HTTP/1.1 400", 0), 0u) << garbage;
  EXPECT_NE(garbage.find("bad_request"), std::string::npos) << garbage;
  // A session that waits for nodes (there are none), then times out: 504.
  r = c.Post("/api/v1/sessions", R"({"session_id":"lonely"})", "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 201) << r->body;
  r = c.Post("/api/v1/completions/lonely", R"({"prompt":"anyone?","timeout":0.3})",
             "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 504) << r->body;
  EXPECT_EQ(body_of(r)["error"]["code"], "timeout");
  // The oracle is still well after all that.
  r = c.Get("/api/v1/status");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  p.oracle->signal(SIGTERM);
  EXPECT_EQ(p.oracle->wait_exit(20s), 0);
}

/// The value of a sample without labels in a scrape (-1 if absent).
double scraped(const std::string& text, const std::string& name) {
  auto i = text.find("\n" + name + " ");
  return i == std::string::npos ? -1 : std::stod(text.substr(i + name.size() + 2));
}

TEST(api, out_of_descriptors_it_backs_off_and_then_serves_who_waited) {
  namespace net = boost::asio;
  auto dir = temp_dir("api-nofile");
  cleanup tidy{dir};
  api_pool p{dir, 0};
  ASSERT_GT(p.port, 0) << p.oracle->errors();
  auto c = p.client();
  ASSERT_TRUE(c.Get("/api/v1/status"));
  // The oracle's soft limit of descriptors goes down to what it has open:
  // the next connection it accepts finds none left.
  auto squeezed = std::chrono::steady_clock::now();
  descriptor_squeeze squeeze{p.oracle->pid()};
  ASSERT_TRUE(squeeze.squeezed);
  // Clients connect meanwhile (the kernel completes their connections into
  // the listen queue).
  net::io_context io;
  std::vector<net::ip::tcp::socket> waiting;
  for (int i = 0; i < 12; ++i) {
    waiting.emplace_back(io);
    waiting.back().connect({net::ip::make_address("127.0.0.1"),
                            static_cast<unsigned short>(p.port)});
  }
  // It says so, once (not once per attempt), and holds on for a second.
  ASSERT_TRUE(p.oracle->wait_for_errors("accepting a connection failed", 10s))
    << "no accept error: " << squeeze.open_fds << " descriptors open, "
    << p.oracle->errors();
  EXPECT_NE(p.oracle->errors().find("Too many open files"), std::string::npos)
    << p.oracle->errors();
  std::this_thread::sleep_for(1s);
  ASSERT_TRUE(squeeze.restore());
  double held = std::chrono::duration<double>(std::chrono::steady_clock::now()
                                              - squeezed).count();
  // Every client that waited is served once descriptors are back.
  for (auto& s : waiting) {
    auto got = send_and_read(s, "GET /api/v1/status HTTP/1.1\r\nHost: x\r\n"
                           "Authorization: Bearer " + client_key
                           + "\r\nConnection: close\r\n\r\n");
    EXPECT_EQ(got.rfind("HTTP/1.1 200", 0), 0u) << got;
  }
  // Counted, and tried again every 100 ms: about 10 a second, where
  // retrying at once (the listen queue still holds the connection) would
  // have spun a thread through tens of thousands.
  auto m = c.Get("/metrics");
  ASSERT_TRUE(m && m->status == 200);
  double n = scraped("\n" + m->body, "nodepool_http_accept_errors_total");
  EXPECT_GE(n, 1) << m->body;
  EXPECT_LE(n, 20 * held + 20) << "over " << held << " s";
  p.oracle->signal(SIGTERM);
  EXPECT_EQ(p.oracle->wait_exit(20s), 0);
}

/// The soft and hard limits of open files of process `pid`.
std::pair<std::string, std::string> file_limits(pid_t pid) {
  std::istringstream in{read_file("/proc/" + std::to_string(pid) + "/limits")};
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("Max open files", 0) == 0) {
      std::istringstream f{line.substr(14)};
      std::string soft, hard;
      f >> soft >> hard;
      return {soft, hard};
    }
  return {};
}

// The port miners connect to is CAF's, whose multiplexer retries a failed
// accept at once: out of descriptors it spun a core, silently, and the
// connection waited. Now it is closed at once (the miner retries later),
// counted and logged; and an oracle started with a low soft limit of open
// files raises it to the hard one first.
TEST(api, out_of_descriptors_the_miners_port_closes_new_connections) {
  auto dir = temp_dir("api-shed");
  cleanup tidy{dir};
  child oracle{{"--nofile=256:8192", NODEPOOL_BIN, "oracle", "--data-dir", dir + "/db",
                "--port", "0", "--http", "127.0.0.1:0"},
               dir + "/oracle.out", "/usr/bin/prlimit"};
  ASSERT_TRUE(oracle.wait_for_output("HTTP API on", 20s)) << oracle.errors();
  EXPECT_EQ(file_limits(oracle.pid()), std::make_pair(std::string{"8192"}, std::string{"8192"}));
  auto miners = std::stoi(listening_port(oracle.output()));
  httplib::Client c{"127.0.0.1", http_port(oracle.output())};
  {
    descriptor_squeeze squeeze{oracle.pid()};
    ASSERT_TRUE(squeeze.squeezed);
    std::vector<int> peers;
    for (int i = 0; i < 3; ++i) {
      peers.push_back(connect_loopback(static_cast<uint16_t>(miners)));
      ASSERT_GE(peers.back(), 0);
    }
    // Each is closed by the oracle (reads as the end of the stream), not
    // left waiting.
    for (int s : peers) {
      EXPECT_TRUE(closed_by_peer(s, 10s))
        << "a connection to the miners' port was left waiting: " << oracle.errors();
      ::close(s);
    }
    EXPECT_NE(oracle.errors().find("out of file descriptors: closed a connection"),
              std::string::npos) << oracle.errors();
  }
  // Descriptors back: a miner joins and its node is admitted.
  child miner{{"miner", "--oracle", "127.0.0.1:" + std::to_string(miners), "--nodes", "1"},
              dir + "/miner.out"};
  auto st = poll_status(
    c, [](const json& j) { return j["nodes"]["by_state"]["ephemeral"] == 1; }, 30s);
  EXPECT_EQ(st["nodes"]["by_state"]["ephemeral"], 1) << st.dump() << miner.errors();
  auto m = c.Get("/metrics");
  ASSERT_TRUE(m && m->status == 200);
  EXPECT_EQ(scraped("\n" + m->body, "nodepool_connections_shed_total"), 3) << m->body;
  EXPECT_EQ(scraped("\n" + m->body, "process_max_fds"), 8192) << m->body;
  EXPECT_GT(scraped("\n" + m->body, "process_open_fds"), 5) << m->body;
  miner.signal(SIGTERM);
  oracle.signal(SIGTERM);
  EXPECT_EQ(oracle.wait_exit(20s), 0);
}

// CAF keeps a connection that never says a word for ever: a peer could
// hold the oracle's descriptors without limit. One silent for 10 s is shut
// down and counted; a miner, which speaks at once, keeps its connection.
TEST(api, a_connection_to_the_miners_port_that_says_nothing_is_closed) {
  auto dir = temp_dir("api-silent");
  cleanup tidy{dir};
  api_pool p{dir, 1};
  ASSERT_GT(p.port, 0) << p.oracle->errors();
  ASSERT_EQ(p.wait_nodes(1)["nodes"]["by_state"]["ephemeral"], 1);
  auto miners = static_cast<uint16_t>(std::stoi(listening_port(p.oracle->output())));
  auto opened = std::chrono::steady_clock::now();
  std::vector<int> silent;
  for (int i = 0; i < 3; ++i) {
    silent.push_back(connect_loopback(miners));
    ASSERT_GE(silent.back(), 0);
  }
  for (int s : silent) {
    EXPECT_TRUE(closed_by_peer(s, 30s)) << p.oracle->errors();
    ::close(s);
  }
  // Not before its time (10 s; the check runs once a connection is due).
  EXPECT_GE(std::chrono::steady_clock::now() - opened, 5s);
  EXPECT_NE(p.oracle->errors().find("closed a connection whose peer said nothing"),
            std::string::npos) << p.oracle->errors();
  auto c = p.client();
  auto m = c.Get("/metrics");
  ASSERT_TRUE(m && m->status == 200);
  EXPECT_EQ(scraped("\n" + m->body, "nodepool_connections_silent_closed_total"), 3)
    << m->body;
  // The miner's node is still in the pool, its connection kept.
  auto st = json::parse(c.Get("/api/v1/status")->body);
  EXPECT_EQ(st["nodes"]["by_state"]["ephemeral"], 1) << st.dump();
  EXPECT_EQ(st["nodes"]["by_state"]["lost"], 0) << st.dump();
  p.oracle->signal(SIGTERM);
  EXPECT_EQ(p.oracle->wait_exit(20s), 0);
}

TEST(api, websocket_completions) {
  namespace beast = boost::beast;
  namespace net = boost::asio;
  auto dir = temp_dir("api-ws");
  cleanup tidy{dir};
  api_pool p{dir, 2};
  ASSERT_GT(p.port, 0) << p.oracle->errors();
  auto st = p.wait_nodes(2);
  ASSERT_EQ(st["nodes"]["by_state"]["ephemeral"], 2) << st.dump();
  auto c = p.client();
  auto r = c.Post("/api/v1/sessions", R"({"session_id":"ws1","max_tasks":3})",
                  "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 201) << r->body;

  net::io_context io;
  net::ip::tcp::resolver res{io};
  beast::websocket::stream<net::ip::tcp::socket> ws{io};
  net::connect(ws.next_layer(), res.resolve("127.0.0.1", std::to_string(p.port)));
  ws.set_option(beast::websocket::stream_base::decorator(
    [](beast::websocket::request_type& q) {
      q.set(beast::http::field::authorization, "Bearer " + client_key);
    }));
  ws.handshake("127.0.0.1", "/api/v1/ws");
  ws.write(net::buffer(std::string{R"({"session_id":"ws1","prompt":"over a socket"})"}));
  std::string text;
  for (;;) {
    beast::flat_buffer b;
    ws.read(b);
    auto msg = beast::buffers_to_string(b.data());
    if (msg == "[DONE]")
      break;
    auto j = json::parse(msg);
    ASSERT_FALSE(j.contains("error")) << msg;
    text += j["choices"][0]["text"].get<std::string>();
  }
  EXPECT_NE(text.find("over a socket"), std::string::npos) << text;
  // A bad message gets an error message, and the socket stays open.
  ws.write(net::buffer(std::string{"{]"}));
  beast::flat_buffer b;
  ws.read(b);
  EXPECT_EQ(json::parse(beast::buffers_to_string(b.data()))["error"]["code"],
            "bad_json");
  // A prompt for a session the pool does not know is refused at once, not
  // held for its timeout (ten minutes here) in a place of the queue's.
  ws.write(net::buffer(
    std::string{R"({"session_id":"nobody","prompt":"hello?","timeout":600})"}));
  b.clear();
  ws.read(b);
  EXPECT_EQ(json::parse(beast::buffers_to_string(b.data()))["error"]["code"],
            "unknown_session");
  ws.close(beast::websocket::close_code::normal);
  // A client that sends and never reads: the server does not keep its
  // answers without end (4 MB at most), it closes the socket. Without the
  // bound every answer would come once the client reads.
  {
    beast::websocket::stream<net::ip::tcp::socket> flood{io};
    flood.next_layer().open(net::ip::tcp::v4());
    flood.next_layer().set_option(net::socket_base::receive_buffer_size(4096));
    flood.next_layer().connect(
      *res.resolve("127.0.0.1", std::to_string(p.port)).begin());
    flood.set_option(beast::websocket::stream_base::decorator(
      [](beast::websocket::request_type& q) {
        q.set(beast::http::field::authorization, "Bearer " + client_key);
      }));
    flood.handshake("127.0.0.1", "/api/v1/ws");
    const size_t sent_max = 250000;  // answers: about 20 MB
    size_t sent = 0;
    beast::error_code wec;
    for (; sent < sent_max && !wec; ++sent)
      flood.write(net::buffer(std::string{"{]"}), wec);
    size_t answers = 0;
    beast::error_code rec;
    while (answers < sent) {
      beast::flat_buffer fb;
      flood.read(fb, rec);
      if (rec)
        break;
      ++answers;
    }
    EXPECT_LT(answers, sent) << "every answer was kept for a client that "
                                "did not read";
    EXPECT_GT(answers, 0u);
  }
  // Without a key, no upgrade.
  beast::websocket::stream<net::ip::tcp::socket> anon{io};
  net::connect(anon.next_layer(), res.resolve("127.0.0.1", std::to_string(p.port)));
  beast::error_code ec;
  anon.handshake("127.0.0.1", "/api/v1/ws", ec);
  EXPECT_TRUE(ec);
}

TEST(api, tls_with_the_oracles_certificate) {
  auto dir = temp_dir("api-tls");
  cleanup tidy{dir};
  auto [grc, gout] = run_shell(
    "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1"
    " -addext subjectAltName=IP:127.0.0.1 -keyout " + dir + "/key.pem -out " + dir
    + "/cert.pem");
  ASSERT_EQ(grc, 0) << gout;
  api_pool p{dir, 0,
             {"--tls-cert", dir + "/cert.pem", "--tls-key", dir + "/key.pem",
              "--tls-ca", dir + "/cert.pem"}};
  ASSERT_GT(p.port, 0) << p.oracle->errors();
  EXPECT_NE(p.oracle->output().find("https://"), std::string::npos);
  httplib::SSLClient s{"127.0.0.1", p.port};
  s.set_ca_cert_path((dir + "/cert.pem").c_str());
  s.enable_server_certificate_verification(true);
  s.set_bearer_token_auth(client_key.c_str());
  auto r = s.Get("/api/v1/info");
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_EQ(r->status, 200);
  // Plain HTTP to a TLS port gets no answer.
  auto plain = p.client();
  plain.set_read_timeout(3, 0);
  auto pr = plain.Get("/api/v1/info");
  EXPECT_TRUE(!pr || pr->status != 200);
}

/// `nodepool ctl ARGS` with the API's address and key taken from the
/// environment (NODEPOOL_URL, NODEPOOL_KEY), as an operator's shell has them.
std::pair<int, std::string> ctl_env(int port, const std::string& key,
                                    const std::string& args) {
  return run_shell("NODEPOOL_URL=http://127.0.0.1:" + std::to_string(port)
                   + " NODEPOOL_KEY=" + key + " " + NODEPOOL_BIN + " ctl " + args
                   + " 2>&1");
}

// Every ctl command against a real oracle, with its URL and key from the
// environment: tables for people, JSON with --json, exit 3 when the key
// may not.
// A client that stops sending prompts: its interactive session ends once
// idle_threshold_ms and three task phases have passed (1 s and 3 x 500 ms
// here), its nodes go back to the pool after re-validation, and a prompt
// after that is refused 409 session_ended.
TEST(api, an_interactive_session_left_idle_ends_and_frees_its_nodes) {
  auto dir = temp_dir("api-idle");
  cleanup tidy{dir};
  api_pool p{dir, 2, {"--idle-threshold-ms", "1000"}};
  ASSERT_GT(p.port, 0) << p.oracle->errors();
  auto st = p.wait_nodes(2);
  ASSERT_EQ(st["nodes"]["by_state"]["ephemeral"], 2) << st.dump();
  auto c = p.client();
  auto r = c.Post("/api/v1/sessions",
                  R"({"session_id":"left","max_nodes":2,"redundancy":2,"max_tasks":50})",
                  "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 201) << r->body;
  r = c.Post("/api/v1/completions/left", R"({"prompt":"anyone there?","timeout":30})",
             "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  // Left alone: it ends, completed, with why.
  json s;
  auto end = std::chrono::steady_clock::now() + 30s;
  while (std::chrono::steady_clock::now() < end) {
    s = body_of(c.Get("/api/v1/sessions/left"));
    if (s.value("state", "") != "active")
      break;
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(s.value("state", ""), "completed") << s.dump();
  EXPECT_EQ(s.value("reason", ""), "idle: no prompt within idle_threshold_ms") << s.dump();
  EXPECT_EQ(s.value("tasks_done", 0), 1) << s.dump();
  // It does not come back for nodes: both are in the pool again.
  st = p.wait_nodes(2);
  EXPECT_EQ(st["nodes"]["by_state"]["ephemeral"], 2) << st.dump();
  EXPECT_EQ(st["sessions"]["queued"], 0) << st.dump();
  EXPECT_EQ(st["sessions"]["active"], 0) << st.dump();
  r = c.Post("/api/v1/completions/left", R"({"prompt":"still there?","timeout":5})",
             "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 409) << r->body;
  EXPECT_NE(r->body.find("session_ended"), std::string::npos) << r->body;
}

TEST(api, ctl_speaks_for_every_route) {
  auto dir = temp_dir("api-ctl");
  cleanup tidy{dir};
  api_pool p{dir, 2};
  ASSERT_GT(p.port, 0) << p.oracle->errors();
  auto st = p.wait_nodes(2);
  ASSERT_EQ(st["nodes"]["by_state"]["ephemeral"], 2) << st.dump();
  auto c = p.client();
  auto r = c.Post("/api/v1/sessions",
                  R"({"session_id":"ctl-1","max_tasks":5,"max_nodes":1})",
                  "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 201) << r->body;

  auto [s1, status] = ctl_env(p.port, client_key, "status");
  EXPECT_EQ(s1, 0) << status;
  EXPECT_NE(status.find("NODES"), std::string::npos) << status;
  EXPECT_NE(status.find("SESSIONS"), std::string::npos) << status;
  EXPECT_NE(status.find("role single"), std::string::npos) << status;
  // Aligned: the count column starts at the same place on every row.
  auto column = [&](const std::string& label) {
    auto at = status.find("\n" + label + " ");
    if (at == std::string::npos)
      return std::string::npos;
    auto line = status.substr(at + 1, status.find('\n', at + 1) - at - 1);
    return line.find_first_not_of(' ', label.size());
  };
  EXPECT_NE(column("queued"), std::string::npos) << status;
  EXPECT_EQ(column("queued"), column("completed")) << status;

  auto [s2, sessions] = ctl_env(p.port, client_key, "sessions");
  EXPECT_EQ(s2, 0) << sessions;
  EXPECT_NE(sessions.find("ctl-1"), std::string::npos) << sessions;
  auto [s3, one] = ctl_env(p.port, client_key, "--json session ctl-1");
  EXPECT_EQ(s3, 0) << one;
  EXPECT_EQ(last_json_line(one)["session_id"], "ctl-1") << one;

  auto [s4, members] = ctl_env(p.port, client_key, "members");
  EXPECT_EQ(s4, 0) << members;
  EXPECT_NE(members.find("a single oracle"), std::string::npos) << members;

  // Operators' commands: refused to a client key, done with an admin key.
  auto [s5, refused] = ctl_env(p.port, client_key, "end-session ctl-1");
  EXPECT_EQ(s5, 3) << refused;
  EXPECT_NE(refused.find("403"), std::string::npos) << refused;
  auto [s6, ended] = ctl_env(p.port, admin_key, "--json end-session ctl-1 --failed");
  EXPECT_EQ(s6, 0) << ended;
  auto [s7, after] = ctl_env(p.port, client_key, "--json session ctl-1");
  EXPECT_EQ(last_json_line(after)["state"], "failed") << after;
  auto [s8, retired] = ctl_env(p.port, admin_key, "retire miner-1 --reason worn");
  EXPECT_EQ(s8, 0) << retired;
  auto miners = body_of(c.Get("/api/v1/miners"));
  std::string miner1;
  for (auto& m : miners["miners"])
    if (m["node_id"] == "miner-1")
      miner1 = m["state"].get<std::string>();
  EXPECT_EQ(miner1, "retired") << miners.dump();
  // When the oracle last heard from a node: a heartbeat ago (100 ms here),
  // and later at a second look.
  auto seen = [&](const json& list) {
    for (auto& m : list["miners"])
      if (m["node_id"] == "miner-0")
        return m.value("last_seen", int64_t{0});
    return int64_t{0};
  };
  auto wall_ms = [] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
  };
  auto first = seen(miners);
  EXPECT_GT(first, wall_ms() - 10000) << miners.dump();
  EXPECT_LE(first, wall_ms()) << miners.dump();
  // Heartbeats come every 100 ms: asked again until one has (10 s at most).
  json again;
  for (auto end = std::chrono::steady_clock::now() + 10s;
       std::chrono::steady_clock::now() < end;
       std::this_thread::sleep_for(50ms)) {
    again = body_of(c.Get("/api/v1/miners"));
    if (seen(again) > first)
      break;
  }
  EXPECT_GT(seen(again), first) << again.dump();
  auto [s9, snap] = ctl_env(p.port, admin_key, "--json snapshot");
  EXPECT_EQ(s9, 0) << snap;
  EXPECT_GT(last_json_line(snap)["snapshot_index"].get<uint64_t>(), 0u) << snap;
  // No key at all: 401, exit 3.
  auto [s10, anon] = ctl_env(p.port, "", "status");
  EXPECT_EQ(s10, 3) << anon;
  EXPECT_NE(anon.find("401"), std::string::npos) << anon;
}

// The API configured from the oracle's config file ([http]): a host name
// for the address, a per-key rate (429 with Retry-After past it), no keys
// file (loopback only, and the oracle says so); and the queue's bound as
// a 429 too.
TEST(api, from_the_config_file_with_its_limits) {
  auto dir = temp_dir("api-conf");
  cleanup tidy{dir};
  {
    std::ofstream f{dir + "/oracle.toml"};
    f << "[http]\nlisten = \"localhost:0\"\nrate_per_key = 1\n"
         "max_connections = 2\n";
  }
  std::vector<std::string> a{"oracle", "--config", dir + "/oracle.toml", "--data-dir",
                             dir + "/db", "--port", "0", "--max-queued-sessions", "1"};
  for (auto& f : fast_pool_flags())
    a.push_back(f);
  child oracle{a, dir + "/oracle.out"};
  ASSERT_TRUE(oracle.wait_for_output("HTTP API on", 20s)) << oracle.errors();
  auto out = oracle.output();
  EXPECT_NE(out.find("no --api-keys: open to anyone on this host, loopback only"),
            std::string::npos) << out;
  int port = http_port(out);
  ASSERT_GT(port, 0) << out;
  httplib::Client c{"127.0.0.1", port};
  // The queue holds one session (no node serves it): the second is 429.
  auto r = c.Post("/api/v1/sessions", R"({"session_id":"q1"})", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 201) << r->body;
  r = c.Post("/api/v1/sessions", R"({"session_id":"q2"})", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 429) << r->body;
  EXPECT_EQ(body_of(r)["error"]["code"], "queue_full") << r->body;
  // Past the burst at one request a second: 429 with Retry-After.
  int limited = 0;
  std::string retry_after, code;
  for (int i = 0; i < 80 && limited == 0; ++i) {
    auto g = c.Get("/api/v1/info");
    ASSERT_TRUE(g);
    if (g->status == 429) {
      ++limited;
      retry_after = g->get_header_value("Retry-After");
      code = body_of(g)["error"]["code"].get<std::string>();
    } else {
      EXPECT_EQ(g->status, 200);
    }
  }
  EXPECT_EQ(limited, 1);
  EXPECT_EQ(retry_after, "1");
  EXPECT_EQ(code, "rate_limited");
  // Two connections open (accepted first: the listen queue keeps their
  // order), the most the file allows: the next one is answered 503.
  {
    int a = connect_loopback(static_cast<uint16_t>(port));
    int b = connect_loopback(static_cast<uint16_t>(port));
    ASSERT_GE(a, 0);
    ASSERT_GE(b, 0);
    auto g = c.Get("/api/v1/info");
    ASSERT_TRUE(g);
    EXPECT_EQ(g->status, 503) << g->body;
    EXPECT_EQ(body_of(g)["error"]["code"], "too_many_connections") << g->body;
    ::close(a);
    ::close(b);
  }
  oracle.signal(SIGTERM);
  EXPECT_EQ(oracle.wait_exit(20s), 0) << oracle.errors();
}

TEST(api, refuses_a_public_address_without_keys) {
  auto dir = temp_dir("api-open");
  cleanup tidy{dir};
  auto [rc, out] = run(oracle_args(dir + "/db", "0", {"--http", "0.0.0.0:0"}),
                       dir + "/oracle.out", 30s);
  EXPECT_EQ(rc, 1);
  EXPECT_NE(read_file(dir + "/oracle.out.err").find("--api-keys"), std::string::npos)
    << read_file(dir + "/oracle.out.err");
  auto [krc, key] = run({"keygen", "--api-key"}, dir + "/key.out");
  EXPECT_EQ(krc, 0);
  EXPECT_EQ(key.rfind("np_", 0), 0u) << key;
  EXPECT_EQ(key.size(), 3u + 64u + 1u);
}

} // namespace
} // namespace nodepool::testing

namespace nodepool::testing {
namespace {

/// The official `openai` package from npm (tools/test installs it into the
/// build's npm/ folder), run by Node.js against a real oracle.
TEST(api, the_official_openai_client_works_by_changing_only_the_url) {
  std::string npm = NODEPOOL_NPM_DIR;
  if (!std::filesystem::exists(npm + "/node_modules/openai/package.json"))
    GTEST_SKIP() << "the openai npm package is not in " << npm
                 << " (tools/test installs it)";
  auto dir = temp_dir("api-openai");
  cleanup tidy{dir};
  api_pool p{dir, 3};
  ASSERT_GT(p.port, 0) << p.oracle->errors();
  auto st = p.wait_nodes(3);
  ASSERT_EQ(st["nodes"]["by_state"]["ephemeral"], 3) << st.dump();
  auto [rc, out] = run_shell("NODEPOOL_NPM_DIR=" + npm + " timeout 120 node "
                             + std::string{NODEPOOL_SOURCE_DIR}
                             + "/tests/openai_client/client.mjs http://127.0.0.1:"
                             + std::to_string(p.port) + "/v1 " + client_key
                             + " llama-3-8b");
  ASSERT_EQ(rc, 0) << out;
  auto j = last_json_line(out);
  EXPECT_EQ(j["chat_object"], "chat.completion") << out;
  EXPECT_GT(j["chunks"].get<int>(), 2) << out;
  EXPECT_EQ(j["finish_reason"], "stop") << out;
  EXPECT_EQ(j["wrong_key"]["status"], 401) << out;
  EXPECT_GT(j["completion_chunks"].get<int>(), 2) << out;
  EXPECT_EQ(j["completion_finish_reason"], "stop") << out;
  // Four requests, four ephemeral sessions, each ended with its answer.
  auto done = p.wait_status(
    [](const json& j) { return j["sessions"]["completed"] == 4; }, 30s);
  EXPECT_EQ(done["sessions"]["completed"], 4) << done.dump();
  EXPECT_EQ(done["sessions"]["active"], 0) << done.dump();
}

} // namespace
} // namespace nodepool::testing
