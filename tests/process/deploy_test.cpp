// The systemd units in deploy/systemd: systemd's own checker accepts them
// (and refuses a broken one), their hardening scores as systemd rates it,
// and the command line each unit runs starts the real binary.
#include <gtest/gtest.h>

#include <csignal>
#include <fstream>
#include <regex>
#include <sstream>

#include "cluster_config.hpp"
#include "proc.hpp"

using namespace std::chrono_literals;

namespace nodepool::testing {
namespace {

const std::string units = std::string{NODEPOOL_SOURCE_DIR} + "/deploy/systemd";

bool have_systemd_analyze() {
  return run_shell("command -v systemd-analyze >/dev/null").first == 0;
}

/// A unit's text with the installed paths replaced by this build's.
std::string local_copy(const std::string& unit, const std::string& dir) {
  auto text = read_file(units + "/" + unit);
  text = std::regex_replace(text, std::regex{"/usr/local/bin/nodepool"},
                            std::string{NODEPOOL_BIN});
  text = std::regex_replace(text, std::regex{"/etc/nodepool/miner.env"},
                            units + "/miner.env");
  return text;
}

TEST(deploy, systemd_accepts_the_units_and_rates_their_hardening) {
  if (!have_systemd_analyze())
    GTEST_SKIP() << "systemd-analyze is not installed (tools/test installs systemd)";
  auto dir = temp_dir("units");
  cleanup tidy{dir};
  for (auto [from, to] : {std::pair{"nodepool-oracle@.service", "nodepool-oracle@1.service"},
                          std::pair{"nodepool-miner.service", "nodepool-miner.service"}}) {
    std::ofstream{dir + "/" + to} << local_copy(from, dir);
    auto [rc, out] = run_shell("cd " + dir + " && systemd-analyze verify ./" + to);
    EXPECT_EQ(rc, 0) << to << ": " << out;
    EXPECT_EQ(out, "") << to << ": every key is known and every value parses";
    // systemd's own exposure score: 0 (locked down) to 10 (exposed).
    auto [src, sec] = run_shell("cd " + dir
                                + " && systemd-analyze security --offline=true ./" + to);
    std::smatch m;
    ASSERT_TRUE(std::regex_search(sec, m, std::regex{"exposure level for [^:]+: ([0-9.]+)"}))
      << sec;
    EXPECT_LT(std::stod(m[1]), 4.0) << to << ":\n" << sec;
    EXPECT_NE(read_file(dir + "/" + to).find("ProtectSystem=strict"), std::string::npos);
    EXPECT_NE(read_file(dir + "/" + to).find("Restart=on-failure"), std::string::npos);
    EXPECT_NE(read_file(dir + "/" + to).find("User=nodepool"), std::string::npos);
  }
  // The checker is not a rubber stamp: a misspelt key and a bad value show.
  auto bad = std::regex_replace(read_file(dir + "/nodepool-miner.service"),
                                std::regex{"ProtectSystem=strict"},
                                "ProtectSystem=bogus\nProtectSytem=strict");
  std::ofstream{dir + "/bad.service"} << bad;
  auto [brc, bout] = run_shell("cd " + dir + " && systemd-analyze verify ./bad.service");
  EXPECT_NE(bout.find("bogus"), std::string::npos) << bout;
  EXPECT_NE(bout.find("ProtectSytem"), std::string::npos) << bout;
}

/// The ExecStart= of a unit, its specifiers filled in.
std::vector<std::string> exec_start(const std::string& unit, const std::string& id) {
  std::istringstream in{read_file(units + "/" + unit)};
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("ExecStart=", 0) == 0) {
      std::vector<std::string> args;
      std::istringstream words{line.substr(10)};
      for (std::string w; words >> w;)
        args.push_back(std::regex_replace(w, std::regex{"%i"}, id));
      return args;
    }
  return {};
}

TEST(deploy, the_oracle_units_command_line_runs_the_binary) {
  auto args = exec_start("nodepool-oracle@.service", "1");
  ASSERT_GE(args.size(), 4u);
  EXPECT_EQ(args[0], "/usr/local/bin/nodepool");
  // Its paths, moved under a test directory: the command itself is the unit's.
  auto dir = temp_dir("unit-cmd");
  cleanup tidy{dir};
  write_loopback_cluster(dir + "/cluster.toml", 1, "");
  std::ofstream{dir + "/api-keys"} << "np_unit_test_key_0123456789 admin\n";
  // The unit's TLS files: a certificate that is its own CA.
  auto [crc, cout_] = run_shell("openssl req -x509 -newkey rsa:2048 -nodes -days 2 "
                                "-subj /CN=oracle-1 -keyout " + dir + "/oracle.key -out "
                                + dir + "/oracle.pem 2>&1 && cp " + dir + "/oracle.pem "
                                + dir + "/ca.pem");
  ASSERT_EQ(crc, 0) << cout_;
  std::vector<std::string> a;
  for (size_t k = 1; k < args.size(); ++k) {
    auto w = args[k];
    w = std::regex_replace(w, std::regex{"^/etc/nodepool"}, dir);
    w = std::regex_replace(w, std::regex{"^/var/lib/nodepool"}, dir + "/state");
    a.push_back(w);
  }
  a.push_back("--http");
  a.push_back("127.0.0.1:0");
  child oracle{a, dir + "/oracle.out"};
  ASSERT_TRUE(oracle.wait_for_output("listening on", 20s)) << oracle.errors();
  // --log-format json: what it says on stderr are JSON lines.
  oracle.signal(SIGTERM);
  EXPECT_EQ(oracle.wait_exit(20s), 0) << oracle.errors();
  std::istringstream err{oracle.errors()};
  std::string line;
  int lines = 0;
  while (std::getline(err, line))
    if (!line.empty()) {
      ++lines;
      EXPECT_TRUE(nlohmann::json::parse(line, nullptr, false).is_object()) << line;
    }
  EXPECT_GT(lines, 0);
  EXPECT_TRUE(std::filesystem::exists(dir + "/state/oracle-1"));
}

} // namespace
} // namespace nodepool::testing
