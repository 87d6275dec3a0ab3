#include "renewers/local_renewer.h"
#include "renewers/renewer.h"

namespace certagent::renewers {

Result<std::unique_ptr<Renewer>> make_renewer(const config::BrokerConfig& broker,
                                              const RenewerContext& context) {
  if (broker.type == "local") {
    auto r = LocalRenewer::open(context);
    if (!r) return with_context("broker " + broker.name, r.error());
    return std::unique_ptr<Renewer>(std::move(*r));
  }
  Error e = make_error("broker " + broker.name + ": renewer type " + broker.type + " not built yet");
  e.configuration = true;
  return e;
}

std::vector<std::string> known_renewer_types() { return {"local", "acme", "cfssl", "lemur"}; }

}  // namespace certagent::renewers
