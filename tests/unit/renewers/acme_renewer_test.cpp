// The pure parts of the ACME and cfssl renewers: JWS, JWK thumbprints, EAB, ARI CertID, time
// formats, key files, and the http-01 responder on a real socket.

#include "core/http/client.h"
#include "renewers/acme_http01_responder.h"
#include "renewers/acme_jws.h"
#include "renewers/acme_renewer.h"
#include "renewers/broker_keys.h"
#include "tests/support/run_sync.h"
#include "tests/support/software_identity.h"
#include "tests/support/test_pki.h"

#include <boost/asio/io_context.hpp>
#include <boost/json.hpp>

#include <openssl/ec.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include <gtest/gtest.h>

#include <fstream>

namespace certagent::renewers {
namespace {

using namespace acme;

std::string text(const Bytes& b) { return std::string(b.begin(), b.end()); }

TEST(Base64Url, RoundTripsAndRejects) {
  EXPECT_EQ(base64url(std::string_view("")), "");
  EXPECT_EQ(base64url(std::string_view("f")), "Zg");
  EXPECT_EQ(base64url(std::string_view("fo")), "Zm8");
  EXPECT_EQ(base64url(std::string_view("foo")), "Zm9v");
  EXPECT_EQ(base64url(std::string_view("\xfb\xff")), "-_8");
  for (std::string s : {"", "a", "ab", "abc", "abcd", "\x00\xff\xfe"}) {
    auto d = base64url_decode(base64url(std::string_view(s)));
    ASSERT_TRUE(d);
    EXPECT_EQ(text(*d), s);
  }
  EXPECT_EQ(text(*base64url_decode("Zm8=")), "fo");  // padding accepted
  EXPECT_EQ(text(*base64url_decode("+/8")), "\xfb\xff");  // standard alphabet accepted
  EXPECT_FALSE(base64url_decode("Zm9v!"));
  EXPECT_FALSE(base64url_decode("Z"));
}

// Found by fuzz_acme: a Replay-Nonce that is not base64url went into the next JWS as it was.
// RFC 8555 §6.5.1: clients MUST ignore invalid Replay-Nonce values.
TEST(ReplayNonce, OnlyBase64UrlNoncesAreUsed) {
  EXPECT_TRUE(valid_replay_nonce("oOEtv7CrbJEU8bxic3sHpA"));
  EXPECT_TRUE(valid_replay_nonce("D8s4D2mLs8Vn-goWuPQeKA"));
  EXPECT_TRUE(valid_replay_nonce("nonce-1_x"));
  EXPECT_FALSE(valid_replay_nonce("oOEtv7CrbJEU8bxic!3sHpA"));
  EXPECT_FALSE(valid_replay_nonce(""));
  EXPECT_FALSE(valid_replay_nonce("a b"));
  EXPECT_FALSE(valid_replay_nonce("abc\"def"));
  EXPECT_FALSE(valid_replay_nonce("abc="));
  EXPECT_FALSE(valid_replay_nonce("caf\xc3\xa9"));
  EXPECT_FALSE(valid_replay_nonce(std::string(257, 'a')));
}

TEST(Jws, DerToRawPadsBothHalves) {
  // r = 1, s = 0x0100: DER 30 07 02 01 01 02 02 01 00
  const std::uint8_t der[] = {0x30, 0x07, 0x02, 0x01, 0x01, 0x02, 0x02, 0x01, 0x00};
  auto raw = ecdsa_der_to_raw(der);
  ASSERT_TRUE(raw);
  ASSERT_EQ(raw->size(), 64u);
  EXPECT_EQ((*raw)[31], 1);
  EXPECT_EQ((*raw)[62], 1);
  EXPECT_EQ((*raw)[63], 0);
  const std::uint8_t junk[] = {0x30, 0x01};
  EXPECT_FALSE(ecdsa_der_to_raw(junk));
}

// Verifies a flattened JWS made by sign_es256 with the identity's public key.
bool verify_es256(const std::string& jws_json, const std::string& public_pem) {
  auto v = boost::json::parse(jws_json).as_object();
  std::string input = std::string(v["protected"].as_string()) + "." + std::string(v["payload"].as_string());
  auto sig = *base64url_decode(v["signature"].as_string());
  if (sig.size() != 64) return false;
  crypto::BignumPtr r(BN_bin2bn(sig.data(), 32, nullptr)), s(BN_bin2bn(sig.data() + 32, 32, nullptr));
  ECDSA_SIG* es = ECDSA_SIG_new();
  ECDSA_SIG_set0(es, r.release(), s.release());
  unsigned char* der = nullptr;
  int der_len = i2d_ECDSA_SIG(es, &der);
  ECDSA_SIG_free(es);
  crypto::BioPtr bio(BIO_new_mem_buf(public_pem.data(), static_cast<int>(public_pem.size())));
  crypto::EvpPkeyPtr key(PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr));
  crypto::EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  bool ok = EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key.get()) == 1 &&
            EVP_DigestVerify(ctx.get(), der, static_cast<std::size_t>(der_len),
                             reinterpret_cast<const unsigned char*>(input.data()), input.size()) == 1;
  OPENSSL_free(der);
  return ok;
}

