#include "actors/node.hpp"

#include <dirent.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <map>
#include <optional>
#include <memory>
#include <mutex>

#include <caf/all.hpp>
#include <caf/io/all.hpp>
#include <caf/openssl/all.hpp>
#include <nlohmann/json.hpp>

#include "actors/config.hpp"
#include "cluster_config.hpp"
#include "digest.hpp"
#include "openai_client.hpp"
#include "log.hpp"
#include "nodepool.pb.h"
#include "random.hpp"

namespace nodepool {

namespace {

struct node_state {
  node_config cfg;
  std::unique_ptr<sim_backend> backend;
  // The `openai` backend's workers, if any: one request at a time each,
  // `openai_config::parallel` of them; a prompt goes to the least busy.
  std::vector<caf::actor> models;
  std::vector<uint32_t> in_flight;  // per worker
  caf::actor gateway;
  bool registered = false;
  int64_t heartbeat_ms = 1000;
  uint64_t beat_epoch = 0;  // tells the heartbeat loops of connections apart
  int64_t retry_ms = 0;     // backoff of registrations refused as in use
  uint64_t attempt = 0;     // tells registration retry timers apart
  uint64_t tests = 0;
  uint64_t tasks = 0;
  std::map<std::string, uint64_t> refusals;  // sent to it, and stale_term
  uint64_t term = 0;  // highest leader term seen (fencing)
  static inline const char* name = "node";
};

using self_ptr = caf::stateful_actor<node_state>*;

void send_later(self_ptr self, int64_t delay_ms, std::string bytes) {
  self->delayed_send(self, std::chrono::milliseconds(std::max<int64_t>(1, delay_ms)),
                     reply_atom::value, std::move(bytes));
}

std::string garbage_bytes(uint64_t seed) {
  seeded_rng rnd{seed};
  std::string s(16 + seed % 32, '\0');
  for (auto& c : s)
    c = static_cast<char>(rnd.next() >> 56);
  s[0] = '\xff';  // a field number no MinerMsg has
  return s;
}

/// Sends (connect_atom, epoch, attempt) to itself after `delay_ms`: if the
/// node is still unregistered on the same connection then, it registers
/// again. A newer timer makes older ones stale.
void retry_register(self_ptr self, int64_t delay_ms) {
  auto& st = self->state;
  self->delayed_send(self, std::chrono::milliseconds(std::max<int64_t>(1, delay_ms)),
                     connect_atom::value, st.beat_epoch, ++st.attempt);
}

void do_register(self_ptr self) {
  auto& st = self->state;
  if (!st.gateway)
    return;
  retry_register(self, st.retry_ms > 0 ? st.retry_ms : st.cfg.register_timeout_ms);
  pb::MinerMsg m;
  m.set_node_id(st.cfg.id);
  auto* r = m.mutable_register_();
  r->set_node_id(st.cfg.id);
  if (st.cfg.key)
    r->set_public_key(st.cfg.key->public_key());
  for (auto& x : st.cfg.models)
    r->add_models(x);
  self->send(st.gateway, miner_atom::value, m.SerializeAsString());
}

/// The oracle's answer to a keyed registration: sign its nonce and register
/// again with the proof.
void register_signed(self_ptr self, const std::string& nonce) {
  auto& st = self->state;
  if (!st.gateway || !st.cfg.key || st.registered)
    return;
  pb::MinerMsg m;
  m.set_node_id(st.cfg.id);
  auto* r = m.mutable_register_();
  r->set_node_id(st.cfg.id);
  r->set_public_key(st.cfg.key->public_key());
  for (auto& x : st.cfg.models)
    r->add_models(x);
  r->set_nonce(nonce);
  r->set_signature(st.cfg.key->sign(
    registration_message(st.cfg.id, st.cfg.key->public_key(), nonce)));
  r->set_join_token(st.cfg.join_token);
  self->send(st.gateway, miner_atom::value, m.SerializeAsString());
}

void after_message(self_ptr self) {
  if (self->state.backend->crashed()) {
    log("node")->info("node {} crashes (sim behaviour)", self->state.cfg.id);
    self->quit(caf::make_error(caf::sec::runtime_error, "simulated crash"));
  }
}

/// Milliseconds of the steady clock: the deadlines the node hands its
/// worker (a prompt waits in the worker's mailbox behind the others).
int64_t steady_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(steady_clock::now().time_since_epoch())
    .count();
}

/// What is left until `until` (steady_ms; 0: no deadline, 0 returned),
/// or nothing once it has passed.
std::optional<int64_t> left_until(int64_t until) {
  if (until == 0)
    return int64_t{0};
  auto left = until - steady_ms();
  if (left <= 0)
    return std::nullopt;
  return left;
}

/// The `openai` backend's worker: a detached actor (a thread of its own), so
/// that waiting for the inference server never stalls the scheduler.
caf::behavior inference_worker(caf::event_based_actor*, openai_config cfg) {
  auto client = std::make_shared<openai_client>(std::move(cfg));
  // A prompt whose test or task is past its deadline by the time the
  // worker reaches it is not sent: the answer could no longer count, and
  // a slow server would fall further behind. A prompt sent is bounded by
  // what is left.
  return {
    [client](task_atom, const std::string& prompt,
             int64_t until) -> caf::result<std::string> {
      auto left = left_until(until);
      if (!left)
        return caf::make_error(caf::sec::runtime_error,
                               "expired: the task's deadline passed before "
                               "its prompt was sent");
      std::string err;
      if (auto text = client->complete(prompt, err, 0, nullptr, *left))
        return *text;
      log("node")->warn("inference failed: {}", err);
      return caf::make_error(caf::sec::runtime_error, "inference failed: " + err);
    },
    // A test's item: its length limit in, the completion tokens out.
    [client](task_atom, const std::string& prompt, uint32_t max_tokens,
             int64_t until) -> caf::result<std::string, uint32_t> {
      auto left = left_until(until);
      if (!left)
        return caf::make_error(caf::sec::runtime_error,
                               "expired: the test's deadline passed before "
                               "this question was sent");
      std::string err;
      uint32_t tokens = 0;
      if (auto text = client->complete(prompt, err, max_tokens, &tokens, *left))
        return {*text, tokens};
      log("node")->warn("inference failed: {}", err);
      return caf::make_error(caf::sec::runtime_error, "inference failed: " + err);
    },
  };
}

/// The least busy of the node's workers, counted busy until release_model.
size_t pick_model(self_ptr self) {
  auto& st = self->state;
  size_t w = 0;
  for (size_t i = 1; i < st.models.size(); ++i)
    if (st.in_flight[i] < st.in_flight[w])
      w = i;
  ++st.in_flight[w];
  return w;
}

void release_model(self_ptr self, size_t w) {
  auto& n = self->state.in_flight;
  if (w < n.size() && n[w] > 0)
    --n[w];
}

/// Answers a cognitive test with the model: one request per challenge (as
/// many at once as the node has workers), answers sent together once all
/// are in (a failed one answers empty).
void answer_with_model(self_ptr self, const pb::CognitiveTest& t) {
  struct pending {
    pb::MinerMsg out;
    size_t remaining = 0;
  };
  auto p = std::make_shared<pending>();
  p->out.set_node_id(self->state.cfg.id);
  p->out.mutable_test_answers()->set_test_id(t.test_id());
  p->out.mutable_test_answers()->set_nonce(t.nonce());
  p->remaining = static_cast<size_t>(t.challenges_size());
  for (int i = 0; i < t.challenges_size(); ++i) {
    p->out.mutable_test_answers()->add_answers();
    p->out.mutable_test_answers()->add_tokens(0);
  }
  auto done = [self, p](int i, std::string text, uint32_t tokens) {
    *p->out.mutable_test_answers()->mutable_answers(i) = std::move(text);
    p->out.mutable_test_answers()->set_tokens(i, tokens);
    if (--p->remaining == 0 && self->state.gateway)
      self->send(self->state.gateway, miner_atom::value,
                 p->out.SerializeAsString());
  };
  if (t.challenges_size() == 0 && self->state.gateway) {
    self->send(self->state.gateway, miner_atom::value,
               p->out.SerializeAsString());
    return;
  }
  auto until = t.deadline_ms() > 0 ? steady_ms() + t.deadline_ms() : 0;
  for (int i = 0; i < t.challenges_size(); ++i) {
    auto w = pick_model(self);
    self->request(self->state.models[w], caf::infinite, task_atom::value,
                  t.challenges(i).prompt(), t.challenges(i).max_tokens(), until)
      .then(
        [=](std::string& text, uint32_t tokens) {
          release_model(self, w);
          done(i, std::move(text), tokens);
        },
        [=](caf::error&) {
          release_model(self, w);
          done(i, {}, 0);
        });
  }
}

/// Serves a task with the model: ack at once, then precommit and commit of
/// its output. If the model fails, the node stays silent and the session's
/// phase deadline ends the task.
void serve_with_model(self_ptr self, const pb::TaskSpec& t) {
  auto& id = self->state.cfg.id;
  if (!self->state.gateway)
    return;
  pb::MinerMsg ack;
  ack.set_node_id(id);
  ack.mutable_task_ack()->set_session_id(t.session_id());
  ack.mutable_task_ack()->set_task_no(t.task_no());
  self->send(self->state.gateway, miner_atom::value, ack.SerializeAsString());
  auto sid = t.session_id();
  auto no = t.task_no();
  // The precommit, which needs the output, is the task's second phase: due
  // two phase timeouts after the task went out.
  auto until = t.phase_timeout_ms() > 0 ? steady_ms() + 2 * t.phase_timeout_ms() : 0;
  auto w = pick_model(self);
  self->request(self->state.models[w], caf::infinite, task_atom::value,
                t.prompt(), until)
    .then(
      [=](std::string& text) {
        release_model(self, w);
        auto& st = self->state;
        if (!st.gateway)
          return;
        pb::MinerMsg pre;
        pre.set_node_id(st.cfg.id);
        pre.mutable_task_precommit()->set_session_id(sid);
        pre.mutable_task_precommit()->set_task_no(no);
        pre.mutable_task_precommit()->set_output_hash(sha256_hex(text));
        self->send(st.gateway, miner_atom::value, pre.SerializeAsString());
        pb::MinerMsg com;
        com.set_node_id(st.cfg.id);
        com.mutable_task_commit()->set_session_id(sid);
        com.mutable_task_commit()->set_task_no(no);
        com.mutable_task_commit()->set_output(text);
        self->send(st.gateway, miner_atom::value, com.SerializeAsString());
      },
      [=](caf::error&) { release_model(self, w); });
}

void on_oracle(self_ptr self, const pb::OracleMsg& m) {
  auto& st = self->state;
  auto& id = st.cfg.id;
  // Fencing: a message from a leader older than one already heard from
  // is a deposed leader's. Counted and ignored.
  if (m.term() > 0) {
    if (m.term() < st.term) {
      ++st.refusals[refusal_name(pb::REFUSAL_STALE_TERM)];
      log("node")->warn("node {}: refused a message of term {} (term {} "
                        "seen): stale_term",
                        id, m.term(), st.term);
      return;
    }
    st.term = m.term();
  }
  switch (m.kind_case()) {
    case pb::OracleMsg::kRegistered:
      if (!st.registered) {
        st.registered = true;
        st.retry_ms = 0;
        st.heartbeat_ms = std::max<int64_t>(1, m.registered().heartbeat_interval_ms());
        self->send(self, beat_atom::value, ++st.beat_epoch);
      }
      break;
    case pb::OracleMsg::kNonce:
      register_signed(self, m.nonce().nonce());
      break;
    case pb::OracleMsg::kTest: {
      ++st.tests;
      auto& t = m.test();
      if (!st.models.empty()) {
        answer_with_model(self, t);
        break;
      }
      pb::MinerMsg out;
      out.set_node_id(id);
      auto* a = out.mutable_test_answers();
      a->set_test_id(t.test_id());
      a->set_nonce(t.nonce());
      int64_t delay = 0;
      bool garbage = false;
      for (auto& c : t.challenges()) {
        auto r = st.backend->answer(c.prompt(), t.latency_bound_ms(),
                                    t.deadline_ms());
        a->add_answers(r.text);
        delay = std::max(delay, r.delay_ms);
        garbage = garbage || r.garbage;
      }
      if (st.cfg.tape && st.cfg.kind == behaviour::copycat) {
        // Answers another node sent, in their order, under its own test.
        std::lock_guard<std::mutex> lock{st.cfg.tape->m};
        a->clear_answers();
        for (auto& x : st.cfg.tape->answers)
          a->add_answers(x);
      }
      send_later(self, delay,
                 garbage ? garbage_bytes(t.test_id()) : out.SerializeAsString());
      after_message(self);
      break;
    }
    case pb::OracleMsg::kTask: {
      ++st.tasks;
      auto& t = m.task();
      if (!st.models.empty()) {
        serve_with_model(self, t);
        break;
      }
      auto r = st.backend->infer(t.prompt());
      if (r.silent) {
        after_message(self);
        break;
      }
      if (r.garbage) {
        send_later(self, 1, garbage_bytes(t.task_no() + st.tasks));
        after_message(self);
        break;
      }
      pb::MinerMsg ack;
      ack.set_node_id(id);
      ack.mutable_task_ack()->set_session_id(t.session_id());
      ack.mutable_task_ack()->set_task_no(t.task_no());
      send_later(self, 1, ack.SerializeAsString());
      pb::MinerMsg pre;
      pre.set_node_id(id);
      auto* p = pre.mutable_task_precommit();
      p->set_session_id(t.session_id());
      p->set_task_no(t.task_no());
      p->set_output_hash(sha256_hex(r.text));
      send_later(self, 1 + r.delay_ms, pre.SerializeAsString());
      pb::MinerMsg com;
      com.set_node_id(id);
      auto* c = com.mutable_task_commit();
      c->set_session_id(t.session_id());
      c->set_task_no(t.task_no());
      c->set_output(r.bad_reveal ? r.text + " (changed)" : r.text);
      send_later(self, 2 + r.delay_ms, com.SerializeAsString());
      after_message(self);
      break;
    }
    case pb::OracleMsg::kRefusal: {
      // The enum; from an oracle of before it, the code's text.
      auto& r = m.refusal();
      auto code = r.kind() != pb::REFUSAL_NONE ? r.kind() : refusal_code(r.code());
      ++st.refusals[code != pb::REFUSAL_NONE ? refusal_name(code) : r.code()];
      log("node")->debug("node {} refused: {} ({})", id, r.code(), r.detail());
      // Refusals that the same registration would meet again: the node
      // stops and says why, rather than registering again every few seconds
      // with no one told (an id or a model name out of bounds is a
      // mistake in the miner's flags).
      switch (code) {
        case pb::REFUSAL_RETIRED:
        case pb::REFUSAL_KEY_MISMATCH:
        case pb::REFUSAL_KEY_REQUIRED:
        case pb::REFUSAL_KEY_NOT_ALLOWED:
        case pb::REFUSAL_BAD_SIGNATURE:
        case pb::REFUSAL_BAD_KEY:
        case pb::REFUSAL_BAD_NODE_ID:
        case pb::REFUSAL_NO_MODELS:
        case pb::REFUSAL_BAD_MODELS:
          log("node")->warn("node {} leaves: {}", id, r.detail());
          self->quit(make_refusal(code, r.detail()));
          return;
        default:
          break;
      }
      if (code == pb::REFUSAL_BAD_NONCE && !st.registered) {
        do_register(self);  // a stale or duplicated proof: start over
      } else if (code == pb::REFUSAL_NOT_CONNECTED || code == pb::REFUSAL_NOT_REGISTERED) {
        st.registered = false;  // the oracle lost track of us: register again
        do_register(self);
      } else if (code == pb::REFUSAL_NODE_ID_IN_USE && !st.registered) {
        // Our id is still bound to an older connection (a previous run of
        // this miner the oracle has not yet seen go away): try again later,
        // backing off, rather than waiting unregistered forever.
        st.retry_ms = st.retry_ms == 0
                        ? st.heartbeat_ms
                        : std::min<int64_t>(st.retry_ms * 2, 30000);
        retry_register(self, st.retry_ms);
      }
      break;
    }
    default:
      break;
  }
}

} // namespace

