#include "tpm/tpm_identity.h"

#include "core/crypto/errors.h"
#include "core/logging.h"
#include "tpm/esys_handles.h"
#include "tpm/tpm_blobs.h"
#include "tpm/tpm_evp_key.h"
#include "tpm/tss_error.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <future>
#include <mutex>
#include <optional>
#include <thread>
#include <type_traits>
#include <vector>

namespace certagent::tpm {
namespace {

constexpr std::size_t kMaxBlobSize = 4096;
// TPM2_MAX_SYM_DATA on TPMs is 128: bigger secrets go through an envelope.
constexpr std::size_t kMaxDirectSealSize = 128;
constexpr std::size_t kMaxSealSize = kMaxSealedSecretSize;
// HMAC keys longer than SHA-256's block are hashed first (RFC 2104): same HMAC, and the TPM
// object never holds more than 64 bytes.
constexpr std::size_t kHmacBlockSize = 64;
constexpr std::size_t kEnvelopeKeySize = 32;
constexpr std::size_t kGcmNonceSize = 12;
constexpr std::size_t kGcmTagSize = 16;
constexpr char kEnvelopeMagic[4] = {'C', 'A', 'S', '1'};

std::shared_ptr<spdlog::logger> logger() { return log::get("tpm"); }

using EvpCipherCtxPtr = std::unique_ptr<EVP_CIPHER_CTX, crypto::CDeleter<EVP_CIPHER_CTX_free>>;

// ---- blobs on disk ---------------------------------------------------------------------------

using detail::check_identity_public;
using detail::envelope_decrypt;
using detail::envelope_encrypt;
using detail::KeyBlobs;

struct BlobPaths {
  fs::path pub;
  fs::path priv;
};

BlobPaths identity_paths(const fs::path& dir) {
  return {dir / "identity.pub", dir / "identity.priv"};
}
BlobPaths hmac_paths(const fs::path& dir, std::string_view name) {
  return {dir / ("hmac-" + std::string(name) + ".pub"), dir / ("hmac-" + std::string(name) + ".priv")};
}
BlobPaths sealed_paths(const fs::path& dir, std::string_view name) {
  return {dir / ("sealed-" + std::string(name) + ".pub"),
          dir / ("sealed-" + std::string(name) + ".priv")};
}
fs::path envelope_path(const fs::path& dir, std::string_view name) {
  return dir / ("sealed-" + std::string(name) + ".enc");
}

TssResult<Bytes> marshal(const KeyBlobs& blobs, bool pub) {
  Bytes out(pub ? sizeof(TPM2B_PUBLIC) : sizeof(TPM2B_PRIVATE));
  std::size_t offset = 0;
  TSS2_RC rc = pub ? Tss2_MU_TPM2B_PUBLIC_Marshal(&blobs.pub, out.data(), out.size(), &offset)
                   : Tss2_MU_TPM2B_PRIVATE_Marshal(&blobs.priv, out.data(), out.size(), &offset);
  if (rc != TSS2_RC_SUCCESS) return tss_error(pub ? "marshalling TPM2B_PUBLIC" : "marshalling TPM2B_PRIVATE", rc);
  out.resize(offset);
  return out;
}

// Writes .priv before .pub: a key counts as present when its .pub exists, so a crash in
// between leaves "absent", never a mismatched pair.
Result<> write_blobs(const BlobPaths& paths, const KeyBlobs& blobs) {
  auto pub = marshal(blobs, true);
  auto priv = marshal(blobs, false);
  if (!pub) return to_error(pub.error());
  if (!priv) return to_error(priv.error());
  if (auto r = remove_file(paths.pub); !r) return r;
  if (auto r = write_file_atomic(paths.priv, *priv, 0600); !r) return r;
  return write_file_atomic(paths.pub, *pub, 0600);
}

enum class BlobState { ok, missing, broken };

struct BlobRead {
  BlobState state{BlobState::missing};
  KeyBlobs blobs;
  std::string problem;  // for broken
};

BlobRead read_blobs(const BlobPaths& paths) {
  BlobRead out;
  auto pub = read_file_bytes(paths.pub, kMaxBlobSize);
  if (!pub) return {BlobState::broken, {}, pub.error().message};
  if (!*pub) return out;  // missing
  auto priv = read_file_bytes(paths.priv, kMaxBlobSize);
  if (!priv) return {BlobState::broken, {}, priv.error().message};
  if (!*priv) return {BlobState::broken, {}, paths.priv.string() + " is missing"};
  auto blobs = detail::unmarshal_blobs(**pub, **priv, paths.pub.string(), paths.priv.string());
  if (!blobs) return {BlobState::broken, {}, blobs.error().message};
  out.blobs = *blobs;
  out.state = BlobState::ok;
  return out;
}

}  // namespace

namespace detail {

Result<KeyBlobs> unmarshal_blobs(std::span<const std::uint8_t> pub, std::span<const std::uint8_t> priv,
                                 std::string_view pub_name, std::string_view priv_name) {
  KeyBlobs out;
  std::size_t offset = 0;
  TSS2_RC rc = Tss2_MU_TPM2B_PUBLIC_Unmarshal(pub.data(), pub.size(), &offset, &out.pub);
  if (rc != TSS2_RC_SUCCESS || offset != pub.size())
    return make_error(std::string(pub_name) + " is not a marshalled TPM2B_PUBLIC");
  // Tss2_MU reads the public area whatever its size field says: a file whose size field
  // disagrees with its contents is corrupt, though it unmarshals (found by fuzz_tpm_blobs).
  std::uint8_t again[sizeof(TPM2B_PUBLIC)];
  std::size_t again_size = 0;
  if (Tss2_MU_TPM2B_PUBLIC_Marshal(&out.pub, again, sizeof again, &again_size) != TSS2_RC_SUCCESS ||
      again_size != pub.size() || std::memcmp(again, pub.data(), again_size) != 0)
    return make_error(std::string(pub_name) + " is not a marshalled TPM2B_PUBLIC (its size field does not match "
                                              "its contents)");
  offset = 0;
  rc = Tss2_MU_TPM2B_PRIVATE_Unmarshal(priv.data(), priv.size(), &offset, &out.priv);
  if (rc != TSS2_RC_SUCCESS || offset != priv.size())
    return make_error(std::string(priv_name) + " is not a marshalled TPM2B_PRIVATE");
  return out;
}

// The identity's public area must describe the key we create: anything else is corrupt (or
// planted) and is not used.
Result<> check_identity_public(const TPM2B_PUBLIC& pub) {
  const TPMT_PUBLIC& p = pub.publicArea;
  constexpr TPMA_OBJECT kRequired = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                                    TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_SIGN_ENCRYPT;
  if (p.type != TPM2_ALG_ECC || p.nameAlg != TPM2_ALG_SHA256 ||
      p.parameters.eccDetail.curveID != TPM2_ECC_NIST_P256 ||
      p.parameters.eccDetail.scheme.scheme != TPM2_ALG_ECDSA ||
      p.parameters.eccDetail.scheme.details.ecdsa.hashAlg != TPM2_ALG_SHA256 ||
      p.unique.ecc.x.size == 0 || p.unique.ecc.x.size > 32 || p.unique.ecc.y.size == 0 ||
      p.unique.ecc.y.size > 32)
    return make_error("it is not an ECDSA P-256 SHA-256 key");
  if ((p.objectAttributes & kRequired) != kRequired ||
      (p.objectAttributes & (TPMA_OBJECT_DECRYPT | TPMA_OBJECT_RESTRICTED)))
    return make_error("its attributes are not fixedTPM|fixedParent|sensitiveDataOrigin|sign");
  return {};
}

}  // namespace detail

namespace {

// ---- templates -------------------------------------------------------------------------------

TPM2B_PUBLIC keyed_hash_template(bool hmac_key) {
  TPM2B_PUBLIC t{};
  TPMT_PUBLIC& p = t.publicArea;
  p.type = TPM2_ALG_KEYEDHASH;
  p.nameAlg = TPM2_ALG_SHA256;
  // The data comes from us (no sensitiveDataOrigin); noDA: empty auth, nothing to lock out.
  p.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_USERWITHAUTH |
                       TPMA_OBJECT_NODA;
  if (hmac_key) {
    p.objectAttributes |= TPMA_OBJECT_SIGN_ENCRYPT;
    p.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG_HMAC;
    p.parameters.keyedHashDetail.scheme.details.hmac.hashAlg = TPM2_ALG_SHA256;
  } else {
    p.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG_NULL;
  }
  return t;
}

// ---- OpenSSL helpers ---------------------------------------------------------------------------

Result<crypto::EvpPkeyPtr> public_to_evp(const TPM2B_PUBLIC& pub) {
  const TPMS_ECC_POINT& q = pub.publicArea.unique.ecc;
  unsigned char point[65] = {0x04};
  std::memcpy(point + 1 + (32 - q.x.size), q.x.buffer, q.x.size);
  std::memcpy(point + 33 + (32 - q.y.size), q.y.buffer, q.y.size);
  std::unique_ptr<OSSL_PARAM_BLD, crypto::CDeleter<OSSL_PARAM_BLD_free>> bld(OSSL_PARAM_BLD_new());
  if (!bld || OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) != 1 ||
      OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point, sizeof point) != 1)
    return crypto::openssl_error("building the public key");
  std::unique_ptr<OSSL_PARAM, crypto::CDeleter<OSSL_PARAM_free>> params(OSSL_PARAM_BLD_to_param(bld.get()));
  crypto::EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr));
  EVP_PKEY* pkey = nullptr;
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &pkey, EVP_PKEY_PUBLIC_KEY, params.get()) != 1)
    return crypto::openssl_error("the identity's public point is not a valid P-256 point");
  return crypto::EvpPkeyPtr(pkey);
}

