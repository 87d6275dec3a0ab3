#include "renewers/acme_renewer.h"
#include "renewers/cfssl_renewer.h"
#include "renewers/lemur_renewer.h"
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
  if (broker.type == "acme") {
    auto r = AcmeRenewer::create(broker, context);
    if (!r) return r.error();  // already names the broker
    return std::unique_ptr<Renewer>(std::move(*r));
  }
  if (broker.type == "cfssl") {
    auto r = CfsslRenewer::create(broker, context);
    if (!r) return r.error();  // already names the broker
    return std::unique_ptr<Renewer>(std::move(*r));
  }
  if (broker.type == "lemur") {
    auto r = LemurRenewer::create(broker, context);
    if (!r) return r.error();  // already names the broker
    return std::unique_ptr<Renewer>(std::move(*r));
  }
  Error e = make_error("broker " + broker.name + ": renewer type " + broker.type + " not built yet");
  e.configuration = true;
  return e;
}

std::vector<std::string> known_renewer_types() { return {"local", "acme", "cfssl", "lemur"}; }

}  // namespace certagent::renewers
