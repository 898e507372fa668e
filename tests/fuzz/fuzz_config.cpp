// Configuration: the same bytes are read as a TOML file (load_params_text,
// what `--config FILE` reads), as the JSON of a Configure command or a
// snapshot (params_from_json) and as a `key=value` override (set_param).
// Any of them may refuse the text with an error; what they accept must be
// valid parameters that survive the JSON round trip an oracle makes when it
// logs them in a Configure entry, and that entry must be accepted.
//
// Input: text.
#include <stdexcept>

#include "fuzz_common.hpp"

using namespace nodepool;

namespace {

/// What an oracle does with parameters it starts with: logs them as a
/// Configure command, which a pool (and any later replay) must accept.
void require_usable(const params& p, const char* from) {
  if (auto e = p.validate(); !e.empty())
    fuzz::fail(std::string{from} + " accepted invalid parameters: " + e);
  auto json = to_json(p);
  std::string err;
  auto back = params_from_json(json, params{}, err);
  if (!err.empty())
    fuzz::fail(std::string{from} + ": to_json output does not parse back ("
               + err + "): " + json);
  if (to_json(back) != json)
    fuzz::fail(std::string{from} + ": JSON round trip changed " + json
               + " into " + to_json(back));
  pool_state pool{fuzz::base_params()};
  fuzz::reset_to_base(pool);
  pb::Command c;
  c.mutable_configure()->set_params_json(json);
  auto r = fuzz::apply_checked(pool, c, pool.last_now() + 10);
  if (r.refused)
    fuzz::fail(std::string{from} + ": Configure refused (" + r.refused->detail
               + "): " + json);
  c.Clear();
  c.mutable_tick();
  fuzz::apply_checked(pool, c, pool.last_now() + 60'000);
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  // TOML.
  try {
    auto p = load_params_text(text, "fuzz.toml");
    require_usable(p, "load_params_text");
  } catch (const std::runtime_error&) {
    // refused with a message naming the file and key
  }
  // JSON (Configure command, snapshot).
  {
    std::string err;
    auto p = params_from_json(text, params{}, err);
    if (err.empty() && p.validate().empty())
      require_usable(p, "params_from_json");
    pool_state pool{fuzz::base_params()};
    fuzz::reset_to_base(pool);
    pb::Command c;
    c.mutable_configure()->set_params_json(text);
    fuzz::apply_checked(pool, c, pool.last_now() + 10);
  }
  // key=value.
  if (auto eq = text.find('='); eq != std::string::npos
                                && text.find('\n') == std::string::npos) {
    params p;
    (void)set_param(p, text.substr(0, eq), text.substr(eq + 1));
  }
  return 0;
}
