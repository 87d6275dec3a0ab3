#include "tpm/tpm_evp_key.h"

#include "core/crypto/errors.h"
#include "tpm/identity_store.h"

#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/obj_mac.h>
#include <openssl/objects.h>
#include <openssl/params.h>
#include <openssl/provider.h>

#include <array>
#include <cstring>
#include <string>

namespace certagent::tpm {
namespace {

constexpr const char* kProviderName = "certagent-identity";
constexpr const char* kPropertyQuery = "provider=certagent-identity";
// In-process only: how make_delegated_ec_key hands the signer to the key management.
constexpr const char* kSignerParam = "certagent-signer";
constexpr const char* kGroupName = "prime256v1";
constexpr std::size_t kPointSize = 65;  // 0x04 || X || Y
// DER AlgorithmIdentifier of ecdsa-with-SHA256 (1.2.840.10045.4.3.2), no parameters.
constexpr std::array<unsigned char, 12> kEcdsaSha256AlgorithmId = {
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02};

using SignerHandle = std::shared_ptr<DigestSigner>;
using Fn = void (*)(void);

template <class F>
Fn fn(F* f) {
  return reinterpret_cast<Fn>(f);
}

void raise(const std::string& message) {
  ERR_raise_data(ERR_LIB_USER, ERR_R_OPERATION_FAIL, "TPM identity key: %s", message.c_str());
}

struct KeyData {
  std::array<unsigned char, kPointSize> point{};
  bool has_public{false};
  SignerHandle signer;
};

bool is_p256(const char* name) {
  if (!name) return false;
  int nid = OBJ_sn2nid(name);
  if (nid == NID_undef) nid = OBJ_ln2nid(name);
  if (nid == NID_undef) nid = EC_curve_nist2nid(name);
  return nid == NID_X9_62_prime256v1;
}

// Any encoding of a P-256 point (compressed or not) to the uncompressed form; checks it is on
// the curve.
bool normalize_point(const unsigned char* in, std::size_t len,
                     std::array<unsigned char, kPointSize>& out) {
  std::unique_ptr<EC_GROUP, crypto::CDeleter<EC_GROUP_free>> group(
      EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1));
  if (!group) return false;
  std::unique_ptr<EC_POINT, crypto::CDeleter<EC_POINT_free>> point(EC_POINT_new(group.get()));
  if (!point || EC_POINT_oct2point(group.get(), point.get(), in, len, nullptr) != 1) return false;
  return EC_POINT_point2oct(group.get(), point.get(), POINT_CONVERSION_UNCOMPRESSED, out.data(),
                            out.size(), nullptr) == kPointSize;
}

// ---- key management ------------------------------------------------------------------------

void* km_new(void*) { return new (std::nothrow) KeyData(); }

void km_free(void* keydata) { delete static_cast<KeyData*>(keydata); }

int km_has(const void* keydata, int selection) {
  auto* key = static_cast<const KeyData*>(keydata);
  if (!key) return 0;
  int ok = 1;
  if (selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) ok = ok && key->has_public;
  if (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) ok = ok && key->signer != nullptr;
  return ok;
}

int km_match(const void* a, const void* b, int selection) {
  auto* ka = static_cast<const KeyData*>(a);
  auto* kb = static_cast<const KeyData*>(b);
  if (!ka || !kb) return 0;
  // Domain parameters: always P-256.
  if (!(selection & OSSL_KEYMGMT_SELECT_KEYPAIR)) return 1;
  // A private half is never comparable: two keys match when their public points do.
  return ka->has_public && kb->has_public && ka->point == kb->point;
}

int km_import(void* keydata, int selection, const OSSL_PARAM params[]) {
  auto* key = static_cast<KeyData*>(keydata);
  if (!key) return 0;
  if (const OSSL_PARAM* p = OSSL_PARAM_locate_const(params, OSSL_PKEY_PARAM_GROUP_NAME)) {
    const char* group = nullptr;
    if (!OSSL_PARAM_get_utf8_string_ptr(p, &group) || !is_p256(group)) return 0;
  }
  if (selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) {
    const OSSL_PARAM* p = OSSL_PARAM_locate_const(params, OSSL_PKEY_PARAM_PUB_KEY);
    const void* data = nullptr;
    std::size_t len = 0;
    if (!p || !OSSL_PARAM_get_octet_string_ptr(p, &data, &len) ||
        !normalize_point(static_cast<const unsigned char*>(data), len, key->point))
      return 0;
    key->has_public = true;
  }
  if (const OSSL_PARAM* p = OSSL_PARAM_locate_const(params, kSignerParam)) {
    const void* ptr = nullptr;
    std::size_t len = 0;
    if (!OSSL_PARAM_get_octet_ptr(p, &ptr, &len) || len != sizeof(SignerHandle) || !ptr) return 0;
    key->signer = *static_cast<const SignerHandle*>(ptr);
  }
  return 1;
}

const OSSL_PARAM* km_import_types(int) {
  static const OSSL_PARAM types[] = {
      OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, nullptr, 0),
      OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, nullptr, 0), OSSL_PARAM_END};
  return types;
}

