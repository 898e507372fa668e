#include "actors/api.hpp"

#include <atomic>
#include <chrono>
#include <mutex>
#include <optional>

#include <caf/all.hpp>
#include <nlohmann/json.hpp>

#include "actors/config.hpp"
#include "actors/local.hpp"
#include "actors/wire.hpp"
#include "event_view.hpp"

namespace nodepool {

namespace {

using http::api_error;

/// A refusal (or a transport error) as the API reports it.
api_error to_api_error(caf::actor_system& sys, const caf::error& err) {
  auto [code, detail] = read_refusal(sys, err);
  if (err == caf::sec::request_timeout)
    return {"timeout", "the oracle did not answer in time"};
  if (err == caf::sec::request_receiver_down)
    return {"unavailable", "the oracle's actors are not running"};
  if (code.empty())
    return {"unavailable", sys.render(err)};
  return {code, detail};
}

using target_cb = std::function<void(caf::actor, std::optional<api_error>)>;

/// The leader's gateway as this member last reached it, and when it last
/// answered on it (never, right after it was reached).
struct leader_link {
  std::mutex mu;
  std::string address;
  caf::actor gateway;
  std::optional<std::chrono::steady_clock::time_point> answered;
  // A connection being made (to `connecting_to`), and the writes waiting
  // for it: one attempt, on one thread, however many writes come meanwhile.
  std::string connecting_to;
  std::vector<target_cb> waiting;
};

/// Asks `to` (Atom, bytes) for a serialized T, from an actor of its own;
/// `cb` gets it decoded, or the refusal.
template <class T, class Atom>
void ask_decoded(caf::actor_system& sys, caf::actor to, caf::duration limit,
                 Atom atom, std::string bytes,
                 std::function<void(T, std::optional<api_error>)> cb) {
  auto* s = &sys;
  sys.spawn([=](caf::event_based_actor* self) {
    self->request(to, limit, atom, bytes)
      .then(
        [=](const std::string& answer) {
          T a;
          if (!a.ParseFromString(answer))
            return cb({}, api_error{"unavailable", "the answer does not decode"});
          cb(std::move(a), std::nullopt);
        },
        [=](caf::error& e) { cb({}, to_api_error(*s, e)); });
  });
}

/// This oracle's own actors always answer (a session by its own deadline,
/// or its actor is gone: an error), so a request to them has no timeout (a
/// pending timeout is a message kept until it fires, one per request); a
/// leader over the network may never answer.
caf::duration limit_for(const caf::actor& to, const caf::actor& local,
                        std::chrono::milliseconds remote) {
  return to == local ? caf::duration{caf::infinite} : caf::duration{remote};
}

/// Operators' commands are not passed between oracles: on not_leader,
/// `cb` gets the refusal with the leader's HTTP API named (so the client
/// is sent there); any other refusal as it is.
void with_leader_http(caf::event_based_actor* self, const caf::actor& gw,
                      api_error e, std::function<void(api_error)> cb) {
  if (e.code != "not_leader")
    return cb(std::move(e));
  self->request(gw, caf::infinite, cluster_atom::value)
    .then(
      [=](const std::string& text) mutable {
        auto v = nlohmann::json::parse(text, nullptr, false);
        if (v.is_object())
          e.leader_http = v.value("leader_http_address", std::string{});
        cb(e);
      },
      [=](caf::error&) { cb(e); });
}

class caf_pool_api : public http::pool_api {
 public:
  caf_pool_api(caf::actor_system& sys, caf::actor gw, caf::actor sup,
               connect_fn connect, std::chrono::milliseconds t,
               forget_fn forget)
    : sys_(sys), gw_(std::move(gw)), sup_(std::move(sup)),
      connect_(std::move(connect)), forget_(std::move(forget)), timeout_(t) {}