caf::actor spawn_node(caf::actor_system& sys, node_config cfg,
                      caf::actor gateway) {
  return sys.spawn([cfg = std::move(cfg), gateway](self_ptr self) mutable
                   -> caf::behavior {
    auto& st = self->state;
    st.cfg = std::move(cfg);
    st.backend = std::make_unique<sim_backend>(st.cfg.kind, st.cfg.seed,
                                               st.cfg.deadline_hint_ms,
                                               st.cfg.knowledge);
    if (st.cfg.openai) {
      for (uint32_t i = 0; i < std::max<uint32_t>(1, st.cfg.openai->parallel); ++i) {
        st.models.push_back(self->system().spawn<caf::detached>(
          inference_worker, *st.cfg.openai));
        st.in_flight.push_back(0);
        self->link_to(st.models.back());  // the workers go when the node goes
      }
    }
    st.gateway = gateway;
    self->set_down_handler([=](caf::down_msg& dm) {
      auto& st = self->state;
      if (dm.source == st.gateway.address()) {
        log("node")->info("node {}: oracle gone, waiting for a new one",
                          st.cfg.id);
        st.gateway = nullptr;
        st.registered = false;
      }
    });
    if (gateway)
      self->monitor(gateway);
    do_register(self);
    return {
      [=](oracle_atom, const std::string& bytes) {
        pb::OracleMsg m;
        if (!m.ParseFromString(bytes)) {
          log("node")->warn("node {}: undecodable message from oracle",
                            self->state.cfg.id);
          return;
        }
        on_oracle(self, m);
      },
      [=](reply_atom, const std::string& bytes) {
        auto& st = self->state;
        if (!st.gateway)
          return;
        self->send(st.gateway, miner_atom::value, bytes);
        // What a copycat next to it can copy: answers once they are sent.
        if (st.cfg.tape && st.cfg.kind == behaviour::healthy) {
          pb::MinerMsg m;
          if (m.ParseFromString(bytes) && m.has_test_answers()) {
            std::lock_guard<std::mutex> lock{st.cfg.tape->m};
            st.cfg.tape->answers.assign(m.test_answers().answers().begin(),
                                        m.test_answers().answers().end());
          }
        }
      },
      [=](beat_atom, uint64_t epoch) {
        auto& st = self->state;
        if (epoch != st.beat_epoch || !st.registered || !st.gateway)
          return;
        pb::MinerMsg m;
        m.set_node_id(st.cfg.id);
        m.mutable_heartbeat()->set_node_id(st.cfg.id);
        m.mutable_heartbeat()->set_mode(pb::AVAILABLE);
        self->send(st.gateway, miner_atom::value, m.SerializeAsString());
        self->delayed_send(self, std::chrono::milliseconds(st.heartbeat_ms),
                           beat_atom::value, epoch);
      },
      // A registration retry (see retry_register); stale once the node
      // switched gateways or armed a newer one.
      [=](connect_atom, uint64_t epoch, uint64_t attempt) {
        auto& st = self->state;
        if (epoch == st.beat_epoch && attempt == st.attempt && !st.registered
            && st.gateway)
          do_register(self);
      },
      [=](connect_atom, caf::actor gw) {
        auto& st = self->state;
        st.gateway = gw;
        st.registered = false;
        ++st.beat_epoch;
        if (gw) {  // an empty handle just disconnects
          self->monitor(gw);
          do_register(self);
        }
      },
      [=](stats_atom) -> std::string {
        auto& st = self->state;
        nlohmann::json j;
        j["id"] = st.cfg.id;
        j["behaviour"] = to_string(st.cfg.kind);
        j["registered"] = st.registered;
        j["tests"] = st.tests;
        j["tasks"] = st.tasks;
        j["refusals"] = st.refusals;
        j["term"] = st.term;
        return j.dump();
      },
    };
  });
}