int km_export(void* keydata, int selection, OSSL_CALLBACK* callback, void* cbarg) {
  auto* key = static_cast<KeyData*>(keydata);
  // The private half lives in the TPM. Refusing it also makes OpenSSL run signatures through
  // this provider instead of handing a public-only copy to the default one.
  if (!key || (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY)) return 0;
  char group[] = "prime256v1";
  char format[] = "uncompressed";
  char encoding[] = "named_curve";
  OSSL_PARAM params[5];
  std::size_t n = 0;
  params[n++] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, group, 0);
  params[n++] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, encoding, 0);
  params[n++] =
      OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, format, 0);
  if ((selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) && key->has_public)
    params[n++] =
        OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, key->point.data(), key->point.size());
  params[n] = OSSL_PARAM_construct_end();
  return callback(params, cbarg);
}

const OSSL_PARAM* km_export_types(int) {
  static const OSSL_PARAM types[] = {
      OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, nullptr, 0),
      OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, nullptr, 0),
      OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, nullptr, 0),
      OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, nullptr, 0), OSSL_PARAM_END};
  return types;
}

int set_bn(OSSL_PARAM* p, const unsigned char* bytes, std::size_t len) {
  crypto::BignumPtr bn(BN_bin2bn(bytes, static_cast<int>(len), nullptr));
  return bn && OSSL_PARAM_set_BN(p, bn.get());
}

int km_get_params(void* keydata, OSSL_PARAM params[]) {
  auto* key = static_cast<KeyData*>(keydata);
  if (!key) return 0;
  OSSL_PARAM* p = nullptr;
  if ((p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_BITS)) && !OSSL_PARAM_set_int(p, 256)) return 0;
  if ((p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_SECURITY_BITS)) && !OSSL_PARAM_set_int(p, 128))
    return 0;
  if ((p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_MAX_SIZE)) &&
      !OSSL_PARAM_set_int(p, static_cast<int>(kMaxEcdsaP256DerSize)))
    return 0;
  if ((p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_GROUP_NAME)) &&
      !OSSL_PARAM_set_utf8_string(p, kGroupName))
    return 0;
  if ((p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_DEFAULT_DIGEST)) &&
      !OSSL_PARAM_set_utf8_string(p, "SHA256"))
    return 0;
  if ((p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_EC_ENCODING)) &&
      !OSSL_PARAM_set_utf8_string(p, "named_curve"))
    return 0;
  if ((p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT)) &&
      !OSSL_PARAM_set_utf8_string(p, "uncompressed"))
    return 0;
  if (key->has_public) {
    if ((p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_PUB_KEY)) &&
        !OSSL_PARAM_set_octet_string(p, key->point.data(), key->point.size()))
      return 0;
    if ((p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY)) &&
        !OSSL_PARAM_set_octet_string(p, key->point.data(), key->point.size()))
      return 0;
    if ((p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_EC_PUB_X)) && !set_bn(p, key->point.data() + 1, 32))
      return 0;
    if ((p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_EC_PUB_Y)) && !set_bn(p, key->point.data() + 33, 32))
      return 0;
  }
  return 1;
}

