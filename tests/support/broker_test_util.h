#pragma once
// One issuance through a renewer, the way the daemon does it: a fresh key, a CSR from the
// core's crypto, the renewer, then the core's validate_issued against the given roots.

#include "core/config/config.h"
#include "core/crypto/csr.h"
#include "core/crypto/keys.h"
#include "core/crypto/x509.h"
#include "core/crypto/validation.h"
#include "renewers/renewer.h"
#include "tests/support/run_sync.h"

#include <boost/asio/io_context.hpp>

#include <stdexcept>

namespace certagent::test {

struct Issued {
  Result<renewers::IssueResult> result{make_error("not run")};
  crypto::EvpPkeyPtr key;
  crypto::SubjectNames names;
  std::chrono::milliseconds wall{};
};

inline Issued issue_once(boost::asio::io_context& ioc, renewers::Renewer& renewer, const crypto::SubjectNames& names,
                         config::Duration lifetime, std::string previous_cert_pem = {}) {
  Issued out;
  out.names = names;
  auto key = crypto::generate_key(crypto::KeyType::ecdsa_p256);
  if (!key) throw std::runtime_error(key.error().message);
  out.key = std::move(*key);
  auto csr = crypto::build_csr(out.key.get(), names);
  if (!csr) throw std::runtime_error(csr.error().message);
  renewers::IssueRequest request;
  request.cert_name = "test";
  request.csr_pem = *csr;
  request.common_name = names.common_name;
  request.dns_names = names.dns_names;
  request.ip_addresses = names.ip_addresses;
  request.uris = names.uris;
  request.lifetime = lifetime;
  request.previous_cert_pem = std::move(previous_cert_pem);
  auto start = std::chrono::steady_clock::now();
  out.result = run_sync(ioc, renewer.issue(std::move(request)));
  out.wall = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
  return out;
}

// validate_issued against `roots_pem` (the anchors), as the daemon does before committing.
inline Result<Material> validate(const Issued& issued, const std::string& roots_pem,
                                 config::Duration max_lifetime = std::chrono::hours(1)) {
  if (!issued.result) return issued.result.error();
  auto store = crypto::trust_store_from_pem(roots_pem);
  if (!store) return store.error();
  ValidationInput input;
  input.chain_pem = issued.result->chain_pem;
  input.key = issued.key.get();
  input.requested = issued.names;
  input.trust = store->get();
  input.max_lifetime = max_lifetime;
  input.now = std::chrono::system_clock::now();
  input.broker = "test";
  return validate_issued(input);
}

}  // namespace certagent::test
