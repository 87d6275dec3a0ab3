#include "renewers/local_config.h"

#include "renewers/local_renewer.h"

namespace certagent::renewers {

RenewerType local_renewer_type() {
  return {
      .config = {.name = "local",
                 .keys = {},
                 .parse = [](config::MapView&) -> config::SettingsSlot { return LocalRenewerConfig{}; },
                 // Its own root is the default trust bundle.
                 .needs_trust_bundle = false},
      .make = [](const config::BrokerConfig& broker,
                 const RenewerContext& context) -> Result<std::unique_ptr<Renewer>> {
        auto r = LocalRenewer::open(context);
        if (!r) return with_context("broker " + broker.name, r.error());
        return std::unique_ptr<Renewer>(std::move(*r));
      },
      .secrets = {},
  };
}

}  // namespace certagent::renewers
