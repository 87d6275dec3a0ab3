#include "tests/support/tls_test_util.h"

#include "core/crypto/errors.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include <stdexcept>

namespace certagent::tpm::test {
namespace {

void check(bool ok, const std::string& what) {
  if (!ok) throw std::runtime_error(what + ": " + openssl_errors());
}

crypto::X509Ptr make_cert(EVP_PKEY* subject_key, const std::string& cn, X509* issuer,
                          EVP_PKEY* issuer_key, bool is_ca) {
  crypto::X509Ptr cert(X509_new());
  check(cert != nullptr, "X509_new");
  X509_set_version(cert.get(), 2);
  unsigned char serial[16];
  RAND_bytes(serial, sizeof serial);
  serial[0] &= 0x7f;
  crypto::BignumPtr bn(BN_bin2bn(serial, sizeof serial, nullptr));
  BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(cert.get()));
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -60);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 3600);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(cert.get(), issuer ? X509_get_subject_name(issuer) : name);
  check(X509_set_pubkey(cert.get(), subject_key) == 1, "X509_set_pubkey");
  X509V3_CTX v3;
  X509V3_set_ctx(&v3, issuer ? issuer : cert.get(), cert.get(), nullptr, nullptr, 0);
  auto add = [&](int nid, const char* value) {
    crypto::X509ExtPtr ext(X509V3_EXT_conf_nid(nullptr, &v3, nid, value));
    check(ext && X509_add_ext(cert.get(), ext.get(), -1) == 1, "extension");
  };
  if (is_ca) {
    add(NID_basic_constraints, "critical,CA:TRUE");
    add(NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    add(NID_basic_constraints, "critical,CA:FALSE");
    add(NID_key_usage, "critical,digitalSignature");
    add(NID_ext_key_usage, "clientAuth,serverAuth");
    add(NID_subject_alt_name, "DNS:localhost");
  }
  check(X509_sign(cert.get(), issuer_key, EVP_sha256()) > 0, "X509_sign");
  return cert;
}

}  // namespace

std::string openssl_errors() { return crypto::drain_openssl_errors(); }

crypto::EvpPkeyPtr make_p256_key() {
  crypto::EvpPkeyPtr key(EVP_EC_gen("P-256"));
  check(key != nullptr, "EVP_EC_gen");
  return key;
}

TestCa make_ca(const std::string& common_name) {
  TestCa ca;
  ca.key = make_p256_key();
  ca.cert = make_cert(ca.key.get(), common_name, nullptr, ca.key.get(), true);
  return ca;
}

crypto::X509Ptr issue(const TestCa& ca, EVP_PKEY* subject_key, const std::string& common_name) {
  return make_cert(subject_key, common_name, ca.cert.get(), ca.key.get(), false);
}

std::string public_key_pem(EVP_PKEY* key) {
  crypto::BioPtr bio(BIO_new(BIO_s_mem()));
  check(PEM_write_bio_PUBKEY(bio.get(), key) == 1, "PEM_write_bio_PUBKEY");
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(len));
}

crypto::SslCtxPtr make_server_ctx(const TestCa& ca, int max_version) {
  static thread_local crypto::EvpPkeyPtr server_key;  // one per thread is plenty for tests
  if (!server_key) server_key = make_p256_key();
  crypto::X509Ptr server_cert = issue(ca, server_key.get(), "localhost");
  crypto::SslCtxPtr ctx(SSL_CTX_new(TLS_server_method()));
  check(ctx != nullptr, "SSL_CTX_new");
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  if (max_version) SSL_CTX_set_max_proto_version(ctx.get(), max_version);
  check(SSL_CTX_use_certificate(ctx.get(), server_cert.get()) == 1 &&
            SSL_CTX_use_PrivateKey(ctx.get(), server_key.get()) == 1,
        "server certificate");
  X509_STORE* store = SSL_CTX_get_cert_store(ctx.get());
  check(X509_STORE_add_cert(store, ca.cert.get()) == 1, "server trust");
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_OFF);
  SSL_CTX_set_options(ctx.get(), SSL_OP_NO_TICKET);
  return ctx;
}

