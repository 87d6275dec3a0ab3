#pragma once
// One typed owner per OpenSSL handle (BoringSSL's bssl::UniquePtr idea).

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>

namespace certagent::crypto {

template <auto Fn>
struct CDeleter {
  template <class T>
  void operator()(T* p) const noexcept {
    Fn(p);
  }
};

using EvpPkeyPtr = std::unique_ptr<EVP_PKEY, CDeleter<EVP_PKEY_free>>;
using EvpPkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, CDeleter<EVP_PKEY_CTX_free>>;
using EvpMdCtxPtr = std::unique_ptr<EVP_MD_CTX, CDeleter<EVP_MD_CTX_free>>;
using X509Ptr = std::unique_ptr<X509, CDeleter<X509_free>>;
using X509ReqPtr = std::unique_ptr<X509_REQ, CDeleter<X509_REQ_free>>;
using X509StorePtr = std::unique_ptr<X509_STORE, CDeleter<X509_STORE_free>>;
using X509StoreCtxPtr = std::unique_ptr<X509_STORE_CTX, CDeleter<X509_STORE_CTX_free>>;
using X509NamePtr = std::unique_ptr<X509_NAME, CDeleter<X509_NAME_free>>;
using X509ExtPtr = std::unique_ptr<X509_EXTENSION, CDeleter<X509_EXTENSION_free>>;
using GeneralNamesPtr = std::unique_ptr<GENERAL_NAMES, CDeleter<GENERAL_NAMES_free>>;
using BioPtr = std::unique_ptr<BIO, CDeleter<BIO_free_all>>;
using BignumPtr = std::unique_ptr<BIGNUM, CDeleter<BN_free>>;
using Asn1IntegerPtr = std::unique_ptr<ASN1_INTEGER, CDeleter<ASN1_INTEGER_free>>;
using SslCtxPtr = std::unique_ptr<SSL_CTX, CDeleter<SSL_CTX_free>>;
using SslPtr = std::unique_ptr<SSL, CDeleter<SSL_free>>;

}  // namespace certagent::crypto
