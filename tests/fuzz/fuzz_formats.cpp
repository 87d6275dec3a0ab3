// The small text formats read from config, brokers, the TPM store and haproxy: durations,
// RFC 3339 times, base64url and hex (EAB and cfssl keys, JWS parts), URLs, Retry-After, IP
// text, key types, EAB key files, haproxy's `show ssl cert` answer and the blank-line
// stripping of its payloads, certificate serials (a DER INTEGER as a certificate holds it, and
// serial text as status, state.json, meta.json and openssl print it: hex with or without
// colons). The first byte picks the parser; the rest is its input.
// Invariants: what is accepted writes back to text that reads back as the same value; the two
// base64url decoders agree; limits and shapes hold (a URL has a host, a port of digits and a
// target starting with '/'; a stripped payload has no blank line; a serial printed as the file
// sink stores it and as the serving probe reads it from a handshake normalizes to the same text,
// in every written form).

#include "core/config/config_yaml.h"
#include "core/config/duration.h"
#include "core/crypto/csr.h"
#include "core/crypto/keys.h"
#include "core/crypto/ossl_ptr.h"
#include "core/crypto/x509.h"
#include "core/encoding.h"
#include "core/http/client.h"
#include "core/time_format.h"
#include "reloaders/haproxy_reloader.h"
#include "reloaders/serving_probe.h"
#include "renewers/acme_jws.h"
#include "renewers/acme_renewer.h"
#include "tests/fuzz/fuzz_util.h"

#include <openssl/asn1.h>
#include <openssl/bn.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cctype>
#include <chrono>

namespace acme = certagent::renewers::acme;
using namespace std::chrono_literals;

namespace {

bool all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

std::string_view trim_line(std::string_view line) {
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) {
    line.remove_suffix(1);
  }
  return line;
}

void duration(std::string_view s) {
  auto d = certagent::config::parse_duration(s);
  if (!d) return;
  FUZZ_REQUIRE(d->count() >= 0, "a negative duration");
  const std::string text = certagent::config::format_duration(*d);
  FUZZ_REQUIRE(certagent::config::parse_duration(text) == d, "duration round trip: " + text);
}

void rfc3339(std::string_view s) {
  auto t = certagent::parse_rfc3339(s);
  if (!t) return;
  const auto whole = std::chrono::floor<std::chrono::seconds>(*t);
  const std::string text = certagent::format_rfc3339(*t);
  FUZZ_REQUIRE(certagent::parse_rfc3339(text) == certagent::SystemTime(whole),
               "RFC 3339 round trip: " + text);
  const std::string ms = certagent::format_rfc3339_ms(*t);
  FUZZ_REQUIRE(certagent::parse_rfc3339(ms).has_value(), "RFC 3339 ms round trip: " + ms);
}

void base64url(std::string_view s) {
  auto core = certagent::base64url_decode(s);
  auto jws = acme::base64url_decode(s);
  FUZZ_REQUIRE(core.has_value() == jws.has_value(), "the two base64url decoders disagree");
  if (!core) return;
  FUZZ_REQUIRE(core->view() == std::string_view(reinterpret_cast<const char*>(jws->data()), jws->size()),
               "the two base64url decoders decode differently");
  const std::string encoded = acme::base64url(core->view());
  FUZZ_REQUIRE(encoded.find_first_of("=+/") == std::string::npos, "base64url with padding or +/");
  auto again = certagent::base64url_decode(encoded);
  FUZZ_REQUIRE(again && again->view() == core->view(), "base64url round trip");
}

void hex(std::string_view s) {
  auto bytes = certagent::hex_decode(s);
  const bool hex_text = s.size() % 2 == 0 &&
      std::all_of(s.begin(), s.end(), [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; });
  FUZZ_REQUIRE(bytes.has_value() == hex_text, "hex_decode accepts exactly pairs of hex digits");
  if (bytes) FUZZ_REQUIRE(bytes->size() == s.size() / 2, "hex length");
}

void url(std::string_view s) {
  auto u = certagent::http::parse_url(s);
  const bool valid = certagent::config::valid_url(s, false);
  if (certagent::config::valid_url(s, true)) FUZZ_REQUIRE(valid, "an https URL that is not a URL");
  if (!u) return;
  FUZZ_REQUIRE(u->scheme == "https" || u->scheme == "http", "scheme " + u->scheme);
  FUZZ_REQUIRE(!u->host.empty(), "a URL without a host");
  FUZZ_REQUIRE(all_digits(u->port), "port " + u->port);
  FUZZ_REQUIRE(!u->target.empty() && u->target.front() == '/', "target " + u->target);
  auto origin = certagent::http::parse_url(u->origin());
  FUZZ_REQUIRE(origin && origin->host == u->host && origin->port == u->port && origin->scheme == u->scheme,
               "origin round trip: " + u->origin());
}

