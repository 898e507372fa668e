#include "raft/raft_log.hpp"
#include "raft/raft_aio.hpp"

#include <csignal>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <unistd.h>
#include <cerrno>
#include <fcntl.h>
#include <poll.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <thread>

extern "C" {
#include <raft.h>
#include <raft/uv.h>
#include <uv.h>
}

#include "log.hpp"
#include "cluster_config.hpp"
#include "raft/raft_disk.hpp"
#include "raft/raft_member.hpp"

namespace nodepool {

namespace {

class raft_log final : public replicated_log {
public:
  raft_log(const raft_options& o, state_machine& sm, role_fn role)
      : opts_(o), sm_(sm), member_(sm) {
    member_.on_role_change([this, f = std::move(role)](const log_status& st) {
      {
        std::lock_guard<std::mutex> g{mu_};
        status_ = st;
      }
      if (f)
        f(st);
    });
  }

  ~raft_log() override { stop(); }

  bool start(std::string& error) {
    // A peer that goes away must not kill the process when raft writes to
    // its socket.
    std::signal(SIGPIPE, SIG_IGN);
    const raft_peer* self = nullptr;
    for (auto& m : opts_.members)
      if (m.id == opts_.id)
        self = &m;
    if (!self) {
      error = "member " + std::to_string(opts_.id) + " is not in the cluster";
      return false;
    }
    address_ = self->address;
    if (int rv = uv_loop_init(&loop_); rv != 0) {
      error = std::string{"uv_loop_init: "} + uv_strerror(rv);
      return false;
    }
    loop_open_ = true;
    if (int rv = raft_uv_tcp_init(&transport_, &loop_); rv != 0) {
      error = std::string{"raft_uv_tcp_init: "} + raft_strerror(rv);
      return false;
    }
    transport_open_ = true;
    // Members added while the cluster runs are in the configuration as
    // "RAFT;CLIENT;HTTP" (member_config_address): the TCP transport is
    // given the Raft listener alone.
    tcp_connect() = transport_.connect;
    transport_.connect = [](struct raft_uv_transport* t, struct raft_uv_connect* req,
                            raft_id id, const char* address, raft_uv_connect_cb cb) {
      auto raft = member_from_config(id, address ? address : "").raft;
      if (auto* tunnel = tunnel_of(t))
        if (auto local = tunnel->local_for(raft); !local.empty())
          raft = local;
      {
        std::lock_guard<std::mutex> g{connects_mu()};
        connects()[req] = cb;
      }
      int rv = tcp_connect()(t, req, id, raft.c_str(), on_connected);
      if (rv != 0) {
        std::lock_guard<std::mutex> g{connects_mu()};
        connects().erase(req);
      }
      return rv;
    };
    // Inbound connections are watched: a leader's closing (its process
    // died) starts an election at the next tick (see on_peer_gone).
    {
      std::lock_guard<std::mutex> g{tunnels_mu()};
      owners()[&transport_] = this;
    }
    tcp_listen() = transport_.listen;
    transport_.listen = [](struct raft_uv_transport* t, raft_uv_accept_cb cb) {
      if (auto* self = owner_of(t))
        self->accept_cb_ = cb;
      return tcp_listen()(t, [](struct raft_uv_transport* t, raft_id id,
                                const char* address, struct uv_stream_s* stream) {
        auto* self = owner_of(t);
        if (!self)
          return;
        self->watch(id, stream);
        no_delay(stream);
        self->accept_cb_(t, id, address, stream);
      });
    };
    if (!opts_.tls.certificate.empty()) {
      // Raft's own listener on loopback, on a port the kernel picks (read
      // back once raft listens: see listening_port); the tunnel listens on
      // the member's address with TLS and brings peers there.
      std::string local = "127.0.0.1:0";
      try {
        tunnel_ = std::make_unique<raft_tls_tunnel>(opts_.tls, address_, "");
      } catch (const std::exception& e) {
        error = e.what();
        return false;
      }
      {
        std::lock_guard<std::mutex> g{tunnels_mu()};
        tunnels()[&transport_] = tunnel_.get();
      }
      if (int rv = raft_uv_tcp_set_bind_address(&transport_, local.c_str()); rv != 0) {
        error = "raft_uv_tcp_set_bind_address(" + local + "): " + raft_strerror(rv);
        return false;
      }
    }
    keep_aio_interposer();  // segment closes must not hold the loop (raft_aio.hpp)
    if (std::error_code ec; std::filesystem::is_directory(opts_.dir, ec)) {
      std::vector<std::string> moved;
      if (!set_aside_stale_segments(opts_.dir, moved, error))
        return false;
      if (!moved.empty()) {
        std::string names;
        for (auto& m : moved)
          names += (names.empty() ? "" : ", ") + m;
        log("raft")->warn("{}: closed segments {} all end before the newest "
                          "snapshot while an open segment holds entries: a "
                          "snapshot install cut short by a crash. Renamed "
                          "stale-*, so that the open segment loads after the "
                          "snapshot (raft_member.cpp, 12.)",
                          opts_.dir, names);
      }
    }
    if (int rv = raft_uv_init(&io_, &loop_, opts_.dir.c_str(), &transport_);
        rv != 0) {
      error = std::string{"raft_uv_init("} + opts_.dir + "): " + io_.errmsg;
      return false;
    }
    io_open_ = true;
    // raft_uv's default, on a load that meets a corrupt segment, renames it
    // and every segment after it corrupt-* and loads what is left: entries
    // this member acknowledged would be gone without a word, and it would
    // vote with a shorter log. It refuses to start instead (raft_member.cpp,
    // 13.).
    raft_uv_set_auto_recovery(&io_, false);
    if (int rv = raft_init(&raft_, &io_, member_.fsm(), opts_.id,
                           address_.c_str());
        rv != 0) {
      error = std::string{"raft_init: "} + raft_errmsg(&raft_);
      return false;
    }
    raft_open_ = true;
    member_.attach(&raft_);
    if (!opts_.join) {
      struct raft_configuration conf;
      raft_configuration_init(&conf);
      for (auto& m : opts_.members)
        if (int rv = raft_configuration_add(&conf, m.id, m.address.c_str(),
                                            RAFT_VOTER);
            rv != 0) {
          raft_configuration_close(&conf);
          error = "member " + std::to_string(m.id) + " (" + m.address
                  + "): " + raft_strerror(rv);
          return false;
        }
      int rv = raft_bootstrap(&raft_, &conf);
      raft_configuration_close(&conf);
      if (rv != 0 && rv != RAFT_CANTBOOTSTRAP) {
        error = std::string{"raft_bootstrap: "} + raft_errmsg(&raft_);
        return false;
      }
    }
    raft_set_election_timeout(&raft_, opts_.election_timeout_ms);
    raft_set_heartbeat_timeout(&raft_, opts_.heartbeat_timeout_ms);
    raft_set_snapshot_threshold(&raft_, opts_.snapshot_threshold);
    raft_set_snapshot_trailing(&raft_, opts_.snapshot_trailing);
    raft_set_install_snapshot_timeout(&raft_, opts_.install_snapshot_timeout_ms);
    raft_set_pre_vote(&raft_, opts_.pre_vote);
    static const char* const bring_back =
      ". This member cannot take part with it. To bring it back:"
      " remove it (nodepool ctl members remove), move that"
      " directory aside (keep it for inspection), start the oracle"
      " again with --join, and add it (nodepool ctl members add):"
      " it then copies a leader's snapshot";
    if (int rv = raft_start(&raft_); rv != 0) {
      if (rv == RAFT_CORRUPT) {
        error = "raft's log in " + opts_.dir + " is damaged: "
                + raft_errmsg(&raft_) + bring_back;
        return false;
      }
      error = std::string{"raft_start: "} + raft_errmsg(&raft_);
      if (auto why = member_.refused_snapshot(); !why.empty())
        error += " (the snapshot on disk: " + why + ")";
      return false;
    }
    // A log that does not follow its own snapshot (raft_member.cpp, 12.)
    // would have this member vote, answer and snapshot with entries that
    // are not the cluster's: it does not start.
    if (auto why = member_.check_loaded_log(); !why.empty()) {
      error = "raft's log in " + opts_.dir + " is damaged: " + why + bring_back;
      return false;
    }
    // Started once its loop's thread runs: a failure before that is undone
    // by stop() on the caller's thread (raft_close), as for one before
    // raft_start; stop() of a started log wakes a handle set up below.
    if (tunnel_) {
      auto port = listening_port();
      if (port == 0) {
        error = "raft's loopback listener (behind TLS) has no port";
        return false;
      }
      tunnel_->set_local("127.0.0.1:" + std::to_string(port));
    }
    start_watching();  // without it, elections wait their timeout as before
    wake_.data = this;
    uv_async_init(&loop_, &wake_, [](uv_async_t* h) {
      static_cast<raft_log*>(h->data)->on_wake();
    });
    // A state machine that defers its work (replica_machine's `deferred`)
    // catches up once the callbacks of an iteration have run (check), and
    // in any case before the loop waits again (prepare).
    check_.data = this;
    uv_check_init(&loop_, &check_);
    uv_check_start(&check_, [](uv_check_t* h) {
      static_cast<raft_log*>(h->data)->sm_.catch_up();
    });
    prepare_.data = this;
    uv_prepare_init(&loop_, &prepare_);
    uv_prepare_start(&prepare_, [](uv_prepare_t* h) {
      static_cast<raft_log*>(h->data)->sm_.catch_up();
    });
    timer_.data = this;
    uv_timer_init(&loop_, &timer_);
    // Role and term changes are noticed here (libraft 0.15 has no callback
    // for them): a few milliseconds, well under an election timeout.
    uv_timer_start(
      &timer_,
      [](uv_timer_t* h) { static_cast<raft_log*>(h->data)->refresh(); }, 0,
      5);
    refresh();
    thread_ = std::thread{[this] {
      uv_run(&loop_, UV_RUN_DEFAULT);
      sm_.catch_up();
    }};
    started_ = true;
    return true;
  }

