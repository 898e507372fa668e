// The archive backfill of a cluster member (see src/member_archive.hpp):
// the records of sessions ended by entries a snapshot install skipped are
// copied from a peer whose archive is complete past the gap. One gap at a
// time, oldest first; a peer that cannot vouch for the gap, cannot be
// reached or answers with an error is skipped for the next one, and the
// gap is tried again after `interval`. The gap is forgotten only once its
// records are synced to the local archive.
#include "actors/oracle.hpp"

#include <caf/all.hpp>
#include <caf/io/all.hpp>
#include <caf/openssl/all.hpp>
#include <nlohmann/json.hpp>

#include "actors/config.hpp"
#include "archive.hpp"
#include "cluster_config.hpp"
#include "log.hpp"
#include "member_archive.hpp"

namespace nodepool {

namespace {

using ms = std::chrono::milliseconds;

struct backfill_state {
  backfill_config cfg;
  std::optional<pending_gap> gap;
  pb::ArchiveQuery cursor;
  size_t peer = 0;          // index into peers
  std::vector<uint64_t> peers;
  std::map<uint64_t, caf::actor> gateways;  // remote peers, once reached
  uint64_t copied = 0;      // records of the current gap
  uint64_t gaps_filled = 0;
  uint64_t records_copied = 0;
  bool busy = false;
  static inline const char* name = "archive_backfill";
};

using self_ptr = caf::stateful_actor<backfill_state>*;

void next_round(self_ptr self);

void arm(self_ptr self) {
  self->delayed_send(self, self->state.cfg.interval, tick_atom::value);
}

/// The current peer did not do: the next one, at the next tick.
void give_up_on_peer(self_ptr self, const std::string& why) {
  auto& st = self->state;
  log("backfill")->warn("archive gap {}..{}: member {}: {}", st.gap->gap.from_index,
                        st.gap->gap.to_index, st.peers[st.peer], why);
  st.gateways.erase(st.peers[st.peer]);
  st.peer = (st.peer + 1) % st.peers.size();
  st.busy = false;
  arm(self);
}

void ask(self_ptr self, const caf::actor& gw);

void on_answer(self_ptr self, const std::string& bytes, const caf::actor& gw) {
  auto& st = self->state;
  auto& g = st.gap->gap;
  pb::ArchiveAnswer a;
  if (!a.ParseFromString(bytes))
    return give_up_on_peer(self, "its answer does not decode");
  if (!a.error().empty())
    return give_up_on_peer(self, "it answered: " + a.error());
  if (a.complete_through() < g.to_index)
    return give_up_on_peer(self, "its archive is complete up to entry "
                                   + std::to_string(a.complete_through())
                                   + " only");
  std::vector<pb::SessionRecord> keep;
  bool past = false;
  for (auto& r : a.sessions()) {
    if (r.ended_at() > g.to_now) {
      past = true;
      break;
    }
    keep.push_back(r);
  }
  bool last_page = past || !a.more() || a.sessions_size() == 0;
  // The last page is synced, and with it every page before.
  if (auto s = st.cfg.storage->append({}, keep, last_page); !s.ok()) {
    log("backfill")->error("archive write failed: {}", s.error);
    st.busy = false;
    arm(self);
    return;
  }
  st.copied += keep.size();
  if (!last_page) {
    auto& r = a.sessions(a.sessions_size() - 1);
    st.cursor.set_since(r.ended_at());
    st.cursor.set_after_id(r.id());
    ask(self, gw);
    return;
  }
  if (auto s = gap_filled(*st.cfg.storage, *st.gap); !s.ok()) {
    log("backfill")->error("archive gap {} not cleared: {}", st.gap->key, s.error);
    st.busy = false;
    arm(self);
    return;
  }
  log("backfill")->info("archive: copied {} sessions ended by entries {}..{} "
                        "from member {}",
                        st.copied, g.from_index, g.to_index, st.peers[st.peer]);
  ++st.gaps_filled;
  st.records_copied += st.copied;
  st.gap.reset();
  st.busy = false;
  next_round(self);
}

void ask(self_ptr self, const caf::actor& gw) {
  auto& st = self->state;
  self->request(gw, ms(5000), archive_atom::value, st.cursor.SerializeAsString())
    .then([=](const std::string& bytes) { on_answer(self, bytes, gw); },
          [=](caf::error& e) {
            give_up_on_peer(self, "no answer: " + self->system().render(e));
          });
}

/// The gateway of the current peer: given (simulation), or reached over
/// the network once and kept.
void with_peer(self_ptr self) {
  auto& st = self->state;
  auto id = st.peers[st.peer];
  if (st.cfg.peer) {
    auto gw = st.cfg.peer(id);
    if (!gw)
      return give_up_on_peer(self, "not running");
    return ask(self, gw);
  }
  if (auto i = st.gateways.find(id); i != st.gateways.end())
    return ask(self, i->second);
  auto hp = split_host_port(st.cfg.members.at(id));
  if (!hp)
    return give_up_on_peer(self, "no address");
  auto& sys = self->system();
  auto mm = sys.has_openssl_manager() ? sys.openssl_manager().actor_handle()
                                      : sys.middleman().actor_handle();
  self->request(mm, ms(5000), connect_atom::value, hp->first, hp->second)
    .then(
      [=](const caf::node_id&, caf::strong_actor_ptr& ptr,
          const std::set<std::string>&) {
        if (!ptr)
          return give_up_on_peer(self, "nothing published at its address");
        auto gw = caf::actor_cast<caf::actor>(std::move(ptr));
        self->state.gateways[id] = gw;
        ask(self, gw);
      },
      [=](caf::error& e) {
        give_up_on_peer(self, "cannot connect: " + self->system().render(e));
      });
}

void next_round(self_ptr self) {
  auto& st = self->state;
  if (st.busy)
    return;
  if (!st.gap) {
    std::vector<pending_gap> gaps;
    if (auto s = pending_gaps(*st.cfg.storage, gaps); !s.ok()) {
      log("backfill")->error("{}", s.error);
      arm(self);
      return;
    }
    if (gaps.empty()) {
      arm(self);
      return;
    }
    st.gap = gaps.front();
    st.copied = 0;
    log("backfill")->info("archive gap: sessions ended by entries {}..{} are "
                          "copied from a peer",
                          st.gap->gap.from_index, st.gap->gap.to_index);
  }
  if (st.peers.empty()) {
    arm(self);
    return;
  }
  st.cursor.Clear();
  st.cursor.set_since(st.gap->gap.from_now);
  st.cursor.set_limit(archive_query_max);
  st.copied = 0;
  st.busy = true;
  with_peer(self);
}

} // namespace

caf::actor spawn_backfill(caf::actor_system& sys, backfill_config cfg) {
  return sys.spawn([cfg = std::move(cfg)](self_ptr self) mutable -> caf::behavior {
    auto& st = self->state;
    st.cfg = std::move(cfg);
    for (auto& [id, addr] : st.cfg.members)
      if (id != st.cfg.self)
        st.peers.push_back(id);
    self->send(self, tick_atom::value);
    return {
      [=](tick_atom) { next_round(self); },
      [=](stats_atom) -> std::string {
        auto& s = self->state;
        nlohmann::json j;
        j["gaps_filled"] = s.gaps_filled;
        j["records_copied"] = s.records_copied;
        j["gap_pending"] = s.gap.has_value();
        return j.dump();
      },
    };
  });
}

} // namespace nodepool