const OSSL_PARAM* km_gettable_params(void*) {
  static const OSSL_PARAM types[] = {
      OSSL_PARAM_int(OSSL_PKEY_PARAM_BITS, nullptr),
      OSSL_PARAM_int(OSSL_PKEY_PARAM_SECURITY_BITS, nullptr),
      OSSL_PARAM_int(OSSL_PKEY_PARAM_MAX_SIZE, nullptr),
      OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, nullptr, 0),
      OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_DEFAULT_DIGEST, nullptr, 0),
      OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, nullptr, 0),
      OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, nullptr, 0),
      OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, nullptr, 0),
      OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, nullptr, 0),
      OSSL_PARAM_BN(OSSL_PKEY_PARAM_EC_PUB_X, nullptr, 0),
      OSSL_PARAM_BN(OSSL_PKEY_PARAM_EC_PUB_Y, nullptr, 0),
      OSSL_PARAM_END};
  return types;
}

const char* km_query_operation_name(int operation_id) {
  return operation_id == OSSL_OP_SIGNATURE ? "ECDSA" : nullptr;
}

void* km_dup(const void* keydata, int selection) {
  auto* from = static_cast<const KeyData*>(keydata);
  if (!from) return nullptr;
  auto* key = new (std::nothrow) KeyData();
  if (!key) return nullptr;
  if (selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) {
    key->point = from->point;
    key->has_public = from->has_public;
  }
  if (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) key->signer = from->signer;
  return key;
}

const OSSL_DISPATCH kKeymgmtFunctions[] = {
    {OSSL_FUNC_KEYMGMT_NEW, fn(&km_new)},
    {OSSL_FUNC_KEYMGMT_FREE, fn(&km_free)},
    {OSSL_FUNC_KEYMGMT_HAS, fn(&km_has)},
    {OSSL_FUNC_KEYMGMT_MATCH, fn(&km_match)},
    {OSSL_FUNC_KEYMGMT_IMPORT, fn(&km_import)},
    {OSSL_FUNC_KEYMGMT_IMPORT_TYPES, fn(&km_import_types)},
    {OSSL_FUNC_KEYMGMT_EXPORT, fn(&km_export)},
    {OSSL_FUNC_KEYMGMT_EXPORT_TYPES, fn(&km_export_types)},
    {OSSL_FUNC_KEYMGMT_GET_PARAMS, fn(&km_get_params)},
    {OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS, fn(&km_gettable_params)},
    {OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME, fn(&km_query_operation_name)},
    {OSSL_FUNC_KEYMGMT_DUP, fn(&km_dup)},
    {0, nullptr}};

// ---- signature ------------------------------------------------------------------------------

struct SignatureContext {
  KeyData* key{nullptr};  // owned by the EVP_PKEY, which the EVP_PKEY_CTX keeps alive
  crypto::EvpMdCtxPtr md;
  // Verification needs no TPM: a default-provider copy of the public key does it.
  crypto::EvpPkeyPtr verify_key;
  crypto::EvpMdCtxPtr verify_md;
};

// The public point as a default-provider key.
crypto::EvpPkeyPtr public_copy(const KeyData& key) {
  char group[] = "prime256v1";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, group, 0),
      OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, const_cast<unsigned char*>(key.point.data()),
                                        key.point.size()),
      OSSL_PARAM_construct_end()};
  crypto::EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr));
  EVP_PKEY* pkey = nullptr;
  if (!ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
    return nullptr;
  return crypto::EvpPkeyPtr(pkey);
}

