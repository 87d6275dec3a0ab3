// What the sidecar API sends: SDS secrets, X.509-SVIDs and bundles, built from store material.
// The wire checks decode raw bytes with the field numbers of the upstream .proto files, written
// here by hand, so a wrong number in agent/sidecar/proto fails here even though our own
// generated code would read its own mistake back.

#include "agent/sidecar/content.h"

#include "tests/unit/agent/test_material.h"

#include <gtest/gtest.h>

#include <map>

namespace certagent::sidecar {
namespace {

using namespace std::chrono_literals;

config::CertificateConfig with_uris(std::vector<std::string> uris) {
  config::CertificateConfig c;
  c.name = "web";
  c.uris = std::move(uris);
  return c;
}

// The length-delimited fields at the top level of a protobuf message: field number -> values.
std::multimap<int, std::string> fields(const std::string& wire) {
  std::multimap<int, std::string> out;
  std::size_t i = 0;
  auto varint = [&]() {
    std::uint64_t v = 0;
    for (int shift = 0; i < wire.size(); shift += 7) {
      const auto b = static_cast<unsigned char>(wire[i++]);
      v |= static_cast<std::uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) break;
    }
    return v;
  };
  while (i < wire.size()) {
    const auto tag = varint();
    const int number = static_cast<int>(tag >> 3);
    const int type = static_cast<int>(tag & 7);
    if (type == 2) {
      const auto len = static_cast<std::size_t>(varint());
      out.emplace(number, wire.substr(i, len));
      i += len;
    } else if (type == 0) {
      out.emplace(number, std::to_string(varint()));
    } else {
      ADD_FAILURE() << "unexpected wire type " << type;
      break;
    }
  }
  return out;
}

std::string one(const std::multimap<int, std::string>& f, int number) {
  EXPECT_EQ(f.count(number), 1u) << "field " << number;
  auto it = f.find(number);
  return it == f.end() ? std::string() : it->second;
}

TEST(SpiffeId, ExactlyOneSpiffeUriWithATrustDomain) {
  EXPECT_EQ(spiffe_id_of(with_uris({"spiffe://example.org/web"})), "spiffe://example.org/web");
  EXPECT_EQ(spiffe_id_of(with_uris({"spiffe://example.org"})), "spiffe://example.org");
  EXPECT_EQ(spiffe_id_of(with_uris({})), "");
  EXPECT_EQ(spiffe_id_of(with_uris({"spiffe://example.org/a", "spiffe://example.org/b"})), "");
  EXPECT_EQ(spiffe_id_of(with_uris({"spiffe://example.org/a", "https://example.org"})), "");
  EXPECT_EQ(spiffe_id_of(with_uris({"https://example.org/web"})), "");
  EXPECT_EQ(spiffe_id_of(with_uris({"spiffe:///web"})), "");
  EXPECT_EQ(spiffe_id_of(with_uris({"spiffe://Example.org/web"})), "");
  EXPECT_EQ(spiffe_id_of(with_uris({"spiffe://example.org:8443/web"})), "");
  EXPECT_EQ(spiffe_id_of(with_uris({"spiffe://example.org/web?x=1"})), "");
  EXPECT_EQ(trust_domain_of("spiffe://example.org/ns/web"), "spiffe://example.org");
  EXPECT_EQ(trust_domain_of("spiffe://example.org"), "spiffe://example.org");
  EXPECT_EQ(trust_domain_of("https://x"), "");
}

TEST(Der, CertificatesAndPkcs8Keys) {
  const auto ca = test::make_test_ca("Content CA");
  const auto m = test::make_test_material("web.internal", 1h, &ca);
  auto chain = pem_certs_to_der(m.cert_pem + m.chain_pem);
  ASSERT_TRUE(chain) << chain.error().message;
  EXPECT_EQ(static_cast<unsigned char>((*chain)[0]), 0x30);  // a DER SEQUENCE
  auto key = pem_key_to_der(m.key_pem.view());
  ASSERT_TRUE(key) << key.error().message;
  EXPECT_EQ(static_cast<unsigned char>(key->view()[0]), 0x30);
  EXPECT_FALSE(pem_key_to_der("not a key"));
  auto traditional = pem_key_to_der(
      "-----BEGIN EC PRIVATE KEY-----\nMAA=\n-----END EC PRIVATE KEY-----\n");
  ASSERT_FALSE(traditional);
  EXPECT_NE(traditional.error().message.find("PKCS#8"), std::string::npos);
  EXPECT_FALSE(pem_certs_to_der("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"));
}

TEST(Sds, TlsSecretOnTheWireIsEnvoysSecret) {
  const auto m = test::make_test_material("web.internal", 1h);
  auto any = tls_secret("web", m);
  EXPECT_EQ(any->type_url(), std::string(kSecretTypeUrl));
  // envoy.extensions.transport_sockets.tls.v3.Secret: name = 1, tls_certificate = 2;
  // TlsCertificate: certificate_chain = 1, private_key = 2; DataSource: inline_bytes = 2.
  const auto secret = fields(any->value());
  EXPECT_EQ(one(secret, 1), "web");
  const auto tls = fields(one(secret, 2));
  EXPECT_EQ(one(fields(one(tls, 1)), 2), m.cert_pem + m.chain_pem);
  EXPECT_EQ(one(fields(one(tls, 2)), 2), std::string(m.key_pem.view()));

  auto trust = trust_secret("web/trust", "PEM");
  // validation_context = 4; CertificateValidationContext.trusted_ca = 1.
  const auto t = fields(trust->value());
  EXPECT_EQ(one(t, 1), "web/trust");
  EXPECT_EQ(one(fields(one(fields(one(t, 4)), 1)), 2), "PEM");
}

TEST(Sds, DiscoveryResponseOnTheWire) {
  const auto m = test::make_test_material("web.internal", 1h);
  auto r = discovery_response({tls_secret("web", m)}, "v1", "7");
  std::string wire;
  ASSERT_TRUE(r->SerializeToString(&wire));
  // DiscoveryResponse: version_info = 1, resources = 2, type_url = 4, nonce = 5,
  // control_plane = 6; Any: type_url = 1, value = 2.
  const auto f = fields(wire);
  EXPECT_EQ(one(f, 1), "v1");
  EXPECT_EQ(one(f, 4), std::string(kSecretTypeUrl));
  EXPECT_EQ(one(f, 5), "7");
  EXPECT_EQ(one(fields(one(f, 6)), 1), "certagent");
  EXPECT_EQ(one(fields(one(f, 2)), 1), std::string(kSecretTypeUrl));
}

TEST(Sds, ContentVersionDependsOnContentOnly) {
  const auto a = content_version({{"web", "serial:1"}, {"web/trust", "trust:x"}});
  EXPECT_EQ(a, content_version({{"web/trust", "trust:x"}, {"web", "serial:1"}}));
  EXPECT_NE(a, content_version({{"web", "serial:2"}, {"web/trust", "trust:x"}}));
  EXPECT_EQ(a.size(), 16u);
}

TEST(Workload, SvidOnTheWire) {
  const auto ca = test::make_test_ca("Content CA");
  const auto m = test::make_test_material("web.internal", 1h, &ca);
  auto svid = make_svid("web", "spiffe://example.org/web", m, ca.cert_pem);
  ASSERT_TRUE(svid) << svid.error().message;
  auto response = svid_response({*svid});
  std::string wire;
  ASSERT_TRUE(response->SerializeToString(&wire));
  // X509SVIDResponse: svids = 1; X509SVID: spiffe_id = 1, x509_svid = 2, x509_svid_key = 3,
  // bundle = 4, hint = 5.
  const auto s = fields(one(fields(wire), 1));
  EXPECT_EQ(one(s, 1), "spiffe://example.org/web");
  EXPECT_EQ(one(s, 2), *pem_certs_to_der(m.cert_pem + m.chain_pem));
  EXPECT_EQ(one(s, 3), std::string(pem_key_to_der(m.key_pem.view())->view()));
  EXPECT_EQ(one(s, 4), *pem_certs_to_der(ca.cert_pem));
  EXPECT_EQ(one(s, 5), "web");
  // Without a trust bundle there is no valid SVID.
  EXPECT_FALSE(make_svid("web", "spiffe://example.org/web", m, ""));

  auto bundles = bundles_response({{"spiffe://example.org", "DER"}});
  ASSERT_TRUE(bundles->SerializeToString(&wire));
  // X509BundlesResponse: bundles = 2 (map entry: key = 1, value = 2).
  const auto entry = fields(one(fields(wire), 2));
  EXPECT_EQ(one(entry, 1), "spiffe://example.org");
  EXPECT_EQ(one(entry, 2), "DER");
}

}  // namespace
}  // namespace certagent::sidecar
