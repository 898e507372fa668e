// Tests of the pure helpers: text embeddings, the
// simulated inference backend and the parameters.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "bank.hpp"
#include "cli/os.hpp"
#include "embedding.hpp"
#include "params.hpp"
#include "sim_backend.hpp"

using namespace nodepool;

namespace {

// =============================================================================
// embeddings
// =============================================================================

const std::string kFox = "The quick brown fox jumps over the lazy dog near the river bank.";
const std::string kFox2 = "The quick brown fox jumps over the lazy dog near the river bank!";
const std::string kOther = "zq81723 xv 99120 kw0018 jj plmokn";

TEST(Embedding, IdenticalTextsHaveCosineOne) {
  EXPECT_NEAR(cosine(embed(kFox), embed(kFox)), 1.0, 1e-6);
  EXPECT_NEAR(cosine(embed("ab"), embed("ab")), 1.0, 1e-6);
  double norm = 0;
  for (auto x : embed(kFox))
    norm += static_cast<double>(x) * x;
  EXPECT_NEAR(norm, 1.0, 1e-5);
}

TEST(Embedding, SimilarTextsAreCloseUnrelatedAreFar) {
  EXPECT_GT(cosine(embed(kFox), embed(kFox2)), 0.9);
  EXPECT_LT(cosine(embed(kFox), embed(kOther)), 0.3);
  EXPECT_LT(cosine(embed("Paris is the capital of France."),
                   embed("49271 8812 00913 77")),
            0.3);
}

TEST(Embedding, EmptyTextIsZero) {
  auto e = embed("");
  for (auto x : e)
    EXPECT_EQ(x, 0.0f);
  EXPECT_EQ(cosine(e, embed(kFox)), 0.0);
  EXPECT_EQ(cosine(e, e), 0.0);
}

TEST(Embedding, OutlierIsTheOddOneOutOfThree) {
  EXPECT_EQ(outliers({kFox, kFox2, kOther}, 0.85), std::vector<size_t>{2});
  EXPECT_EQ(outliers({kOther, kFox, kFox}, 0.85), std::vector<size_t>{0});
  EXPECT_EQ(outliers({kFox, kOther, kFox2}, 0.85), std::vector<size_t>{1});
}

TEST(Embedding, NoOutlierWhenAllAgree) {
  EXPECT_TRUE(outliers({kFox, kFox, kFox}, 0.85).empty());
  EXPECT_TRUE(outliers({kFox, kFox2, kFox}, 0.85).empty());
  EXPECT_TRUE(outliers({kFox, kFox2}, 0.85).empty());
  EXPECT_TRUE(outliers({kFox}, 0.85).empty());
  EXPECT_TRUE(outliers({}, 0.85).empty());
}

TEST(Embedding, NoMajorityMeansTwoBlamedOrNone) {
  // Two that disagree: both are returned (no way to tell who is right).
  EXPECT_EQ(outliers({kFox, kOther}, 0.85), (std::vector<size_t>{0, 1}));
  // Three that all disagree: nobody is blamed.
  EXPECT_TRUE(outliers({kFox, kOther, "Paris is the capital of France."}, 0.85)
                .empty());
  // Five with a majority of three: the two others are outliers.
  EXPECT_EQ(outliers({kFox, kOther, kFox2, "49271 8812 00913 77", kFox}, 0.85),
            (std::vector<size_t>{1, 3}));
}

// =============================================================================
// sim backend
// =============================================================================

std::map<behaviour, size_t> tally(const std::vector<behaviour>& xs) {
  std::map<behaviour, size_t> out;
  for (auto b : xs)
    ++out[b];
  return out;
}

TEST(SimBackend, BehaviourNamesRoundTrip) {
  for (auto b : {behaviour::healthy, behaviour::slow, behaviour::wrong,
                 behaviour::flaky, behaviour::crash, behaviour::garbage}) {
    auto p = parse_behaviour(to_string(b));
    ASSERT_TRUE(p.has_value());
    EXPECT_EQ(*p, b);
  }
  EXPECT_FALSE(parse_behaviour("Healthy").has_value());
  EXPECT_FALSE(parse_behaviour("").has_value());
}

TEST(SimBackend, ExpandMixGivesTheAskedCounts) {
  std::string err;
  auto xs = expand_mix("healthy:8,wrong:1,slow:1", 10, 1, err);
  EXPECT_TRUE(err.empty()) << err;
  ASSERT_EQ(xs.size(), 10u);
  auto t = tally(xs);
  EXPECT_EQ(t[behaviour::healthy], 8u);
  EXPECT_EQ(t[behaviour::wrong], 1u);
  EXPECT_EQ(t[behaviour::slow], 1u);
  // Same seed, same order; the seed does change the order.
  std::set<std::vector<behaviour>> orders;
  for (uint64_t seed = 1; seed <= 10; ++seed) {
    auto a = expand_mix("healthy:8,wrong:1,slow:1", 10, seed, err);
    EXPECT_EQ(a, expand_mix("healthy:8,wrong:1,slow:1", 10, seed, err));
    orders.insert(a);
  }
  EXPECT_GE(orders.size(), 3u);
  // Remainders: 5 nodes half and half.
  xs = expand_mix("healthy:1,wrong:1", 5, 3, err);
  ASSERT_EQ(xs.size(), 5u);
  t = tally(xs);
  EXPECT_EQ(t[behaviour::healthy] + t[behaviour::wrong], 5u);
  EXPECT_GE(t[behaviour::healthy], 2u);
  EXPECT_GE(t[behaviour::wrong], 2u);
  // No weight means 1; a zero weight means none.
  xs = expand_mix("healthy", 4, 1, err);
  EXPECT_EQ(tally(xs)[behaviour::healthy], 4u);
  xs = expand_mix("healthy:0,crash:2", 6, 1, err);
  EXPECT_EQ(tally(xs)[behaviour::crash], 6u);
  EXPECT_TRUE(expand_mix("healthy:1", 0, 1, err).empty());
  EXPECT_TRUE(err.empty()) << err;
}

TEST(SimBackend, ExpandMixRejectsBadSpecs) {
  for (std::string spec :
       {"bogus:1", "healthy:x", "", "healthy:0", "healthy:-1", "healthy:nan",
        "healthy:inf,wrong:1", "healthy:1e309", "healthy:1x", ",",
        "healthy:1,,wrong:1", "healthy:1:2", ":3",
        "healthy:1e308,wrong:1e308"}) {
    std::string err;
    auto xs = expand_mix(spec, 10, 1, err);
    EXPECT_FALSE(err.empty()) << "spec '" << spec << "' was accepted";
    EXPECT_TRUE(xs.empty()) << spec;
  }
  std::string err;
  expand_mix("healthy:1,bogus:2", 10, 1, err);
  EXPECT_NE(err.find("bogus"), std::string::npos) << err;
}

TEST(SimBackend, HealthyOutputsAgreeAndWrongOnesAreOutliers) {
  sim_backend h1{behaviour::healthy, 1, 5000}, h2{behaviour::healthy, 2, 5000};
  sim_backend w{behaviour::wrong, 3, 5000};
  for (auto prompt : {"Summarise the history of Rome.", "Write a haiku.",
                      "Explain Raft in one paragraph."}) {
    auto a = h1.infer(prompt), b = h2.infer(prompt), c = w.infer(prompt);
    EXPECT_EQ(a.text, b.text);
    EXPECT_EQ(a.text, sim_backend::healthy_output(prompt));
    EXPECT_EQ(outliers({a.text, b.text, c.text}, 0.85), std::vector<size_t>{2})
      << c.text;
  }
}

TEST(SimBackend, CrashNodeDiesGarbageNodeSendsGarbage) {
  sim_backend c{behaviour::crash, 9, 5000};
  int messages = 0;
  while (!c.crashed() && messages < 100) {
    c.answer("Compute 1 + 1. Answer with the number only.", 0, 5000);
    ++messages;
  }
  EXPECT_TRUE(c.crashed());
  EXPECT_GE(messages, 5);
  EXPECT_LE(messages, 25);

  sim_backend g{behaviour::garbage, 9, 5000};
  int garbage = 0;
  for (int i = 0; i < 40; ++i) {
    auto r = g.answer("How many days are in a week? Answer with the number only.",
                      0, 5000);
    if (!r.garbage) {
      EXPECT_NE(r.text, "7");  // when it decodes, it is still wrong
    }
    garbage += r.garbage;
    auto t = g.infer("prompt");
    EXPECT_TRUE(t.garbage || t.bad_reveal);
  }
  EXPECT_GT(garbage, 0);
  EXPECT_LT(garbage, 40);
}

TEST(SimBackend, SameSeedSameReplies) {
  sim_backend a{behaviour::flaky, 77, 5000}, b{behaviour::flaky, 77, 5000};
  int wrong = 0;
  auto& items = challenge_bank::builtin()->items();
  for (int i = 0; i < 50; ++i) {
    auto& item = items[static_cast<size_t>(i) % items.size()];
    auto& p = item.prompt;
    auto x = a.answer(p, 0, 5000), y = b.answer(p, 0, 5000);
    EXPECT_EQ(x.text, y.text);
    EXPECT_EQ(x.delay_ms, y.delay_ms);
    wrong += x.text != sim_knowledge::builtin()->answer(p);
    auto s = a.infer(p), t = b.infer(p);
    EXPECT_EQ(s.text, t.text);
    EXPECT_EQ(s.silent, t.silent);
  }
  EXPECT_GT(wrong, 0);   // flaky is sometimes wrong ...
  EXPECT_LT(wrong, 40);  // ... but mostly right
}

// =============================================================================
// params
// =============================================================================

TEST(Params, DefaultsAreValidAndMatchTheDesign) {
  params p;
  EXPECT_EQ(p.validate(), "");
  EXPECT_EQ(p.test_deadline_ms, 5000);
  EXPECT_EQ(p.tasks_before_release, 5u);
  EXPECT_EQ(p.reserve_period_ms, 300000);
  EXPECT_EQ(p.ephemeral_window_ms, 30 * 60 * 1000);
  EXPECT_DOUBLE_EQ(p.embedding_threshold, 0.85);
  EXPECT_DOUBLE_EQ(p.pass_mark, 0.6);
  EXPECT_EQ(p.quarantine_backoff_ms, 30000);
  EXPECT_EQ(p.quarantine_backoff_max_ms, 300000);
  EXPECT_EQ(p.max_strikes, 5u);
  EXPECT_DOUBLE_EQ(p.reputation_alpha, 0.1);
  EXPECT_EQ(p.max_level, 5u);
}

TEST(Params, ValidateCatchesBadValues) {
  struct bad {
    const char* field;
    void (*edit)(params&);
  };
  const bad cases[] = {
    {"test_deadline_ms", [](params& p) { p.test_deadline_ms = 0; }},
    {"challenges_per_test", [](params& p) { p.challenges_per_test = 0; }},
    {"pass_mark", [](params& p) { p.pass_mark = 0; }},
    {"pass_mark", [](params& p) { p.pass_mark = 1.5; }},
    {"min_nodes", [](params& p) { p.min_nodes = 0; }},
    {"min_nodes", [](params& p) { p.min_nodes = 4; }},
    {"redundancy", [](params& p) { p.redundancy = 0; }},
    {"redundancy", [](params& p) { p.redundancy = 4; }},
    {"tasks_before_release", [](params& p) { p.tasks_before_release = 0; }},
    {"reserve_period_ms", [](params& p) { p.reserve_period_ms = -1; }},
    {"idle_threshold_ms", [](params& p) { p.idle_threshold_ms = 0; }},
    {"queue_timeout_ms", [](params& p) { p.queue_timeout_ms = 0; }},
    {"task_phase_timeout_ms", [](params& p) { p.task_phase_timeout_ms = 0; }},
    {"ephemeral_window_ms", [](params& p) { p.ephemeral_window_ms = 0; }},
    {"heartbeat_timeout_ms",
     [](params& p) { p.heartbeat_timeout_ms = p.heartbeat_interval_ms; }},
    {"heartbeat_interval_ms", [](params& p) { p.heartbeat_interval_ms = 0; }},
    {"quarantine_backoff_ms", [](params& p) { p.quarantine_backoff_ms = 0; }},
    {"quarantine_backoff_max_ms",
     [](params& p) { p.quarantine_backoff_max_ms = p.quarantine_backoff_ms - 1; }},
    {"max_strikes", [](params& p) { p.max_strikes = 0; }},
    {"panic_share", [](params& p) { p.panic_share = 1.5; }},
    {"panic_share", [](params& p) { p.panic_share = -0.1; }},
    {"embedding_threshold", [](params& p) { p.embedding_threshold = 1.1; }},
    {"reputation_alpha", [](params& p) { p.reputation_alpha = 0; }},
    {"max_level", [](params& p) { p.max_level = 6; }},
    {"recent_size", [](params& p) { p.recent_size = 0; }},
    {"selection", [](params& p) { p.selection = "fastest"; }},
    {"snapshot_every", [](params& p) { p.snapshot_every = 0; }},
    {"tick_interval_ms", [](params& p) { p.tick_interval_ms = 0; }},
  };
  for (auto& c : cases) {
    params p;
    c.edit(p);
    auto err = p.validate();
    EXPECT_NE(err.find(c.field), std::string::npos)
      << c.field << ": got '" << err << "'";
  }
}

class ParamsFile : public ::testing::Test {
protected:
  ParamsFile() {
    dir_ = cli::make_temp_dir("params");
    path = dir_ + "/nodepool.toml";
  }
  ~ParamsFile() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  void write(const std::string& text) { std::ofstream{path} << text; }
  /// The error load_params throws for `text`, empty if it loads.
  std::string error_for(const std::string& text) {
    write(text);
    try {
      load_params(path);
    } catch (const std::runtime_error& e) {
      return e.what();
    }
    return {};
  }
  std::string dir_;
  std::string path;
};

TEST_F(ParamsFile, ReadsThePoolTable) {
  write(R"(
# an oracle config
[oracle]
listen = "0.0.0.0:7000"

[pool]
test_deadline_ms = 2000
pass_mark = 0.7
panic_share = 1
selection = "random"
seed = 42
max_strikes = 3
ephemeral_window_ms = 600000
)");
  params base;
  base.recent_size = 4;  // not in the file: the base value stays
  auto p = load_params(path, base);
  EXPECT_EQ(p.test_deadline_ms, 2000);
  EXPECT_DOUBLE_EQ(p.pass_mark, 0.7);
  EXPECT_DOUBLE_EQ(p.panic_share, 1.0);  // an integer is a fine number
  EXPECT_EQ(p.selection, "random");
  EXPECT_EQ(p.seed, 42u);
  EXPECT_EQ(p.max_strikes, 3u);
  EXPECT_EQ(p.ephemeral_window_ms, 600000);
  EXPECT_EQ(p.recent_size, 4u);
  EXPECT_EQ(p.reserve_period_ms, params{}.reserve_period_ms);
}

TEST_F(ParamsFile, FileWithoutPoolTableGivesTheBase) {
  write("[oracle]\nlisten = \"x\"\n");
  params base;
  base.max_strikes = 9;
  EXPECT_EQ(load_params(path, base).max_strikes, 9u);
}

TEST_F(ParamsFile, RejectsUnknownKeys) {
  auto err = error_for("[pool]\nmax_strikez = 3\n");
  EXPECT_NE(err.find("pool.max_strikez"), std::string::npos) << err;
  EXPECT_NE(err.find(path), std::string::npos) << err;
}

TEST_F(ParamsFile, RejectsWrongTypesNamingTheKey) {
  const std::pair<const char*, const char*> cases[] = {
    {"pass_mark = \"high\"", "pool.pass_mark"},
    {"pass_mark = true", "pool.pass_mark"},
    {"selection = 3", "pool.selection"},
    {"max_strikes = \"5\"", "pool.max_strikes"},
    {"max_strikes = true", "pool.max_strikes"},
    {"max_strikes = 1.5", "pool.max_strikes"},
    {"max_strikes = [1, 2]", "pool.max_strikes"},
    {"test_deadline_ms = -5", "pool.test_deadline_ms"},
    {"max_strikes = 4294967296", "pool.max_strikes"},
    {"promote_after = 4294967297", "pool.promote_after"},
    {"seed = -1", "pool.seed"},
  };
  for (auto& [line, key] : cases) {
    auto err = error_for(std::string("[pool]\n") + line + "\n");
    EXPECT_NE(err.find(key), std::string::npos)
      << line << " gave '" << err << "'";
  }
}

TEST_F(ParamsFile, RejectsInvalidValues) {
  auto err = error_for("[pool]\npass_mark = 2.0\n");
  EXPECT_NE(err.find("pass_mark"), std::string::npos) << err;
  err = error_for("[pool]\nmin_nodes = 5\nmax_nodes = 2\n");
  EXPECT_NE(err.find("min_nodes"), std::string::npos) << err;
}

TEST_F(ParamsFile, RejectsBrokenTomlAndMissingFiles) {
  auto err = error_for("[pool\nmax_strikes = 3\n");
  EXPECT_NE(err.find(path), std::string::npos) << err;
  EXPECT_THROW(load_params(dir_ + "/missing.toml"), std::runtime_error);
}

} // namespace

