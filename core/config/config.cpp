// YAML -> Config, with all validation (DESIGN.md "Configuration (YAML) — contract"): the core
// schema here, a broker's or reloader's own keys by its plug-in (the Catalog's parse).
//
// Path policy: a relative file path in the config is taken relative to the directory of the
// config file itself (so a config and the files beside it move together); after loading every
// path is absolute. The effective config (dump_config) therefore only holds absolute paths.

#include "core/config/config.h"

#include "core/config/config_yaml.h"
#include "core/config/names.h"

#include <yaml-cpp/depthguard.h>
#include <yaml-cpp/eventhandler.h>

#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <system_error>

namespace certagent::config {

namespace fs = std::filesystem;

// ---- validation helpers ---------------------------------------------------------------------

namespace {

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

std::string join(const std::vector<std::string_view>& words) {
  std::string out;
  for (auto w : words) out += (out.empty() ? "" : ", ") + std::string(w);
  return out;
}

// ---- the schema -----------------------------------------------------------------------------

constexpr std::string_view kKeyTypeExpected =
    "a key type: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096 or ed25519";

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
  Schema(YamlReader& r, const Catalog& catalog) : r_(r), catalog_(catalog) {}

  void root(const Field& f, Config& c);

 private:
  void log(const Field& f, LogConfig& out);
  void identity(const Field& f, IdentityConfig& out);
  void socket(const Field& f, SocketConfig& out);
  void workload_api(const Field& f, WorkloadApiConfig& out);
  void opt_mode(const MapView& m, std::uint32_t& out);
  void brokers(const Field& f, std::map<std::string, BrokerConfig>& out);
  std::optional<BrokerConfig> broker(const std::string& name, const Field& f);
  void knobs(MapView& m, Knobs& out);
  void check_knobs(const CertDefaults& eff, const Knobs& here, const MapView& level);
  void certificates(const Field& f, const Config& c, std::vector<CertificateConfig>& out);
  std::optional<CertificateConfig> certificate(const Field& f, const Config& c, YAML::Mark& name_mark);
  std::optional<FilesConfig> files(const Field& f);
  std::vector<ReloaderConfig> reloaders(const Field& f);
  std::optional<ReloaderConfig> reloader(const Field& f);
  std::optional<VerifyConfig> verify(const Field& f, Duration default_settle);

  YamlReader& r_;
  const Catalog& catalog_;
};

void Schema::root(const Field& f, Config& c) {
  MapView m(r_, f, "a mapping of top-level keys (state_dir, brokers, certificates, ...)");
  if (!m.valid()) return;
  m.allow({"state_dir", "log", "identity", "socket", "workload_api", "metrics", "brokers",
           "defaults", "certificates"});
  if (auto sd = m.get("state_dir")) {
    if (auto p = r_.path(*sd, true)) c.state_dir = *p;
  }
  if (auto v = m.get("log")) log(*v, c.log);
  if (auto v = m.get("identity")) identity(*v, c.identity);
  if (auto v = m.get("socket")) socket(*v, c.socket);
  if (auto v = m.get("workload_api")) {
    workload_api(*v, c.workload_api);
    if (!c.workload_api.path.empty() && c.workload_api.path == c.socket.path)
      r_.fail(*v, "workload_api.path equal to socket.path", "a socket path of its own");
  }
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
  m.opt("level", [&](const Field& x) { return r_.one_of(x, {"trace", "debug", "info", "warn", "error"}, "log level"); },
      [&](std::string v) { out.level = std::move(v); });
  m.opt("format", [&](const Field& x) { return r_.one_of(x, {"text", "json"}, "log format"); },
      [&](std::string v) { out.format = std::move(v); });
}

void Schema::identity(const Field& f, IdentityConfig& out) {
  MapView m(r_, f);
  m.allow({"backend", "tcti"});
  m.opt("backend", [&](const Field& x) { return r_.one_of(x, {"tpm", "file"}, "identity backend"); },
      [&](std::string v) { out.backend = std::move(v); });
  m.opt("tcti", [&](const Field& x) {
        return r_.non_empty_string(x, "a TCTI string like \"device:/dev/tpmrm0\"");
      }, [&](std::string v) { out.tcti = std::move(v); });
}

void Schema::opt_mode(const MapView& m, std::uint32_t& out) {
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
        if (ok && mode <= 0777) out = mode;
        else r_.fail(*mf, "got " + describe(mf->value), "an octal mode from \"0000\" to \"0777\"");
      }
    }
  }
}

