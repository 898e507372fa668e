// `nodepool bench`: throughput, grant latency, memory and recovery time of
// the pool, side by side with a Redis-based pool (see BENCHMARKS.md).
#include <algorithm>
#include <atomic>
#include <CLI/CLI.hpp>
#include <arpa/inet.h>
#include <csignal>
#include <cstdarg>
#include <cstdio>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <thread>
#include <unistd.h>

#include "cli/bench_common.hpp"
#include "cli/bench_targets.hpp"
#include "cli/common.hpp"

namespace nodepool::cli {

namespace bench {

double median(std::vector<double> xs) {
  if (xs.empty())
    return 0;
  std::sort(xs.begin(), xs.end());
  auto n = xs.size();
  return n % 2 ? xs[n / 2] : (xs[n / 2 - 1] + xs[n / 2]) / 2;
}

double quantile(std::vector<double> xs, double q) {
  if (xs.empty())
    return 0;
  std::sort(xs.begin(), xs.end());
  auto rank = static_cast<size_t>(std::ceil(q * xs.size()));
  return xs[std::min(xs.size() - 1, rank == 0 ? 0 : rank - 1)];
}

uint64_t rss_bytes() {
  std::ifstream in{"/proc/self/statm"};
  uint64_t size = 0, resident = 0;
  in >> size >> resident;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

std::string find_or_install(const std::string& binary, const std::string& package,
                            const std::string& section) {
  auto executable = [](const std::string& p) { return access(p.c_str(), X_OK) == 0; };
  if (auto* path = std::getenv("PATH")) {
    std::string all = path;
    size_t i = 0;
    while (i <= all.size()) {
      auto j = all.find(':', i);
      if (j == std::string::npos)
        j = all.size();
      auto cand = all.substr(i, j - i) + "/" + binary;
      if (j > i && executable(cand))
        return cand;
      i = j + 1;
    }
  }
  auto usr = "/usr/bin/" + binary;
  if (executable(usr))
    return usr;
  note("%s not found: installing Debian's %s package", binary.c_str(),
       package.c_str());
  int rc = -1;
  if (geteuid() == 0)
    rc = std::system(("DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
                      + package + " >&2").c_str());
  if (rc == 0 && executable(usr))
    return usr;
  throw std::runtime_error("the " + section + " section needs " + binary
                           + ", which is not installed and could not be "
                             "installed here (as root: apt-get install "
                           + package + "; or leave the section out with --only)");
}

void remove_tree(const std::string& dir) {
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

std::string self_exe() {
  return std::filesystem::read_symlink("/proc/self/exe").string();
}

void check_stop() {
  if (stop_requested)
    throw interrupted{};
}

void sleep_unless_stopped(double seconds) {
  auto end = clock::now() + std::chrono::duration_cast<clock::duration>(
                              std::chrono::duration<double>(seconds));
  for (auto now = clock::now(); now < end; now = clock::now()) {
    check_stop();
    std::this_thread::sleep_for(
      std::min<clock::duration>(end - now, std::chrono::milliseconds(50)));
  }
  check_stop();
}

void end_child(child_process& c, std::chrono::milliseconds grace) {
  end_children({&c}, grace);
}

void end_children(const std::vector<child_process*>& cs,
                  std::chrono::milliseconds grace) {
  terminate_all(cs, grace, &stop_requested);
}

void note(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::fprintf(stderr, "bench: ");
  std::vfprintf(stderr, fmt, ap);
  std::fprintf(stderr, "\n");
  va_end(ap);
}

namespace {

/// fdatasync latency of the temporary directory's disk: what one synced
/// group commit (nodepool) or one AOF fsync (Redis) costs at the least.
/// 512-byte writes over 64 blocks, each synced, for `seconds`; with
/// `beside_busy_core` a thread spins on another core meanwhile. On some
/// virtual machines a sync waits for the host while the guest's other
/// cores are busy, in stalls of several milliseconds (see BENCHMARKS.md,
/// "Group commits that stall"): a grant's latency cannot be below them.
nlohmann::json fsync_latency(double seconds, bool beside_busy_core) {
  auto dir = make_temp_dir("bench-fsync");
  auto path = dir + "/probe";
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  nlohmann::json j;
  if (fd >= 0) {
    std::atomic<bool> spin{beside_busy_core};
    std::thread busy;
    if (beside_busy_core)
      busy = std::thread{[&spin] {
        volatile uint64_t n = 0;
        while (spin.load(std::memory_order_relaxed))
          n = n + 1;
      }};
    std::vector<double> ms;
    size_t stalls = 0;
    char block[512] = {};
    auto start = clock::now();
    for (int i = 0; !stop_requested && seconds_since(start) < seconds; ++i) {
      auto t0 = clock::now();
      if (pwrite(fd, block, sizeof block, 512 * (i % 64)) < 0
          || fdatasync(fd) != 0)
        break;
      ms.push_back(seconds_since(t0) * 1000);
      if (ms.back() > 2)
        ++stalls;
    }
    auto took = seconds_since(start);
    spin = false;
    if (busy.joinable())
      busy.join();
    close(fd);
    j["syncs"] = ms.size();
    j["p50_ms"] = quantile(ms, 0.5);
    j["p99_ms"] = quantile(ms, 0.99);
    j["p999_ms"] = quantile(ms, 0.999);
    j["max_ms"] = quantile(ms, 1.0);
    // Syncs over 2 ms, and the share of the time spent in them.
    j["stalls_over_2ms"] = stalls;
    double in_stalls = 0;
    for (auto x : ms)
      if (x > 2)
        in_stalls += x;
    j["time_in_stalls"] = took > 0 ? in_stalls / 1000 / took : 0.0;
  }
  remove_tree(dir);
  return j;
}

/// What the machine charges for crossing into its kernel and between
/// threads: a trivial system call, and one byte sent to another thread
/// over a pipe and back (the thread wakes for it, as raft's loops and
/// CAF's workers wake for work). Each the median over `rounds` rounds. On a
/// virtual machine whose guest kernel runs deprivileged (a PVM guest, for
/// one) both cost several times what they cost on bare metal, and a path
/// that crosses threads often pays it (BENCHMARKS.md, "Without a disk the
/// ratio is the same").
nlohmann::json crossing_costs(bool quick) {
  const int rounds = 5;
  const int calls = quick ? 20000 : 200000;
  const int trips = quick ? 2000 : 20000;
  std::vector<double> call_us, trip_us;
  for (int r = 0; r < rounds && !stop_requested; ++r) {
    auto t0 = clock::now();
    for (int i = 0; i < calls; ++i)
      ::syscall(SYS_getppid);
    call_us.push_back(seconds_since(t0) * 1e6 / calls);
  }
  int there[2] = {-1, -1}, back[2] = {-1, -1};
  if (::pipe(there) == 0 && ::pipe(back) == 0) {
    std::thread echo{[&] {
      char c;
      while (::read(there[0], &c, 1) == 1)
        if (::write(back[1], &c, 1) != 1)
          break;
    }};
    char c = 'x';
    bool ok = true;
    for (int r = 0; ok && r < rounds && !stop_requested; ++r) {
      auto t0 = clock::now();
      for (int i = 0; ok && i < trips; ++i)
        ok = ::write(there[1], &c, 1) == 1 && ::read(back[0], &c, 1) == 1;
      if (ok)
        trip_us.push_back(seconds_since(t0) * 1e6 / trips);
    }
    ::close(there[1]);  // the echo thread reads the end of file and returns
    there[1] = -1;
    echo.join();
  }
  for (int fd : {there[0], there[1], back[0], back[1]})
    if (fd >= 0)
      ::close(fd);
  nlohmann::json j;
  if (!call_us.empty())
    j["syscall_us"] = quantile(call_us, 0.5);
  if (!trip_us.empty())
    j["thread_round_trip_us"] = quantile(trip_us, 0.5);
  return j;
}

bool wanted(const options& o, const std::string& section) {
  return o.only.empty()
         || std::find(o.only.begin(), o.only.end(), section) != o.only.end();
}

/// Runs `script` (in `dir`) through gnuplot; says where the PNG is.
void gnuplot(const std::string& dir, const std::string& script,
             const std::string& png) {
  auto cmd = "cd " + shell_quote(dir) + " && gnuplot " + script;
  if (std::system(cmd.c_str()) != 0)
    note("gnuplot failed (is gnuplot installed? apt-get install gnuplot-nox); "
         "data and script are in %s", dir.c_str());
  else
    note("plot written to %s/%s", dir.c_str(), png.c_str());
}

/// The latency curve of the durable pool.
void plot_latency(const std::string& dir, const nlohmann::json& durable) {
  {
    std::ofstream out{dir + "/grant_latency.dat"};
    out << "# offered_load_share offered_per_s achieved_per_s p50_ms p99_ms"
           " p999_ms\n";
    for (auto& c : durable["curve"])
      out << c["load"].get<double>() << ' ' << c["offered_per_s"].get<double>()
          << ' ' << c["achieved_per_s"].get<double>() << ' '
          << c["p50_ms"].get<double>() << ' ' << c["p99_ms"].get<double>()
          << ' ' << c["p999_ms"].get<double>() << '\n';
  }
  {
    std::ofstream out{dir + "/grant_latency.gp"};
    out << "# Grant latency of the durable pool (RocksDB, synced group commit)\n"
           "# against open-loop offered load; written by nodepool bench --plot.\n"
           "set terminal pngcairo size 900,560 noenhanced\n"
           "set output 'grant_latency.png'\n"
           "set title sprintf('nodepool grant latency vs offered load "
           "(saturation %.0f cycles/s)', "
        << durable["cycles_per_s"].get<double>()
        << ")\n"
           "set xlabel 'offered load (share of saturation cycles/s)'\n"
           "set ylabel 'grant latency (ms)'\n"
           "set logscale y\n"
           "set grid\n"
           "set key top left\n"
           "set xrange [0:1]\nset yrange [0.5:*]\n"
           "plot 'grant_latency.dat' using 1:4 with linespoints title 'p50', \\\n"
           "     '' using 1:5 with linespoints title 'p99', \\\n"
           "     '' using 1:6 with linespoints title 'p99.9', \\\n"
           "     1 with lines dashtype 2 title 'target: p99 < 1 ms at 0.5'\n";
  }
  gnuplot(dir, "grant_latency.gp", "grant_latency.png");
}

/// Throughput against clients (durable's by_clients) and against nodes
/// (the scale section), side by side, each where it was measured.
void plot_throughput(const std::string& dir, const nlohmann::json& report) {
  bool clients = report.contains("durable")
                 && report["durable"].contains("by_clients");
  bool nodes = report.contains("scale") && report["scale"].is_array()
               && !report["scale"].empty();
  if (!clients && !nodes)
    return;
  if (clients) {
    std::ofstream out{dir + "/throughput_clients.dat"};
    out << "# clients cycles_per_s (median of the repetitions)\n";
    for (auto& c : report["durable"]["by_clients"])
      out << c["clients"].get<double>() << ' ' << c["cycles_per_s"].get<double>()
          << '\n';
  }
  if (nodes) {
    std::ofstream out{dir + "/throughput_nodes.dat"};
    out << "# nodes cycles_per_s (median of the repetitions)\n";
    for (auto& c : report["scale"])
      out << c["nodes"].get<double>() << ' ' << c["cycles_per_s"].get<double>()
          << '\n';
  }
  std::ofstream out{dir + "/throughput.gp"};
  out << "# Saturation throughput of the durable pool (synced group commit)\n"
         "# against clients and against nodes; written by nodepool bench --plot.\n"
         "set terminal pngcairo size 1100,480 noenhanced\n"
         "set output 'throughput.png'\n"
         "set multiplot layout 1," << (clients && nodes ? 2 : 1)
      << " title 'nodepool: reservation cycles per second at saturation'\n"
         "set grid\nset key bottom right\nset logscale x 2\nset ylabel 'cycles/s'\nset yrange [0:*]\n";
  if (clients)
    out << "set xlabel 'concurrent clients'\n"
           "plot 'throughput_clients.dat' using 1:2 with linespoints lw 2 "
           "title 'durable pool, " << report["durable"]["nodes"].get<double>()
        << " nodes'\n";
  if (nodes)
    out << "set logscale x 10\nset xlabel 'nodes in the pool'\n"
           "plot 'throughput_nodes.dat' using 1:2 with linespoints lw 2 "
           "title 'durable pool, fresh process per size'\n";
  out << "unset multiplot\n";
  out.close();
  gnuplot(dir, "throughput.gp", "throughput.png");
}

/// The failover section's timeline: grants per second, each leader kill,
/// and when a new leader was seen and granted.
void plot_failover(const std::string& dir, const nlohmann::json& f) {
  if (!f.contains("grants_per_s") || !f.contains("timeline"))
    return;
  {
    std::ofstream out{dir + "/failover_grants.dat"};
    out << "# second_since_start sessions_started_in_that_second\n";
    size_t t = 0;
    for (auto& n : f["grants_per_s"])
      out << t++ << ' ' << n.get<double>() << '\n';
  }
  {
    std::ofstream out{dir + "/failover_kills.dat"};
    out << "# kill_s leader_seen_s first_grant_s member (seconds since the "
           "start; -1: not seen)\n";
    for (auto& k : f["timeline"]) {
      auto v = [&](const char* key) {
        return k[key].is_number() ? k[key].get<double>() : -1.0;
      };
      out << v("kill_s") << ' ' << v("leader_seen_s") << ' '
          << v("first_grant_s") << ' ' << k["member"].get<int>() << '\n';
    }
  }
  std::ofstream out{dir + "/failover.gp"};
  out << "# Leader kills under load, 3 oracles; written by nodepool bench "
         "--plot.\n"
         "set terminal pngcairo size 1100,480 noenhanced\n"
         "set output 'failover.png'\n"
         "set title sprintf('nodepool failover: %d leader SIGKILLs, first grant "
         "after a median %.0f ms', "
      << f["kills"].get<int>() << ", "
      << (f.contains("median_ms") ? f["median_ms"].get<double>() : -1.0)
      << ")\n"
         "set grid\nset xlabel 'seconds since the start'\n"
         "set ylabel 'sessions started per second'\nset yrange [0:*]\n"
         "set key outside bottom center horizontal\n";
  for (auto& k : f["timeline"])
    if (k["kill_s"].is_number())
      out << "set arrow from " << k["kill_s"].get<double>() << ", graph 0 to "
          << k["kill_s"].get<double>()
          << ", graph 1 nohead lc rgb '#d62728'\n";
  out << "plot 'failover_grants.dat' using 1:2 with steps lw 2 lc rgb '#1f77b4' "
         "title 'grants/s (red: a leader SIGKILLed)', \\\n"
         "     'failover_kills.dat' using ($3 >= 0 ? $3 : NaN):(0) with points "
         "pt 7 ps 1.2 lc rgb '#2ca02c' title 'first grant of the new leader'\n";
  out.close();
  gnuplot(dir, "failover.gp", "failover.png");
}

/// The etcd peer beside ours: cycles/s (nodepool's replicated section and
/// etcd's) and each kill's failover, sorted, one curve for each.
void plot_etcd(const std::string& dir, const nlohmann::json& report) {
  auto& e = report["etcd"];
  bool cycles = report.contains("replicated") && e.contains("cycles_per_s");
  bool failover = report.contains("failover") && e.contains("failover")
                  && report["failover"].contains("kill_to_first_grant_ms")
                  && e["failover"].contains("kill_to_first_reservation_ms");
  if (!cycles && !failover)
    return;
  if (cycles) {
    std::ofstream out{dir + "/etcd_cycles.dat"};
    out << "# what cycles_per_s\n"
        << "\"nodepool (3 members)\" " << report["replicated"]["cycles_per_s"].get<double>()
        << "\n\"etcd (3 members)\" " << e["cycles_per_s"].get<double>() << "\n";
  }
  if (failover) {
    auto sorted = [](const nlohmann::json& a) {
      std::vector<double> v;
      for (auto& x : a)
        if (x.is_number())
          v.push_back(x.get<double>());
      std::sort(v.begin(), v.end());
      return v;
    };
    auto ours = sorted(report["failover"]["kill_to_first_grant_ms"]);
    auto theirs = sorted(e["failover"]["kill_to_first_reservation_ms"]);
    std::ofstream out{dir + "/etcd_failover.dat"};
    out << "# rank nodepool_ms etcd_ms (each sorted; -1: fewer kills)\n";
    for (size_t i = 0; i < std::max(ours.size(), theirs.size()); ++i)
      out << i + 1 << ' ' << (i < ours.size() ? ours[i] : -1.0) << ' '
          << (i < theirs.size() ? theirs[i] : -1.0) << '\n';
  }
  std::ofstream out{dir + "/etcd.gp"};
  out << "# nodepool beside a reservation table on etcd; written by nodepool "
         "bench --plot.\n"
         "set terminal pngcairo size 1100,480 noenhanced\n"
         "set output 'etcd.png'\n"
         "set multiplot layout 1," << (cycles && failover ? 2 : 1)
      << " title 'nodepool and etcd, 3 members each, heartbeat 50 ms, election "
         "timeout 400 ms'\n"
         "set grid\n";
  if (cycles)
    out << "set style fill solid 0.6\nset boxwidth 0.5\nset logscale y\n"
           "set ylabel 'reservation cycles/s (log)'\nset yrange [10:*]\n"
           "plot 'etcd_cycles.dat' using 0:2:xtic(1) with boxes notitle\n"
           "unset logscale y\nset yrange [0:*]\n";
  if (failover)
    out << "set xlabel 'kills, sorted by time'\nset ylabel 'ms from kill -9 of the leader to a write'\nset key top left\n"
           "plot 'etcd_failover.dat' using 1:($2 >= 0 ? $2 : NaN) with linespoints "
           "lw 2 title 'nodepool: first grant', \\\n"
           "     'etcd_failover.dat' using 1:($3 >= 0 ? $3 : NaN) with linespoints "
           "lw 2 title 'etcd: first reservation'\n";
  out << "unset multiplot\n";
  out.close();
  gnuplot(dir, "etcd.gp", "etcd.png");
}

/// --plot: every figure the report has data for.
void plot(const std::string& dir, const nlohmann::json& report) {
  std::filesystem::create_directories(dir);
  if (report.contains("durable"))
    plot_latency(dir, report["durable"]);
  plot_throughput(dir, report);
  if (report.contains("failover"))
    plot_failover(dir, report["failover"]);
  if (report.contains("etcd"))
    plot_etcd(dir, report);
}

nlohmann::json measure(options& o);

int run(options& o) {
  if (!log_level_given)
    log_level = "error";
  begin();
  nlohmann::json report;
  try {
    report = measure(o);
  } catch (const interrupted&) {
    return report_interrupted(
      "bench", "nothing is reported; temporary files and child processes "
               "are gone; run it again (--only SECTION for some sections)");
  }
  if (o.json) {
    std::printf("%s\n", report.dump().c_str());
  } else {
    std::printf("%s\n", report.dump(2).c_str());
  }
  std::fflush(stdout);
  return 0;
}

/// Every section asked for, and the machine they ran on.
nlohmann::json measure(options& o) {
  if (o.quick) {
    o.reps = 3;
    o.seconds = 0.5;
    o.warmup = 0.2;
    if (o.loads.empty())
      o.loads = {0.5, 0.9};
    o.scale_nodes = {1000, 10000};
    o.recovery_nodes = 10000;
    o.flat_seconds = 3;
    o.flat_retention_s = 1;
    o.check_sessions = {2000, 20000};
    o.queue_nodes = 10000;
    o.queue_sessions = 2000;
    o.recovery_sessions = 1000;
    o.remote_nodes = 64;
    o.remote_clients = 32;
    o.failover_kills = 2;
    o.rotations = 2;
  }
  if (o.loads.empty())
    o.loads = {0.1, 0.3, 0.5, 0.7, 0.8, 0.9};
  if (o.scale_nodes.empty())
    o.scale_nodes = {1000, 10000, 100000};
  if (o.check_sessions.empty())
    o.check_sessions = {10000, 100000, 1000000};
  nlohmann::json report;
  auto t0 = clock::now();
  nlohmann::json machine;
  machine["cores"] = std::thread::hardware_concurrency();
  {
    auto probe = o.quick ? 0.3 : 1.0;
    machine["fdatasync_512b"] = fsync_latency(probe, false);
    machine["fdatasync_512b_beside_a_busy_core"] = fsync_latency(probe, true);
    auto say = [](const char* what, const nlohmann::json& f) {
      if (f.contains("p99_ms"))
        note("machine: 512-byte write and fdatasync%s: p50 %.3f ms, p99 %.3f "
             "ms, p99.9 %.3f ms, max %.3f ms; %llu of %llu over 2 ms (%.1f %% of "
             "the time)",
             what, f["p50_ms"].get<double>(), f["p99_ms"].get<double>(),
             f["p999_ms"].get<double>(), f["max_ms"].get<double>(),
             f["stalls_over_2ms"].get<unsigned long long>(),
             f["syncs"].get<unsigned long long>(),
             100 * f["time_in_stalls"].get<double>());
    };
    say("", machine["fdatasync_512b"]);
    say(" beside a busy core", machine["fdatasync_512b_beside_a_busy_core"]);
  }
  {
    auto c = crossing_costs(o.quick);
    for (auto& [k, v] : c.items())
      machine[k] = v;
    if (c.contains("syscall_us") && c.contains("thread_round_trip_us"))
      note("machine: a system call %.3f us; a byte to another thread over a "
           "pipe and back %.2f us",
           c["syscall_us"].get<double>(),
           c["thread_round_trip_us"].get<double>());
  }
  {
    double l[3] = {0, 0, 0};
    if (getloadavg(l, 3) == 3)
      machine["loadavg_at_start"] = {l[0], l[1], l[2]};
  }
  if (wanted(o, "state_machine")) {
    check_stop();
    note("state_machine");
    report["state_machine"] = bench::state_machine(o);
  }
  if (wanted(o, "queue")) {
    check_stop();
    note("queue");
    report["queue"] = bench::queue_cost(o);
  }
  if (wanted(o, "snapshot")) {
    check_stop();
    note("snapshot");
    report["snapshot"] = bench::snapshot_cost(o);
  }
  if (wanted(o, "durable")) {
    check_stop();
    note("durable");
    report["durable"] = bench::durable(o);
  }
  if (wanted(o, "replicated")) {
    check_stop();
    note("replicated");
    report["replicated"] = bench::replicated(o);
    if (report.contains("durable")) {
      auto d = report["durable"]["cycles_per_s"].get<double>();
      auto& r = report["replicated"];
      r["ratio_to_durable"] = r["cycles_per_s"].get<double>() / d;
      r["one_member"]["ratio_to_durable"] =
        r["one_member"]["cycles_per_s"].get<double>() / d;
    }
  }
  if (wanted(o, "failover")) {
    check_stop();
    note("failover");
    report["failover"] = bench::failover(o);
  }
  if (wanted(o, "rotation")) {
    check_stop();
    note("rotation");
    report["rotation"] = bench::rotation(o);
  }
  if (wanted(o, "api")) {
    check_stop();
    note("api");
    report["api"] = bench::api(o);
  }
  if (wanted(o, "check")) {
    check_stop();
    note("check");
    report["check"] = bench::check_speed(o);
  }
  if (wanted(o, "remote")) {
    check_stop();
    note("remote");
    report["remote"] = bench::remote(o);
  }
  if (wanted(o, "redis")) {
    check_stop();
    note("redis");
    report["redis"] = bench::redis(o);
  }
  if (wanted(o, "etcd")) {
    check_stop();
    note("etcd");
    report["etcd"] = bench::etcd(o);
    if (report.contains("replicated")) {
      auto& e = report["etcd"];
      e["ratio_replicated_to_etcd"] =
        report["replicated"]["cycles_per_s"].get<double>()
        / e["cycles_per_s"].get<double>();
    }
  }
  if (wanted(o, "scale")) {
    check_stop();
    note("scale");
    report["scale"] = bench::scale(o);
  }
  if (wanted(o, "recovery")) {
    check_stop();
    note("recovery");
    report["recovery"] = bench::recovery(o);
  }
  if (report.contains("durable") && report.contains("redis")) {
    auto d = report["durable"]["cycles_per_s"].get<double>();
    auto& r = report["redis"];
    r["ratio_nodepool_to_always"] = d / r["always"]["cycles_per_s"].get<double>();
    r["ratio_nodepool_to_everysec"] =
      d / r["everysec"]["cycles_per_s"].get<double>();
  }
  report["targets"] = judge_targets(report);
  for (auto& t : report["targets"])
    note("target: %s: %.4g (%s)", t["target"].get<std::string>().c_str(),
         t["measured"].get<double>(), t["met"].get<bool>() ? "met" : "missed");
  check_stop();
  if (!o.plot_dir.empty())
    plot(o.plot_dir, report);
  {
    double l[3] = {0, 0, 0};
    if (getloadavg(l, 3) == 3)
      machine["loadavg_at_end"] = {l[0], l[1], l[2]};
  }
  machine["elapsed_s"] = seconds_since(t0);
  machine["reps"] = o.reps;
  machine["quick"] = o.quick;
  report["machine"] = machine;
  return report;
}

} // namespace

} // namespace bench

void add_bench(CLI::App& app) {
  auto o = std::make_shared<bench::options>();
  auto prep_dir = std::make_shared<std::string>();
  auto scale_point = std::make_shared<uint32_t>(0);
  auto* cmd = app.add_subcommand(
    "bench", "measure the pool (and a Redis-based pool) on this machine");
  cmd->add_flag("--json", o->json, "print one JSON object as the last line");
  cmd->add_flag("--quick", o->quick,
                "a reduced run (under a minute), as a smoke test");
  cmd->add_option("--plot", o->plot_dir,
                  "draw the figures into this directory (data, gnuplot scripts, "
                  "PNGs): grant latency against load; throughput against "
                  "clients (measured for it) and nodes (scale); the failover "
                  "timeline");
  cmd->add_option("--failover-kills", o->failover_kills,
                  "leader kills of the failover section (default 20)")
    ->check(CLI::Range(1u, 1000u));
  cmd->add_option("--rotations", o->rotations,
                  "scheduled hand-overs the rotation section times (default 10)")
    ->check(CLI::Range(1u, 1000u));
  cmd->add_option("--rotation-interval-ms", o->rotation_interval_ms,
                  "rotation_interval_ms of the rotation section's cluster "
                  "(default 2000; at least twice the election timeout)")
    ->check(CLI::Range(100u, 3600000u));
  cmd->add_option("--failover-election-ms", o->failover_election_ms,
                  "Raft election timeout of the failover section's cluster "
                  "(default 400, the cluster file's default)")
    ->check(CLI::Range(50u, 60000u));
  cmd->add_option("--raft-snapshot-threshold", o->raft_snapshot_threshold,
                  "entries between Raft snapshots in the replicated section "
                  "(default: the cluster file's default)")
    ->check(CLI::Range(16u, 100000000u));
  cmd->add_option("--only", o->only,
                  "run only these sections (state_machine, queue, snapshot, durable, replicated, failover, "
                  "api, check, remote, redis, etcd, scale, recovery, rotation)")
    ->check(CLI::IsMember({"state_machine", "queue", "snapshot", "durable", "replicated", "failover", "api",
                           "check", "remote", "redis", "etcd", "scale", "recovery",
                           "rotation"}));
  cmd->add_option("--api-connections", o->api_connections,
                  "keep-alive connections of the api section (default 200)")
    ->check(CLI::Range(1u, 10000u));
  cmd->add_option("--api-seconds", o->api_seconds,
                  "measuring window of the api section, each way (default 30)")
    ->check(CLI::Range(0.5, 3600.0));
  cmd->add_option("--load-base", o->load_base,
                  "cycles/s the durable section's loads are fractions of "
                  "(default: that run's own saturation; set it to compare two "
                  "binaries at the same offered rates)")
    ->check(CLI::Range(1.0, 1e9));
  cmd->add_option("--loads", o->loads,
                  "offered loads of the durable section's open loop, as "
                  "fractions of --load-base (default 0.1 0.3 0.5 0.7 0.8 0.9)")
    ->delimiter(',')
    ->check(CLI::Range(0.01, 2.0));
  cmd->add_option("--copy-ahead", o->copy_ahead,
                  "records the durable section's supervisor copies into the "
                  "next snapshot's kept copy after each group commit (default "
                  "256; 0: none, all of it at the snapshot's stop)")
    ->check(CLI::Range(0L, 1000000L));
  cmd->add_flag("--driver-requests", o->driver_requests,
                 "the durable and replicated sections' driver sends its "
                 "commands as CAF requests, whose answers CAF finds in O(n) of "
                 "those in flight, instead of with tickets (to compare)");
  cmd->add_option("--caf-moderate-polls", o->caf_moderate_polls,
                  "polls with a 50 us sleep an idle CAF worker makes before it "
                  "waits on its condition variable, in the durable and "
                  "replicated sections (default 5; CAF's own default: 500)")
    ->check(CLI::Range(0L, 100000L));
  cmd->add_option("--flat-seconds", o->flat_seconds,
                  "length of durable's long saturation run, whose start and "
                  "end are compared (default 60)")
    ->check(CLI::Range(1.0, 3600.0));
  cmd->add_option("--flat-retention-s", o->flat_retention_s,
                  "session_id_retention of that run's pool, which serves this "
                  "long (and 2 s more) before the run so that its window of "
                  "recent ids is full (default 10)")
    ->check(CLI::Range(0.1, 3600.0));
  cmd->add_option("--check-sessions", o->check_sessions,
                  "history sizes (sessions) of the check section (default "
                  "10000 100000 1000000)")
    ->check(CLI::Range(uint64_t{100}, uint64_t{100000000}));
  cmd->add_option("--reps", o->reps, "repetitions of every figure (default 5)")
    ->check(CLI::Range(1, 100));
  cmd->add_option("--seconds", o->seconds,
                  "measuring window of one repetition (default 2)")
    ->check(CLI::Range(0.1, 600.0));
  cmd->add_option("--clients", o->clients,
                  "concurrent clients of the durable pool and of Redis "
                  "(default 32)")
    ->check(CLI::Range(1, 4096));
  cmd->add_option("--nodes", o->nodes,
                  "nodes of the state_machine, durable and redis pools "
                  "(default 1000)")
    ->check(CLI::Range(16, 1000000));
  cmd->add_option("--recovery-nodes", o->recovery_nodes,
                  "nodes in the recovered data directory (default 100000)")
    ->check(CLI::Range(1, 10000000));
  cmd->add_option("--recovery-sessions", o->recovery_sessions,
                  "queued sessions in it (default 10000)")
    ->check(CLI::Range(0, 10000000));
  cmd->add_option("--prepare-recovery", *prep_dir,
                  "(used by the recovery section) write a crashed pool's "
                  "state into this directory and die by SIGKILL")
    ->group("");
  cmd->add_option("--scale-point", *scale_point,
                  "(used by the scale section) measure one pool size")
    ->group("");
  add_param_flags(*cmd, o->pool_flags);
  cmd->callback([o, prep_dir, scale_point] {
    o->pool = resolve_params("", o->pool_flags);
    if (*scale_point > 0) {
      if (!log_level_given)
        log_level = "error";
      begin();
      nlohmann::json j;
      try {
        j = bench::scale_point(*o, *scale_point);
      } catch (const bench::interrupted&) {
        throw exit_code{interrupted_status()};
      }
      std::printf("%s\n", j.dump().c_str());
      std::fflush(stdout);
      return;
    }
    if (!prep_dir->empty())
      bench::prepare_recovery(*prep_dir, o->recovery_nodes,
                              o->recovery_sessions);
    if (int rc = bench::run(*o); rc != 0)
      throw exit_code{rc};
  });
}

} // namespace nodepool::cli
