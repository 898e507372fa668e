// Cognitive tests: the challenge bank (parsing and its errors), the choice
// of items with the oracles' secret, the grading modes, cross-checks, the
// secret file, and what the `sim` backend's nodes answer.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sys/stat.h>
#include <thread>

#include "bank.hpp"
#include "cognitive.hpp"
#include "embedding.hpp"
#include "sim_backend.hpp"

using namespace nodepool;

namespace {

bank_item item(grade_mode g, const std::string& answer, double tol = 0,
               double threshold = 0.8) {
  bank_item it;
  it.id = "x";
  it.grade = g;
  it.prompt = "p";
  it.answer = answer;
  it.tolerance = tol;
  it.threshold = threshold;
  return it;
}

std::vector<std::string> prompts(const test_plan& p) {
  std::vector<std::string> out;
  for (auto* it : p.items)
    out.push_back(it->prompt);
  return out;
}

std::string bank_error_of(const std::string& text) {
  try {
    challenge_bank::parse(text, "bank.jsonl");
  } catch (const bank_error& e) {
    return e.what();
  }
  return "";
}

// -------------------------------------------------------------- grading modes

TEST(Grading, ExactIgnoresCaseSpacesQuotesAndAFinalStop) {
  auto it = item(grade_mode::exact, "5:30 pm");
  for (auto a : {"5:30 pm", "5:30 PM", " `5:30 pm`. ", "\"5:30  pm\".\n", "5:30\tpm"})
    EXPECT_TRUE(grade_answer(it, a)) << a;
  for (auto a : {"5:30", "5:30 am", "It is 5:30 pm", "", "5:30 pm!"})
    EXPECT_FALSE(grade_answer(it, a)) << a;
}

TEST(Grading, NumberWithinTolerance) {
  auto exact = item(grade_mode::number, "86400");
  for (auto a : {"86400", "86,400", "The answer is 86400.", "`86400`", "86400.0"})
    EXPECT_TRUE(grade_answer(exact, a)) << a;
  for (auto a : {"86401", "8640", "eighty-six thousand", "", "86400x2 = 172800",
                 "1,2,3"})
    EXPECT_FALSE(grade_answer(exact, a)) << a;
  auto ball = item(grade_mode::number, "0.05", 0.001);
  EXPECT_TRUE(grade_answer(ball, "0.05"));
  EXPECT_TRUE(grade_answer(ball, "$0.050"));
  EXPECT_FALSE(grade_answer(ball, "0.10"));
  EXPECT_FALSE(grade_answer(ball, "5"));
  auto neg = item(grade_mode::number, "-3");
  EXPECT_TRUE(grade_answer(neg, "-3"));
  EXPECT_FALSE(grade_answer(neg, "3"));
}

TEST(Grading, SimilarAboveThreshold) {
  auto it = item(grade_mode::similar,
                 "Ice floats because it is less dense than liquid water.", 0, 0.5);
  EXPECT_TRUE(grade_answer(it, "Ice floats because it is less dense than liquid water."));
  EXPECT_TRUE(grade_answer(it, "Ice floats since it is less dense than water in liquid form."));
  EXPECT_FALSE(grade_answer(it, "The recipe needs two eggs and a cup of flour."));
  EXPECT_FALSE(grade_answer(it, ""));
  // The question restated is no answer, though its words are near enough
  // the reference's (0.55 and 0.59 against a threshold of 0.5).
  it.prompt = "Explain in one sentence why ice floats on water.";
  EXPECT_FALSE(grade_answer(it, it.prompt));
  EXPECT_FALSE(grade_answer(it, "why ice floats on water"));
  EXPECT_FALSE(grade_answer(it, "Ice floats on water."));
  // Its phrases in an answer of its own are fine.
  EXPECT_TRUE(grade_answer(it, "Ice floats on water because it is less dense than liquid water."));
  EXPECT_TRUE(grade_answer(it, "Ice floats because it is less dense than liquid water."));
  // A peer item has no reference: grading alone never passes it.
  EXPECT_FALSE(grade_answer(item(grade_mode::peer, ""), "anything"));
}

// Words in common with the reference do not make an answer right: "the
// distance from the Sun" shares more of them with a right answer about the
// seasons than a right answer in other words does. The concept the question
// is about (`must`), and no wrong claim (`must_not`), tell them apart.
TEST(Grading, SimilarNeedsTheConceptNotTheWords) {
  auto it = item(grade_mode::similar,
                 "The seasons come from the tilt of the Earth's axis: each "
                 "hemisphere gets the Sun's rays more directly for part of the year.",
                 0, 0.3);
  it.prompt = "In one sentence, what causes the seasons on Earth?";
  const char* wrong = "The seasons come from the Earth's distance from the Sun, "
                      "which changes for each hemisphere during the year.";
  const char* right = "Because Earth's axis is inclined by 23.5 degrees, so "
                      "sunlight strikes each half of the planet at a changing angle.";
  // By the embedding alone the wrong answer passes and scores above the
  // right one.
  auto score = [&](const char* a) {
    return cosine(embed(normalize_answer(a)), embed(normalize_answer(it.answer)));
  };
  EXPECT_GT(score(wrong), score(right));
  EXPECT_TRUE(grade_answer(it, wrong));
  it.must = {{"tilt", "axis", "inclin", "obliqu"}};
  it.must_not = {"distance from the sun", "closer to the sun"};
  EXPECT_FALSE(grade_answer(it, wrong));
  EXPECT_EQ(missing_concept(it, wrong), "must tilt|axis|inclin|obliqu");
  EXPECT_TRUE(grade_answer(it, right)) << score(right);
  EXPECT_TRUE(grade_answer(it, it.answer));
  // Tilt named, with the wrong cause besides: refused.
  EXPECT_FALSE(grade_answer(it, "The tilt matters less than the Earth getting "
                                "closer to the Sun in summer."));
  EXPECT_EQ(missing_concept(it, "in summer we are closer to the sun; tilt too"),
            "must_not closer to the sun");
  // The concept named only to be denied: refused, though its words are
  // there (before, the must check passed it).
  const char* denied = "The seasons are not caused by the tilt of the Earth's "
                       "axis; each hemisphere just gets a changing share of sunlight.";
  EXPECT_EQ(missing_concept(it, denied), "must tilt|axis|inclin|obliqu");
  EXPECT_FALSE(grade_answer(it, denied));
}

TEST(Grading, MentionsMatchesWordBeginningsInOrder) {
  EXPECT_TRUE(mentions("Ice is less dense than water.", "dens"));
  EXPECT_TRUE(mentions("Ice is less dense than water.", "less dens"));
  EXPECT_TRUE(mentions("ICE, IS; DENSER!", "ice is denser"));
  EXPECT_FALSE(mentions("Ice is less dense.", "dense less"));  // order
  EXPECT_FALSE(mentions("condensed", "dens"));                 // a word's start
  EXPECT_FALSE(mentions("Ice is less dense.", "ice dens"));   // consecutive
  EXPECT_FALSE(mentions("anything", ""));
  EXPECT_FALSE(mentions("anything", "--"));
  EXPECT_FALSE(mentions("", "word"));
  // UTF-8 letters are part of words: "été" is not "t".
  EXPECT_TRUE(mentions("En été il fait chaud.", "été"));
  EXPECT_FALSE(mentions("It is hot.", "été"));
  EXPECT_FALSE(mentions("En été il fait chaud.", "t"));
}

// A concept the answer names only to deny it is not affirmed: "ice is not
// less dense" names "less dense" and says the opposite.
TEST(Grading, AffirmsIgnoresAPhraseItsAnswerDenies) {
  EXPECT_TRUE(affirms("Ice is less dense than water.", "less dens"));
  EXPECT_FALSE(affirms("Ice is not less dense than water.", "less dens"));
  EXPECT_TRUE(mentions("Ice is not less dense than water.", "less dens"));
  EXPECT_FALSE(affirms("Ice isn't much less dense.", "less dens"));
  EXPECT_FALSE(affirms("It can't be less dense.", "less dens"));
  EXPECT_FALSE(affirms("There is no tilt involved.", "tilt"));
  EXPECT_FALSE(affirms("It never depends on the axis.", "axis"));
  EXPECT_TRUE(affirms("It can be less dense.", "less dens"));
  EXPECT_TRUE(affirms("It is not only less dense but lighter.", "less dens"));
  EXPECT_FALSE(affirms("The seasons are not caused by the tilt of the axis.", "tilt"));
  // A denial counts in its clause only; a later mention may affirm it.
  EXPECT_TRUE(affirms("Not because of salt: ice is less dense.", "less dens"));
  EXPECT_TRUE(affirms("Not heavier; it is less dense.", "less dens"));
  EXPECT_TRUE(affirms("It is not heavier but less dense.", "less dens"));
  EXPECT_TRUE(affirms("No, ice floats because it is less dense.", "less dens"));
  EXPECT_TRUE(affirms("Ice is not heavier. Ice is less dense.", "less dens"));
  EXPECT_TRUE(affirms("There is no doubt ice is less dense.", "less dens"));
  EXPECT_TRUE(affirms("It's no wonder ice is less dense.", "less dens"));
  EXPECT_TRUE(affirms("Ice floats since it is not as dense as water.", "dens"));
  // "And" and "or" start a clause; a denial just before an opener keeps
  // its clause going.
  EXPECT_TRUE(affirms("Distance does not cause the seasons and the tilt of "
                      "the axis does.", "tilt"));
  EXPECT_FALSE(affirms("Seasons happen not because of the tilt but because "
                       "of distance.", "tilt"));
  // Typographic apostrophes, and more contractions.
  EXPECT_FALSE(affirms("Ice isn\u2019t less dense.", "less dens"));
  EXPECT_FALSE(affirms("It won't be less dense.", "less dens"));
  EXPECT_TRUE(affirms("The team won the prize for less dense ice.", "less dens"));
  // More than four words back is too far: a denial of something else.
  EXPECT_TRUE(affirms("Ice does not sink in cold water being less dense.", "less dens"));
  EXPECT_FALSE(affirms("Ice does not sink being less dense.", "less dens"));
  // Denials in other words, and the phrases that only look like them.
  EXPECT_FALSE(affirms("The seasons have nothing to do with the tilt.", "tilt"));
  EXPECT_FALSE(affirms("Seasons are unrelated to the axis.", "axis"));
  EXPECT_FALSE(affirms("Ice is far from less dense.", "less dens"));
  EXPECT_TRUE(affirms("The seasons come from nothing but the tilt.", "tilt"));
  EXPECT_TRUE(affirms("It is nothing more than the tilt.", "tilt"));
  EXPECT_TRUE(affirms("Ice sits far above the less dense layer.", "less dens"));
  EXPECT_TRUE(affirms("The half tilted far from the Sun gets less light.", "less"));
  EXPECT_TRUE(affirms("It is nothing other than the tilt.", "tilt"));
  EXPECT_TRUE(affirms("Nothing else matters: the tilt does.", "tilt"));
}

TEST(Grading, CopiedShareCountsRunsOfTheQuestionsWords) {
  EXPECT_DOUBLE_EQ(copied_share("why ice floats on water", "Explain why ICE floats, on water."), 1.0);
  EXPECT_DOUBLE_EQ(copied_share("ice floats on water because it is light", "why ice floats on water"), 0.5);
  EXPECT_DOUBLE_EQ(copied_share("ice floats on it", "why ice floats on water"), 0.0);  // 3 words
  EXPECT_DOUBLE_EQ(copied_share("", "anything at all here"), 0.0);
}

// No `similar` item of the bank is passed by its question, whole or its
// tail, and every one by its reference.
TEST(Grading, TheBanksSimilarItemsAreNotPassedByTheirQuestion) {
  size_t seen = 0;
  for (auto& it : challenge_bank::builtin()->items()) {
    if (it.grade != grade_mode::similar)
      continue;
    ++seen;
    EXPECT_TRUE(grade_answer(it, it.answer)) << it.id;
    EXPECT_FALSE(grade_answer(it, it.prompt)) << it.id;
    for (auto at = it.prompt.find(' '); at != std::string::npos; at = it.prompt.find(' ', at + 1))
      EXPECT_FALSE(grade_answer(it, it.prompt.substr(at + 1))) << it.id << ": " << it.prompt.substr(at + 1);
  }
  EXPECT_GE(seen, 1u);
}

TEST(Grading, CrossCheckNeedsHalfThePeers) {
  std::string a = "The sun rises slowly over the calm sea, painting the water gold.";
  std::string b = "Bake the bread for forty minutes at two hundred degrees.";
  EXPECT_TRUE(agrees_with_peers(a, {a, a, b}, 0.85));
  EXPECT_TRUE(agrees_with_peers(a, {a, b}, 0.85));  // half is enough
  EXPECT_FALSE(agrees_with_peers(a, {a, b, b}, 0.85));
  EXPECT_FALSE(agrees_with_peers(b, {a}, 0.85));
  EXPECT_FALSE(agrees_with_peers(a, {}, 0.85));  // nothing to compare with
}

// ----------------------------------------------------------- choice by HMAC

TEST(Choice, SameSecretAndIdsSameItemsOtherSecretOthers) {
  auto bank = challenge_bank::builtin();
  auto a = choose_challenges("secret-one-0123456789abcdef012345", 7, "node-1", 1,
                             {"llama-3-8b"}, 5, 0.2, *bank);
  auto b = choose_challenges("secret-one-0123456789abcdef012345", 7, "node-1", 1,
                             {"llama-3-8b"}, 5, 0.2, *bank);
  ASSERT_EQ(a.items.size(), 5u);
  EXPECT_EQ(prompts(a), prompts(b));
  EXPECT_EQ(a.nonce, b.nonce);
  EXPECT_EQ(a.nonce.size(), 32u);
  // Another secret, test or node: other items (over a few ids, since two
  // draws of 5 from a level may coincide by chance) and another nonce.
  int differ_secret = 0, differ_test = 0, differ_node = 0;
  for (uint64_t t = 1; t <= 20; ++t) {
    auto x = choose_challenges("secret-one-0123456789abcdef012345", t, "n", 1, {},
                               5, 0.2, *bank);
    auto y = choose_challenges("secret-two-0123456789abcdef012345", t, "n", 1, {},
                               5, 0.2, *bank);
    auto z = choose_challenges("secret-one-0123456789abcdef012345", t + 100, "n", 1,
                               {}, 5, 0.2, *bank);
    auto w = choose_challenges("secret-one-0123456789abcdef012345", t, "m", 1, {},
                               5, 0.2, *bank);
    differ_secret += prompts(x) != prompts(y);
    differ_test += prompts(x) != prompts(z);
    differ_node += prompts(x) != prompts(w);
    EXPECT_NE(x.nonce, y.nonce);
    EXPECT_NE(x.nonce, w.nonce);
  }
  EXPECT_GE(differ_secret, 18);
  EXPECT_GE(differ_test, 18);
  EXPECT_GE(differ_node, 18);
}

TEST(Choice, DrawsAtTheNodesLevelWithAShareOfPeerItems) {
  auto bank = challenge_bank::builtin();
  for (uint32_t level = 0; level <= 5; ++level) {
    std::set<std::string> seen;
    for (uint64_t t = 1; t <= 50; ++t) {
      auto p = choose_challenges("s0123456789abcdef0123456789abcdef", t, "n", level,
                                 {}, 5, 0.2, *bank);
      ASSERT_EQ(p.items.size(), 5u);
      int peer = 0;
      std::set<std::string> ids;
      for (auto* it : p.items) {
        ids.insert(it->id);
        seen.insert(it->id);
        peer += it->grade == grade_mode::peer;
        // The builtin bank has 10 graded items at each of levels 0..3:
        // enough for a test, so it asks exactly its level (3 above it).
        if (it->grade != grade_mode::peer)
          EXPECT_EQ(it->level, std::min<uint32_t>(level, 3)) << it->id;
        else
          EXPECT_LE(it->level, std::min<uint32_t>(level, 3)) << it->id;
      }
      EXPECT_EQ(ids.size(), 5u);  // no item twice
      EXPECT_EQ(peer, 1);         // round(5 * 0.2)
    }
    EXPECT_GE(seen.size(), 8u) << "level " << level;  // the draw varies
  }
  // No peer share: graded items only. A share that would take all: one
  // graded item stays.
  auto none = choose_challenges("s0123456789abcdef0123456789abcdef", 1, "n", 0, {},
                                5, 0, *bank);
  for (auto* it : none.items)
    EXPECT_NE(it->grade, grade_mode::peer);
  auto most = choose_challenges("s0123456789abcdef0123456789abcdef", 1, "n", 3, {},
                                5, 0.99, *bank);
  int graded = 0;
  for (auto* it : most.items)
    graded += it->grade != grade_mode::peer;
  EXPECT_EQ(graded, 1);
}

TEST(Choice, ItemsForAModelAndShortLevelsFallBack) {
  auto bank = challenge_bank::parse(
    R"({"id":"a","level":0,"grade":"exact","prompt":"A?","answer":"a"}
{"id":"b","level":2,"grade":"exact","prompt":"B?","answer":"b","models":["m1"]}
{"id":"c","level":2,"grade":"exact","prompt":"C?","answer":"c","models":["m2"]}
{"id":"d","level":5,"grade":"exact","prompt":"D?","answer":"d"})",
    "t");
  auto p = choose_challenges("s0123456789abcdef0123456789abcdef", 1, "n", 2,
                             {"m1"}, 3, 0, bank);
  std::set<std::string> ids;
  for (auto* it : p.items)
    ids.insert(it->id);
  // Level 2 for m1 has only b; then the level under it (a), then above (d).
  EXPECT_EQ(ids, (std::set<std::string>{"a", "b", "d"}));
  EXPECT_EQ(p.items.size(), 3u);
  // A node with none of the models: the items for any model only.
  auto q = choose_challenges("s0123456789abcdef0123456789abcdef", 1, "n", 2,
                             {"m3"}, 5, 0, bank);
  EXPECT_EQ(q.items.size(), 2u);
}

