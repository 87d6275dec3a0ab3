#pragma once
// What the daemon tells operators about one broker, from the broker itself: "it answers"
// (certagent_broker_up, from Renewer::probe() and from issuances) apart from "it accepts us"
// (certagent_broker_accepts{cause,reason}, from the causes of issuance errors, see core/result.h
// Cause). Both go to the store for `certagent status`, GET /v1/certificates and state.json.
//
// Probe schedule, so that it costs the broker nearly nothing: one probe when the broker is
// configured, then one an hour (kHealthy) while all is well, one every two minutes (kFailing)
// while something fails (down, refusing us, our configuration broken, or the last issuance
// failed), each interval jittered by ±10 % so a fleet does not probe in step. An issuance that
// fails for no known cause asks for a probe at once (at most one per kMinGap) to tell "down"
// from "refusing us". An issuance that succeeds counts as a passed probe. A probe is one
// cheap unauthenticated request: ACME's directory, cfssl's info, Lemur's healthcheck.

#include "agent/metrics.h"
#include "agent/store.h"
#include "core/clock.h"
#include "core/result.h"
#include "renewers/renewer.h"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>

namespace certagent {

// When BrokerHealth probes (see above); tests shorten it.
struct BrokerProbeSchedule {
  std::chrono::milliseconds healthy{std::chrono::hours(1)};
  std::chrono::milliseconds failing{std::chrono::minutes(2)};
  std::chrono::milliseconds min_gap{std::chrono::seconds(10)};
  double jitter{0.1};
};

class BrokerHealth : public std::enable_shared_from_this<BrokerHealth> {
 public:
  using Schedule = BrokerProbeSchedule;

  // `renewer` is kept alive by `owner` (the broker's handle). `changed` runs after every change
  // of the status (the agent persists state.json).
  BrokerHealth(boost::asio::any_io_executor executor, const Clock& clock, Metrics& metrics,
               CertificateStore& store, std::string name, std::string type, renewers::Renewer& renewer,
               std::shared_ptr<const void> owner, std::function<void()> changed, Schedule schedule = {});

  void start();  // spawns the probe loop
  void stop();   // ends it; the status and metric series stay
  // stop(), and removes the broker's metric series and store entry (broker removed).
  void forget();

  // An issuance's outcome, from a certificate loop: null for a success.
  void record_issue(const Error* error);

  const BrokerStatus& status() const { return status_; }
  std::uint64_t probes() const { return probes_; }

 private:
  boost::asio::awaitable<void> run();
  void apply_probe(const Result<>& result);
  void refuse(const Error& error);
  void publish();
  bool failing() const;
  std::chrono::milliseconds next_interval();

  boost::asio::any_io_executor executor_;
  const Clock& clock_;
  Metrics& metrics_;
  CertificateStore& store_;
  renewers::Renewer& renewer_;
  std::shared_ptr<const void> owner_;
  std::function<void()> changed_;
  Schedule schedule_;
  boost::asio::steady_timer timer_;
  std::minstd_rand rng_;
  BrokerStatus status_;
  std::string published_accepts_key_;  // cause/reason of the accepts series last set
  std::string published_cause_, published_reason_;
  std::string last_said_;              // up/accepts as last logged
  bool last_issue_failed_{false};
  bool probe_soon_{false};             // a failed issuance asked for a probe
  bool reschedule_{false};             // started failing: bring the next probe forward
  bool verdict_from_probe_{false};     // accepts=false came from a probe (cfssl label, TLS)
  bool stopping_{false};
  std::optional<std::chrono::steady_clock::time_point> last_probe_steady_;
  std::uint64_t probes_{0};
};

}  // namespace certagent
