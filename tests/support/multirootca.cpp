#include "tests/support/multirootca.h"

#include "tests/support/pebble.h"

#include <openssl/rand.h>

#include <stdexcept>

namespace certagent::test {

Multirootca::Multirootca(const fs::path& dir, Kind kind) : dir_(dir), kind_(kind) {
  fs::create_directories(dir_);
  write_file(dir_ / "ca-csr.json", R"({"CN":"certagent test cfssl CA","key":{"algo":"ecdsa","size":256}})");
  auto genkey = run({"/bin/sh", "-c",
                     "cd '" + dir_.string() + "' && '" + require_program("cfssl").string() +
                         "' genkey -initca ca-csr.json | '" + require_program("cfssljson").string() + "' -bare ca"});
  if (genkey.exit_code != 0) throw std::runtime_error("cfssl genkey: " + genkey.err);

  unsigned char key[16];
  RAND_bytes(key, sizeof key);
  static const char* kHex = "0123456789abcdef";
  for (unsigned char b : key) {
    key_hex_ += kHex[b >> 4];
    key_hex_ += kHex[b & 15];
  }
  write_file(auth_key_file(), key_hex_ + "\n", fs::perms(0600));
  // Every profile has an auth_key, so only authsign signs. "short": a 2 minute certificate;
  // "brief": 20-80 s left at issuance (not_before = round(now, 1 min) - 30 s, + 80 s).
  std::string usages = R"("usages":["digital signature","key encipherment","server auth","client auth"])";
  write_file(dir_ / "config.json",
             R"({"signing":{"default":{"expiry":"6m","backdate":"1m","auth_key":"agent",)" + usages +
                 R"(},"profiles":{"short":{"expiry":"3m","backdate":"1m","auth_key":"agent",)" + usages +
                 R"(},"brief":{"expiry":"80s","backdate":"30s","auth_key":"agent",)" + usages +
                 R"(}}},"auth_keys":{"agent":{"type":"standard","key":")" + key_hex_ + R"("}}})");
  write_file(dir_ / "roots.conf", "[primary]\nprivate = file://" + (dir_ / "ca-key.pem").string() +
                                      "\ncertificate = " + (dir_ / "ca.pem").string() +
                                      "\nconfig = " + (dir_ / "config.json").string() + "\n");
  TestCert tls_ca = make_cert(CertSpec{.common_name = "cfssl TLS CA", .is_ca = true, .lifetime = std::chrono::hours(24)});
  TestCert tls = make_cert(CertSpec{.common_name = "127.0.0.1", .dns_names = {"localhost"},
                                    .ip_addresses = {"127.0.0.1"}, .lifetime = std::chrono::hours(24)},
                           &tls_ca);
  write_file(tls_ca_file(), tls_ca.cert_pem());
  write_file(dir_ / "broker-tls.pem", tls.cert_pem());
  write_file(dir_ / "broker-tls.key", tls.key_pem(), fs::perms(0600));
  port_ = free_tcp_port();
  start();
}

Multirootca::~Multirootca() { stop(); }

void Multirootca::start() {
  std::vector<std::string> argv;
  if (kind_ == Kind::multirootca) {
    argv = {require_program("multirootca").string(), "-a", "127.0.0.1:" + std::to_string(port_), "-roots",
            (dir_ / "roots.conf").string(), "-l", "primary", "-tls-cert", (dir_ / "broker-tls.pem").string(),
            "-tls-key", (dir_ / "broker-tls.key").string()};
  } else {
    argv = {require_program("cfssl").string(), "serve", "-address", "127.0.0.1", "-port", std::to_string(port_),
            "-ca", (dir_ / "ca.pem").string(), "-ca-key", (dir_ / "ca-key.pem").string(), "-config",
            (dir_ / "config.json").string(), "-tls-cert", (dir_ / "broker-tls.pem").string(), "-tls-key",
            (dir_ / "broker-tls.key").string()};
  }
  process_.emplace(argv, Process::Options{.stdout_file = dir_ / "cfssl.log", .stderr_file = dir_ / "cfssl.err.log"});
  bool up = wait_until(
      [&] {
        int status = 0;
        http_get(url() + "/api/v1/cfssl/health", tls_ca_file(), &status);
        return status != 0;
      },
      std::chrono::seconds(15), std::chrono::milliseconds(20));
  if (!up) throw std::runtime_error("cfssl did not start; see " + (dir_ / "cfssl.err.log").string());
}

void Multirootca::stop() {
  if (process_) {
    process_->stop();
    process_.reset();
  }
}

}  // namespace certagent::test
