#pragma once
// Text encodings of binary values that may be secrets (EAB keys) or not (JWS parts).

#include "core/secret.h"

#include <optional>
#include <string_view>

namespace certagent {

// base64url (RFC 4648 §5) as ACME CAs hand out EAB keys and JWS carries its parts; the standard
// alphabet and '=' padding are accepted too. Into a Secret: the value may be key material.
std::optional<Secret> base64url_decode(std::string_view text);

// Hex digits in pairs, either case (cfssl auth keys). Nullopt on an odd count or a non-hex
// character; nothing decoded so far is left unwiped.
std::optional<Secret> hex_decode(std::string_view text);

}  // namespace certagent
