#include "reloaders/haproxy_config.h"

#include "core/config/config_writer.h"
#include "core/config/config_yaml.h"
#include "reloaders/haproxy_reloader.h"

namespace certagent::reloaders {

namespace {

using config::describe;
using config::Field;
using config::MapView;

HaproxyReloaderConfig parse(MapView& m, const config::ReloaderConfig&) {
  HaproxyReloaderConfig h;
  m.req_path("admin_socket", h.admin_socket);
  // Not resolved like a path: haproxy knows the certificate by the exact string in its config.
  constexpr std::string_view kCert = "the certificate's name exactly as haproxy lists it (show ssl cert)";
  m.req_string("cert", kCert, h.cert);
  if (!valid_haproxy_cert_name(h.cert)) {
    m.reader().fail(*m.get("cert"), "got " + describe(m.get("cert")->value) + " with white space", kCert);
    h.cert.clear();
  }
  m.opt_path("issuer_file", h.issuer_file);
  m.opt_path("ocsp_file", h.ocsp_file);
  return h;
}

}  // namespace

bool valid_haproxy_cert_name(std::string_view name) { return name.find_first_of(" \t\r\n") == std::string_view::npos; }

void HaproxyReloaderConfig::dump(config::ConfigWriter& w) const {
  w.path("admin_socket", admin_socket);
  w.str("cert", cert);
  w.path("issuer_file", issuer_file);
  w.path("ocsp_file", ocsp_file);
}

ReloaderType haproxy_reloader_type() {
  return {
      .config = {.name = "haproxy",
                 .keys = {"admin_socket", "cert", "issuer_file", "ocsp_file"},
                 .parse = [](MapView& m, const config::ReloaderConfig& generic) -> config::SettingsSlot {
                   return parse(m, generic);
                 }},
      .make = [](const config::ReloaderConfig& config,
                 const ReloaderContext& context) -> Result<std::unique_ptr<Reloader>> {
        const auto* settings = config.settings.get_if<HaproxyReloaderConfig>();
        if (!settings) return make_error("haproxy: the entry holds no haproxy settings");
        const auto& s = *settings;
        if (s.admin_socket.empty()) return make_error("haproxy: admin_socket must be set");
        if (s.cert.empty()) return make_error("haproxy: cert (the name haproxy lists) must be set");
        if (!valid_haproxy_cert_name(s.cert)) return make_error("haproxy: cert must not contain white space");
        return std::unique_ptr<Reloader>(std::make_unique<HaproxyReloader>(config, s, context));
      },
  };
}

}  // namespace certagent::reloaders
