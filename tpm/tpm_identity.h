#pragma once
// The TPM backend of the host identity (tpm2-tss ESAPI).
//
// - The storage root key (SRK) is derived from a fixed template (CreatePrimary is deterministic
//   until TPM2_Clear) once per start, its context saved, and loaded from that context whenever a
//   parent is needed (TPM2_ContextLoad, far cheaper than CreatePrimary on a discrete TPM), then
//   flushed; nothing is made persistent (0x81000001 belongs to the OS).
// - The identity key is ECC P-256, fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|sign,
//   bound to ECDSA-SHA256. Only its marshalled TPM2B_PUBLIC/TPM2B_PRIVATE live on disk.
// - The identity key stays loaded, and so does the last HMAC key or sealed object used: in the
//   steady state a signature, an HMAC or an unseal is one TPM command. At most two of our objects
//   are loaded at rest, three while loading (a TPM without resource manager has three slots).
// - Every ESAPI call runs on one dedicated thread, earliest deadline first; the blocking methods
//   queue as due now and wait, the async_ ones queue with the caller's deadline.
// - TPM_RC_RETRY / YIELDED / TESTING (a busy TPM, a self-test) are retried with a short backoff
//   for up to 30 s, after ESAPI's own immediate resubmissions.
// - When the TPM loses the key (TPM reset, simulator restart, broken connection) the
//   connection is re-made, the SRK re-created, the blob reloaded and the command retried once.
//
// Files in the identity directory: identity.{pub,priv}; hmac-<name>.{pub,priv} (imported HMAC
// keys); sealed-<name>.{pub,priv} (sealed data objects) plus sealed-<name>.enc for secrets over
// 128 bytes (AES-256-GCM under a 32-byte key that is itself the sealed object).

#include "tpm/identity.h"
#include "tpm/identity_store.h"

#include <tss2/tss2_tpm2_types.h>

#include <cstdint>
#include <memory>
#include <string>

namespace certagent::tpm {

struct TpmIdentityOptions {
  fs::path dir;             // <state_dir>/identity
  std::string tcti;         // identity.tcti: "device:/dev/tpmrm0", "swtpm:path=/x/tpm.sock"
  std::string enroll_hint;  // what to run when there is no identity: "run `certagent enroll ...`"
};

class TpmIdentity final : public Identity {
 public:
  // existing: fails with a message saying what to do when the TPM is unreachable, the TCTI
  // string is wrong, the blobs are missing or corrupt, or the TPM no longer accepts them.
  // create_if_missing (enrol): creates the key when there is none; keeps an existing one.
  [[nodiscard]] static Result<std::unique_ptr<TpmIdentity>> open(const TpmIdentityOptions& options,
                                                                 OpenMode mode);
  ~TpmIdentity() override;
  TpmIdentity(const TpmIdentity&) = delete;
  TpmIdentity& operator=(const TpmIdentity&) = delete;

  std::string_view backend() const override { return "tpm"; }
  std::string public_key_pem() const override;
  [[nodiscard]] Result<Bytes> sign_digest(std::span<const std::uint8_t> digest) override;
  [[nodiscard]] Result<crypto::EvpPkeyPtr> private_key() override;
  [[nodiscard]] Result<Bytes> hmac(std::string_view name, std::span<const std::uint8_t> data) override;
  [[nodiscard]] Result<> import_hmac_key(std::string_view name,
                                         std::span<const std::uint8_t> key) override;
  [[nodiscard]] Result<> seal(std::string_view name, std::span<const std::uint8_t> bytes) override;
  [[nodiscard]] Result<Secret> unseal(std::string_view name) override;
  bool has_secret(std::string_view name) const override;
  void async_sign_digest(Bytes digest, Deadline deadline, Completion<Bytes> done) override;
  void async_hmac(std::string name, Bytes data, Deadline deadline, Completion<Bytes> done) override;
  void async_unseal(std::string name, Deadline deadline, Completion<Secret> done) override;

  // This open created the key (first enrolment).
  bool created() const { return created_; }
  // Counters for tests and metrics: TPM2_Sign commands, all TPM commands, reloads after the
  // TPM lost the key.
  std::uint64_t sign_count() const;
  std::uint64_t command_count() const;
  std::uint64_t reload_count() const;
  // Commands sent again because the TPM answered RETRY / YIELDED / TESTING; primary keys created.
  std::uint64_t busy_retry_count() const;
  std::uint64_t primary_count() const;
  // Work waiting for the TPM thread.
  std::size_t queued() const;
  // The identity key's public area as the TPM reports it (TPM2_ReadPublic), e.g. to check its
  // attributes.
  [[nodiscard]] Result<TPM2B_PUBLIC> read_public_from_tpm();

  class Core;

 private:
  TpmIdentity(std::shared_ptr<Core> core, bool created);
  std::shared_ptr<Core> core_;
  bool created_;
};

// The identity key's creation template (exposed for tests): ECC P-256, ECDSA-SHA256,
// fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|sign.
TPM2B_PUBLIC identity_key_template();
// The SRK template (same as `tpm2_createprimary -C o -G ecc256`).
TPM2B_PUBLIC srk_template();

}  // namespace certagent::tpm
