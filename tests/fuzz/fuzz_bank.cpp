// Challenge banks: the bytes are read as a bank file (challenge_bank::parse,
// what `oracle --bank` and `nodepool bank` read). It may refuse them with
// an error naming a line; what it accepts must be usable: every graded
// item's reference answer grades right against itself and a blank answer
// grades wrong, and a test can be drawn from it at every level.
//
// Input: text.
#include "bank.hpp"
#include "cognitive.hpp"
#include "fuzz_common.hpp"

using namespace nodepool;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  challenge_bank bank;
  try {
    bank = challenge_bank::parse(text, "fuzz.jsonl");
  } catch (const bank_error& e) {
    if (std::string{e.what()}.rfind("fuzz.jsonl", 0) != 0)
      fuzz::fail(std::string{"a bank error without its source: "} + e.what());
    return 0;
  }
  if (bank.items().empty() || bank.levels().empty())
    fuzz::fail("a bank without graded items was accepted");
  for (auto& it : bank.items()) {
    if (it.grade == grade_mode::peer)
      continue;
    if (!grade_answer(it, it.answer))
      fuzz::fail("item '" + it.id + "' does not grade its own answer right: '"
                 + it.answer + "'");
    if (grade_answer(it, "") || grade_answer(it, "  \n"))
      fuzz::fail("item '" + it.id + "' grades a blank answer right");
  }
  for (uint32_t level = 0; level <= 6; ++level) {
    auto plan = choose_challenges("fuzz-secret-0123456789abcdef012345", level, "n",
                                  level, {}, 5, 0.2, bank);
    bool graded = false;
    for (auto* it : plan.items)
      graded = graded || it->grade != grade_mode::peer;
    if (plan.items.empty() || !graded)
      fuzz::fail("a test at level " + std::to_string(level)
                 + " has no graded item");
  }
  return 0;
}
