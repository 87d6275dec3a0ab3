// What the TPM identity reads back from its directory (tpm/tpm_blobs.h), no TPM needed: the
// marshalled TPM2B_PUBLIC / TPM2B_PRIVATE of a key, the identity's public-area check, and the
// AES-256-GCM envelopes of large sealed secrets. The first byte picks:
//   0  key blobs: two bytes of .pub length, the .pub bytes, then the .priv bytes
//   1  an envelope file to open with the harness's data key
//   2  a secret to seal in an envelope, then tamper with one byte of it
// Invariants: accepted blobs marshal back to exactly the bytes read; an envelope that opens
// reseals and reopens to the same secret, of the size the envelope implies; a sealed secret
// opens, and any one changed byte of its envelope (or another name) makes it fail.

#include "tests/fuzz/fuzz_util.h"
#include "tpm/tpm_blobs.h"

#include <tss2/tss2_mu.h>

#include <array>
#include <cstring>
#include <vector>

namespace detail = certagent::tpm::detail;
using Bytes = std::vector<std::uint8_t>;

namespace {

constexpr std::array<std::uint8_t, 32> kDataKey = {
    0x10, 0x32, 0x54, 0x76, 0x98, 0xba, 0xdc, 0xfe, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
    0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10, 0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01};
constexpr std::size_t kEnvelopeOverhead = 4 + 12 + 16;  // magic, nonce, tag

Bytes marshal_public(const TPM2B_PUBLIC& pub) {
  Bytes out(sizeof(TPM2B_PUBLIC));
  std::size_t offset = 0;
  FUZZ_REQUIRE(Tss2_MU_TPM2B_PUBLIC_Marshal(&pub, out.data(), out.size(), &offset) == TSS2_RC_SUCCESS,
               "an accepted TPM2B_PUBLIC does not marshal");
  out.resize(offset);
  return out;
}

Bytes marshal_private(const TPM2B_PRIVATE& priv) {
  Bytes out(sizeof(TPM2B_PRIVATE));
  std::size_t offset = 0;
  FUZZ_REQUIRE(Tss2_MU_TPM2B_PRIVATE_Marshal(&priv, out.data(), out.size(), &offset) == TSS2_RC_SUCCESS,
               "an accepted TPM2B_PRIVATE does not marshal");
  out.resize(offset);
  return out;
}

void key_blobs(std::span<const std::uint8_t> in) {
  if (in.size() < 2) return;
  const std::size_t pub_len = std::min<std::size_t>((in[0] << 8) | in[1], in.size() - 2);
  const auto pub = in.subspan(2, pub_len);
  const auto priv = in.subspan(2 + pub_len);
  auto blobs = detail::unmarshal_blobs(pub, priv, "identity.pub", "identity.priv");
  if (!blobs) {
    FUZZ_REQUIRE(!blobs.error().message.empty(), "a rejection without a message");
    return;
  }
  FUZZ_REQUIRE(marshal_public(blobs->pub) == Bytes(pub.begin(), pub.end()), "TPM2B_PUBLIC round trip");
  FUZZ_REQUIRE(marshal_private(blobs->priv) == Bytes(priv.begin(), priv.end()), "TPM2B_PRIVATE round trip");
  (void)detail::check_identity_public(blobs->pub);
}

void open_envelope(std::span<const std::uint8_t> in) {
  auto plain = detail::envelope_decrypt(kDataKey, "fuzz", in, "sealed-fuzz.enc");
  if (!plain) return;
  FUZZ_REQUIRE(plain->size() + kEnvelopeOverhead == in.size(), "an envelope's size does not add up");
  const auto* p = reinterpret_cast<const std::uint8_t*>(plain->data());
  auto sealed = detail::envelope_encrypt(kDataKey, "fuzz", std::span(p, plain->size()));
  FUZZ_REQUIRE(sealed.has_value(), "resealing");
  auto again = detail::envelope_decrypt(kDataKey, "fuzz", *sealed, "sealed-fuzz.enc");
  FUZZ_REQUIRE(again && again->view() == plain->view(), "reseal round trip");
}

void seal_and_tamper(std::span<const std::uint8_t> in) {
  if (in.empty()) return;
  const std::uint8_t where = in[0];
  const auto plain = in.subspan(1);
  auto sealed = detail::envelope_encrypt(kDataKey, "fuzz", plain);
  FUZZ_REQUIRE(sealed.has_value(), "sealing");
  auto opened = detail::envelope_decrypt(kDataKey, "fuzz", *sealed, "sealed-fuzz.enc");
  FUZZ_REQUIRE(opened.has_value(), "a sealed secret does not open");
  FUZZ_REQUIRE(opened->size() == plain.size() &&
                   std::memcmp(opened->data(), plain.data(), plain.size()) == 0,
               "a sealed secret opens to something else");
  FUZZ_REQUIRE(!detail::envelope_decrypt(kDataKey, "other", *sealed, "sealed-other.enc"),
               "an envelope opens under another secret's name");
  Bytes tampered = *sealed;
  tampered[where % tampered.size()] ^= 0x01;
  FUZZ_REQUIRE(!detail::envelope_decrypt(kDataKey, "fuzz", tampered, "sealed-fuzz.enc"),
               "a tampered envelope opens");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  certagent::fuzz::quiet_logging();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1 || size > 16 * 1024) return 0;
  const std::span<const std::uint8_t> rest(data + 1, size - 1);
  switch (data[0] % 3) {
    case 0: key_blobs(rest); break;
    case 1: open_envelope(rest); break;
    default: seal_and_tamper(rest); break;
  }
  return 0;
}
