// Records by id in one flat array: open addressing with linear probing,
// each slot the id's 64-bit hash and a pointer to the entry.
//
// Why not std::unordered_map: its lookup walks a chain of separately
// allocated nodes, and starts from the node *before* the bucket's first,
// which belongs to some other record; an insertion walks the bucket to see
// the key is new. In a pool with thousands of idle records (a deep queue, a
// big pool) those nodes are cold, so every lookup and insertion cost one or
// two cache misses whatever it looked for. Here an operation reads the
// slots of one run of the array (at most half full, so runs are short) and
// touches an entry only when the full 64-bit hash matches: a miss, and an
// insertion, touch none.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <iterator>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace nodepool {

/// The id of a record (anything with `id()`).
struct id_of_record {
  template <class R>
  std::string_view operator()(const R& r) const { return r.id(); }
};

/// Entries are owned elsewhere and must not move while indexed; `KeyOf`
/// gives an entry's id.
template <class Entry, class KeyOf = id_of_record>
class flat_index {
  struct slot {
    uint64_t hash = 0;
    Entry* entry = nullptr;  // null: empty
  };

public:
  Entry* find(std::string_view id) const {
    if (size_ == 0)
      return nullptr;
    auto h = hash(id);
    for (auto i = h & mask_;; i = (i + 1) & mask_) {
      auto& s = slots_[i];
      if (s.entry == nullptr)
        return nullptr;
      if (s.hash == h && KeyOf{}(*s.entry) == id)
        return s.entry;
    }
  }

  /// Adds `e` under its id, which must not be indexed yet.
  void insert(Entry* e) {
    if ((size_ + 1) * 2 > slots_.size())
      resize(slots_.empty() ? 16 : slots_.size() * 2);
    place({hash(KeyOf{}(*e)), e});
    ++size_;
  }

  /// Removes the entry indexed under `id` and returns it; null if none.
  Entry* erase(std::string_view id) {
    if (size_ == 0)
      return nullptr;
    auto h = hash(id);
    auto i = h & mask_;
    for (;; i = (i + 1) & mask_) {
      auto& s = slots_[i];
      if (s.entry == nullptr)
        return nullptr;
      if (s.hash == h && KeyOf{}(*s.entry) == id)
        break;
    }
    auto* gone = slots_[i].entry;
    // Backward shift: a later slot of the run moves into the hole when the
    // hole lies between its home and where it is, so no tombstones build up.
    for (auto j = (i + 1) & mask_;; j = (j + 1) & mask_) {
      auto& s = slots_[j];
      if (s.entry == nullptr)
        break;
      auto home = s.hash & mask_;
      if (((j - home) & mask_) >= ((j - i) & mask_)) {
        slots_[i] = s;
        i = j;
      }
    }
    slots_[i] = {};
    --size_;
    // Memory follows what is indexed: an index that shrank gives it back.
    if (slots_.size() > 64 && size_ * 8 < slots_.size())
      resize(slots_.size() / 2);
    return gone;
  }

  void clear() {
    std::vector<slot>{}.swap(slots_);
    size_ = 0;
    mask_ = 0;
  }

  /// Makes room for `n` entries without growing on the way.
  void reserve(size_t n) {
    size_t want = 16;
    while (want < n * 2)
      want *= 2;
    if (want > slots_.size())
      resize(want);
  }

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  /// Bytes held by the array.
  size_t memory_bytes() const { return slots_.capacity() * sizeof(slot); }

  /// The entries, in no particular order.
  template <class E>
  class basic_iterator {
  public:
    using iterator_category = std::forward_iterator_tag;
    using value_type = Entry;
    using difference_type = std::ptrdiff_t;
    using pointer = E*;
    using reference = E&;
    basic_iterator() = default;
    E& operator*() const { return *at_->entry; }
    E* operator->() const { return at_->entry; }
    basic_iterator& operator++() {
      ++at_;
      skip();
      return *this;
    }
    basic_iterator operator++(int) {
      auto old = *this;
      ++*this;
      return old;
    }
    bool operator==(const basic_iterator& o) const { return at_ == o.at_; }
    bool operator!=(const basic_iterator& o) const { return at_ != o.at_; }

