#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <spdlog/formatter.h>
#include <spdlog/logger.h>

namespace nodepool {

/// The named logger of one component ("supervisor", "gateway", ...), created
/// on first use, writing to stderr at the process-wide level.
std::shared_ptr<spdlog::logger> log(const std::string& component);

/// The formatter every nodepool logger writes with (see log_format).
std::unique_ptr<spdlog::formatter> make_line_formatter();

/// Sets the level of every nodepool logger: trace, debug, info, warn, error,
/// off. Unknown names leave the level unchanged and return false.
bool set_log_level(const std::string& level);

/// How every line is written, one line per record, times in UTC:
///   text: ts=2026-12-02T01:30:00.123Z level=info component=supervisor msg="..."
///   json: {"ts":"2026-12-02T01:30:00.123Z","level":"info","component":...,"msg":"..."}
/// An event (log_event) has its fields in place of msg, as keys of their own.
enum class log_format { text, json };
void set_log_format(log_format f);
log_format current_log_format();

/// One record to stderr whatever the level (what a command says of its
/// own start and end), in the format in use.
void write_record(const std::string& level, const std::string& component,
                  const std::string& msg);
/// "text" or "json"; false for anything else.
bool parse_log_format(const std::string& s, log_format& out);

using log_fields = std::vector<std::pair<std::string, std::string>>;

/// One line for one event of the pool at info level, on the "events"
/// logger: event=TYPE and its fields (key=value, or JSON keys).
void log_event(const std::string& type, const log_fields& fields);
bool events_logged();  // whether log_event writes anything at this level

/// Keeps a flood from one source out of the log without losing count: per
/// key, the first `burst` lines of an interval are written, the rest are
/// counted and summarised once when the interval ends. Time is given, so
/// it is deterministic. At most `max_keys` keys are tracked; past that the
/// rest share one key, "*".
class log_limiter {
 public:
  log_limiter(int64_t interval_ms = 10000, uint32_t burst = 5,
              size_t max_keys = 10000)
    : interval_ms_(interval_ms), burst_(burst), max_keys_(max_keys) {}

  /// True: write this line. False: it is counted for the summary.
  bool allow(const std::string& key, int64_t now_ms);

  struct summary {
    std::string key;
    uint64_t suppressed = 0;
  };
  /// The keys whose interval ended by `now_ms` and that had lines held
  /// back. Every key whose interval ended is forgotten (its next line
  /// starts a new interval), so memory follows the sources still talking.
  std::vector<summary> due(int64_t now_ms);
  bool holding() const { return held_ > 0; }
  int64_t interval_ms() const { return interval_ms_; }
  size_t keys() const { return by_key_.size(); }

 private:
  struct window {
    int64_t start = 0;
    uint32_t written = 0;
    uint64_t suppressed = 0;
  };
  int64_t interval_ms_;
  uint32_t burst_;
  size_t max_keys_;
  uint64_t held_ = 0;
  std::map<std::string, window> by_key_;
};

} // namespace nodepool
