// A miner's node branches on a refusal's code as the enum
// (pb::RefusalCode), and reads the text only from an oracle older than the
// enum; the oracle sends both.
#include <nlohmann/json.hpp>

#include "fixture.hpp"

namespace nodepool::testing {
namespace {

class node_refusals : public actor_test {
protected:
  /// A node whose gateway records how many registrations it sent.
  caf::actor recorded_node(const std::string& id) {
    auto count = registrations_;
    auto gw = sys_->spawn([=](caf::event_based_actor*) -> caf::behavior {
      return {[=](miner_atom, const std::string& bytes) {
        pb::MinerMsg m;
        if (m.ParseFromString(bytes) && m.has_register_())
          ++*count;
      }};
    });
    spawned_.push_back(gw);
    node_config nc;
    nc.id = id;
    auto n = spawn_node(*sys_, nc, gw);
    spawned_.push_back(n);
    sched_->run();
    return n;
  }

  void refuse(const caf::actor& n, pb::RefusalCode kind, const std::string& code) {
    pb::OracleMsg m;
    m.mutable_refusal()->set_kind(kind);
    m.mutable_refusal()->set_code(code);
    m.mutable_refusal()->set_detail("said by the test");
    caf::anon_send(n, oracle_atom::value, m.SerializeAsString());
  }

  /// Refuses a new node `id` with `kind` and `code`: it must stay. Returns
  /// the registrations it sent after the refusal, and its counts of
  /// refusals by code.
  std::pair<int, nlohmann::json> stays_after(const std::string& id,
                                              pb::RefusalCode kind,
                                              const std::string& code) {
    auto n = recorded_node(id);
    auto before = *registrations_;
    refuse(n, kind, code);
    run_for(std::chrono::milliseconds(100));
    EXPECT_EQ(exit_code_of(n), "") << id << " left";
    auto j = nlohmann::json::parse(ask(n, stats_atom::value));
    return {*registrations_ - before, j["refusals"]};
  }

  std::shared_ptr<int> registrations_ = std::make_shared<int>(0);
};

TEST_F(node_refusals, the_enum_decides_whatever_the_text_says) {
  // Retired by the enum, with a text this build does not know: it leaves.
  auto a = recorded_node("a");
  refuse(a, pb::REFUSAL_RETIRED, "retired_for_a_reason_of_a_later_version");
  EXPECT_EQ(exit_code_of(a), "retired");
  // Told to register again by the enum, though the text says retired: it
  // stays and registers again.
  auto [registered, counts] = stays_after("b", pb::REFUSAL_NOT_CONNECTED, "retired");
  EXPECT_EQ(registered, 1);
  EXPECT_EQ(counts.value("not_connected", 0), 1) << counts.dump();
  EXPECT_EQ(counts.value("retired", 0), 0) << counts.dump();
}

TEST_F(node_refusals, an_oracle_of_before_the_enum_is_read_by_its_text) {
  auto a = recorded_node("a");
  refuse(a, pb::REFUSAL_NONE, "key_mismatch");
  EXPECT_EQ(exit_code_of(a), "key_mismatch");
  // A text no build knows changes nothing, and is counted as it came.
  auto [registered, counts] = stays_after("b", pb::REFUSAL_NONE, "something_new");
  EXPECT_EQ(registered, 0);
  EXPECT_EQ(counts.value("something_new", 0), 1) << counts.dump();
}

// Every code has a text, and the text names it back: the texts are what
// miners of before the enum, the HTTP API and the metrics read.
TEST(refusal_codes, every_code_has_a_text_that_names_it) {
  const auto* d = pb::RefusalCode_descriptor();
  ASSERT_GT(d->value_count(), 60);
  for (int i = 0; i < d->value_count(); ++i) {
    auto code = static_cast<pb::RefusalCode>(d->value(i)->number());
    if (code == pb::REFUSAL_NONE) {
      EXPECT_EQ(refusal_name(code), "");
      continue;
    }
    ASSERT_FALSE(refusal_name(code).empty()) << d->value(i)->name();
    EXPECT_EQ(refusal_code(refusal_name(code)), code) << d->value(i)->name();
  }
  EXPECT_EQ(refusal_name(pb::REFUSAL_DUPLICATE_SESSION), "duplicate_session");
  EXPECT_EQ(refusal_code("not_a_code"), pb::REFUSAL_NONE);
  EXPECT_EQ(refusal_name(static_cast<pb::RefusalCode>(9999)), "");
}

} // namespace
} // namespace nodepool::testing