  /// Where a write goes: this oracle's gateway when it is alone or leads;
  /// on a follower, the leader's (reached at its client address, once, and
  /// kept while it leads). Without a leader, not_leader.
  void writer(target_cb cb) {
    auto gw = gw_;
    auto t = timeout_;
    auto* sys = &sys_;
    auto link = link_;
    auto connect = connect_;
    auto forget = forget_;
    sys_.spawn([=](caf::event_based_actor* self) {
      // Local and always answered: no timeout (a pending timeout is a
      // message kept until it fires, for every request).
      self->request(gw, caf::infinite, cluster_atom::value)
        .then(
          [=](const std::string& text) {
            auto v = nlohmann::json::parse(text, nullptr, false);
            if (!v.is_object() || v.empty()
                || (v.value("role", "") == "leader" && v.value("ready", false)))
              return cb(gw, std::nullopt);
            auto addr = v.value("leader_client_address", std::string{});
            if (addr.empty() || !connect)
              return cb(nullptr, api_error{"not_leader",
                                           "this member does not lead and no "
                                           "leader is known yet; retry shortly"});
            // Kept, and heard from within the last second: used as it is.
            // Otherwise asked who leads first (below): at most one question
            // a second while writes pass, not one per write.
            caf::actor cached;
            auto now = std::chrono::steady_clock::now();
            {
              std::lock_guard<std::mutex> g{link->mu};
              if (link->address == addr && link->gateway) {
                if (link->answered && now - *link->answered < std::chrono::seconds(1))
                  return cb(link->gateway, std::nullopt);
                cached = link->gateway;
              }
            }
            // Connecting blocks: on a thread of its own, never the HTTP's
            // nor the scheduler's.
            auto reach = [=] {
              {
                std::lock_guard<std::mutex> g{link->mu};
                link->waiting.push_back(cb);
                if (!link->connecting_to.empty())
                  return;  // answered when the attempt under way ends
                link->connecting_to = addr;
              }
              sys->spawn<caf::detached>([=](caf::event_based_actor* me) {
              auto r = connect(addr);
              std::vector<target_cb> waiting;
              {
                std::lock_guard<std::mutex> g{link->mu};
                if (r) {
                  link->address = addr;
                  link->gateway = *r;
                  link->answered.reset();
                }
                link->connecting_to.clear();
                waiting.swap(link->waiting);
              }
              for (auto& w : waiting)
                if (!r)
                  w(nullptr, api_error{"not_leader",
                                       "the leader at " + addr
                                         + " cannot be reached: "
                                         + sys->render(r.error())});
                else
                  w(*r, std::nullopt);
              me->quit();
              });
            };
            if (!cached)
              return reach();
            // The leader reached before must still answer on its
            // connection: one that takes requests and answers none (a
            // connection its CAF broker lost its way back on; see
            // connect_leader) is shut down and made again, rather than
            // holding every write passed on for its whole timeout.
            self->request(cached, std::min(t, std::chrono::milliseconds{2000}),
                          cluster_atom::value)
              .then([=](const std::string&) {
                      {
                        std::lock_guard<std::mutex> g{link->mu};
                        if (link->gateway == cached)
                          link->answered = std::chrono::steady_clock::now();
                      }
                      cb(cached, std::nullopt);
                    },
                    [=](caf::error&) {
                      {
                        std::lock_guard<std::mutex> g{link->mu};
                        if (link->gateway == cached) {
                          link->gateway = nullptr;
                          link->address.clear();
                        }
                      }
                      if (forget)
                        forget(addr);
                      reach();
                    });
          },
          [=](caf::error& err) { cb(nullptr, to_api_error(*sys, err)); });
    });
  }

  void transfer(uint64_t to, json_cb cb) override {
    // libraft ends a transfer within an election timeout.
    ask_supervisor_json(std::chrono::seconds(30), std::move(cb), transfer_atom::value, to);
  }

  void change_member(const std::string& op, uint64_t id, const std::string& address,
                     json_cb cb) override {
    // A new member may take up to a minute to catch up before its vote.
    ask_supervisor_json(std::chrono::seconds(90), std::move(cb), member_atom::value, op,
                        id, address);
  }

  /// An operator's request to the supervisor that answers JSON text; a
  /// follower's refusal names the leader's API (with_leader_http).
  template <class... Ts>
  void ask_supervisor_json(std::chrono::seconds limit, json_cb cb, Ts... xs) {
    auto sup = sup_;
    auto gw = gw_;
    auto* sys = &sys_;
    sys_.spawn([=](caf::event_based_actor* self) {
      self->request(sup, limit, xs...)
        .then(
          [=](const std::string& text) {
            auto j = nlohmann::json::parse(text, nullptr, false);
            cb(j.is_discarded() ? nlohmann::json::object() : j, std::nullopt);
          },
          [=](caf::error& err) {
            with_leader_http(self, gw, to_api_error(*sys, err),
                             [cb](api_error e) { cb({}, std::move(e)); });
          });
    });
  }