// ------------------------------------------------------------- bank files

TEST(Bank, BuiltinBankParsesWithItsLevels) {
  auto bank = challenge_bank::builtin();
  EXPECT_EQ(bank->levels(), (std::vector<uint32_t>{0, 1, 2, 3}));
  int peer = 0;
  for (auto& it : bank->items())
    peer += it.grade == grade_mode::peer;
  EXPECT_GE(peer, 4);
  // The file in deploy/ is the one compiled in.
  auto file = challenge_bank::load(std::string{NODEPOOL_SOURCE_DIR}
                                   + "/deploy/banks/default.jsonl");
  EXPECT_EQ(file.items().size(), bank->items().size());
}

TEST(Bank, MalformedFilesAreRefusedWithTheirLineNumber) {
  auto ok = R"({"id":"a","level":0,"grade":"exact","prompt":"A?","answer":"a"})";
  struct bad {
    std::string line;
    std::string says;
  };
  std::vector<bad> cases{
    {"{not json", "not valid JSON"},
    {"[1,2]", "expected a JSON object"},
    {R"({"level":0,"grade":"exact","prompt":"P","answer":"a"})", "id is missing"},
    {R"({"id":"b","grade":"exact","prompt":"P","answer":"a"})", "level is missing"},
    {R"({"id":"b","level":-1,"grade":"exact","prompt":"P","answer":"a"})", "level"},
    {R"({"id":"b","level":0,"grade":"fuzzy","prompt":"P","answer":"a"})", "grade"},
    {R"({"id":"b","level":0,"grade":"exact","prompt":"P"})", "answer is missing"},
    {R"({"id":"b","level":0,"grade":"number","prompt":"P","answer":"ten"})",
     "not a number"},
    // Only plain decimals: what the grader reads in an answer.
    {R"({"id":"b","level":0,"grade":"number","prompt":"P","answer":"1e5"})",
     "not a number"},
    {R"({"id":"b","level":0,"grade":"number","prompt":"P","answer":" 5"})",
     "not a number"},
    {R"({"id":"b","level":0,"grade":"exact","prompt":"P","answer":" '' "})",
     "nothing left once quotes"},
    {R"({"id":"b","level":0,"grade":"peer","prompt":"P","answer":"x"})",
     "peer item has no answer"},
    {R"({"id":"b","level":0,"grade":"similar","prompt":"P","answer":"x","threshold":2})",
     "threshold"},
    {R"({"id":"b","level":0,"grade":"exact","prompt":"P","answer":"x","tolerance":1})",
     "only for grade number"},
    {R"({"id":"b","level":0,"grade":"exact","prompt":"P","answer":"x","must":["x"]})",
     "only for grade similar"},
    {R"({"id":"b","level":0,"grade":"similar","prompt":"P","answer":"x y","must":["a||b"]})",
     "must: expected"},
    {R"({"id":"b","level":0,"grade":"similar","prompt":"P","answer":"x y","must":[]})",
     "must: expected"},
    {R"({"id":"b","level":0,"grade":"similar","prompt":"P","answer":"x y","must_not":["--"]})",
     "must_not: expected"},
    {R"({"id":"b","level":0,"grade":"similar","prompt":"P","answer":"ice is light","must":["dens|heav"]})",
     "the reference fails its own must dens|heav"},
    {R"({"id":"b","level":0,"grade":"similar","prompt":"P","answer":"ice is denser","must_not":["ice is dens"]})",
     "the reference fails its own must_not ice is dens"},
    {R"({"id":"b","level":0,"grade":"exact","prompt":"P","answer":"x","colour":1})",
     "unknown key 'colour'"},
    {R"({"id":"a","level":0,"grade":"exact","prompt":"P","answer":"x"})",
     "appears twice"},
    {R"({"id":"b","level":0,"grade":"exact","prompt":"","answer":"x"})",
     "prompt: expected a non-empty string"},
  };
  for (auto& c : cases) {
    // Line 1 good, a blank line 2, the bad one on line 3.
    auto err = bank_error_of(std::string{ok} + "\n\n" + c.line + "\n");
    EXPECT_NE(err.find("bank.jsonl:3: "), std::string::npos) << c.line << " -> " << err;
    EXPECT_NE(err.find(c.says), std::string::npos) << c.line << " -> " << err;
  }
  EXPECT_NE(bank_error_of(R"({"id":"p","level":0,"grade":"peer","prompt":"P"})")
              .find("no item with a reference answer"),
            std::string::npos);
  EXPECT_EQ(bank_error_of(ok), "");
  EXPECT_NE(std::string{bank_error_of("")}.find("no item"), std::string::npos);
  try {
    challenge_bank::load("/nonexistent/bank.jsonl");
    ADD_FAILURE() << "a missing file was accepted";
  } catch (const bank_error& e) {
    EXPECT_NE(std::string{e.what()}.find("cannot be read"), std::string::npos);
  }
}

