#pragma once

// The dashboard's static files, compiled into the binary (tools/embed.cmake
// writes them from src/http/dashboard/ and Debian's Chart.js).

#include <cstddef>
#include <string>

namespace nodepool::http {

struct static_file {
  const char* path;          // where it is served: "/", "/dashboard/app.js"
  const char* content_type;
  const char* data;
  size_t size;
};

/// The file served at `path`, or null.
const static_file* dashboard_file(const std::string& path);

} // namespace nodepool::http
