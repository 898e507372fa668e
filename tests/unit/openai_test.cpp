// The `openai` backend's client against a real HTTP server on loopback.
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

TEST(OpenAiClient, SendsAChatCompletionAndReturnsTheContent) {
  nlohmann::json seen;
  std::string auth;
  fake_server srv{[&](const httplib::Request& req, httplib::Response& res) {
    seen = nlohmann::json::parse(req.body);
    auth = req.get_header_value("Authorization");
    res.set_content(completion("391"), "application/json");
  }};
  openai_client c{{srv.url() + "/", "llama-3-8b", "secret", 5000}};
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
    openai_client c{{base, "m", "", 5000}};
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
  openai_client c{{srv.url(), "m", "", 5000}};
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

TEST(OpenAiClient, UnreachableServerIsAClearError) {
  std::string url;
  {
    fake_server srv{[](const httplib::Request&, httplib::Response&) {}};
    url = srv.url();
  }  // stopped: nothing listens there now
  openai_client c{{url, "m", "", 2000}};
  std::string err;
  EXPECT_FALSE(c.complete("hi", err));
  EXPECT_NE(err.find("inference server"), std::string::npos) << err;
}

} // namespace
