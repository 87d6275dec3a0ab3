#pragma once
// PKCS#12 files for Java and other consumers that read keystores, not PEM: a keystore (key and
// chain) and a truststore (trust anchors), written with the algorithms OpenSSL 3 and Java
// (11.0.12+, 17) both read and default to: PBES2 (PBKDF2 with HMAC-SHA256, AES-256-CBC) for the
// key and the certificates, and an HMAC-SHA256 integrity MAC.

#include "core/result.h"
#include "core/secret.h"

#include <string>
#include <string_view>

namespace certagent::crypto {

// PBKDF2 and MAC iterations: Java's own default since JDK 12 (OpenSSL's is 2048).
inline constexpr int kPkcs12Iterations = 10000;

// The "Oracle JDK trusted key usage" bag attribute: a certificate bag without it is not a
// trusted entry for Java's KeyStore (OpenSSL 3.2's `pkcs12 -export -jdktrust`).
inline constexpr char kJdkTrustedKeyUsageOid[] = "2.16.840.1.113894.746875.1.1";

// One PrivateKeyEntry: the key (PKCS#8 shrouded bag) and the leaf, both with friendlyName =
// `alias` and the same localKeyID, then the intermediates from `chain_pem`. The DER comes back
// in a Secret (it holds the key, encrypted, and is wiped when dropped).
[[nodiscard]] Result<Secret> make_keystore(std::string_view alias, std::string_view key_pem,
                                           std::string_view cert_pem, std::string_view chain_pem,
                                           const Secret& password, int iterations = kPkcs12Iterations);

// One trusted certificate entry per certificate in `trust_pem` (text between PEM blocks is
// ignored, as trust bundle readers do), each with the JDK trusted-usage attribute
// (anyExtendedKeyUsage) and friendlyName = its subject CN (or "ca-N"), made unique.
[[nodiscard]] Result<std::string> make_truststore(std::string_view trust_pem, const Secret& password,
                                                  int iterations = kPkcs12Iterations);

// The password as written in a file: surrounding white space (a trailing newline) dropped.
// Empty, or longer than 1024 bytes, is an error naming `what`.
[[nodiscard]] Result<Secret> password_from_text(std::string_view text, std::string_view what);

}  // namespace certagent::crypto
