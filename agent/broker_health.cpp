#include "agent/broker_health.h"

#include "core/logging.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <tuple>

namespace certagent {
namespace {

namespace asio = boost::asio;

std::shared_ptr<spdlog::logger> logger() { return log::get("agent"); }

// Refusals a passing probe proves fixed: the probe got through TLS and found the server.
bool probe_clears(const std::string& reason) {
  return reason == "tls_trust" || reason == "tls_hostname" || reason == "ca_bundle" || reason == "url";
}

}  // namespace

BrokerHealth::BrokerHealth(asio::any_io_executor executor, const Clock& clock, Metrics& metrics,
                           CertificateStore& store, std::string name, std::string type,
                           renewers::Renewer& renewer, std::shared_ptr<const void> owner,
                           std::function<void()> changed, Schedule schedule)
    : executor_(executor),
      clock_(clock),
      metrics_(metrics),
      store_(store),
      renewer_(renewer),
      owner_(std::move(owner)),
      changed_(std::move(changed)),
      schedule_(schedule),
      timer_(executor),
      rng_(std::random_device{}()) {
  status_.name = std::move(name);
  status_.type = std::move(type);
}

void BrokerHealth::start() {
  publish();
  asio::co_spawn(executor_, run(), asio::detached);
}

void BrokerHealth::stop() {
  stopping_ = true;
  timer_.cancel();
}

void BrokerHealth::forget() {
  stop();
  const Metrics::Labels broker{{"broker", status_.name}};
  metrics_.remove(metric::kBrokerUp, broker);
  if (!published_accepts_key_.empty())
    metrics_.remove(metric::kBrokerAccepts,
                    {{"broker", status_.name}, {"cause", published_cause_}, {"reason", published_reason_}});
  published_accepts_key_.clear();
  store_.remove_broker(status_.name);
}

std::chrono::milliseconds BrokerHealth::next_interval() {
  const auto base = failing() ? schedule_.failing : schedule_.healthy;
  std::uniform_real_distribution<double> u(1.0 - schedule_.jitter, 1.0 + schedule_.jitter);
  return std::chrono::milliseconds(static_cast<std::int64_t>(static_cast<double>(base.count()) * u(rng_)));
}

bool BrokerHealth::failing() const {
  return status_.up != true || status_.accepts == false || last_issue_failed_;
}

asio::awaitable<void> BrokerHealth::run() {
  auto self = shared_from_this();
  using Steady = std::chrono::steady_clock;
  while (!stopping_) {
    probe_soon_ = false;
    reschedule_ = false;
    auto result = co_await renewer_.probe();
    if (stopping_) break;
    ++probes_;
    last_probe_steady_ = Steady::now();
    status_.last_probe = clock_.now();
    apply_probe(result);
    auto due = *last_probe_steady_ + next_interval();
    auto set_due = [&](Steady::time_point at) {
      due = at;
      status_.next_probe = clock_.now() + std::chrono::duration_cast<SystemTime::duration>(at - Steady::now());
      publish();
    };
    set_due(due);
    // Wait for the next probe. Woken early: a failed issuance asks for a probe now (never
    // sooner than min_gap after the last), or something started failing, which brings the
    // next probe forward to the failing interval.
    while (!stopping_) {
      timer_.expires_at(due);
      boost::system::error_code ec;
      std::tie(ec) = co_await timer_.async_wait(asio::as_tuple(asio::use_awaitable));
      if (!ec || stopping_) break;
      if (probe_soon_) {
        const auto earliest = *last_probe_steady_ + schedule_.min_gap;
        if (Steady::now() >= earliest) break;
        if (earliest < due) set_due(earliest);
        probe_soon_ = false;
      }
      if (reschedule_) {
        reschedule_ = false;
        set_due(*last_probe_steady_ + next_interval());
      }
    }
  }
}

void BrokerHealth::record_issue(const Error* error) {
  if (stopping_) return;
  const bool was_failing = failing();
  // The next probe follows the state: the failing interval once something fails, the healthy
  // one again once it works.
  struct Reschedule {
    BrokerHealth& self;
    bool was;
    ~Reschedule() {
      if (self.failing() == was) return;
      self.reschedule_ = true;
      self.timer_.cancel();
    }
  } reschedule{*this, was_failing};
  if (!error) {
    last_issue_failed_ = false;
    status_.up = true;
    status_.down_detail.clear();
    status_.accepts = true;
    status_.cause = Cause::unspecified;
    status_.reason.clear();
    status_.detail.clear();
    verdict_from_probe_ = false;
    publish();
    return;
  }
  last_issue_failed_ = true;
  switch (error->cause) {
    case Cause::refused:
      status_.up = true;
      status_.down_detail.clear();
      refuse(*error);
      verdict_from_probe_ = false;
      break;
    case Cause::local_config:
      refuse(*error);
      verdict_from_probe_ = false;
      break;
    case Cause::unreachable:
    case Cause::unspecified:
      // Known down already (the last probe failed): the failing schedule probes again; asking
      // now would only probe a dead broker every min_gap.
      if (status_.up == false) break;
      // Down, or a passing fault? The probe tells.
      probe_soon_ = true;
      timer_.cancel();
      break;
  }
  publish();
}

void BrokerHealth::refuse(const Error& error) {
  status_.accepts = false;
  status_.cause = error.cause == Cause::local_config ? Cause::local_config : Cause::refused;
  status_.reason = error.reason.empty() ? std::string(error.configuration ? "configuration" : "request") : error.reason;
  status_.detail = error.message;
}

void BrokerHealth::apply_probe(const Result<>& result) {
  if (result) {
    status_.up = true;
    status_.down_detail.clear();
    if (status_.accepts == false && (verdict_from_probe_ || probe_clears(status_.reason))) {
      status_.accepts.reset();  // the next issuance tells
      status_.reason.clear();
      status_.detail.clear();
      verdict_from_probe_ = false;
    }
    return;
  }
  const Error& e = result.error();
  if (e.cause == Cause::refused || e.cause == Cause::local_config) {
    // It answered (we could not trust it, or it said no to our settings): up, not accepting.
    if (e.reason != "ca_bundle") {
      status_.up = true;
      status_.down_detail.clear();
    }
    refuse(e);
    verdict_from_probe_ = true;
    return;
  }
  status_.up = false;
  status_.down_detail = e.message;
}

void BrokerHealth::publish() {
  const Metrics::Labels broker{{"broker", status_.name}};
  if (status_.up) metrics_.set(metric::kBrokerUp, broker, *status_.up ? 1 : 0);
  std::string cause, reason;
  if (status_.accepts == false) {
    cause = std::string(to_string(status_.cause));
    reason = status_.reason;
  }
  const std::string key = status_.accepts ? cause + "/" + reason : std::string();
  if (!published_accepts_key_.empty() && published_accepts_key_ != key)
    metrics_.remove(metric::kBrokerAccepts,
                    {{"broker", status_.name}, {"cause", published_cause_}, {"reason", published_reason_}});
  if (status_.accepts)
    metrics_.set(metric::kBrokerAccepts, {{"broker", status_.name}, {"cause", cause}, {"reason", reason}},
                 *status_.accepts ? 1 : 0);
  published_accepts_key_ = key;
  published_cause_ = cause;
  published_reason_ = reason;

  // One log line per change of what operators are told.
  const std::string said = (status_.up ? (*status_.up ? "up" : "down") : "unknown") + std::string("/") +
                           (status_.accepts ? (*status_.accepts ? "accepts" : cause + ":" + reason) : "unknown");
  if (said != last_said_) {
    if (status_.up == false)
      logger()->warn("event=broker_down broker={} type={} error={}", status_.name, status_.type,
                     log::quote(status_.down_detail));
    if (status_.accepts == false)
      logger()->warn("event={} broker={} type={} reason={} error={}",
                     status_.cause == Cause::local_config ? "broker_configuration_broken" : "broker_refuses_us",
                     status_.name, status_.type, reason, log::quote(status_.detail));
    if (status_.up == true && status_.accepts != false && !last_said_.empty() &&
        last_said_.rfind("up/accepts", 0) != 0)
      logger()->info("event=broker_ok broker={} type={} accepts={}", status_.name, status_.type,
                     status_.accepts ? "yes" : "unknown");
    last_said_ = said;
  }
  store_.set_broker(status_);
  if (changed_) changed_();
}

}  // namespace certagent