namespace {

using addrinfo_ptr = std::unique_ptr<addrinfo, void (*)(addrinfo*)>;

/// host:port's TCP addresses (IPv4 and IPv6); null when it does not resolve.
addrinfo_ptr resolve_tcp(const std::string& host, uint16_t port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0)
    res = nullptr;
  return addrinfo_ptr{res, [](addrinfo* a) {
                        if (a)
                          ::freeaddrinfo(a);
                      }};
}

/// Whether something accepts TCP connections at host:port within
/// `timeout`: a plain socket, outside CAF's middleman. The middleman
/// handles one connection request at a time; asked for a member that was
/// just killed, it was seen to hold every later request (to the members
/// alive, the new leader among them) for 30 s. A member that refuses or
/// does not answer here is not asked through it.
bool accepts(const std::string& host, uint16_t port,
             std::chrono::milliseconds timeout) {
  auto res = resolve_tcp(host, port);
  if (!res)
    return true;  // let the middleman say what is wrong
  bool ok = false;
  for (auto* a = res.get(); a && !ok; a = a->ai_next) {
    int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                      a->ai_protocol);
    if (fd < 0)
      continue;
    int rc = ::connect(fd, a->ai_addr, a->ai_addrlen);
    if (rc == 0) {
      ok = true;
    } else if (errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      if (::poll(&p, 1, static_cast<int>(timeout.count())) == 1) {
        int err = 0;
        socklen_t len = sizeof err;
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        ok = err == 0;
      }
    }
    ::close(fd);
  }
  return ok;
}

} // namespace