Result<std::string> to_pem(EVP_PKEY* key) {
  crypto::BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_PUBKEY(bio.get(), key) != 1)
    return crypto::openssl_error("writing the public key PEM");
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  // in_place_value: Error is constructible from a string too (C++20 aggregate init).
  return Result<std::string>(boost::system::in_place_value, data, static_cast<std::size_t>(len));
}

Result<Bytes> ecdsa_der(const TPMT_SIGNATURE& sig) {
  if (sig.sigAlg != TPM2_ALG_ECDSA) return make_error("the TPM returned a non-ECDSA signature");
  const auto& r = sig.signature.ecdsa.signatureR;
  const auto& s = sig.signature.ecdsa.signatureS;
  std::unique_ptr<ECDSA_SIG, crypto::CDeleter<ECDSA_SIG_free>> esig(ECDSA_SIG_new());
  BIGNUM* br = BN_bin2bn(r.buffer, r.size, nullptr);
  BIGNUM* bs = BN_bin2bn(s.buffer, s.size, nullptr);
  if (!esig || !br || !bs || ECDSA_SIG_set0(esig.get(), br, bs) != 1) {
    BN_free(br);
    BN_free(bs);
    return crypto::openssl_error("encoding the signature");
  }
  int len = i2d_ECDSA_SIG(esig.get(), nullptr);
  if (len <= 0) return crypto::openssl_error("encoding the signature");
  Bytes der(static_cast<std::size_t>(len));
  unsigned char* p = der.data();
  i2d_ECDSA_SIG(esig.get(), &p);
  return der;
}

}  // namespace

namespace detail {

// AES-256-GCM envelope: magic || nonce || ciphertext || tag, bound to the secret's name.
Result<Bytes> envelope_encrypt(std::span<const std::uint8_t> key, std::string_view name,
                               std::span<const std::uint8_t> plain) {
  Bytes out(sizeof kEnvelopeMagic + kGcmNonceSize + plain.size() + kGcmTagSize);
  std::memcpy(out.data(), kEnvelopeMagic, sizeof kEnvelopeMagic);
  unsigned char* nonce = out.data() + sizeof kEnvelopeMagic;
  unsigned char* ct = nonce + kGcmNonceSize;
  const std::string aad = "certagent-sealed:" + std::string(name);
  EvpCipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  int len = 0;
  if (RAND_bytes(nonce, kGcmNonceSize) != 1 || !ctx ||
      EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key.data(), nonce) != 1 ||
      EVP_EncryptUpdate(ctx.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(aad.data()),
                        static_cast<int>(aad.size())) != 1 ||
      EVP_EncryptUpdate(ctx.get(), ct, &len, plain.data(), static_cast<int>(plain.size())) != 1 ||
      EVP_EncryptFinal_ex(ctx.get(), ct + len, &len) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kGcmTagSize, ct + plain.size()) != 1)
    return crypto::openssl_error("encrypting the secret");
  return out;
}

