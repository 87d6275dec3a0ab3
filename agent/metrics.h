#pragma once
// A small Prometheus registry: gauges, counters and histograms with labels, rendered in the
// text exposition format. Metric names are a contract (DESIGN.md); they are declared here once.

#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace certagent {

namespace metric {
inline constexpr const char* kNotAfter = "certagent_certificate_not_after_seconds";
inline constexpr const char* kExpired = "certagent_certificate_expired";
inline constexpr const char* kNotYetValid = "certagent_certificate_not_yet_valid";
inline constexpr const char* kRenewals = "certagent_renewals_total";
inline constexpr const char* kRenewalDuration = "certagent_renewal_duration_seconds";
inline constexpr const char* kNextRenewal = "certagent_next_renewal_seconds";
inline constexpr const char* kConsecutiveFailures = "certagent_consecutive_failures";
inline constexpr const char* kReloads = "certagent_reloads_total";
inline constexpr const char* kBrokerUp = "certagent_broker_up";
inline constexpr const char* kBrokerAccepts = "certagent_broker_accepts";
inline constexpr const char* kClockSkew = "certagent_clock_skew_seconds";
inline constexpr const char* kClockJumps = "certagent_clock_jumps_total";
inline constexpr const char* kBrokerInFlight = "certagent_broker_requests_in_flight";
inline constexpr const char* kBrokerInFlightMax = "certagent_broker_requests_in_flight_max";
inline constexpr const char* kSocketWatchers = "certagent_socket_watchers";
inline constexpr const char* kSocketConnections = "certagent_socket_connections";
inline constexpr const char* kSocketRejected = "certagent_socket_requests_rejected_total";
}  // namespace metric

class Metrics {
 public:
  using Labels = std::vector<std::pair<std::string, std::string>>;
  enum class Type { gauge, counter, histogram };

  Metrics();  // declares the contract metrics with their help texts

  void declare(std::string_view name, Type type, std::string_view help);
  void set(std::string_view name, const Labels& labels, double value);     // gauge
  void add(std::string_view name, const Labels& labels, double value = 1);  // counter
  void observe(std::string_view name, const Labels& labels, double value);  // histogram
  void remove(std::string_view name, const Labels& labels);                 // drop one series
  double value(std::string_view name, const Labels& labels) const;          // for tests; 0 if none

  std::string render() const;  // Prometheus text format 0.0.4

 private:
  struct Histogram {
    std::vector<double> counts;  // per bucket, not cumulative
    double sum{0};
    double count{0};
  };
  struct Family {
    Type type{Type::gauge};
    std::string help;
    std::map<std::string, double> values;        // key: rendered label set
    std::map<std::string, Histogram> histograms;
  };
  static std::string label_key(const Labels& labels);

  mutable std::mutex mutex_;
  std::map<std::string, Family, std::less<>> families_;
  std::vector<double> buckets_;
};

}  // namespace certagent