  void propose(std::string entry, done_fn done) override {
    {
      std::lock_guard<std::mutex> g{mu_};
      if (!stopping_) {
        queue_.emplace_back(std::move(entry), std::move(done));
        uv_async_send(&wake_);
        return;
      }
    }
    done(propose_status::shutdown, 0);
  }

  log_status status() const override {
    std::lock_guard<std::mutex> g{mu_};
    return status_;
  }

  void transfer(uint64_t to, transfer_fn done) override {
    on_loop([this, to](transfer_fn d) { start_transfer(to, std::move(d)); },
            std::move(done));
  }

  void add_member(uint64_t id, std::string address, transfer_fn done) override {
    on_loop([this, id, address](transfer_fn d) { start_add(id, address, std::move(d)); },
            std::move(done));
  }

  void remove_member(uint64_t id, transfer_fn done) override {
    on_loop([this, id](transfer_fn d) { start_remove(id, std::move(d)); },
            std::move(done));
  }

  /// Closes raft (pending proposals end as leadership_lost or shutdown)
  /// and joins the loop's thread.
  void stop() override {
    if (started_) {
      {
        std::lock_guard<std::mutex> g{mu_};
        stopping_ = true;
      }
      uv_async_send(&wake_);
      if (thread_.joinable())
        thread_.join();
      started_ = false;
    } else if (loop_open_) {
      // A start that failed half way: undo it on this thread.
      if (raft_open_) {
        raft_.data = this;
        raft_close(&raft_, close_cb);  // closes io and transport
      } else {
        if (io_open_)
          raft_uv_close(&io_);
        if (transport_open_)
          raft_uv_tcp_close(&transport_);
      }
      raft_open_ = io_open_ = transport_open_ = false;
      uv_run(&loop_, UV_RUN_DEFAULT);
    }
    if (loop_open_) {
      uv_loop_close(&loop_);
      loop_open_ = false;
    }
    {
      std::lock_guard<std::mutex> g{tunnels_mu()};
      owners().erase(&transport_);
      tunnels().erase(&transport_);
    }
    tunnel_.reset();
  }

private:
  /// raft_uv_tcp's own connect (the same for every transport it makes).
  using connect_fn = int (*)(struct raft_uv_transport*, struct raft_uv_connect*,
                             raft_id, const char*, raft_uv_connect_cb);
  /// Raft's messages go out as soon as they are written (TCP_NODELAY).
  /// With Nagle's algorithm, the last part of a message larger than a
  /// segment waited for the peer's acknowledgement of the part before, and
  /// a peer in delayed-ACK mode sends that only after 40 ms: measured, whole
  /// repetitions of the replicated bench in which about 45 commits in 2 s
  /// took 25-50 ms each (720-800 cycles/s against 12,000), in about half
  /// of the runs, once Linux's delayed ACKs had set in.
  static void no_delay(struct uv_stream_s* stream) {
    if (stream && uv_handle_get_type(reinterpret_cast<uv_handle_t*>(stream)) == UV_TCP)
      uv_tcp_nodelay(reinterpret_cast<uv_tcp_t*>(stream), 1);
  }
  /// raft_uv_tcp's callbacks of the connects in flight, by request (the
  /// transport calls ours, which sets TCP_NODELAY and calls raft's).
  static std::mutex& connects_mu() {
    static std::mutex m;
    return m;
  }
  static std::map<struct raft_uv_connect*, raft_uv_connect_cb>& connects() {
    static std::map<struct raft_uv_connect*, raft_uv_connect_cb> m;
    return m;
  }
  static void on_connected(struct raft_uv_connect* req, struct uv_stream_s* stream,
                           int status) {
    raft_uv_connect_cb cb = nullptr;
    {
      std::lock_guard<std::mutex> g{connects_mu()};
      auto it = connects().find(req);
      if (it != connects().end()) {
        cb = it->second;
        connects().erase(it);
      }
    }
    if (status == 0)
      no_delay(stream);
    if (cb)
      cb(req, stream, status);
  }
  static connect_fn& tcp_connect() {
    static connect_fn f = nullptr;
    return f;
  }
  /// Each transport's TLS tunnel, if it has one (read on loop threads).
  static std::map<const struct raft_uv_transport*, raft_tls_tunnel*>& tunnels() {
    static std::map<const struct raft_uv_transport*, raft_tls_tunnel*> m;
    return m;
  }
  static std::mutex& tunnels_mu() {
    static std::mutex m;
    return m;
  }
  using listen_fn = int (*)(struct raft_uv_transport*, raft_uv_accept_cb);
  static listen_fn& tcp_listen() {
    static listen_fn f = nullptr;
    return f;
  }
  static std::map<const struct raft_uv_transport*, raft_log*>& owners() {
    static std::map<const struct raft_uv_transport*, raft_log*> m;
    return m;
  }
  static raft_log* owner_of(const struct raft_uv_transport* t) {
    std::lock_guard<std::mutex> g{tunnels_mu()};
    auto i = owners().find(t);
    return i == owners().end() ? nullptr : i->second;
  }