  private:
    friend class flat_index;
    basic_iterator(const slot* at, const slot* end) : at_{at}, end_{end} {
      skip();
    }
    void skip() {
      while (at_ != end_ && at_->entry == nullptr)
        ++at_;
    }
    const slot* at_ = nullptr;
    const slot* end_ = nullptr;
  };
  using iterator = basic_iterator<Entry>;
  using const_iterator = basic_iterator<const Entry>;
  iterator begin() { return {slots_.data(), slots_.data() + slots_.size()}; }
  iterator end() { return {last(), last()}; }
  const_iterator begin() const {
    return {slots_.data(), slots_.data() + slots_.size()};
  }
  const_iterator end() const { return {last(), last()}; }

private:
  const slot* last() const { return slots_.data() + slots_.size(); }

  static uint64_t hash(std::string_view id) {
    return std::hash<std::string_view>{}(id);
  }

  void place(slot x) {
    auto i = x.hash & mask_;
    while (slots_[i].entry != nullptr)
      i = (i + 1) & mask_;
    slots_[i] = x;
  }

  void resize(size_t n) {  // a power of two
    std::vector<slot> old(n);
    old.swap(slots_);
    mask_ = n - 1;
    for (auto& s : old)
      if (s.entry != nullptr)
        place(s);
  }

  std::vector<slot> slots_;
  size_t size_ = 0;
  size_t mask_ = 0;
};

/// Records owned by id: what std::unordered_map<std::string, Record> offers
/// a pool (iteration over (id, record) pairs, size, lookup, insertion,
/// erasure), on a flat_index. Records do not move while they are held.
template <class Record>
class flat_table {
public:
  using value_type = std::pair<const std::string, Record>;

private:
  struct key_of_pair {
    std::string_view operator()(const value_type& p) const { return p.first; }
  };

public:
  flat_table() = default;
  flat_table(const flat_table&) = delete;
  flat_table& operator=(const flat_table&) = delete;
  flat_table(flat_table&& o) noexcept : index_{std::move(o.index_)} {
    o.index_.clear();
  }
  flat_table& operator=(flat_table&& o) noexcept {
    if (this != &o) {
      clear();
      index_ = std::move(o.index_);
      o.index_.clear();
    }
    return *this;
  }
  ~flat_table() { clear(); }

  Record* find(std::string_view id) const {
    auto* e = index_.find(id);
    return e == nullptr ? nullptr : &e->second;
  }
  /// The record under `id`, and whether it was made now (empty) because
  /// there was none. No operator[]: a lookup never makes a record.
  std::pair<Record*, bool> try_emplace(const std::string& id) {
    if (auto* r = find(id))
      return {r, false};
    auto e = std::make_unique<value_type>(id, Record{});
    index_.insert(e.get());
    return {&e.release()->second, true};
  }
  /// Removes the record under `id`; false if there was none.
  bool erase(std::string_view id) {
    std::unique_ptr<value_type> gone{index_.erase(id)};
    return gone != nullptr;
  }
  void clear() {
    for (auto& e : index_)
      delete &e;  // each was made by try_emplace
    index_.clear();
  }
  void reserve(size_t n) { index_.reserve(n); }
  size_t size() const { return index_.size(); }
  bool empty() const { return index_.empty(); }

  using iterator = typename flat_index<value_type, key_of_pair>::iterator;
  using const_iterator =
    typename flat_index<value_type, key_of_pair>::const_iterator;
  iterator begin() { return index_.begin(); }
  iterator end() { return index_.end(); }
  const_iterator begin() const { return index_.begin(); }
  const_iterator end() const { return index_.end(); }

private:
  flat_index<value_type, key_of_pair> index_;
};

} // namespace nodepool
