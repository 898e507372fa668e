// The Redis section of `nodepool bench`: the pool people build on Redis,
// with the cycle of the durable section:
//   reserve     a Lua script moves a node from the free list to the reserved
//               hash and records the session;
//   release     a Lua script moves it to the revalidating set and ends the
//               session;
//   revalidated a Lua script records the passed test and puts the node back
//               on the free list.
// Each step is one round trip, answered once Redis has it in its
// append-only file (appendfsync always: fsynced before the reply; everysec:
// fsynced within a second). The same number of clients as the durable
// section, each on its own connection, in a closed loop.
#include <atomic>
#include <csignal>
#include <filesystem>
#include <hiredis/hiredis.h>
#include <memory>
#include <thread>
#include <unistd.h>

#include "cli/bench_common.hpp"
#include "cluster_config.hpp"

namespace nodepool::cli::bench {

namespace {

const char* reserve_lua = R"(
local n = redis.call('RPOP', KEYS[1])
if not n then return false end
redis.call('HSET', KEYS[2], n, ARGV[1])
redis.call('HSET', KEYS[3], 'node', n, 'state', 'active')
return n
)";

const char* release_lua = R"(
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
  return redis.error_reply('node not reserved')
end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], 'state', 'completed')
return 1
)";

const char* revalidated_lua = R"(
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then
  return redis.error_reply('node not revalidating')
end
redis.call('HINCRBY', KEYS[3], 'tests_passed', 1)
redis.call('HSET', KEYS[3], 'state', 'ephemeral')
redis.call('LPUSH', KEYS[2], ARGV[1])
return 1
)";

struct reply_deleter {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using reply_ptr = std::unique_ptr<redisReply, reply_deleter>;

struct context_deleter {
  void operator()(redisContext* c) const { redisFree(c); }
};
using context_ptr = std::unique_ptr<redisContext, context_deleter>;

context_ptr connect(uint16_t port) {
  context_ptr c{redisConnect("127.0.0.1", port)};
  if (!c || c->err)
    return nullptr;
  return c;
}

reply_ptr command(redisContext* c, const std::vector<std::string>& args) {
  std::vector<const char*> argv;
  std::vector<size_t> lens;
  for (auto& a : args) {
    argv.push_back(a.data());
    lens.push_back(a.size());
  }
  auto* r = static_cast<redisReply*>(redisCommandArgv(
    c, static_cast<int>(args.size()), argv.data(), lens.data()));
  if (!r)
    throw std::runtime_error(std::string{"redis: "} + c->errstr);
  if (r->type == REDIS_REPLY_ERROR) {
    std::string e{r->str, r->len};
    freeReplyObject(r);
    throw std::runtime_error("redis: " + e);
  }
  return reply_ptr{r};
}

struct redis_server {
  std::string dir;
  uint16_t port = 0;
  std::unique_ptr<child_process> proc;

