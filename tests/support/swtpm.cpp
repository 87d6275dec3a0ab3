#include "tests/support/swtpm.h"

#include "tpm/tpm_identity.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>
#include <stdexcept>

namespace certagent::tpm::test {
namespace {

bool can_connect(const fs::path& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

void check(TSS2_RC rc, const char* what) {
  if (rc != TSS2_RC_SUCCESS) throw std::runtime_error(std::string(what) + ": " + Tss2_RC_Decode(rc));
}

}  // namespace

Swtpm::Swtpm(fs::path state_dir) : dir_(std::move(state_dir)) {
  fs::create_directories(dir_);
  start();
}

Swtpm::~Swtpm() { stop(); }

void Swtpm::start(bool startup_clear) {
  const fs::path swtpm = certagent::test::require_program("swtpm");
  const fs::path sock = socket_path();
  const fs::path ctrl = dir_ / "tpm.sock.ctrl";
  fs::remove(sock);
  fs::remove(ctrl);
  certagent::test::Process::Options options;
  options.stderr_file = dir_ / "swtpm.log";
  options.stdout_file = dir_ / "swtpm.log";
  process_ = certagent::test::Process(
      {swtpm.string(), "socket", "--tpm2", "--tpmstate", "dir=" + dir_.string(), "--server",
       "type=unixio,path=" + sock.string(), "--ctrl", "type=unixio,path=" + ctrl.string(), "--flags",
       startup_clear ? "not-need-init,startup-clear" : "not-need-init"},
      options);
  running_ = true;
  // The swtpm TCTI opens the control socket at init and the server socket per command.
  bool ready = certagent::test::wait_until(
      [&] { return process_.running() && can_connect(ctrl) && can_connect(sock); }, std::chrono::seconds(5));
  if (!ready) throw std::runtime_error("swtpm did not start: " + certagent::test::read_file(dir_ / "swtpm.log"));
}

void Swtpm::stop() {
  if (!running_) return;
  process_.stop(SIGTERM, std::chrono::seconds(5));
  running_ = false;
}

EsysClient::EsysClient(const std::string& tcti) {
  check(Tss2_TctiLdr_Initialize(tcti.c_str(), &tcti_), "Tss2_TctiLdr_Initialize");
  check(Esys_Initialize(&esys_, tcti_, nullptr), "Esys_Initialize");
}

EsysClient::~EsysClient() {
  Esys_Finalize(&esys_);
  Tss2_TctiLdr_Finalize(&tcti_);
}

std::vector<TPM2_HANDLE> EsysClient::transient_handles() {
  TPMS_CAPABILITY_DATA* data = nullptr;
  TPMI_YES_NO more = TPM2_NO;
  check(Esys_GetCapability(esys_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CAP_HANDLES,
                           TPM2_TRANSIENT_FIRST, TPM2_MAX_CAP_HANDLES, &more, &data),
        "Esys_GetCapability");
  std::vector<TPM2_HANDLE> out(data->data.handles.handle, data->data.handles.handle + data->data.handles.count);
  Esys_Free(data);
  return out;
}

TSS2_RC EsysClient::clear() {
  return Esys_Clear(esys_, ESYS_TR_RH_LOCKOUT, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE);
}

ESYS_TR EsysClient::occupy_slot() {
  TPM2B_SENSITIVE_CREATE sensitive{};
  TPM2B_PUBLIC templ = srk_template();
  TPM2B_DATA outside{};
  TPML_PCR_SELECTION pcrs{};
  ESYS_TR handle = ESYS_TR_NONE;
  check(Esys_CreatePrimary(esys_, ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &sensitive,
                           &templ, &outside, &pcrs, &handle, nullptr, nullptr, nullptr, nullptr),
        "Esys_CreatePrimary");
  return handle;
}

void EsysClient::flush(ESYS_TR handle) { Esys_FlushContext(esys_, handle); }

TSS2_RC EsysClient::try_duplicate(TPM2B_PUBLIC templ) {
  TPMT_SYM_DEF sym{};
  sym.algorithm = TPM2_ALG_NULL;
  // Policy digest of PolicyCommandCode(TPM2_CC_Duplicate), computed by a trial session.
  ESYS_TR trial = ESYS_TR_NONE;
  check(Esys_StartAuthSession(esys_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                              nullptr, TPM2_SE_TRIAL, &sym, TPM2_ALG_SHA256, &trial),
        "Esys_StartAuthSession(trial)");
  check(Esys_PolicyCommandCode(esys_, trial, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CC_Duplicate),
        "Esys_PolicyCommandCode");
  TPM2B_DIGEST* digest = nullptr;
  check(Esys_PolicyGetDigest(esys_, trial, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &digest),
        "Esys_PolicyGetDigest");
  templ.publicArea.authPolicy = *digest;
  Esys_Free(digest);
  Esys_FlushContext(esys_, trial);

  ESYS_TR srk = occupy_slot();
  TPM2B_SENSITIVE_CREATE sensitive{};
  TPM2B_DATA outside{};
  TPML_PCR_SELECTION pcrs{};
  TPM2B_PRIVATE* priv = nullptr;
  TPM2B_PUBLIC* pub = nullptr;
  check(Esys_Create(esys_, srk, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &sensitive, &templ, &outside,
                    &pcrs, &priv, &pub, nullptr, nullptr, nullptr),
        "Esys_Create");
  ESYS_TR key = ESYS_TR_NONE;
  check(Esys_Load(esys_, srk, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, priv, pub, &key), "Esys_Load");
  Esys_Free(priv);
  Esys_Free(pub);

  ESYS_TR session = ESYS_TR_NONE;
  check(Esys_StartAuthSession(esys_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                              nullptr, TPM2_SE_POLICY, &sym, TPM2_ALG_SHA256, &session),
        "Esys_StartAuthSession(policy)");
  check(Esys_PolicyCommandCode(esys_, session, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CC_Duplicate),
        "Esys_PolicyCommandCode");
  TPM2B_DATA key_in{};
  TPMT_SYM_DEF_OBJECT wrap{};
  wrap.algorithm = TPM2_ALG_NULL;
  TPM2B_DATA* key_out = nullptr;
  TPM2B_PRIVATE* duplicate = nullptr;
  TPM2B_ENCRYPTED_SECRET* seed = nullptr;
  TSS2_RC rc = Esys_Duplicate(esys_, key, ESYS_TR_RH_NULL, session, ESYS_TR_NONE, ESYS_TR_NONE, &key_in, &wrap,
                              &key_out, &duplicate, &seed);
  Esys_Free(key_out);
  Esys_Free(duplicate);
  Esys_Free(seed);
  Esys_FlushContext(esys_, session);
  Esys_FlushContext(esys_, key);
  Esys_FlushContext(esys_, srk);
  return rc;
}

}  // namespace certagent::tpm::test
