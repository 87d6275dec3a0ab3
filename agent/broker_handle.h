#pragma once
// A broker as the certificate loops see it: its client, its concurrency bound and its circuit
// state. Shared by every loop of the broker; used on the daemon's io_context only.

#include "core/async/semaphore.h"
#include "core/config/config.h"
#include "renewers/renewer.h"

#include <boost/asio/any_io_executor.hpp>

#include <filesystem>
#include <memory>

namespace certagent {

struct BrokerHandle {
  // After this many consecutive broker failures (any certificate) the circuit opens: requests
  // go one at a time, so a down broker is probed, not hammered by every certificate at once.
  static constexpr int kOpenAfter = 3;

  BrokerHandle(config::BrokerConfig c, std::unique_ptr<renewers::Renewer> r,
               const boost::asio::any_io_executor& ex)
      : config(std::move(c)),
        renewer(std::move(r)),
        in_flight(ex, config.max_in_flight),
        probe(ex, 1) {}

  bool circuit_open() const { return consecutive_failures >= kOpenAfter; }

  config::BrokerConfig config;
  std::unique_ptr<renewers::Renewer> renewer;
  AsyncSemaphore in_flight;
  AsyncSemaphore probe;
  int consecutive_failures{0};
  std::filesystem::path default_trust_bundle;  // the local CA's root for `local`
  // Replaced or removed by a configuration reload: loops still finishing with it no longer
  // report on the broker's metric series (its successor, if any, owns them).
  bool retired{false};
};

}  // namespace certagent
