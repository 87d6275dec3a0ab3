#include "tests/integration/acme/test_identity.h"

#include "tpm/file_identity.h"
#include "tpm/tpm_identity.h"

#include <stdexcept>

namespace certagent::test {

Swtpm::Swtpm(const fs::path& dir) : dir_(dir) {
  fs::create_directories(dir_);
  Process::Options po;
  po.stdout_file = dir_ / "swtpm.log";
  po.stderr_file = dir_ / "swtpm.err.log";
  process_.emplace(std::vector<std::string>{require_program("swtpm").string(), "socket", "--tpm2", "--tpmstate",
                                            "dir=" + dir_.string(), "--server",
                                            "type=unixio,path=" + (dir_ / "tpm.sock").string(), "--ctrl",
                                            "type=unixio,path=" + (dir_ / "tpm.sock.ctrl").string(), "--flags",
                                            "not-need-init,startup-clear"},
                   po);
  if (!wait_until([&] { return fs::exists(dir_ / "tpm.sock"); }, std::chrono::seconds(10)))
    throw std::runtime_error("swtpm did not start");
}

Swtpm::~Swtpm() {
  if (process_) process_->stop();
}

TestIdentity::TestIdentity(IdentityKind kind, const fs::path& dir) {
  fs::create_directories(dir / "identity");
  if (kind == IdentityKind::tpm) {
    swtpm_.emplace(dir / "tpm");
    tcti_ = swtpm_->tcti();
    auto id = tpm::TpmIdentity::open(tpm::TpmIdentityOptions{.dir = dir / "identity", .tcti = tcti_},
                                     tpm::OpenMode::create_if_missing);
    if (!id) throw std::runtime_error("TPM identity: " + id.error().message);
    identity_ = std::move(*id);
  } else {
    auto id = tpm::FileIdentity::open(tpm::FileIdentityOptions{.dir = dir / "identity"},
                                      tpm::OpenMode::create_if_missing);
    if (!id) throw std::runtime_error("file identity: " + id.error().message);
    identity_ = std::move(*id);
  }
}

TestIdentity::~TestIdentity() {
  identity_.reset();  // closes the TPM connection before swtpm goes
  swtpm_.reset();
}

}  // namespace certagent::test
