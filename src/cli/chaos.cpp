// nodepool chaos: see add_chaos below.
#include <CLI/CLI.hpp>

#include "cli/common.hpp"

namespace nodepool::cli {

void add_chaos(CLI::App& app) {
  auto* cmd = app.add_subcommand("chaos", "(not yet built)");
  cmd->callback([] { throw std::runtime_error("chaos is not built yet"); });
}

} // namespace nodepool::cli
