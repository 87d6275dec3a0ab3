#include "tpm/tss_error.h"

#include <tss2/tss2_rc.h>
#include <tss2/tss2_tpm2_types.h>

#include <boost/throw_exception.hpp>

#include <cstdio>
#include <stdexcept>

namespace certagent::tpm {

void throw_exception_from_error(const TssError& e, const boost::source_location& loc) {
  boost::throw_exception(std::runtime_error(e.message), loc);
}

std::string describe(std::string_view call, TSS2_RC rc) {
  char code[16];
  std::snprintf(code, sizeof code, "0x%08x", rc);
  return std::string(call) + ": " + Tss2_RC_Decode(rc) + " (" + code + ")";
}

TSS2_RC tpm_base_code(TSS2_RC rc) {
  const TSS2_RC layer = rc & TSS2_RC_LAYER_MASK;
  // A resource manager may relay TPM codes in its own layer.
  if (layer != TSS2_TPM_RC_LAYER && layer != TSS2_RESMGR_TPM_RC_LAYER) return 0;
  const TSS2_RC base = rc & 0xffff;
  if (base & TPM2_RC_FMT1) return base & (TPM2_RC_FMT1 | 0x3f);
  return base;
}

bool is_tcti_error(TSS2_RC rc) { return (rc & TSS2_RC_LAYER_MASK) == TSS2_TCTI_RC_LAYER; }

bool needs_reload(TSS2_RC rc) {
  if (rc == TSS2_RC_SUCCESS) return false;
  if (is_tcti_error(rc)) return true;
  const TSS2_RC code = tpm_base_code(rc);
  if (code == 0) return false;
  if (code == TPM2_RC_INITIALIZE) return true;                         // TPM needs Startup
  if (code >= TPM2_RC_REFERENCE_H0 && code <= TPM2_RC_REFERENCE_H6) return true;  // not loaded
  if (code == TPM2_RC_HANDLE) return true;                             // handle unknown
  return false;
}

}  // namespace certagent::tpm
