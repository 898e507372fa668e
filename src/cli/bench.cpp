// nodepool bench: see add_bench below.
#include <CLI/CLI.hpp>

#include "cli/common.hpp"

namespace nodepool::cli {

void add_bench(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench", "(not yet built)");
  cmd->callback([] { throw std::runtime_error("bench is not built yet"); });
}

} // namespace nodepool::cli
