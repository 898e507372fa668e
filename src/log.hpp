#pragma once

#include <memory>
#include <string>

#include <spdlog/logger.h>

namespace nodepool {

/// The named logger of one component ("supervisor", "gateway", ...), created
/// on first use, writing to stderr at the process-wide level.
std::shared_ptr<spdlog::logger> log(const std::string& component);

/// Sets the level of every nodepool logger: trace, debug, info, warn, error,
/// off. Unknown names leave the level unchanged and return false.
bool set_log_level(const std::string& level);

} // namespace nodepool
