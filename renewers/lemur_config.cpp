#include "renewers/lemur_config.h"

#include "core/config/config_writer.h"
#include "core/config/config_yaml.h"
#include "renewers/lemur_renewer.h"

namespace certagent::renewers {

namespace {

LemurRenewerConfig parse(config::MapView& m) {
  LemurRenewerConfig out;
  config::YamlReader& r = m.reader();
  constexpr std::string_view kUrl = "an http(s) URL like https://lemur.internal";
  if (auto f = m.require("url", kUrl)) {
    if (auto s = r.string(*f, kUrl)) {
      if (config::valid_url(*s, false)) out.url = *s;
      else r.fail(*f, "got " + config::describe(f->value), kUrl);
    }
  }
  m.req_path("token_file", out.token_file);
  m.req_string("authority", "the name of a Lemur authority", out.authority);
  m.req_string("owner", "the owner's email address", out.owner);
  m.opt_path("ca_bundle", out.ca_bundle);
  m.opt_string("description", out.description);
  m.opt_strings("destinations", "a list of names", out.destinations);
  m.opt_strings("notifications", "a list of names", out.notifications);
  m.opt_strings("roles", "a list of names", out.roles);
  return out;
}

}  // namespace

void LemurRenewerConfig::dump(config::ConfigWriter& w) const {
  w.str("url", url);
  w.path("ca_bundle", ca_bundle);
  w.path("token_file", token_file);
  w.str("authority", authority);
  w.str("owner", owner);
  w.str("description", description);
  w.strings("destinations", destinations);
  w.strings("notifications", notifications);
  w.strings("roles", roles);
}

RenewerType lemur_renewer_type() {
  return {
      .config = {.name = "lemur",
                 .keys = {"url", "token_file", "authority", "owner", "ca_bundle", "description", "destinations",
                          "notifications", "roles"},
                 .parse = [](config::MapView& m) -> config::SettingsSlot { return parse(m); }},
      .make = [](const config::BrokerConfig& broker,
                 const RenewerContext& context) -> Result<std::unique_ptr<Renewer>> {
        auto r = LemurRenewer::create(broker, context);
        if (!r) return r.error();  // already names the broker
        return std::unique_ptr<Renewer>(std::move(*r));
      },
      .secrets = [](const config::BrokerConfig& broker) {
        std::vector<SealedSecret> out;
        const auto* lemur = broker.settings.get_if<LemurRenewerConfig>();
        if (lemur && !lemur->token_file.empty())
          out.push_back({lemur_token_name(broker.name), lemur->token_file, SealedSecret::Format::text,
                         "brokers." + broker.name + ".token_file"});
        return out;
      },
  };
}

}  // namespace certagent::renewers
