// YAML -> Config, with all validation (DESIGN.md "Configuration (YAML) — contract").
//
// Path policy: a relative file path in the config is taken relative to the directory of the
// config file itself (so a config and the files beside it move together); after loading every
// path is absolute. The effective config (dump_config) therefore only holds absolute paths.

#include "core/config/config.h"

#include "core/config/config_yaml.h"

#include <yaml-cpp/depthguard.h>

#include <arpa/inet.h>
#include <csignal>

#include <array>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <system_error>

namespace certagent::config {

namespace fs = std::filesystem;

// ---- key types and durations ----------------------------------------------------------------

namespace {

struct DurationUnit {
  std::string_view suffix;
  std::int64_t ms;
};
// Largest first: a duration lists each unit at most once, in this order ("1h30m", not "30m1h").
constexpr std::array<DurationUnit, 4> kUnits{{{"h", 3'600'000}, {"m", 60'000}, {"s", 1'000}, {"ms", 1}}};

}  // namespace

std::optional<Duration> parse_duration(std::string_view s) {
  if (s.empty()) return std::nullopt;
  constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
  std::int64_t total = 0;
  std::size_t next_unit = 0;  // index into kUnits of the smallest unit still allowed
  std::size_t i = 0;
  while (i < s.size()) {
    std::size_t j = i;
    std::int64_t n = 0;
    while (j < s.size() && s[j] >= '0' && s[j] <= '9') {
      if (n > (kMax - 9) / 10) return std::nullopt;
      n = n * 10 + (s[j] - '0');
      ++j;
    }
    if (j == i) return std::nullopt;  // no digits: "h", "-5s", "1.5h"
    // "ms" before "m" so that "500ms" is not read as 500 minutes followed by junk.
    std::optional<std::size_t> unit;
    if (s.substr(j, 2) == "ms") unit = 3;
    else if (j < s.size() && s[j] == 'h') unit = 0;
    else if (j < s.size() && s[j] == 'm') unit = 1;
    else if (j < s.size() && s[j] == 's') unit = 2;
    if (!unit || *unit < next_unit) return std::nullopt;  // bare number, unknown or repeated unit
    const auto& u = kUnits[*unit];
    if (n > kMax / u.ms || total > kMax - n * u.ms) return std::nullopt;
    total += n * u.ms;
    next_unit = *unit + 1;
    i = j + u.suffix.size();
  }
  return Duration(total);
}

std::string format_duration(Duration d) {
  if (d.count() < 0) return "-" + format_duration(-d);
  if (d.count() == 0) return "0s";
  std::string out;
  std::int64_t left = d.count();
  for (const auto& u : kUnits) {
    if (left >= u.ms) {
      out += std::to_string(left / u.ms);
      out += u.suffix;
      left %= u.ms;
    }
  }
  return out;
}

// ---- validation helpers ---------------------------------------------------------------------

namespace {

constexpr std::string_view kNameExpected =
    "a name of 1 to 64 characters from a-z, 0-9, '_' and '-'";

bool valid_name(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-')) return false;
  }
  return true;
}

bool valid_ip(const std::string& s) {
  unsigned char buf[16];
  return inet_pton(AF_INET, s.c_str(), buf) == 1 || inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

// LDH labels (RFC 1123), lowercase because the issued names are compared with the requested
// ones; one leading "*." wildcard label is allowed.
bool valid_dns_name(std::string_view s) {
  if (s.starts_with("*.")) s.remove_prefix(2);
  if (s.empty() || s.size() > 253) return false;
  std::size_t start = 0;
  while (start <= s.size()) {
    std::size_t end = s.find('.', start);
    if (end == std::string_view::npos) end = s.size();
    std::string_view label = s.substr(start, end - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') {
      return false;
    }
    for (char c : label) {
      if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return false;
    }
    start = end + 1;
  }
  return true;
}

bool valid_uri(std::string_view s) {
  std::size_t colon = s.find(':');
  if (colon == 0 || colon == std::string_view::npos || colon + 1 == s.size()) return false;
  if (!((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z'))) return false;
  for (std::size_t i = 1; i < colon; ++i) {
    char c = s[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '+' || c == '.' || c == '-';
    if (!ok) return false;
  }
  for (char c : s) {
    if (c == ' ' || c == '\t' || c == '\n') return false;
  }
  return true;
}

bool valid_url(std::string_view s, bool https_only) {
  std::string_view rest;
  if (s.starts_with("https://")) rest = s.substr(8);
  else if (!https_only && s.starts_with("http://")) rest = s.substr(7);
  else return false;
  std::size_t host_end = rest.find_first_of("/?#");
  if (rest.substr(0, host_end).empty()) return false;
  for (char c : s) {
    if (c == ' ' || c == '\t' || c == '\n') return false;
  }
  return true;
}

// "127.0.0.1:443", "[::1]:443", "localhost:8443". Port 0 only where the agent listens.
bool valid_host_port(std::string_view s, bool allow_port_zero) {
  std::string_view host;
  std::string_view port;
  if (s.starts_with("[")) {
    std::size_t close = s.find(']');
    if (close == std::string_view::npos || close + 1 >= s.size() || s[close + 1] != ':') {
      return false;
    }
    host = s.substr(1, close - 1);
    port = s.substr(close + 2);
    unsigned char buf[16];
    if (inet_pton(AF_INET6, std::string(host).c_str(), buf) != 1) return false;
  } else {
    std::size_t colon = s.rfind(':');
    if (colon == std::string_view::npos) return false;
    host = s.substr(0, colon);
    port = s.substr(colon + 1);
    if (host.empty()) return false;
    for (char c : host) {
      bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '.' || c == '-' || c == '_';
      if (!ok) return false;
    }
  }
  if (port.empty() || port.size() > 5) return false;
  unsigned value = 0;
  for (char c : port) {
    if (c < '0' || c > '9') return false;
    value = value * 10 + static_cast<unsigned>(c - '0');
  }
  return value <= 65535 && (value > 0 || allow_port_zero);
}

struct SignalName {
  std::string_view name;
  int number;
};
constexpr std::array<SignalName, 12> kSignals{{
    {"SIGHUP", SIGHUP}, {"SIGINT", SIGINT}, {"SIGQUIT", SIGQUIT}, {"SIGKILL", SIGKILL},
    {"SIGUSR1", SIGUSR1}, {"SIGUSR2", SIGUSR2}, {"SIGALRM", SIGALRM}, {"SIGTERM", SIGTERM},
    {"SIGCONT", SIGCONT}, {"SIGWINCH", SIGWINCH}, {"SIGTTIN", SIGTTIN}, {"SIGTTOU", SIGTTOU},
}};
constexpr int kMaxSignal = 64;  // SIGRTMAX on Linux

std::optional<int> parse_signal(std::string_view s) {
  std::string upper;
  for (char c : s) upper += (c >= 'a' && c <= 'z') ? static_cast<char>(c - 'a' + 'A') : c;
  std::string_view u = upper;
  for (const auto& sig : kSignals) {
    if (u == sig.name || u == sig.name.substr(3)) return sig.number;
  }
  if (u.empty() || u.size() > 2) return std::nullopt;
  int n = 0;
  for (char c : u) {
    if (c < '0' || c > '9') return std::nullopt;
    n = n * 10 + (c - '0');
  }
  if (n < 1 || n > kMaxSignal) return std::nullopt;
  return n;
}

constexpr std::string_view kDurationExpected = "a duration like 30s, 10m or 96h";

// ---- the schema -----------------------------------------------------------------------------

constexpr std::string_view kKeyTypeExpected =
    "a key type: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096 or ed25519";
constexpr std::string_view kHostPortExpected = "host:port like 127.0.0.1:443";
constexpr std::string_view kArgvExpected = "a non-empty argv list like [\"/usr/bin/prog\", \"arg\"]";

// The certificate keys that `defaults:` provides and each certificate may override, as read
// at one level, with where each was written.
struct Knobs {
  std::optional<crypto::KeyType> key;
  std::optional<Duration> lifetime;
  std::optional<Duration> max_lifetime;
  std::optional<double> renew_at;
  std::optional<double> jitter;
  std::optional<fs::path> trust_bundle;
  std::optional<Duration> ready_min_ttl;
  std::map<std::string, YAML::Mark, std::less<>> where;
};

const std::vector<std::string_view> kKnobKeys{"key",    "lifetime",     "max_lifetime", "renew_at",
                                              "jitter", "trust_bundle", "ready_min_ttl"};

CertDefaults merged(CertDefaults base, const Knobs& k) {
  if (k.key) base.key = *k.key;
  if (k.lifetime) base.lifetime = *k.lifetime;
  if (k.max_lifetime) base.max_lifetime = *k.max_lifetime;
  if (k.renew_at) base.renew_at = *k.renew_at;
  if (k.jitter) base.jitter = *k.jitter;
  if (k.trust_bundle) base.trust_bundle = *k.trust_bundle;
  if (k.ready_min_ttl) base.ready_min_ttl = *k.ready_min_ttl;
  return base;
}

std::string percent(double fraction) {
  std::ostringstream os;
  os << fraction * 100 << "%";
  return os.str();
}

class Schema {
 public:
  explicit Schema(YamlReader& r) : r_(r) {}

  void root(const Field& f, Config& c);

 private:
  void log(const Field& f, LogConfig& out);
  void identity(const Field& f, IdentityConfig& out);
  void socket(const Field& f, SocketConfig& out);
  void brokers(const Field& f, std::map<std::string, BrokerConfig>& out);
  std::optional<BrokerConfig> broker(const std::string& name, const Field& f);
  void acme(MapView& m, AcmeBrokerConfig& out);
  void cfssl(MapView& m, CfsslBrokerConfig& out);
  void lemur(MapView& m, LemurBrokerConfig& out);
  void knobs(MapView& m, Knobs& out);
  void check_knobs(const CertDefaults& eff, const Knobs& here, const MapView& level);
  void certificates(const Field& f, const Config& c, std::vector<CertificateConfig>& out);
  std::optional<CertificateConfig> certificate(const Field& f, const Config& c, YAML::Mark& name_mark);
  std::optional<FilesConfig> files(const Field& f);
  std::vector<ReloaderConfig> reloaders(const Field& f);
  std::optional<ReloaderConfig> reloader(const Field& f);
  std::optional<VerifyConfig> verify(const Field& f, Duration default_settle);

  // Reads the field if present and stores it through `set`.
  template <class Read, class Set>
  void opt(const MapView& m, std::string_view key, Read read, Set set) {
    if (auto f = m.get(key)) {
      if (auto v = read(*f)) set(std::move(*v));
    }
  }
  void opt_string(const MapView& m, std::string_view key, std::string& out) {
    opt(m, key, [&](const Field& f) { return r_.string(f); }, [&](std::string v) { out = std::move(v); });
  }
  void opt_path(const MapView& m, std::string_view key, fs::path& out) {
    opt(m, key, [&](const Field& f) { return r_.path(f, false); }, [&](fs::path v) { out = std::move(v); });
  }
  void req_path(MapView& m, std::string_view key, fs::path& out) {
    if (auto f = m.require(key, "a file path")) {
      if (auto v = r_.path(*f, true)) out = std::move(*v);
    }
  }
  void req_string(MapView& m, std::string_view key, std::string_view expected, std::string& out) {
    if (auto f = m.require(key, expected)) {
      if (auto v = r_.non_empty_string(*f, expected)) out = std::move(*v);
    }
  }
  void opt_duration(const MapView& m, std::string_view key, Duration& out, bool positive) {
    if (auto f = m.get(key)) {
      auto d = r_.duration(*f);
      if (d && positive && d->count() <= 0) {
        r_.fail(*f, "got " + describe(f->value), "a duration longer than 0s");
      } else if (d) {
        out = *d;
      }
    }
  }
  template <class Int>
  void opt_int(const MapView& m, std::string_view key, std::uint64_t min, std::uint64_t max,
               Int& out) {
    if (auto f = m.get(key)) {
      std::string expected = "a whole number from " + std::to_string(min) + " to " + std::to_string(max);
      if (auto v = r_.integer(*f, min, max, expected)) out = static_cast<Int>(*v);
    }
  }

  YamlReader& r_;
};

void Schema::root(const Field& f, Config& c) {
  MapView m(r_, f, "a mapping of top-level keys (state_dir, brokers, certificates, ...)");
  if (!m.valid()) return;
  m.allow({"state_dir", "log", "identity", "socket", "metrics", "brokers", "defaults",
           "certificates"});
  if (auto sd = m.get("state_dir")) {
    if (auto p = r_.path(*sd, true)) c.state_dir = *p;
  }
  if (auto v = m.get("log")) log(*v, c.log);
  if (auto v = m.get("identity")) identity(*v, c.identity);
  if (auto v = m.get("socket")) socket(*v, c.socket);
  if (auto v = m.get("metrics")) {
    MapView mm(r_, *v);
    mm.allow({"listen"});
    if (auto l = mm.get("listen")) {
      if (auto s = r_.string(*l, kHostPortExpected)) {
        if (s->empty() || valid_host_port(*s, true)) c.metrics.listen = *s;
        else r_.fail(*l, "got " + describe(l->value), "host:port like 127.0.0.1:9464");
      }
    }
  }
  if (auto v = m.get("brokers")) brokers(*v, c.brokers);

  Knobs defaults;
  if (auto v = m.get("defaults")) {
    MapView dm(r_, *v);
    if (dm.valid()) {
      dm.allow(kKnobKeys);
      knobs(dm, defaults);
      c.defaults = merged(CertDefaults{}, defaults);
      check_knobs(c.defaults, defaults, dm);
    }
  }
  if (auto v = m.get("certificates")) certificates(*v, c, c.certificates);
}

void Schema::log(const Field& f, LogConfig& out) {
  MapView m(r_, f);
  m.allow({"level", "format"});
  opt(m, "level", [&](const Field& x) { return r_.one_of(x, {"trace", "debug", "info", "warn", "error"}, "log level"); },
      [&](std::string v) { out.level = std::move(v); });
  opt(m, "format", [&](const Field& x) { return r_.one_of(x, {"text", "json"}, "log format"); },
      [&](std::string v) { out.format = std::move(v); });
}

void Schema::identity(const Field& f, IdentityConfig& out) {
  MapView m(r_, f);
  m.allow({"backend", "tcti"});
  opt(m, "backend", [&](const Field& x) { return r_.one_of(x, {"tpm", "file"}, "identity backend"); },
      [&](std::string v) { out.backend = std::move(v); });
  opt(m, "tcti", [&](const Field& x) {
        return r_.non_empty_string(x, "a TCTI string like \"device:/dev/tpmrm0\"");
      }, [&](std::string v) { out.tcti = std::move(v); });
}

void Schema::socket(const Field& f, SocketConfig& out) {
  MapView m(r_, f);
  m.allow({"path", "mode", "group", "admin_uids", "max_connections", "max_watchers",
           "max_header_bytes", "request_timeout"});
  opt_path(m, "path", out.path);
  if (auto mf = m.get("mode")) {
    constexpr std::string_view kExpected = "a quoted octal string like \"0660\"";
    if (auto s = r_.string(*mf, kExpected)) {
      // A plain 0660 is an octal number in YAML 1.1 and a decimal one in YAML 1.2: only the
      // quoted form means the same thing to every reader.
      if (mf->value.Tag() == "?") {
        r_.fail(*mf, "got " + describe(mf->value) + " without quotes", kExpected);
      } else {
        bool ok = s->size() >= 3 && s->size() <= 4;
        std::uint32_t mode = 0;
        for (char c : *s) {
          ok = ok && c >= '0' && c <= '7';
          mode = mode * 8 + static_cast<std::uint32_t>(c - '0');
        }
        if (ok && mode <= 0777) out.mode = mode;
        else r_.fail(*mf, "got " + describe(mf->value), "an octal mode from \"0000\" to \"0777\"");
      }
    }
  }
  opt_string(m, "group", out.group);
  opt(m, "admin_uids", [&](const Field& x) { return r_.id_list(x); },
      [&](std::vector<std::uint32_t> v) { out.admin_uids = std::move(v); });
  opt_int(m, "max_connections", 1, 1'000'000, out.max_connections);
  opt_int(m, "max_watchers", 1, 1'000'000, out.max_watchers);
  opt_int(m, "max_header_bytes", 1024, 1 << 20, out.max_header_bytes);
  opt_duration(m, "request_timeout", out.request_timeout, true);
}

void Schema::brokers(const Field& f, std::map<std::string, BrokerConfig>& out) {
  MapView m(r_, f, "a mapping of broker names to brokers");
  if (!m.valid()) return;
  for (const auto& [name, bf] : m.entries()) {
    if (!valid_name(name)) {
      r_.error(bf.key.Mark(), "brokers: got '" + name + "' as a broker name, expected " +
                                  std::string(kNameExpected));
      continue;
    }
    if (out.contains(name)) {
      r_.error(bf.key.Mark(), "brokers: broker '" + name + "' is defined twice, expected each name once");
      continue;
    }
    if (auto b = broker(name, bf)) out.emplace(name, std::move(*b));
  }
}

std::optional<BrokerConfig> Schema::broker(const std::string& name, const Field& f) {
  MapView m(r_, f, "a broker mapping like { type: local }");
  if (!m.valid()) return std::nullopt;
  constexpr std::string_view kTypes = "a broker type: one of local, acme, cfssl, lemur";
  auto tf = m.require("type", kTypes);
  if (!tf) return std::nullopt;
  auto type = r_.one_of(*tf, {"local", "acme", "cfssl", "lemur"}, "broker type");
  if (!type) return std::nullopt;

  std::vector<std::string_view> allowed{"type", "max_in_flight", "timeout"};
  if (*type == "acme") {
    allowed.insert(allowed.end(), {"directory", "ca_bundle", "eab", "challenge", "preferred_chain", "contact"});
  } else if (*type == "cfssl") {
    allowed.insert(allowed.end(), {"url", "ca_bundle", "auth_key_file", "profile", "label"});
  } else if (*type == "lemur") {
    allowed.insert(allowed.end(), {"url", "token_file", "authority", "owner", "ca_bundle", "description",
                                   "destinations", "notifications", "roles"});
  }
  m.allow(allowed);

  BrokerConfig b;
  b.name = name;
  b.type = *type;
  opt_int(m, "max_in_flight", 1, 1024, b.max_in_flight);
  opt_duration(m, "timeout", b.timeout, true);
  if (*type == "local") {
    b.settings = LocalBrokerConfig{};
  } else if (*type == "acme") {
    AcmeBrokerConfig a;
    acme(m, a);
    b.settings = std::move(a);
  } else if (*type == "cfssl") {
    CfsslBrokerConfig c;
    cfssl(m, c);
    b.settings = std::move(c);
  } else {
    LemurBrokerConfig l;
    lemur(m, l);
    b.settings = std::move(l);
  }
  return b;
}

void Schema::acme(MapView& m, AcmeBrokerConfig& out) {
  constexpr std::string_view kDir = "the https URL of the ACME directory";
  if (auto f = m.require("directory", kDir)) {
    if (auto s = r_.string(*f, kDir)) {
      if (valid_url(*s, true)) out.directory = *s;
      else r_.fail(*f, "got " + describe(f->value), kDir);
    }
  }
  opt_path(m, "ca_bundle", out.ca_bundle);
  if (auto f = m.get("eab")) {
    MapView em(r_, *f, "a mapping { kid, hmac_key_file }");
    if (em.valid()) {
      em.allow({"kid", "hmac_key_file"});
      std::string kid;
      req_string(em, "kid", "the key id the CA gave for external account binding", kid);
      out.eab_kid = kid;
      req_path(em, "hmac_key_file", out.eab_hmac_key_file);
    }
  }
  if (auto f = m.get("challenge")) {
    MapView cm(r_, *f, "a mapping { type, listen, hook }");
    if (cm.valid()) {
      cm.allow({"type", "listen", "hook"});
      opt(cm, "type", [&](const Field& x) { return r_.one_of(x, {"http-01", "dns-01"}, "challenge type"); },
          [&](std::string v) { out.challenge.type = std::move(v); });
      if (auto l = cm.get("listen")) {
        if (auto s = r_.string(*l, kHostPortExpected)) {
          if (valid_host_port(*s, false)) out.challenge.listen = *s;
          else r_.fail(*l, "got " + describe(l->value), "host:port like 0.0.0.0:80");
        }
      }
      if (auto h = cm.get("hook")) {
        if (auto v = r_.string_list(*h, kArgvExpected)) {
          if (!v->empty() && out.challenge.type != "dns-01") {
            r_.fail(*h, "a hook with challenge type " + out.challenge.type,
                    "a hook only with type dns-01");
          }
          out.challenge.hook = std::move(*v);
        }
      }
      if (out.challenge.type == "dns-01" && out.challenge.hook.empty()) {
        r_.fail(cm.self(), "challenge type dns-01 without a hook",
                "hook: [argv] that publishes the TXT record (called with present|cleanup <fqdn> <value>)");
      }
    }
  }
  opt_string(m, "preferred_chain", out.preferred_chain);
  if (auto f = m.get("contact")) {
    if (auto s = r_.string(*f, "a mailto: URL")) {
      if (s->empty() || (s->starts_with("mailto:") && s->size() > 7)) out.contact = *s;
      else r_.fail(*f, "got " + describe(f->value), "a mailto: URL like mailto:pki@example.com");
    }
  }
}

void Schema::cfssl(MapView& m, CfsslBrokerConfig& out) {
  constexpr std::string_view kUrl = "an http(s) URL like https://multirootca.internal:8888";
  if (auto f = m.require("url", kUrl)) {
    if (auto s = r_.string(*f, kUrl)) {
      if (valid_url(*s, false)) out.url = *s;
      else r_.fail(*f, "got " + describe(f->value), kUrl);
    }
  }
  opt_path(m, "ca_bundle", out.ca_bundle);
  req_path(m, "auth_key_file", out.auth_key_file);
  opt_string(m, "profile", out.profile);
  opt_string(m, "label", out.label);
}

void Schema::lemur(MapView& m, LemurBrokerConfig& out) {
  constexpr std::string_view kUrl = "an http(s) URL like https://lemur.internal";
  if (auto f = m.require("url", kUrl)) {
    if (auto s = r_.string(*f, kUrl)) {
      if (valid_url(*s, false)) out.url = *s;
      else r_.fail(*f, "got " + describe(f->value), kUrl);
    }
  }
  req_path(m, "token_file", out.token_file);
  req_string(m, "authority", "the name of a Lemur authority", out.authority);
  req_string(m, "owner", "the owner's email address", out.owner);
  opt_path(m, "ca_bundle", out.ca_bundle);
  opt_string(m, "description", out.description);
  auto list = [&](std::string_view key, std::vector<std::string>& dst) {
    opt(m, key, [&](const Field& x) { return r_.string_list(x, "a list of names"); },
        [&](std::vector<std::string> v) { dst = std::move(v); });
  };
  list("destinations", out.destinations);
  list("notifications", out.notifications);
  list("roles", out.roles);
}

void Schema::knobs(MapView& m, Knobs& out) {
  auto note = [&](const Field& f) { out.where[f.key.Scalar()] = f.mark(); };
  if (auto f = m.get("key")) {
    if (auto s = r_.string(*f, kKeyTypeExpected)) {
      if (auto k = crypto::parse_key_type(*s)) {
        out.key = *k;
        note(*f);
      } else {
        r_.fail(*f, "got " + describe(f->value), kKeyTypeExpected);
      }
    }
  }
  for (auto [key, dst] : {std::pair{"lifetime", &out.lifetime}, std::pair{"max_lifetime", &out.max_lifetime}}) {
    if (auto f = m.get(key)) {
      auto d = r_.duration(*f);
      // X.509 validity counts whole seconds: anything shorter cannot be issued.
      if (d && *d < std::chrono::seconds(1)) {
        r_.fail(*f, "got " + describe(f->value), "a duration of at least 1s");
      } else if (d) {
        *dst = *d;
        note(*f);
      }
    }
  }
  if (auto f = m.get("renew_at")) {
    constexpr std::string_view kExpected = "a fraction of the lifetime between 0 and 1 (exclusive), like 0.5";
    if (auto v = r_.number(*f, kExpected)) {
      if (*v > 0 && *v < 1) {
        out.renew_at = *v;
        note(*f);
      } else {
        r_.fail(*f, "got " + describe(f->value), kExpected);
      }
    }
  }
  if (auto f = m.get("jitter")) {
    constexpr std::string_view kExpected = "a fraction from 0 to 0.5, like 0.1";
    if (auto v = r_.number(*f, kExpected)) {
      if (*v >= 0 && *v <= 0.5) {
        out.jitter = *v;
        note(*f);
      } else {
        r_.fail(*f, "got " + describe(f->value), kExpected);
      }
    }
  }
  if (auto f = m.get("trust_bundle")) {
    if (auto p = r_.path(*f, false)) {
      out.trust_bundle = *p;
      note(*f);
    }
  }
  if (auto f = m.get("ready_min_ttl")) {
    if (auto d = r_.duration(*f)) {
      out.ready_min_ttl = *d;
      note(*f);
    }
  }
}

// Checks that span several keys. Reported at the level (defaults or one certificate) that set
// one of the keys involved, so an inconsistent `defaults:` is reported once, not per certificate.
void Schema::check_knobs(const CertDefaults& eff, const Knobs& here, const MapView& level) {
  auto check = [&](bool ok, std::initializer_list<std::string_view> keys, std::string_view key_for_path,
                   const std::string& problem, std::string_view expected) {
    if (ok) return;
    for (auto k : keys) {
      auto it = here.where.find(k);
      if (it == here.where.end()) continue;
      r_.error(it->second, level.self().child(key_for_path) + ": " + problem + ", expected " +
                               std::string(expected));
      return;
    }
  };
  check(eff.max_lifetime >= eff.lifetime, {"lifetime", "max_lifetime"}, "max_lifetime",
        "max_lifetime " + format_duration(eff.max_lifetime) + " is shorter than lifetime " +
            format_duration(eff.lifetime),
        "max_lifetime >= lifetime");
  check(eff.renew_at * (1 + eff.jitter) < 1, {"renew_at", "jitter"}, "renew_at",
        "renew_at " + percent(eff.renew_at) + " with jitter " + percent(eff.jitter) +
            " can put the renewal at or after expiry",
        "renew_at x (1 + jitter) < 1");
  check(eff.ready_min_ttl < eff.lifetime, {"ready_min_ttl", "lifetime"}, "ready_min_ttl",
        "ready_min_ttl " + format_duration(eff.ready_min_ttl) + " is not shorter than lifetime " +
            format_duration(eff.lifetime) + " (never ready)",
        "ready_min_ttl < lifetime");
}

void Schema::certificates(const Field& f, const Config& c, std::vector<CertificateConfig>& out) {
  auto list = r_.items(f, "a list of certificates (- name: ...)");
  if (!list) return;
  std::map<std::string, YAML::Mark> names;
  for (const auto& item : *list) {
    YAML::Mark name_mark;
    auto cert = certificate(item, c, name_mark);
    if (!cert) continue;
    if (!cert->name.empty()) {
      auto [it, inserted] = names.emplace(cert->name, name_mark);
      if (!inserted) {
        r_.error(name_mark, item.child("name") + ": duplicate certificate name '" + cert->name +
                                "' (first at line " + std::to_string(it->second.line + 1) +
                                "), expected each name once");
      }
    }
    out.push_back(std::move(*cert));
  }
}

std::optional<CertificateConfig> Schema::certificate(const Field& f, const Config& c,
                                                     YAML::Mark& name_mark) {
  MapView m(r_, f, "a certificate mapping (name, broker, names, ...)");
  if (!m.valid()) return std::nullopt;
  std::vector<std::string_view> allowed{"name", "broker", "common_name", "dns_names", "ip_addresses", "uris"};
  allowed.insert(allowed.end(), kKnobKeys.begin(), kKnobKeys.end());
  allowed.insert(allowed.end(), {"files", "socket", "reload", "on_expiry"});
  m.allow(allowed);

  CertificateConfig cert;
  if (auto nf = m.require("name", kNameExpected)) {
    name_mark = nf->mark();
    if (auto s = r_.string(*nf, kNameExpected)) {
      if (valid_name(*s)) cert.name = *s;
      else r_.fail(*nf, "got " + describe(nf->value), kNameExpected);
    }
  }
  const BrokerConfig* broker = nullptr;
  if (auto bf = m.require("broker", "the name of a broker under brokers:")) {
    if (auto s = r_.non_empty_string(*bf, "the name of a broker under brokers:")) {
      broker = c.broker(*s);
      if (broker) {
        cert.broker = *s;
      } else {
        std::string known;
        for (const auto& [name, b] : c.brokers) known += (known.empty() ? "" : ", ") + name;
        r_.fail(*bf, "unknown broker '" + *s + "'",
                known.empty() ? std::string("a broker defined under brokers: (none is)")
                              : "one of the brokers defined under brokers: " + known);
      }
    }
  }
  if (auto cn = m.get("common_name")) {
    if (auto s = r_.string(*cn)) {
      if (s->size() <= 64) cert.common_name = *s;
      else r_.fail(*cn, "got a common name of " + std::to_string(s->size()) + " characters", "at most 64 (X.509 upper bound)");
    }
  }
  if (auto df = m.get("dns_names")) {
    if (auto list = r_.items(*df, "a list of DNS names")) {
      for (const auto& item : *list) {
        constexpr std::string_view kExpected = "a lowercase DNS name like web.internal or *.web.internal";
        if (auto s = r_.string(item, kExpected)) {
          if (valid_dns_name(*s)) cert.dns_names.push_back(*s);
          else r_.fail(item, "got " + describe(item.value), kExpected);
        }
      }
    }
  }
  if (auto ipf = m.get("ip_addresses")) {
    if (auto list = r_.items(*ipf, "a list of IP addresses")) {
      for (const auto& item : *list) {
        constexpr std::string_view kExpected = "an IPv4 or IPv6 address like 127.0.0.1 or ::1";
        if (auto s = r_.string(item, kExpected)) {
          if (valid_ip(*s)) cert.ip_addresses.push_back(*s);
          else r_.fail(item, "got " + describe(item.value), kExpected);
        }
      }
    }
  }
  if (auto uf = m.get("uris")) {
    if (auto list = r_.items(*uf, "a list of URIs")) {
      for (const auto& item : *list) {
        constexpr std::string_view kExpected = "a URI with a scheme like spiffe://example.org/web";
        if (auto s = r_.string(item, kExpected)) {
          if (valid_uri(*s)) cert.uris.push_back(*s);
          else r_.fail(item, "got " + describe(item.value), kExpected);
        }
      }
    }
  }
  // Judged on what was written, so that one bad entry is reported once, not also as "no names".
  auto given = [&](std::string_view key) {
    auto x = m.get(key);
    return x && ((x->value.IsScalar() && !x->value.Scalar().empty()) ||
                 (x->value.IsSequence() && x->value.size() > 0));
  };
  if (!given("common_name") && !given("dns_names") && !given("ip_addresses") && !given("uris")) {
    r_.error(f.mark(), f.path + ": the certificate names nothing, expected at least one of "
                                "common_name, dns_names, ip_addresses, uris");
  }

  Knobs own;
  knobs(m, own);
  CertDefaults eff = merged(c.defaults, own);
  check_knobs(eff, own, m);
  cert.key = eff.key;
  cert.lifetime = eff.lifetime;
  cert.max_lifetime = eff.max_lifetime;
  cert.renew_at = eff.renew_at;
  cert.jitter = eff.jitter;
  cert.trust_bundle = eff.trust_bundle;
  cert.ready_min_ttl = eff.ready_min_ttl;
  if (broker && broker->type != "local" && cert.trust_bundle.empty()) {
    r_.error(f.mark(), f.path + ": no trust_bundle for broker '" + broker->name + "' (type " +
                           broker->type +
                           "): the issued chain is verified against it before anything is "
                           "written, expected trust_bundle in defaults: or in this certificate");
  }

  if (auto ff = m.get("files")) cert.files = files(*ff);
  if (auto sf = m.get("socket")) {
    MapView sm(r_, *sf, "a mapping { allow_uids, allow_gids }");
    sm.allow({"allow_uids", "allow_gids"});
    opt(sm, "allow_uids", [&](const Field& x) { return r_.id_list(x); },
        [&](std::vector<std::uint32_t> v) { cert.socket.allow_uids = std::move(v); });
    opt(sm, "allow_gids", [&](const Field& x) { return r_.id_list(x); },
        [&](std::vector<std::uint32_t> v) { cert.socket.allow_gids = std::move(v); });
  }
  if (auto rf = m.get("reload")) cert.reload = reloaders(*rf);
  if (auto ef = m.get("on_expiry")) cert.on_expiry = reloaders(*ef);
  return cert;
}

std::optional<FilesConfig> Schema::files(const Field& f) {
  MapView m(r_, f, "a mapping { dir, owner, group, keep, remove_on_expiry }");
  if (!m.valid()) return std::nullopt;
  m.allow({"dir", "owner", "group", "keep", "remove_on_expiry"});
  FilesConfig out;
  if (auto d = m.require("dir", "the directory the files go to, like /etc/certagent/live/web")) {
    if (auto p = r_.path(*d, true)) out.dir = *p;
  }
  opt_string(m, "owner", out.owner);
  opt_string(m, "group", out.group);
  opt_int(m, "keep", 1, 1000, out.keep);
  opt(m, "remove_on_expiry", [&](const Field& x) { return r_.boolean(x); },
      [&](bool v) { out.remove_on_expiry = v; });
  return out;
}

std::vector<ReloaderConfig> Schema::reloaders(const Field& f) {
  std::vector<ReloaderConfig> out;
  auto list = r_.items(f, "a list of reloaders (- type: ...)");
  if (!list) return out;
  for (const auto& item : *list) {
    if (auto rc = reloader(item)) out.push_back(std::move(*rc));
  }
  return out;
}

std::optional<ReloaderConfig> Schema::reloader(const Field& f) {
  MapView m(r_, f, "a reloader mapping like { type: exec, command: [...] }");
  if (!m.valid()) return std::nullopt;
  auto tf = m.require("type", "a reloader type: one of exec, signal, systemd, nginx, haproxy, envoy");
  if (!tf) return std::nullopt;
  auto type = r_.one_of(*tf, {"exec", "signal", "systemd", "nginx", "haproxy", "envoy"}, "reloader type");
  if (!type) return std::nullopt;

  std::vector<std::string_view> allowed{"type", "timeout", "verify"};
  if (*type == "exec") allowed.insert(allowed.end(), {"command"});
  else if (*type == "signal") allowed.insert(allowed.end(), {"pid_file", "pid", "signal"});
  else if (*type == "systemd") allowed.insert(allowed.end(), {"unit", "action"});
  else if (*type == "nginx") allowed.insert(allowed.end(), {"command", "test_command", "error_log"});
  else if (*type == "haproxy") allowed.insert(allowed.end(), {"admin_socket", "cert", "issuer_file", "ocsp_file"});
  else allowed.insert(allowed.end(), {"sds_dir"});
  m.allow(allowed);

  ReloaderConfig rc;
  rc.type = *type;
  // For exec, `timeout` is the command's own limit (default 10s), and so also the reloader's.
  if (*type == "exec") rc.timeout = std::chrono::seconds(10);
  opt_duration(m, "timeout", rc.timeout, true);
  auto argv = [&](const Field& x) -> std::optional<std::vector<std::string>> {
    auto v = r_.string_list(x, kArgvExpected);
    if (v && (v->empty() || (*v)[0].empty())) {
      r_.fail(x, "got an empty command", kArgvExpected);
      return std::nullopt;
    }
    return v;
  };

  if (*type == "exec") {
    ExecReloaderConfig e;
    if (auto cf = m.require("command", kArgvExpected)) {
      if (auto v = argv(*cf)) e.command = std::move(*v);
    }
    e.timeout = rc.timeout;
    rc.settings = std::move(e);
  } else if (*type == "signal") {
    SignalReloaderConfig s;
    auto pf = m.get("pid_file");
    auto pid = m.get("pid");
    if (pf && pid) {
      r_.fail(*pid, "both pid_file and pid", "exactly one of them");
    } else if (!pf && !pid) {
      r_.fail(m.self(), "neither pid_file nor pid", "pid_file: /run/app.pid or pid: <number>");
    }
    if (pf) {
      if (auto p = r_.path(*pf, true)) s.pid_file = *p;
    }
    if (pid) {
      if (auto v = r_.integer(*pid, 2, 4'194'304, "a process id from 2 to 4194304")) {
        s.pid = static_cast<int>(*v);
      }
    }
    if (auto sf = m.get("signal")) {
      constexpr std::string_view kExpected = "a signal name like SIGHUP or HUP, or a number from 1 to 64";
      if (auto v = r_.string(*sf, kExpected)) {
        if (auto n = parse_signal(*v)) s.signal = *n;
        else r_.fail(*sf, "got " + describe(sf->value), kExpected);
      }
    }
    rc.settings = std::move(s);
  } else if (*type == "systemd") {
    SystemdReloaderConfig s;
    constexpr std::string_view kUnit = "a systemd unit name like nginx.service";
    if (auto uf = m.require("unit", kUnit)) {
      if (auto v = r_.non_empty_string(*uf, kUnit)) {
        if (v->find_first_of(" \t/") == std::string::npos) s.unit = *v;
        else r_.fail(*uf, "got " + describe(uf->value), kUnit);
      }
    }
    opt(m, "action", [&](const Field& x) {
          return r_.one_of(x, {"reload", "restart", "reload-or-restart", "try-reload-or-restart", "try-restart"}, "systemd action");
        }, [&](std::string v) { s.action = std::move(v); });
    rc.settings = std::move(s);
  } else if (*type == "nginx") {
    NginxReloaderConfig n;
    if (auto cf = m.get("command")) {
      if (auto v = argv(*cf)) n.command = std::move(*v);
    }
    // Left empty when not given (an empty list means the same): the nginx reloader derives
    // the pre-check from `command` (its binary with -t and the same -c/-p/-g options).
    if (auto tc = m.get("test_command")) {
      if (tc->value.IsSequence() && tc->value.size() == 0) {
        n.test_command.clear();
      } else if (auto v = argv(*tc)) {
        n.test_command = std::move(*v);
      }
    }
    opt_path(m, "error_log", n.error_log);
    rc.settings = std::move(n);
  } else if (*type == "haproxy") {
    HaproxyReloaderConfig h;
    req_path(m, "admin_socket", h.admin_socket);
    // Not resolved like a path: haproxy knows the certificate by the exact string in its config.
    constexpr std::string_view kCert = "the certificate's name exactly as haproxy lists it (show ssl cert)";
    req_string(m, "cert", kCert, h.cert);
    if (h.cert.find_first_of(" \t\r\n") != std::string::npos) {
      // The name travels on one line of haproxy's runtime API: white space would split it.
      r_.fail(*m.get("cert"), "got " + describe(m.get("cert")->value) + " with white space", kCert);
      h.cert.clear();
    }
    opt_path(m, "issuer_file", h.issuer_file);
    opt_path(m, "ocsp_file", h.ocsp_file);
    rc.settings = std::move(h);
  } else {
    EnvoyReloaderConfig e;
    req_path(m, "sds_dir", e.sds_dir);
    rc.settings = std::move(e);
  }

  if (auto vf = m.get("verify")) {
    // nginx: old workers keep serving the old certificate for ~100 ms after a reload.
    Duration settle = *type == "nginx" ? Duration(150) : Duration(0);
    rc.verify = verify(*vf, settle);
  }
  return rc;
}

std::optional<VerifyConfig> Schema::verify(const Field& f, Duration default_settle) {
  MapView m(r_, f, "a mapping { connect, server_name, settle, deadline }");
  if (!m.valid()) return std::nullopt;
  m.allow({"connect", "server_name", "settle", "deadline"});
  VerifyConfig v;
  v.settle = default_settle;
  if (auto cf = m.require("connect", kHostPortExpected)) {
    if (auto s = r_.string(*cf, kHostPortExpected)) {
      if (valid_host_port(*s, false)) v.connect = *s;
      else r_.fail(*cf, "got " + describe(cf->value), kHostPortExpected);
    }
  }
  opt_string(m, "server_name", v.server_name);
  opt_duration(m, "settle", v.settle, false);
  opt_duration(m, "deadline", v.deadline, true);
  return v;
}

}  // namespace

// ---- entry points ---------------------------------------------------------------------------

Result<Config> parse_config(std::string_view yaml_text, const fs::path& source_name) {
  std::error_code ec;
  fs::path absolute = fs::absolute(source_name, ec);
  fs::path base = ec ? source_name.parent_path() : absolute.parent_path();
  YamlReader reader(source_name.string(), base);
  Config config;
  config.source = source_name;
  try {
    std::vector<YAML::Node> docs = YAML::LoadAll(std::string(yaml_text));
    if (docs.empty() || docs[0].IsNull()) {
      reader.error(YAML::Mark(), "the configuration is empty, expected a mapping of top-level keys "
                                 "(state_dir, brokers, certificates, ...)");
    } else if (docs.size() > 1) {
      reader.error(docs[1].Mark(), "a second YAML document, expected a single document (no '---')");
    } else {
      Schema(reader).root(Field{YAML::Node(), docs[0], ""}, config);
    }
  } catch (const YAML::DeepRecursion& e) {
    reader.error(e.mark, "YAML nesting too deep, expected a configuration nested a few levels deep");
  } catch (const YAML::Exception& e) {
    reader.error(e.mark, "YAML syntax error: " + e.msg +
                             ", expected valid YAML (check indentation, quotes and brackets)");
  } catch (const std::exception& e) {
    reader.error(YAML::Mark::null_mark(), std::string("cannot read the configuration: ") + e.what());
  }
  if (reader.has_errors()) {
    Error err = make_error(reader.joined_errors());
    err.configuration = true;
    return err;
  }
  return config;
}

Result<Config> load_config(const fs::path& path) {
  // Bigger than any sane config; keeps a wrong --config (a log, a device) from eating memory.
  constexpr std::uintmax_t kMaxBytes = 4 << 20;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    Error err = make_error(path.string() + ": is a directory, expected a YAML configuration file");
    err.configuration = true;
    return err;
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    Error err = make_error(path.string() + ": cannot open the configuration file: " +
                           std::generic_category().message(errno));
    err.configuration = true;
    return err;
  }
  std::string text;
  char buf[65536];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) {
    text.append(buf, static_cast<std::size_t>(in.gcount()));
    if (text.size() > kMaxBytes) {
      Error err = make_error(path.string() + ": larger than 4 MiB, expected a YAML configuration file");
      err.configuration = true;
      return err;
    }
  }
  if (in.bad()) {
    Error err = make_error(path.string() + ": cannot read the configuration file");
    err.configuration = true;
    return err;
  }
  return parse_config(text, path);
}

}  // namespace certagent::config