void Schema::workload_api(const Field& f, WorkloadApiConfig& out) {
  MapView m(r_, f);
  m.allow({"path", "mode", "group", "max_connections", "max_connections_per_uid", "max_streams",
           "max_streams_per_uid", "max_request_bytes", "calls_per_second", "keepalive",
           "idle_timeout"});
  m.opt_path("path", out.path);
  opt_mode(m, out.mode);
  m.opt_string("group", out.group);
  m.opt_int("max_connections", 1, 1'000'000, out.max_connections);
  m.opt_int("max_connections_per_uid", 1, 1'000'000, out.max_connections_per_uid);
  m.opt_int("max_streams", 1, 1'000'000, out.max_streams);
  m.opt_int("max_streams_per_uid", 1, 1'000'000, out.max_streams_per_uid);
  m.opt_int("max_request_bytes", 1024, 4 << 20, out.max_request_bytes);
  m.opt_int("calls_per_second", 1, 1'000'000, out.calls_per_second);
  m.opt_duration("keepalive", out.keepalive, true);
  m.opt_duration("idle_timeout", out.idle_timeout, true);
}

void Schema::socket(const Field& f, SocketConfig& out) {
  MapView m(r_, f);
  m.allow({"path", "mode", "group", "admin_uids", "max_connections", "max_watchers",
           "max_header_bytes", "request_timeout"});
  m.opt_path("path", out.path);
  opt_mode(m, out.mode);
  m.opt_string("group", out.group);
  m.opt("admin_uids", [&](const Field& x) { return r_.id_list(x); },
      [&](std::vector<std::uint32_t> v) { out.admin_uids = std::move(v); });
  m.opt_int("max_connections", 1, 1'000'000, out.max_connections);
  m.opt_int("max_watchers", 1, 1'000'000, out.max_watchers);
  m.opt_int("max_header_bytes", 1024, 1 << 20, out.max_header_bytes);
  m.opt_duration("request_timeout", out.request_timeout, true);
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
  std::vector<std::string_view> names;
  for (const auto& t : catalog_.brokers) names.push_back(t.name);
  auto tf = m.require("type", "a broker type: one of " + join(names));
  if (!tf) return std::nullopt;
  auto type = r_.one_of(*tf, names, "broker type");
  if (!type) return std::nullopt;
  const BrokerType& plugin = *catalog_.broker(*type);

  std::vector<std::string_view> allowed{"type", "max_in_flight", "timeout"};
  allowed.insert(allowed.end(), plugin.keys.begin(), plugin.keys.end());
  m.allow(allowed);

  BrokerConfig b;
  b.name = name;
  b.type = *type;
  m.opt_int("max_in_flight", 1, 1024, b.max_in_flight);
  m.opt_duration("timeout", b.timeout, true);
  b.settings = plugin.parse(m);
  return b;
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
  const BrokerType* broker_type = broker ? catalog_.broker(broker->type) : nullptr;
  if (broker_type && broker_type->needs_trust_bundle && cert.trust_bundle.empty()) {
    r_.error(f.mark(), f.path + ": no trust_bundle for broker '" + broker->name + "' (type " +
                           broker->type +
                           "): the issued chain is verified against it before anything is "
                           "written, expected trust_bundle in defaults: or in this certificate");
  }

  if (auto ff = m.get("files")) cert.files = files(*ff);
  if (auto sf = m.get("socket")) {
    MapView sm(r_, *sf, "a mapping { allow_uids, allow_gids }");
    sm.allow({"allow_uids", "allow_gids"});
    sm.opt("allow_uids", [&](const Field& x) { return r_.id_list(x); },
        [&](std::vector<std::uint32_t> v) { cert.socket.allow_uids = std::move(v); });
    sm.opt("allow_gids", [&](const Field& x) { return r_.id_list(x); },
        [&](std::vector<std::uint32_t> v) { cert.socket.allow_gids = std::move(v); });
  }
  if (auto rf = m.get("reload")) cert.reload = reloaders(*rf);
  if (auto ef = m.get("on_expiry")) cert.on_expiry = reloaders(*ef);
  return cert;
}

