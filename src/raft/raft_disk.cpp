// See raft_disk.hpp.
#include "raft/raft_disk.hpp"

#include <algorithm>
#include <cstdio>
#include <fcntl.h>
#include <filesystem>
#include <memory>
#include <optional>
#include <set>
#include <tuple>
#include <unistd.h>

extern "C" {
#include <raft.h>
#include <raft/uv.h>
#include <uv.h>
}

#include "raft/raft_member.hpp"

namespace nodepool {

namespace {

/// A copy of a directory that goes away with this object.
struct scratch_copy {
  std::string path;
  explicit scratch_copy(const std::string& from) {
    namespace fs = std::filesystem;
    path = (fs::temp_directory_path()
            / ("nodepool-check-raft-" + std::to_string(::getpid())))
             .string();
    fs::remove_all(path);
    fs::copy(from, path, fs::copy_options::recursive);
  }
  ~scratch_copy() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

} // namespace

bool set_aside_stale_segments(const std::string& dir,
                              std::vector<std::string>& moved,
                              std::string& error) {
  namespace fs = std::filesystem;
  moved.clear();
  std::error_code ec;
  // raft_uv's names (uv_segment.c, uv_snapshot.c): closed segments
  // "%016llu-%016llu", open ones "open-%llu", snapshots
  // "snapshot-TERM-INDEX-TIMESTAMP" with a ".meta" beside.
  struct snap {
    unsigned long long term, index, ts;
    bool operator<(const snap& o) const {
      return std::tie(term, index, ts) < std::tie(o.term, o.index, o.ts);
    }
  };
  std::optional<snap> newest;
  std::vector<std::pair<std::string, unsigned long long>> closed;  // name, last
  bool open_holds_entries = false;
  fs::directory_iterator it{dir, ec}, end;
  for (; !ec && it != end; it.increment(ec)) {
    auto& e = *it;
    auto name = e.path().filename().string();
    unsigned long long a = 0, b = 0, c = 0;
    int n = 0;
    if (std::sscanf(name.c_str(), "%llu-%llu%n", &a, &b, &n) == 2
        && static_cast<size_t>(n) == name.size() && name.size() == 33) {
      closed.emplace_back(name, b);
    } else if (name.rfind("open-", 0) == 0) {
      // An open segment holds entries once raft wrote its format word;
      // a prepared one is all zeros.
      uint64_t format = 0;
      if (FILE* f = std::fopen(e.path().c_str(), "rb")) {
        if (std::fread(&format, sizeof format, 1, f) != 1)
          format = 0;
        std::fclose(f);
      }
      if (format != 0)
        open_holds_entries = true;
    } else if (std::sscanf(name.c_str(), "snapshot-%llu-%llu-%llu.meta%n", &a,
                           &b, &c, &n) == 3
               && static_cast<size_t>(n) == name.size()) {
      auto data = e.path().parent_path() / name.substr(0, name.size() - 5);
      std::error_code size_ec;
      auto size = fs::file_size(data, size_ec);
      if (!size_ec && size > 0) {
        snap s{a, b, c};
        if (!newest || *newest < s)
          newest = s;
      }
    }
  }
  if (ec) {
    error = "cannot list " + dir + ": " + ec.message();
    return false;
  }
  if (!newest || !open_holds_entries || closed.empty())
    return true;
  for (auto& [name, last] : closed)
    if (last >= newest->index)
      return true;  // the log reaches the snapshot: raft loads it right
  std::sort(closed.begin(), closed.end());
  for (auto& [name, last] : closed) {
    fs::rename(fs::path{dir} / name, fs::path{dir} / ("stale-" + name), ec);
    if (ec) {
      error = "cannot rename " + name + " in " + dir + ": " + ec.message();
      return false;
    }
    moved.push_back(name);
  }
  if (int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY); fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
  return true;
}

bool load_raft_dir(const std::string& dir, raft_disk& out, std::string& error,
                   bool as_a_member) {
  if (!std::filesystem::is_directory(dir)) {
    error = "no raft directory " + dir;
    return false;
  }
  uint64_t named = 0;
  std::string named_file;
  for (auto& f : std::filesystem::directory_iterator(dir)) {
    auto name = f.path().filename().string();
    auto dash = name.find('-');
    if (dash != 16 || name.size() != 33
        || name.find_first_not_of("0123456789-") != std::string::npos)
      continue;
    auto last = std::stoull(name.substr(dash + 1));
    if (last > named) {
      named = last;
      named_file = name;
    }
  }
  std::unique_ptr<scratch_copy> copy;
  try {
    copy = std::make_unique<scratch_copy>(dir);
  } catch (const std::exception& e) {
    error = std::string{"cannot copy "} + dir + ": " + e.what();
    return false;
  }
  if (std::vector<std::string> moved;
      as_a_member && !set_aside_stale_segments(copy->path, moved, error))
    return false;
  uv_loop_t loop;
  if (int rv = uv_loop_init(&loop); rv != 0) {
    error = std::string{"uv_loop_init: "} + uv_strerror(rv);
    return false;
  }
  struct raft_uv_transport transport {};
  struct raft_io io {};
  bool ok = false;
  if (int rv = raft_uv_tcp_init(&transport, &loop); rv != 0) {
    error = std::string{"raft_uv_tcp_init: "} + raft_strerror(rv);
  } else {
    if (int rv = raft_uv_init(&io, &loop, copy->path.c_str(), &transport);
        rv != 0) {
      error = std::string{"raft_uv_init: "} + io.errmsg;
      raft_uv_tcp_close(&transport);
    } else if (raft_uv_set_auto_recovery(&io, false);  // as a member does
               (rv = io.init(&io, 1, "127.0.0.1:1")) != 0) {
      error = std::string{"cannot open "} + dir + ": " + io.errmsg;
      raft_uv_close(&io);
      raft_uv_tcp_close(&transport);
    } else {
      raft_term term = 0;
      raft_id voted = 0;
      struct raft_snapshot* snap = nullptr;
      raft_index start = 0;
      struct raft_entry* entries = nullptr;
      size_t n = 0;
      if (int rv = io.load(&io, &term, &voted, &snap, &start, &entries, &n);
          rv != 0) {
        error = std::string{"cannot load "} + dir + ": " + io.errmsg;
      } else {
        ok = true;
        out = raft_disk{};
        out.named_last_index = named;
        out.named_last_segment = named_file;
        out.term = term;
        out.voted_for = voted;
        if (snap) {
          out.snapshot_index = snap->index;
          out.snapshot_term = snap->term;
          if (snap->n_bufs == 1) {
            std::string_view bytes;
            std::string why;
            if (unframed_snapshot(snap->bufs[0], bytes, why)) {
              out.snapshot = std::string{bytes};
            } else {
              ok = false;
              error = "snapshot at entry " + std::to_string(snap->index)
                      + " in " + dir + ": " + why;
            }
          }
          for (unsigned i = 0; i < snap->n_bufs; ++i)
            raft_free(snap->bufs[i].base);
          raft_free(snap->bufs);
          raft_configuration_close(&snap->configuration);
          raft_free(snap);
        }
        std::set<void*> batches;
        for (size_t i = 0; i < n; ++i) {
          raft_disk::entry e;
          e.index = start + i;
          e.term = entries[i].term;
          e.command = entries[i].type == RAFT_COMMAND;
          if (e.command)
            e.data = std::string{unframed(entries[i].buf)};
          out.entries.push_back(std::move(e));
          batches.insert(entries[i].batch);
        }
        for (auto* b : batches)
          raft_free(b);
        if (entries)
          raft_free(entries);
      }
      // The transport goes once the I/O closed (it closes the transport).
      io.data = &transport;
      io.close(&io, [](struct raft_io* io) {
        auto* t = static_cast<struct raft_uv_transport*>(io->data);
        raft_uv_close(io);
        raft_uv_tcp_close(t);
      });
    }
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  return ok;
}

} // namespace nodepool