  /// The port of raft's TCP listener: right after raft_start it is the
  /// loop's one TCP handle (nothing has connected yet: the loop has not
  /// run).
  uint16_t listening_port() {
    uint16_t port = 0;
    uv_walk(&loop_, [](uv_handle_t* h, void* arg) {
      if (h->type != UV_TCP)
        return;
      sockaddr_storage sa{};
      int len = sizeof sa;
      if (uv_tcp_getsockname(reinterpret_cast<uv_tcp_t*>(h),
                             reinterpret_cast<sockaddr*>(&sa), &len) == 0
          && sa.ss_family == AF_INET)
        *static_cast<uint16_t*>(arg) =
          ntohs(reinterpret_cast<sockaddr_in*>(&sa)->sin_port);
    }, &port);
    return port;
  }

  // -- a leader whose connection closes ------------------------------------
  //
  // A follower hears its leader on the connection the leader made to it.
  // When the leader's process dies, the kernel closes that connection at
  // once; libraft 0.15 would still wait an election timeout (randomized in
  // [T, 2T]) without a heartbeat before it stands. Each inbound connection
  // is registered, through a duplicate of its descriptor, in an epoll set of
  // ours that reports the peer's hang-up only (raft's reading is untouched);
  // that set is polled by the loop. The duplicate keeps the registration
  // when raft reads the end of the stream and closes its descriptor first
  // (in the same turn of the loop); and once raft has closed its
  // descriptor for any reason, the duplicate is closed too (checked at
  // every refresh), so the connection does not outlive raft's use of it.
  // When the member that hung up is the leader this follower knows, the
  // follower forgets it and makes its election timer due, the lowest
  // remaining voter at its next tick (every heartbeat_timeout), the others
  // a little later (on_peer_gone). Pre-vote keeps this from
  // disrupting a leader that is alive: a follower that still hears it
  // refuses the pre-vote. A host that goes silent without closing (power,
  // network) still takes the election timeout.
  bool start_watching() {
    hangups_ = epoll_create1(EPOLL_CLOEXEC);
    if (hangups_ < 0)
      return false;
    hangup_poll_.data = this;
    if (uv_poll_init(&loop_, &hangup_poll_, hangups_) != 0) {
      ::close(hangups_);
      hangups_ = -1;
      return false;
    }
    watching_ = true;
    uv_poll_start(&hangup_poll_, UV_READABLE, [](uv_poll_t* h, int, int) {
      static_cast<raft_log*>(h->data)->on_hangups();
    });
    return true;
  }

