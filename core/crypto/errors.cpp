#include "core/crypto/errors.h"

#include <openssl/err.h>

namespace certagent::crypto {
namespace {

// A failing call can queue a dozen entries; the first few say what went wrong.
constexpr int kMaxReasons = 6;

}  // namespace

std::string drain_openssl_errors() {
  std::string out;
  int count = 0;
  const char* data = nullptr;
  int flags = 0;
  while (unsigned long code = ERR_get_error_all(nullptr, nullptr, nullptr, &data, &flags)) {
    if (++count > kMaxReasons) continue;  // keep draining, stop reporting
    char buf[256];
    ERR_error_string_n(code, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
    if ((flags & ERR_TXT_STRING) && data && *data) {
      out += " (";
      out += data;
      out += ")";
    }
  }
  if (count > kMaxReasons) out += "; ...";
  return out;
}

void clear_openssl_errors() { ERR_clear_error(); }

Error openssl_error(std::string_view context) {
  std::string reasons = drain_openssl_errors();
  if (reasons.empty()) reasons = "unknown OpenSSL error";
  return make_error(std::string(context) + ": " + reasons);
}

}  // namespace certagent::crypto
