#pragma once
// A string holding secret bytes (private key PEM, tokens): wiped with OPENSSL_cleanse when it
// is destroyed or reassigned. Move-only so no stray copies linger in memory.

#include <openssl/crypto.h>

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

}  // namespace certagent
