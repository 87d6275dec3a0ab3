#pragma once
// `certagent enroll`: first-boot creation of the host identity and sealing of broker secrets.
//
// - Creates the identity if there is none (idempotent: a second run keeps the key and reports
//   the same public key). Never replaces an existing identity, even one the TPM refuses.
// - Reports the public key (PEM) and its fingerprint for the broker's allowlist: lowercase hex
//   SHA-256 of the DER SubjectPublicKeyInfo, no colons, the same as
//   `openssl pkey -pubin -in id.pem -outform DER | sha256sum`.
// - Optionally writes a CSR for an identity certificate, signed by the identity itself.
// - For each broker in the config, moves the secret files its plug-in names
//   (RenewerType::secrets) into the identity and deletes the plaintext once the sealed copy has
//   been checked; the built-in ones:
//     acme  eab_hmac_key_file (base64url)  -> import_hmac_key("<broker>.eab_hmac")
//     cfssl auth_key_file     (hex)        -> import_hmac_key("<broker>.cfssl_auth")
//     lemur token_file        (text)       -> seal("<broker>.lemur_token")
//   and each certificate's keystore password with files.pkcs12.sealed: true:
//     files.pkcs12.password_file (text) -> seal("<certificate>.pkcs12_password")
//   Surrounding whitespace in the files is ignored. A file already sealed and removed by an
//   earlier run is fine; a file present again is sealed again (key rotation).

#include "core/result.h"

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace certagent::config {
struct Config;
}

namespace certagent::tpm {

struct EnrollOptions {
  std::optional<std::filesystem::path> csr_out;  // write a PEM CSR here (0644)
  // "/CN=host-1/O=Example" (OpenSSL's one-line form, no escapes) or a bare common name;
  // empty: CN=<hostname>.
  std::string csr_subject;
};

struct EnrollReport {
  std::string backend;             // "tpm" | "file"
  bool created{false};             // false: the existing identity was kept
  std::string public_key_pem;
  std::string fingerprint_sha256;  // 64 lowercase hex characters
  std::optional<std::filesystem::path> csr_path;
  std::vector<std::string> sealed;          // secret names stored by this run
  std::vector<std::string> already_sealed;  // named in the config, stored by an earlier run
};

[[nodiscard]] Result<EnrollReport> enroll(const config::Config& config, const EnrollOptions& options);

// The report as the CLI prints it: the PEM, then "sha256:<fingerprint>", then one line per
// secret ("sealed <name>" / "already sealed <name>") and the CSR path if any.
std::string format_report(const EnrollReport& report);

// Fingerprint of a PEM SubjectPublicKeyInfo as in EnrollReport.
[[nodiscard]] Result<std::string> public_key_fingerprint(std::string_view public_key_pem);

}  // namespace certagent::tpm