Result<Secret> envelope_decrypt(std::span<const std::uint8_t> key, std::string_view name,
                                std::span<const std::uint8_t> sealed, const fs::path& path) {
  const std::size_t overhead = sizeof kEnvelopeMagic + kGcmNonceSize + kGcmTagSize;
  if (sealed.size() < overhead || std::memcmp(sealed.data(), kEnvelopeMagic, sizeof kEnvelopeMagic) != 0)
    return make_error(path.string() + " is corrupt (not a certagent sealed envelope)");
  const unsigned char* nonce = sealed.data() + sizeof kEnvelopeMagic;
  const unsigned char* ct = nonce + kGcmNonceSize;
  const std::size_t ct_len = sealed.size() - overhead;
  const std::string aad = "certagent-sealed:" + std::string(name);
  std::string plain(ct_len, '\0');
  EvpCipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  int len = 0;
  bool ok = ctx && EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key.data(), nonce) == 1 &&
            EVP_DecryptUpdate(ctx.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(aad.data()),
                              static_cast<int>(aad.size())) == 1 &&
            EVP_DecryptUpdate(ctx.get(), reinterpret_cast<unsigned char*>(plain.data()), &len, ct,
                              static_cast<int>(ct_len)) == 1 &&
            EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kGcmTagSize,
                                const_cast<unsigned char*>(ct + ct_len)) == 1 &&
            EVP_DecryptFinal_ex(ctx.get(), reinterpret_cast<unsigned char*>(plain.data()) + len, &len) == 1;
  Secret result(std::move(plain));
  if (!ok) {
    ERR_clear_error();
    return make_error(path.string() + " does not decrypt with its sealed key (corrupt or swapped)");
  }
  return result;
}

}  // namespace detail

namespace {

// ---- the TPM thread ----------------------------------------------------------------------------

// One thread runs every ESAPI call (ESAPI is blocking and not thread-safe), in deadline order:
// the task due first runs next, equal deadlines in arrival order. call() queues a task as due
// now and waits for its result (a task queued from the thread itself runs inline); post()
// queues one with the caller's deadline and returns.
class Worker {
 public:
  using Deadline = Identity::Deadline;

  Worker() : thread_([this] { loop(); }) {}
  ~Worker() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  template <class F>
  auto call(F&& f) -> std::invoke_result_t<F&> {
    using R = std::invoke_result_t<F&>;
    if (std::this_thread::get_id() == thread_.get_id()) return f();
    std::packaged_task<R()> task(std::ref(f));
    auto result = task.get_future();
    post(std::chrono::system_clock::now(), [&task] { task(); });
    return result.get();
  }

  void post(Deadline due, std::function<void()> task) {
    {
      std::lock_guard lock(mutex_);
      queue_.emplace(Key{due, ++arrivals_}, std::move(task));
    }
    cv_.notify_one();
  }

  std::size_t queued() const {
    std::lock_guard lock(mutex_);
    return queue_.size();
  }

 private:
  struct Key {
    Deadline due;
    std::uint64_t arrival;
    bool operator<(const Key& o) const { return due != o.due ? due < o.due : arrival < o.arrival; }
  };

  void loop() {
    std::unique_lock lock(mutex_);
    while (true) {
      cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stop_ and drained
      auto task = std::move(queue_.begin()->second);
      queue_.erase(queue_.begin());
      lock.unlock();
      task();
      lock.lock();
    }
  }

  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::map<Key, std::function<void()>> queue_;
  std::uint64_t arrivals_{0};
  bool stop_{false};
  std::thread thread_;  // last: starts once the rest is constructed
};

}  // namespace

TPM2B_PUBLIC srk_template() {
  // == tpm2_createprimary -C o -g sha256 -G ecc256
  //      -a 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|decrypt|noda'
  TPM2B_PUBLIC t{};
  TPMT_PUBLIC& p = t.publicArea;
  p.type = TPM2_ALG_ECC;
  p.nameAlg = TPM2_ALG_SHA256;
  p.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN |
                       TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT |
                       TPMA_OBJECT_NODA;
  p.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_AES;
  p.parameters.eccDetail.symmetric.keyBits.aes = 128;
  p.parameters.eccDetail.symmetric.mode.aes = TPM2_ALG_CFB;
  p.parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL;
  p.parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
  p.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
  return t;
}

TPM2B_PUBLIC identity_key_template() {
  TPM2B_PUBLIC t{};
  TPMT_PUBLIC& p = t.publicArea;
  p.type = TPM2_ALG_ECC;
  p.nameAlg = TPM2_ALG_SHA256;
  p.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN |
                       TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_SIGN_ENCRYPT;
  p.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_NULL;
  p.parameters.eccDetail.scheme.scheme = TPM2_ALG_ECDSA;
  p.parameters.eccDetail.scheme.details.ecdsa.hashAlg = TPM2_ALG_SHA256;
  p.parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
  p.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
  return t;
}

// TPM_RC_RETRY / YIELDED / TESTING still there after ESAPI's own five immediate resubmissions:
// the TPM is busy (a self-test can take seconds). Back off and send again, within a budget.
constexpr auto kFirstBackoff = std::chrono::milliseconds(5);
constexpr auto kMaxBackoff = std::chrono::milliseconds(250);
constexpr auto kBusyBudget = std::chrono::seconds(30);

bool tpm_busy(TSS2_RC rc) {
  const TSS2_RC code = tpm_base_code(rc);
  return code == TPM2_RC_RETRY || code == TPM2_RC_YIELDED || code == TPM2_RC_TESTING;
}

// Objects kept loaded besides the identity key (HMAC keys, sealed objects), least recently
// used out first. A TPM without a resource manager has three transient slots: the identity,
// one kept object, and one free for the SRK while loading (or for an HMAC sequence).
constexpr std::size_t kKeptObjects = 1;

// Everything the TPM thread owns. Members marked "TPM thread" are touched only from tasks
// run by worker_.
class TpmIdentity::Core {
 public:
  explicit Core(TpmIdentityOptions options) : options_(std::move(options)) {}
  ~Core() {
    closing_ = true;  // queued async work still runs, and fails at once
    // Flush and close on the TPM thread, then the worker joins.
    worker_.call([this] {
      kept_.clear();
      identity_.reset();
      esys_.reset();
      tcti_.reset();
    });
  }

  template <class F>
  auto on_tpm(F&& f) {
    return worker_.call(std::forward<F>(f));
  }
  void post(Deadline due, std::function<void()> task) { worker_.post(due, std::move(task)); }
  std::size_t queued() const { return worker_.queued(); }
  bool closing() const { return closing_; }

  // ---- TPM thread ----

  // One TPM command through ESAPI: counted, and sent again with backoff while the TPM says it
  // is busy.
  template <class Call>
  TSS2_RC run(std::string_view what, Call&& call) {
    auto backoff = kFirstBackoff;
    const auto give_up = std::chrono::steady_clock::now() + kBusyBudget;
    for (;;) {
      const TSS2_RC rc = call();
      ++commands_;
      if (!tpm_busy(rc) || closing_ || std::chrono::steady_clock::now() + backoff > give_up) {
        if (tpm_busy(rc))
          logger()->warn("event=tpm_busy_gave_up call={} rc={}", what, log::quote(Tss2_RC_Decode(rc)));
        return rc;
      }
      ++retries_;
      logger()->debug("event=tpm_busy call={} rc={} retry_in_ms={}", what, log::quote(Tss2_RC_Decode(rc)),
                      backoff.count());
      std::this_thread::sleep_for(backoff);
      backoff = std::min(backoff * 2, kMaxBackoff);
    }
  }

