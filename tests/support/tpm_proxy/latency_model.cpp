#include "tests/support/tpm_proxy/latency_model.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <vector>

namespace certagent::test::tpm_proxy {
namespace {

using namespace std::chrono_literals;

struct Named {
  std::uint32_t cc;
  const char* name;
};

constexpr Named kCommands[] = {
    {kCcCreatePrimary, "TPM2_CreatePrimary"},
    {kCcSequenceComplete, "TPM2_SequenceComplete"},
    {0x143, "TPM2_SelfTest"},
    {kCcStartup, "TPM2_Startup"},
    {0x145, "TPM2_Shutdown"},
    {0x14E, "TPM2_NV_Read"},
    {kCcCreate, "TPM2_Create"},
    {kCcHmac, "TPM2_HMAC"},
    {kCcLoad, "TPM2_Load"},
    {kCcHmacStart, "TPM2_HMAC_Start"},
    {kCcSequenceUpdate, "TPM2_SequenceUpdate"},
    {kCcSign, "TPM2_Sign"},
    {kCcUnseal, "TPM2_Unseal"},
    {kCcContextLoad, "TPM2_ContextLoad"},
    {kCcContextSave, "TPM2_ContextSave"},
    {kCcFlushContext, "TPM2_FlushContext"},
    {kCcLoadExternal, "TPM2_LoadExternal"},
    {kCcReadPublic, "TPM2_ReadPublic"},
    {kCcStartAuthSession, "TPM2_StartAuthSession"},
    {kCcVerifySignature, "TPM2_VerifySignature"},
    {kCcGetCapability, "TPM2_GetCapability"},
    {kCcGetRandom, "TPM2_GetRandom"},
    {0x17E, "TPM2_PCR_Read"},
    {0x182, "TPM2_PCR_Extend"},
    {kCcEventSequenceComplete, "TPM2_EventSequenceComplete"},
    {kCcHashSequenceStart, "TPM2_HashSequenceStart"},
    {kCcCreateLoaded, "TPM2_CreateLoaded"},
    {0x126, "TPM2_Clear"},
    {0x120, "TPM2_EvictControl"},
    {0x14B, "TPM2_Duplicate"},
    {0x16C, "TPM2_PolicyCommandCode"},
    {0x189, "TPM2_PolicyGetDigest"},
};

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  return out;
}

std::string trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return std::string(s);
}

std::optional<std::uint32_t> parse_hex(std::string_view s) {
  if (s.size() < 3 || s[0] != '0' || (s[1] != 'x' && s[1] != 'X')) return std::nullopt;
  std::uint32_t v = 0;
  auto [p, ec] = std::from_chars(s.data() + 2, s.data() + s.size(), v, 16);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

std::vector<std::string> split(std::string_view s, char sep) {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (std::size_t i = 0; i <= s.size(); ++i) {
    if (i == s.size() || s[i] == sep) {
      out.push_back(trim(s.substr(start, i - start)));
      start = i + 1;
    }
  }
  return out;
}

std::string ms_text(Micros us) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1fms", static_cast<double>(us.count()) / 1000.0);
  return buf;
}

}  // namespace

std::string command_name(std::uint32_t cc) {
  for (const auto& c : kCommands)
    if (c.cc == cc) return c.name;
  char buf[24];
  std::snprintf(buf, sizeof buf, "TPM2_CC_0x%x", cc);
  return buf;
}

std::optional<std::uint32_t> parse_command(std::string_view name) {
  if (auto hex = parse_hex(name)) return hex;
  const std::string want = lower(name);
  for (const auto& c : kCommands) {
    const std::string full = lower(c.name);
    if (want == full || "tpm2_" + want == full) return c.cc;
  }
  return std::nullopt;
}

std::string rc_name(std::uint32_t rc) {
  switch (rc) {
    case kRcRetry: return "TPM_RC_RETRY";
    case kRcYielded: return "TPM_RC_YIELDED";
    case kRcTesting: return "TPM_RC_TESTING";
    default: {
      char buf[16];
      std::snprintf(buf, sizeof buf, "0x%x", rc);
      return buf;
    }
  }
}

