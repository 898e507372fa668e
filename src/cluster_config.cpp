#include "cluster_config.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <stdexcept>
#include <mutex>

#include <toml++/toml.h>

#include "digest.hpp"
#include "params.hpp"

namespace nodepool {

const cluster_member* cluster_config::find(uint64_t id) const {
  for (auto& m : members)
    if (m.id == id)
      return &m;
  return nullptr;
}

namespace {


} // namespace

std::optional<std::pair<std::string, uint16_t>>
split_host_port(const std::string& s) {
  auto colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == s.size())
    return std::nullopt;
  auto port = s.substr(colon + 1);
  if (port.size() > 5
      || port.find_first_not_of("0123456789") != std::string::npos)
    return std::nullopt;
  auto n = std::stoul(port);
  if (n == 0 || n > 65535)
    return std::nullopt;
  return std::make_pair(s.substr(0, colon), static_cast<uint16_t>(n));
}

bool member_address_ok(const std::string& s) {
  return split_host_port(s) && s.find(';') == std::string::npos;
}

std::string raft_address_error(const std::string& raft) {
  auto hp = split_host_port(raft);
  in_addr ip{};
  if (!hp || inet_pton(AF_INET, hp->first.c_str(), &ip) != 1)
    return "'" + raft + "' is not an IPv4 address and port (a Raft address is not "
           "resolved: write the IP, e.g. 10.0.0.1:7000)";
  return {};
}

std::string member_config_address(const cluster_member& m) {
  if (m.address.empty() && m.http.empty())
    return m.raft;
  return m.raft + ";" + m.address + ";" + m.http;
}

cluster_member member_from_config(uint64_t id, const std::string& address) {
  cluster_member m;
  m.id = id;
  auto a = address.find(';');
  m.raft = address.substr(0, a);
  if (a != std::string::npos) {
    auto b = address.find(';', a + 1);
    m.address = address.substr(a + 1, b == std::string::npos ? std::string::npos : b - a - 1);
    if (b != std::string::npos)
      m.http = address.substr(b + 1);
  }
  return m;
}

namespace {

tests_files tests_of(const toml::table& tbl, const std::string& source) {
  tests_files out;
  if (!tbl.contains("tests"))
    return out;
  auto* t = tbl["tests"].as_table();
  if (!t)
    throw std::runtime_error(source + ": tests: expected a table ([tests])");
  for (auto& [k, v] : *t) {
    auto key = std::string{k.str()};
    if (key != "bank" && key != "secret_file")
      throw std::runtime_error(source + ": tests." + key
                               + ": unknown key (expected bank, secret_file)");
    auto x = v.value<std::string>();
    if (!v.is_string() || !x || x->empty())
      throw std::runtime_error(source + ": tests." + key + ": expected a file name");
    (key == "bank" ? out.bank : out.secret_file) = *x;
  }
  return out;
}

} // namespace

tests_files parse_tests_table(const std::string& text, const std::string& source) {
  toml::table tbl;
  try {
    tbl = toml::parse(without_toml_trap(text), source);
  } catch (const toml::parse_error& e) {
    throw std::runtime_error(source + ": " + std::string{e.description()});
  }
  return tests_of(tbl, source);
}

