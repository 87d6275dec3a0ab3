// The one registration list: adding a broker or reloader type is one line here plus its own
// folder (its <type>_config.h declares the config struct and the <type>_..._type() entry).

#include "agent/builtin_plugins.h"

#include "reloaders/envoy_config.h"
#include "reloaders/exec_config.h"
#include "reloaders/haproxy_config.h"
#include "reloaders/nginx_config.h"
#include "reloaders/serving_probe.h"
#include "reloaders/signal_config.h"
#include "reloaders/systemd_config.h"
#include "renewers/acme_config.h"
#include "renewers/cfssl_config.h"
#include "renewers/lemur_config.h"
#include "renewers/local_config.h"

namespace certagent::agent {

namespace {

Plugins make_builtin() {
  Plugins p;
  // In the order config errors list the known types.
  p.renewers = {
      renewers::local_renewer_type(),
      renewers::acme_renewer_type(),
      renewers::cfssl_renewer_type(),
      renewers::lemur_renewer_type(),
  };
  p.reloaders = {
      reloaders::exec_reloader_type(),
      reloaders::signal_reloader_type(),
      reloaders::systemd_reloader_type(),
      reloaders::nginx_reloader_type(),
      reloaders::haproxy_reloader_type(),
      reloaders::envoy_reloader_type(),
  };
  for (const auto& r : p.renewers) p.catalog.brokers.push_back(r.config);
  for (const auto& r : p.reloaders) p.catalog.reloaders.push_back(r.config);
  return p;
}

Result<> check_verify(const config::ReloaderConfig& config) {
  if (!config.verify) return {};
  if (auto hp = reloaders::split_host_port(config.verify->connect); !hp) {
    return make_error("verify.connect: " + hp.error().message);
  }
  if (config.verify->deadline.count() <= 0) return make_error("verify.deadline must be positive");
  if (config.verify->settle.count() < 0) return make_error("verify.settle must not be negative");
  return {};
}

}  // namespace

const renewers::RenewerType* Plugins::renewer(std::string_view type) const {
  for (const auto& r : renewers) {
    if (r.config.name == type) return &r;
  }
  return nullptr;
}

const reloaders::ReloaderType* Plugins::reloader(std::string_view type) const {
  for (const auto& r : reloaders) {
    if (r.config.name == type) return &r;
  }
  return nullptr;
}

const Plugins& builtin_plugins() {
  static const Plugins plugins = make_builtin();
  return plugins;
}

const config::Catalog& builtin_catalog() { return builtin_plugins().catalog; }

Result<std::unique_ptr<renewers::Renewer>> make_renewer(const config::BrokerConfig& broker,
                                                        const renewers::RenewerContext& context) {
  const auto* type = builtin_plugins().renewer(broker.type);
  if (!type) {
    Error e = make_error("broker " + broker.name + ": renewer type " + broker.type + " not built yet");
    e.configuration = true;
    return e;
  }
  return type->make(broker, context);
}

Result<std::unique_ptr<reloaders::Reloader>> make_reloader(const config::ReloaderConfig& config,
                                                           const reloaders::ReloaderContext& context) {
  if (config.timeout.count() <= 0) return make_error("reloader timeout must be positive");
  if (auto r = check_verify(config); !r) return r.error();
  const auto* type = builtin_plugins().reloader(config.type);
  if (!type) return make_error("reloader type " + config.type + " is not registered");
  return type->make(config, context);
}

std::vector<renewers::SealedSecret> sealed_secrets(const config::Config& config) {
  std::vector<renewers::SealedSecret> out;
  for (const auto& [name, broker] : config.brokers) {
    const auto* type = builtin_plugins().renewer(broker.type);
    if (!type || !type->secrets) continue;
    auto secrets = type->secrets(broker);
    out.insert(out.end(), std::make_move_iterator(secrets.begin()), std::make_move_iterator(secrets.end()));
  }
  for (std::size_t i = 0; i < config.certificates.size(); ++i) {
    const auto& cert = config.certificates[i];
    if (!cert.files || !cert.files->pkcs12 || !cert.files->pkcs12->sealed) continue;
    out.push_back({config::pkcs12_password_secret(cert.name), cert.files->pkcs12->password_file,
                   renewers::SealedSecret::Format::text,
                   "certificates[" + std::to_string(i) + "].files.pkcs12.password_file"});
  }
  return out;
}

}  // namespace certagent::agent