std::optional<FilesConfig> Schema::files(const Field& f) {
  MapView m(r_, f, "a mapping { dir, owner, group, keep, remove_on_expiry, formats, pkcs12 }");
  if (!m.valid()) return std::nullopt;
  m.allow({"dir", "owner", "group", "keep", "remove_on_expiry", "formats", "pkcs12"});
  FilesConfig out;
  if (auto d = m.require("dir", "the directory the files go to, like /etc/certagent/live/web")) {
    if (auto p = r_.path(*d, true)) out.dir = *p;
  }
  m.opt_string("owner", out.owner);
  m.opt_string("group", out.group);
  m.opt_int("keep", 1, 1000, out.keep);
  m.opt("remove_on_expiry", [&](const Field& x) { return r_.boolean(x); },
      [&](bool v) { out.remove_on_expiry = v; });
  bool wants_pkcs12 = false;
  std::optional<Field> formats_field = m.get("formats");
  if (formats_field) {
    if (auto list = r_.items(*formats_field, "a list of output formats like [pem, pkcs12]")) {
      std::set<std::string> seen;
      for (const auto& item : *list) {
        auto format = r_.one_of(item, {"pem", "pkcs12"}, "output format");
        if (!format) continue;
        if (!seen.insert(*format).second) {
          r_.fail(item, "got '" + *format + "' twice", "each format once");
          continue;
        }
        if (*format == "pkcs12") wants_pkcs12 = true;
      }
    }
  }
  // PEM is always written: reloaders and restarts read it.
  out.formats = {"pem"};
  if (wants_pkcs12) out.formats.emplace_back("pkcs12");
  if (auto pf = m.get("pkcs12")) {
    MapView pm(r_, *pf, "a mapping { password_file, sealed }");
    if (pm.valid()) {
      pm.allow({"password_file", "sealed"});
      Pkcs12Config p;
      if (auto pw = pm.require("password_file",
                               "the file holding the keystore password, like /etc/certagent/web.p12.pass")) {
        if (auto path = r_.path(*pw, true)) p.password_file = *path;
      }
      pm.opt("sealed", [&](const Field& x) { return r_.boolean(x); }, [&](bool v) { p.sealed = v; });
      if (!wants_pkcs12) {
        r_.error(pf->mark(), pf->path + ": a keystore password but no keystore, expected pkcs12 in " +
                                 f.child("formats") + " (or no pkcs12: mapping)");
      }
      out.pkcs12 = std::move(p);
    }
  } else if (wants_pkcs12) {
    r_.error(formats_field->mark(), formats_field->path +
                                        ": pkcs12 needs a password, expected " + f.child("pkcs12") +
                                        ": { password_file: PATH } beside it");
  }
  if (!wants_pkcs12) out.pkcs12.reset();
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
  std::vector<std::string_view> names;
  for (const auto& t : catalog_.reloaders) names.push_back(t.name);
  auto tf = m.require("type", "a reloader type: one of " + join(names));
  if (!tf) return std::nullopt;
  auto type = r_.one_of(*tf, names, "reloader type");
  if (!type) return std::nullopt;
  const ReloaderType& plugin = *catalog_.reloader(*type);

  std::vector<std::string_view> allowed{"type", "timeout", "verify"};
  allowed.insert(allowed.end(), plugin.keys.begin(), plugin.keys.end());
  m.allow(allowed);

  ReloaderConfig rc;
  rc.type = *type;
  rc.timeout = plugin.default_timeout;
  m.opt_duration("timeout", rc.timeout, true);
  rc.settings = plugin.parse(m, rc);
  if (auto vf = m.get("verify")) rc.verify = verify(*vf, plugin.default_settle);
  return rc;
}