bool is_sha256(const char* mdname) {
  if (!mdname || !*mdname) return true;  // the key's default digest
  std::unique_ptr<EVP_MD, crypto::CDeleter<EVP_MD_free>> md(EVP_MD_fetch(nullptr, mdname, nullptr));
  return md && EVP_MD_is_a(md.get(), "SHA256");
}

void* sig_newctx(void*, const char*) { return new (std::nothrow) SignatureContext(); }

void sig_freectx(void* ctx) { delete static_cast<SignatureContext*>(ctx); }

void* sig_dupctx(void* ctx) {
  auto* from = static_cast<SignatureContext*>(ctx);
  auto* copy = new (std::nothrow) SignatureContext();
  if (!copy) return nullptr;
  copy->key = from->key;
  auto copy_md = [](const crypto::EvpMdCtxPtr& in, crypto::EvpMdCtxPtr& out) {
    if (!in) return true;
    out.reset(EVP_MD_CTX_new());
    return out && EVP_MD_CTX_copy_ex(out.get(), in.get()) == 1;
  };
  if (from->verify_key) {
    EVP_PKEY_up_ref(from->verify_key.get());
    copy->verify_key.reset(from->verify_key.get());
  }
  if (!copy_md(from->md, copy->md) || !copy_md(from->verify_md, copy->verify_md)) {
    delete copy;
    return nullptr;
  }
  return copy;
}

bool attach_key(SignatureContext* ctx, void* provkey) {
  auto* key = static_cast<KeyData*>(provkey);
  if (!key || !key->signer) {
    raise("this key has no signer (a public key only)");
    return false;
  }
  ctx->key = key;
  return true;
}

// The one place a signature is made: one DigestSigner call.
int sign_digest(SignatureContext* ctx, unsigned char* sig, std::size_t* siglen, std::size_t sigsize,
                const unsigned char* digest, std::size_t digest_len) {
  if (!sig) {  // size query: no TPM command
    *siglen = kMaxEcdsaP256DerSize;
    return 1;
  }
  if (digest_len != 32) {
    raise("expects a 32-byte SHA-256 digest, got " + std::to_string(digest_len) + " bytes");
    return 0;
  }
  auto der = ctx->key->signer->sign_digest({digest, digest_len});
  if (!der) {
    raise(der.error().message);
    return 0;
  }
  if (der->size() > sigsize) {
    raise("signature buffer too small");
    return 0;
  }
  std::memcpy(sig, der->data(), der->size());
  *siglen = der->size();
  return 1;
}

int sig_sign_init(void* ctx, void* provkey, const OSSL_PARAM*) {
  return attach_key(static_cast<SignatureContext*>(ctx), provkey) ? 1 : 0;
}

int sig_sign(void* ctx, unsigned char* sig, std::size_t* siglen, std::size_t sigsize,
             const unsigned char* tbs, std::size_t tbslen) {
  return sign_digest(static_cast<SignatureContext*>(ctx), sig, siglen, sigsize, tbs, tbslen);
}

int sig_digest_sign_init(void* vctx, const char* mdname, void* provkey, const OSSL_PARAM*) {
  auto* ctx = static_cast<SignatureContext*>(vctx);
  if (!attach_key(ctx, provkey)) return 0;
  if (!is_sha256(mdname)) {
    raise(std::string("signs SHA-256 digests only, not ") + mdname);
    return 0;
  }
  ctx->md.reset(EVP_MD_CTX_new());
  std::unique_ptr<EVP_MD, crypto::CDeleter<EVP_MD_free>> md(EVP_MD_fetch(nullptr, "SHA256", nullptr));
  return ctx->md && md && EVP_DigestInit_ex2(ctx->md.get(), md.get(), nullptr) == 1;
}

