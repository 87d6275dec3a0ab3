#pragma once
// RAII for tpm2-tss ESAPI: every ESAPI output pointer, the TCTI and ESYS contexts, and loaded
// transient objects each have exactly one owner.

#include <openssl/crypto.h>
#include <tss2/tss2_esys.h>
#include <tss2/tss2_tctildr.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <utility>

namespace certagent::tpm {

// ESAPI output parameters are allocated by ESAPI and released with Esys_Free.
struct EsysFree {
  void operator()(void* p) const noexcept { Esys_Free(p); }
};
template <class T>
using EsysPtr = std::unique_ptr<T, EsysFree>;

// Outputs that carry secrets (unsealed data, HMAC results) are wiped before they are freed.
struct EsysFreeWiped {
  template <class T>
  void operator()(T* p) const noexcept {
    if (p) OPENSSL_cleanse(p, sizeof(T));
    Esys_Free(p);
  }
};
template <class T>
using EsysSecretPtr = std::unique_ptr<T, EsysFreeWiped>;

struct TctiFinalize {
  void operator()(TSS2_TCTI_CONTEXT* tcti) const noexcept { Tss2_TctiLdr_Finalize(&tcti); }
};
using TctiPtr = std::unique_ptr<TSS2_TCTI_CONTEXT, TctiFinalize>;

// Esys_Finalize releases ESAPI's memory only; it does not flush TPM objects.
struct EsysFinalize {
  void operator()(ESYS_CONTEXT* ctx) const noexcept { Esys_Finalize(&ctx); }
};
using EsysContextPtr = std::unique_ptr<ESYS_CONTEXT, EsysFinalize>;

// A transient object (or sequence) loaded in the TPM: flushed when destroyed, so a TPM slot is
// never leaked. Move-only. The ESYS context must outlive it. `commands`, when given, counts the
// flush as a TPM command.
class TransientObject {
 public:
  TransientObject() = default;
  TransientObject(ESYS_CONTEXT* ctx, ESYS_TR handle, std::atomic<std::uint64_t>* commands = nullptr)
      : ctx_(ctx), handle_(handle), commands_(commands) {}
  TransientObject(TransientObject&& other) noexcept
      : ctx_(other.ctx_), handle_(std::exchange(other.handle_, ESYS_TR_NONE)), commands_(other.commands_) {}
  TransientObject& operator=(TransientObject&& other) noexcept {
    if (this != &other) {
      reset();
      ctx_ = other.ctx_;
      handle_ = std::exchange(other.handle_, ESYS_TR_NONE);
      commands_ = other.commands_;
    }
    return *this;
  }
  TransientObject(const TransientObject&) = delete;
  TransientObject& operator=(const TransientObject&) = delete;
  ~TransientObject() { reset(); }

  ESYS_TR get() const { return handle_; }
  explicit operator bool() const { return handle_ != ESYS_TR_NONE; }

  // Flushes the object from the TPM (best effort: after a TPM reset it is already gone).
  void reset() noexcept {
    if (ctx_ && handle_ != ESYS_TR_NONE) {
      Esys_FlushContext(ctx_, handle_);
      if (commands_) ++*commands_;
    }
    handle_ = ESYS_TR_NONE;
  }
  // The TPM already dropped the object (SequenceComplete, TPM reset): drop ESAPI's record only.
  void forget() noexcept {
    if (ctx_ && handle_ != ESYS_TR_NONE) Esys_TR_Close(ctx_, &handle_);
    handle_ = ESYS_TR_NONE;
  }
  // Ownership went elsewhere (ESAPI already dropped the object, e.g. after SequenceComplete).
  ESYS_TR release() noexcept { return std::exchange(handle_, ESYS_TR_NONE); }

 private:
  ESYS_CONTEXT* ctx_{nullptr};
  ESYS_TR handle_{ESYS_TR_NONE};
  std::atomic<std::uint64_t>* commands_{nullptr};
};

}  // namespace certagent::tpm
