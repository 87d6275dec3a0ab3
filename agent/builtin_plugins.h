#pragma once
// The built-in plug-ins, registered in one place (builtin_plugins.cpp; no static initialisers):
// which broker and reloader types config loading knows, how to make their renewers and
// reloaders, and which secrets `certagent enroll` seals for them.

#include "core/config/config.h"
#include "core/result.h"
#include "reloaders/reloader.h"
#include "renewers/renewer.h"

#include <memory>
#include <vector>

namespace certagent::agent {

struct Plugins {
  std::vector<renewers::RenewerType> renewers;
  std::vector<reloaders::ReloaderType> reloaders;
  config::Catalog catalog;  // the config part of each, for load_config

  const renewers::RenewerType* renewer(std::string_view type) const;
  const reloaders::ReloaderType* reloader(std::string_view type) const;
};

const Plugins& builtin_plugins();
// builtin_plugins().catalog: what load_config needs.
const config::Catalog& builtin_catalog();

// The renewer for a broker entry of a registered type. Errors name the broker.
[[nodiscard]] Result<std::unique_ptr<renewers::Renewer>> make_renewer(const config::BrokerConfig& broker,
                                                                      const renewers::RenewerContext& context);
// The reloader for a reload/on_expiry entry of a registered type, after checking its generic
// part (timeout, verify).
[[nodiscard]] Result<std::unique_ptr<reloaders::Reloader>> make_reloader(const config::ReloaderConfig& config,
                                                                         const reloaders::ReloaderContext& context);
// The secrets `certagent enroll` seals: the config's brokers', in broker name order, then the
// certificates' sealed keystore passwords (files.pkcs12.sealed), in config order.
std::vector<renewers::SealedSecret> sealed_secrets(const config::Config& config);

}  // namespace certagent::agent