std::optional<std::uint32_t> parse_rc(std::string_view name) {
  if (auto hex = parse_hex(name)) return hex;
  std::string n = lower(name);
  if (n.rfind("tpm_rc_", 0) == 0) n = n.substr(7);
  if (n == "retry") return kRcRetry;
  if (n == "yielded") return kRcYielded;
  if (n == "testing") return kRcTesting;
  return std::nullopt;
}

std::optional<Micros> parse_duration(std::string_view text) {
  std::string t = trim(text);
  double unit_us = 1000.0;  // a plain number is milliseconds
  auto ends = [&](std::string_view suffix) {
    return t.size() > suffix.size() && t.compare(t.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  if (ends("us")) {
    unit_us = 1.0;
    t.resize(t.size() - 2);
  } else if (ends("ms")) {
    t.resize(t.size() - 2);
  } else if (ends("s")) {
    unit_us = 1e6;
    t.resize(t.size() - 1);
  }
  if (t.empty()) return std::nullopt;
  char* end = nullptr;
  const double v = std::strtod(t.c_str(), &end);
  if (end != t.c_str() + t.size() || v < 0 || v > 3.6e3 * 1e6 / unit_us) return std::nullopt;
  return Micros(static_cast<std::int64_t>(v * unit_us + 0.5));
}

Micros LatencyModel::latency(std::uint32_t cc, bool salted) const {
  Micros base = other;
  if (cc == kCcStartAuthSession && salted && salted_session.count() > 0) {
    base = salted_session;
  } else if (auto it = per_command.find(cc); it != per_command.end()) {
    base = it->second;
  }
  return Micros(static_cast<std::int64_t>(static_cast<double>(base.count()) * scale + 0.5));
}

LatencyModel LatencyModel::none() { return LatencyModel{}; }

LatencyModel LatencyModel::uniform(Micros each) {
  LatencyModel m;
  m.name = "uniform:" + ms_text(each);
  m.other = each;
  m.salted_session = each;
  m.warning = each;
  return m;
}

// A discrete SPI TPM 2.0 of the Infineon OPTIGA SLB 9670 class. Sources (see README.md):
//  [W] wolfTPM README, "TPM2 Benchmarks" (examples/bench/bench.c), SLB9670 on SPI at 43 MHz:
//      ECDSA P-256 sign 68.9 ms avg; ECDSA verify 113.5 ms; ECDHE P-256 232.1 ms; "ECC 256 key
//      gen" 231.4 ms (TPM2_Create + TPM2_Load, and TPM2_FlushContext of the previous key);
//      SHA-256 through the TPM 136.8 KB/s. The same bench on ST ST33TP (SPI 33 MHz): sign
//      42.3 ms, key gen 219.8 ms; Nuvoton NPCT750 (43 MHz): sign 56.4 ms, key gen 84.0 ms.
//      https://github.com/wolfSSL/wolfTPM/blob/master/README.md
//  [S] systemd pull request #20716 (tpm2: be smarter when picking primary key algorithm):
//      an ECC primary key ~240 ms against ~10 s for RSA on the author's machine.
//      https://github.com/systemd/systemd/pull/20716
//  [C] Chrome's field study of TPM ECDSA P-256 signatures, as quoted in "TPM performance"
//      (stiankri.substack.com/p/tpm-performance): 200 ms p50, 600 ms p95 through the OS stack.
//      Not the default (that is the chip's own figure [W]); scale=3 reaches it.
//  [E] Estimate: no published per-command figure was found (symmetric work plus the SPI
//      transfer of the command and the response, sized from [W]'s SHA-256 throughput).
LatencyModel LatencyModel::discrete() {
  LatencyModel m;
  m.name = "discrete";
  m.per_command = {
      {kCcSign, 69ms},                // [W] SLB9670 ECDSA P-256
      {kCcVerifySignature, 114ms},    // [W]
      {kCcCreatePrimary, 240ms},      // [S] ECC P-256 primary; [W] key gen is of the same order
      {kCcCreate, 200ms},             // [W] key gen 231 ms minus our Load and Flush figures
      {kCcCreateLoaded, 220ms},       // [W] key gen
      {kCcLoad, 25ms},                // [E] decrypt + integrity check of the private blob
      {kCcLoadExternal, 25ms},        // [E]
      {kCcHmac, 10ms},                // [E] <= 1 KB: [W] SHA-256 136.8 KB/s = 7.5 ms per KB
      {kCcHmacStart, 5ms},            // [E]
      {kCcHashSequenceStart, 5ms},    // [E]
      {kCcSequenceUpdate, 10ms},      // [E] 1 KB chunk, as TPM2_HMAC
      {kCcSequenceComplete, 10ms},    // [E]
      {kCcEventSequenceComplete, 10ms},  // [E]
      {kCcUnseal, 15ms},              // [E] decrypt of <= 128 bytes
      {kCcFlushContext, 3ms},         // [E] no cryptography
      {kCcContextSave, 10ms},         // [E] encrypt + HMAC of the context
      {kCcContextLoad, 10ms},         // [E] decrypt + HMAC check of the context
      {kCcStartAuthSession, 10ms},    // [E] unsalted: a nonce from the RNG
      {kCcReadPublic, 5ms},           // [E]
      {kCcGetCapability, 5ms},        // [E]
      {kCcGetRandom, 5ms},            // [W] RNG 14 KB/s: 32 bytes ~2.3 ms + transfer
      {kCcStartup, 5ms},              // [E]
  };
  m.salted_session = 232ms;           // [W] one ECDH inside (ECDHE agree)
  m.other = 20ms;                     // [E]
  m.warning = 1ms;                    // [E] a TPM that cannot start a command says so at once
  return m;
}

std::optional<LatencyModel> LatencyModel::parse(std::string_view spec, std::string* error) {
  auto fail = [&](std::string message) -> std::optional<LatencyModel> {
    if (error) *error = std::move(message);
    return std::nullopt;
  };
  const std::vector<std::string> parts = split(spec, ',');
  if (parts.empty() || parts[0].empty()) return fail("empty latency model");
  LatencyModel m;
  const std::string base = lower(parts[0]);
  if (base == "none") {
    m = none();
  } else if (base == "discrete") {
    m = discrete();
  } else if (base.rfind("uniform:", 0) == 0) {
    auto d = parse_duration(base.substr(8));
    if (!d) return fail("uniform:<duration> expected, e.g. uniform:30ms; got \"" + parts[0] + "\"");
    m = uniform(*d);
  } else {
    return fail("unknown latency model \"" + parts[0] + "\": expected none, discrete or uniform:<duration>");
  }
  for (std::size_t i = 1; i < parts.size(); ++i) {
    const std::string& p = parts[i];
    if (p == "kernel-rm") {
      m.kernel_rm = true;
      m.name += ",kernel-rm";
      continue;
    }
    const auto eq = p.rfind('=');
    if (eq == std::string::npos) return fail("\"" + p + "\": expected NAME=DURATION, scale=F or kernel-rm");
    const std::string key = p.substr(0, eq);
    const std::string value = p.substr(eq + 1);
    if (lower(key) == "scale") {
      char* end = nullptr;
      const double s = std::strtod(value.c_str(), &end);
      if (value.empty() || end != value.c_str() + value.size() || s < 0 || s > 1000)
        return fail("scale=F expected a factor between 0 and 1000, got \"" + value + "\"");
      m.scale = s;
      m.name += ",scale=" + value;
      continue;
    }
    auto d = parse_duration(value);
    if (!d) return fail("\"" + value + "\" is not a duration (30ms, 500us, 1s)");
    if (lower(key) == "other") {
      m.other = *d;
    } else if (lower(key) == "salted_session") {
      m.salted_session = *d;
    } else if (lower(key) == "warning") {
      m.warning = *d;
    } else if (auto cc = parse_command(key)) {
      m.per_command[*cc] = *d;
    } else {
      return fail("unknown TPM command \"" + key + "\": use a name like Sign or TPM2_Load, or a code like 0x15d");
    }
    m.name += "," + p;
  }
  return m;
}

std::string LatencyModel::describe() const {
  std::string out = name + ":";
  for (const auto& [cc, us] : per_command) out += " " + command_name(cc) + "=" + ms_text(latency(cc));
  out += " other=" + ms_text(Micros(static_cast<std::int64_t>(static_cast<double>(other.count()) * scale)));
  if (kernel_rm) out += " kernel_rm=on";
  return out;
}

}  // namespace certagent::test::tpm_proxy
