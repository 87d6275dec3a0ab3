#pragma once
// Every broker with the TPM identity behind the TPM latency model: swtpm <- tpm_proxy <- the
// identity, and real brokers (multirootca for cfssl, the Lemur stand-in, pebble for ACME, the
// local CA). For the tests that count TPM commands per issuance and for bench/tpm.

#include "renewers/renewer.h"
#include "tests/integration/lemur/lemur_test_server.h"
#include "tests/support/multirootca.h"
#include "tests/support/pebble.h"
#include "tests/support/swtpm.h"
#include "tests/support/test_support.h"
#include "tests/support/tpm_proxy/tpm_proxy.h"
#include "tpm/tpm_identity.h"

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <memory>
#include <optional>
#include <set>
#include <string>

namespace certagent::test {

enum class Broker { local, cfssl, lemur, acme };
const char* broker_name(Broker b);

struct RigIssued {
  Result<renewers::IssueResult> result{make_error("not run")};
  tpm_proxy::ProxyStats tpm;  // the TPM commands of this issuance
  std::chrono::microseconds wall{};
};

struct StormResult {
  int issued{0};
  int failed{0};
  std::string first_error;
  tpm_proxy::ProxyStats tpm;
  std::chrono::microseconds wall{};
};

class TpmBrokerRig {
 public:
  // Starts swtpm, the proxy (model `model`), the TPM identity through the proxy, and the given
  // brokers with their secrets in the identity (cfssl auth key imported, Lemur API key sealed).
  TpmBrokerRig(std::set<Broker> brokers, tpm_proxy::LatencyModel model = tpm_proxy::LatencyModel::none());
  ~TpmBrokerRig();

  tpm_proxy::TpmProxy& proxy() { return *proxy_; }
  tpm::TpmIdentity& identity() { return *identity_; }
  renewers::Renewer& renewer(Broker b);
  boost::asio::io_context& ioc() { return ioc_; }
  const fs::path& dir() const { return dir_.path(); }

  // One issuance with a fresh ECDSA P-256 key and CSR, as the certificate loop makes it.
  RigIssued issue(Broker b, const std::string& name = "web");
  // `n` certificates due at once, at most `max_in_flight` at the broker at a time (the loops'
  // per-broker slot), all on this io_context.
  StormResult storm(Broker b, int n, std::size_t max_in_flight = 4);

  renewers::IssueRequest make_request(const std::string& name) const;

 private:
  boost::asio::io_context ioc_;
  TempDir dir_{"certagent-tpmrig"};
  std::optional<tpm::test::Swtpm> swtpm_;
  std::unique_ptr<tpm_proxy::TpmProxy> proxy_;
  std::unique_ptr<tpm::TpmIdentity> identity_;
  std::optional<Multirootca> cfssl_;
  std::optional<LemurTestServer> lemur_;
  std::optional<Pebble> pebble_;
  std::map<Broker, std::unique_ptr<renewers::Renewer>> renewers_;
};

}  // namespace certagent::test
