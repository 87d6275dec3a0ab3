#pragma once
// A private swtpm per test: Unix sockets in a temp dir, started and stopped by PID (a missing
// swtpm binary fails the test via require_program). Plus a small raw-ESAPI client for what the
// tests check from outside the identity: loaded handles, TPM2_Clear, a duplication attempt.

#include "tests/support/test_support.h"

#include <tss2/tss2_esys.h>

#include <filesystem>
#include <string>
#include <vector>

namespace certagent::tpm::test {

namespace fs = std::filesystem;

class Swtpm {
 public:
  explicit Swtpm(fs::path state_dir);  // starts it
  ~Swtpm();
  Swtpm(const Swtpm&) = delete;
  Swtpm& operator=(const Swtpm&) = delete;

  std::string tcti() const { return "swtpm:path=" + socket_path().string(); }
  fs::path socket_path() const { return dir_ / "tpm.sock"; }
  const fs::path& state_dir() const { return dir_; }
  pid_t pid() const { return process_.pid(); }

  // startup_clear=false: like a power cycle without firmware, the TPM answers
  // TPM2_RC_INITIALIZE until someone sends TPM2_Startup.
  void start(bool startup_clear = true);
  void stop();
  void restart(bool startup_clear = true) {
    stop();
    start(startup_clear);
  }

 private:
  fs::path dir_;
  certagent::test::Process process_;
  bool running_{false};
};

// A raw ESAPI connection (the tests' own, separate from the identity's).
class EsysClient {
 public:
  explicit EsysClient(const std::string& tcti);
  ~EsysClient();
  EsysClient(const EsysClient&) = delete;
  EsysClient& operator=(const EsysClient&) = delete;

  ESYS_CONTEXT* get() const { return esys_; }
  // Transient object handles currently loaded in the TPM (no resource manager: all of them).
  std::vector<TPM2_HANDLE> transient_handles();
  // TPM2_Clear through the lockout hierarchy (empty auth on a fresh swtpm): new owner seed.
  TSS2_RC clear();
  // Loads an object of the test's own (a primary key), taking one of the three slots.
  ESYS_TR occupy_slot();
  void flush(ESYS_TR handle);
  // Creates a key from `templ` whose policy allows TPM2_Duplicate, satisfies that policy and
  // tries to duplicate it. Returns the TPM's response code.
  TSS2_RC try_duplicate(TPM2B_PUBLIC templ);

 private:
  TSS2_TCTI_CONTEXT* tcti_{nullptr};
  ESYS_CONTEXT* esys_{nullptr};
};

}  // namespace certagent::tpm::test
