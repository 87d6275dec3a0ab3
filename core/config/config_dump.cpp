// dump_config: the effective configuration as YAML, for `certagent check-config`. Every key is
// written with its value after defaults, in the order of DESIGN.md, and the output parses back
// (parse_config) to an equal Config. The config holds file paths only, never secret contents.

#include "core/config/config.h"

#include <yaml-cpp/yaml.h>

#include <array>
#include <charconv>
#include <csignal>
#include <string_view>

namespace certagent::config {

namespace {

// The emitter would write these plainly, and YAML would read them back as null.
bool needs_quotes(std::string_view s) {
  return s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL";
}

class Writer {
 public:
  Writer() {
    out_.SetIndent(2);
    out_.SetMapFormat(YAML::Block);
  }

  void begin_map() { out_ << YAML::BeginMap; }
  void end_map() { out_ << YAML::EndMap; }
  void key(std::string_view k) { out_ << YAML::Key << std::string(k) << YAML::Value; }

  void str(std::string_view k, const std::string& v) {
    key(k);
    scalar(v);
  }
  void path(std::string_view k, const std::filesystem::path& v) { str(k, v.string()); }
  void duration(std::string_view k, Duration d) { str(k, format_duration(d)); }
  void boolean(std::string_view k, bool v) {
    key(k);
    out_ << (v ? "true" : "false");
  }
  void number(std::string_view k, double v) {
    // Shortest text that reads back as exactly the same double.
    std::array<char, 64> buf{};
    auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), v);
    key(k);
    out_ << std::string(buf.data(), ec == std::errc() ? end : buf.data());
  }
  template <class Int>
  void integer(std::string_view k, Int v) {
    key(k);
    out_ << std::to_string(v);
  }
  void quoted(std::string_view k, const std::string& v) {
    key(k);
    out_ << YAML::DoubleQuoted << v;
  }
  void strings(std::string_view k, const std::vector<std::string>& v) {
    key(k);
    out_ << YAML::Flow << YAML::BeginSeq;
    for (const auto& s : v) scalar(s);
    out_ << YAML::EndSeq;
  }
  void ids(std::string_view k, const std::vector<std::uint32_t>& v) {
    key(k);
    out_ << YAML::Flow << YAML::BeginSeq;
    for (auto id : v) out_ << std::to_string(id);
    out_ << YAML::EndSeq;
  }
  void begin_seq(std::string_view k) {
    key(k);
    out_ << YAML::BeginSeq;
  }
  void end_seq() { out_ << YAML::EndSeq; }
  void comment(const std::string& text) { out_ << YAML::Comment(text) << YAML::Newline; }

  std::string text() const { return std::string(out_.c_str()) + "\n"; }

 private:
  void scalar(const std::string& v) {
    if (needs_quotes(v)) out_ << YAML::DoubleQuoted;
    out_ << v;
  }

  YAML::Emitter out_;
};

std::string signal_name(int n) {
  switch (n) {
    case SIGHUP: return "SIGHUP";
    case SIGINT: return "SIGINT";
    case SIGQUIT: return "SIGQUIT";
    case SIGKILL: return "SIGKILL";
    case SIGUSR1: return "SIGUSR1";
    case SIGUSR2: return "SIGUSR2";
    case SIGALRM: return "SIGALRM";
    case SIGTERM: return "SIGTERM";
    case SIGCONT: return "SIGCONT";
    case SIGWINCH: return "SIGWINCH";
    case SIGTTIN: return "SIGTTIN";
    case SIGTTOU: return "SIGTTOU";
    default: return std::to_string(n);
  }
}

std::string octal_mode(std::uint32_t mode) {
  std::string s;
  for (int shift = 9; shift >= 0; shift -= 3) s += static_cast<char>('0' + ((mode >> shift) & 7));
  return s;
}

void write_broker(Writer& w, const BrokerConfig& b) {
  w.begin_map();
  w.str("type", b.type);
  w.integer("max_in_flight", b.max_in_flight);
  w.duration("timeout", b.timeout);
  if (const auto* a = std::get_if<AcmeBrokerConfig>(&b.settings)) {
    w.str("directory", a->directory);
    w.path("ca_bundle", a->ca_bundle);
    if (a->eab_kid) {
      w.key("eab");
      w.begin_map();
      w.str("kid", *a->eab_kid);
      w.path("hmac_key_file", a->eab_hmac_key_file);
      w.end_map();
    }
    w.key("challenge");
    w.begin_map();
    w.str("type", a->challenge.type);
    w.str("listen", a->challenge.listen);
    w.strings("hook", a->challenge.hook);
    w.end_map();
    w.str("preferred_chain", a->preferred_chain);
    w.str("contact", a->contact);
  } else if (const auto* c = std::get_if<CfsslBrokerConfig>(&b.settings)) {
    w.str("url", c->url);
    w.path("ca_bundle", c->ca_bundle);
    w.path("auth_key_file", c->auth_key_file);
    w.str("profile", c->profile);
    w.str("label", c->label);
  } else if (const auto* l = std::get_if<LemurBrokerConfig>(&b.settings)) {
    w.str("url", l->url);
    w.path("ca_bundle", l->ca_bundle);
    w.path("token_file", l->token_file);
    w.str("authority", l->authority);
    w.str("owner", l->owner);
    w.str("description", l->description);
    w.strings("destinations", l->destinations);
    w.strings("notifications", l->notifications);
    w.strings("roles", l->roles);
  }
  w.end_map();
}

