// Oracle, miners and a client as separate processes on loopback, talking
// over CAF's middleman.
#include <nlohmann/json.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "bank.hpp"
#include "proc.hpp"
#include "sim_backend.hpp"
#include "support/fake_openai.hpp"

using namespace std::chrono_literals;

namespace nodepool::testing {
namespace {

using nodepool::challenge_bank;
using nodepool::sim_knowledge;
using nodepool::sim_backend;

/// A TCP relay on loopback to `target`: each connection it accepts is
/// relayed to a connection of its own to the target. `mute()` makes the
/// connections open at that moment lose everything the target sends back
/// (what the client sends still arrives); later connections are relayed
/// whole. That is a peer that takes requests and never answers on one
/// connection, and answers on a new one.
class tcp_relay {
public:
  explicit tcp_relay(uint16_t target) : target_(target) {
    listen_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(listen_, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ::listen(listen_, 64);
    socklen_t len = sizeof a;
    ::getsockname(listen_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { run(); });
  }
  ~tcp_relay() {
    stop_ = true;
    thread_.join();
    for (auto& p : pairs_) {
      ::close(p.client);
      ::close(p.target);
    }
    ::close(listen_);
  }
  uint16_t port() const { return port_; }
  size_t accepted() const { return accepted_; }
  void mute() {
    std::lock_guard<std::mutex> g{mu_};
    for (auto& p : pairs_)
      p.muted = true;
  }

private:
  struct link {
    int client, target;
    bool muted = false;
  };
  void run() {
    while (!stop_) {
      std::vector<pollfd> fds{{listen_, POLLIN, 0}};
      {
        std::lock_guard<std::mutex> g{mu_};
        for (auto& p : pairs_) {
          fds.push_back({p.client, POLLIN, 0});
          fds.push_back({p.target, POLLIN, 0});
        }
      }
      if (::poll(fds.data(), fds.size(), 20) <= 0)
        continue;
      std::lock_guard<std::mutex> g{mu_};
      if (fds[0].revents & POLLIN) {
        int c = ::accept(listen_, nullptr, nullptr);
        int t = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.sin_port = htons(target_);
        if (c >= 0 && ::connect(t, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
          pairs_.push_back({c, t});
          ++accepted_;
        } else {
          ::close(c);
          ::close(t);
        }
      }
      // The links polled above are the first ones of pairs_ (new ones are
      // added at the end); a link that ends is closed and taken out.
      std::vector<bool> gone(pairs_.size(), false);
      char buf[65536];
      for (size_t i = 1; i + 1 < fds.size(); i += 2) {
        auto k = (i - 1) / 2;
        auto& p = pairs_[k];
        for (int side = 0; side < 2; ++side) {
          if (!(fds[i + side].revents & (POLLIN | POLLHUP | POLLERR)))
            continue;
          int from = side == 0 ? p.client : p.target;
          int to = side == 0 ? p.target : p.client;
          auto n = ::read(from, buf, sizeof buf);
          if (n <= 0) {
            gone[k] = true;
            break;
          }
          if (side == 1 && p.muted)
            continue;  // what the target sends is lost
          if (::send(to, buf, static_cast<size_t>(n), MSG_NOSIGNAL) != n)
            gone[k] = true;
        }
      }
      for (size_t k = gone.size(); k-- > 0;)
        if (gone[k]) {
          ::close(pairs_[k].client);
          ::close(pairs_[k].target);
          pairs_.erase(pairs_.begin() + static_cast<long>(k));
        }
    }
  }

  uint16_t target_;
  int listen_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<size_t> accepted_{0};
  std::mutex mu_;
  std::vector<link> pairs_;
  std::thread thread_;
};

/// Polls `nodepool status` (with `extra` flags) until `pred` holds or
/// `limit` passes.
template <class Pred>
nlohmann::json wait_status(const std::string& dir, const std::string& target,
                           Pred pred, std::chrono::seconds limit,
                           const std::vector<std::string>& extra = {}) {
  auto end = std::chrono::steady_clock::now() + limit;
  nlohmann::json j;
  std::vector<std::string> args{"status", "--oracle", target, "--json",
                                "--sessions"};
  args.insert(args.end(), extra.begin(), extra.end());
  while (std::chrono::steady_clock::now() < end) {
    auto [rc, out] = run(args, dir + "/status.out", 20s);
    if (rc == 0) {
      j = last_json_line(out);
      if (!j.is_discarded() && pred(j))
        return j;
    }
    std::this_thread::sleep_for(200ms);
  }
  return j;
}

TEST(multiprocess, oracle_miner_and_client_on_loopback) {
  auto dir = temp_dir("mp");
  cleanup tidy{dir};
  // The faulty nodes must stay out of the pool, not be retired: a retired
  // node makes the miner exit 1, which this test does not expect.
  child oracle{oracle_args(dir + "/db", "0", {"--max-strikes", "1000"}),
               dir + "/oracle.out"};
  ASSERT_TRUE(oracle.wait_for_output("listening on", 20s)) << oracle.errors();
  auto target = "127.0.0.1:" + listening_port(oracle.output());
  child miner{{"miner", "--oracle", target, "--nodes", "6", "--behaviour",
               "healthy:4,wrong:1,garbage:1", "--deadline-hint-ms", "1000"},
              dir + "/miner.out"};
  ASSERT_TRUE(miner.wait_for_output("connected", 20s)) << miner.errors();
  auto [rc, out] = run({"submit", "--oracle", target, "--sessions", "20",
                        "--prefix", "mp", "--max-tasks", "3"},
                       dir + "/submit.out");
  ASSERT_EQ(rc, 0) << out;
  auto j = wait_status(dir, target,
                       [](const nlohmann::json& j) {
                         return j["sessions"]["completed"].get<int>()
                                  + j["sessions"]["failed"].get<int>()
                                >= 20;
                       },
                       60s);
  EXPECT_EQ(j["sessions"]["completed"].get<int>(), 20) << j.dump();
  EXPECT_EQ(j["nodes"]["total"].get<int>(), 6);
  // The wrong and the garbage node never enter the pool: at most the four
  // healthy ones are in it (or reserved, or being re-validated after a
  // session, which needs a passed test before).
  EXPECT_LE(j["nodes"]["by_state"]["ephemeral"].get<int>()
              + j["nodes"]["by_state"]["reserved"].get<int>()
              + j["nodes"]["by_state"]["revalidating"].get<int>(),
            4)
    << j.dump();
  EXPECT_GE(j["nodes"]["by_state"]["quarantined"].get<int>()
              + j["nodes"]["by_state"]["retired"].get<int>(),
            1);
  miner.signal(SIGTERM);
  EXPECT_EQ(miner.wait_exit(20s), 0) << miner.errors();
  oracle.signal(SIGTERM);
  EXPECT_EQ(oracle.wait_exit(20s), 0) << oracle.errors();
  auto [crc, cout] = run({"check", "--data-dir", dir + "/db", "--json"},
                         dir + "/check.out");
  EXPECT_EQ(crc, 0) << cout;
  auto c = last_json_line(cout);
  EXPECT_TRUE(c["violations"].empty()) << cout;
  EXPECT_EQ(c["sessions"]["completed"].get<int>(), 20);
}

TEST(multiprocess, a_program_embedding_node_actors_serves_an_oracle) {
  auto dir = temp_dir("embed");
  cleanup tidy{dir};
  child oracle{oracle_args(dir + "/db"), dir + "/oracle.out"};
  ASSERT_TRUE(oracle.wait_for_output("listening on", 20s)) << oracle.errors();
  auto port = listening_port(oracle.output());
  child miner{{"127.0.0.1", port, "3"}, dir + "/example.out", EXAMPLE_MINER_BIN};
  ASSERT_TRUE(miner.wait_for_output("serving 3", 20s)) << miner.errors();
  // The oracle's status once its three nodes are in the pool (30 s at most).
  auto three_in_pool = [&] {
    return wait_status(dir, "127.0.0.1:" + port,
                       [](const nlohmann::json& j) {
                         return j["nodes"]["by_state"]["ephemeral"].get<int>() == 3;
                       },
                       30s);
  };
  auto j = three_in_pool();
  EXPECT_EQ(j["nodes"]["by_state"]["ephemeral"].get<int>(), 3) << j.dump();
  // The oracle restarts on its port: the program connects again and its
  // nodes register again, pass their tests and are back in the pool.
  oracle.signal(SIGTERM);
  ASSERT_EQ(oracle.wait_exit(20s), 0) << oracle.errors();
  ASSERT_TRUE(miner.wait_for_output("oracle gone", 20s)) << miner.errors();
  child again{oracle_args(dir + "/db", port), dir + "/oracle2.out"};
  ASSERT_TRUE(again.wait_for_output("listening on", 20s)) << again.errors();
  ASSERT_TRUE(miner.wait_for_output("connected again", 20s)) << miner.errors();
  j = three_in_pool();
  EXPECT_EQ(j["nodes"]["by_state"]["ephemeral"].get<int>(), 3) << j.dump();
  miner.signal(SIGTERM);
  EXPECT_EQ(miner.wait_exit(20s), 0) << miner.errors();
  again.signal(SIGTERM);
  EXPECT_EQ(again.wait_exit(20s), 0);
}

TEST(multiprocess, miner_with_an_openai_backend_passes_tests_and_serves) {
  // A stand-in for llama.cpp's server or vLLM: right answers, decorated the
  // way real models decorate them, and a fixed output for tasks.
  std::atomic<int> requests{0}, other_model{0}, other_key{0};
  fake_server model{[&](const httplib::Request& req, httplib::Response& res) {
    ++requests;
    auto body = nlohmann::json::parse(req.body);
    // --openai-model defaults to the first of --models; the key comes from
    // $OPENAI_API_KEY when --openai-key is not given.
    if (body["model"] != "llama-3-8b-instruct")
      ++other_model;
    if (req.get_header_value("Authorization") != "Bearer key-from-env")
      ++other_key;
    auto prompt = body["messages"][0]["content"].get<std::string>();
    // A model that knows the bank (sim_knowledge), decorated.
    res.set_content(completion(" " + sim_knowledge::builtin()->answer(prompt) + ".\n"),
                    "application/json");
  }};
  auto dir = temp_dir("openai");
  cleanup tidy{dir};
  child oracle{oracle_args(dir + "/db"), dir + "/oracle.out"};
  ASSERT_TRUE(oracle.wait_for_output("listening on", 20s)) << oracle.errors();
  auto target = "127.0.0.1:" + listening_port(oracle.output());
  ::setenv("OPENAI_API_KEY", "key-from-env", 1);  // inherited by the miner
  child miner{{"miner", "--oracle", target, "--nodes", "2", "--backend",
               "openai", "--openai-url", model.url(), "--models",
               "llama-3-8b-instruct,llama-3-8b"},
              dir + "/miner.out"};
  ::unsetenv("OPENAI_API_KEY");
  ASSERT_TRUE(miner.wait_for_output("connected", 20s)) << miner.errors();
  auto [rc, out] = run({"submit", "--oracle", target, "--sessions", "3",
                        "--prefix", "llm", "--max-tasks", "2",
                        "--redundancy", "2"},
                       dir + "/submit.out");
  ASSERT_EQ(rc, 0) << out;
  auto j = wait_status(dir, target,
                       [](const nlohmann::json& j) {
                         return j["sessions"]["completed"].get<int>() == 3;
                       },
                       60s);
  EXPECT_EQ(j["sessions"]["completed"].get<int>(), 3) << j.dump();
  EXPECT_EQ(j["tests"]["failed"].get<int>(), 0) << j.dump();
  EXPECT_GT(requests.load(), 2 * 5);  // two admission tests of five questions
  EXPECT_EQ(other_model.load(), 0);
  EXPECT_EQ(other_key.load(), 0);
  miner.signal(SIGTERM);
  oracle.signal(SIGTERM);
  EXPECT_EQ(oracle.wait_exit(20s), 0);
}

// SIGTERM ends a miner while its inference server has not answered: the
// request under way is cut, and the prompts queued behind it are not sent
// (before, the miner waited for each, up to --openai-timeout-ms apiece).
TEST(multiprocess, sigterm_ends_a_miner_whose_model_has_not_answered) {
  std::atomic<int> requests{0};
  std::atomic<bool> release{false};
  fake_server model{[&](const httplib::Request&, httplib::Response& res) {
    ++requests;
    for (int i = 0; i < 6000 && !release; ++i)  // at most 60 s
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    res.set_content(completion("late"), "application/json");
  }};
  auto dir = temp_dir("openai-stop");
  cleanup tidy{dir};
  child oracle{oracle_args(dir + "/db"), dir + "/oracle.out"};
  ASSERT_TRUE(oracle.wait_for_output("listening on", 20s)) << oracle.errors();
  auto target = "127.0.0.1:" + listening_port(oracle.output());
  child miner{{"miner", "--oracle", target, "--nodes", "1", "--backend",
               "openai", "--openai-url", model.url(), "--openai-timeout-ms",
               "60000"},
              dir + "/miner.out"};
  ASSERT_TRUE(miner.wait_for_output("connected", 20s)) << miner.errors();
  for (int i = 0; i < 1000 && requests.load() == 0; ++i)
    std::this_thread::sleep_for(10ms);
  ASSERT_EQ(requests.load(), 1);  // the admission test's first question
  miner.signal(SIGTERM);
  auto rc = miner.wait_exit(10s);
  release = true;
  EXPECT_EQ(rc, 0) << miner.errors();
  EXPECT_EQ(requests.load(), 1);  // the test's other questions never sent
  oracle.signal(SIGTERM);
  EXPECT_EQ(oracle.wait_exit(20s), 0);
}

// A model slower than a test's deadline: the question under way is cut
// at the deadline and the test's other questions are not sent (before,
// each went to the server in turn, long after its answer could count).
TEST(multiprocess, questions_past_the_tests_deadline_are_not_sent) {
  std::atomic<int> requests{0};
  std::atomic<bool> release{false};
  fake_server model{[&](const httplib::Request&, httplib::Response& res) {
    ++requests;
    for (int i = 0; i < 150 && !release; ++i)  // 1.5 s a question
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    res.set_content(completion("slow"), "application/json");
  }};
  auto dir = temp_dir("openai-deadline");
  cleanup tidy{dir};
  // Tests have 1 s (the fast flags'); a failed node is retested after a
  // minute, not the fast flags' second.
  auto args = oracle_args(dir + "/db");
  for (size_t k = 0; k + 1 < args.size(); ++k)
    if (args[k] == "--quarantine-backoff-ms" || args[k] == "--quarantine-backoff-max-ms")
      args[k + 1] = "60000";
  child oracle{args, dir + "/oracle.out"};
  ASSERT_TRUE(oracle.wait_for_output("listening on", 20s)) << oracle.errors();
  auto target = "127.0.0.1:" + listening_port(oracle.output());
  child miner{{"miner", "--oracle", target, "--nodes", "1", "--backend",
               "openai", "--openai-url", model.url()},
              dir + "/miner.out"};
  // The admission test fails at its deadline (no answer came) ...
  wait_status(dir, target,
              [](const nlohmann::json& j) { return j["tests"]["failed"].get<int>() >= 1; },
              30s);
  // ... and by then, and for as long again as a question takes, only its
  // first question reached the server.
  std::this_thread::sleep_for(1500ms);
  EXPECT_EQ(requests.load(), 1) << miner.errors();
  release = true;
  miner.signal(SIGTERM);
  EXPECT_EQ(miner.wait_exit(10s), 0) << miner.errors();
  oracle.signal(SIGTERM);
  EXPECT_EQ(oracle.wait_exit(20s), 0);
}

/// An oracle's arguments (oracle_args on `dir`/db), logging at info: its
/// events, each test's end among them, go to its stderr.
std::vector<std::string> info_oracle_args(const std::string& dir,
                                          const std::vector<std::string>& extra) {
  auto args = oracle_args(dir + "/db", "0", extra);
  args.insert(args.begin(), {"--log-level", "info"});
  return args;
}

/// Lines of an oracle's event log that record a test's end for nodes
/// named `prefix`-*: "passed" or the failure's reason, one per test.
std::vector<std::string> test_ends(const std::string& log, const std::string& prefix) {
  std::vector<std::string> out;
  std::istringstream in{log};
  std::string line;
  while (std::getline(in, line)) {
    if (line.find("event=test_finished") == std::string::npos
        || line.find("node_id=" + prefix + "-") == std::string::npos)
      continue;
    if (line.find("passed=true") != std::string::npos) {
      out.push_back("passed");
      continue;
    }
    auto r = line.find(" reason=");
    out.push_back(r == std::string::npos
                    ? "deadline"
                    : line.substr(r + 8, line.find(' ', r + 8) - r - 8));
  }
  return out;
}

/// A model that takes `ms` a question and knows the bank, counting the
/// requests it serves at once.
struct slow_model {
  std::atomic<int> now{0}, most{0};
  fake_server server;
  explicit slow_model(int ms)
    : server{[this, ms](const httplib::Request& req, httplib::Response& res) {
        int n = ++now;
        for (int m = most.load(); n > m && !most.compare_exchange_weak(m, n);)
          ;
        std::this_thread::sleep_for(std::chrono::milliseconds(ms));
        res.set_content(completion(sim_knowledge::builtin()->answer(prompt_of(req))),
                        "application/json");
        --now;
      }} {}
};

// A test's five questions within 1 s from a model that takes 350 ms each:
// one at a time they take 1.75 s and fail; with --openai-parallel 5 they go
// side by side and pass.
TEST(multiprocess, a_tests_questions_go_side_by_side_with_openai_parallel) {
  slow_model wide_model{350}, narrow_model{350};
  auto dir = temp_dir("openai-parallel");
  cleanup tidy{dir};
  child oracle{info_oracle_args(dir, {}), dir + "/oracle.out"};
  ASSERT_TRUE(oracle.wait_for_output("listening on", 20s)) << oracle.errors();
  auto target = "127.0.0.1:" + listening_port(oracle.output());
  child wide{{"miner", "--oracle", target, "--nodes", "1", "--id-prefix", "wide",
              "--backend", "openai", "--openai-url", wide_model.server.url(),
              "--openai-parallel", "5"},
             dir + "/wide.out"};
  child narrow{{"miner", "--oracle", target, "--nodes", "1", "--id-prefix", "narrow",
                "--backend", "openai", "--openai-url", narrow_model.server.url()},
               dir + "/narrow.out"};
  auto end = std::chrono::steady_clock::now() + 30s;
  while (std::chrono::steady_clock::now() < end
         && (test_ends(oracle.errors(), "wide").empty()
             || test_ends(oracle.errors(), "narrow").empty()))
    std::this_thread::sleep_for(100ms);
  auto wide_ends = test_ends(oracle.errors(), "wide");
  auto narrow_ends = test_ends(oracle.errors(), "narrow");
  ASSERT_FALSE(wide_ends.empty()) << oracle.errors();
  ASSERT_FALSE(narrow_ends.empty()) << oracle.errors();
  EXPECT_EQ(wide_ends.front(), "passed") << oracle.errors();
  EXPECT_NE(narrow_ends.front(), "passed") << oracle.errors();
  EXPECT_GE(wide_model.most.load(), 2);
  EXPECT_LE(wide_model.most.load(), 5);
  EXPECT_EQ(narrow_model.most.load(), 1);
  wide.signal(SIGTERM);
  narrow.signal(SIGTERM);
  EXPECT_EQ(wide.wait_exit(10s), 0) << wide.errors();
  EXPECT_EQ(narrow.wait_exit(10s), 0) << narrow.errors();
  oracle.signal(SIGTERM);
  EXPECT_EQ(oracle.wait_exit(20s), 0);
}

TEST(multiprocess, miners_without_the_model_never_pass_a_real_oracles_tests) {
  // The cheat the old tests let through: a "model" that is a hand-written
  // solver of arithmetic prompts, behind the openai backend.
  fake_server solver{[&](const httplib::Request& req, httplib::Response& res) {
    res.set_content(completion(sim_backend::arithmetic_solver(prompt_of(req))),
                    "application/json");
  }};
  auto dir = temp_dir("cheats");
  cleanup tidy{dir};
  child oracle{info_oracle_args(dir, {"--max-strikes", "2"}), dir + "/oracle.out"};
  ASSERT_TRUE(oracle.wait_for_output("listening on", 20s)) << oracle.errors();
  auto target = "127.0.0.1:" + listening_port(oracle.output());
  // Three healthy nodes and one copycat (it replays their answers) in one
  // miner; two sim solvers in another; two nodes on the solver "model".
  child honest{{"miner", "--oracle", target, "--nodes", "4", "--id-prefix", "mixed",
                "--behaviour", "healthy:3,copycat:1"},
               dir + "/honest.out"};
  child sim_solver{{"miner", "--oracle", target, "--nodes", "2", "--id-prefix",
                    "solver", "--behaviour", "solver"},
                   dir + "/solver.out"};
  child llm_solver{{"miner", "--oracle", target, "--nodes", "2", "--id-prefix", "llm",
                    "--backend", "openai", "--openai-url", solver.url()},
                   dir + "/llm.out"};
  // Two strikes retire a node: every cheat is retired, the healthy stay.
  auto j = wait_status(dir, target,
                       [](const nlohmann::json& j) {
                         return j["nodes"]["by_state"]["retired"].get<int>() == 5
                                && j["nodes"]["by_state"]["ephemeral"].get<int>() == 3;
                       },
                       60s);
  EXPECT_EQ(j["nodes"]["by_state"]["retired"].get<int>(), 5) << j.dump();
  EXPECT_EQ(j["nodes"]["by_state"]["ephemeral"].get<int>(), 3) << j.dump();
  EXPECT_EQ(j["tests"]["passed"].get<int>(), 3) << j.dump();  // the healthy, once
  // Each cheat failed both of its tests: on its answers, or by the
  // deadline once its answers were refused as a replay (two solvers send
  // the same answers, blank ones, to different questions).
  auto log = oracle.errors();
  auto failed = [](const std::vector<std::string>& xs) {
    return std::count(xs.begin(), xs.end(), "wrong_answers")
           + std::count(xs.begin(), xs.end(), "deadline");
  };
  for (auto prefix : {"solver", "llm"}) {
    auto ends = test_ends(log, prefix);
    EXPECT_EQ(ends.size(), 4u) << prefix << "\n" << log;
    EXPECT_EQ(failed(ends), 4) << prefix << "\n" << log;
  }
  auto mixed = test_ends(log, "mixed");
  EXPECT_EQ(std::count(mixed.begin(), mixed.end(), "passed"), 3) << log;
  EXPECT_EQ(failed(mixed), 2) << log;
  // A miner whose every node was retired ends by itself with 3 (its unit
  // does not restart it); one that still serves ends on SIGTERM with 0,
  // its retired node reported when it went.
  EXPECT_EQ(sim_solver.wait_exit(20s), 3) << sim_solver.errors();
  EXPECT_EQ(llm_solver.wait_exit(20s), 3) << llm_solver.errors();
  EXPECT_NE(sim_solver.errors().find("sent a node away: retired"), std::string::npos)
    << sim_solver.errors();
  honest.signal(SIGTERM);
  EXPECT_EQ(honest.wait_exit(20s), 0) << honest.errors();
  EXPECT_NE(honest.errors().find("sent a node away: retired"), std::string::npos)
    << honest.errors();
  oracle.signal(SIGTERM);
  EXPECT_EQ(oracle.wait_exit(20s), 0);
}

TEST(multiprocess, a_node_answering_from_another_model_fails_the_cross_check) {
  auto dir = temp_dir("crosscheck");
  cleanup tidy{dir};
  // A bank with one peer item, so that every test asks it.
  {
    std::ofstream f{dir + "/bank.jsonl"};
    f << R"({"id":"a","level":0,"grade":"exact","prompt":"Capital of France? One word.","answer":"Paris"})" "\n"
      << R"({"id":"b","level":0,"grade":"number","prompt":"Legs of a spider? Number only.","answer":"8"})" "\n"
      << R"({"id":"c","level":0,"grade":"exact","prompt":"Opposite of hot? One word.","answer":"cold"})" "\n"
      << R"({"id":"d","level":0,"grade":"number","prompt":"Days in a week? Number only.","answer":"7"})" "\n"
      << R"({"id":"p","level":0,"grade":"peer","prompt":"Describe a sunrise over the sea in two sentences."})" "\n";
  }
  auto bank = challenge_bank::load(dir + "/bank.jsonl");
  sim_knowledge knows{bank};
  // Two "models" that both know the reference answers; their open-ended
  // outputs differ, as two different models' do.
  std::atomic<int> peer_prompts{0};
  auto model = [&](bool other) {
    return [&, other](const httplib::Request& req, httplib::Response& res) {
      auto prompt = prompt_of(req);
      bool peer = prompt == bank.find("p")->prompt;
      peer_prompts += peer;
      nlohmann::json out = nlohmann::json::parse(completion(
        peer && other ? sim_backend::unrelated_output(1) : knows.answer(prompt)));
      out["usage"] = {{"completion_tokens", 12}};
      res.set_content(out.dump(), "application/json");
    };
  };
  fake_server model_a{model(false)}, model_b{model(true)};
  child oracle{info_oracle_args(dir, {"--bank", dir + "/bank.jsonl"}), dir + "/oracle.out"};
  ASSERT_TRUE(oracle.wait_for_output("listening on", 20s)) << oracle.errors();
  EXPECT_NE(oracle.errors().find("cognitive tests: " + dir + "/bank.jsonl (5 items"),
            std::string::npos)
    << oracle.errors();
  auto target = "127.0.0.1:" + listening_port(oracle.output());
  child a{{"miner", "--oracle", target, "--nodes", "3", "--id-prefix", "a",
           "--backend", "openai", "--openai-url", model_a.url()},
          dir + "/a.out"};
  auto j = wait_status(dir, target,
                       [](const nlohmann::json& j) {
                         return j["nodes"]["by_state"]["ephemeral"].get<int>() == 3;
                       },
                       30s);
  ASSERT_EQ(j["nodes"]["by_state"]["ephemeral"].get<int>(), 3) << j.dump();
  child b{{"miner", "--oracle", target, "--nodes", "2", "--id-prefix", "b",
           "--backend", "openai", "--openai-url", model_b.url()},
          dir + "/b.out"};
  j = wait_status(dir, target,
                  [](const nlohmann::json& j) {
                    return j["tests"]["failed"].get<int>() >= 2;
                  },
                  30s);
  auto log = oracle.errors();
  // Each of B's nodes failed; by the time the log is read a quarantined
  // one may have been retested after its backoff, and failed again.
  auto b_ends = test_ends(log, "b");
  EXPECT_GE(b_ends.size(), 2u) << log;
  EXPECT_EQ(b_ends, std::vector<std::string>(b_ends.size(), "cross_check")) << log;
  // Model A's nodes: the first has no peer to compare with, the others
  // agree with it.
  EXPECT_EQ(test_ends(log, "a"), std::vector<std::string>(3, "passed")) << log;
  EXPECT_GE(peer_prompts.load(), 5);
  // Model B again, listing first a model no other node serves: its answers
  // are still checked against model A's, which it also lists.
  auto failed_before = j["tests"]["failed"].get<int>();
  child c{{"miner", "--oracle", target, "--nodes", "2", "--id-prefix", "c",
           "--models", "zz-unique,llama-3-8b", "--backend", "openai",
           "--openai-url", model_b.url()},
          dir + "/c.out"};
  j = wait_status(dir, target,
                  [&](const nlohmann::json& j) {
                    return test_ends(oracle.errors(), "c").size() >= 2;
                  },
                  30s);
  log = oracle.errors();
  auto c_ends = test_ends(log, "c");
  EXPECT_GE(c_ends.size(), 2u) << log;
  EXPECT_EQ(c_ends, std::vector<std::string>(c_ends.size(), "cross_check")) << log;
  EXPECT_GE(j["tests"]["failed"].get<int>(), failed_before + 2) << j.dump();
  c.signal(SIGTERM);
  a.signal(SIGTERM);
  b.signal(SIGTERM);
  oracle.signal(SIGTERM);
  EXPECT_EQ(oracle.wait_exit(20s), 0);
}

TEST(multiprocess, tokens_the_backend_reports_reach_the_throughput_bound) {
  // Right answers with usage.completion_tokens, from a server far slower
  // (in tokens per second) than the oracle asks for: too_slow.
  fake_server model{[&](const httplib::Request& req, httplib::Response& res) {
    auto out = nlohmann::json::parse(
      completion(sim_knowledge::builtin()->answer(prompt_of(req))));
    out["usage"] = {{"completion_tokens", 3}};
    res.set_content(out.dump(), "application/json");
  }};
  auto dir = temp_dir("tokens");
  cleanup tidy{dir};
  child oracle{info_oracle_args(dir, {"--test-min-tokens-per-s", "1000000"}), dir + "/oracle.out"};
  ASSERT_TRUE(oracle.wait_for_output("listening on", 20s)) << oracle.errors();
  auto target = "127.0.0.1:" + listening_port(oracle.output());
  child miner{{"miner", "--oracle", target, "--nodes", "2", "--id-prefix", "t",
               "--backend", "openai", "--openai-url", model.url()},
              dir + "/miner.out"};
  wait_status(dir, target,
              [](const nlohmann::json& j) { return j["tests"]["failed"].get<int>() >= 2; },
              30s);
  auto log = oracle.errors();
  EXPECT_EQ(test_ends(log, "t"), std::vector<std::string>(2, "too_slow")) << log;
  EXPECT_NE(log.find("tokens/s, at least 1000000 needed"), std::string::npos) << log;
  miner.signal(SIGTERM);
  oracle.signal(SIGTERM);
  EXPECT_EQ(oracle.wait_exit(20s), 0);
}

TEST(multiprocess, a_malformed_bank_stops_the_oracle_with_its_line) {
  auto dir = temp_dir("badbank");
  cleanup tidy{dir};
  {
    std::ofstream f{dir + "/bank.jsonl"};
    f << R"({"id":"a","level":0,"grade":"exact","prompt":"P?","answer":"x"})" "\n"
      << R"({"id":"b","level":0,"grade":"number","prompt":"Q?","answer":"many"})" "\n";
  }
  auto [rc, out] = run(oracle_args(dir + "/db", "0", {"--bank", dir + "/bank.jsonl"}),
                       dir + "/oracle.out", 20s);
  EXPECT_NE(rc, 0);
  auto err = read_file(dir + "/oracle.out.err");
  EXPECT_NE(err.find(dir + "/bank.jsonl:2: answer: 'many' is not a number"),
            std::string::npos)
    << err;
  // `nodepool bank` checks a bank the same way, before it is deployed.
  auto [brc, bout] = run({"bank", dir + "/bank.jsonl"}, dir + "/bank.out", 20s);
  EXPECT_NE(brc, 0);
  auto [grc, gout] = run({"bank"}, dir + "/good.out", 20s);
  EXPECT_EQ(grc, 0) << gout;
  EXPECT_NE(gout.find("builtin: 48 items, valid"), std::string::npos) << gout;
  EXPECT_EQ(gout.find("without must"), std::string::npos) << gout;
  // A similar item graded by the embedding alone is valid, and named.
  {
    std::ofstream f{dir + "/loose.jsonl"};
    f << R"({"id":"a","level":0,"grade":"exact","prompt":"P?","answer":"x"})" "\n"
      << R"({"id":"why-sky","level":0,"grade":"similar","prompt":"Why is the sky blue?","answer":"Air scatters blue light more than red."})" "\n";
  }
  auto [lrc, lout] = run({"bank", dir + "/loose.jsonl"}, dir + "/loose.out", 20s);
  EXPECT_EQ(lrc, 0) << lout;
  EXPECT_NE(lout.find("note: 1 similar item(s) without must"), std::string::npos) << lout;
  EXPECT_NE(lout.find(": why-sky"), std::string::npos) << lout;
}

TEST(multiprocess, the_grader_is_not_in_what_a_miner_links) {
  // What a miner program links (the miner library and the core under it)
  // and builds (the example miner) defines no part of the grader: the
  // choice of items, the grading, the secret. The grader's own library is
  // the control: the same command finds them there.
  auto defines = [](const std::string& file) {
    auto [rc, out] = run_shell("nm -C --defined-only " + file
                               + " 2>/dev/null | grep -E 'nodepool::(choose_challenges|"
                                 "grade_answer|agrees_with_peers|load_or_create_secret)'"
                                 " | wc -l");
    EXPECT_EQ(rc, 0) << out;
    return std::stoi(out);
  };
  EXPECT_GE(defines(NODEPOOL_GRADER_LIB), 4);
  EXPECT_EQ(defines(NODEPOOL_CORE_LIB), 0);
  EXPECT_EQ(defines(NODEPOOL_MINER_LIB), 0);
  EXPECT_EQ(defines(EXAMPLE_MINER_BIN), 0);
}

TEST(multiprocess, mutual_tls_between_oracle_miners_and_clients) {
  auto dir = temp_dir("tls");
  cleanup tidy{dir};
  auto [grc, gout] = run_shell(
    "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=nodepool-test"
    " -keyout " + dir + "/key.pem -out " + dir + "/cert.pem");
  ASSERT_EQ(grc, 0) << gout;
  std::vector<std::string> tls{"--tls-cert", dir + "/cert.pem", "--tls-key",
                               dir + "/key.pem", "--tls-ca", dir + "/cert.pem"};
  auto with_tls = [&](std::vector<std::string> a) {
    a.insert(a.end(), tls.begin(), tls.end());
    return a;
  };
  child oracle{oracle_args(dir + "/db", "0", tls), dir + "/oracle.out"};
  ASSERT_TRUE(oracle.wait_for_output("listening on", 20s)) << oracle.errors();
  auto target = "127.0.0.1:" + listening_port(oracle.output());
  child miner{with_tls({"miner", "--oracle", target, "--nodes", "2"}),
              dir + "/miner.out"};
  ASSERT_TRUE(miner.wait_for_output("connected", 20s)) << miner.errors();
  auto [src, sout] = run(with_tls({"status", "--oracle", target, "--json"}),
                         dir + "/status.out", 20s);
  ASSERT_EQ(src, 0) << read_file(dir + "/status.out.err");
  auto j = wait_status(dir, target,
                       [](const nlohmann::json& j) {
                         return j["nodes"]["by_state"]["ephemeral"].get<int>() == 2;
                       },
                       30s, tls);
  EXPECT_EQ(j["nodes"]["by_state"]["ephemeral"].get<int>(), 2) << j.dump();
  // Without TLS there is no handshake: a clear failure, not a hang.
  auto [prc, pout] = run({"miner", "--oracle", target, "--connect-timeout", "1"},
                         dir + "/plain.out", 30s);
  EXPECT_EQ(prc, 1);
  EXPECT_NE(read_file(dir + "/plain.out.err").find("cannot reach oracle"),
            std::string::npos);
  // A key that is not there is refused before anything starts.
  auto bad = with_tls({"miner", "--oracle", target});
  bad[bad.size() - 3] = dir + "/missing.pem";
  auto [brc, bout] = run(bad, dir + "/bad.out", 30s);
  EXPECT_EQ(brc, 2);
  EXPECT_NE(read_file(dir + "/bad.out.err").find("missing.pem"),
            std::string::npos);
  miner.signal(SIGTERM);
  oracle.signal(SIGTERM);
  EXPECT_EQ(oracle.wait_exit(20s), 0);
}

TEST(multiprocess, miner_without_an_oracle_says_why_and_fails) {
  auto dir = temp_dir("nooracle");
  cleanup tidy{dir};
  child miner{{"miner", "--oracle", "127.0.0.1:1", "--connect-timeout", "0.5"},
              dir + "/miner.out"};
  EXPECT_EQ(miner.wait_exit(30s), 1);
  EXPECT_NE(miner.errors().find("cannot reach oracle"), std::string::npos)
    << miner.errors();
}

// A stopped oracle's port still takes connections (the kernel accepts
// them), but nothing answers: a client given it and a live one goes on to
// the live one within a handshake's wait (half a second), and a client
// given it alone says why it failed.
TEST(multiprocess, a_stopped_oracle_does_not_hold_a_client_back) {
  auto dir = temp_dir("stopped");
  cleanup tidy{dir};
  child stopped{oracle_args(dir + "/a", "0"), dir + "/a.out"};
  child live{oracle_args(dir + "/b", "0"), dir + "/b.out"};
  ASSERT_TRUE(stopped.wait_for_output("listening on", 20s)) << stopped.errors();
  ASSERT_TRUE(live.wait_for_output("listening on", 20s)) << live.errors();
  auto a = "127.0.0.1:" + listening_port(stopped.output());
  auto b = "127.0.0.1:" + listening_port(live.output());
  stopped.signal(SIGSTOP);
  auto t0 = std::chrono::steady_clock::now();
  auto [rc, out] = run({"status", "--oracle", a + "," + b, "--json"}, dir + "/status.out", 30s);
  auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_EQ(rc, 0) << read_file(dir + "/status.out.err");
  EXPECT_LT(took, 4s) << "the stopped oracle held the client back";
  auto [rc2, out2] = run({"status", "--oracle", a}, dir + "/status2.out", 30s);
  EXPECT_NE(rc2, 0);
  EXPECT_NE(read_file(dir + "/status2.out.err").find("no handshake from"), std::string::npos)
    << read_file(dir + "/status2.out.err");
  stopped.signal(SIGCONT);
  auto [rc3, out3] = run({"status", "--oracle", a}, dir + "/status3.out", 30s);
  EXPECT_EQ(rc3, 0) << read_file(dir + "/status3.out.err");
}

// An oracle that takes a client's requests on a connection but never
// answers on it (seen after an oracle was stopped and continued: its CAF
// broker had lost its way back to that one connection's peer): the
// client shuts that connection down and makes a new one, instead of asking
// on it until its --connect-timeout runs out.
TEST(multiprocess, a_connection_an_oracle_stopped_answering_on_is_made_again) {
  auto dir = temp_dir("mute");
  cleanup tidy{dir};
  child oracle{oracle_args(dir + "/db", "0"), dir + "/oracle.out"};
  ASSERT_TRUE(oracle.wait_for_output("listening on", 20s)) << oracle.errors();
  tcp_relay relay{static_cast<uint16_t>(std::stoi(listening_port(oracle.output())))};
  child submit{{"--log-level", "info", "submit", "--oracle",
                "127.0.0.1:" + std::to_string(relay.port()), "--sessions", "3",
                "--prefix", "m", "--interval-ms", "1000", "--connect-timeout",
                "30"},
               dir + "/submit.out"};
  ASSERT_TRUE(submit.wait_for_output("accepted m-0", 30s)) << submit.errors();
  relay.mute();
  auto before = relay.accepted();
  EXPECT_EQ(submit.wait_exit(60s), 0) << submit.errors();
  auto out = submit.output();
  EXPECT_NE(out.find("accepted m-1"), std::string::npos) << out << submit.errors();
  EXPECT_NE(out.find("accepted m-2"), std::string::npos) << out << submit.errors();
  EXPECT_NE(submit.errors().find("did not answer twice"), std::string::npos)
    << submit.errors();
  EXPECT_GT(relay.accepted(), before);
}

// The same for a miner: the oracle's messages to its nodes are lost on
// their connection (what the nodes send still arrives). The miner's check
// that its oracle leads goes unanswered; it shuts that connection down,
// connects again, and its nodes serve.
TEST(multiprocess, a_miner_whose_oracle_stopped_answering_connects_again) {
  auto dir = temp_dir("mute-miner");
  cleanup tidy{dir};
  child oracle{oracle_args(dir + "/db", "0", {"--max-strikes", "1000"}),
               dir + "/oracle.out"};
  ASSERT_TRUE(oracle.wait_for_output("listening on", 20s)) << oracle.errors();
  auto target = "127.0.0.1:" + listening_port(oracle.output());
  tcp_relay relay{static_cast<uint16_t>(std::stoi(listening_port(oracle.output())))};
  child miner{{"--log-level", "info", "miner", "--oracle",
               "127.0.0.1:" + std::to_string(relay.port()), "--nodes", "2",
               "--deadline-hint-ms", "1000"},
              dir + "/miner.out"};
  auto in_pool = [](const nlohmann::json& j) {
    return j["nodes"]["by_state"]["ephemeral"].get<int>() == 2;
  };
  ASSERT_TRUE(in_pool(wait_status(dir, target, in_pool, 30s))) << miner.errors();
  relay.mute();
  auto before = relay.accepted();
  EXPECT_TRUE(miner.wait_for_errors("did not answer twice", 30s)) << miner.errors();
  auto [rc, out] = run({"submit", "--oracle", target, "--sessions", "5",
                        "--prefix", "mm", "--max-tasks", "2"},
                       dir + "/submit.out");
  ASSERT_EQ(rc, 0) << out;
  auto j = wait_status(dir, target,
                       [](const nlohmann::json& j) {
                         return j["sessions"]["completed"].get<int>() >= 5;
                       },
                       60s);
  EXPECT_EQ(j["sessions"]["completed"].get<int>(), 5) << j.dump() << miner.errors();
  EXPECT_GT(relay.accepted(), before);
  miner.signal(SIGTERM);
  EXPECT_EQ(miner.wait_exit(20s), 0) << miner.errors();
}

// README: the miner exits 1 if it cannot reach the oracle within
// --connect-timeout; that holds when the oracle goes away for good while the
// miner runs, not only at start.
TEST(multiprocess, miner_whose_oracle_does_not_come_back_fails) {
  auto dir = temp_dir("gone");
  cleanup tidy{dir};
  child oracle{oracle_args(dir + "/db"), dir + "/oracle.out"};
  ASSERT_TRUE(oracle.wait_for_output("listening on", 20s)) << oracle.errors();
  auto target = "127.0.0.1:" + listening_port(oracle.output());
  child miner{{"miner", "--oracle", target, "--nodes", "2",
               "--connect-timeout", "1"},
              dir + "/miner.out"};
  ASSERT_TRUE(miner.wait_for_output("connected", 20s)) << miner.errors();
  oracle.signal(SIGKILL);
  EXPECT_EQ(oracle.wait_exit(10s), -SIGKILL);
  EXPECT_EQ(miner.wait_exit(30s), 1) << miner.errors();
  EXPECT_NE(miner.errors().find("oracle gone"), std::string::npos)
    << miner.errors();
}

// A crash is reported on the process's log: the signal and the stack, and
// the process still ends by that signal, so its parent (chaos, systemd) sees
// a crash and not a clean exit.
TEST(multiprocess, a_crashing_oracle_reports_the_signal_and_its_stack) {
  auto dir = temp_dir("crash");
  cleanup tidy{dir};
  child oracle{oracle_args(dir + "/db"), dir + "/oracle.out"};
  ASSERT_TRUE(oracle.wait_for_output("listening on", 20s)) << oracle.errors();
  oracle.signal(SIGSEGV);
  EXPECT_EQ(oracle.wait_exit(20s), -SIGSEGV);
  auto errors = oracle.errors();
  auto report = errors.find("nodepool: fatal signal 11; stack:\n");
  ASSERT_NE(report, std::string::npos) << errors;
  // backtrace_symbols_fd writes one line per frame, each naming its object.
  EXPECT_NE(errors.find("nodepool(", report), std::string::npos) << errors;
}

TEST(multiprocess, miner_without_a_model_is_refused) {
  auto dir = temp_dir("nomodel");
  cleanup tidy{dir};
  for (auto backend : {"sim", "openai"}) {
    auto [rc, out] = run({"miner", "--oracle", "127.0.0.1:1",
                          "--connect-timeout", "0.2", "--models", ",",
                          "--backend", backend, "--openai-url",
                          "http://127.0.0.1:1"},
                         dir + "/miner.out", 20s);
    EXPECT_EQ(rc, 2) << backend;
    EXPECT_NE(read_file(dir + "/miner.out.err").find("--models"),
              std::string::npos)
      << backend << ": " << read_file(dir + "/miner.out.err");
  }
}

TEST(multiprocess, bad_config_is_refused_with_the_key_named) {
  auto dir = temp_dir("badcfg");
  cleanup tidy{dir};
  {
    std::ofstream f{dir + "/bad.toml"};
    f << "[pool]\ntest_deadline_ms = \"soon\"\n";
  }
  auto [rc, out] = run({"oracle", "--config", dir + "/bad.toml", "--data-dir",
                        dir + "/db", "--port", "0"},
                       dir + "/oracle.out", 20s);
  EXPECT_EQ(rc, 2);
  EXPECT_NE(read_file(dir + "/oracle.out.err").find("pool.test_deadline_ms"),
            std::string::npos);
  auto [rc2, out2] = run({"oracle", "--data-dir", dir + "/db", "--port", "0",
                          "--pass-mark", "7"},
                         dir + "/oracle2.out", 20s);
  EXPECT_EQ(rc2, 2);
  EXPECT_NE(read_file(dir + "/oracle2.out.err").find("pass_mark"),
            std::string::npos);
  // A config file that stops the oracle with exit status 2 and `names` in
  // what it says.
  auto refused = [&](const std::string& name, const std::string& text,
                     const std::string& names) {
    {
      std::ofstream f{dir + "/" + name + ".toml"};
      f << text;
    }
    auto [rc, out] = run({"oracle", "--config", dir + "/" + name + ".toml",
                          "--data-dir", dir + "/db", "--port", "0"},
                         dir + "/" + name + ".out", 20s);
    EXPECT_EQ(rc, 2) << out;
    auto err = read_file(dir + "/" + name + ".out.err");
    EXPECT_NE(err.find(names), std::string::npos) << err;
  };
  // A misspelt table is an unknown key too, not silently ignored (its port
  // and data directory would be).
  refused("typo", "[oracel]\nport = 1\n", "oracel");
  // A keep-alive too short to be one.
  refused("keepalive", "[http]\nevents_keepalive_ms = 5\n", "http.events_keepalive_ms");
}

TEST(multiprocess, sample_config_loads_and_flags_override_it) {
  auto dir = temp_dir("cfg");
  cleanup tidy{dir};
  auto sample = std::string{NODEPOOL_SOURCE_DIR} + "/deploy/nodepool.toml";
  child oracle{{"oracle", "--config", sample, "--data-dir", dir + "/db",
                "--port", "0", "--max-strikes", "2"},
               dir + "/oracle.out"};
  ASSERT_TRUE(oracle.wait_for_output("listening on", 20s)) << oracle.errors();
  oracle.signal(SIGTERM);
  ASSERT_EQ(oracle.wait_exit(20s), 0);
  // The parameters the oracle ran with are in its log (Configure).
  auto [rc, out] = run({"check", "--data-dir", dir + "/db", "--json"},
                       dir + "/check.out");
  EXPECT_EQ(rc, 0) << out;
  auto c = last_json_line(out);
  EXPECT_EQ(c["params"]["max_strikes"].get<int>(), 2) << out;
}

} // namespace
} // namespace nodepool::testing
