// The targets of BENCHMARKS.md that one `nodepool bench` run can judge by
// itself, from its own report.
#pragma once

#include <nlohmann/json.hpp>

namespace nodepool::cli::bench {

/// One entry per target this report has the figures for: its name, the
/// target in words, the figure measured, and whether it is met.
nlohmann::json judge_targets(const nlohmann::json& report);

} // namespace nodepool::cli::bench
