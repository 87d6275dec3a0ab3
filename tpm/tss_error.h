#pragma once
// TSS2 return codes turned into readable errors, and the few classes of failure the TPM
// identity reacts to differently (reload after a TPM reset, refused blobs, TCTI problems).

#include "core/result.h"

#include <tss2/tss2_common.h>

#include <string>
#include <string_view>

namespace certagent::tpm {

// A failed TSS2 call. rc is kept for classification; 0 when the failure is not from the TSS
// (a file, OpenSSL).
struct TssError {
  TSS2_RC rc{0};
  std::string message;
  std::string call;  // "Esys_Load": which call failed
};

// boost::system::result calls this (found by ADL) when value() is used on an error.
[[noreturn]] void throw_exception_from_error(const TssError& e, const boost::source_location& loc);

template <class T = void>
using TssResult = boost::system::result<T, TssError>;

// "Esys_Sign: tpm:handle(1):the handle is not correct for the use (0x0000018b)"
std::string describe(std::string_view call, TSS2_RC rc);
inline TssError tss_error(std::string_view call, TSS2_RC rc) {
  return {rc, describe(call, rc), std::string(call)};
}
inline TssError plain_error(std::string message) { return {0, std::move(message), {}}; }
inline Error to_error(TssError e) { return make_error(std::move(e.message)); }

// The response code of a TPM-layer error without its parameter/handle/session number, e.g.
// TPM2_RC_INTEGRITY for 0x19f; 0 for codes from other layers (TCTI, ESAPI, MU).
TSS2_RC tpm_base_code(TSS2_RC rc);

// The TPM lost our objects (TPM reset, swtpm restart, TPM2_Startup needed) or the connection
// broke: reconnect, re-create the parent, reload the blob and retry once.
bool needs_reload(TSS2_RC rc);

// A TCTI-layer error (transport).
bool is_tcti_error(TSS2_RC rc);

}  // namespace certagent::tpm
