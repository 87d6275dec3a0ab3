// Pure pieces of the identity module: secret names, atomic 0600 writes, bounded reads, and the
// classification of TSS2 response codes.

#include "tpm/identity_store.h"
#include "tpm/tss_error.h"

#include "tests/support/test_support.h"

#include <sys/stat.h>
#include <tss2/tss2_tpm2_types.h>

#include <gtest/gtest.h>

namespace certagent::tpm {
namespace {

using certagent::test::TempDir;

TEST(SecretName, AcceptsOnlyPlainNames) {
  for (const char* ok : {"ca.eab_hmac", "pki.cfssl_auth", "a", "x-1.y_2", "lemur.lemur_token"})
    EXPECT_TRUE(validate_secret_name(ok)) << ok;
  for (std::string bad : std::vector<std::string>{"", ".", "..", "../x", "a/b", "A", "a b", ".x", "a\\b",
                                                  std::string(101, 'a'), std::string("a\0b", 3)})
    EXPECT_FALSE(validate_secret_name(bad)) << bad;
  EXPECT_TRUE(validate_secret_name(std::string(100, 'a')));
}

TEST(AtomicWrite, ReplacesWithExactModeAndLeavesNoTemp) {
  TempDir dir("certagent-store");
  const fs::path p = dir / "f";
  ::umask(0077);
  ASSERT_TRUE(write_file_atomic(p, as_bytes("one"), 0600));
  ASSERT_TRUE(write_file_atomic(p, as_bytes("two"), 0644));
  ::umask(0022);
  struct stat st {};
  ASSERT_EQ(::stat(p.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);
  EXPECT_EQ(certagent::test::read_file(p), "two");
  std::size_t files = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir.path())) ++files;
  EXPECT_EQ(files, 1u);
  auto failed = write_file_atomic(dir / "missing-dir" / "f", as_bytes("x"));
  ASSERT_FALSE(failed);
  EXPECT_NE(failed.error().message.find("missing-dir"), std::string::npos);
}

TEST(BoundedRead, MissingTooLargeAndPresent) {
  TempDir dir("certagent-store");
  auto missing = read_file_secret(dir / "nope", 10);
  ASSERT_TRUE(missing);
  EXPECT_FALSE(*missing);
  certagent::test::write_file(dir / "big", std::string(11, 'x'));
  auto big = read_file_bytes(dir / "big", 10);
  ASSERT_FALSE(big);
  EXPECT_NE(big.error().message.find("too large"), std::string::npos);
  auto ok = read_file_secret(dir / "big", 11);
  ASSERT_TRUE(ok && *ok);
  EXPECT_EQ((*ok)->view(), std::string(11, 'x'));
  EXPECT_FALSE(read_file_bytes(dir.path(), 10)) << "a directory is not a regular file";
  ASSERT_TRUE(remove_file(dir / "big"));
  EXPECT_FALSE(file_exists(dir / "big"));
  EXPECT_TRUE(remove_file(dir / "big")) << "removing a missing file is fine";
}

TEST(TssError, ClassifiesResponseCodes) {
  struct Case {
    TSS2_RC rc;
    bool reload;
  };
  for (Case c : {Case{0x00000910, true},    // REFERENCE_H0: object not loaded (TPM reset)
                 Case{0x0000018b, true},    // HANDLE on handle 1
                 Case{0x00000100, true},    // INITIALIZE: TPM2_Startup needed
                 Case{0x000a000a, true},    // TCTI IO error
                 Case{0x000c0910, true},    // relayed by a resource manager
                 Case{0x0000099d, false},   // policy failure
                 Case{0x000001df, false},   // integrity (cleared TPM)
                 Case{0x00000902, false},   // object memory
                 Case{0x00070001, false},   // ESAPI general failure
                 Case{0, false}})
    EXPECT_EQ(needs_reload(c.rc), c.reload) << std::hex << c.rc;
  EXPECT_EQ(tpm_base_code(0x000001df), static_cast<TSS2_RC>(TPM2_RC_INTEGRITY));
  EXPECT_EQ(tpm_base_code(0x00000182), static_cast<TSS2_RC>(TPM2_RC_ATTRIBUTES));
  EXPECT_EQ(tpm_base_code(0x000a000a), 0u);
  EXPECT_NE(describe("Esys_Sign", 0x910).find("Esys_Sign: "), std::string::npos);
  EXPECT_NE(describe("Esys_Sign", 0x910).find("(0x00000910)"), std::string::npos);
}

}  // namespace
}  // namespace certagent::tpm
