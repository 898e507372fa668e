#include "http/event_feed.hpp"

#include <algorithm>
#include <cstdio>
#include <random>

namespace nodepool::http {

event_feed::event_feed(size_t keep, size_t max_streams, std::chrono::seconds idle)
  : keep_(keep), max_streams_(max_streams), idle_(idle) {
  std::random_device rd;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%08x%08x", rd(), rd());
  epoch_ = buf;
}

std::optional<event_feed::cursor> event_feed::parse_cursor(const std::string& text) {
  auto digits = [](const std::string& d, size_t max) {
    return !d.empty() && d.size() <= max
           && std::all_of(d.begin(), d.end(),
                          [](char ch) { return ch >= '0' && ch <= '9'; });
  };
  cursor c;
  auto dash = text.find('-');
  auto seq = dash == std::string::npos ? text : text.substr(dash + 1);
  if (dash != std::string::npos) {
    c.epoch = text.substr(0, dash);
    bool hex = c.epoch.size() == 16
               && std::all_of(c.epoch.begin(), c.epoch.end(), [](char ch) {
                    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f');
                  });
    if (!hex)
      return std::nullopt;
  }
  // 19 digits always fit in 64 bits.
  if (!digits(seq, 19))
    return std::nullopt;
  c.seq = std::stoull(seq);
  return c;
}

std::string event_feed::frame(const nlohmann::json& e) const {
  return "id: " + id_of(e.value("seq", uint64_t{0})) + "\ndata: "
         + e.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
         + "\n\n";
}

void event_feed::prune() {
  streams_.erase(std::remove_if(streams_.begin(), streams_.end(),
                                [](auto& r) { return r->closed(); }),
                 streams_.end());
}

void event_feed::publish(std::vector<nlohmann::json> events) {
  if (events.empty())
    return;
  std::lock_guard<std::mutex> g{mu_};
  std::string frames;
  for (auto& e : events) {
    e["seq"] = next_seq_++;
    frames += frame(e);
    ring_.push_back(std::move(e));
    if (ring_.size() > keep_)
      ring_.pop_front();
  }
  prune();
  for (auto& r : streams_)
    r->chunk(frames);
}

bool event_feed::watched_locked(std::chrono::steady_clock::time_point now) const {
  return !streams_.empty() || (last_read_ && now - *last_read_ < idle_);
}

bool event_feed::watched(std::chrono::steady_clock::time_point now) const {
  std::lock_guard<std::mutex> g{mu_};
  return watched_locked(now);
}

void event_feed::on_watch(std::function<void()> f) {
  std::lock_guard<std::mutex> g{mu_};
  on_watch_ = std::move(f);
}

void event_feed::watching(bool was) {
  if (was)
    return;
  std::function<void()> f;
  {
    std::lock_guard<std::mutex> g{mu_};
    f = on_watch_;
  }
  if (f)
    f();
}

std::vector<nlohmann::json> event_feed::recent(uint64_t after,
                                               size_t limit) {
  return read(cursor{epoch_, after}, limit).events;
}

event_feed::page event_feed::read(const cursor& after, size_t limit) {
  bool was;
  {
    std::lock_guard<std::mutex> g{mu_};
    was = watched_locked(std::chrono::steady_clock::now());
    last_read_ = std::chrono::steady_clock::now();
  }
  watching(was);
  // The events and whether some were missed, in one look: a publish in
  // between cannot make the two disagree.
  std::lock_guard<std::mutex> g{mu_};
  page out;
  auto [from, gap] = resume_locked(after);
  out.gap = gap;
  // seq is consecutive in the ring: start at the first one past `from`.
  size_t start = 0;
  if (!ring_.empty()) {
    auto first = ring_.front()["seq"].get<uint64_t>();
    if (from >= first)
      start = static_cast<size_t>(std::min<uint64_t>(from - first + 1,
                                                     ring_.size()));
  }
  for (size_t i = start; i < ring_.size() && out.events.size() < limit; ++i)
    out.events.push_back(ring_[i]);
  out.next = out.events.empty() ? from : out.events.back()["seq"].get<uint64_t>();
  return out;
}

std::pair<uint64_t, bool> event_feed::resume_locked(const cursor& after) const {
  // Another process's numbering (another epoch named, or a bare seq past
  // any this one gave): a gap, and all that is kept.
  if ((!after.epoch.empty() && after.epoch != epoch_) || after.seq >= next_seq_)
    return {0, true};
  return {after.seq, gap_locked(after.seq)};
}

bool event_feed::gap(const cursor& after) const {
  std::lock_guard<std::mutex> g{mu_};
  return resume_locked(after).second;
}

bool event_feed::follow(const std::shared_ptr<reply>& r, uint64_t after) {
  return follow(r, cursor{epoch_, after});
}

bool event_feed::follow(const std::shared_ptr<reply>& r, const cursor& at) {
  bool was;
  {
    // Whether anyone watched, and the new stream added, in one step: a
    // stream closing in between cannot make this one miss on_watch.
    std::lock_guard<std::mutex> g{mu_};
    prune();
    if (streams_.size() >= max_streams_)
      return false;
    was = watched_locked(std::chrono::steady_clock::now());
    streams_.push_back(r);
    response head;
    head.content_type = "text/event-stream";
    head.headers.emplace_back("X-Accel-Buffering", "no");
    r->begin_stream(std::move(head));
    std::string backlog = ": nodepool events, epoch " + epoch_
                          + ", keep-alive every "
                          + std::to_string(keepalive_.count()) + " ms\n\n";
    auto [after, gap] = resume_locked(at);
    // The gap frame carries an id (the last seq given so far): a stream
    // that drops before another event resumes from here, not from the
    // other process's id again.
    if (gap)
      backlog += "id: " + id_of(next_seq_ - 1) + "\nevent: gap\ndata: {\"epoch\":\"" + epoch_
                 + "\",\"reason\":\"events after the one asked for are no "
                   "longer kept, or this oracle restarted\"}\n\n";
    for (auto& e : ring_)
      if (e["seq"].get<uint64_t>() > after)
        backlog += frame(e);
    r->chunk(std::move(backlog));
  }
  watching(was);
  return true;
}

bool event_feed::gap_locked(uint64_t after) const {
  // (A seq past any given: resume_locked, before this.)
  if (after == 0 || ring_.empty())
    return false;
  return after + 1 < ring_.front()["seq"].get<uint64_t>();  // dropped
}

bool event_feed::gap(uint64_t after) const {
  return gap(cursor{{}, after});
}

void event_feed::announce_keepalive(std::chrono::milliseconds every) {
  std::lock_guard<std::mutex> g{mu_};
  keepalive_ = every;
}

void event_feed::heartbeat() {
  std::lock_guard<std::mutex> g{mu_};
  prune();
  for (auto& r : streams_)
    r->chunk(": keep-alive\n\n");
}

void event_feed::close_all() {
  std::lock_guard<std::mutex> g{mu_};
  for (auto& r : streams_)
    r->end();
  streams_.clear();
}

size_t event_feed::streams() const {
  std::lock_guard<std::mutex> g{mu_};
  return streams_.size();
}

uint64_t event_feed::published() const {
  std::lock_guard<std::mutex> g{mu_};
  return next_seq_ - 1;
}

} // namespace nodepool::http
