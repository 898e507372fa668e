#include "raft/raft_log.hpp"

#include <csignal>
#include <deque>
#include <mutex>
#include <thread>

extern "C" {
#include <raft.h>
#include <raft/uv.h>
#include <uv.h>
}

#include "log.hpp"
#include "raft/raft_member.hpp"

namespace nodepool {

namespace {

class raft_log final : public replicated_log {
public:
  raft_log(const raft_options& o, state_machine& sm, role_fn role)
      : opts_(o), member_(sm) {
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
    if (int rv = raft_uv_init(&io_, &loop_, opts_.dir.c_str(), &transport_);
        rv != 0) {
      error = std::string{"raft_uv_init("} + opts_.dir + "): " + io_.errmsg;
      return false;
    }
    io_open_ = true;
    if (int rv = raft_init(&raft_, &io_, member_.fsm(), opts_.id,
                           address_.c_str());
        rv != 0) {
      error = std::string{"raft_init: "} + raft_errmsg(&raft_);
      return false;
    }
    raft_open_ = true;
    member_.attach(&raft_);
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
    raft_set_election_timeout(&raft_, opts_.election_timeout_ms);
    raft_set_heartbeat_timeout(&raft_, opts_.heartbeat_timeout_ms);
    raft_set_snapshot_threshold(&raft_, opts_.snapshot_threshold);
    raft_set_snapshot_trailing(&raft_, opts_.snapshot_trailing);
    raft_set_install_snapshot_timeout(&raft_, opts_.install_snapshot_timeout_ms);
    raft_set_pre_vote(&raft_, opts_.pre_vote);
    if (int rv = raft_start(&raft_); rv != 0) {
      error = std::string{"raft_start: "} + raft_errmsg(&raft_);
      return false;
    }
    started_ = true;
    wake_.data = this;
    uv_async_init(&loop_, &wake_, [](uv_async_t* h) {
      static_cast<raft_log*>(h->data)->on_wake();
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
    thread_ = std::thread{[this] { uv_run(&loop_, UV_RUN_DEFAULT); }};
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
    {
      std::lock_guard<std::mutex> g{mu_};
      if (!stopping_) {
        transfers_.emplace_back(to, std::move(done));
        uv_async_send(&wake_);
        return;
      }
    }
    done("the replicated log is stopping");
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
  }

private:
  void refresh() {
    member_.poll();
    auto st = member_.status();
    std::lock_guard<std::mutex> g{mu_};
    status_ = st;
  }

  /// A transfer libraft is running: the request and who waits for it.
  struct transfer_req {
    struct raft_transfer req {};
    transfer_fn done;
  };

  void start_transfer(uint64_t to, transfer_fn done) {
    if (raft_.transfer != nullptr)
      return done("a leadership transfer is under way");
    auto* t = new transfer_req;
    t->done = std::move(done);
    t->req.data = t;
    int rv = raft_transfer(&raft_, &t->req, to, [](struct raft_transfer* r) {
      auto* t = static_cast<transfer_req*>(r->data);
      auto done = std::move(t->done);
      delete t;
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
    std::deque<std::pair<uint64_t, transfer_fn>> transfers;
    bool stopping;
    {
      std::lock_guard<std::mutex> g{mu_};
      q.swap(queue_);
      transfers.swap(transfers_);
      stopping = stopping_;
    }
    for (auto& [to, done] : transfers)
      if (stopping)
        done("the replicated log is stopping");
      else
        start_transfer(to, std::move(done));
    for (auto& [entry, done] : q)
      if (stopping)
        done(propose_status::shutdown, 0);
      else
        member_.propose(std::move(entry), std::move(done));
    if (stopping && !closing_) {
      closing_ = true;
      uv_timer_stop(&timer_);
      uv_close(reinterpret_cast<uv_handle_t*>(&timer_), nullptr);
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
  raft_member member_;
  uv_loop_t loop_{};
  struct raft_uv_transport transport_ {};
  struct raft_io io_ {};
  struct raft raft_ {};
  uv_async_t wake_{};
  uv_timer_t timer_{};
  std::thread thread_;
  bool loop_open_ = false, transport_open_ = false, io_open_ = false,
       raft_open_ = false, started_ = false, closing_ = false;
  mutable std::mutex mu_;
  bool stopping_ = false;
  std::deque<std::pair<std::string, done_fn>> queue_;
  std::deque<std::pair<uint64_t, transfer_fn>> transfers_;
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
