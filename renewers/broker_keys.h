#pragma once
// Shared secrets of brokers (ACME EAB key, cfssl auth key) live in the identity as HMAC keys,
// put there by `certagent enroll` from the configured key file (which enroll then deletes).
// When the identity does not hold the key yet but the file is still there, the renewer imports
// it on first use, so a development setup works without an enroll step.

#include "core/result.h"
#include "tpm/identity.h"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace certagent::renewers {

using KeyFileParser = std::function<Result<std::vector<std::uint8_t>>(std::string_view file_text)>;

// HMAC-SHA256 of `data` with the identity's key `name`, importing it from `key_file` (parsed
// by `parse`) when the identity does not have it yet.
[[nodiscard]] Result<std::vector<std::uint8_t>> broker_hmac(tpm::Identity& identity, const std::string& name,
                                                            const std::filesystem::path& key_file,
                                                            const KeyFileParser& parse,
                                                            std::span<const std::uint8_t> data);

// The same from the event loop: the HMAC is queued on the identity's thread under `deadline`
// and awaited (the one-time import from the key file still blocks).
[[nodiscard]] boost::asio::awaitable<Result<std::vector<std::uint8_t>>> broker_hmac_async(
    tpm::Identity& identity, boost::asio::any_io_executor ex, std::string name, std::filesystem::path key_file,
    KeyFileParser parse, std::vector<std::uint8_t> data, tpm::Identity::Deadline deadline);

// Hex text (cfssl auth keys), whitespace around it ignored.
[[nodiscard]] Result<std::vector<std::uint8_t>> parse_hex_key_text(std::string_view text);

}  // namespace certagent::renewers
