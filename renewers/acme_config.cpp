#include "renewers/acme_config.h"

#include "core/config/config_writer.h"
#include "core/config/config_yaml.h"
#include "renewers/acme_renewer.h"

namespace certagent::renewers {

namespace {

using config::describe;
using config::Field;
using config::MapView;

AcmeRenewerConfig parse(MapView& m) {
  AcmeRenewerConfig out;
  config::YamlReader& r = m.reader();
  constexpr std::string_view kDir = "the https URL of the ACME directory";
  if (auto f = m.require("directory", kDir)) {
    if (auto s = r.string(*f, kDir)) {
      if (config::valid_url(*s, true)) out.directory = *s;
      else r.fail(*f, "got " + describe(f->value), kDir);
    }
  }
  m.opt_path("ca_bundle", out.ca_bundle);
  if (auto f = m.get("eab")) {
    MapView em(r, *f, "a mapping { kid, hmac_key_file }");
    if (em.valid()) {
      em.allow({"kid", "hmac_key_file"});
      std::string kid;
      em.req_string("kid", "the key id the CA gave for external account binding", kid);
      out.eab_kid = kid;
      em.req_path("hmac_key_file", out.eab_hmac_key_file);
    }
  }
  if (auto f = m.get("challenge")) {
    MapView cm(r, *f, "a mapping { type, listen, hook }");
    if (cm.valid()) {
      cm.allow({"type", "listen", "hook"});
      cm.opt("type", [&](const Field& x) { return r.one_of(x, {"http-01", "dns-01"}, "challenge type"); },
             [&](std::string v) { out.challenge.type = std::move(v); });
      if (auto l = cm.get("listen")) {
        if (auto s = r.string(*l, config::kHostPortExpected)) {
          if (config::valid_host_port(*s, false)) out.challenge.listen = *s;
          else r.fail(*l, "got " + describe(l->value), "host:port like 0.0.0.0:80");
        }
      }
      if (auto h = cm.get("hook")) {
        if (auto v = r.string_list(*h, config::kArgvExpected)) {
          if (!v->empty() && out.challenge.type != "dns-01") {
            r.fail(*h, "a hook with challenge type " + out.challenge.type, "a hook only with type dns-01");
          }
          out.challenge.hook = std::move(*v);
        }
      }
      if (out.challenge.type == "dns-01" && out.challenge.hook.empty()) {
        r.fail(cm.self(), "challenge type dns-01 without a hook",
               "hook: [argv] that publishes the TXT record (called with present|cleanup <fqdn> <value>)");
      }
    }
  }
  m.opt_string("preferred_chain", out.preferred_chain);
  if (auto f = m.get("contact")) {
    if (auto s = r.string(*f, "a mailto: URL")) {
      if (s->empty() || (s->starts_with("mailto:") && s->size() > 7)) out.contact = *s;
      else r.fail(*f, "got " + describe(f->value), "a mailto: URL like mailto:pki@example.com");
    }
  }
  return out;
}

}  // namespace

void AcmeRenewerConfig::dump(config::ConfigWriter& w) const {
  w.str("directory", directory);
  w.path("ca_bundle", ca_bundle);
  if (eab_kid) {
    w.key("eab");
    w.begin_map();
    w.str("kid", *eab_kid);
    w.path("hmac_key_file", eab_hmac_key_file);
    w.end_map();
  }
  w.key("challenge");
  w.begin_map();
  w.str("type", challenge.type);
  w.str("listen", challenge.listen);
  w.strings("hook", challenge.hook);
  w.end_map();
  w.str("preferred_chain", preferred_chain);
  w.str("contact", contact);
}

RenewerType acme_renewer_type() {
  return {
      .config = {.name = "acme",
                 .keys = {"directory", "ca_bundle", "eab", "challenge", "preferred_chain", "contact"},
                 .parse = [](MapView& m) -> config::SettingsSlot { return parse(m); }},
      .make = [](const config::BrokerConfig& broker,
                 const RenewerContext& context) -> Result<std::unique_ptr<Renewer>> {
        auto r = AcmeRenewer::create(broker, context);
        if (!r) return r.error();  // already names the broker
        return std::unique_ptr<Renewer>(std::move(*r));
      },
      .secrets = [](const config::BrokerConfig& broker) {
        std::vector<SealedSecret> out;
        const auto* acme = broker.settings.get_if<AcmeRenewerConfig>();
        if (acme && !acme->eab_hmac_key_file.empty())
          out.push_back({acme_eab_key_name(broker.name), acme->eab_hmac_key_file,
                         SealedSecret::Format::hmac_base64url, "brokers." + broker.name + ".eab.hmac_key_file"});
        return out;
      },
  };
}

}  // namespace certagent::renewers