TEST(Bank, CostsPerLevelCountPromptsAndTokens) {
  auto bank = challenge_bank::builtin();
  auto costs = test_costs(*bank, 5, 0.2, 5);
  ASSERT_EQ(costs.size(), 6u);
  for (auto& c : costs) {
    EXPECT_EQ(c.prompts, 5u);
    EXPECT_GT(c.prompt_tokens, 5u * 5);  // every prompt is longer than 20 bytes
    // 4 graded items of 16 or 64 tokens and one peer item of 96.
    EXPECT_GE(c.answer_tokens, 4u * 16 + 96);
    EXPECT_LE(c.answer_tokens, 4u * 64 + 96);
  }
  // Harder levels ask longer prompts here.
  EXPECT_GT(costs[3].prompt_tokens, costs[0].prompt_tokens);
  // Levels above the bank's ask its top level.
  EXPECT_EQ(costs[5].prompt_tokens, costs[3].prompt_tokens);
}

// ------------------------------------------------------------- the secret

TEST(Secret, CreatedOnceWithMode0600AndRefusedWhenOthersCanRead) {
  auto dir = std::filesystem::temp_directory_path()
             / ("np-secret-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto path = (dir / "test_secret").string();
  auto a = load_or_create_secret(path);
  EXPECT_EQ(a.size(), 64u);
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(load_or_create_secret(path), a);  // read back, not replaced
  auto other = (dir / "other").string();
  EXPECT_NE(load_or_create_secret(other), a);
  // Many at once on one new file (oracles of a cluster on one host): one
  // secret for all, and no file left behind.
  auto shared = (dir / "shared").string();
  std::vector<std::string> got(8);
  std::vector<std::thread> ts;
  for (size_t i = 0; i < got.size(); ++i)
    ts.emplace_back([&, i] { got[i] = load_or_create_secret(shared); });
  for (auto& t : ts)
    t.join();
  for (auto& g : got)
    EXPECT_EQ(g, got[0]);
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir),
                          std::filesystem::directory_iterator{}),
            3);  // test_secret, other, shared
  ::chmod(path.c_str(), 0644);
  EXPECT_THROW(load_or_create_secret(path), std::runtime_error);
  {
    std::ofstream f{(dir / "short").string()};
    f << "abc\n";
  }
  ::chmod((dir / "short").c_str(), 0600);
  EXPECT_THROW(load_or_create_secret((dir / "short").string()), std::runtime_error);
  std::filesystem::remove_all(dir);
}