/// Shuts down every TCP connection of this process to host:port (found
/// through /proc/self/fd): CAF's multiplexer then sees it end, closes it and
/// drops what it knew of the peer, so that the next connection starts with
/// a fresh handshake. Only shutdown(), never close(): the descriptor stays
/// CAF's. Returns how many were shut down.
size_t drop_connections(const std::string& host, uint16_t port) {
  auto res = resolve_tcp(host, port);
  if (!res)
    return 0;
  auto same = [&](const sockaddr_storage& peer) {
    for (auto* a = res.get(); a; a = a->ai_next) {
      if (a->ai_family != peer.ss_family)
        continue;
      if (peer.ss_family == AF_INET) {
        auto* x = reinterpret_cast<const sockaddr_in*>(&peer);
        auto* y = reinterpret_cast<const sockaddr_in*>(a->ai_addr);
        if (x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr)
          return true;
      } else if (peer.ss_family == AF_INET6) {
        auto* x = reinterpret_cast<const sockaddr_in6*>(&peer);
        auto* y = reinterpret_cast<const sockaddr_in6*>(a->ai_addr);
        if (x->sin6_port == y->sin6_port
            && std::memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0)
          return true;
      }
    }
    return false;
  };
  size_t n = 0;
  if (auto* dir = ::opendir("/proc/self/fd")) {
    while (auto* e = ::readdir(dir)) {
      char* end = nullptr;
      long fd = std::strtol(e->d_name, &end, 10);
      if (end == e->d_name || *end != '\0' || fd == ::dirfd(dir))
        continue;
      struct stat st{};
      if (::fstat(static_cast<int>(fd), &st) != 0 || !S_ISSOCK(st.st_mode))
        continue;
      sockaddr_storage peer{};
      socklen_t len = sizeof peer;
      if (::getpeername(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&peer),
                        &len) == 0
          && same(peer) && ::shutdown(static_cast<int>(fd), SHUT_RDWR) == 0)
        ++n;
    }
    ::closedir(dir);
  }
  return n;
}