std::optional<VerifyConfig> Schema::verify(const Field& f, Duration default_settle) {
  MapView m(r_, f, "a mapping { connect, server_name, settle, deadline, protocol }");
  if (!m.valid()) return std::nullopt;
  m.allow({"connect", "server_name", "settle", "deadline", "protocol"});
  VerifyConfig v;
  v.settle = default_settle;
  if (auto cf = m.require("connect", kHostPortExpected)) {
    if (auto s = r_.string(*cf, kHostPortExpected)) {
      if (valid_host_port(*s, false)) v.connect = *s;
      else r_.fail(*cf, "got " + describe(cf->value), kHostPortExpected);
    }
  }
  m.opt_string("server_name", v.server_name);
  m.opt_duration("settle", v.settle, false);
  m.opt_duration("deadline", v.deadline, true);
  if (auto pf = m.get("protocol")) {
    const std::vector<std::string_view> names(std::begin(kVerifyProtocols), std::end(kVerifyProtocols));
    if (auto p = r_.one_of(*pf, names, "verify protocol")) {
      auto at = std::find(names.begin(), names.end(), *p);
      v.protocol = static_cast<VerifyProtocol>(at - names.begin());
    }
  }
  return v;
}

}  // namespace

// ---- entry points ---------------------------------------------------------------------------

std::string_view to_string(VerifyProtocol p) {
  auto i = static_cast<std::size_t>(p);
  return i < std::size(kVerifyProtocols) ? kVerifyProtocols[i] : "tls";
}

const BrokerType* Catalog::broker(std::string_view name) const {
  for (const auto& t : brokers) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

const ReloaderType* Catalog::reloader(std::string_view name) const {
  for (const auto& t : reloaders) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

namespace {

// The first character YAML does not allow in a config here, and what it is; npos when none.
// YAML is UTF-8 here (overlong forms, surrogates and code points past U+10FFFF count as
// invalid), and printable: tab, LF and CRLF line ends, no other C0 or C1 control character, no
// DEL. yaml-cpp reads both kinds but writes them back differently, so a config with them would
// not survive check-config, and a NUL or a lone CR would reach a broker in a label or a path
// (found by fuzz_config).
struct BadCharacter {
  std::size_t at{std::string_view::npos};
  const char* what{""};
};

BadCharacter first_bad_character(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t len = 0;
    std::uint32_t cp = 0;
    if (c < 0x80) {
      const bool crlf = c == '\r' && i + 1 < s.size() && s[i + 1] == '\n';
      if ((c < 0x20 && c != '\t' && c != '\n' && !crlf) || c == 0x7f) {
        return {i, c == '\r' ? "a carriage return without a line feed" : "a control character"};
      }
      ++i;
      continue;
    }
    if (c >= 0xc2 && c <= 0xdf) { len = 2; cp = c & 0x1fu; }
    else if (c >= 0xe0 && c <= 0xef) { len = 3; cp = c & 0x0fu; }
    else if (c >= 0xf0 && c <= 0xf4) { len = 4; cp = c & 0x07u; }
    else return {i, "not UTF-8"};
    if (s.size() - i < len) return {i, "not UTF-8"};
    for (std::size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xc0u) != 0x80u) return {i, "not UTF-8"};
      cp = (cp << 6) | (cc & 0x3fu);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
      return {i, "not UTF-8"};
    if (cp >= 0x80 && cp <= 0x9f) return {i, "a control character"};
    i += len;
  }
  return {};
}

// Where each YAML document of a text starts, read with the parser's events only (no nodes).
// Also where each one's first node is: errors point there, as at a node of the document.
class DocumentStarts : public YAML::EventHandler {
 public:
  std::vector<YAML::Mark> starts;
  std::vector<YAML::Mark> first_nodes;
  void OnDocumentStart(const YAML::Mark& mark) override { starts.push_back(mark); }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark& mark, YAML::anchor_t) override { node(mark); }
  void OnAlias(const YAML::Mark& mark, YAML::anchor_t) override { node(mark); }
  void OnScalar(const YAML::Mark& mark, const std::string&, YAML::anchor_t, const std::string&) override {
    node(mark);
  }
  void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {
    node(mark);
  }
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {
    node(mark);
  }
  void OnMapEnd() override {}

 private:
  void node(const YAML::Mark& mark) {
    if (first_nodes.size() < starts.size()) first_nodes.push_back(mark);
  }
};

