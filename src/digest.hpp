#pragma once

#include <string>

namespace nodepool {

/// Lower-case hex SHA-256 of `data` (OpenSSL). Used for task precommits.
std::string sha256_hex(const std::string& data);

} // namespace nodepool
