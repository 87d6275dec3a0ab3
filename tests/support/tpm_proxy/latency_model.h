#pragma once
// How long a TPM takes per command, by command code: the delay table of the TPM proxy
// (tpm_proxy.h). The defaults and where each figure comes from are in latency_model.cpp and
// README.md next to it.

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace certagent::test::tpm_proxy {

using Micros = std::chrono::microseconds;

// TPM 2.0 command codes the figures name (TPM 2.0 Part 2, table 12).
inline constexpr std::uint32_t kCcCreatePrimary = 0x131;
inline constexpr std::uint32_t kCcSequenceComplete = 0x13E;
inline constexpr std::uint32_t kCcStartup = 0x144;
inline constexpr std::uint32_t kCcCreate = 0x153;
inline constexpr std::uint32_t kCcLoad = 0x157;
inline constexpr std::uint32_t kCcHmacStart = 0x15B;
inline constexpr std::uint32_t kCcSequenceUpdate = 0x15C;
inline constexpr std::uint32_t kCcUnseal = 0x15E;
inline constexpr std::uint32_t kCcContextLoad = 0x161;
inline constexpr std::uint32_t kCcContextSave = 0x162;
inline constexpr std::uint32_t kCcFlushContext = 0x165;
inline constexpr std::uint32_t kCcLoadExternal = 0x167;
inline constexpr std::uint32_t kCcSign = 0x15D;
inline constexpr std::uint32_t kCcReadPublic = 0x173;
inline constexpr std::uint32_t kCcStartAuthSession = 0x176;
inline constexpr std::uint32_t kCcVerifySignature = 0x177;
inline constexpr std::uint32_t kCcGetCapability = 0x17A;
inline constexpr std::uint32_t kCcGetRandom = 0x17B;
inline constexpr std::uint32_t kCcEventSequenceComplete = 0x185;
inline constexpr std::uint32_t kCcHashSequenceStart = 0x186;
inline constexpr std::uint32_t kCcCreateLoaded = 0x191;
inline constexpr std::uint32_t kCcHmac = 0x155;

// Warnings a TPM answers instead of running a command (TPM 2.0 Part 2, 6.6.3).
inline constexpr std::uint32_t kRcYielded = 0x908;
inline constexpr std::uint32_t kRcTesting = 0x90A;
inline constexpr std::uint32_t kRcRetry = 0x922;

// "TPM2_Sign" for 0x15D; "TPM2_CC_0x1a2" for codes not in our table.
std::string command_name(std::uint32_t cc);
// Accepts "TPM2_Sign", "Sign" or "0x15d".
std::optional<std::uint32_t> parse_command(std::string_view name);
// "TPM_RC_RETRY" ... or hex.
std::string rc_name(std::uint32_t rc);
// Accepts "retry", "yielded", "testing" (any case, with or without TPM_RC_) or a hex code.
std::optional<std::uint32_t> parse_rc(std::string_view name);

struct LatencyModel {
  std::string name{"none"};
  // The time the TPM is busy with a command. The proxy answers no earlier than this after it
  // forwarded the command (swtpm's own time counts towards it), and holds other commands
  // meanwhile: a TPM runs one command at a time.
  std::map<std::uint32_t, Micros> per_command;
  Micros other{0};              // commands not in per_command
  Micros salted_session{0};     // StartAuthSession with a tpmKey (an ECDH or RSA decrypt inside)
  Micros warning{0};            // an injected TPM_RC_RETRY/YIELDED/TESTING answer
  double scale{1.0};            // every figure multiplied by this

  // Emulates the Linux kernel resource manager (/dev/tpmrm0): before each command it loads
  // every transient object and session the connection holds (TPM2_ContextLoad), after it saves
  // them (TPM2_ContextSave) and flushes the objects (TPM2_FlushContext) —
  // drivers/char/tpm/tpm2-space.c, tpm2_load_space / tpm2_save_space. The proxy adds those
  // commands' time and counts them (they are not sent to swtpm).
  bool kernel_rm{false};

  Micros latency(std::uint32_t cc, bool salted = false) const;

  // Counting only: no delay.
  static LatencyModel none();
  // A common discrete SPI TPM 2.0 (Infineon SLB 9670 class), from published figures.
  static LatencyModel discrete();
  // The same delay for every command (issue 19's "+30 ms per command").
  static LatencyModel uniform(Micros each);

  // "none" | "discrete" | "uniform:30ms", then optional ",Sign=70ms,Load=0x157=..." overrides,
  // ",scale=2", ",kernel-rm". Durations: "30ms", "500us", "1s" or a plain number of ms.
  static std::optional<LatencyModel> parse(std::string_view spec, std::string* error = nullptr);
  std::string describe() const;
};

std::optional<Micros> parse_duration(std::string_view text);

}  // namespace certagent::test::tpm_proxy