struct DocumentCheck {
  std::optional<YAML::Mark> stray;   // a token the parser cannot use: it would loop on it forever
  std::optional<YAML::Mark> second;  // a second document
};

// yaml-cpp 0.7 (Debian 12) never ends YAML::LoadAll on a token its document parser does not
// consume, such as a ',' outside brackets: every call then returns one more empty document at
// the same place (upstream issue #1040, fixed after 0.8). So the documents are walked here, at
// most three: a document starting where the previous one started means no progress.
DocumentCheck check_documents(const std::string& text) {
  std::istringstream in(text);
  YAML::Parser parser(in);
  DocumentStarts events;
  DocumentCheck out;
  for (int i = 0; i < 3 && parser.HandleNextDocument(events); ++i) {
    const auto& s = events.starts;
    if (s.size() >= 2 && s[s.size() - 1].pos == s[s.size() - 2].pos) {
      out.stray = s.back();
      return out;
    }
  }
  if (events.starts.size() >= 2) {
    out.second = events.first_nodes.size() >= 2 ? events.first_nodes[1] : events.starts[1];
  }
  return out;
}

}  // namespace

Result<Config> parse_config(std::string_view yaml_text, const fs::path& source_name, const Catalog& catalog) {
  std::error_code ec;
  fs::path absolute = fs::absolute(source_name, ec);
  fs::path base = ec ? source_name.parent_path() : absolute.parent_path();
  YamlReader reader(source_name.string(), base);
  Config config;
  config.source = source_name;
  if (const BadCharacter found = first_bad_character(yaml_text); found.at != std::string_view::npos) {
    const std::size_t bad = found.at;
    YAML::Mark mark;
    mark.pos = static_cast<int>(bad);
    const std::string_view before = yaml_text.substr(0, bad);
    mark.line = static_cast<int>(std::count(before.begin(), before.end(), '\n'));
    const std::size_t line_start = before.rfind('\n');
    mark.column = static_cast<int>(line_start == std::string_view::npos ? bad : bad - line_start - 1);
    char byte[8];
    std::snprintf(byte, sizeof byte, "0x%02x", static_cast<unsigned char>(yaml_text[bad]));
    reader.error(mark, std::string("byte ") + byte + " is " + found.what +
                           ", expected a UTF-8 text file of printable characters");
    Error err = make_error(reader.joined_errors());
    err.configuration = true;
    return err;
  }
  try {
    const std::string text(yaml_text);
    const DocumentCheck documents = check_documents(text);
    if (documents.stray) {
      const auto at = static_cast<std::size_t>(documents.stray->pos);
      const bool printable = at < text.size() && text[at] > ' ' && text[at] < 0x7f;
      const std::string token = printable ? "'" + text.substr(at, 1) + "'" : std::string("token");
      reader.error(*documents.stray, "YAML syntax error: unexpected " + token +
                                         " here, expected valid YAML (check indentation, quotes and brackets)");
    } else if (documents.second) {
      reader.error(*documents.second, "a second YAML document, expected a single document (no '---')");
    } else {
      // The first document only: check_documents made sure that it is the only one.
      const YAML::Node root = YAML::Load(text);
      if (root.IsNull()) {
        reader.error(YAML::Mark(), "the configuration is empty, expected a mapping of top-level keys "
                                   "(state_dir, brokers, certificates, ...)");
      } else {
        Schema(reader, catalog).root(Field{YAML::Node(), root, ""}, config);
      }
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

Result<Config> load_config(const fs::path& path, const Catalog& catalog) {
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
  return parse_config(text, path, catalog);
}

}  // namespace certagent::config
