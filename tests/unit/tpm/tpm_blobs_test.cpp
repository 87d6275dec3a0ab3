// What the TPM identity reads back from its directory, without a TPM (tpm/tpm_blobs.h): real
// blobs from swtpm (the fuzz seed corpus) are accepted, corrupt ones refused; envelopes open
// only unchanged, with their key and under their name. Includes the fuzz_tpm_blobs finding.

#include "tpm/tpm_blobs.h"

#include "tests/support/test_support.h"

#include <gtest/gtest.h>

#include <array>
#include <cstring>

namespace certagent::tpm::detail {
namespace {

using Bytes = std::vector<std::uint8_t>;

// tests/fuzz/corpus/tpm_blobs/blobs-id: mode byte 0, two bytes of .pub length, .pub, .priv
// (an ECDSA P-256 signing key created by tpm2_create on swtpm).
struct Blobs {
  Bytes pub;
  Bytes priv;
};
Blobs seed_blobs() {
  const std::string file = test::read_file(test::source_dir() / "tests/fuzz/corpus/tpm_blobs/blobs-id");
  const Bytes all(file.begin(), file.end());
  EXPECT_GT(all.size(), 3u);
  const std::size_t pub_len = (std::size_t{all[1]} << 8) | all[2];
  return {Bytes(all.begin() + 3, all.begin() + 3 + static_cast<long>(pub_len)),
          Bytes(all.begin() + 3 + static_cast<long>(pub_len), all.end())};
}

TEST(TpmBlobs, RealBlobsAreAcceptedAndDescribeTheIdentityKey) {
  const Blobs b = seed_blobs();
  auto blobs = unmarshal_blobs(b.pub, b.priv, "identity.pub", "identity.priv");
  ASSERT_TRUE(blobs) << blobs.error().message;
  EXPECT_TRUE(check_identity_public(blobs->pub)) << "an ECDSA P-256 signing key, fixedTPM";
}

// Found by fuzz_tpm_blobs: Tss2_MU reads the public area whatever the TPM2B size field says, so a
// .pub whose size field was damaged unmarshalled and was taken as the identity.
TEST(TpmBlobs, APublicAreaWhoseSizeFieldDisagreesIsCorrupt) {
  Blobs b = seed_blobs();
  b.pub[1] = static_cast<std::uint8_t>(b.pub[1] - 0x31);
  auto blobs = unmarshal_blobs(b.pub, b.priv, "identity.pub", "identity.priv");
  ASSERT_FALSE(blobs);
  EXPECT_NE(blobs.error().message.find("identity.pub is not a marshalled TPM2B_PUBLIC"), std::string::npos)
      << blobs.error().message;
}

TEST(TpmBlobs, TruncatedOrTrailingBytesAreCorrupt) {
  const Blobs b = seed_blobs();
  EXPECT_FALSE(unmarshal_blobs(Bytes(b.pub.begin(), b.pub.end() - 1), b.priv, "p", "q"));
  EXPECT_FALSE(unmarshal_blobs(b.pub, Bytes(b.priv.begin(), b.priv.end() - 1), "p", "q"));
  Bytes longer = b.priv;
  longer.push_back(0);
  auto r = unmarshal_blobs(b.pub, longer, "identity.pub", "identity.priv");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("identity.priv"), std::string::npos) << r.error().message;
}

TEST(TpmBlobs, EnvelopesOpenOnlyUnchangedWithTheirKeyAndName) {
  std::array<std::uint8_t, 32> key{};
  key[0] = 1;
  const std::string secret(300, 's');
  auto sealed = envelope_encrypt(key, "lemur.token",
                                 std::span(reinterpret_cast<const std::uint8_t*>(secret.data()), secret.size()));
  ASSERT_TRUE(sealed) << sealed.error().message;
  auto opened = envelope_decrypt(key, "lemur.token", *sealed, "sealed-lemur.token.enc");
  ASSERT_TRUE(opened) << opened.error().message;
  EXPECT_EQ(opened->view(), secret);
  EXPECT_FALSE(envelope_decrypt(key, "other", *sealed, "x"));
  for (std::size_t i : {std::size_t{0}, std::size_t{5}, sealed->size() / 2, sealed->size() - 1}) {
    Bytes tampered = *sealed;
    tampered[i] ^= 0x01;
    EXPECT_FALSE(envelope_decrypt(key, "lemur.token", tampered, "x")) << "byte " << i;
  }
  EXPECT_FALSE(envelope_decrypt(key, "lemur.token", Bytes(sealed->begin(), sealed->begin() + 20), "x"));
  key[0] = 2;
  EXPECT_FALSE(envelope_decrypt(key, "lemur.token", *sealed, "x"));
}

}  // namespace
}  // namespace certagent::tpm::detail
