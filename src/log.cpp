#include "log.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace nodepool {

std::shared_ptr<spdlog::logger> log(const std::string& component) {
  if (auto l = spdlog::get(component))
    return l;
  try {
    auto l = spdlog::stderr_color_mt(component);
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

} // namespace nodepool