cluster_config parse_cluster(const std::string& text, const std::string& source) {
  toml::table tbl;
  try {
    tbl = toml::parse(without_toml_trap(text), source);
  } catch (const toml::parse_error& e) {
    throw std::runtime_error(source + ": " + std::string{e.description()});
  }
  auto fail = [&](const std::string& key, const std::string& why) {
    return std::runtime_error(source + ": " + key + ": " + why);
  };
  cluster_config c;
  for (auto& [k, v] : tbl) {
    auto key = std::string{k.str()};
    if (key == "cluster_id") {
      auto x = v.value<std::string>();
      if (!v.is_string() || !x || x->empty() || x->size() > 128
          || x->find_first_of(" \t\r\n") != std::string::npos)
        throw fail(key, "expected a short name without spaces");
      c.cluster_id = *x;
      continue;
    }
    if (key != "member" && key != "raft" && key != "pool" && key != "tests")
      throw fail(key, "unknown key (expected cluster_id, [[member]], [raft], "
                      "[pool] and [tests])");
  }
  auto* members = tbl["member"].as_array();
  if (!members || members->empty())
    throw fail("member", "no [[member]] entries");
  if (members->size() > 7)
    throw fail("member", "at most 7 members");
  std::set<uint64_t> ids;
  std::set<std::string> addrs;
  size_t n = 0;
  for (auto& node : *members) {
    auto where = "member[" + std::to_string(n++) + "]";
    auto* t = node.as_table();
    if (!t)
      throw fail(where, "expected a table ([[member]])");
    cluster_member m;
    for (auto& [k, v] : *t) {
      auto key = std::string{k.str()};
      if (key == "id") {
        auto x = v.value<int64_t>();
        if (!v.is_integer() || !x || *x <= 0)
          throw fail(where + ".id", "expected a positive integer");
        m.id = static_cast<uint64_t>(*x);
      } else if (key == "raft" || key == "address" || key == "http") {
        auto x = v.value<std::string>();
        if (!v.is_string() || !x || !member_address_ok(*x))
          throw fail(where + "." + key, "expected \"host:port\"");
        if (key == "raft")
          if (auto e = raft_address_error(*x); !e.empty())
            throw fail(where + ".raft", e);
        (key == "raft" ? m.raft : key == "address" ? m.address : m.http) = *x;
      } else {
        throw fail(where + "." + key,
                   "unknown key (expected id, raft, address, http)");
      }
    }
    if (m.id == 0)
      throw fail(where, "id is missing");
    if (m.raft.empty())
      throw fail(where, "raft (the host:port of its Raft listener) is missing");
    if (m.address.empty())
      throw fail(where, "address (the host:port for miners and clients) is missing");
    if (!ids.insert(m.id).second)
      throw fail(where + ".id", "member " + std::to_string(m.id) + " appears twice");
    if (!addrs.insert(m.raft).second)
      throw fail(where + ".raft", m.raft + " is used twice");
    if (!addrs.insert(m.address).second)
      throw fail(where + ".address", m.address + " is used twice");
    if (!m.http.empty() && !addrs.insert(m.http).second)
      throw fail(where + ".http", m.http + " is used twice");
    c.members.push_back(m);
  }
  if (auto* r = tbl["raft"].as_table()) {
    for (auto& kv : *r) {
      auto key = std::string{kv.first.str()};
      auto& v = kv.second;
      auto x = v.value<int64_t>();
      auto in = [&](int64_t lo, int64_t hi) {
        if (!v.is_integer() || !x || *x < lo || *x > hi)
          throw fail("raft." + key, "expected an integer in " + std::to_string(lo)
                                      + ".." + std::to_string(hi));
        return static_cast<unsigned>(*x);
      };
      if (key == "election_timeout_ms")
        c.election_timeout_ms = in(10, 60000);
      else if (key == "heartbeat_timeout_ms")
        c.heartbeat_timeout_ms = in(1, 10000);
      else if (key == "snapshot_threshold")
        c.snapshot_threshold = in(1, 100000000);
      else if (key == "snapshot_trailing")
        c.snapshot_trailing = in(0, 100000000);
      else if (key == "install_snapshot_timeout_ms")
        c.install_snapshot_timeout_ms = in(100, 600000);
      else if (key == "rotation_interval_ms")
        c.rotation_interval_ms = in(0, 86400000);
      else if (key == "stop_handover_ms")
        c.stop_handover_ms = in(0, 600000);
      else
        throw fail("raft." + key, "unknown key");
    }
    if (c.heartbeat_timeout_ms >= c.election_timeout_ms)
      throw fail("raft.heartbeat_timeout_ms",
                 "must be below raft.election_timeout_ms");
    if (c.rotation_interval_ms > 0
        && c.rotation_interval_ms < 2 * c.election_timeout_ms)
      throw fail("raft.rotation_interval_ms",
                 "must be 0 (no rotation) or at least twice "
                 "raft.election_timeout_ms");
  } else if (tbl.contains("raft")) {
    throw fail("raft", "expected a table ([raft])");
  }
  c.tests = tests_of(tbl, source);
  std::string list;
  for (auto& m : c.members)
    list += std::to_string(m.id) + " " + m.raft + "\n";
  c.derived_id = "members-" + sha256_hex(list).substr(0, 16);
  if (c.cluster_id.empty())
    c.cluster_id = c.derived_id;
  return c;
}