  void command(const pb::Command& c, done_cb cb) override {
    auto sup = sup_;
    auto gw = gw_;
    auto* sys = &sys_;
    auto cmd = std::make_shared<pb::Command>(c);
    sys_.spawn([sup, gw, sys, cmd, cb = std::move(cb)](caf::event_based_actor* self) {
      self->request(sup, std::chrono::seconds(60), cmd_atom::value, cmd)
        .then([=](accepted_atom) { cb(std::nullopt); },
              [=](caf::error& err) {
                with_leader_http(self, gw, to_api_error(*sys, err),
                                 [cb](api_error e) { cb(std::move(e)); });
              });
    });
  }

  void snapshot(index_cb cb) override {
    auto sup = sup_;
    auto t = timeout_;
    auto* sys = &sys_;
    sys_.spawn([sup, t, sys, cb = std::move(cb)](caf::event_based_actor* self) {
      self->request(sup, t, snapshot_atom::value)
        .then([=](uint64_t index) { cb(index, std::nullopt); },
              [=](caf::error& err) { cb(0, to_api_error(*sys, err)); });
    });
  }

  /// This oracle's view of the cluster from the gateway's answer; a single
  /// oracle answers none: {"role": "single"}.
  static nlohmann::json view_of(const std::string& text) {
    auto view = nlohmann::json::parse(text, nullptr, false);
    if (!view.is_object() || view.empty()) {
      view = nlohmann::json::object();
      view["role"] = "single";
    }
    return view;
  }

  /// Asks the gateway for the view, then for `xs...`, whose answer decodes
  /// as a Msg (`what` in the error when it does not); a single oracle's
  /// view gets the answer's index (`index_of`).
  template <class Msg, class Cb, class IndexOf, class... Ts>
  void ask_with_view(Cb cb, IndexOf index_of, const char* what, Ts... xs) {
    auto gw = gw_;
    auto t = timeout_;
    auto* sys = &sys_;
    sys_.spawn([=](caf::event_based_actor* self) {
      self->request(gw, t, cluster_atom::value)
        .then(
          [=](const std::string& view_text) {
            self->request(gw, t, xs...)
              .then(
                [=](const std::string& bytes) {
                  Msg m;
                  if (!m.ParseFromString(bytes))
                    return cb(std::nullopt, {},
                              api_error{"unavailable",
                                        std::string{what} + " does not decode"});
                  auto view = view_of(view_text);
                  if (!view.contains("applied_index"))
                    view["applied_index"] = index_of(m);
                  cb(std::move(m), std::move(view), std::nullopt);
                },
                [=](caf::error& err) {
                  cb(std::nullopt, {}, to_api_error(*sys, err));
                });
          },
          [=](caf::error& err) { cb(std::nullopt, {}, to_api_error(*sys, err)); });
    });
  }

  void state(state_cb cb) override {
    ask_with_view<pb::Snapshot>(
      std::move(cb), [](const pb::Snapshot& s) { return s.last_index(); },
      "state", state_atom::value);
  }

  void read(const pb::StateQuery& q, page_cb cb) override {
    ask_with_view<pb::StatePage>(
      std::move(cb), [](const pb::StatePage& p) { return p.index(); }, "a page",
      state_atom::value, q.SerializeAsString());
  }

  void view(view_cb cb) override {
    // With the counts: they carry a single oracle's applied index, which
    // its view (empty) lacks.
    counts([cb = std::move(cb)](http::pool_counts, nlohmann::json view,
                                std::optional<api_error> err) {
      cb(std::move(view), std::move(err));
    });
  }