caf::expected<caf::actor> connect_oracle(caf::actor_system& sys,
                                         const std::string& host,
                                         uint16_t port,
                                         std::chrono::milliseconds timeout) {
  // A host that does not answer at all (down, or its link cut: SYN dropped)
  // is found out here, in at most half a second: asked to connect to it,
  // CAF's middleman would wait for TCP to give up (about two minutes) and
  // hold every later request of this process behind it.
  if (!accepts(host, port, std::min(timeout, std::chrono::milliseconds(500))))
    return caf::make_error(caf::sec::cannot_connect_to_node,
                           host + ":" + std::to_string(port)
                             + " does not accept connections");
  // Through the middleman actor rather than the blocking remote_actor(): a
  // peer that never completes the handshake (TLS on one side only, say)
  // gives an error after `timeout` instead of a hang.
  auto mm = sys.has_openssl_manager() ? sys.openssl_manager().actor_handle()
                                      : sys.middleman().actor_handle();
  caf::expected<caf::actor> result{caf::sec::cannot_connect_to_node};
  caf::scoped_actor self{sys};
  self->request(mm, timeout, connect_atom::value, host, port)
    .receive(
      [&](const caf::node_id&, caf::strong_actor_ptr& ptr,
          const std::set<std::string>&) {
        if (ptr)
          result = caf::actor_cast<caf::actor>(std::move(ptr));
        else
          result = caf::make_error(caf::sec::no_actor_published_at_port,
                                   "nothing published at " + host + ":"
                                     + std::to_string(port));
      },
      [&](caf::error& e) {
        if (e == caf::sec::request_timeout)
          result = caf::make_error(caf::sec::cannot_connect_to_node,
                                   "no handshake from " + host + ":"
                                     + std::to_string(port)
                                     + " (is TLS on at one end only?)");
        else
          result = std::move(e);
      });
  return result;
}