  TssResult<> connect() {
    identity_.forget();
    for (auto& k : kept_) k.object.forget();
    kept_.clear();
    esys_.reset();
    tcti_.reset();
    TSS2_TCTI_CONTEXT* tcti = nullptr;
    TSS2_RC rc = Tss2_TctiLdr_Initialize(options_.tcti.empty() ? nullptr : options_.tcti.c_str(), &tcti);
    if (rc != TSS2_RC_SUCCESS) return tss_error("Tss2_TctiLdr_Initialize", rc);
    tcti_.reset(tcti);
    ESYS_CONTEXT* esys = nullptr;
    rc = Esys_Initialize(&esys, tcti_.get(), nullptr);
    if (rc != TSS2_RC_SUCCESS) {
      tcti_.reset();
      return tss_error("Esys_Initialize", rc);
    }
    esys_.reset(esys);
    // Firmware (or swtpm's startup-clear) has normally started the TPM: TPM2_RC_INITIALIZE.
    rc = run("Esys_Startup", [&] { return Esys_Startup(esys_.get(), TPM2_SU_CLEAR); });
    if (rc != TSS2_RC_SUCCESS && tpm_base_code(rc) != TPM2_RC_INITIALIZE) {
      if (is_tcti_error(rc)) {
        esys_.reset();
        tcti_.reset();
        return tss_error("Esys_Startup", rc);
      }
      // A resource manager may refuse Startup; the next command tells whether the TPM works.
      logger()->debug("event=startup_refused rc={}", log::quote(describe("Esys_Startup", rc)));
    }
    return {};
  }

  TssResult<TransientObject> create_srk() {
    TPM2B_SENSITIVE_CREATE sensitive{};
    TPM2B_PUBLIC templ = srk_template();
    TPM2B_DATA outside{};
    TPML_PCR_SELECTION pcrs{};
    ESYS_TR handle = ESYS_TR_NONE;
    TSS2_RC rc = run("Esys_CreatePrimary", [&] {
      return Esys_CreatePrimary(esys_.get(), ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                                &sensitive, &templ, &outside, &pcrs, &handle, nullptr, nullptr, nullptr, nullptr);
    });
    if (rc != TSS2_RC_SUCCESS) return tss_error("Esys_CreatePrimary", rc);
    ++primaries_;
    return object(handle);
  }

  // The SRK, loaded for the caller to use and flush. CreatePrimary is one of the slowest TPM
  // commands (~240 ms on a discrete TPM), so it runs once: the SRK's context is saved and
  // loaded again (TPM2_ContextLoad, a symmetric check) until a TPM reset or TPM2_Clear makes
  // the saved context useless; then the primary is created once more.
  TssResult<TransientObject> srk() {
    return with_room([&] { return srk_once(); });
  }

  TssResult<TransientObject> srk_once() {
    if (srk_context_) {
      ESYS_TR handle = ESYS_TR_NONE;
      TSS2_RC rc = run("Esys_ContextLoad", [&] { return Esys_ContextLoad(esys_.get(), srk_context_.get(), &handle); });
      if (rc == TSS2_RC_SUCCESS) return object(handle);
      if (is_tcti_error(rc)) return tss_error("Esys_ContextLoad", rc);
      logger()->info("event=srk_context_stale rc={}", log::quote(describe("Esys_ContextLoad", rc)));
      srk_context_.reset();
      // A reset or cleared TPM: our loaded objects are gone too, and their handle numbers may
      // now name objects loaded since. Drop them without flushing; they load again on use.
      identity_.forget();
      for (auto& k : kept_) k.object.forget();
      kept_.clear();
    }
    auto created = create_srk();
    if (!created) return created.error();
    TPMS_CONTEXT* saved = nullptr;
    TSS2_RC rc = run("Esys_ContextSave", [&] { return Esys_ContextSave(esys_.get(), created->get(), &saved); });
    if (rc == TSS2_RC_SUCCESS)
      srk_context_.reset(saved);
    else
      logger()->debug("event=srk_context_not_saved rc={}", log::quote(describe("Esys_ContextSave", rc)));
    return created;
  }

  TssResult<KeyBlobs> create(ESYS_TR parent, const TPM2B_PUBLIC& templ, std::span<const std::uint8_t> data) {
    TPM2B_SENSITIVE_CREATE sensitive{};
    if (data.size() > sizeof sensitive.sensitive.data.buffer) return plain_error("secret too large");
    sensitive.sensitive.data.size = static_cast<UINT16>(data.size());
    if (!data.empty()) std::memcpy(sensitive.sensitive.data.buffer, data.data(), data.size());
    TPM2B_DATA outside{};
    TPML_PCR_SELECTION pcrs{};
    TPM2B_PRIVATE* priv = nullptr;
    TPM2B_PUBLIC* pub = nullptr;
    TSS2_RC rc = run("Esys_Create", [&] {
      return Esys_Create(esys_.get(), parent, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &sensitive, &templ,
                         &outside, &pcrs, &priv, &pub, nullptr, nullptr, nullptr);
    });
    EsysPtr<TPM2B_PRIVATE> priv_owner(priv);
    EsysPtr<TPM2B_PUBLIC> pub_owner(pub);
    OPENSSL_cleanse(&sensitive, sizeof sensitive);
    if (rc != TSS2_RC_SUCCESS) return tss_error("Esys_Create", rc);
    return KeyBlobs{*pub, *priv};
  }

  TssResult<TransientObject> load(ESYS_TR parent, const KeyBlobs& blobs) {
    ESYS_TR handle = ESYS_TR_NONE;
    TSS2_RC rc = run("Esys_Load", [&] {
      return Esys_Load(esys_.get(), parent, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &blobs.priv, &blobs.pub,
                       &handle);
    });
    if (rc != TSS2_RC_SUCCESS) return tss_error("Esys_Load", rc);
    return object(handle);
  }

  // Loads the identity key under the SRK (given, or loaded here and flushed after).
  TssResult<> load_identity(TransientObject* srk_in = nullptr) {
    TransientObject own_srk;
    if (!srk_in) {
      auto parent = srk();
      if (!parent) return parent.error();
      own_srk = std::move(*parent);
      srk_in = &own_srk;
    }
    identity_.reset();
    auto key = with_room([&] { return load(srk_in->get(), identity_blobs_); });
    if (!key) return key.error();
    identity_ = std::move(*key);
    return {};
  }

  // Runs op; if the TPM lost our objects or the connection broke, reconnects and retries once
  // (op reloads what it needs).
  template <class Op>
  auto with_reload(Op&& op) -> decltype(op()) {
    if (closing_) return plain_error("the TPM identity is closing");
    if (!esys_) {
      if (auto c = connect(); !c) return c.error();
    }
    auto first = op();
    if (first || !needs_reload(first.error().rc)) return first;
    ++reloads_;
    logger()->warn("event=tpm_reload reason={}", log::quote(first.error().message));
    if (is_tcti_error(first.error().rc)) {  // may still be loaded: free the slots
      identity_.reset();
      kept_.clear();
    }
    if (auto c = connect(); !c) return c.error();
    return op();
  }

