#include "tests/integration/tpm_brokers/tpm_broker_rig.h"

#include "core/async/semaphore.h"
#include "core/crypto/csr.h"
#include "core/crypto/keys.h"
#include "renewers/acme_renewer.h"
#include "renewers/broker_keys.h"
#include "renewers/cfssl_config.h"
#include "renewers/cfssl_renewer.h"
#include "renewers/lemur_config.h"
#include "renewers/lemur_renewer.h"
#include "renewers/local_renewer.h"
#include "tests/support/run_sync.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>

#include <stdexcept>

namespace certagent::test {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

template <class T>
T must(Result<T> r, const std::string& what) {
  if (!r) throw std::runtime_error(what + ": " + r.error().message);
  return std::move(*r);
}

}  // namespace

const char* broker_name(Broker b) {
  switch (b) {
    case Broker::local: return "local";
    case Broker::cfssl: return "cfssl";
    case Broker::lemur: return "lemur";
    case Broker::acme: return "acme";
  }
  return "?";
}

TpmBrokerRig::TpmBrokerRig(std::set<Broker> brokers, tpm_proxy::LatencyModel model) {
  swtpm_.emplace(dir_ / "swtpm");
  proxy_ = std::make_unique<tpm_proxy::TpmProxy>(
      tpm_proxy::TpmProxy::Options{swtpm_->socket_path(), dir_ / "proxy.sock", std::move(model), 1});
  identity_ = must(tpm::TpmIdentity::open({dir_ / "identity", proxy_->tcti(), "enroll"},
                                          tpm::OpenMode::create_if_missing),
                   "opening the TPM identity");
  const renewers::RenewerContext context{ioc_.get_executor(), identity_.get(), dir_ / "state", nullptr};
  fs::create_directories(dir_ / "state");

  if (brokers.count(Broker::local))
    renewers_[Broker::local] = must(renewers::LocalRenewer::open(dir_ / "state", nullptr), "local CA");

  if (brokers.count(Broker::cfssl)) {
    cfssl_.emplace(dir_ / "cfssl");
    // What `certagent enroll` does with auth_key_file.
    auto key = must(renewers::parse_hex_key_text(cfssl_->auth_key_hex()), "cfssl key");
    if (auto r = identity_->import_hmac_key(renewers::cfssl_auth_key_name("pki"), key); !r)
      throw std::runtime_error("import_hmac_key: " + r.error().message);
    config::BrokerConfig b;
    b.name = "pki";
    b.type = "cfssl";
    b.timeout = 20s;
    renewers::CfsslRenewerConfig c;
    c.url = cfssl_->url();
    c.ca_bundle = cfssl_->tls_ca_file();
    b.settings = c;
    renewers_[Broker::cfssl] = must(renewers::CfsslRenewer::create(b, context), "cfssl renewer");
  }

  if (brokers.count(Broker::lemur)) {
    lemur_.emplace();
    lemur_->add_authority("InternalCA", "pki@example.com");
    const std::string token = lemur_->create_api_key(lemur_->add_user("host-agent", {"pki@example.com"}));
    write_file(dir_ / "lemur-ca.pem", lemur_->tls_ca_pem());
    // What `certagent enroll` does with token_file.
    if (auto r = identity_->seal(renewers::lemur_token_name("netflix"),
                                 std::span(reinterpret_cast<const std::uint8_t*>(token.data()), token.size()));
        !r)
      throw std::runtime_error("seal: " + r.error().message);
    config::BrokerConfig b;
    b.name = "netflix";
    b.type = "lemur";
    b.timeout = 20s;
    renewers::LemurRenewerConfig c;
    c.url = lemur_->url();
    c.ca_bundle = dir_ / "lemur-ca.pem";
    c.token_file = dir_ / "lemur.jwt";
    c.authority = "InternalCA";
    c.owner = "platform-security@example.com";
    b.settings = c;
    renewers_[Broker::lemur] = must(renewers::LemurRenewer::create(b, context), "lemur renewer");
  }

  if (brokers.count(Broker::acme)) {
    // VA always valid, no badNonce injection, every valid authorization reused: the same
    // requests every time (the count of signatures per issuance is asserted against the
    // renewer's own count of JWS requests). A new name is validated; a renewal of a name
    // validated before reuses its authorization, as Let's Encrypt does for 30 days.
    fs::create_directories(dir_ / "pebble");
    pebble_.emplace(dir_ / "pebble", PebbleOptions{.always_valid = true,
                                                   .env = {{"PEBBLE_WFE_NONCEREJECT", "0"},
                                                           {"PEBBLE_AUTHZREUSE", "100"}}});
    auto b = pebble_->broker_config("127.0.0.1:" + std::to_string(pebble_->http_port()));
    b.timeout = 20s;
    renewers_[Broker::acme] = must(renewers::AcmeRenewer::create(b, context), "acme renewer");
  }
}

TpmBrokerRig::~TpmBrokerRig() {
  renewers_.clear();
  identity_.reset();
  proxy_.reset();
}

renewers::Renewer& TpmBrokerRig::renewer(Broker b) {
  auto it = renewers_.find(b);
  if (it == renewers_.end()) throw std::runtime_error(std::string("broker not started: ") + broker_name(b));
  return *it->second;
}

renewers::IssueRequest TpmBrokerRig::make_request(const std::string& name) const {
  auto key = must(crypto::generate_key(crypto::KeyType::ecdsa_p256), "key");
  const std::string host = name + ".certagent.test";
  crypto::SubjectNames names{.common_name = host, .dns_names = {host}};
  renewers::IssueRequest request;
  request.cert_name = name;
  request.csr_pem = must(crypto::build_csr(key.get(), names), "CSR");
  request.common_name = host;
  request.dns_names = {host};
  request.lifetime = 10min;
  return request;
}

RigIssued TpmBrokerRig::issue(Broker b, const std::string& name) {
  RigIssued out;
  auto request = make_request(name);
  const auto before = proxy_->stats();
  const auto t0 = Clock::now();
  out.result = run_sync(ioc_, renewer(b).issue(std::move(request)));
  out.wall = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0);
  out.tpm = proxy_->stats().since(before);
  return out;
}

StormResult TpmBrokerRig::storm(Broker b, int n, std::size_t max_in_flight) {
  StormResult out;
  renewers::Renewer& r = renewer(b);
  AsyncSemaphore slots(ioc_.get_executor(), max_in_flight);
  int done = 0;
  const auto before = proxy_->stats();
  const auto t0 = Clock::now();
  for (int i = 0; i < n; ++i) {
    boost::asio::co_spawn(
        ioc_,
        [&, i]() -> boost::asio::awaitable<void> {
          co_await slots.acquire();
          SemaphoreSlot slot(slots);
          // The slot first, then the key and CSR: as the certificate loop does.
          auto request = make_request("storm-" + std::to_string(i));
          auto result = co_await r.issue(std::move(request));
          if (result) {
            ++out.issued;
          } else {
            if (out.first_error.empty()) out.first_error = result.error().message;
            ++out.failed;
          }
          if (++done == n) ioc_.stop();
        },
        boost::asio::detached);
  }
  ioc_.restart();
  ioc_.run();
  out.wall = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0);
  out.tpm = proxy_->stats().since(before);
  return out;
}

}  // namespace certagent::test
