// nodepool sim: see add_sim below.
#include <CLI/CLI.hpp>

#include "cli/common.hpp"

namespace nodepool::cli {

void add_sim(CLI::App& app) {
  auto* cmd = app.add_subcommand("sim", "(not yet built)");
  cmd->callback([] { throw std::runtime_error("sim is not built yet"); });
}

} // namespace nodepool::cli
