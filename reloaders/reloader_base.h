#pragma once
// What every built-in reloader shares: the whole-operation deadline (config.timeout), the
// optional verification by fresh handshakes after a successful action, exception containment,
// and one log line per reload on "reloader.<type>".

#include "reloaders/reloader.h"
#include "reloaders/serving_probe.h"

#include <spdlog/logger.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace certagent::reloaders {

using Deadline = std::chrono::steady_clock::time_point;

inline std::chrono::milliseconds time_left(Deadline deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
  return left.count() > 0 ? left : std::chrono::milliseconds(0);
}

class ReloaderBase : public Reloader {
 public:
  std::string_view type() const override { return type_; }
  boost::asio::awaitable<ReloadOutcome> reload(const ReloadEvent& event) final;
  // The last verification's report (tests and the benchmark read its timings).
  const std::optional<ProbeReport>& last_probe() const { return last_probe_; }

 protected:
  ReloaderBase(std::string type, const config::ReloaderConfig& config, const ReloaderContext& context);

  // apply() then, when it succeeded and `verify` is set, verify(). Reloaders that serialize
  // override it to hold their locks around both.
  virtual boost::asio::awaitable<ReloadOutcome> run(const ReloadEvent& event, Deadline deadline);
  // The reloader's own action.
  virtual boost::asio::awaitable<ReloadOutcome> apply(const ReloadEvent& event, Deadline deadline) = 0;
  // Probes for the new serial; nginx overrides it to watch its error log meanwhile.
  virtual boost::asio::awaitable<ReloadOutcome> verify(const ReloadEvent& event, Deadline deadline,
                                                       ReloadOutcome applied);
  boost::asio::awaitable<ProbeReport> probe(const ReloadEvent& event, Deadline deadline,
                                            std::function<std::optional<std::string>()> abort_check = {});

  std::string type_;
  config::ReloaderConfig config_;
  boost::asio::any_io_executor executor_;
  std::shared_ptr<spdlog::logger> logger_;
  std::optional<ProbeReport> last_probe_;
  std::shared_ptr<boost::asio::ssl::context> probe_context_;  // made on first use
};

}  // namespace certagent::reloaders