TEST(Jws, SignsWithTheIdentity) {
  test::SoftwareIdentity identity;
  auto jwk = jwk_from_public_key_pem(identity.public_key_pem());
  ASSERT_TRUE(jwk) << jwk.error().message;
  EXPECT_EQ(jwk->json.rfind(R"({"crv":"P-256","kty":"EC","x":")", 0), 0u);
  EXPECT_EQ(jwk->thumbprint.size(), 43u);

  auto with_jwk = sign_es256(identity, *jwk, "", "nonce-1", "https://ca/new-acct", R"({"termsOfServiceAgreed":true})");
  ASSERT_TRUE(with_jwk) << with_jwk.error().message;
  EXPECT_TRUE(verify_es256(*with_jwk, identity.public_key_pem()));
  auto outer = boost::json::parse(*with_jwk).as_object();
  auto header = boost::json::parse(text(*base64url_decode(outer["protected"].as_string()))).as_object();
  EXPECT_EQ(header["alg"].as_string(), "ES256");
  EXPECT_EQ(header["nonce"].as_string(), "nonce-1");
  EXPECT_EQ(header["url"].as_string(), "https://ca/new-acct");
  EXPECT_TRUE(header.contains("jwk"));
  EXPECT_FALSE(header.contains("kid"));

  auto post_as_get = sign_es256(identity, *jwk, "https://ca/acct/1", "n2", "https://ca/order/1", "");
  ASSERT_TRUE(post_as_get);
  EXPECT_TRUE(verify_es256(*post_as_get, identity.public_key_pem()));
  auto o2 = boost::json::parse(*post_as_get).as_object();
  EXPECT_EQ(o2["payload"].as_string(), "");
  auto h2 = boost::json::parse(text(*base64url_decode(o2["protected"].as_string()))).as_object();
  EXPECT_EQ(h2["kid"].as_string(), "https://ca/acct/1");
  EXPECT_FALSE(h2.contains("jwk"));
}

TEST(Jws, RefusesNonP256Keys) {
  crypto::EvpPkeyPtr rsa(EVP_RSA_gen(2048));
  EXPECT_FALSE(jwk_from_public_key_pem(test::public_key_pem(rsa.get())));
  EXPECT_FALSE(jwk_from_public_key_pem("not a key"));
}

TEST(Jws, ExternalAccountBindingIsHs256OverTheJwk) {
  test::SoftwareIdentity identity;
  const std::uint8_t key[] = {1, 2, 3, 4, 5, 6, 7, 8};
  ASSERT_TRUE(identity.import_hmac_key("corp.eab_hmac", key));
  auto jwk = *jwk_from_public_key_pem(identity.public_key_pem());
  auto eab = eab_binding(identity, "corp.eab_hmac", "kid-1", "https://ca/new-acct", jwk);
  ASSERT_TRUE(eab) << eab.error().message;
  auto o = boost::json::parse(*eab).as_object();
  std::string input = std::string(o["protected"].as_string()) + "." + std::string(o["payload"].as_string());
  unsigned char mac[32];
  unsigned len = 0;
  HMAC(EVP_sha256(), key, sizeof key, reinterpret_cast<const unsigned char*>(input.data()), input.size(), mac, &len);
  EXPECT_EQ(o["signature"].as_string(), base64url(std::span<const std::uint8_t>(mac, len)));
  EXPECT_EQ(text(*base64url_decode(o["payload"].as_string())), jwk.json);
  auto header = boost::json::parse(text(*base64url_decode(o["protected"].as_string()))).as_object();
  EXPECT_EQ(header["alg"].as_string(), "HS256");
  EXPECT_EQ(header["kid"].as_string(), "kid-1");
  EXPECT_EQ(header["url"].as_string(), "https://ca/new-acct");
  EXPECT_FALSE(eab_binding(identity, "other.eab_hmac", "kid-1", "u", jwk));
}

TEST(Jws, KeyAuthorizationAndDnsValue) {
  Jwk jwk{"{}", "THUMB"};
  EXPECT_EQ(key_authorization("tok", jwk), "tok.THUMB");
  // base64url(SHA-256("tok.THUMB"))
  unsigned char d[32];
  SHA256(reinterpret_cast<const unsigned char*>("tok.THUMB"), 9, d);
  EXPECT_EQ(dns01_txt_value("tok.THUMB"), base64url(std::span<const std::uint8_t>(d, 32)));
}

TEST(Ari, CertIdMatchesRfc9773Example) {
  // RFC 9773 §4.1: keyIdentifier 69:88:5B:6B:87:46:40:41:E1:B3:7B:84:7B:A0:AE:2C:DE:01:C8:D4,
  // serial 00:87:65:43:21 -> "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE".
  test::TestCert ca = test::make_cert(test::CertSpec{.common_name = "ca", .is_ca = true});
  test::TestCert leaf = test::make_cert(
      test::CertSpec{.common_name = "a.example",
                     .dns_names = {"a.example"},
                     .serial = {0x87, 0x65, 0x43, 0x21},
                     .authority_key_id = {0x69, 0x88, 0x5B, 0x6B, 0x87, 0x46, 0x40, 0x41, 0xE1, 0xB3,
                                          0x7B, 0x84, 0x7B, 0xA0, 0xAE, 0x2C, 0xDE, 0x01, 0xC8, 0xD4}},
      &ca);
  auto id = ari_cert_id(leaf.cert_pem());
  ASSERT_TRUE(id) << id.error().message;
  EXPECT_EQ(*id, "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE");
  test::TestCert self = test::make_cert(test::CertSpec{.common_name = "self"});
  EXPECT_FALSE(ari_cert_id(self.cert_pem()));  // no AKI
  EXPECT_FALSE(ari_cert_id("garbage"));
}

TEST(Rfc3339, ParsesAndFormats) {
  auto t = parse_rfc3339("2025-01-02T04:00:00Z");
  ASSERT_TRUE(t);
  EXPECT_EQ(format_rfc3339(*t), "2025-01-02T04:00:00Z");
  EXPECT_EQ(std::chrono::system_clock::to_time_t(*t), 1735790400);
  auto frac = parse_rfc3339("2025-01-02T04:00:00.250Z");
  ASSERT_TRUE(frac);
  EXPECT_EQ(*frac - *t, std::chrono::milliseconds(250));
  auto offset = parse_rfc3339("2025-01-02T05:30:00+01:30");
  ASSERT_TRUE(offset);
  EXPECT_EQ(*offset, *t);
  EXPECT_FALSE(parse_rfc3339("2025-01-02"));
  EXPECT_FALSE(parse_rfc3339("2025-01-02T04:00:00"));
  EXPECT_FALSE(parse_rfc3339("yesterday"));
}

TEST(KeyFiles, EabAndHex) {
  auto eab = parse_eab_key_file_text("  zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W\n");
  ASSERT_TRUE(eab);
  EXPECT_EQ(eab->size(), 48u);
  EXPECT_FALSE(parse_eab_key_file_text("not base64 !"));
  EXPECT_FALSE(parse_eab_key_file_text(""));
  auto hex = parse_hex_key_text("0123456789abcdefABCDEF\n");
  ASSERT_TRUE(hex);
  EXPECT_EQ(hex->size(), 11u);
  EXPECT_EQ((*hex)[0], 0x01);
  EXPECT_EQ((*hex)[10], 0xef);
  EXPECT_FALSE(parse_hex_key_text("abc"));
  EXPECT_FALSE(parse_hex_key_text("zz"));
}

TEST(BrokerKeys, ImportsFromTheFileOnFirstUse) {
  test::SoftwareIdentity identity;
  auto dir = std::filesystem::temp_directory_path() / ("broker-keys-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  {
    std::ofstream(dir / "k.hex") << "00112233\n";
  }
  const std::uint8_t data[] = {'x'};
  EXPECT_FALSE(identity.hmac("b.cfssl_auth", data));
  auto mac = broker_hmac(identity, "b.cfssl_auth", dir / "k.hex", parse_hex_key_text, data);
  ASSERT_TRUE(mac) << mac.error().message;
  EXPECT_TRUE(identity.hmac("b.cfssl_auth", data));  // now held by the identity
  auto missing = broker_hmac(identity, "c.cfssl_auth", dir / "missing.hex", parse_hex_key_text, data);
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find("certagent enroll"), std::string::npos);
  std::filesystem::remove_all(dir);
}