// --------------------------------------------- what simulated nodes answer

/// Grades one node's answers to a test the way the validator does, without
/// the cross-checks: graded items right, of graded items asked.
std::pair<int, int> sit(sim_backend& b, const test_plan& p, int64_t bound = 0,
                        int64_t* delay = nullptr) {
  int right = 0, asked = 0;
  for (auto* it : p.items) {
    auto r = b.answer(it->prompt, bound, 5000);
    if (delay)
      *delay = std::max(*delay, r.delay_ms);
    if (it->grade == grade_mode::peer)
      continue;
    ++asked;
    right += grade_answer(*it, r.text);
  }
  return {right, asked};
}

TEST(SimNodes, HealthyPassWrongSolverAndCopycatFail) {
  auto bank = challenge_bank::builtin();
  for (uint64_t t = 1; t <= 40; ++t) {
    for (uint32_t level = 0; level <= 3; ++level) {
      auto p = choose_challenges("s0123456789abcdef0123456789abcdef", t, "n", level,
                                 {}, 5, 0.2, *bank);
      sim_backend healthy{behaviour::healthy, t, 5000};
      auto [hr, ha] = sit(healthy, p);
      EXPECT_EQ(hr, ha) << "test " << t;
      sim_backend wrong{behaviour::wrong, t, 5000};
      EXPECT_EQ(sit(wrong, p).first, 0) << "test " << t;
      // The cheat of old: a hand-written solver, no model. Nothing in the
      // bank is a prompt it can parse.
      sim_backend solver{behaviour::solver, t, 5000};
      EXPECT_EQ(sit(solver, p).first, 0) << "test " << t;
      sim_backend copycat{behaviour::copycat, t, 5000};
      EXPECT_EQ(sit(copycat, p).first, 0) << "test " << t;
    }
  }
  // The solver still solves what it was written for: the cheat is real.
  EXPECT_EQ(sim_backend::arithmetic_solver("Compute 17 * 23. Answer with the number only."),
            "391");
}

