#include "tests/support/pebble.h"

#include "core/http/client.h"
#include "renewers/acme_config.h"
#include "tests/support/run_sync.h"

#include <boost/asio/io_context.hpp>

#include <stdexcept>

namespace certagent::test {

std::string http_get(const std::string& url, const fs::path& ca_file, int* status) {
  boost::asio::io_context ioc;
  auto client = http::Client::create(ioc.get_executor(), http::ClientOptions{.ca_bundle = ca_file,
                                                                             .timeout = std::chrono::seconds(5)});
  if (!client) throw std::runtime_error(client.error().message);
  auto res = run_sync(ioc, (*client)->get(url));
  if (!res) {
    if (status) *status = 0;
    return res.error().message;
  }
  if (status) *status = static_cast<int>(res->status);
  return res->body;
}

Pebble::Pebble(const fs::path& dir, PebbleOptions options)
    : dir_(dir), options_(std::move(options)),
      ca_(make_cert(CertSpec{.common_name = "Pebble API test CA", .is_ca = true, .lifetime = std::chrono::hours(24)})) {
  TestCert leaf = make_cert(CertSpec{.common_name = "localhost",
                                     .dns_names = {"localhost"},
                                     .ip_addresses = {"127.0.0.1"},
                                     .lifetime = std::chrono::hours(24)},
                            &ca_);
  write_file(dir_ / "pebble-tls-ca.pem", ca_.cert_pem());
  write_file(dir_ / "pebble-tls.pem", leaf.cert_pem());
  write_file(dir_ / "pebble-tls.key", leaf.key_pem(), fs::perms(0600));
  port_ = free_tcp_port();
  management_port_ = free_tcp_port();
  http_port_ = free_tcp_port();
  tls_port_ = free_tcp_port();
  std::string eab;
  for (const auto& [kid, key] : options_.eab_keys) eab += (eab.empty() ? "" : ",") + std::string("\"") + kid + "\":\"" + key + "\"";
  std::string config = "{\"pebble\":{\"listenAddress\":\"127.0.0.1:" + std::to_string(port_) +
                       "\",\"managementListenAddress\":\"127.0.0.1:" + std::to_string(management_port_) +
                       "\",\"certificate\":\"" + (dir_ / "pebble-tls.pem").string() +
                       "\",\"privateKey\":\"" + (dir_ / "pebble-tls.key").string() +
                       "\",\"httpPort\":" + std::to_string(http_port_) + ",\"tlsPort\":" + std::to_string(tls_port_) +
                       ",\"ocspResponderURL\":\"\",\"externalAccountBindingRequired\":" +
                       (options_.eab_keys.empty() ? "false" : "true") + ",\"externalAccountMACKeys\":{" + eab +
                       "},\"certificateValidityPeriod\":" + std::to_string(options_.validity_seconds) + "}}";
  write_file(dir_ / "pebble.json", config);
  start();
}

Pebble::~Pebble() { stop(); }

void Pebble::start() {
  Process::Options po;
  po.env = options_.env;
  if (options_.always_valid) po.env["PEBBLE_VA_ALWAYS_VALID"] = "1";
  if (options_.no_sleep) po.env["PEBBLE_VA_NOSLEEP"] = "1";
  if (options_.alternate_roots > 0) po.env["PEBBLE_ALTERNATE_ROOTS"] = std::to_string(options_.alternate_roots);
  if (options_.chain_length > 0) po.env["PEBBLE_CHAIN_LENGTH"] = std::to_string(options_.chain_length);
  po.stdout_file = log_file();
  po.stderr_file = dir_ / "pebble.err.log";
  std::vector<std::string> argv{require_program("pebble").string(), "-config", (dir_ / "pebble.json").string(),
                                "-strict=false"};
  if (!options_.dns_server.empty()) {
    argv.push_back("-dnsserver");
    argv.push_back(options_.dns_server);
  }
  process_.emplace(argv, po);
  bool up = wait_until(
      [&] {
        int status = 0;
        http_get(directory_url(), tls_ca_file(), &status);
        return status == 200;
      },
      std::chrono::seconds(20), std::chrono::milliseconds(20));
  if (!up) throw std::runtime_error("pebble did not start; see " + log_file().string());
}

void Pebble::stop() {
  if (process_) {
    process_->stop();
    process_.reset();
  }
}

config::BrokerConfig Pebble::broker_config(const std::string& http01_listen) const {
  config::BrokerConfig b;
  b.name = "pebble";
  b.type = "acme";
  b.timeout = std::chrono::seconds(20);
  renewers::AcmeRenewerConfig a;
  a.directory = directory_url();
  a.ca_bundle = tls_ca_file();
  a.challenge.type = "http-01";
  a.challenge.listen = http01_listen;
  b.settings = a;
  return b;
}

std::string Pebble::directory_url() const { return "https://127.0.0.1:" + std::to_string(port_) + "/dir"; }
std::string Pebble::management_url() const { return "https://127.0.0.1:" + std::to_string(management_port_); }

std::string Pebble::root_pem(int index) const {
  int status = 0;
  std::string body = http_get(management_url() + "/roots/" + std::to_string(index), tls_ca_file(), &status);
  if (status != 200) throw std::runtime_error("pebble /roots: " + body);
  return body;
}

std::string Pebble::intermediate_pem(int index) const {
  int status = 0;
  std::string body = http_get(management_url() + "/intermediates/" + std::to_string(index), tls_ca_file(), &status);
  if (status != 200) throw std::runtime_error("pebble /intermediates: " + body);
  return body;
}

ChallTestSrv::ChallTestSrv(const fs::path& dir) {
  dns_port_ = free_tcp_port();
  management_port_ = free_tcp_port();
  Process::Options po;
  po.stdout_file = dir / "challtestsrv.log";
  po.stderr_file = dir / "challtestsrv.err.log";
  process_.emplace(std::vector<std::string>{require_program("pebble-challtestsrv").string(), "-dns01",
                                            "127.0.0.1:" + std::to_string(dns_port_), "-management",
                                            "127.0.0.1:" + std::to_string(management_port_), "-http01", "",
                                            "-https01", "", "-tlsalpn01", "", "-defaultIPv6", ""},
                   po);
  bool up = wait_until(
      [&] {
        int status = 0;
        http_get(management_url() + "/", {}, &status);
        return status != 0;
      },
      std::chrono::seconds(10), std::chrono::milliseconds(20));
  if (!up) throw std::runtime_error("pebble-challtestsrv did not start");
}

ChallTestSrv::~ChallTestSrv() {
  if (process_) process_->stop();
}

}  // namespace certagent::test
