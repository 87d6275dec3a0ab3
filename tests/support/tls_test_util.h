#pragma once
// TLS helpers for the identity tests and benchmark: a throwaway CA, certificates for given
// public keys, and an in-process handshake over a BIO pair (no sockets, no threads) with one
// application round trip, so a server that rejects the client certificate is noticed even in
// TLS 1.3.

#include "core/crypto/ossl_ptr.h"

#include <string>

namespace certagent::tpm::test {

crypto::EvpPkeyPtr make_p256_key();

struct TestCa {
  crypto::EvpPkeyPtr key;
  crypto::X509Ptr cert;
};
TestCa make_ca(const std::string& common_name);
// A leaf for `subject_key`'s public key, signed by the CA, usable for client and server auth.
crypto::X509Ptr issue(const TestCa& ca, EVP_PKEY* subject_key, const std::string& common_name);

std::string public_key_pem(EVP_PKEY* key);

// A server requiring a client certificate from `ca`.
crypto::SslCtxPtr make_server_ctx(const TestCa& ca, int max_version = 0);
// A client presenting `cert` with `key` (e.g. the TPM identity's EVP_PKEY).
crypto::SslCtxPtr make_client_ctx(const TestCa& ca, X509* cert, EVP_PKEY* key, int max_version = 0);

struct HandshakeResult {
  bool ok{false};
  std::string error;
  std::string version;    // "TLSv1.3"
  std::string peer_cn;    // the client certificate's CN as the server saw it
};
HandshakeResult handshake(SSL_CTX* client, SSL_CTX* server);

std::string openssl_errors();

}  // namespace certagent::tpm::test
