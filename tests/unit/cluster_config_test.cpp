// The cluster file (src/cluster_config.hpp): what a member reads to know its
// peers. Every mistake is an error naming the file and the key.
#include <gtest/gtest.h>

#include <filesystem>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <unistd.h>

#include "cli/os.hpp"
#include "cluster_config.hpp"

namespace nodepool {
namespace {

const char* three = R"(
[[member]]
id = 1
raft = "127.0.0.1:7101"
address = "127.0.0.1:4241"
[[member]]
id = 2
raft = "127.0.0.1:7102"
address = "127.0.0.1:4242"
[[member]]
id = 3
raft = "127.0.0.1:7103"
address = "127.0.0.1:4243"
)";

std::string error_of(const std::string& text) {
  try {
    parse_cluster(text, "c.toml");
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

TEST(ClusterFile, TestsTableNamesTheBankAndTheSharedSecret) {
  auto c = parse_cluster(std::string{three} + R"(
[tests]
bank = "/etc/nodepool/bank.jsonl"
secret_file = "/etc/nodepool/test_secret"
)",
                         "c.toml");
  EXPECT_EQ(c.tests.bank, "/etc/nodepool/bank.jsonl");
  EXPECT_EQ(c.tests.secret_file, "/etc/nodepool/test_secret");
  EXPECT_EQ(parse_cluster(three, "c.toml").tests.secret_file, "");
  EXPECT_NE(error_of(std::string{three} + "[tests]\nsecret = \"x\"\n")
              .find("c.toml: tests.secret: unknown key"),
            std::string::npos);
  EXPECT_NE(error_of(std::string{three} + "[tests]\nbank = 3\n")
              .find("tests.bank: expected a file name"),
            std::string::npos);
  EXPECT_NE(error_of(std::string{three} + "tests = 1\n").find("tests"),
            std::string::npos);
  // The same table in an oracle's own config file.
  EXPECT_EQ(parse_tests_table("[tests]\nbank = \"b.jsonl\"\n", "o.toml").bank,
            "b.jsonl");
  // A loopback cluster's file names one secret for all its members.
  auto dir = std::filesystem::temp_directory_path()
             / ("np-cluster-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  write_loopback_cluster((dir / "c.toml").string(), 3, "");
  EXPECT_EQ(load_cluster((dir / "c.toml").string()).tests.secret_file,
            (dir / "test_secret").string());
  std::filesystem::remove_all(dir);
}

TEST(ClusterFile, ReadsMembersAndTiming) {
  auto c = parse_cluster(std::string{three} + R"(
[raft]
election_timeout_ms = 300
heartbeat_timeout_ms = 30
install_snapshot_timeout_ms = 2500
rotation_interval_ms = 600000
stop_handover_ms = 2500
[pool]
heartbeat_timeout_ms = 9000
)",
                         "c.toml");
  ASSERT_EQ(c.members.size(), 3u);
  EXPECT_EQ(c.find(2)->raft, "127.0.0.1:7102");
  EXPECT_EQ(c.find(3)->address, "127.0.0.1:4243");
  EXPECT_EQ(c.find(3)->http, "");  // optional
  EXPECT_EQ(c.find(4), nullptr);
  EXPECT_EQ(c.election_timeout_ms, 300u);
  EXPECT_EQ(c.heartbeat_timeout_ms, 30u);
  EXPECT_EQ(c.snapshot_threshold, 1024u);
  EXPECT_EQ(c.install_snapshot_timeout_ms, 2500u);
  EXPECT_EQ(c.rotation_interval_ms, 600000u);
  EXPECT_EQ(c.stop_handover_ms, 2500u);
  EXPECT_EQ(parse_cluster(three, "d.toml").stop_handover_ms, 600u);  // default
}

TEST(ClusterFile, TheShippedFileReads) {
  auto c = load_cluster(std::string{NODEPOOL_SOURCE_DIR} + "/deploy/cluster.toml");
  EXPECT_EQ(c.members.size(), 3u);
  EXPECT_EQ(c.find(2)->http, "127.0.0.1:5012");
}

TEST(ClusterFile, RefusesMistakesNamingTheKey) {
  struct bad {
    std::string text;
    std::string expect;
  } cases[] = {
    {"", "no [[member]]"},
    {"[[member]]\nid = 1\nraft = \"10.0.0.1:1\"\n", "address"},
    {"[[member]]\nraft = \"10.0.0.1:1\"\naddress = \"a:2\"\n", "id is missing"},
    {"[[member]]\nid = 0\nraft = \"10.0.0.1:1\"\naddress = \"a:2\"\n", "member[0].id"},
    {"[[member]]\nid = 1\nraft = \"nohost\"\naddress = \"a:2\"\n",
     "member[0].raft"},
    {"[[member]]\nid = 1\nraft = \"a:70000\"\naddress = \"a:2\"\n",
     "member[0].raft"},
    {"[[member]]\nid = 1\nraft = \"oracle1.example:7001\"\naddress = \"a:2\"\n",
     "not an IPv4 address"},
    {"[[member]]\nid = 1\nraft = \"10.0.0.1:1\"\naddress = \"a;b:2\"\n",
     "member[0].address"},
    {"[[member]]\nid = 1\nraft = \"10.0.0.1:1\"\naddress = \"a:2\"\nport = 3\n",
     "member[0].port"},
    {std::string{three} + "[[member]]\nid = 2\nraft = \"10.0.0.2:1\"\naddress = \"b:2\"\n",
     "appears twice"},
    {std::string{three} + "[[member]]\nid = 4\nraft = \"127.0.0.1:7101\"\naddress = \"b:2\"\n",
     "used twice"},
    {"[[member]]\nid = 1\nraft = \"10.0.0.1:1\"\naddress = \"a:2\"\nhttp = \"web\"\n",
     "member[0].http"},
    {"[[member]]\nid = 1\nraft = \"10.0.0.1:1\"\naddress = \"a:2\"\nhttp = \"a:2\"\n",
     "used twice"},
    {std::string{three} + "[raft]\nelection_timeout_ms = 5\n",
     "raft.election_timeout_ms"},
    {std::string{three} + "[raft]\nheartbeat_timeout_ms = 900\n",
     "below raft.election_timeout_ms"},
    {std::string{three} + "[raft]\nrotation_interval_ms = 500\n",
     "raft.rotation_interval_ms"},
    {std::string{three} + "[raft]\nstop_handover_ms = -1\n",
     "raft.stop_handover_ms"},
    {std::string{three} + "[raft]\nstop_handover_ms = 600001\n",
     "raft.stop_handover_ms"},
    {std::string{three} + "[raft]\nrotation_interval_ms = -1\n",
     "raft.rotation_interval_ms"},
    {std::string{three} + "[raft]\nelection = 5\n", "raft.election"},
    {std::string{three} + "[raft]\ninstall_snapshot_timeout_ms = 0\n",
     "raft.install_snapshot_timeout_ms"},
    {std::string{three} + "[oracle]\nport = 1\n", "oracle: unknown key"},
    {std::string{"cluster_id = \"a b\"\n"} + three, "cluster_id"},
    {"[[member]\n", "c.toml"},
  };
  for (auto& c : cases) {
    auto err = error_of(c.text);
    EXPECT_NE(err.find(c.expect), std::string::npos)
      << "for:\n" << c.text << "\ngot: '" << err << "'";
    EXPECT_NE(err.find("c.toml"), std::string::npos) << err;
  }
}

std::string read_first_line(const std::string& path) {
  std::ifstream in{path};
  std::string line;
  std::getline(in, line);
  return line;
}

TEST(ClusterFile, NamesTheClusterAndADataDirectoryRemembersIt) {
  auto derived = parse_cluster(three, "c.toml");
  EXPECT_EQ(derived.cluster_id.rfind("members-", 0), 0u) << derived.cluster_id;
  EXPECT_EQ(parse_cluster(three, "c.toml").cluster_id, derived.cluster_id);
  auto named = parse_cluster(std::string{"cluster_id = \"eu-1\"\n"} + three,
                             "c.toml");
  EXPECT_EQ(named.cluster_id, "eu-1");
  std::string dir = cli::make_temp_dir("claim");
  claim_data_dir(named, dir);
  claim_data_dir(named, dir);  // the same cluster again: fine
  try {
    claim_data_dir(derived, dir);
    ADD_FAILURE() << "another cluster's file was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string{e.what()}.find("belongs to cluster 'eu-1'"),
              std::string::npos)
      << e.what();
  }
  std::remove((dir + "/cluster-id").c_str());
  // A directory of the unnamed cluster takes the name given to the same
  // member list later (as the README advises, before the list changes);
  // then it is that cluster's, and the unnamed file is another's.
  claim_data_dir(derived, dir);
  claim_data_dir(named, dir);
  EXPECT_EQ(read_first_line(dir + "/cluster-id"), "eu-1");
  EXPECT_THROW(claim_data_dir(derived, dir), std::runtime_error);
  // Another list named: not this directory's.
  std::remove((dir + "/cluster-id").c_str());
  claim_data_dir(derived, dir);
  auto other = parse_cluster(std::string{"cluster_id = \"eu-2\"\n"} + three
                               + "[[member]]\nid = 4\nraft = \"127.0.0.1:7104\"\n"
                                 "address = \"127.0.0.1:4244\"\n",
                             "c.toml");
  EXPECT_THROW(claim_data_dir(other, dir), std::runtime_error);
  std::remove((dir + "/cluster-id").c_str());
  rmdir(dir.c_str());
}

} // namespace
} // namespace nodepool