int sig_digest_sign_update(void* vctx, const unsigned char* data, std::size_t len) {
  auto* ctx = static_cast<SignatureContext*>(vctx);
  return ctx->md && EVP_DigestUpdate(ctx->md.get(), data, len) == 1;
}

int sig_digest_sign_final(void* vctx, unsigned char* sig, std::size_t* siglen, std::size_t sigsize) {
  auto* ctx = static_cast<SignatureContext*>(vctx);
  if (!sig) return sign_digest(ctx, nullptr, siglen, sigsize, nullptr, 0);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!ctx->md || EVP_DigestFinal_ex(ctx->md.get(), digest, &len) != 1) return 0;
  return sign_digest(ctx, sig, siglen, sigsize, digest, len);
}

int sig_digest_sign(void* vctx, unsigned char* sig, std::size_t* siglen, std::size_t sigsize,
                    const unsigned char* tbs, std::size_t tbslen) {
  auto* ctx = static_cast<SignatureContext*>(vctx);
  if (!sig) return sign_digest(ctx, nullptr, siglen, sigsize, nullptr, 0);
  unsigned char digest[32];
  unsigned int len = 0;
  std::unique_ptr<EVP_MD, crypto::CDeleter<EVP_MD_free>> md(EVP_MD_fetch(nullptr, "SHA256", nullptr));
  if (!md || EVP_Digest(tbs, tbslen, digest, &len, md.get(), nullptr) != 1) return 0;
  return sign_digest(ctx, sig, siglen, sigsize, digest, len);
}

bool attach_public(SignatureContext* ctx, void* provkey) {
  auto* key = static_cast<KeyData*>(provkey);
  if (!key || !key->has_public) return false;
  ctx->key = key;
  ctx->verify_key = public_copy(*key);
  return ctx->verify_key != nullptr;
}

int sig_verify_init(void* ctx, void* provkey, const OSSL_PARAM*) {
  return attach_public(static_cast<SignatureContext*>(ctx), provkey) ? 1 : 0;
}

int sig_verify(void* vctx, const unsigned char* sig, std::size_t siglen, const unsigned char* tbs,
               std::size_t tbslen) {
  auto* ctx = static_cast<SignatureContext*>(vctx);
  crypto::EvpPkeyCtxPtr pctx(EVP_PKEY_CTX_new_from_pkey(nullptr, ctx->verify_key.get(), nullptr));
  return pctx && EVP_PKEY_verify_init(pctx.get()) == 1 &&
                 EVP_PKEY_verify(pctx.get(), sig, siglen, tbs, tbslen) == 1
             ? 1
             : 0;
}

int sig_digest_verify_init(void* vctx, const char* mdname, void* provkey, const OSSL_PARAM*) {
  auto* ctx = static_cast<SignatureContext*>(vctx);
  if (!attach_public(ctx, provkey)) return 0;
  ctx->verify_md.reset(EVP_MD_CTX_new());
  return ctx->verify_md &&
         EVP_DigestVerifyInit_ex(ctx->verify_md.get(), nullptr, mdname && *mdname ? mdname : "SHA256",
                                 nullptr, nullptr, ctx->verify_key.get(), nullptr) == 1;
}

int sig_digest_verify_update(void* vctx, const unsigned char* data, std::size_t len) {
  auto* ctx = static_cast<SignatureContext*>(vctx);
  return ctx->verify_md && EVP_DigestVerifyUpdate(ctx->verify_md.get(), data, len) == 1;
}

int sig_digest_verify_final(void* vctx, const unsigned char* sig, std::size_t siglen) {
  auto* ctx = static_cast<SignatureContext*>(vctx);
  return ctx->verify_md && EVP_DigestVerifyFinal(ctx->verify_md.get(), sig, siglen) == 1;
}

