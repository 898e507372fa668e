#include "id_window.hpp"

#include "random.hpp"

namespace nodepool {

namespace {

constexpr size_t min_capacity = 16;

int64_t second_of(int64_t ms) {
  return ms <= 0 ? 0 : (ms + 999) / 1000;
}

} // namespace

uint64_t id_window::fingerprint(const std::string& id) {
  // FNV-1a over the bytes, then the splitmix64 finaliser: both are fixed
  // functions, unlike std::hash, so a snapshot means the same everywhere.
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : id) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  h = mix64(h);
  return h == 0 ? 1 : h;  // 0 marks an empty slot
}

void id_window::add(const std::string& id, int64_t expires) {
  auto fp = fingerprint(id);
  if (contains_fp(fp))
    return;
  auto sec = second_of(expires);
  if (!runs_.empty() && sec < runs_.back().second)
    sec = runs_.back().second;  // never out of order: keep it a bit longer
  insert_fp(fp);
  fifo_.push_back(fp);
  if (!runs_.empty() && runs_.back().second == sec)
    ++runs_.back().count;
  else
    runs_.push_back(run{sec, 1});
}

bool id_window::contains(const std::string& id) const {
  return contains_fp(fingerprint(id));
}

void id_window::expire(int64_t now) {
  // An id expiring at second s is gone from s * 1000 ms on.
  while (!runs_.empty() && runs_.front().second * 1000 <= now) {
    for (uint64_t i = 0; i < runs_.front().count; ++i) {
      erase_fp(fifo_.front());
      fifo_.pop_front();
    }
    runs_.pop_front();
  }
}

size_t id_window::memory_bytes() const {
  size_t table = 0;
  for (auto& sh : shards_)
    table += sh.table.capacity() * sizeof(uint64_t);
  return table + fifo_.size() * sizeof(uint64_t) + runs_.size() * sizeof(run);
}

bool id_window::contains_fp(uint64_t fp) const {
  auto& sh = shard_of(fp);
  if (sh.table.empty())
    return false;
  auto mask = sh.table.size() - 1;
  for (auto i = fp & mask;; i = (i + 1) & mask) {
    if (sh.table[i] == fp)
      return true;
    if (sh.table[i] == 0)
      return false;
  }
}

void id_window::insert_fp(uint64_t fp) {
  auto& sh = shard_of(fp);
  if (sh.table.empty())
    resize(sh, min_capacity);
  else if ((sh.used + 1) * 4 > sh.table.size() * 3)
    resize(sh, sh.table.size() * 2);
  auto mask = sh.table.size() - 1;
  auto i = fp & mask;
  while (sh.table[i] != 0)
    i = (i + 1) & mask;
  sh.table[i] = fp;
  ++sh.used;
}

void id_window::erase_fp(uint64_t fp) {
  auto& sh = shard_of(fp);
  if (sh.table.empty())
    return;
  auto& t = sh.table;
  auto mask = t.size() - 1;
  auto i = fp & mask;
  while (t[i] != fp) {
    if (t[i] == 0)
      return;
    i = (i + 1) & mask;
  }
  // Backward-shift deletion: no tombstones, so a lookup never walks past
  // slots that only used to be full.
  for (auto j = (i + 1) & mask; t[j] != 0; j = (j + 1) & mask) {
    auto home = t[j] & mask;
    // Move t[j] into the hole at i unless its home lies in (i, j].
    bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
    if (!stays) {
      t[i] = t[j];
      i = j;
    }
  }
  t[i] = 0;
  --sh.used;
  // Shrink a shard that emptied out, so memory follows the ids held.
  if (t.size() > min_capacity && sh.used * 16 < t.size() * 3)
    resize(sh, t.size() / 2);
}

void id_window::resize(shard& sh, size_t capacity) {
  std::vector<uint64_t> old;
  old.swap(sh.table);
  sh.table.assign(capacity, 0);
  sh.table.shrink_to_fit();
  sh.used = 0;
  auto mask = capacity - 1;
  for (auto fp : old)
    if (fp != 0) {
      auto i = fp & mask;
      while (sh.table[i] != 0)
        i = (i + 1) & mask;
      sh.table[i] = fp;
      ++sh.used;
    }
}

id_window::image id_window::save() const {
  image img;
  img.fingerprints.assign(fifo_.begin(), fifo_.end());
  for (auto& r : runs_) {
    img.expiry_seconds.push_back(r.second);
    img.expiry_counts.push_back(r.count);
  }
  return img;
}

std::string id_window::load(const image& img) {
  clear();
  if (img.expiry_seconds.size() != img.expiry_counts.size())
    return "recent session ids: expiry list is torn";
  uint64_t total = 0;
  for (size_t i = 0; i < img.expiry_seconds.size(); ++i) {
    if (img.expiry_counts[i] == 0
        || (i > 0 && img.expiry_seconds[i] <= img.expiry_seconds[i - 1])
        || img.expiry_seconds[i] < 0
        || img.expiry_counts[i] > img.fingerprints.size())
      return "recent session ids: expiry list out of order";
    total += img.expiry_counts[i];
  }
  if (total != img.fingerprints.size())
    return "recent session ids: " + std::to_string(img.fingerprints.size())
           + " ids but expiry times for " + std::to_string(total);
  for (auto fp : img.fingerprints) {
    if (fp == 0 || contains_fp(fp)) {
      clear();
      return "recent session ids: a fingerprint is empty or repeated";
    }
    insert_fp(fp);
    fifo_.push_back(fp);
  }
  for (size_t i = 0; i < img.expiry_seconds.size(); ++i)
    runs_.push_back(run{img.expiry_seconds[i], img.expiry_counts[i]});
  return {};
}

void id_window::clear() {
  for (auto& sh : shards_) {
    sh.table.clear();
    sh.table.shrink_to_fit();
    sh.used = 0;
  }
  fifo_.clear();
  runs_.clear();
}

} // namespace nodepool
