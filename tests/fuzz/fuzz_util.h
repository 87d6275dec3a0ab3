#pragma once
// Shared by the libFuzzer harnesses: an invariant check that aborts (libFuzzer records the input
// as a crash), a limit on waiting, quiet logging, and the input as text.

#include "core/logging.h"

#include <openssl/evp.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

// A broken invariant is a finding like a crash: abort with the condition and a message.
#define FUZZ_REQUIRE(cond, msg)                                                           \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      std::fprintf(stderr, "invariant failed at %s:%d: %s: %s\n", __FILE__, __LINE__, #cond, \
                   std::string(msg).c_str());                                              \
      std::abort();                                                                       \
    }                                                                                     \
  } while (0)

namespace certagent::fuzz {

// How long a harness waits for the code under test: rounds in which nothing happened (no
// handler ran, no byte moved), each waiting `per_round` at most, up to 10 s of them. Counting
// idle rounds, not wall time, keeps a harness starved of CPU or stopped (a loaded machine, a
// SIGSTOP) from reporting a hang it does not have; libFuzzer's -timeout bounds everything else.
class IdleLimit {
 public:
  explicit IdleLimit(std::chrono::milliseconds per_round = std::chrono::milliseconds(1))
      : left_(std::chrono::milliseconds(10'000) / per_round) {}
  // After each round: false once the idle rounds are spent.
  bool round(bool progress) { return progress || left_-- > 0; }

 private:
  long left_;
};

inline std::string_view text_of(const std::uint8_t* data, std::size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// DER bytes in PEM armour ("-----BEGIN <type>-----", base64 in 64-column lines): lets the
// fuzzer mutate the ASN.1 structure itself instead of base64 text.
inline std::string pem_armor(std::string_view type, std::string_view der) {
  std::string out = "-----BEGIN " + std::string(type) + "-----\n";
  for (std::size_t pos = 0; pos < der.size(); pos += 48) {
    const std::size_t n = std::min<std::size_t>(48, der.size() - pos);
    unsigned char line[65];
    const int len = EVP_EncodeBlock(line, reinterpret_cast<const unsigned char*>(der.data() + pos),
                                    static_cast<int>(n));
    out.append(reinterpret_cast<const char*>(line), static_cast<std::size_t>(len));
    out += '\n';
  }
  out += "-----END " + std::string(type) + "-----\n";
  return out;
}

// Errors only: a parser's rejections are the normal case here, and logging each one would cost
// more than the parsing.
inline void quiet_logging() {
  log::init(log::Options{.level = "error", .format = "text"});
  spdlog::set_level(spdlog::level::off);
}

}  // namespace certagent::fuzz