int sig_get_ctx_params(void*, OSSL_PARAM params[]) {
  OSSL_PARAM* p = nullptr;
  if ((p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_ALGORITHM_ID)) &&
      !OSSL_PARAM_set_octet_string(p, kEcdsaSha256AlgorithmId.data(), kEcdsaSha256AlgorithmId.size()))
    return 0;
  if ((p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_DIGEST)) &&
      !OSSL_PARAM_set_utf8_string(p, "SHA256"))
    return 0;
  if ((p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_DIGEST_SIZE)) && !OSSL_PARAM_set_size_t(p, 32))
    return 0;
  return 1;
}

const OSSL_PARAM* sig_gettable_ctx_params(void*, void*) {
  static const OSSL_PARAM types[] = {
      OSSL_PARAM_octet_string(OSSL_SIGNATURE_PARAM_ALGORITHM_ID, nullptr, 0),
      OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, nullptr, 0),
      OSSL_PARAM_size_t(OSSL_SIGNATURE_PARAM_DIGEST_SIZE, nullptr), OSSL_PARAM_END};
  return types;
}

int sig_set_ctx_params(void*, const OSSL_PARAM params[]) {
  if (!params) return 1;
  if (const OSSL_PARAM* p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_DIGEST)) {
    const char* name = nullptr;
    if (!OSSL_PARAM_get_utf8_string_ptr(p, &name) || !is_sha256(name)) {
      raise("signs SHA-256 digests only");
      return 0;
    }
  }
  return 1;
}

const OSSL_PARAM* sig_settable_ctx_params(void*, void*) {
  static const OSSL_PARAM types[] = {OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, nullptr, 0),
                                     OSSL_PARAM_END};
  return types;
}

const OSSL_DISPATCH kSignatureFunctions[] = {
    {OSSL_FUNC_SIGNATURE_NEWCTX, fn(&sig_newctx)},
    {OSSL_FUNC_SIGNATURE_FREECTX, fn(&sig_freectx)},
    {OSSL_FUNC_SIGNATURE_DUPCTX, fn(&sig_dupctx)},
    {OSSL_FUNC_SIGNATURE_SIGN_INIT, fn(&sig_sign_init)},
    {OSSL_FUNC_SIGNATURE_SIGN, fn(&sig_sign)},
    {OSSL_FUNC_SIGNATURE_DIGEST_SIGN_INIT, fn(&sig_digest_sign_init)},
    {OSSL_FUNC_SIGNATURE_DIGEST_SIGN_UPDATE, fn(&sig_digest_sign_update)},
    {OSSL_FUNC_SIGNATURE_DIGEST_SIGN_FINAL, fn(&sig_digest_sign_final)},
    {OSSL_FUNC_SIGNATURE_DIGEST_SIGN, fn(&sig_digest_sign)},
    {OSSL_FUNC_SIGNATURE_VERIFY_INIT, fn(&sig_verify_init)},
    {OSSL_FUNC_SIGNATURE_VERIFY, fn(&sig_verify)},
    {OSSL_FUNC_SIGNATURE_DIGEST_VERIFY_INIT, fn(&sig_digest_verify_init)},
    {OSSL_FUNC_SIGNATURE_DIGEST_VERIFY_UPDATE, fn(&sig_digest_verify_update)},
    {OSSL_FUNC_SIGNATURE_DIGEST_VERIFY_FINAL, fn(&sig_digest_verify_final)},
    {OSSL_FUNC_SIGNATURE_GET_CTX_PARAMS, fn(&sig_get_ctx_params)},
    {OSSL_FUNC_SIGNATURE_GETTABLE_CTX_PARAMS, fn(&sig_gettable_ctx_params)},
    {OSSL_FUNC_SIGNATURE_SET_CTX_PARAMS, fn(&sig_set_ctx_params)},
    {OSSL_FUNC_SIGNATURE_SETTABLE_CTX_PARAMS, fn(&sig_settable_ctx_params)},
    {0, nullptr}};

// ---- provider -------------------------------------------------------------------------------