crypto::SslCtxPtr make_client_ctx(const TestCa& ca, X509* cert, EVP_PKEY* key, int max_version) {
  crypto::SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  check(ctx != nullptr, "SSL_CTX_new");
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  if (max_version) SSL_CTX_set_max_proto_version(ctx.get(), max_version);
  check(SSL_CTX_use_certificate(ctx.get(), cert) == 1, "SSL_CTX_use_certificate");
  check(SSL_CTX_use_PrivateKey(ctx.get(), key) == 1, "SSL_CTX_use_PrivateKey");
  X509_STORE* store = SSL_CTX_get_cert_store(ctx.get());
  check(X509_STORE_add_cert(store, ca.cert.get()) == 1, "client trust");
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_OFF);
  SSL_CTX_set_options(ctx.get(), SSL_OP_NO_TICKET);
  return ctx;
}

HandshakeResult handshake(SSL_CTX* client_ctx, SSL_CTX* server_ctx) {
  HandshakeResult result;
  crypto::SslPtr client(SSL_new(client_ctx));
  crypto::SslPtr server(SSL_new(server_ctx));
  BIO* client_bio = nullptr;
  BIO* server_bio = nullptr;
  if (!client || !server || BIO_new_bio_pair(&client_bio, 0, &server_bio, 0) != 1) {
    result.error = "setup: " + openssl_errors();
    return result;
  }
  SSL_set_bio(client.get(), client_bio, client_bio);
  SSL_set_bio(server.get(), server_bio, server_bio);
  SSL_set_connect_state(client.get());
  SSL_set_accept_state(server.get());
  SSL_set1_host(client.get(), "localhost");

  auto step_failed = [&](SSL* ssl, int rc, const char* who) {
    if (rc == 1) return false;
    int err = SSL_get_error(ssl, rc);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return false;
    result.error = std::string(who) + " failed (SSL error " + std::to_string(err) + "): " + openssl_errors();
    return true;
  };
  bool client_done = false, server_done = false;
  for (int i = 0; i < 100 && !(client_done && server_done); ++i) {
    if (!client_done) {
      int rc = SSL_do_handshake(client.get());
      if (step_failed(client.get(), rc, "client handshake")) return result;
      client_done = rc == 1;
    }
    if (!server_done) {
      int rc = SSL_do_handshake(server.get());
      if (step_failed(server.get(), rc, "server handshake")) return result;
      server_done = rc == 1;
    }
  }
  if (!client_done || !server_done) {
    result.error = "handshake did not finish";
    return result;
  }
  // One application round trip: in TLS 1.3 the server judges the client certificate after the
  // client's handshake has returned.
  const char ping[] = "ping";
  char buf[16];
  if (SSL_write(client.get(), ping, 4) != 4) {
    result.error = "client write: " + openssl_errors();
    return result;
  }
  int n = SSL_read(server.get(), buf, sizeof buf);
  if (n != 4 || std::string(buf, 4) != "ping") {
    result.error = "server read: " + openssl_errors();
    return result;
  }
  if (SSL_write(server.get(), "pong", 4) != 4) {
    result.error = "server write: " + openssl_errors();
    return result;
  }
  n = SSL_read(client.get(), buf, sizeof buf);
  if (n != 4 || std::string(buf, 4) != "pong") {
    result.error = "client read: " + openssl_errors();
    return result;
  }
  result.version = SSL_get_version(client.get());
  crypto::X509Ptr peer(SSL_get1_peer_certificate(server.get()));
  if (!peer) {
    result.error = "the server saw no client certificate";
    return result;
  }
  char cn[256] = {0};
  X509_NAME_get_text_by_NID(X509_get_subject_name(peer.get()), NID_commonName, cn, sizeof cn);
  result.peer_cn = cn;
  result.ok = SSL_get_verify_result(server.get()) == X509_V_OK;
  if (!result.ok) result.error = "client certificate not verified";
  return result;
}

}  // namespace certagent::tpm::test