  // TPM_RC_OBJECT_MEMORY: without a resource manager another client may hold slots. Flush what
  // we keep loaded (never `in_use`), kept objects before the identity; false when nothing is left
  // to flush. What was flushed loads again on its next use.
  bool make_room(ESYS_TR in_use = ESYS_TR_NONE) {
    const auto before = kept_.size();
    std::erase_if(kept_, [&](const Kept& k) { return k.object.get() != in_use; });
    bool freed = kept_.size() != before;
    if (!freed && identity_ && identity_.get() != in_use) {
      identity_.reset();
      freed = true;
    }
    if (freed) logger()->debug("event=tpm_slots_freed reason=object_memory");
    return freed;
  }
  static bool out_of_slots(const TssError& e) { return tpm_base_code(e.rc) == TPM2_RC_OBJECT_MEMORY; }

  // Runs a command that takes a slot, making room while the TPM has none.
  template <class Attempt>
  auto with_room(Attempt&& attempt, ESYS_TR in_use = ESYS_TR_NONE) -> decltype(attempt()) {
    for (;;) {
      auto r = attempt();
      if (r || !out_of_slots(r.error()) || !make_room(in_use)) return r;
    }
  }

  TssResult<TransientObject*> identity_key() {
    if (!identity_) {
      if (auto r = load_identity(); !r) return r.error();
    }
    return &identity_;
  }

