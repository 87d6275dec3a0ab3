#include "renewers/cfssl_config.h"

#include "core/config/config_writer.h"
#include "core/config/config_yaml.h"
#include "renewers/cfssl_renewer.h"

namespace certagent::renewers {

namespace {

CfsslRenewerConfig parse(config::MapView& m) {
  CfsslRenewerConfig out;
  config::YamlReader& r = m.reader();
  constexpr std::string_view kUrl = "an http(s) URL like https://multirootca.internal:8888";
  if (auto f = m.require("url", kUrl)) {
    if (auto s = r.string(*f, kUrl)) {
      if (config::valid_url(*s, false)) out.url = *s;
      else r.fail(*f, "got " + config::describe(f->value), kUrl);
    }
  }
  m.opt_path("ca_bundle", out.ca_bundle);
  m.req_path("auth_key_file", out.auth_key_file);
  m.opt_string("profile", out.profile);
  m.opt_string("label", out.label);
  return out;
}

}  // namespace

void CfsslRenewerConfig::dump(config::ConfigWriter& w) const {
  w.str("url", url);
  w.path("ca_bundle", ca_bundle);
  w.path("auth_key_file", auth_key_file);
  w.str("profile", profile);
  w.str("label", label);
}

RenewerType cfssl_renewer_type() {
  return {
      .config = {.name = "cfssl",
                 .keys = {"url", "ca_bundle", "auth_key_file", "profile", "label"},
                 .parse = [](config::MapView& m) -> config::SettingsSlot { return parse(m); }},
      .make = [](const config::BrokerConfig& broker,
                 const RenewerContext& context) -> Result<std::unique_ptr<Renewer>> {
        auto r = CfsslRenewer::create(broker, context);
        if (!r) return r.error();  // already names the broker
        return std::unique_ptr<Renewer>(std::move(*r));
      },
      .secrets = [](const config::BrokerConfig& broker) {
        std::vector<SealedSecret> out;
        const auto* cfssl = broker.settings.get_if<CfsslRenewerConfig>();
        if (cfssl && !cfssl->auth_key_file.empty())
          out.push_back({cfssl_auth_key_name(broker.name), cfssl->auth_key_file, SealedSecret::Format::hmac_hex,
                         "brokers." + broker.name + ".auth_key_file"});
        return out;
      },
  };
}

}  // namespace certagent::renewers