  redis_server(const std::string& bin, const std::string& fsync) {
    dir = make_temp_dir("bench-redis-" + fsync);
    port = free_loopback_port();
    proc = std::make_unique<child_process>(
      std::vector<std::string>{"--port", std::to_string(port), "--bind",
                               "127.0.0.1", "--dir", dir, "--appendonly", "yes",
                               "--appendfsync", fsync, "--save", "",
                               "--protected-mode", "no", "--daemonize", "no",
                               "--logfile", dir + "/redis.log"},
      dir + "/stdout.log", bench_child(bin));
    auto t0 = clock::now();
    for (;;) {
      if (auto c = connect(port)) {
        auto* r = static_cast<redisReply*>(redisCommand(c.get(), "PING"));
        bool ok = r && r->type == REDIS_REPLY_STATUS;
        if (r)
          freeReplyObject(r);
        if (ok)
          break;
      }
      if (!proc->running())
        throw std::runtime_error("redis-server exited at start (see " + dir
                                 + "/redis.log)");
      if (seconds_since(t0) > 20)
        throw std::runtime_error("redis-server did not answer in 20 s");
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }

  ~redis_server() {
    end_child(*proc, std::chrono::seconds(10));
    proc.reset();
    remove_tree(dir);
  }
};

/// One mode: cycles/s of each repetition.
std::vector<double> run_mode(const options& o, const std::string& fsync) {
  redis_server srv{o.redis_server, fsync};
  auto admin = connect(srv.port);
  if (!admin)
    throw std::runtime_error("cannot connect to redis-server");
  auto load = [&](const char* lua) {
    auto r = command(admin.get(), {"SCRIPT", "LOAD", lua});
    return std::string{r->str, r->len};
  };
  auto reserve = load(reserve_lua);
  auto release = load(release_lua);
  auto revalidated = load(revalidated_lua);
  for (uint32_t i = 0; i < o.nodes; ++i) {
    char id[32];
    std::snprintf(id, sizeof id, "n-%06u", i);
    command(admin.get(), {"HSET", std::string{"node:"} + id, "state",
                          "ephemeral", "tests_passed", "1"});
    command(admin.get(), {"LPUSH", "free", id});
  }
  std::atomic<uint64_t> cycles{0};
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> empty{0};
  std::vector<std::string> errors(o.clients);
  std::vector<std::thread> threads;
  for (uint32_t t = 0; t < o.clients; ++t)
    threads.emplace_back([&, t] {
      try {
        auto c = connect(srv.port);
        if (!c)
          throw std::runtime_error("cannot connect to redis-server");
        uint64_t k = 0;
        while (!stop) {
          auto sid = "c" + std::to_string(t) + "-" + std::to_string(k++);
          auto skey = "session:" + sid;
          auto r = command(c.get(), {"EVALSHA", reserve, "3", "free",
                                     "reserved", skey, sid});
          if (r->type != REDIS_REPLY_STRING) {
            ++empty;  // no free node: try again
            continue;
          }
          std::string node{r->str, r->len};
          command(c.get(), {"EVALSHA", release, "3", "reserved",
                            "revalidating", skey, node});
          command(c.get(), {"EVALSHA", revalidated, "3", "revalidating",
                            "free", "node:" + node, node, "1"});
          ++cycles;
        }
      } catch (const std::exception& e) {
        errors[t] = e.what();
      }
    });
  std::vector<double> xs;
  try {
    sleep_unless_stopped(o.warmup);
    xs = repeat(o.reps, [&](int) {
      auto c0 = cycles.load();
      auto t0 = clock::now();
      sleep_unless_stopped(o.seconds);
      return (cycles.load() - c0) / seconds_since(t0);
    });
  } catch (const interrupted&) {
    // Joinable threads must not be destroyed.
    stop = true;
    for (auto& th : threads)
      th.join();
    throw;
  }
  stop = true;
  for (auto& th : threads)
    th.join();
  for (auto& e : errors)
    if (!e.empty())
      throw std::runtime_error(e);
  auto free_now = command(admin.get(), {"LLEN", "free"});
  if (free_now->integer != static_cast<long long>(o.nodes))
    throw std::runtime_error("redis: " + std::to_string(free_now->integer)
                             + " free nodes at the end, expected "
                             + std::to_string(o.nodes));
  return xs;
}

} // namespace

nlohmann::json redis(options& o) {
  if (o.redis_server.empty())
    o.redis_server = find_or_install("redis-server", "redis-server", "redis");
  nlohmann::json j;
  for (std::string mode : {"always", "everysec"}) {
    auto xs = run_mode(o, mode);
    j[mode]["cycles_per_s"] = median(xs);
    j[mode]["cycles_per_s_reps"] = xs;
    note("redis appendfsync %s: %.0f cycles/s", mode.c_str(), median(xs));
  }
  j["clients"] = o.clients;
  j["nodes"] = o.nodes;
  j["server"] = o.redis_server;
  return j;
}

} // namespace nodepool::cli::bench