namespace {

/// The oracle's view of its cluster: an empty object for a single oracle,
/// nullopt when it does not answer.
std::optional<nlohmann::json> cluster_view(caf::actor_system& sys,
                                           const caf::actor& gw,
                                           std::chrono::milliseconds timeout) {
  std::optional<nlohmann::json> out;
  caf::scoped_actor self{sys};
  self->request(gw, timeout, cluster_atom::value)
    .receive(
      [&](const std::string& text) {
        auto j = nlohmann::json::parse(text, nullptr, false);
        if (j.is_object())
          out = std::move(j);
      },
      [&](caf::error&) {});
  return out;
}

bool leads(const nlohmann::json& j) {
  return j.empty()
         || (j.value("role", "") == "leader" && j.value("ready", false));
}

} // namespace

std::vector<std::string> split_oracles(const std::string& list) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at <= list.size()) {
    auto comma = list.find(',', at);
    auto part = list.substr(at, comma == std::string::npos ? std::string::npos
                                                           : comma - at);
    if (!part.empty())
      out.push_back(part);
    if (comma == std::string::npos)
      break;
    at = comma + 1;
  }
  return out;
}

bool is_leader(caf::actor_system& sys, const caf::actor& gateway,
               std::chrono::milliseconds timeout) {
  auto j = cluster_view(sys, gateway, timeout);
  return j && leads(*j);
}

