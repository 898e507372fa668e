#include "id_window.hpp"

#include <limits>

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
  push_back(fp);
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
    for (uint64_t i = 0; i < runs_.front().count; ++i)
      erase_fp(pop_front());
    runs_.pop_front();
  }
}

size_t id_window::memory_bytes() const {
  size_t table = 0;
  for (auto& sh : shards_)
    table += sh.table.capacity() * sizeof(uint64_t);
  // A chunk, its pointer in the deque and make_shared's counts beside it.
  return table + chunks_.size() * (sizeof(chunk) + 2 * sizeof(std::shared_ptr<chunk>))
         + runs_.size() * sizeof(run);
}

void id_window::push_back(uint64_t fp) {
  // Only the last chunk is ever written, and only while it is not full; a
  // frozen window copies it rather than share it.
  if (chunks_.empty() || back_ == chunk_ids) {
    chunks_.push_back(std::make_shared<chunk>());
    back_ = 0;
  }
  (*chunks_.back())[back_++] = fp;
  ++size_;
}

uint64_t id_window::pop_front() {
  auto fp = (*chunks_.front())[front_++];
  --size_;
  auto end = chunks_.size() == 1 ? back_ : chunk_ids;
  if (front_ == end) {
    chunks_.pop_front();  // a frozen window may still hold it: shared
    front_ = 0;
    if (chunks_.empty())
      back_ = 0;
  }
  return fp;
}

id_window::frozen id_window::freeze() const {
  frozen f;
  if (!chunks_.empty()) {
    bool last_full = back_ == chunk_ids;
    auto shared = chunks_.size() - (last_full ? 0 : 1);
    f.full.assign(chunks_.begin(), chunks_.begin() + static_cast<long>(shared));
    if (!last_full) {
      auto& last = *chunks_.back();
      auto from = chunks_.size() == 1 ? front_ : 0;
      f.tail.assign(last.begin() + from, last.begin() + back_);
    }
    f.first = f.full.empty() ? 0 : front_;
  }
  f.expiry_seconds.reserve(runs_.size());
  f.expiry_counts.reserve(runs_.size());
  for (auto& r : runs_) {
    f.expiry_seconds.push_back(r.second);
    f.expiry_counts.push_back(r.count);
  }
  return f;
}

size_t id_window::frozen::size() const {
  size_t n = tail.size();
  if (!full.empty())
    n += full.size() * chunk_ids - first;
  return n;
}

void id_window::frozen::for_each_span(
  const std::function<void(const uint64_t*, size_t)>& f) const {
  for (size_t k = 0; k < full.size(); ++k) {
    auto from = k == 0 ? first : 0;
    f(full[k]->data() + from, chunk_ids - from);
  }
  if (!tail.empty())
    f(tail.data(), tail.size());
}

id_window::image id_window::frozen::to_image() const {
  image img;
  img.fingerprints.reserve(size());
  for_each_span([&](const uint64_t* p, size_t n) {
    img.fingerprints.insert(img.fingerprints.end(), p, p + n);
  });
  img.expiry_seconds = expiry_seconds;
  img.expiry_counts = expiry_counts;
  return img;
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
    // Read in milliseconds later on: a second past that range is damage.
    if (img.expiry_seconds[i] > std::numeric_limits<int64_t>::max() / 1000)
      return "recent session ids: an expiry time is out of range";
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
    push_back(fp);
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
  chunks_.clear();
  front_ = back_ = size_ = 0;
  runs_.clear();
}

} // namespace nodepool