  void counts(counts_cb cb) override {
    auto gw = gw_;
    auto sup = sup_;
    auto t = timeout_;
    auto* sys = &sys_;
    sys_.spawn([=](caf::event_based_actor* self) {
      self->request(gw, t, cluster_atom::value)
        .then(
          [=](const std::string& view_text) {
            self->request(sup, t, stats_atom::value)
              .then(
                [=](const std::string& text) {
                  auto j = nlohmann::json::parse(text, nullptr, false);
                  if (!j.is_object() || !j.contains("committed"))
                    return cb({}, {}, api_error{"unavailable", "no counts"});
                  auto& c = j["committed"];
                  http::pool_counts n;
                  for (auto& [k, v] : c["nodes"].items())
                    n.nodes[static_cast<pb::NodeState>(std::stoi(k))] =
                      v.get<uint64_t>();
                  n.queued = c["queued"];
                  n.active = c["active"];
                  n.completed = c["completed"];
                  n.failed = c["failed"];
                  n.accepted = c["accepted"];
                  n.tests_passed = c["tests_passed"];
                  n.tests_failed = c["tests_failed"];
                  n.tests_in_flight = c.value("tests_in_flight", uint64_t{0});
                  n.tests_waiting = c.value("tests_waiting", uint64_t{0});
                  if (j.contains("histograms")) {
                    auto& g = j["histograms"]["grant_latency_ms"];
                    n.grants = g.value("count", uint64_t{0});
                    n.grant_latency_ms_sum = g.value("sum", 0.0);
                  }
                  auto view = view_of(view_text);
                  if (!view.contains("applied_index"))
                    view["applied_index"] = c["index"];
                  cb(std::move(n), std::move(view), std::nullopt);
                },
                [=](caf::error& err) { cb({}, {}, to_api_error(*sys, err)); });
          },
          [=](caf::error& err) { cb({}, {}, to_api_error(*sys, err)); });
    });
  }

  void metrics(json_cb cb) override {
    auto gw = gw_;
    auto sup = sup_;
    auto t = timeout_;
    auto* sys = &sys_;
    sys_.spawn([=](caf::event_based_actor* self) {
      auto fail = [=](caf::error& err) { cb({}, to_api_error(*sys, err)); };
      auto parse = [](const std::string& text) {
        auto j = nlohmann::json::parse(text, nullptr, false);
        return j.is_object() ? j : nlohmann::json::object();
      };
      self->request(gw, t, cluster_atom::value)
        .then(
          [=](const std::string& view) {
            self->request(sup, t, stats_atom::value)
              .then(
                [=](const std::string& sup_stats) {
                  self->request(gw, t, stats_atom::value)
                    .then(
                      [=](const std::string& gw_stats) {
                        nlohmann::json j;
                        j["supervisor"] = parse(sup_stats);
                        j["gateway"] = parse(gw_stats);
                        j["cluster"] = parse(view);
                        cb(std::move(j), std::nullopt);
                      },
                      fail);
                },
                fail);
          },
          fail);
    });
  }

  void archive(const pb::ArchiveQuery& q, archive_cb cb) override {
    ask_decoded<pb::ArchiveAnswer>(sys_, gw_, caf::duration{timeout_},
                                   archive_atom::value, q.SerializeAsString(),
                                   std::move(cb));
  }

  void archive_for_write(const pb::ArchiveQuery& q, archive_cb cb) override {
    auto* sys = &sys_;
    auto limit = timeout_;
    auto local = gw_;
    auto bytes = q.SerializeAsString();
    writer([=, cb = std::move(cb)](caf::actor to, std::optional<api_error> err) {
      if (err)
        return cb({}, err);
      ask_decoded<pb::ArchiveAnswer>(*sys, to, limit_for(to, local, limit),
                                     archive_atom::value, bytes, cb);
    });
  }

  void last_seen(const std::vector<std::string>& ids, json_cb done) override {
    std::string names;
    for (auto& id : ids)
      (names += id) += '\n';
    auto* sys = &sys_;
    auto local = gw_;
    // An extra for the miners' list, which is served without it: asked for
    // 3 s at most in all (finding the leader included), so that a leader
    // that hangs costs the list its times, not its answer.
    constexpr auto limit = std::chrono::seconds(3);
    auto once = std::make_shared<std::atomic<bool>>(false);
    auto timer = sys_.spawn([done, once](caf::event_based_actor* self) -> caf::behavior {
      return {caf::after(limit) >> [=] {
        if (!once->exchange(true))
          done({}, api_error{"unavailable", "the leader did not say within 3 s"});
        self->quit();
      }};
    });
    auto cb = [done, once, timer](nlohmann::json j, std::optional<api_error> e) {
      caf::anon_send_exit(timer, caf::exit_reason::user_shutdown);
      if (!once->exchange(true))
        done(std::move(j), std::move(e));
    };
    writer([=](caf::actor to, std::optional<api_error> err) {
      if (err)
        return cb({}, err);
      sys->spawn([=](caf::event_based_actor* self) {
        self->request(to, limit_for(to, local, limit), seen_atom::value, names)
          .then(
            [=](const std::string& text) {
              auto j = nlohmann::json::parse(text, nullptr, false);
              if (!j.is_object())
                return cb({}, api_error{"unavailable",
                                        "the leader's answer does not decode"});
              cb(std::move(j), std::nullopt);
            },
            [=](caf::error& e) { cb({}, to_api_error(*sys, e)); });
      });
    });
  }