namespace {

/// A member whose gateway was reached but that did not answer, twice in a
/// row: its connection is shut down (drop_connections), and the next look
/// connects again. A member that is stopped or slow costs a reconnection;
/// one that lost its way back to us is served again. Seen in chaos runs:
/// an oracle continued after a SIGSTOP read a client's requests on one
/// connection (strace) and never answered on it, for minutes, while it
/// answered every other client; shutting that connection down mended it at
/// once. The likely cause, read in CAF 0.17.6's BASP broker: it names a
/// connection by its socket number and forgets a closed one later, through
/// its queue; a connection accepted meanwhile on the same number (a burst of
/// them, queued while the oracle was stopped) can have its handshake done
/// and then be forgotten with the old one: no route back to that peer.
std::mutex silent_mu;
std::map<std::string, int> silent;  // member -> unanswered looks in a row

std::optional<nlohmann::json> ask_member(caf::actor_system& sys,
                                         const caf::actor& gw,
                                         const std::string& member,
                                         const std::string& host, uint16_t port,
                                         std::chrono::milliseconds timeout) {
  auto j = cluster_view(sys, gw, timeout);
  std::lock_guard<std::mutex> g{silent_mu};
  if (j) {
    silent.erase(member);
  } else if (++silent[member] >= 2) {
    silent.erase(member);
    if (auto n = drop_connections(host, port))
      log("client")->info("{} took our question but did not answer twice: "
                          "{} connection(s) to it shut down, to be made again",
                          member, n);
  }
  return j;
}

} // namespace

caf::expected<caf::actor> connect_leader(
  caf::actor_system& sys, const std::vector<std::string>& oracles,
  std::chrono::milliseconds timeout) {
  if (oracles.empty())
    return caf::make_error(caf::sec::cannot_connect_to_node, "no oracle given");
  // What each member said, for the error when none leads.
  std::string why;
  auto note = [&](const std::string& o, const std::string& what) {
    why += (why.empty() ? "" : "; ") + o + ": " + what;
  };
  for (auto& o : oracles) {
    auto hp = split_host_port(o);
    if (!hp) {
      note(o, "not HOST:PORT");
      continue;
    }
    auto gw = connect_oracle(sys, hp->first, hp->second, timeout);
    if (!gw) {
      note(o, sys.render(gw.error()));
      continue;
    }
    auto j = ask_member(sys, *gw, o, hp->first, hp->second, timeout);
    if (!j) {
      note(o, "did not say who leads");
      continue;
    }
    if (leads(*j))
      return gw;
    auto addr = j->value("leader_client_address", "");
    auto lhp = split_host_port(addr);
    if (!lhp) {
      note(o, "knows no ready leader (an election may be under way)");
      continue;
    }
    auto lgw = connect_oracle(sys, lhp->first, lhp->second, timeout);
    if (!lgw) {
      note(o, "names the leader " + addr + ", which does not answer: "
                + sys.render(lgw.error()));
      continue;
    }
    auto lj = ask_member(sys, *lgw, addr, lhp->first, lhp->second, timeout);
    if (lj && leads(*lj))
      return lgw;
    note(o, "names the leader " + addr + ", which "
              + (lj ? std::string{"is not a ready leader"}
                    : std::string{"did not say who leads"}));
  }
  return caf::make_error(caf::sec::cannot_connect_to_node, why);
}

} // namespace nodepool