void claim_data_dir(const cluster_config& c, const std::string& data_dir) {
  auto path = data_dir + "/cluster-id";
  std::ifstream in{path};
  std::string have;
  if (in && std::getline(in, have)) {
    if (have == c.cluster_id)
      return;
    // Named since, with the same member list: the directory takes the
    // name (any file for that list was accepted before, named or not).
    if (have != c.derived_id || c.cluster_id == c.derived_id)
      throw std::runtime_error(
        data_dir + " belongs to cluster '" + have + "', not '" + c.cluster_id
        + "': give this member its own data directory, or the right cluster "
          "file");
  }
  // Written whole under another name, then renamed into place.
  auto tmp = path + ".tmp";
  {
    std::ofstream out{tmp, std::ios::trunc};
    out << c.cluster_id << "\n";
    out.flush();
    if (!out)
      throw std::runtime_error(tmp + ": cannot be written");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec)
    throw std::runtime_error(path + ": cannot be written: " + ec.message());
}

cluster_config load_cluster(const std::string& path) {
  std::ifstream f{path, std::ios::binary};
  if (!f)
    throw std::runtime_error(path + ": cannot be read");
  std::string text{std::istreambuf_iterator<char>{f}, {}};
  return parse_cluster(text, path);
}

uint16_t free_loopback_port() {
  // The kernel may hand the same free port to two calls in a row (nothing
  // holds it once the probe socket closes): a port given out before by
  // this process is not given again.
  static std::mutex mu;
  static std::set<uint16_t> given;
  std::lock_guard<std::mutex> g{mu};
  for (int attempt = 0; attempt < 1000; ++attempt) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
      throw std::runtime_error("socket() failed");
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0
        || ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      ::close(fd);
      throw std::runtime_error("cannot find a free port on 127.0.0.1");
    }
    ::close(fd);
    auto port = ntohs(a.sin_port);
    if (given.insert(port).second)
      return port;
  }
  throw std::runtime_error("cannot find a free port on 127.0.0.1 not given "
                           "out before");
}

std::vector<cluster_member> write_loopback_cluster(const std::string& path,
                                                   unsigned n,
                                                   const std::string& extra) {
  std::vector<cluster_member> ms;
  std::ofstream f{path};
  for (unsigned i = 1; i <= n; ++i) {
    cluster_member m;
    m.id = i;
    m.raft = "127.0.0.1:" + std::to_string(free_loopback_port());
    m.address = "127.0.0.1:" + std::to_string(free_loopback_port());
    m.http = "127.0.0.1:" + std::to_string(free_loopback_port());
    f << "[[member]]\nid = " << m.id << "\nraft = \"" << m.raft
      << "\"\naddress = \"" << m.address << "\"\nhttp = \"" << m.http
      << "\"\n";
    ms.push_back(std::move(m));
  }
  f << extra;
  // One secret for the members' cognitive tests, next to the file (the
  // first member to start creates it).
  if (extra.find("[tests]") == std::string::npos) {
    auto dir = std::filesystem::path(path).parent_path();
    f << "\n[tests]\nsecret_file = \"" << (dir / "test_secret").string() << "\"\n";
  }
  if (!f)
    throw std::runtime_error("cannot write " + path);
  return ms;
}

} // namespace nodepool
