// A fresh directory under the temporary directory for one test, removed
// with everything in it.
#pragma once

#include <filesystem>
#include <string>

#include "cli/os.hpp"

namespace nodepool::testing {

class temp_dir {
public:
  temp_dir() : path_(cli::make_temp_dir("unit")) {}
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  const std::string& path() const { return path_; }

private:
  std::string path_;
};

} // namespace nodepool::testing
