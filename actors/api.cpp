#include "actors/api.hpp"

#include <caf/all.hpp>

#include "actors/config.hpp"
#include "actors/wire.hpp"

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

class caf_pool_api : public http::pool_api {
 public:
  caf_pool_api(caf::actor_system& sys, caf::actor gw, caf::actor sup,
               std::chrono::milliseconds t)
    : sys_(sys), gw_(std::move(gw)), sup_(std::move(sup)), timeout_(t) {}

  void command(const pb::Command& c, done_cb cb) override {
    auto sup = sup_;
    auto* sys = &sys_;
    auto bytes = c.SerializeAsString();
    sys_.spawn([sup, sys, bytes, cb = std::move(cb)](caf::event_based_actor* self) {
      self->request(sup, std::chrono::seconds(60), cmd_atom::value, bytes)
        .then([=](accepted_atom) { cb(std::nullopt); },
              [=](caf::error& err) { cb(to_api_error(*sys, err)); });
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

  void state(state_cb cb) override {
    auto gw = gw_;
    auto t = timeout_;
    auto* sys = &sys_;
    sys_.spawn([gw, t, sys, cb = std::move(cb)](caf::event_based_actor* self) {
      self->request(gw, t, cluster_atom::value)
        .then(
          [=](const std::string& view_text) {
            self->request(gw, t, state_atom::value)
              .then(
                [=](const std::string& bytes) {
                  pb::Snapshot snap;
                  if (!snap.ParseFromString(bytes))
                    return cb(std::nullopt, {},
                              api_error{"unavailable", "state does not decode"});
                  auto view = nlohmann::json::parse(view_text, nullptr, false);
                  if (!view.is_object() || view.empty()) {
                    view = nlohmann::json::object();
                    view["role"] = "single";
                    view["applied_index"] = snap.last_index();
                  }
                  cb(std::move(snap), std::move(view), std::nullopt);
                },
                [=](caf::error& err) {
                  cb(std::nullopt, {}, to_api_error(*sys, err));
                });
          },
          [=](caf::error& err) { cb(std::nullopt, {}, to_api_error(*sys, err)); });
    });
  }

  void archive(const pb::ArchiveQuery& q, archive_cb cb) override {
    auto gw = gw_;
    auto t = timeout_;
    auto* sys = &sys_;
    auto bytes = q.SerializeAsString();
    sys_.spawn([gw, t, sys, bytes, cb = std::move(cb)](caf::event_based_actor* self) {
      self->request(gw, t, archive_atom::value, bytes)
        .then(
          [=](const std::string& answer) {
            pb::ArchiveAnswer a;
            if (!a.ParseFromString(answer))
              return cb({}, api_error{"unavailable", "answer does not decode"});
            cb(std::move(a), std::nullopt);
          },
          [=](caf::error& err) { cb({}, to_api_error(*sys, err)); });
    });
  }

  void submit(const pb::SubmitSession& s, done_cb cb) override {
    auto gw = gw_;
    auto* sys = &sys_;
    auto bytes = s.SerializeAsString();
    // Durable before the answer: the supervisor replies after its fsync
    // (a cluster: after a majority holds it), however long that takes.
    sys_.spawn([gw, sys, bytes, cb = std::move(cb)](caf::event_based_actor* self) {
      self->request(gw, std::chrono::seconds(60), submit_atom::value, bytes)
        .then([=](accepted_atom) { cb(std::nullopt); },
              [=](caf::error& err) { cb(to_api_error(*sys, err)); });
    });
  }

  void prompt(const pb::PromptRequest& p, prompt_cb cb) override {
    auto gw = gw_;
    auto* sys = &sys_;
    auto bytes = p.SerializeAsString();
    // The session answers within the prompt's timeout; a little more here
    // so its own "timeout" refusal is what the client sees.
    auto t = std::chrono::milliseconds(p.timeout_ms() + 5000);
    sys_.spawn([gw, sys, bytes, t, cb = std::move(cb)](caf::event_based_actor* self) {
      self->request(gw, t, prompt_atom::value, bytes)
        .then(
          [=](const std::string& answer) {
            pb::PromptAnswer a;
            if (!a.ParseFromString(answer))
              return cb({}, api_error{"unavailable", "answer does not decode"});
            cb(std::move(a), std::nullopt);
          },
          [=](caf::error& err) { cb({}, to_api_error(*sys, err)); });
    });
  }

 private:
  caf::actor_system& sys_;
  caf::actor gw_;
  caf::actor sup_;  // operators' commands go to it directly, never via miners' port
  std::chrono::milliseconds timeout_;
};

} // namespace

std::shared_ptr<http::pool_api> make_pool_api(caf::actor_system& sys,
                                              caf::actor gateway,
                                              caf::actor supervisor,
                                              std::chrono::milliseconds t) {
  return std::make_shared<caf_pool_api>(sys, std::move(gateway),
                                        std::move(supervisor), t);
}

} // namespace nodepool
