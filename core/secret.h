#pragma once
// Secret bytes (private key PEM, the socket's key bundles, tokens, unsealed broker secrets) in
// locked memory (core/locked_memory.h: not swapped, not in core dumps), wiped when destroyed or
// reassigned. No small-string buffer: even a short token never sits inside the object. Move-only
// so no stray copies linger in memory.

#include "core/locked_memory.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

namespace certagent {

class Secret {
 public:
  Secret() noexcept = default;
  // Copies `value` into locked memory and wipes the string it came in (pass it with std::move
  // so the caller's buffer is the one wiped).
  explicit Secret(std::string value) : Secret(value.data(), value.size()) {
    if (!value.empty()) OPENSSL_cleanse(value.data(), value.size());
  }
  Secret(const char* data, std::size_t size) { append(std::string_view(data, size)); }
  Secret(const Secret&) = delete;
  Secret& operator=(const Secret&) = delete;
  Secret(Secret&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)),
        size_(std::exchange(other.size_, 0)),
        capacity_(std::exchange(other.capacity_, 0)) {}
  Secret& operator=(Secret&& other) noexcept {
    if (this != &other) {
      wipe();
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
      capacity_ = std::exchange(other.capacity_, 0);
    }
    return *this;
  }
  ~Secret() { wipe(); }

  std::string_view view() const noexcept { return {data(), size_}; }
  const char* data() const noexcept { return data_ ? data_ : ""; }
  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  // An explicit copy, for the rare place that needs two owners (each wipes its own).
  Secret clone() const { return Secret(data_, size_); }

  // Room for `capacity` bytes without another allocation (a serializer that knows the size).
  void reserve(std::size_t capacity) {
    if (capacity <= capacity_) return;
    char* bigger = static_cast<char*>(locked_memory::allocate(capacity));
    if (size_) std::memcpy(bigger, data_, size_);
    locked_memory::deallocate(data_, capacity_);  // wipes the old block
    data_ = bigger;
    capacity_ = capacity;
  }
  // Appends; when it has to grow, the old block is wiped as it is given back.
  void append(std::string_view piece) {
    if (piece.empty()) return;
    if (size_ + piece.size() > capacity_) reserve(std::max(capacity_ * 2, size_ + piece.size()));
    std::memcpy(data_ + size_, piece.data(), piece.size());
    size_ += piece.size();
  }

  // Wipes the bytes and gives the memory back.
  void wipe() noexcept {
    locked_memory::deallocate(data_, capacity_);
    data_ = nullptr;
    size_ = 0;
    capacity_ = 0;
  }

 private:
  char* data_{nullptr};  // locked_memory block of capacity_ bytes; no small-string buffer
  std::size_t size_{0};
  std::size_t capacity_{0};
};

// An allocator that wipes memory before handing it back, for containers that hold secrets
// they were not built for (HTTP header fields carrying a bearer token). By default the memory
// is locked too (locked_memory::LockedAllocator).
template <class T, class Upstream = locked_memory::LockedAllocator<T>>
struct CleansingAllocator {
  using value_type = T;
  template <class U>
  struct rebind {
    using other = CleansingAllocator<U, typename std::allocator_traits<Upstream>::template rebind_alloc<U>>;
  };

  CleansingAllocator() noexcept = default;
  template <class U, class V>
  CleansingAllocator(const CleansingAllocator<U, V>& other) noexcept : upstream(other.upstream) {}

  T* allocate(std::size_t n) { return upstream.allocate(n); }
  void deallocate(T* p, std::size_t n) noexcept {
    OPENSSL_cleanse(p, n * sizeof(T));
    upstream.deallocate(p, n);
  }
  template <class U, class V>
  bool operator==(const CleansingAllocator<U, V>& other) const noexcept {
    return upstream == other.upstream;
  }

  Upstream upstream;
};

}  // namespace certagent
