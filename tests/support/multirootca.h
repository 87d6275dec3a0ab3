#pragma once
// multirootca (and `cfssl serve`) for tests: a CA made by `cfssl genkey -initca`, signing
// profiles that all require the HMAC auth key, TLS with a test certificate, a free port.
// Short-lived profiles mind cfssl's backdate: not_before = round(now, 1 min) - backdate, and
// not_after = not_before + expiry, so expiry = wanted lifetime + backdate.

#include "tests/support/test_pki.h"
#include "tests/support/test_support.h"

#include <optional>
#include <string>

namespace certagent::test {

class Multirootca {
 public:
  enum class Kind { multirootca, cfssl_serve };
  Multirootca(const fs::path& dir, Kind kind = Kind::multirootca);
  ~Multirootca();

  void start();
  void stop();

  std::string url() const { return "https://127.0.0.1:" + std::to_string(port_); }
  fs::path tls_ca_file() const { return dir_ / "broker-tls-ca.pem"; }
  fs::path ca_file() const { return dir_ / "ca.pem"; }   // the issuing CA (trust bundle)
  std::string auth_key_hex() const { return key_hex_; }
  fs::path auth_key_file() const { return dir_ / "cfssl-auth.key"; }

 private:
  fs::path dir_;
  Kind kind_;
  int port_{0};
  std::string key_hex_;
  std::optional<Process> process_;
};

}  // namespace certagent::test