  void watch(uint64_t id, struct uv_stream_s* stream) {
    uv_os_fd_t fd = -1;
    if (!watching_ || closing_
        || uv_fileno(reinterpret_cast<uv_handle_t*>(stream), &fd) != 0)
      return;
    struct stat st {};
    if (fstat(fd, &st) != 0)
      return;
    int dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup < 0)
      return;
    epoll_event ev{};
    ev.events = EPOLLRDHUP | EPOLLHUP;
    ev.data.fd = dup;
    if (epoll_ctl(hangups_, EPOLL_CTL_ADD, dup, &ev) != 0) {
      ::close(dup);
      return;
    }
    watched_[dup] = {id, fd, st.st_dev, st.st_ino};
  }

  void forget(int dup) {
    epoll_ctl(hangups_, EPOLL_CTL_DEL, dup, nullptr);
    ::close(dup);
    watched_.erase(dup);
  }

  /// Duplicates of descriptors raft has closed (or whose number now names
  /// another socket) are closed.
  void sweep_watches() {
    for (auto i = watched_.begin(); i != watched_.end();) {
      auto& w = i->second;
      struct stat st {};
      bool same = fstat(w.fd, &st) == 0 && st.st_dev == w.dev && st.st_ino == w.ino;
      auto dup = i->first;
      auto id = w.id;
      ++i;
      if (same)
        continue;
      // Raft read the end and closed its descriptor before our set was
      // polled: the hang-up is still there to see on the duplicate.
      pollfd p{dup, POLLRDHUP, 0};
      bool hung_up = ::poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP));
      forget(dup);
      if (hung_up)
        on_peer_gone(id);
    }
  }

  void on_hangups() {
    epoll_event evs[16];
    int n = epoll_wait(hangups_, evs, 16, 0);
    for (int k = 0; k < n; ++k) {
      int dup = evs[k].data.fd;
      auto i = watched_.find(dup);
      if (i == watched_.end())
        continue;
      auto id = i->second.id;
      forget(dup);
      on_peer_gone(id);
    }
  }

  void stop_watching() {
    if (!watching_)
      return;
    watching_ = false;
    while (!watched_.empty())
      forget(watched_.begin()->first);
    uv_poll_stop(&hangup_poll_);
    uv_close(reinterpret_cast<uv_handle_t*>(&hangup_poll_), [](uv_handle_t* h) {
      auto* self = static_cast<raft_log*>(h->data);
      ::close(self->hangups_);
      self->hangups_ = -1;
    });
  }

  void on_peer_gone(uint64_t id) {
    if (raft_state(&raft_) != RAFT_FOLLOWER)
      return;
    raft_id leader = 0;
    const char* address = nullptr;
    raft_leader(&raft_, &leader, &address);
    if (leader != id)
      return;
    // The leader is forgotten (as libraft itself does when it clears a
    // follower), so this member grants the pre-vote of another follower
    // that stands first: libraft 0.15 refuses every vote while it knows a
    // leader. A leader that is alive after all is known again at its next
    // heartbeat, which also resets the timer set below.
    raft_.follower_state.current_leader.id = 0;
    if (raft_.follower_state.current_leader.address != nullptr)
      raft_free(raft_.follower_state.current_leader.address);
    raft_.follower_state.current_leader.address = nullptr;
    // The remaining voters stand one after another, by id, not at once:
    // two followers standing within a round trip of each other split the
    // vote, and the next try waits a whole randomized election timeout.
    auto delay = stand_delay(id);
    auto now = raft_.io->time(raft_.io);
    auto timeout = raft_.follower_state.randomized_election_timeout;
    if (now - raft_.election_timer_start + delay < timeout)
      raft_.election_timer_start = now + delay - timeout;
    log("raft")->info("member {}: the connection from leader {} closed; standing "
                      "for election in {} ms", raft_.id, id, delay);
  }

  /// How long after a dead leader's hang-up this member stands: a quarter
  /// of the election timeout for each voter (the dead one left out) whose
  /// id is lower than this member's.
  raft_time stand_delay(uint64_t gone) const {
    raft_time rank = 0;
    for (unsigned k = 0; k < raft_.configuration.n; ++k) {
      auto& s = raft_.configuration.servers[k];
      if (s.role == RAFT_VOTER && s.id != gone && s.id < raft_.id)
        ++rank;
    }
    return rank * (raft_.election_timeout / 4);
  }

  static raft_tls_tunnel* tunnel_of(const struct raft_uv_transport* t) {
    std::lock_guard<std::mutex> g{tunnels_mu()};
    auto i = tunnels().find(t);
    return i == tunnels().end() ? nullptr : i->second;
  }

  /// Runs `f(done)` on the loop's thread, or says the log is stopping.
  void on_loop(std::function<void(transfer_fn)> f, transfer_fn done) {
    {
      std::lock_guard<std::mutex> g{mu_};
      if (!stopping_) {
        tasks_.emplace_back(std::move(f), std::move(done));
        uv_async_send(&wake_);
        return;
      }
    }
    done("the replicated log is stopping");
  }

  void refresh() {
    member_.poll();
    check_change();
    check_waiting_transfer();
    if (watching_)
      sweep_watches();
    auto st = member_.status();
    if (change_)
      st.changing = change_->what();
    std::lock_guard<std::mutex> g{mu_};
    status_ = st;
  }

  // -- membership ------------------------------------------------------------

  /// The one membership change libraft allows at a time, and its stage.
  struct change_req {
    struct raft_change req {};
    raft_log* log = nullptr;
    enum { adding, standing_by, catching_up, promoting, checking, removing } stage = adding;
    uint64_t id = 0;
    raft_index target = 0;  // catching up: the index it must reach
    uint64_t deadline = 0;  // ... by then (raft's clock)
    bool waited = false;    // checking: said so in the log
    transfer_fn done;
    std::string what() const {
      static const char* names[] = {"adding", "standing by", "catching up",
                                    "promoting", "hearing from the voters before removing",
                                    "removing"};
      return std::string{names[stage]} + " member " + std::to_string(id);
    }
  };

  /// How long a new member may take to catch up before it is promoted.
  static constexpr uint64_t catch_up_limit_ms = 60000;

  int index_of(uint64_t id) const {
    for (unsigned i = 0; i < raft_.configuration.n; ++i)
      if (raft_.configuration.servers[i].id == id)
        return static_cast<int>(i);
    return -1;
  }

  /// Heard from within an election timeout (this member: always).
  bool reachable(uint64_t id) {
    if (id == raft_.id)
      return true;
    auto heard = heard_from(raft_.io, id);
    return heard > 0 && raft_.io->time(raft_.io) - heard <= raft_.election_timeout;
  }

  std::string not_leading() {
    return raft_state(&raft_) == RAFT_LEADER ? std::string{}
                                             : "this member does not lead";
  }

  void finish_change(const std::string& error) {
    auto c = std::move(change_);
    if (c)
      c->done(error);
  }

  static void change_cb(struct raft_change* r, int status) {
    auto* c = static_cast<change_req*>(r->data);
    c->log->on_change(status);
  }

  void on_change(int status) {
    if (!change_)
      return;
    auto& c = *change_;
    if (status != 0)
      return finish_change(std::string{"member "} + std::to_string(c.id) + ": "
                           + raft_strerror(status)
                           + (c.stage == change_req::promoting
                                ? " (it stays a non-voter)" : ""));
    switch (c.stage) {
      case change_req::adding: {
        // A spare gets nothing: as a standby it is sent the log (or a
        // snapshot), without a vote yet.
        c.stage = change_req::standing_by;
        if (int rv = raft_assign(&raft_, &c.req, c.id, RAFT_STANDBY, change_cb); rv != 0)
          return finish_change(std::string{"member "} + std::to_string(c.id)
                               + " added, but not made a standby: "
                               + raft_strerror(rv));
        return;
      }
      case change_req::standing_by:
        c.stage = change_req::catching_up;
        c.target = raft_last_index(&raft_);
        c.deadline = raft_.io->time(raft_.io) + catch_up_limit_ms;
        return check_change();
      case change_req::promoting:
      case change_req::removing:
        return finish_change("");
      case change_req::catching_up:
      case change_req::checking:  // no raft request in flight
        return;
    }
  }

  /// Catching up: promoted once it holds what the leader held when it became
  /// a standby (libraft then runs its own catch-up rounds before the vote).
  void check_change() {
    note_leadership();
    if (change_ && change_->stage == change_req::checking) {
      if (raft_state(&raft_) != RAFT_LEADER)
        return finish_change("leadership moved before member "
                             + std::to_string(change_->id)
                             + " was removed: ask the new leader");
      if (index_of(change_->id) < 0)
        return finish_change("member " + std::to_string(change_->id)
                             + " is not in the cluster");
      return check_removal_now();
    }
    if (!change_ || change_->stage != change_req::catching_up)
      return;
    auto& c = *change_;
    if (raft_state(&raft_) != RAFT_LEADER)
      return finish_change("leadership moved while member " + std::to_string(c.id)
                           + " caught up: it stays a non-voter (standby)");
    auto i = index_of(c.id);
    if (i < 0)
      return finish_change("member " + std::to_string(c.id)
                           + " left the configuration while it caught up");
    if (raft_.leader_state.progress[i].match_index >= c.target) {
      c.stage = change_req::promoting;
      if (int rv = raft_assign(&raft_, &c.req, c.id, RAFT_VOTER, change_cb); rv != 0)
        finish_change(std::string{"member "} + std::to_string(c.id)
                      + " caught up, but was not made a voter: " + raft_strerror(rv));
      return;
    }
    if (raft_.io->time(raft_.io) > c.deadline)
      finish_change("member " + std::to_string(c.id) + " did not catch up within "
                    + std::to_string(catch_up_limit_ms / 1000)
                    + " s (is it running, with --join?): it stays a non-voter "
                      "(standby); remove it or add it again");
  }

  std::unique_ptr<change_req> new_change(uint64_t id, transfer_fn done) {
    auto c = std::make_unique<change_req>();
    c->log = this;
    c->id = id;
    c->done = std::move(done);
    c->req.data = c.get();
    return c;
  }

  void start_add(uint64_t id, const std::string& address, transfer_fn done) {
    if (auto e = not_leading(); !e.empty())
      return done(e);
    if (change_)
      return done("a membership change is under way (" + change_->what() + ")");
    if (id == 0)
      return done("a member id is a positive integer");
    auto raft_addr = member_from_config(id, address).raft;
    if (auto i = index_of(id); i >= 0) {
      auto& s = raft_.configuration.servers[i];
      auto at = member_from_config(id, s.address).raft;
      if (s.role == RAFT_VOTER)
        return done("member " + std::to_string(id) + " is already in the cluster (at "
                    + at + ")");
      if (at != raft_addr)
        return done("member " + std::to_string(id) + " is already a non-voter at " + at
                    + ": remove it before adding it at " + raft_addr);
      // An add cut short (a leader change, a member that did not catch up
      // in time) left it a non-voter: this add takes it on from there.
      change_ = new_change(id, std::move(done));
      change_->stage = s.role == RAFT_SPARE ? change_req::adding : change_req::standing_by;
      return on_change(0);
    }
    if (raft_.configuration.n >= 7)
      return done("the cluster has 7 members already (the most it may have)");
    for (unsigned i = 0; i < raft_.configuration.n; ++i) {
      auto& s = raft_.configuration.servers[i];
      if (member_from_config(s.id, s.address).raft == raft_addr)
        return done("member " + std::to_string(s.id) + " already listens at "
                    + raft_addr);
    }
    change_ = new_change(id, std::move(done));
    change_->stage = change_req::adding;
    if (int rv = raft_add(&raft_, &change_->req, id, address.c_str(), change_cb); rv != 0)
      finish_change(std::string{"cannot add member "} + std::to_string(id) + ": "
                    + raft_strerror(rv));
  }

  void start_remove(uint64_t id, transfer_fn done) {
    if (auto e = not_leading(); !e.empty())
      return done(e);
    if (change_)
      return done("a membership change is under way (" + change_->what() + ")");
    auto i = index_of(id);
    if (i < 0)
      return done("member " + std::to_string(id) + " is not in the cluster");
    if (id == raft_.id)
      return done("member " + std::to_string(id)
                  + " leads: it hands leadership over before it is removed");
    change_ = new_change(id, std::move(done));
    if (raft_.configuration.servers[i].role == RAFT_VOTER) {
      change_->stage = change_req::checking;
      return check_removal_now();
    }
    remove_now();
  }

  /// The voters left must still have a majority that answers (see
  /// check_removal); a leader new to its term waits to hear from them, here
  /// and from refresh(), every few milliseconds.
  void check_removal_now() {
    auto& c = *change_;
    unsigned voters = 0, up = 0;
    for (unsigned k = 0; k < raft_.configuration.n; ++k) {
      auto& s = raft_.configuration.servers[k];
      if (s.role != RAFT_VOTER || s.id == c.id)
        continue;
      ++voters;
      up += reachable(s.id) ? 1 : 0;
    }
    auto r = check_removal(c.id, voters, up, leading_for(), raft_.election_timeout);
    if (r.verdict == removal_check::refuse)
      return finish_change(r.why);
    if (r.verdict == removal_check::proceed)
      return remove_now();
    if (!c.waited) {
      c.waited = true;
      log("raft")->info("member {}: leading for {} ms, heard from {} of the {} voters "
                        "left; waiting to hear from the others before removing "
                        "member {}",
                        raft_.id, leading_for(), up,
                        voters, c.id);
    }
  }

  void remove_now() {
    change_->stage = change_req::removing;
    if (int rv = raft_remove(&raft_, &change_->req, change_->id, change_cb); rv != 0)
      finish_change(std::string{"cannot remove member "} + std::to_string(change_->id)
                    + ": " + raft_strerror(rv));
  }

  /// How long this member has led in its current term (raft's clock, ms).
  uint64_t leading_for() {
    note_leadership();
    return raft_.io->time(raft_.io) - leading_since_;
  }

  /// When this member's current term as leader began (raft's clock).
  void note_leadership() {
    if (raft_state(&raft_) != RAFT_LEADER) {
      lead_term_ = 0;
      return;
    }
    if (lead_term_ != raft_.current_term) {
      lead_term_ = raft_.current_term;
      leading_since_ = raft_.io->time(raft_.io);
    }
  }

  /// A transfer libraft is running: the request and who waits for it.
  struct transfer_req {
    struct raft_transfer req {};
    transfer_fn done;
    raft_log* owner = nullptr;
  };
  /// Transfers that ended, kept a while: 0.15 sends its TimeoutNow message
  /// with a send request inside the transfer's struct, and libuv's send
  /// reads that request when the send completes or is evicted, which can
  /// be after the transfer ended (a target whose connection is down). A
  /// freed request would be read then. A send waiting on a dead connection
  /// is evicted by the sends queued behind it (heartbeats, every few
  /// milliseconds), so the last few are enough; the rest go at close.
  std::deque<std::unique_ptr<transfer_req>> ended_transfers_;
  static constexpr size_t kept_transfers = 16;
  void transfer_ended(transfer_req* t) {
    ended_transfers_.emplace_back(t);
    if (ended_transfers_.size() > kept_transfers)
      ended_transfers_.pop_front();
  }

  /// A transfer waiting to hear from its target (see check_transfer).
  struct waiting_transfer {
    uint64_t to = 0;
    transfer_fn done;
  };
  std::optional<waiting_transfer> waiting_transfer_;

  void start_transfer(uint64_t to, transfer_fn done) {
    if (raft_.transfer != nullptr || waiting_transfer_)
      return done("a leadership transfer is under way");
    if (to != 0 && raft_state(&raft_) == RAFT_LEADER && index_of(to) >= 0) {
      // Through the waiting transfer's own check: at once when the target
      // was heard from, refused, or left waiting (said so once, here).
      waiting_transfer_ = waiting_transfer{to, std::move(done)};
      check_waiting_transfer();
      if (waiting_transfer_)
        log("raft")->info("member {}: leading for {} ms, not heard from member {} "
                          "yet; waiting to hear from it before handing over",
                          raft_.id, leading_for(), to);
      return;
    }
    transfer_now(to, std::move(done));
  }

  /// A transfer that waits: started once its target is heard from, refused
  /// once this member has led an election timeout without hearing from it
  /// (or no longer leads). From refresh(), every few milliseconds.
  void check_waiting_transfer() {
    if (!waiting_transfer_)
      return;
    auto w = std::move(*waiting_transfer_);
    waiting_transfer_.reset();
    if (raft_state(&raft_) != RAFT_LEADER)
      return w.done("leadership moved before the hand-over to member "
                    + std::to_string(w.to) + " began");
    auto r = check_transfer(w.to, reachable(w.to), leading_for(),
                            raft_.election_timeout);
    if (r.verdict == removal_check::refuse)
      return w.done(r.why);
    if (r.verdict == removal_check::wait) {
      waiting_transfer_ = std::move(w);
      return;
    }
    transfer_now(w.to, std::move(w.done));
  }

  void transfer_now(uint64_t to, transfer_fn done) {
    auto* t = new transfer_req;
    t->done = std::move(done);
    t->owner = this;
    t->req.data = t;
    int rv = raft_transfer(&raft_, &t->req, to, [](struct raft_transfer* r) {
      auto* t = static_cast<transfer_req*>(r->data);
      auto done = std::move(t->done);
      t->owner->transfer_ended(t);
      done("");
    });
    if (rv != 0) {
      auto done = std::move(t->done);
      delete t;
      done(rv == RAFT_NOTLEADER ? std::string{"this member does not lead"}
           : rv == RAFT_BADID   ? "member " + std::to_string(to)
                                    + " is not a voter of the cluster (or leads)"
           : rv == RAFT_NOTFOUND ? std::string{"no voting follower to hand over to"}
                                 : std::string{raft_strerror(rv)});
    }
  }

  void on_wake() {
    std::deque<std::pair<std::string, done_fn>> q;
    std::deque<std::pair<std::function<void(transfer_fn)>, transfer_fn>> tasks;
    bool stopping;
    {
      std::lock_guard<std::mutex> g{mu_};
      q.swap(queue_);
      tasks.swap(tasks_);
      stopping = stopping_;
    }
    for (auto& [f, done] : tasks)
      if (stopping)
        done("the replicated log is stopping");
      else
        f(std::move(done));
    for (auto& [entry, done] : q)
      if (stopping)
        done(propose_status::shutdown, 0);
      else
        member_.propose(std::move(entry), std::move(done));
    if (stopping && !closing_) {
      closing_ = true;
      stop_watching();
      if (change_ && (change_->stage == change_req::catching_up
                      || change_->stage == change_req::checking))
        finish_change("the replicated log is stopping");
      if (waiting_transfer_) {
        auto done = std::move(waiting_transfer_->done);
        waiting_transfer_.reset();
        done("the replicated log is stopping");
      }
      uv_timer_stop(&timer_);
      uv_close(reinterpret_cast<uv_handle_t*>(&timer_), nullptr);
      uv_check_stop(&check_);
      uv_close(reinterpret_cast<uv_handle_t*>(&check_), nullptr);
      uv_prepare_stop(&prepare_);
      uv_close(reinterpret_cast<uv_handle_t*>(&prepare_), nullptr);
      uv_close(reinterpret_cast<uv_handle_t*>(&wake_), nullptr);
      raft_.data = this;
      raft_close(&raft_, close_cb);
    }
  }

  static void close_cb(struct raft* r) {
    auto* self = static_cast<raft_log*>(r->data);
    raft_uv_close(&self->io_);
    raft_uv_tcp_close(&self->transport_);
  }

  raft_options opts_;
  std::string address_;
  state_machine& sm_;
  raft_member member_;
  uv_loop_t loop_{};
  struct raft_uv_transport transport_ {};
  struct raft_io io_ {};
  struct raft raft_ {};
  uv_async_t wake_{};
  uv_timer_t timer_{};
  /// The term this member leads in (0: it does not lead), and since when.
  raft_term lead_term_ = 0;
  raft_time leading_since_ = 0;
  uv_check_t check_{};
  uv_prepare_t prepare_{};
  std::thread thread_;
  bool loop_open_ = false, transport_open_ = false, io_open_ = false,
       raft_open_ = false, started_ = false, closing_ = false;
  mutable std::mutex mu_;
  bool stopping_ = false;
  std::deque<std::pair<std::string, done_fn>> queue_;
  std::deque<std::pair<std::function<void(transfer_fn)>, transfer_fn>> tasks_;
  std::unique_ptr<change_req> change_;  // on the loop's thread
  std::unique_ptr<raft_tls_tunnel> tunnel_;  // Raft over TLS
  raft_uv_accept_cb accept_cb_ = nullptr;    // raft_uv's, behind ours
  // Inbound connections watched for a hang-up (on the loop's thread).
  int hangups_ = -1;                         // epoll set
  uv_poll_t hangup_poll_{};
  bool watching_ = false;
  struct watched {
    uint64_t id = 0;  // the member that connected
    int fd = -1;      // raft's descriptor, and what it named
    dev_t dev = 0;
    ino_t ino = 0;
  };
  std::map<int, watched> watched_;           // our duplicate -> what it watches
  log_status status_;
};

} // namespace

std::unique_ptr<replicated_log> start_raft_log(const raft_options& opts,
                                               state_machine& sm,
                                               replicated_log::role_fn role,
                                               std::string& error) {
  auto l = std::make_unique<raft_log>(opts, sm, std::move(role));
  if (!l->start(error))
    return nullptr;
  return l;
}

} // namespace nodepool
