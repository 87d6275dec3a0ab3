#pragma once
// The fail-closed scenario of the contract, run against a real broker: the daemon holds a
// certificate, the broker is killed for longer than the certificate lives, then comes back.

#include "tests/support/daemon_fixture.h"

#include <functional>
#include <string>

namespace certagent::test {

struct BrokerOutage {
  std::string broker;                 // the broker's name in the config (metric label)
  std::string certificate{"web"};
  std::function<void()> kill;         // stops the broker process
  std::function<void()> revive;       // starts it again (and fixes trust if the CA changed)
};

// Asserts, in order: a first certificate from the broker; with the broker down the files stay,
// retries follow the contracted backoff (never sooner than announced, never a stall), the
// certificate expires and the daemon says so everywhere (metric, /readyz, socket 503, status);
// after the broker returns, a new certificate within one backoff step (<= 30 s once expired),
// without a restart, and every signal back to healthy.
void run_broker_outage(DaemonFixture& d, const BrokerOutage& outage);

}  // namespace certagent::test