void write_reloader(Writer& w, const ReloaderConfig& r) {
  w.begin_map();
  w.str("type", r.type);
  if (const auto* e = std::get_if<ExecReloaderConfig>(&r.settings)) {
    w.strings("command", e->command);
    w.duration("timeout", e->timeout);  // exec: the command's limit is the reloader's
  } else {
    w.duration("timeout", r.timeout);
  }
  if (const auto* s = std::get_if<SignalReloaderConfig>(&r.settings)) {
    if (s->pid) w.integer("pid", *s->pid);
    else w.path("pid_file", s->pid_file);
    w.str("signal", signal_name(s->signal));
  } else if (const auto* sd = std::get_if<SystemdReloaderConfig>(&r.settings)) {
    w.str("unit", sd->unit);
    w.str("action", sd->action);
  } else if (const auto* n = std::get_if<NginxReloaderConfig>(&r.settings)) {
    w.strings("command", n->command);
    w.strings("test_command", n->test_command);
    w.path("error_log", n->error_log);
  } else if (const auto* h = std::get_if<HaproxyReloaderConfig>(&r.settings)) {
    w.path("admin_socket", h->admin_socket);
    w.str("cert", h->cert);
    w.path("issuer_file", h->issuer_file);
    w.path("ocsp_file", h->ocsp_file);
  } else if (const auto* en = std::get_if<EnvoyReloaderConfig>(&r.settings)) {
    w.path("sds_dir", en->sds_dir);
  }
  if (r.verify) {
    w.key("verify");
    w.begin_map();
    w.str("connect", r.verify->connect);
    w.str("server_name", r.verify->server_name);
    w.duration("settle", r.verify->settle);
    w.duration("deadline", r.verify->deadline);
    w.end_map();
  }
  w.end_map();
}

void write_reloaders(Writer& w, std::string_view key, const std::vector<ReloaderConfig>& list) {
  w.begin_seq(key);
  for (const auto& r : list) write_reloader(w, r);
  w.end_seq();
}

}  // namespace

std::string dump_config(const Config& c) {
  Writer w;
  w.comment("certagent effective configuration" +
            (c.source.empty() ? std::string() : " of " + c.source.string()) +
            " (defaults filled in)");
  w.begin_map();
  w.path("state_dir", c.state_dir);

  w.key("log");
  w.begin_map();
  w.str("level", c.log.level);
  w.str("format", c.log.format);
  w.end_map();

  w.key("identity");
  w.begin_map();
  w.str("backend", c.identity.backend);
  w.str("tcti", c.identity.tcti);
  w.end_map();

  w.key("socket");
  w.begin_map();
  w.path("path", c.socket.path);
  w.quoted("mode", octal_mode(c.socket.mode));
  w.str("group", c.socket.group);
  w.ids("admin_uids", c.socket.admin_uids);
  w.integer("max_connections", c.socket.max_connections);
  w.integer("max_watchers", c.socket.max_watchers);
  w.integer("max_header_bytes", c.socket.max_header_bytes);
  w.duration("request_timeout", c.socket.request_timeout);
  w.end_map();

  w.key("metrics");
  w.begin_map();
  w.str("listen", c.metrics.listen);
  w.end_map();

  w.key("brokers");
  w.begin_map();
  for (const auto& [name, b] : c.brokers) {
    w.key(name);
    write_broker(w, b);
  }
  w.end_map();

  w.key("defaults");
  w.begin_map();
  w.str("key", std::string(to_string(c.defaults.key)));
  w.duration("lifetime", c.defaults.lifetime);
  w.duration("max_lifetime", c.defaults.max_lifetime);
  w.number("renew_at", c.defaults.renew_at);
  w.number("jitter", c.defaults.jitter);
  w.path("trust_bundle", c.defaults.trust_bundle);
  w.duration("ready_min_ttl", c.defaults.ready_min_ttl);
  w.end_map();

  w.begin_seq("certificates");
  for (const auto& cert : c.certificates) {
    w.begin_map();
    w.str("name", cert.name);
    w.str("broker", cert.broker);
    w.str("common_name", cert.common_name);
    w.strings("dns_names", cert.dns_names);
    w.strings("ip_addresses", cert.ip_addresses);
    w.strings("uris", cert.uris);
    w.str("key", std::string(to_string(cert.key)));
    w.duration("lifetime", cert.lifetime);
    w.duration("max_lifetime", cert.max_lifetime);
    w.number("renew_at", cert.renew_at);
    w.number("jitter", cert.jitter);
    w.path("trust_bundle", cert.trust_bundle);
    w.duration("ready_min_ttl", cert.ready_min_ttl);
    if (cert.files) {
      w.key("files");
      w.begin_map();
      w.path("dir", cert.files->dir);
      w.str("owner", cert.files->owner);
      w.str("group", cert.files->group);
      w.integer("keep", cert.files->keep);
      w.boolean("remove_on_expiry", cert.files->remove_on_expiry);
      w.end_map();
    }
    w.key("socket");
    w.begin_map();
    w.ids("allow_uids", cert.socket.allow_uids);
    w.ids("allow_gids", cert.socket.allow_gids);
    w.end_map();
    write_reloaders(w, "reload", cert.reload);
    write_reloaders(w, "on_expiry", cert.on_expiry);
    w.end_map();
  }
  w.end_seq();

  w.end_map();
  return w.text();
}

}  // namespace certagent::config
