#pragma once
// Internal to tpm_identity.cpp: what it reads back from the identity directory (marshalled key
// blobs, the identity's public area, AES-GCM envelopes of large sealed secrets), declared here
// so the fuzz harness (tests/fuzz/fuzz_tpm_blobs.cpp) reaches the parsers without a TPM.

#include "core/result.h"
#include "core/secret.h"

#include <tss2/tss2_tpm2_types.h>

#include <cstdint>
#include <filesystem>
#include <span>
#include <string_view>
#include <vector>

namespace certagent::tpm::detail {

struct KeyBlobs {
  TPM2B_PUBLIC pub{};
  TPM2B_PRIVATE priv{};
};

// The two files of a key as Tss2_MU marshalled them; every byte must be used. Errors name the
// file (`pub_name`, `priv_name`).
[[nodiscard]] Result<KeyBlobs> unmarshal_blobs(std::span<const std::uint8_t> pub,
                                               std::span<const std::uint8_t> priv,
                                               std::string_view pub_name, std::string_view priv_name);

// The identity's public area must describe the key we create (ECDSA P-256, SHA-256, a signing
// key fixed to this TPM): anything else is corrupt (or planted) and is not used.
[[nodiscard]] Result<> check_identity_public(const TPM2B_PUBLIC& pub);

// AES-256-GCM envelope: magic || nonce || ciphertext || tag, bound to the secret's name.
[[nodiscard]] Result<std::vector<std::uint8_t>> envelope_encrypt(std::span<const std::uint8_t> key,
                                                                 std::string_view name,
                                                                 std::span<const std::uint8_t> plain);
[[nodiscard]] Result<Secret> envelope_decrypt(std::span<const std::uint8_t> key, std::string_view name,
                                              std::span<const std::uint8_t> sealed,
                                              const std::filesystem::path& path);

}  // namespace certagent::tpm::detail
