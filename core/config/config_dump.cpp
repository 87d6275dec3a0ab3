// dump_config: the effective configuration as YAML, for `certagent check-config`. Every key is
// written with its value after defaults, in the order of DESIGN.md, and the output parses back
// (parse_config) to an equal Config. The config holds file paths only, never secret contents.

#include "core/config/config.h"

#include "core/config/config_writer.h"

namespace certagent::config {

namespace {

std::string octal_mode(std::uint32_t mode) {
  std::string s;
  for (int shift = 9; shift >= 0; shift -= 3) s += static_cast<char>('0' + ((mode >> shift) & 7));
  return s;
}

void write_broker(ConfigWriter& w, const BrokerConfig& b) {
  w.begin_map();
  w.str("type", b.type);
  w.integer("max_in_flight", b.max_in_flight);
  w.duration("timeout", b.timeout);
  b.settings.dump(w);
  w.end_map();
}

void write_reloader(ConfigWriter& w, const ReloaderConfig& r) {
  w.begin_map();
  w.str("type", r.type);
  if (!r.settings.dumps_timeout()) w.duration("timeout", r.timeout);
  r.settings.dump(w);
  if (r.verify) {
    w.key("verify");
    w.begin_map();
    w.str("connect", r.verify->connect);
    w.str("server_name", r.verify->server_name);
    w.duration("settle", r.verify->settle);
    w.duration("deadline", r.verify->deadline);
    w.str("protocol", std::string(to_string(r.verify->protocol)));
    w.end_map();
  }
  w.end_map();
}

void write_reloaders(ConfigWriter& w, std::string_view key, const std::vector<ReloaderConfig>& list) {
  w.begin_seq(key);
  for (const auto& r : list) write_reloader(w, r);
  w.end_seq();
}

}  // namespace

std::string dump_config(const Config& c) {
  ConfigWriter w;
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

  if (!c.workload_api.path.empty()) {
    const auto& a = c.workload_api;
    w.key("workload_api");
    w.begin_map();
    w.path("path", a.path);
    w.quoted("mode", octal_mode(a.mode));
    w.str("group", a.group);
    w.integer("max_connections", a.max_connections);
    w.integer("max_connections_per_uid", a.max_connections_per_uid);
    w.integer("max_streams", a.max_streams);
    w.integer("max_streams_per_uid", a.max_streams_per_uid);
    w.integer("max_request_bytes", a.max_request_bytes);
    w.integer("calls_per_second", a.calls_per_second);
    w.duration("keepalive", a.keepalive);
    w.duration("idle_timeout", a.idle_timeout);
    w.end_map();
  }

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
      w.strings("formats", cert.files->formats);
      if (cert.files->pkcs12) {
        w.key("pkcs12");
        w.begin_map();
        w.path("password_file", cert.files->pkcs12->password_file);
        w.boolean("sealed", cert.files->pkcs12->sealed);
        w.end_map();
      }
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
