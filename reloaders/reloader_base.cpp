#include "reloaders/reloader_base.h"

#include "core/logging.h"

namespace certagent::reloaders {

std::string_view to_string(ReloadResult r) {
  switch (r) {
    case ReloadResult::success: return "success";
    case ReloadResult::failure: return "failure";
    case ReloadResult::unverified: return "unverified";
    case ReloadResult::timeout: return "timeout";
  }
  return "failure";
}
namespace asio = boost::asio;

ReloaderBase::ReloaderBase(std::string type, const config::ReloaderConfig& config,
                           const ReloaderContext& context)
    : type_(std::move(type)),
      config_(config),
      executor_(context.executor),
      logger_(log::get("reloader." + type_)) {}

asio::awaitable<ReloadOutcome> ReloaderBase::reload(const ReloadEvent& event) {
  const auto start = std::chrono::steady_clock::now();
  const Deadline deadline = start + config_.timeout;
  ReloadOutcome outcome;
  last_probe_.reset();
  try {
    if (!event.material) {
      outcome = {ReloadResult::failure, "no material in the reload event"};
    } else {
      outcome = co_await run(event, deadline);
    }
  } catch (const std::exception& e) {
    outcome = {ReloadResult::failure, std::string("internal error: ") + e.what()};
  }
  const auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - start);
  const auto serial = event.material ? event.material->serial_hex : std::string();
  if (outcome.result == ReloadResult::success) {
    logger_->info("event=reload cert={} serial={} result={} elapsed_ms={} detail={}", event.cert_name, serial,
                  to_string(outcome.result), elapsed.count(), log::quote(outcome.detail));
  } else {
    logger_->warn("event=reload cert={} serial={} result={} elapsed_ms={} detail={}", event.cert_name, serial,
                  to_string(outcome.result), elapsed.count(), log::quote(outcome.detail));
  }
  co_return outcome;
}

asio::awaitable<ReloadOutcome> ReloaderBase::run(const ReloadEvent& event, Deadline deadline) {
  auto outcome = co_await apply(event, deadline);
  if (outcome.result == ReloadResult::success && config_.verify) {
    if (event.expired) {
      outcome.detail += "; not verified (expiry hook)";
    } else {
      outcome = co_await verify(event, deadline, std::move(outcome));
    }
  }
  co_return outcome;
}

asio::awaitable<ProbeReport> ReloaderBase::probe(const ReloadEvent& event, Deadline deadline,
                                                 std::function<std::optional<std::string>()> abort_check) {
  const auto& v = *config_.verify;
  ProbeOptions options;
  options.connect = v.connect;
  options.server_name = v.server_name;
  options.protocol = v.protocol;
  options.settle = v.settle;
  options.deadline = v.deadline;
  if (!probe_context_) {
    if (auto ctx = make_probe_context()) probe_context_ = *ctx;
  }
  options.context = probe_context_;
  auto report = co_await probe_serving(options, event.material->serial_hex, deadline, std::move(abort_check));
  last_probe_ = report;
  co_return report;
}

asio::awaitable<ReloadOutcome> ReloaderBase::verify(const ReloadEvent& event, Deadline deadline,
                                                    ReloadOutcome applied) {
  auto report = co_await probe(event, deadline);
  applied.detail += "; " + report.describe();
  if (!report.verified) applied.result = ReloadResult::unverified;
  co_return applied;
}

}  // namespace certagent::reloaders
