#pragma once
// Real ACME servers for tests: pebble (with its fault injection on unless told otherwise) and
// pebble-challtestsrv as its DNS (every name resolves to 127.0.0.1, TXT records settable), on
// free loopback ports, with their own TLS certificate, stopped by PID.

#include "core/config/config.h"
#include "tests/support/test_pki.h"
#include "tests/support/test_support.h"

#include <map>
#include <optional>
#include <string>

namespace certagent::test {

struct PebbleOptions {
  bool always_valid{false};                    // PEBBLE_VA_ALWAYS_VALID
  bool no_sleep{true};                         // PEBBLE_VA_NOSLEEP (else 0-15 s per validation)
  std::map<std::string, std::string> eab_keys; // kid -> base64url key; non-empty: EAB required
  int alternate_roots{0};                      // PEBBLE_ALTERNATE_ROOTS
  int chain_length{0};                         // PEBBLE_CHAIN_LENGTH (0: pebble's default)
  int validity_seconds{300};
  std::string dns_server;                      // -dnsserver host:port
  std::map<std::string, std::string> env;      // anything else (PEBBLE_WFE_NONCEREJECT=...)
};

class Pebble {
 public:
  Pebble(const fs::path& dir, PebbleOptions options);
  ~Pebble();

  void start();   // waits until the directory answers
  void stop();
  void restart() { stop(); start(); }

  std::string directory_url() const;
  std::string management_url() const;
  fs::path tls_ca_file() const { return dir_ / "pebble-tls-ca.pem"; }  // trust for the ACME API
  int http_port() const { return http_port_; }                        // where the VA does http-01
  // GET /roots/<i> (and /intermediates/<i>) on the management port: pebble makes new ones at start.
  std::string root_pem(int index = 0) const;
  std::string intermediate_pem(int index = 0) const;
  fs::path log_file() const { return dir_ / "pebble.log"; }
  // An `acme` broker named "pebble" for this server, http-01 answered on `http01_listen`.
  config::BrokerConfig broker_config(const std::string& http01_listen) const;

 private:
  fs::path dir_;
  PebbleOptions options_;
  TestCert ca_;
  int port_{0}, management_port_{0}, http_port_{0}, tls_port_{0};
  std::optional<Process> process_;
};

class ChallTestSrv {
 public:
  explicit ChallTestSrv(const fs::path& dir);
  ~ChallTestSrv();
  std::string dns_address() const { return "127.0.0.1:" + std::to_string(dns_port_); }
  std::string management_url() const { return "http://127.0.0.1:" + std::to_string(management_port_); }

 private:
  int dns_port_{0}, management_port_{0};
  std::optional<Process> process_;
};

// A synchronous GET for fixtures (trusting `ca_file`; plain http when the URL says so).
std::string http_get(const std::string& url, const fs::path& ca_file = {}, int* status = nullptr);

}  // namespace certagent::test