void retry_after(std::string_view s) {
  const certagent::SystemTime now = certagent::SystemTime(std::chrono::seconds(1'800'000'000));
  auto d = certagent::http::parse_retry_after(s, now);
  if (d) FUZZ_REQUIRE(d->count() >= 0, "a negative Retry-After");
}

void ip(std::string_view s) {
  auto c = certagent::crypto::canonical_ip(s);
  if (c) FUZZ_REQUIRE(certagent::crypto::canonical_ip(*c) == c, "canonical_ip is not idempotent");
}

void key_type(std::string_view s) {
  auto k = certagent::crypto::parse_key_type(s);
  if (k) FUZZ_REQUIRE(certagent::crypto::to_string(*k) == s, "key type round trip");
}

void eab_key(std::string_view s) {
  auto k = certagent::renewers::parse_eab_key_file_text(s);
  if (k) FUZZ_REQUIRE(!k->empty(), "an empty EAB key accepted");
}

void haproxy_answer(std::string_view s) {
  for (const auto& name : certagent::reloaders::parse_show_ssl_cert(s)) {
    FUZZ_REQUIRE(!name.empty(), "an empty certificate name");
    FUZZ_REQUIRE(name.find('\n') == std::string::npos, "a name across lines");
    FUZZ_REQUIRE(s.find(name) != std::string_view::npos, "a name not in the answer");
  }
  const certagent::Secret stripped = certagent::reloaders::strip_blank_lines(s);
  std::string_view rest = stripped.view();
  FUZZ_REQUIRE(rest.empty() || rest.back() != '\n', "a payload ending in a line end");
  while (!rest.empty()) {
    const std::size_t nl = rest.find('\n');
    FUZZ_REQUIRE(!trim_line(rest.substr(0, nl)).empty(), "a blank line left in a payload");
    rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
  }
  FUZZ_REQUIRE(certagent::reloaders::strip_blank_lines(stripped.view()).view() == stripped.view(),
               "strip_blank_lines is not idempotent");
}


bool lower_hex(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

// "0a1b2c" -> "0A:1B:2C" (openssl x509 -text, haproxy's `show ssl cert` detail).
std::string colon_form(std::string_view hex) {
  std::string out;
  for (std::size_t i = 0; i < hex.size(); ++i) {
    if (i > 0 && i % 2 == 0 && hex[i - 1] != '-') out += ':';
    out += static_cast<char>(std::toupper(static_cast<unsigned char>(hex[i])));
  }
  return out;
}

// A certificate serial as DER (tag, length, content: what d2i_ASN1_INTEGER accepts), set on a
// certificate: crypto::describe's serial_hex (state, files, status) and the serving probe's
// reading of the same certificate (BN_bn2hex) must normalize to the same text, also when
// written with colons or in capitals; a positive serial's text is lowercase hex.
void serial_der(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  ASN1_INTEGER* raw = d2i_ASN1_INTEGER(nullptr, &p, static_cast<long>(s.size()));
  if (!raw) return;
  std::unique_ptr<ASN1_INTEGER, decltype(&ASN1_INTEGER_free)> serial(raw, ASN1_INTEGER_free);
  certagent::crypto::X509Ptr cert(X509_new());
  FUZZ_REQUIRE(cert && X509_set_serialNumber(cert.get(), serial.get()) == 1, "X509_set_serialNumber");
  const std::string stored = certagent::crypto::describe(cert.get()).serial_hex;
  certagent::crypto::BignumPtr bn(ASN1_INTEGER_to_BN(serial.get(), nullptr));
  if (!bn) return;
  char* printed = BN_bn2hex(bn.get());
  FUZZ_REQUIRE(printed != nullptr, "BN_bn2hex");
  const std::string served = certagent::reloaders::normalize_serial(printed);
  OPENSSL_free(printed);
  const std::string normal = certagent::reloaders::normalize_serial(stored);
  FUZZ_REQUIRE(normal == served, "serial " + stored + " reads as " + normal + " from the file, " + served +
                                     " from a handshake");
  FUZZ_REQUIRE(certagent::reloaders::normalize_serial(colon_form(stored)) == normal,
               "the colon form of " + stored + " normalizes differently");
  FUZZ_REQUIRE(certagent::reloaders::normalize_serial(normal) == normal, "normalize_serial is not idempotent");
  const bool negative = !stored.empty() && stored[0] == '-';
  FUZZ_REQUIRE(lower_hex(negative ? std::string_view(stored).substr(1) : std::string_view(stored)),
               "serial_hex is not lowercase hex: " + stored);
}

// Serial text as a user, state.json or a server writes it.
void serial_text(std::string_view s) {
  const std::string normal = certagent::reloaders::normalize_serial(s);
  FUZZ_REQUIRE(certagent::reloaders::normalize_serial(normal) == normal, "normalize_serial is not idempotent");
  FUZZ_REQUIRE(normal.find_first_of(": ") == std::string::npos, "a separator left in a normalized serial");
  const bool hex_text = std::all_of(s.begin(), s.end(), [](char c) {
    return std::isxdigit(static_cast<unsigned char>(c)) != 0 || c == ':' || c == ' ';
  });
  if (hex_text && normal.size() > 0) {
    FUZZ_REQUIRE(lower_hex(normal) && (normal == "0" || normal[0] != '0'),
                 "hex serial text normalizes to " + normal);
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  certagent::fuzz::quiet_logging();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1 || size > 16 * 1024) return 0;
  const std::string_view s = certagent::fuzz::text_of(data + 1, size - 1);
  // 10 and 11 came later: the other selectors keep their corpus.
  if (data[0] == 10 || data[0] == 11) {
    if (data[0] == 10) serial_der(s);
    else serial_text(s);
    return 0;
  }
  switch (data[0] % 10) {
    case 0: duration(s); break;
    case 1: rfc3339(s); break;
    case 2: base64url(s); break;
    case 3: hex(s); break;
    case 4: url(s); break;
    case 5: retry_after(s); break;
    case 6: ip(s); break;
    case 7: key_type(s); break;
    case 8: eab_key(s); break;
    default: haproxy_answer(s); break;
  }
  return 0;
}
