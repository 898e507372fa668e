#pragma once

// The pool's events for people watching: the most recent ones (bounded),
// and live streams of Server-Sent Events to whoever follows them. It knows
// HTTP replies and JSON, not actors: whoever hears the pool's events calls
// publish(), from any thread.

#include <chrono>
#include <cstdint>
#include <optional>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "http/server.hpp"

namespace nodepool::http {

class event_feed {
 public:
  /// Where a reader stands: after event `seq` of the numbering `epoch`
  /// (empty: this process's, as a bare seq says).
  struct cursor {
    std::string epoch;
    uint64_t seq = 0;
  };
  /// "SEQ" (digits) or "EPOCH-SEQ" (a stream's id: 16 hex digits, a dash,
  /// digits); nullopt for anything else.
  static std::optional<cursor> parse_cursor(const std::string& text);

  /// Keeps the last `keep` events; at most `max_streams` live streams.
  /// Events published while nobody watches (see watched()) may be skipped
  /// by the publisher: the list then starts when someone looks.
  explicit event_feed(size_t keep = 1000, size_t max_streams = 64,
                      std::chrono::seconds idle = std::chrono::seconds(60));

  /// Names this feed's numbering (random, per process): a client that
  /// sees it change knows the seqs started again.
  const std::string& epoch() const { return epoch_; }
  /// Whether events after `after` were missed: older than the oldest kept,
  /// or `after` was numbered by another process (a restart).
  bool gap(uint64_t after) const;
  /// The same for a cursor: another epoch's is always a gap.
  bool gap(const cursor& after) const;

  /// Numbers the events (seq, from 1) and sends each to every stream.
  void publish(std::vector<nlohmann::json> events);

  /// Up to `limit` kept events with seq > after, oldest first.
  /// (Reading counts as watching: see watched().)
  std::vector<nlohmann::json> recent(uint64_t after, size_t limit);

  /// What a reader after `after` gets, in one look: up to `limit` events,
  /// whether some were missed (gap: then the events start at the first
  /// kept), and the seq to ask after next.
  struct page {
    std::vector<nlohmann::json> events;
    bool gap = false;
    uint64_t next = 0;
  };
  page read(const cursor& after, size_t limit);

  /// Starts a stream on `r`: a comment naming the epoch, an `event: gap`
  /// frame if gap(after), the kept events after `after`, then every new
  /// one. False (nothing sent) when max_streams are open.
  bool follow(const std::shared_ptr<reply>& r, uint64_t after);
  /// The same after a cursor (Last-Event-ID as the stream's ids give it):
  /// after another epoch's, the gap frame and every kept event.
  bool follow(const std::shared_ptr<reply>& r, const cursor& after);

  /// How often heartbeat() is called: said in every stream's first
  /// comment ("keep-alive every N ms"), so that a reader can tell a stream
  /// gone silent (a half-open connection) from a quiet pool. 15 s unless
  /// told.
  void announce_keepalive(std::chrono::milliseconds every);

  /// A comment line to every stream (so a client that left is noticed and
  /// dropped, and proxies keep the stream open); drops closed streams.
  void heartbeat();

  /// Ends every stream (the API is stopping).
  void close_all();

  size_t streams() const;
  uint64_t published() const;

  /// Called (outside the feed's lock) when someone starts watching a feed
  /// nobody watched: whoever feeds it can start listening to the pool then.
  void on_watch(std::function<void()> f);

  /// Whether anyone watches: a stream is open, or the list was read within
  /// `idle` (a minute by default). Whoever feeds it may skip the work of
  /// turning events into JSON while nobody does (the oracle's relay does).
  bool watched(std::chrono::steady_clock::time_point now =
                 std::chrono::steady_clock::now()) const;

  /// The id of event `seq` as streams and next_id give it: "EPOCH-SEQ".
  std::string id_of(uint64_t seq) const { return epoch_ + "-" + std::to_string(seq); }

  /// One event as an SSE frame: "id: EPOCH-SEQ\ndata: JSON\n\n". The id
  /// names the epoch, so that a stream resumed (Last-Event-ID) from
  /// another process's numbering is told of the gap and given every
  /// kept event, not only those numbered past its seq.
  std::string frame(const nlohmann::json& e) const;

 private:
  void prune();  // with mu_ held
  bool watched_locked(std::chrono::steady_clock::time_point now) const;
  bool gap_locked(uint64_t after) const;
  /// The seq to start after (0 for another epoch) and whether it is a gap.
  std::pair<uint64_t, bool> resume_locked(const cursor& after) const;
  void watching(bool was);  // calls on_watch_ if nobody watched before

  size_t keep_;
  size_t max_streams_;
  std::chrono::seconds idle_;
  std::string epoch_;
  std::chrono::milliseconds keepalive_{15000};
  std::optional<std::chrono::steady_clock::time_point> last_read_;
  mutable std::mutex mu_;
  std::deque<nlohmann::json> ring_;
  uint64_t next_seq_ = 1;
  std::vector<std::shared_ptr<reply>> streams_;
  std::function<void()> on_watch_;
};

} // namespace nodepool::http