  void submit(const pb::SubmitSession& s, done_cb cb) override {
    auto* sys = &sys_;
    auto bytes = s.SerializeAsString();
    // Durable before the answer: the supervisor replies after its fsync
    // (a cluster: after a majority holds it), however long that takes.
    writer([sys, bytes, cb = std::move(cb)](caf::actor to,
                                            std::optional<api_error> err) {
      if (err)
        return cb(err);
      sys->spawn([=](caf::event_based_actor* self) {
        self->request(to, std::chrono::seconds(60), submit_atom::value, bytes)
          .then([=](accepted_atom) { cb(std::nullopt); },
                [=](caf::error& e) { cb(to_api_error(*sys, e)); });
      });
    });
  }

  void prompt(const pb::PromptRequest& p, prompt_cb cb) override {
    // Sessions run on the leader: a follower passes the prompt on. Over the
    // network it waits the prompt's timeout and a little more (so that the
    // session's own "timeout" is what the client sees).
    auto* sys = &sys_;
    auto limit = std::chrono::milliseconds(p.timeout_ms() + 5000);
    auto local = gw_;
    auto bytes = p.SerializeAsString();
    writer([=, cb = std::move(cb)](caf::actor to, std::optional<api_error> err) {
      if (err)
        return cb({}, err);
      ask_decoded<pb::PromptAnswer>(*sys, to, limit_for(to, local, limit),
                                    prompt_atom::value, bytes, cb);
    });
  }

 private:
  caf::actor_system& sys_;
  caf::actor gw_;
  caf::actor sup_;  // operators' commands go to it directly, never via miners' port
  connect_fn connect_;
  forget_fn forget_;
  std::chrono::milliseconds timeout_;
  std::shared_ptr<leader_link> link_ = std::make_shared<leader_link>();
};

} // namespace

caf::actor spawn_event_relay(caf::actor_system& sys, caf::actor supervisor,
                             std::shared_ptr<http::event_feed> feed,
                             std::chrono::milliseconds heartbeat) {
  // It listens to the supervisor only while someone watches the feed: an
  // oracle nobody watches does not pay for the events' JSON, nor for one
  // more message per group commit.
  auto relay = sys.spawn([=](caf::event_based_actor* self) -> caf::behavior {
    auto subscribed = std::make_shared<bool>(false);
    self->delayed_send(self, heartbeat, tick_atom::value);
    return {
      [=](subscribe_atom) {
        if (*subscribed)
          return;
        *subscribed = true;
        self->send(supervisor, subscribe_atom::value,
                   caf::actor_cast<caf::actor>(self), true);
      },
      [=](events_atom, const event_batch& b) {
        if (!feed->watched() || !b)
          return;
        std::vector<nlohmann::json> out;
        out.reserve(static_cast<size_t>(b->events_size()));
        for (auto& e : b->events()) {
          auto j = event_json(e);
          j["time"] = b->now();
          out.push_back(std::move(j));
        }
        feed->publish(std::move(out));
      },
      [=](reset_atom) {},  // a term ended: the events already sent stand
      [=](tick_atom) {
        feed->heartbeat();
        bool watched = feed->watched();
        if (*subscribed != watched) {  // also heals a missed on_watch
          *subscribed = watched;
          self->send(supervisor, subscribe_atom::value,
                     caf::actor_cast<caf::actor>(self), watched);
        }
        self->delayed_send(self, heartbeat, tick_atom::value);
      },
    };
  });
  caf::actor_addr weak = relay.address();
  feed->on_watch([weak] {
    if (auto a = caf::actor_cast<caf::actor>(weak))
      caf::anon_send(a, subscribe_atom::value);
  });
  return relay;
}

std::shared_ptr<http::pool_api> make_pool_api(caf::actor_system& sys,
                                              caf::actor gateway,
                                              caf::actor supervisor,
                                              connect_fn connect,
                                              std::chrono::milliseconds t,
                                              forget_fn forget) {
  return std::make_shared<caf_pool_api>(sys, std::move(gateway),
                                        std::move(supervisor),
                                        std::move(connect), t,
                                        std::move(forget));
}

} // namespace nodepool
