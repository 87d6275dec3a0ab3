#pragma once
// A string holding secret bytes (private key PEM, tokens): wiped with OPENSSL_cleanse when it
// is destroyed or reassigned. Move-only so no stray copies linger in memory.

#include <openssl/crypto.h>

#include <memory>
#include <string>
#include <string_view>
#include <utility>

namespace certagent {

class Secret {
 public:
  Secret() = default;
  explicit Secret(std::string value) : value_(std::move(value)) {}
  Secret(const char* data, std::size_t size) : value_(data, size) {}
  Secret(const Secret&) = delete;
  Secret& operator=(const Secret&) = delete;
  Secret(Secret&& other) noexcept : value_(std::move(other.value_)) { other.wipe(); }
  Secret& operator=(Secret&& other) noexcept {
    if (this != &other) {
      wipe();
      value_ = std::move(other.value_);
      other.wipe();
    }
    return *this;
  }
  ~Secret() { wipe(); }

  std::string_view view() const { return value_; }
  const char* data() const { return value_.data(); }
  std::size_t size() const { return value_.size(); }
  bool empty() const { return value_.empty(); }
  // An explicit copy, for the rare place that needs two owners (each wipes its own).
  Secret clone() const { return Secret(value_); }

  void wipe() {
    if (!value_.empty()) OPENSSL_cleanse(value_.data(), value_.size());
    value_.clear();
  }

 private:
  std::string value_;
};

// An allocator that wipes memory before handing it back, for containers that hold secrets
// they were not built for (HTTP header fields carrying a bearer token).
template <class T, class Upstream = std::allocator<T>>
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