TEST(SimNodes, SlowNodesAnswerRightBetweenTheBoundAndTheDeadline) {
  auto bank = challenge_bank::builtin();
  auto p = choose_challenges("s0123456789abcdef0123456789abcdef", 3, "n", 0, {}, 5,
                             0.2, *bank);
  sim_backend slow{behaviour::slow, 4, 5000};
  int64_t delay = 0;
  auto [right, asked] = sit(slow, p, 4000, &delay);
  EXPECT_EQ(right, asked);
  EXPECT_GT(delay, 4000);
  EXPECT_LT(delay, 5000);
  // No room under the deadline: past both.
  sim_backend late{behaviour::slow, 4, 5000};
  delay = 0;
  sit(late, p, 0, &delay);
  EXPECT_GT(delay, 5000);
}

TEST(SimNodes, AHealthyNodesPeerAnswersAgreeAndAWrongNodesDoNot) {
  auto bank = challenge_bank::builtin();
  sim_backend h1{behaviour::healthy, 1, 5000}, h2{behaviour::healthy, 2, 5000};
  sim_backend w{behaviour::wrong, 3, 5000};
  for (auto& it : bank->items()) {
    if (it.grade != grade_mode::peer)
      continue;
    auto a = h1.answer(it.prompt, 0, 5000).text;
    auto b = h2.answer(it.prompt, 0, 5000).text;
    auto c = w.answer(it.prompt, 0, 5000).text;
    EXPECT_TRUE(agrees_with_peers(a, {b}, 0.85)) << it.id;
    EXPECT_FALSE(agrees_with_peers(c, {a, b}, 0.85)) << it.id << ": " << c;
  }
}

} // namespace
