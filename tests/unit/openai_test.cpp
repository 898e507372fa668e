// The `openai` backend's client against a real HTTP server on loopback.
#include <atomic>
#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>
#include <thread>

#include "openai_client.hpp"
#include "support/fake_openai.hpp"

using namespace nodepool;
using nodepool::testing::completion;
using nodepool::testing::fake_server;

namespace {

openai_config config(const std::string& url, const std::string& model,
                     const std::string& key, int64_t timeout_ms) {
  openai_config c;
  c.base_url = url;
  c.model = model;
  c.api_key = key;
  c.timeout_ms = timeout_ms;
  return c;
}

TEST(OpenAiClient, SendsAChatCompletionAndReturnsTheContent) {
  nlohmann::json seen;
  std::string auth;
  fake_server srv{[&](const httplib::Request& req, httplib::Response& res) {
    seen = nlohmann::json::parse(req.body);
    auth = req.get_header_value("Authorization");
    res.set_content(completion("391"), "application/json");
  }};
  openai_client c{config(srv.url() + "/", "llama-3-8b", "secret", 5000)};
  std::string err;
  auto out = c.complete("Compute 17 * 23.", err);
  ASSERT_TRUE(out) << err;
  EXPECT_EQ(*out, "391");
  EXPECT_EQ(seen["model"], "llama-3-8b");
  EXPECT_EQ(seen["temperature"], 0);
  EXPECT_EQ(seen["messages"][0]["role"], "user");
  EXPECT_EQ(seen["messages"][0]["content"], "Compute 17 * 23.");
  EXPECT_EQ(auth, "Bearer secret");
}

TEST(OpenAiClient, BaseUrlMayCarryAPathEndingInV1) {
  std::vector<std::string> paths;
  httplib::Server::Handler h = [&](const httplib::Request& req,
                                   httplib::Response& res) {
    paths.push_back(req.path);
    res.set_content(completion("ok"), "application/json");
  };
  fake_server srv{h};
  std::string err;
  for (auto base : {srv.url(), srv.url() + "/v1", srv.url() + "/v1/"}) {
    openai_client c{config(base, "m", "", 5000)};
    EXPECT_TRUE(c.complete("hi", err)) << base << ": " << err;
  }
  EXPECT_EQ(paths, (std::vector<std::string>(3, "/v1/chat/completions")));
}

TEST(OpenAiClient, HttpErrorsAndBadBodiesAreClearErrors) {
  int mode = 0;
  fake_server srv{[&](const httplib::Request&, httplib::Response& res) {
    if (mode == 0) {
      res.status = 503;
      res.set_content("busy", "text/plain");
    } else if (mode == 1) {
      res.set_content("not json", "application/json");
    } else {
      res.set_content(R"({"choices": [{"message": {}}]})", "application/json");
    }
  }};
  openai_client c{config(srv.url(), "m", "", 5000)};
  std::string err;
  EXPECT_FALSE(c.complete("hi", err));
  EXPECT_NE(err.find("503"), std::string::npos) << err;
  mode = 1;
  EXPECT_FALSE(c.complete("hi", err));
  EXPECT_NE(err.find("not a completion"), std::string::npos) << err;
  mode = 2;
  EXPECT_FALSE(c.complete("hi", err));
  EXPECT_NE(err.find("no message content"), std::string::npos) << err;
}

// An answer bigger than the client keeps is refused, whatever the server
// says it is (before, the body was read whole however big).
TEST(OpenAiClient, AnAnswerOverItsSizeIsRefused) {
  fake_server srv{[&](const httplib::Request&, httplib::Response& res) {
    res.set_content(completion(std::string(300000, 'x')), "application/json");
  }};
  auto cfg = config(srv.url(), "m", "", 5000);
  cfg.max_body_bytes = 100000;
  std::string err;
  EXPECT_FALSE(openai_client{cfg}.complete("P?", err));
  EXPECT_NE(err.find("answer over 100000 bytes"), std::string::npos) << err;
  cfg.max_body_bytes = 400000;  // the same answer, allowed
  auto out = openai_client{cfg}.complete("P?", err);
  ASSERT_TRUE(out) << err;
  EXPECT_EQ(out->size(), 300000u);
}

// A server that sends its answer a little at a time, each piece within the
// read timeout, is cut off at the request's limit (before, each read reset
// the clock, and the request lasted as long as the server wished).
TEST(OpenAiClient, AnAnswerSentSlowlyEndsAtTheRequestsLimit) {
  std::atomic<bool> over{false};
  fake_server srv{[&](const httplib::Request&, httplib::Response& res) {
    res.set_chunked_content_provider(
      "application/json", [&](size_t, httplib::DataSink& sink) {
        // 400 pieces 20 ms apart: 8 s for the whole, 0.3 s allowed.
        for (int i = 0; i < 400 && !over; ++i) {
          if (!sink.write(" ", 1))
            return false;
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
        auto body = completion("late");
        sink.write(body.data(), body.size());
        sink.done();
        return true;
      });
  }};
  std::string err;
  auto out = openai_client{config(srv.url(), "m", "", 300)}.complete("P?", err);
  over = true;
  EXPECT_FALSE(out);
  EXPECT_NE(err.find("no whole answer within 300 ms"), std::string::npos) << err;
}

// A request bounded by what is left of its deadline ends then, though the
// client's own timeout is longer (a server that has not begun to answer).
TEST(OpenAiClient, ARequestEndsWithinWhatIsLeftOfItsDeadline) {
  std::atomic<bool> release{false};
  fake_server srv{[&](const httplib::Request&, httplib::Response& res) {
    for (int i = 0; i < 1000 && !release; ++i)  // at most 10 s
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    res.set_content(completion("late"), "application/json");
  }};
  std::string err;
  auto out = openai_client{config(srv.url(), "m", "", 60000)}.complete(
    "P?", err, 0, nullptr, 300);
  release = true;
  // Without the bound it waits for the server (10 s) and gets its answer.
  EXPECT_FALSE(out);
  EXPECT_NE(err.find("no whole answer within 300 ms"), std::string::npos) << err;
}

// cancel_all() ends a request under way (its server has not answered) and
// fails the next ones before they are sent: a miner's Ctrl-C does not wait
// for its inference server.
TEST(OpenAiClient, CancelAllEndsARequestUnderWayAndTheNextOnes) {
  std::atomic<bool> arrived{false}, release{false};
  std::atomic<int> requests{0};
  fake_server srv{[&](const httplib::Request&, httplib::Response& res) {
    ++requests;
    arrived = true;
    for (int i = 0; i < 3000 && !release; ++i)  // at most 30 s
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    res.set_content(completion("too late"), "application/json");
  }};
  auto canceller = std::make_shared<request_canceller>();
  auto cfg = config(srv.url(), "m", "", 60000);
  cfg.canceller = canceller;
  openai_client c{cfg};
  std::string err;
  std::optional<std::string> out;
  std::thread t{[&] { out = c.complete("P?", err); }};
  while (!arrived)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  canceller->cancel_all();
  t.join();  // without the cancel: when the server answers, 30 s later
  bool answered = out.has_value();
  release = true;
  EXPECT_FALSE(answered);
  EXPECT_NE(err.find("cancelled"), std::string::npos) << err;
  std::string err2;
  EXPECT_FALSE(c.complete("Q?", err2));
  EXPECT_NE(err2.find("cancelled"), std::string::npos) << err2;
  EXPECT_EQ(requests.load(), 1);
}

TEST(OpenAiClient, UnreachableServerIsAClearError) {
  std::string url;
  {
    fake_server srv{[](const httplib::Request&, httplib::Response&) {}};
    url = srv.url();
  }  // stopped: nothing listens there now
  openai_client c{config(url, "m", "", 2000)};
  std::string err;
  EXPECT_FALSE(c.complete("hi", err));
  EXPECT_NE(err.find("inference server"), std::string::npos) << err;
}

} // namespace
