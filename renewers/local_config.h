#pragma once
// The `local` broker (embedded development CA, local_renewer.h) has no keys of its own.

#include "renewers/renewer.h"

namespace certagent::config {
class ConfigWriter;
}

namespace certagent::renewers {

struct LocalRenewerConfig {
  void dump(config::ConfigWriter&) const {}
  bool operator==(const LocalRenewerConfig&) const = default;
};

// type: local (registered in agent/builtin_plugins.cpp).
RenewerType local_renewer_type();

}  // namespace certagent::renewers