  TssResult<Bytes> sign(std::span<const std::uint8_t> digest) {
    return with_reload([&]() -> TssResult<Bytes> {
      auto key = identity_key();
      if (!key) return key.error();
      TPM2B_DIGEST d{};
      d.size = static_cast<UINT16>(digest.size());
      std::memcpy(d.buffer, digest.data(), digest.size());
      TPMT_SIG_SCHEME scheme{};
      scheme.scheme = TPM2_ALG_ECDSA;
      scheme.details.ecdsa.hashAlg = TPM2_ALG_SHA256;
      // Not a restricted key: a NULL ticket is accepted.
      TPMT_TK_HASHCHECK validation{};
      validation.tag = TPM2_ST_HASHCHECK;
      validation.hierarchy = TPM2_RH_NULL;
      TPMT_SIGNATURE* sig = nullptr;
      TSS2_RC rc = run("Esys_Sign", [&] {
        return Esys_Sign(esys_.get(), (*key)->get(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &d, &scheme,
                         &validation, &sig);
      });
      EsysPtr<TPMT_SIGNATURE> sig_owner(sig);
      ++signs_;
      if (rc != TSS2_RC_SUCCESS) return tss_error("Esys_Sign", rc);
      auto der = ecdsa_der(*sig);
      if (!der) return plain_error(der.error().message);
      return std::move(*der);
    });
  }

  TssResult<TPM2B_PUBLIC> read_public() {
    return with_reload([&]() -> TssResult<TPM2B_PUBLIC> {
      auto key = identity_key();
      if (!key) return key.error();
      TPM2B_PUBLIC* pub = nullptr;
      TSS2_RC rc = run("Esys_ReadPublic", [&] {
        return Esys_ReadPublic(esys_.get(), (*key)->get(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &pub, nullptr,
                               nullptr);
      });
      EsysPtr<TPM2B_PUBLIC> owner(pub);
      if (rc != TSS2_RC_SUCCESS) return tss_error("Esys_ReadPublic", rc);
      return *pub;
    });
  }

  // Creates an object under the SRK. TPM2_Create needs a free slot of its own besides the SRK's,
  // so the kept objects and the identity are flushed first, and the identity loaded again after
  // (enrolment and first use only).
  TssResult<KeyBlobs> create_under_srk(const TPM2B_PUBLIC& templ, std::span<const std::uint8_t> data) {
    return with_reload([&]() -> TssResult<KeyBlobs> {
      kept_.clear();
      identity_.reset();
      auto parent = srk();
      if (!parent) return parent.error();
      auto blobs = create(parent->get(), templ, data);
      if (!blobs) return blobs.error();
      if (!identity_) (void)load_identity(&*parent);  // best effort; sign() reloads lazily
      return blobs;
    });
  }

  // The object for `key` ("hmac:<name>", "sealed:<name>") loaded from `blobs`: kept loaded
  // from the first use, so an issuance in the steady state costs one TPM command (the HMAC or
  // the unseal) instead of SRK + Load + op + flushes. A blob that changed on disk (re-enrolled)
  // is loaded again.
  TssResult<ESYS_TR> kept_object(const std::string& key, const KeyBlobs& blobs) {
    auto id = marshal_pair(blobs);
    if (!id) return id.error();
    for (auto& k : kept_)
      if (k.key == key && k.blob_id == *id) {
        k.last_use = ++uses_;
        return TssResult<ESYS_TR>(boost::system::in_place_value, k.object.get());
      }
    // Make room: a replaced blob of the same name first, then the least recently used.
    std::erase_if(kept_, [&](const Kept& k) { return k.key == key; });
    while (kept_.size() >= kKeptObjects) {
      auto lru = std::min_element(kept_.begin(), kept_.end(),
                                  [](const Kept& a, const Kept& b) { return a.last_use < b.last_use; });
      kept_.erase(lru);  // flushes it
    }
    auto parent = srk();
    if (!parent) return parent.error();
    auto obj = with_room([&] { return load(parent->get(), blobs); });
    if (!obj) return obj.error();
    parent->reset();  // the slot an HMAC sequence may need
    kept_.push_back(Kept{key, std::move(*id), std::move(*obj), ++uses_});
    return TssResult<ESYS_TR>(boost::system::in_place_value, kept_.back().object.get());
  }

  template <class Op>
  auto with_object(const std::string& key, const KeyBlobs& blobs, Op&& op) -> decltype(op(ESYS_TR{})) {
    return with_reload([&]() -> decltype(op(ESYS_TR{})) {
      auto handle = kept_object(key, blobs);
      if (!handle) return handle.error();
      return op(*handle);
    });
  }

  TssResult<Secret> unseal(const std::string& key, const KeyBlobs& blobs) {
    return with_object(key, blobs, [&](ESYS_TR handle) -> TssResult<Secret> {
      TPM2B_SENSITIVE_DATA* out = nullptr;
      TSS2_RC rc = run("Esys_Unseal", [&] {
        return Esys_Unseal(esys_.get(), handle, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &out);
      });
      EsysSecretPtr<TPM2B_SENSITIVE_DATA> owner(out);
      if (rc != TSS2_RC_SUCCESS) return tss_error("Esys_Unseal", rc);
      return Secret(reinterpret_cast<const char*>(out->buffer), out->size);
    });
  }

  TssResult<Bytes> hmac(const std::string& key, const KeyBlobs& blobs, std::span<const std::uint8_t> data) {
    const bool sequence = data.size() > TPM2_MAX_DIGEST_BUFFER;
    return with_object(key, blobs, [&](ESYS_TR handle) -> TssResult<Bytes> {
      TPM2B_MAX_BUFFER buffer{};
      TPM2B_DIGEST* out = nullptr;
      if (!sequence) {
        buffer.size = static_cast<UINT16>(data.size());
        if (!data.empty()) std::memcpy(buffer.buffer, data.data(), data.size());
        TSS2_RC rc = run("Esys_HMAC", [&] {
          return Esys_HMAC(esys_.get(), handle, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &buffer,
                           TPM2_ALG_SHA256, &out);
        });
        EsysSecretPtr<TPM2B_DIGEST> owner(out);
        if (rc != TSS2_RC_SUCCESS) return tss_error("Esys_HMAC", rc);
        return Bytes(out->buffer, out->buffer + out->size);
      }
      TPM2B_AUTH auth{};
      ESYS_TR seq_handle = ESYS_TR_NONE;
      TSS2_RC rc = TSS2_RC_SUCCESS;
      auto started = with_room(
          [&]() -> TssResult<> {
            rc = run("Esys_HMAC_Start", [&] {
              return Esys_HMAC_Start(esys_.get(), handle, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &auth,
                                     TPM2_ALG_SHA256, &seq_handle);
            });
            if (rc != TSS2_RC_SUCCESS) return tss_error("Esys_HMAC_Start", rc);
            return {};
          },
          handle);
      if (!started) return started.error();
      TransientObject seq = object(seq_handle);
      std::size_t offset = 0;
      // SequenceComplete takes the last chunk; everything before goes through SequenceUpdate.
      while (data.size() - offset > TPM2_MAX_DIGEST_BUFFER) {
        buffer.size = TPM2_MAX_DIGEST_BUFFER;
        std::memcpy(buffer.buffer, data.data() + offset, TPM2_MAX_DIGEST_BUFFER);
        offset += TPM2_MAX_DIGEST_BUFFER;
        rc = run("Esys_SequenceUpdate", [&] {
          return Esys_SequenceUpdate(esys_.get(), seq.get(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &buffer);
        });
        if (rc != TSS2_RC_SUCCESS) return tss_error("Esys_SequenceUpdate", rc);
      }
      buffer.size = static_cast<UINT16>(data.size() - offset);
      std::memcpy(buffer.buffer, data.data() + offset, buffer.size);
      TPMT_TK_HASHCHECK* ticket = nullptr;
      rc = run("Esys_SequenceComplete", [&] {
        return Esys_SequenceComplete(esys_.get(), seq.get(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &buffer,
                                     ESYS_TR_RH_NULL, &out, &ticket);
      });
      EsysSecretPtr<TPM2B_DIGEST> owner(out);
      EsysPtr<TPMT_TK_HASHCHECK> ticket_owner(ticket);
      if (rc != TSS2_RC_SUCCESS) return tss_error("Esys_SequenceComplete", rc);
      seq.release();  // completed: the TPM and ESAPI dropped the sequence
      return Bytes(out->buffer, out->buffer + out->size);
    });
  }

  TssResult<> create_identity() {
    return with_reload([&]() -> TssResult<> {
      auto parent = srk();
      if (!parent) return parent.error();
      TPM2B_PUBLIC templ = identity_key_template();
      auto blobs = create(parent->get(), templ, {});
      if (!blobs) return blobs.error();
      identity_blobs_ = *blobs;
      return {};
    });
  }

  TransientObject object(ESYS_TR handle) { return TransientObject(esys_.get(), handle, &commands_); }

  // ---- set once at open, then read-only ----
  TpmIdentityOptions options_;
  KeyBlobs identity_blobs_;
  std::string public_pem_;
  crypto::EvpPkeyPtr evp_key_;

  std::atomic<std::uint64_t> signs_{0};
  std::atomic<std::uint64_t> commands_{0};
  std::atomic<std::uint64_t> reloads_{0};
  std::atomic<std::uint64_t> retries_{0};
  std::atomic<std::uint64_t> primaries_{0};

 private:
  struct Kept {
    std::string key;
    Bytes blob_id;  // marshalled public + private area
    TransientObject object;
    std::uint64_t last_use{0};
  };

  static TssResult<Bytes> marshal_pair(const KeyBlobs& blobs) {
    auto pub = marshal(blobs, true);
    if (!pub) return pub.error();
    auto priv = marshal(blobs, false);
    if (!priv) return priv.error();
    pub->insert(pub->end(), priv->begin(), priv->end());
    return std::move(*pub);
  }

  std::atomic<bool> closing_{false};
  // TPM thread. Declaration order = destruction order in reverse: the context outlives objects.
  TctiPtr tcti_;
  EsysContextPtr esys_;
  EsysPtr<TPMS_CONTEXT> srk_context_;
  TransientObject identity_;
  std::vector<Kept> kept_;
  std::uint64_t uses_{0};
  Worker worker_;  // last member: destroyed (joined) first, after ~Core flushed on it
};

namespace {

// The EVP key's signer: reaches the identity through a weak reference, so a key that outlives
// its identity fails cleanly instead of touching freed memory.
class CoreSigner final : public DigestSigner {
 public:
  explicit CoreSigner(std::weak_ptr<TpmIdentity::Core> core) : core_(std::move(core)) {}
  Result<Bytes> sign_digest(std::span<const std::uint8_t> digest) override;

 private:
  std::weak_ptr<TpmIdentity::Core> core_;
};

}  // namespace

Result<Bytes> CoreSigner::sign_digest(std::span<const std::uint8_t> digest) {
  auto core = core_.lock();
  if (!core) return make_error("the TPM identity was closed");
  auto r = core->on_tpm([&] { return core->sign(digest); });
  if (!r) return to_error(r.error());
  return std::move(*r);
}

namespace {

// What a user reads when the TPM cannot be reached or the TCTI string is wrong.
Error connect_error(const TpmIdentityOptions& options, const TssError& e) {
  const std::string tcti = "\"" + options.tcti + "\" (identity.tcti)";
  const TSS2_RC rc = e.rc;
  if (rc == TSS2_TCTI_RC_NOT_SUPPORTED || rc == TSS2_TCTI_RC_BAD_VALUE || rc == TSS2_TCTI_RC_BAD_REFERENCE)
    return make_error("the TCTI " + tcti + " is not valid: " + e.message +
                      ": expected e.g. device:/dev/tpmrm0 or swtpm:path=/run/swtpm/tpm.sock");
  return make_error("no TPM reachable through " + tcti + ": " + e.message +
                    ": check that the TPM device exists and this user may open it (group tss), "
                    "or that the TPM simulator is running");
}

// A TPM-layer failure while loading a blob that loaded before means the TPM's owner seed changed
// (TPM2_Clear, another TPM) or the blob was altered.
bool is_refusal(const TssError& e) { return e.rc != 0 && !is_tcti_error(e.rc) && tpm_base_code(e.rc) != 0; }

std::string reenrol_hint(const TpmIdentityOptions& options) {
  return "move " + options.dir.string() + " aside and " + options.enroll_hint +
         " (then re-register the new public key with the brokers)";
}

}  // namespace

// The work behind sign_digest, hmac and unseal, on a Core (the async forms run it on the TPM
// thread without touching the TpmIdentity, which may be gone by then).
namespace {

Result<Bytes> sign_on(TpmIdentity::Core& core, std::span<const std::uint8_t> digest) {
  if (digest.size() != 32)
    return make_error("sign_digest: expected a 32-byte SHA-256 digest, got " + std::to_string(digest.size()) +
                      " bytes");
  auto r = core.on_tpm([&] { return core.sign(digest); });
  if (!r) return make_error("TPM signature failed: " + r.error().message);
  return std::move(*r);
}

Result<Bytes> hmac_on(TpmIdentity::Core& core, std::string_view name, std::span<const std::uint8_t> data) {
  if (auto v = validate_secret_name(name); !v) return v.error();
  const BlobPaths paths = hmac_paths(core.options_.dir, name);
  BlobRead blobs = read_blobs(paths);
  if (blobs.state == BlobState::missing)
    return make_error("no HMAC key \"" + std::string(name) + "\" in " + core.options_.dir.string() + ": " +
                      core.options_.enroll_hint + " with the key file named in the config");
  if (blobs.state == BlobState::broken) return make_error("HMAC key \"" + std::string(name) + "\": " + blobs.problem);
  auto r = core.on_tpm([&] { return core.hmac("hmac:" + std::string(name), blobs.blobs, data); });
  if (!r) {
    if (r.error().call == "Esys_Load" && is_refusal(r.error()))
      return make_error("the TPM no longer accepts HMAC key \"" + std::string(name) + "\" (cleared?): " +
                        r.error().message + ": " + reenrol_hint(core.options_));
    return make_error("TPM HMAC with key \"" + std::string(name) + "\" failed: " + r.error().message);
  }
  return std::move(*r);
}

Result<Secret> unseal_on(TpmIdentity::Core& core, std::string_view name) {
  if (auto v = validate_secret_name(name); !v) return v.error();
  const fs::path& dir = core.options_.dir;
  BlobRead blobs = read_blobs(sealed_paths(dir, name));
  if (blobs.state == BlobState::missing)
    return make_error("no sealed secret \"" + std::string(name) + "\" in " + dir.string() + ": " +
                      core.options_.enroll_hint + " with the secret file named in the config");
  if (blobs.state == BlobState::broken) return make_error("sealed secret \"" + std::string(name) + "\": " + blobs.problem);
  auto envelope = read_file_bytes(envelope_path(dir, name), kMaxSealSize + 64);
  if (!envelope) return envelope.error();
  auto r = core.on_tpm([&] { return core.unseal("sealed:" + std::string(name), blobs.blobs); });
  if (!r) {
    if (r.error().call == "Esys_Load" && is_refusal(r.error()))
      return make_error("the TPM no longer accepts sealed secret \"" + std::string(name) + "\" (cleared?): " +
                        r.error().message + ": " + reenrol_hint(core.options_));
    return make_error("unsealing \"" + std::string(name) + "\" failed: " + r.error().message);
  }
  if (!*envelope) return std::move(*r);
  if (r->size() != kEnvelopeKeySize)
    return make_error("sealed secret \"" + std::string(name) + "\" has an envelope but no 32-byte key");
  return envelope_decrypt(as_bytes(r->view()), name, **envelope, envelope_path(dir, name));
}

}  // namespace

// ---- TpmIdentity --------------------------------------------------------------------------------

TpmIdentity::TpmIdentity(std::shared_ptr<Core> core, bool created) : core_(std::move(core)), created_(created) {}

TpmIdentity::~TpmIdentity() = default;

Result<std::unique_ptr<TpmIdentity>> TpmIdentity::open(const TpmIdentityOptions& options, OpenMode mode) {
  // tpm2-tss logs its own errors to stderr; ours are returned with context instead.
  ::setenv("TSS2_LOG", "all+none", 0);
  const BlobPaths paths = identity_paths(options.dir);
  BlobRead existing = read_blobs(paths);
  if (existing.state == BlobState::broken)
    return make_error("the identity in " + options.dir.string() + " is corrupt: " + existing.problem +
                      ": restore it from a backup, or " + reenrol_hint(options));
  if (existing.state == BlobState::missing && mode == OpenMode::existing)
    return make_error("no identity in " + options.dir.string() + ": " + options.enroll_hint);
  if (existing.state == BlobState::ok) {
    if (auto c = check_identity_public(existing.blobs.pub); !c)
      return make_error("the identity in " + options.dir.string() + " is corrupt: " + paths.pub.string() +
                        " does not describe the identity key (" + c.error().message + "): " +
                        reenrol_hint(options));
  }

  auto core = std::make_shared<Core>(options);
  const bool create = existing.state == BlobState::missing;
  core->identity_blobs_ = existing.blobs;

  auto connected = core->on_tpm([&] { return core->connect(); });
  if (!connected) return connect_error(options, connected.error());

  if (create) {
    auto made = core->on_tpm([&] { return core->create_identity(); });
    if (!made) return make_error("creating the identity key in the TPM: " + made.error().message);
    if (auto d = ensure_private_dir(options.dir); !d) return d.error();
    if (auto w = write_blobs(paths, core->identity_blobs_); !w)
      return make_error("saving the identity: " + w.error().message);
  }

  auto loaded = core->on_tpm([&] { return core->with_reload([&] { return core->load_identity(); }); });
  if (!loaded) {
    const TssError& e = loaded.error();
    if (is_tcti_error(e.rc)) return connect_error(options, e);
    if (e.call == "Esys_Load" && is_refusal(e))
      return make_error("the TPM no longer accepts the identity in " + options.dir.string() +
                        " (cleared, or another TPM?): " + e.message + ": " + reenrol_hint(options));
    return make_error("loading the identity key: " + e.message);
  }

  auto public_key = public_to_evp(core->identity_blobs_.pub);
  if (!public_key) return public_key.error();
  auto pem = to_pem(public_key->get());
  if (!pem) return pem.error();
  core->public_pem_ = std::move(*pem);
  auto evp = make_delegated_ec_key(public_key->get(), std::make_shared<CoreSigner>(core));
  if (!evp) return evp.error();
  core->evp_key_ = std::move(*evp);

  logger()->info("event=identity_opened backend=tpm created={} tcti={} dir={}", create,
                 log::quote(options.tcti), log::quote(options.dir.string()));
  return std::unique_ptr<TpmIdentity>(new TpmIdentity(std::move(core), create));
}

std::string TpmIdentity::public_key_pem() const { return core_->public_pem_; }

Result<Bytes> TpmIdentity::sign_digest(std::span<const std::uint8_t> digest) { return sign_on(*core_, digest); }

Result<crypto::EvpPkeyPtr> TpmIdentity::private_key() {
  if (EVP_PKEY_up_ref(core_->evp_key_.get()) != 1) return make_error("EVP_PKEY_up_ref failed");
  return crypto::EvpPkeyPtr(core_->evp_key_.get());
}

Result<> TpmIdentity::import_hmac_key(std::string_view name, std::span<const std::uint8_t> key) {
  if (auto v = validate_secret_name(name); !v) return v;
  if (key.empty()) return make_error("HMAC key \"" + std::string(name) + "\" is empty");
  unsigned char hashed[32];
  if (key.size() > kHmacBlockSize) {
    unsigned int len = 0;
    if (EVP_Digest(key.data(), key.size(), hashed, &len, EVP_sha256(), nullptr) != 1)
      return crypto::openssl_error("hashing the HMAC key");
    key = {hashed, len};
  }
  const TPM2B_PUBLIC templ = keyed_hash_template(true);
  auto blobs = core_->on_tpm([&] { return core_->create_under_srk(templ, key); });
  OPENSSL_cleanse(hashed, sizeof hashed);
  if (!blobs) return make_error("importing HMAC key \"" + std::string(name) + "\" into the TPM: " + blobs.error().message);
  if (auto d = ensure_private_dir(core_->options_.dir); !d) return d;
  if (auto w = write_blobs(hmac_paths(core_->options_.dir, name), *blobs); !w) return w;
  logger()->info("event=hmac_key_imported name={}", name);
  return {};
}

Result<Bytes> TpmIdentity::hmac(std::string_view name, std::span<const std::uint8_t> data) {
  return hmac_on(*core_, name, data);
}

Result<> TpmIdentity::seal(std::string_view name, std::span<const std::uint8_t> bytes) {
  if (auto v = validate_secret_name(name); !v) return v;
  if (bytes.size() > kMaxSealSize)
    return make_error("secret \"" + std::string(name) + "\" is " + std::to_string(bytes.size()) +
                      " bytes; at most " + std::to_string(kMaxSealSize) + " can be sealed");
  const fs::path& dir = core_->options_.dir;
  const BlobPaths paths = sealed_paths(dir, name);
  const fs::path envelope = envelope_path(dir, name);
  std::optional<Bytes> encrypted;
  unsigned char data_key[kEnvelopeKeySize];
  std::span<const std::uint8_t> to_seal = bytes;
  if (bytes.size() > kMaxDirectSealSize) {
    if (RAND_priv_bytes(data_key, sizeof data_key) != 1) return make_error("RAND_priv_bytes failed");
    auto e = envelope_encrypt(data_key, name, bytes);
    if (!e) {
      OPENSSL_cleanse(data_key, sizeof data_key);
      return e.error();
    }
    encrypted = std::move(*e);
    to_seal = {data_key, sizeof data_key};
  }
  const TPM2B_PUBLIC templ = keyed_hash_template(false);
  auto blobs = core_->on_tpm([&] { return core_->create_under_srk(templ, to_seal); });
  OPENSSL_cleanse(data_key, sizeof data_key);
  if (!blobs) return make_error("sealing \"" + std::string(name) + "\" into the TPM: " + blobs.error().message);
  if (auto d = ensure_private_dir(dir); !d) return d;
  // .pub goes first and comes back last: a half-written secret reads as absent.
  if (auto r = remove_file(paths.pub); !r) return r;
  if (encrypted) {
    if (auto w = write_file_atomic(envelope, *encrypted, 0600); !w) return w;
  } else if (auto r = remove_file(envelope); !r) {
    return r;
  }
  if (auto w = write_blobs(paths, *blobs); !w) return w;
  logger()->info("event=secret_sealed name={}", name);
  return {};
}

Result<Secret> TpmIdentity::unseal(std::string_view name) { return unseal_on(*core_, name); }

bool TpmIdentity::has_secret(std::string_view name) const {
  if (!validate_secret_name(name)) return false;
  const fs::path& dir = core_->options_.dir;
  return file_exists(hmac_paths(dir, name).pub) || file_exists(sealed_paths(dir, name).pub);
}

std::uint64_t TpmIdentity::sign_count() const { return core_->signs_; }
std::uint64_t TpmIdentity::command_count() const { return core_->commands_; }
std::uint64_t TpmIdentity::reload_count() const { return core_->reloads_; }
std::uint64_t TpmIdentity::busy_retry_count() const { return core_->retries_; }
std::uint64_t TpmIdentity::primary_count() const { return core_->primaries_; }
std::size_t TpmIdentity::queued() const { return core_->queued(); }

// The async forms run the same work on the TPM thread, in deadline order (a blocking call made
// from the TPM thread runs inline). A task holds the Core, never `this`: when the identity is
// destroyed with work still queued, ~Core marks itself closing first and waits on the TPM
// thread, so queued work fails at once and never outlives the Core (the worker drains and
// joins before the Core's members go).
void TpmIdentity::async_sign_digest(Bytes digest, Deadline deadline, Completion<Bytes> done) {
  Core* core = core_.get();
  core->post(deadline, [core, digest = std::move(digest), done = std::move(done)] {
    if (core->closing()) return done(make_error("the TPM identity was closed"));
    done(sign_on(*core, digest));
  });
}

void TpmIdentity::async_hmac(std::string name, Bytes data, Deadline deadline, Completion<Bytes> done) {
  Core* core = core_.get();
  core->post(deadline, [core, name = std::move(name), data = std::move(data), done = std::move(done)] {
    if (core->closing()) return done(make_error("the TPM identity was closed"));
    done(hmac_on(*core, name, data));
  });
}

void TpmIdentity::async_unseal(std::string name, Deadline deadline, Completion<Secret> done) {
  Core* core = core_.get();
  core->post(deadline, [core, name = std::move(name), done = std::move(done)] {
    if (core->closing()) return done(make_error("the TPM identity was closed"));
    done(unseal_on(*core, name));
  });
}

Result<TPM2B_PUBLIC> TpmIdentity::read_public_from_tpm() {
  auto r = core_->on_tpm([&] { return core_->read_public(); });
  if (!r) return to_error(r.error());
  return *r;
}

}  // namespace certagent::tpm