// The names the default provider uses for EC, so libssl and the ASN.1 code treat these keys as
// EC keys (certificate type, curve, signature algorithm lookups).
const OSSL_ALGORITHM kKeymgmt[] = {
    {"EC:id-ecPublicKey:1.2.840.10045.2.1", kPropertyQuery, kKeymgmtFunctions,
     "TPM-resident EC P-256 key (public part only)"},
    {nullptr, nullptr, nullptr, nullptr}};
const OSSL_ALGORITHM kSignature[] = {
    {"ECDSA", kPropertyQuery, kSignatureFunctions, "ECDSA P-256 SHA-256 made by the TPM"},
    {nullptr, nullptr, nullptr, nullptr}};

const OSSL_ALGORITHM* provider_query(void*, int operation_id, int* no_cache) {
  *no_cache = 0;
  switch (operation_id) {
    case OSSL_OP_KEYMGMT: return kKeymgmt;
    case OSSL_OP_SIGNATURE: return kSignature;
    default: return nullptr;
  }
}

const OSSL_DISPATCH kProviderFunctions[] = {
    {OSSL_FUNC_PROVIDER_QUERY_OPERATION, fn(&provider_query)}, {0, nullptr}};

int provider_init(const OSSL_CORE_HANDLE*, const OSSL_DISPATCH*, const OSSL_DISPATCH** out,
                  void** provctx) {
  *out = kProviderFunctions;
  *provctx = nullptr;
  return 1;
}

// A library context of its own, so "EC" fetches elsewhere in the process never land on this
// provider. It also holds the default provider, whose encoders write the public key (SPKI).
// Lives for the whole process.
OSSL_LIB_CTX* provider_libctx() {
  static OSSL_LIB_CTX* libctx = []() -> OSSL_LIB_CTX* {
    OSSL_LIB_CTX* ctx = OSSL_LIB_CTX_new();
    if (!ctx) return nullptr;
    if (OSSL_PROVIDER_add_builtin(ctx, kProviderName, &provider_init) != 1 ||
        !OSSL_PROVIDER_load(ctx, kProviderName) || !OSSL_PROVIDER_load(ctx, "default")) {
      OSSL_LIB_CTX_free(ctx);
      return nullptr;
    }
    return ctx;
  }();
  return libctx;
}


}  // namespace

Result<crypto::EvpPkeyPtr> make_delegated_ec_key(EVP_PKEY* public_key,
                                                std::shared_ptr<DigestSigner> signer) {
  if (!public_key || !signer) return make_error("TPM identity key: no public key or signer");
  char group[64] = {0};
  if (!EVP_PKEY_is_a(public_key, "EC") ||
      EVP_PKEY_get_group_name(public_key, group, sizeof group, nullptr) != 1 || !is_p256(group)) {
    ERR_clear_error();
    return make_error("TPM identity key: the public key is not EC P-256");
  }
  unsigned char point[kPointSize];
  std::size_t point_len = 0;
  if (EVP_PKEY_get_octet_string_param(public_key, OSSL_PKEY_PARAM_PUB_KEY, point, sizeof point,
                                      &point_len) != 1)
    return crypto::openssl_error("TPM identity key: reading the public point");

  OSSL_LIB_CTX* libctx = provider_libctx();
  if (!libctx) return crypto::openssl_error("TPM identity key: cannot load the in-process OpenSSL provider");
  crypto::EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(libctx, "EC", kPropertyQuery));
  char group_name[] = "prime256v1";
  void* signer_ptr = &signer;
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, group_name, 0),
      OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, point, point_len),
      OSSL_PARAM_construct_octet_ptr(kSignerParam, &signer_ptr, sizeof(SignerHandle)),
      OSSL_PARAM_construct_end()};
  EVP_PKEY* pkey = nullptr;
  if (!ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &pkey, EVP_PKEY_KEYPAIR, params) != 1)
    return crypto::openssl_error("TPM identity key: building the OpenSSL key");
  return crypto::EvpPkeyPtr(pkey);
}

}  // namespace certagent::tpm
