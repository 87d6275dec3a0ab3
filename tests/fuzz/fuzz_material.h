#pragma once
// Shared by the harnesses that serve certificates (socket_api, sidecar): a certificate's
// configuration, and a real leaf with its key, issued by the local CA, as the store holds it.

#include "agent/store.h"
#include "core/clock.h"
#include "core/crypto/csr.h"
#include "core/crypto/keys.h"
#include "core/crypto/x509.h"
#include "renewers/local_renewer.h"
#include "tests/fuzz/fuzz_util.h"

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace certagent::fuzz {

// A certificate "<name>" from broker "dev" for "<name>.internal" (and `uri` if given), served on
// the socket to `uids` only.
inline config::CertificateConfig cert_config(const std::string& name, std::vector<std::uint32_t> uids,
                                             const std::string& uri = {}) {
  config::CertificateConfig c;
  c.name = name;
  c.broker = "dev";
  c.common_name = name + ".internal";
  if (!uri.empty()) c.uris = {uri};
  c.socket.allow_uids = std::move(uids);
  return c;
}

// A leaf for "<name>.internal", valid 24 h from the clock's now.
inline MaterialPtr make_material(const std::filesystem::path& state_dir, const Clock& clock,
                                 const std::string& name) {
  auto key = crypto::generate_key(crypto::KeyType::ecdsa_p256);
  FUZZ_REQUIRE(key.has_value(), "generate_key");
  crypto::SubjectNames names{name + ".internal", {name + ".internal"}, {}, {}};
  auto csr = crypto::build_csr(key->get(), names);
  FUZZ_REQUIRE(csr.has_value(), "build_csr");
  auto ca = renewers::LocalRenewer::open(state_dir, &clock);
  FUZZ_REQUIRE(ca.has_value(), "local CA");
  renewers::IssueRequest request;
  request.cert_name = name;
  request.csr_pem = *csr;
  request.common_name = names.common_name;
  request.dns_names = names.dns_names;
  request.lifetime = std::chrono::hours(24);
  auto issued = (*ca)->issue_now(request);
  FUZZ_REQUIRE(issued.has_value(), "issue");
  auto chain = crypto::parse_chain(issued->chain_pem);
  FUZZ_REQUIRE(chain.has_value(), "chain");
  const crypto::CertInfo info = crypto::describe(chain->front().get());
  auto key_pem = crypto::private_key_pem(key->get());
  FUZZ_REQUIRE(key_pem.has_value(), "key PEM");
  auto m = std::make_shared<Material>();
  m->cert_pem = crypto::to_pem(chain->front().get());
  m->key_pem = std::move(*key_pem);
  m->serial_hex = info.serial_hex;
  m->not_before = info.not_before;
  m->not_after = info.not_after;
  m->sha256_hex = info.sha256_hex;
  m->broker = "dev";
  return m;
}

}  // namespace certagent::fuzz
