#pragma once

// Commands to the pool supervisor from an actor that may have thousands of
// them in flight: the gateway (every miner's results and heartbeats), the
// session queue (every client's submission), the bench's driver.
//
// Each goes out as an ordinary message with a ticket, (cmd_atom, command,
// ticket), and its answer comes back as one, (answer_atom, ticket, code,
// detail), found here in constant time (code: a pb::RefusalCode,
// REFUSAL_NONE when accepted). A CAF 0.17 request would not do:
// an actor keeps its pending requests in a vector that every response
// searches and shifts (detail::unordered_flat_map), so with n commands in
// flight each answer costs O(n). Under a backlog the actor that waits on
// the most answers then works the most per answer and falls further behind;
// the bench's open loop fell for good at 90 % of saturation that way
// (BENCHMARKS.md, "Answers found in constant time").
#include <cstdint>
#include <functional>
#include <string>
#include <unordered_map>
#include <utility>

#include <caf/actor.hpp>
#include <caf/system_messages.hpp>
#include <caf/error.hpp>

#include "local.hpp"
#include "messages/type_ids.hpp"

namespace nodepool {

class command_tickets {
public:
  /// Called with a refusal's code and detail; REFUSAL_NONE: accepted.
  using on_answer =
    std::function<void(pb::RefusalCode code, const std::string& detail)>;

  /// Sends a command from `self` to the supervisor `to`, as built
  /// (local_command, local.hpp); `f`, if any, runs when the answer comes
  /// (once). Without `f` the answer is ignored.
  /// Once the supervisor is known to have stopped (on_down), nothing is
  /// sent: CAF drops a message to a stopped actor without a word, so `f`
  /// runs at once with `unavailable`.
  template <class Self>
  void send(Self* self, const caf::actor& to, local_command cmd,
            on_answer f = {}) {
    if (down_) {
      if (f)
        f(pb::REFUSAL_UNAVAILABLE, down_detail_);
      return;
    }
    auto ticket = next_++;
    if (f)
      pending_.emplace(ticket, std::move(f));
    self->send(to, cmd_atom::value, std::move(cmd), ticket);
  }

  /// An answer arrived from `from`: if that is the supervisor `sup`, runs
  /// the ticket's callback and forgets it. An answer from anyone else (a
  /// peer of a published actor may send anything) is not taken, only
  /// counted (foreign()). Returns whether it came from the supervisor.
  bool answered(const caf::strong_actor_ptr& from, const caf::actor& sup,
                uint64_t ticket, pb::RefusalCode code,
                const std::string& detail) {
    if (!sup || from != caf::actor_cast<caf::strong_actor_ptr>(sup)) {
      ++foreign_;
      return false;
    }
    answered(ticket, code, detail);
    return true;
  }

  /// The same, for the answer `self` is handling now: its handler of
  /// (answer_atom, ticket, code, detail) is this one call.
  template <class Self>
  bool answered(Self* self, const caf::actor& sup, uint64_t ticket,
                pb::RefusalCode code, const std::string& detail) {
    return answered(self->current_sender(), sup, ticket, code, detail);
  }

  /// An answer arrived: runs its callback and forgets it. An unknown ticket
  /// (a command sent without a callback, or one already failed) is ignored.
  /// Returns whether a callback ran.
  bool answered(uint64_t ticket, pb::RefusalCode code,
                const std::string& detail) {
    auto i = pending_.find(ticket);
    if (i == pending_.end())
      return false;
    auto f = std::move(i->second);
    pending_.erase(i);
    f(code, detail);
    return true;
  }

  /// The supervisor is gone: every command still waiting is answered with
  /// `code` and `detail`, in no particular order.
  void fail_all(pb::RefusalCode code, const std::string& detail) {
    auto all = std::move(pending_);
    pending_.clear();
    for (auto& [ticket, f] : all)
      f(code, detail);
  }

  /// For a down handler of an actor that monitors `sup`: when `dm` says
  /// the supervisor stopped, every command still waiting is answered
  /// `unavailable`. Returns whether it was the supervisor.
  bool on_down(const caf::down_msg& dm, const caf::actor& sup) {
    if (dm.source != sup.address())
      return false;
    down_ = true;
    down_detail_ = "the pool supervisor stopped: " + to_string(dm.reason);
    fail_all(pb::REFUSAL_UNAVAILABLE, down_detail_);
    return true;
  }

  /// For an actor with no down handler of its own: monitors `sup`, and its
  /// down message answers every command still waiting (on_down). The
  /// tickets must live as long as the actor (in its state).
  template <class Self>
  void watch(Self* self, const caf::actor& sup) {
    self->monitor(sup);
    self->set_down_handler(
      [this, sup](caf::down_msg& dm) { on_down(dm, sup); });
  }

  /// Commands sent with a callback and not answered yet.
  size_t in_flight() const { return pending_.size(); }
  /// Answers taken for none: they came from another actor than the
  /// supervisor, and changed nothing.
  uint64_t foreign() const { return foreign_; }

private:
  uint64_t next_ = 1;
  std::unordered_map<uint64_t, on_answer> pending_;
  uint64_t foreign_ = 0;
  bool down_ = false;  // the supervisor stopped (on_down)
  std::string down_detail_;
};

} // namespace nodepool
