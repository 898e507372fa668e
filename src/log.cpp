#include "log.hpp"

#include <atomic>
#include <cstdio>
#include <ctime>

#include <nlohmann/json.hpp>
#include <spdlog/formatter.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

namespace nodepool {

namespace {

std::atomic<log_format> format_{log_format::text};

// An event's payload: '\x1f' then key '\x1e' value '\x1f' for each field,
// so the formatter can write the fields as keys of their own.
constexpr char field_sep = '\x1f';
constexpr char value_sep = '\x1e';

void append(spdlog::memory_buf_t& out, const std::string& s) {
  out.append(s.data(), s.data() + s.size());
}

/// A value of key=value text: bare when it is a plain word, else quoted
/// with '"' and '\' escaped (and newlines as \n), so a line stays a line.
std::string text_value(const std::string& v) {
  bool bare = !v.empty();
  for (char c : v)
    if (c == ' ' || c == '"' || c == '=' || c == '\\' || c == '\n' || c == '\t'
        || static_cast<unsigned char>(c) < 0x20)
      bare = false;
  if (bare)
    return v;
  std::string r = "\"";
  for (char c : v) {
    if (c == '"' || c == '\\')
      r += '\\', r += c;
    else if (c == '\n')
      r += "\\n";
    else if (c == '\t')
      r += "\\t";
    else if (static_cast<unsigned char>(c) < 0x20)
      r += ' ';
    else
      r += c;
  }
  return r + '"';
}

std::string json_value(const std::string& v) {
  return nlohmann::json(v).dump(-1, ' ', false,
                                nlohmann::json::error_handler_t::replace);
}

/// One record as a line, in the format in use.
std::string render(std::chrono::system_clock::time_point time,
                   const std::string& level, const std::string& component,
                   const log_fields& fields) {
  auto t = std::chrono::system_clock::to_time_t(time);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
              time.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char ts[40];
  std::snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
                tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                tm.tm_min, tm.tm_sec, static_cast<int>(ms));
  std::string line;
  if (format_.load() == log_format::json) {
    line = "{\"ts\":\"" + std::string(ts) + "\",\"level\":\"" + level
           + "\",\"component\":" + json_value(component);
    for (auto& [k, v] : fields)
      line += "," + json_value(k) + ":" + json_value(v);
    line += "}\n";
  } else {
    line = "ts=" + std::string(ts) + " level=" + level
           + " component=" + text_value(component);
    for (auto& [k, v] : fields)
      line += " " + k + "=" + text_value(v);
    line += "\n";
  }
  return line;
}

class line_formatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg,
              spdlog::memory_buf_t& dest) override {
    auto sv = spdlog::level::to_string_view(msg.level);
    std::string level(sv.data(), sv.size());
    if (level == "warning")
      level = "warn";
    std::string component(msg.logger_name.data(), msg.logger_name.size());
    std::string payload(msg.payload.data(), msg.payload.size());
    log_fields fields;
    if (!payload.empty() && payload[0] == field_sep) {
      size_t i = 1;
      while (i < payload.size()) {
        auto k = payload.find(value_sep, i);
        auto e = payload.find(field_sep, k == std::string::npos ? i : k);
        if (k == std::string::npos || e == std::string::npos)
          break;
        fields.emplace_back(payload.substr(i, k - i),
                            payload.substr(k + 1, e - k - 1));
        i = e + 1;
      }
    } else {
      fields.emplace_back("msg", payload);
    }
    append(dest, render(msg.time, level, component, fields));
  }
  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<line_formatter>();
  }
};

} // namespace

std::unique_ptr<spdlog::formatter> make_line_formatter() {
  return std::make_unique<line_formatter>();
}

std::shared_ptr<spdlog::logger> log(const std::string& component) {
  if (auto l = spdlog::get(component))
    return l;
  try {
    auto l = spdlog::stderr_logger_mt(component);
    l->set_formatter(make_line_formatter());
    l->set_level(spdlog::get_level());
    return l;
  } catch (const spdlog::spdlog_ex&) {
    return spdlog::get(component);  // another thread made it first
  }
}

bool set_log_level(const std::string& level) {
  auto lv = spdlog::level::from_str(level);
  if (lv == spdlog::level::off && level != "off")
    return false;
  spdlog::set_level(lv);
  return true;
}

void set_log_format(log_format f) { format_ = f; }
log_format current_log_format() { return format_; }

void write_record(const std::string& level, const std::string& component,
                  const std::string& msg) {
  auto line = render(std::chrono::system_clock::now(), level, component,
                     {{"msg", msg}});
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

bool parse_log_format(const std::string& s, log_format& out) {
  if (s == "text")
    out = log_format::text;
  else if (s == "json")
    out = log_format::json;
  else
    return false;
  return true;
}

bool events_logged() {
  return spdlog::get_level() <= spdlog::level::info;
}

void log_event(const std::string& type, const log_fields& fields) {
  auto l = log("events");
  if (!l->should_log(spdlog::level::info))
    return;
  std::string payload;
  payload += field_sep;
  auto add = [&](const std::string& k, const std::string& v) {
    payload += k;
    payload += value_sep;
    for (char c : v)  // the separators cannot come from outside
      payload += (c == field_sep || c == value_sep) ? ' ' : c;
    payload += field_sep;
  };
  add("event", type);
  for (auto& [k, v] : fields)
    add(k, v);
  l->info(payload);
}

bool log_limiter::allow(const std::string& key, int64_t now_ms) {
  auto i = by_key_.find(key);
  if (i == by_key_.end()) {
    // Past the cap every new source shares "*" (itself one key more).
    auto k = by_key_.size() >= max_keys_ ? std::string{"*"} : key;
    i = by_key_.try_emplace(k, window{now_ms, 0, 0}).first;
  }
  auto& w = i->second;
  if (now_ms - w.start >= interval_ms_ && w.suppressed == 0) {
    w.start = now_ms;  // a new interval (one with lines held waits for due())
    w.written = 0;
  }
  if (w.written < burst_) {
    ++w.written;
    return true;
  }
  ++w.suppressed;
  ++held_;
  return false;
}

std::vector<log_limiter::summary> log_limiter::due(int64_t now_ms) {
  std::vector<summary> out;
  for (auto i = by_key_.begin(); i != by_key_.end();) {
    auto& w = i->second;
    if (now_ms - w.start < interval_ms_) {
      ++i;
      continue;
    }
    if (w.suppressed > 0) {
      out.push_back({i->first, w.suppressed});
      held_ -= w.suppressed;
    }
    i = by_key_.erase(i);  // quiet keys do not stay
  }
  return out;
}

} // namespace nodepool
