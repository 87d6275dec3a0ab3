#pragma once
// What the sidecar API sends, built from the store: Envoy SDS secrets and SPIFFE X.509-SVIDs and
// bundles. Pure functions, no gRPC and no threads, so they are tested without a server.
//
// Every message that holds a private key is handed out as a shared_ptr whose deleter wipes the
// key bytes (OPENSSL_cleanse) before the message is freed. The server's copies (serialised
// messages, its unsent output) are wiped too; the kernel's socket buffers are outside our reach.

#include "core/config/config.h"
#include "core/material.h"
#include "core/result.h"
#include "core/secret.h"

#include "envoy/extensions/transport_sockets/tls/v3/secret.pb.h"
#include "envoy/service/discovery/v3/discovery.pb.h"
#include "spiffe/workload/workload.pb.h"

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace certagent::sidecar {

namespace discovery = envoy::service::discovery::v3;
namespace tls = envoy::extensions::transport_sockets::tls::v3;

inline constexpr std::string_view kSecretTypeUrl =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
// SDS resource "<certificate>/trust" is the certificate's trust bundle as a validation context.
inline constexpr std::string_view kTrustSuffix = "/trust";

// The SPIFFE ID of a certificate that is an X.509-SVID (its `uris` hold exactly one URI, a
// spiffe:// ID with a trust domain and no query, fragment or port), otherwise empty.
std::string spiffe_id_of(const config::CertificateConfig& c);
// "spiffe://example.org" for "spiffe://example.org/web".
std::string trust_domain_of(std::string_view spiffe_id);

// PEM certificates as one string of concatenated DER, in order.
[[nodiscard]] Result<std::string> pem_certs_to_der(std::string_view pem);
// A PKCS#8 PEM private key ("PRIVATE KEY") as DER.
[[nodiscard]] Result<Secret> pem_key_to_der(std::string_view pem);

using AnyPtr = std::shared_ptr<const google::protobuf::Any>;
using DiscoveryResponsePtr = std::shared_ptr<const discovery::DiscoveryResponse>;
using SvidPtr = std::shared_ptr<const X509SVID>;
using SvidResponsePtr = std::shared_ptr<const X509SVIDResponse>;
using BundlesResponsePtr = std::shared_ptr<const X509BundlesResponse>;

// The SDS resource of a certificate: chain (leaf first) and PKCS#8 key, PEM, as inline_bytes.
AnyPtr tls_secret(const std::string& name, const Material& m);
// The SDS resource "<name>/trust": the trust bundle as trusted_ca.
AnyPtr trust_secret(const std::string& resource_name, std::string_view trust_bundle_pem);

// A DiscoveryResponse carrying `resources`, the key bytes wiped when it is freed.
DiscoveryResponsePtr discovery_response(const std::vector<AnyPtr>& resources,
                                        const std::string& version, const std::string& nonce);

// One X.509-SVID: chain and key as DER, the trust domain's bundle as DER, the certificate's name
// as the hint.
[[nodiscard]] Result<SvidPtr> make_svid(const std::string& name, const std::string& spiffe_id,
                                        const Material& m, std::string_view trust_bundle_pem);
SvidResponsePtr svid_response(const std::vector<SvidPtr>& svids);
// bundles: trust domain -> concatenated DER.
BundlesResponsePtr bundles_response(const std::vector<std::pair<std::string, std::string>>& bundles);

// A short version string for a set of (name, content id) pairs: equal sets, equal versions.
std::string content_version(const std::vector<std::pair<std::string, std::string>>& items);

}  // namespace certagent::sidecar
