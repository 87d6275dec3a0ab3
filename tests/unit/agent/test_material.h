#pragma once
// Materials for the file sink tests: P-256 leaves (and a CA) from the shared test PKI
// (tests/support/test_pki.h), with the facts validation would report.

#include "core/material.h"

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

namespace certagent::test {

struct TestCa {
  std::string cert_pem;
  Secret key_pem;
};

// A self-signed CA able to sign leaves.
TestCa make_test_ca(const std::string& common_name);

// A fresh key and leaf valid [now - 1h, now + lifetime). With `ca`, the leaf is signed by it
// and chain_pem holds the CA certificate; otherwise it is self-signed and the chain is empty.
Material make_test_material(const std::string& common_name,
                            std::chrono::seconds lifetime = std::chrono::hours(96),
                            const TestCa* ca = nullptr);

// Serialises materials to one text blob and back (for the crash test's writer process).
std::string encode_materials(const std::vector<Material>& materials);
std::vector<Material> decode_materials(const std::string& blob);

// Whether the first private key and the first certificate in `pem` (any order) match.
bool pem_key_matches_cert(const std::string& key_pem, const std::string& cert_pem);

// A temp directory on tmpfs (/dev/shm) when there is one, else under /tmp. For the
// many-commit tests: a SIGKILL or a concurrent reader does not care about fsync, and on tmpfs
// fsync costs nothing, so the test runs at the same speed on a loaded CI disk.
class ScratchDir {
 public:
  ScratchDir();
  ~ScratchDir();
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

// Lowers the log level to warn for the test binary (a commit logs one info line).
void quiet_logs();

}  // namespace certagent::test