TEST(Http01Responder, ServesTokensOnly) {
  boost::asio::io_context ioc;
  auto responder = Http01Responder::start(ioc.get_executor(), "127.0.0.1:0");
  ASSERT_TRUE(responder) << responder.error().message;
  (*responder)->add("tok_1-A", "tok_1-A.thumb");
  auto client = *http::Client::create(ioc.get_executor(), {});
  std::string base = "http://127.0.0.1:" + std::to_string((*responder)->port());
  auto r = test::run_sync(ioc, client->get(base + "/.well-known/acme-challenge/tok_1-A"));
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->status, 200u);
  EXPECT_EQ(r->body, "tok_1-A.thumb");
  EXPECT_EQ(test::run_sync(ioc, client->get(base + "/.well-known/acme-challenge/other"))->status, 404u);
  EXPECT_EQ(test::run_sync(ioc, client->get(base + "/.well-known/acme-challenge/../etc"))->status, 404u);
  EXPECT_EQ(test::run_sync(ioc, client->get(base + "/"))->status, 404u);
  (*responder)->remove("tok_1-A");
  EXPECT_EQ(test::run_sync(ioc, client->get(base + "/.well-known/acme-challenge/tok_1-A"))->status, 404u);
  EXPECT_EQ((*responder)->served(), 1u);
  EXPECT_EQ(client->stats().connections, 1u);  // keep-alive

  // A taken port is a configuration error that says which address.
  std::string taken = "127.0.0.1:" + std::to_string((*responder)->port());
  auto second = Http01Responder::start(ioc.get_executor(), taken);
  ASSERT_FALSE(second);
  EXPECT_TRUE(second.error().configuration);
  EXPECT_NE(second.error().message.find(taken), std::string::npos);
  EXPECT_FALSE(Http01Responder::start(ioc.get_executor(), "nonsense"));
  EXPECT_FALSE(Http01Responder::start(ioc.get_executor(), "127.0.0.1:http"));
  responder->reset();
  ioc.restart();
  ioc.run();  // the accept loop and sessions end after stop
}

}  // namespace
}  // namespace certagent::renewers