// --- parameters as JSON, flags and Configure commands -------------------------

#include "pool_state.hpp"

namespace {

TEST(ParamsJson, RoundTripsEveryField) {
  nodepool::params p;
  p.test_deadline_ms = 1234;
  p.pass_mark = 0.75;
  p.selection = "random";
  p.seed = 99;
  std::string err;
  auto q = nodepool::params_from_json(nodepool::to_json(p), nodepool::params{}, err);
  EXPECT_TRUE(err.empty()) << err;
  EXPECT_EQ(nodepool::to_json(q), nodepool::to_json(p));
}

TEST(ParamsJson, RefusesUnknownKeysAndWrongTypes) {
  std::string err;
  nodepool::params_from_json(R"({"nope": 1})", {}, err);
  EXPECT_NE(err.find("nope"), std::string::npos);
  err.clear();
  nodepool::params_from_json(R"({"max_strikes": "five"})", {}, err);
  EXPECT_NE(err.find("max_strikes"), std::string::npos);
  err.clear();
  nodepool::params_from_json("not json", {}, err);
  EXPECT_FALSE(err.empty());
}

TEST(ParamsFlags, SetParamParsesByTypeAndNamesTheKey) {
  nodepool::params p;
  EXPECT_EQ(nodepool::set_param(p, "max_strikes", "7"), "");
  EXPECT_EQ(p.max_strikes, 7u);
  EXPECT_EQ(nodepool::set_param(p, "pass_mark", "0.5"), "");
  EXPECT_DOUBLE_EQ(p.pass_mark, 0.5);
  EXPECT_EQ(nodepool::set_param(p, "selection", "random"), "");
  EXPECT_EQ(p.selection, "random");
  EXPECT_NE(nodepool::set_param(p, "max_strikes", "7x").find("max_strikes"),
            std::string::npos);
  EXPECT_NE(nodepool::set_param(p, "max_strikes", "-1"), "");
  EXPECT_NE(nodepool::set_param(p, "bogus", "1").find("bogus"),
            std::string::npos);
  EXPECT_EQ(p.max_strikes, 7u);  // a refused value changes nothing
  EXPECT_EQ(nodepool::param_names().size(), 36u);
}

TEST(ConfigureCommand, ChangesParametersThroughTheLog) {
  nodepool::pool_state ps;
  nodepool::params p;
  p.max_strikes = 2;
  nodepool::pb::Command c;
  c.mutable_configure()->set_params_json(nodepool::to_json(p));
  auto r = ps.apply(c, 1000);
  ASSERT_FALSE(r.refused);
  EXPECT_TRUE(r.changed);
  EXPECT_EQ(ps.config().max_strikes, 2u);
  // The snapshot carries them.
  nodepool::pool_state again;
  again.restore(ps.snapshot());
  EXPECT_EQ(again.config().max_strikes, 2u);
  // Invalid parameters are refused and change nothing.
  p.pass_mark = 3;
  c.mutable_configure()->set_params_json(nodepool::to_json(p));
  r = ps.apply(c, 1001);
  ASSERT_TRUE(r.refused);
  EXPECT_EQ(r.refused->name(), "bad_params");
  EXPECT_EQ(ps.config().max_strikes, 2u);
}

TEST(ParamsFileShape, PoolThatIsNotATableIsRefused) {
  auto path = std::string{"/tmp/nodepool-pool-not-table.toml"};
  {
    std::ofstream f{path};
    f << "pool = 3\n";
  }
  EXPECT_THROW(nodepool::load_params(path), std::runtime_error);
  std::remove(path.c_str());
}

} // namespace
