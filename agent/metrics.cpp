#include "agent/metrics.h"

#include <charconv>
#include <cmath>
#include <cstdio>

namespace certagent {
namespace {

std::string format_value(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.0f", v);
    return buf;
  }
  // Shortest text that reads back as the same double: epoch seconds keep every digit
  // ("%g" made 1796520000.25 into 1.79652e+09, 480 s off).
  char buf[32];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  return ec == std::errc{} ? std::string(buf, end) : std::string("NaN");
}

std::string escape_label(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\' || c == '"') out.push_back('\\');
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out.push_back(c);
  }
  return out;
}

const char* type_name(Metrics::Type t) {
  switch (t) {
    case Metrics::Type::gauge: return "gauge";
    case Metrics::Type::counter: return "counter";
    case Metrics::Type::histogram: return "histogram";
  }
  return "untyped";
}

// Joins a rendered label set ("a=\"1\",b=\"2\"") with one more label.
std::string with_label(const std::string& key, const std::string& extra) {
  return key.empty() ? extra : key + "," + extra;
}

}  // namespace

Metrics::Metrics()
    : buckets_{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60} {
  using namespace metric;
  declare(kNotAfter, Type::gauge, "Expiry of the certificate currently held, Unix time.");
  declare(kExpired, Type::gauge, "1 when the certificate held has expired (fail-closed), else 0.");
  declare(kNotYetValid, Type::gauge,
          "1 when the certificate held is not valid yet (its not_before is ahead of this host's clock), else 0.");
  declare(kRenewals, Type::counter, "Renewal attempts by result (success, failure, rejected, clock_skew).");
  declare(kRenewalDuration, Type::histogram, "Time from key generation to commit, seconds.");
  declare(kNextRenewal, Type::gauge, "When the next renewal attempt is due, Unix time.");
  declare(kConsecutiveFailures, Type::gauge, "Failed renewal attempts since the last success.");
  declare(kReloads, Type::counter, "Reloader runs by result (success, failure, unverified, timeout).");
  declare(kBrokerUp, Type::gauge,
          "1 when the broker answers (its health probe, or an issuance), 0 when it does not (agent/broker_health).");
  declare(kBrokerAccepts, Type::gauge,
          "1 when the broker accepted our last request; 0 when it refuses us (cause=\"refused\": credentials, "
          "account, authority, profile) or our own configuration for it is broken (cause=\"local_config\": "
          "ca_bundle, url, a secret not sealed); the reason label says which.");
  declare(kClockSkew, Type::gauge,
          "How far the broker's clock is ahead of this host's, seconds, as its last certificate showed "
          "(0 when it agrees).");
  declare(kClockJumps, Type::counter, "Wall-clock steps of a second or more (and resumes) seen.");
  declare(kBrokerInFlight, Type::gauge,
          "Issuances holding one of the broker's max_in_flight slots now (fresh key to the broker's answer).");
  declare(kBrokerInFlightMax, Type::gauge,
          "Most issuances holding a slot of the broker at once since it was configured.");
  declare(kSocketWatchers, Type::gauge, "Open watch streams on the Unix socket.");
  declare(kSocketConnections, Type::gauge, "Open connections on the Unix socket.");
  declare(kSocketRejected, Type::counter, "Socket requests rejected by reason.");
}

void Metrics::declare(std::string_view name, Type type, std::string_view help) {
  std::lock_guard lock(mutex_);
  auto& f = families_[std::string(name)];
  f.type = type;
  f.help = help;
}

std::string Metrics::label_key(const Labels& labels) {
  std::string key;
  for (const auto& [k, v] : labels) {
    if (!key.empty()) key.push_back(',');
    key += k + "=\"" + escape_label(v) + "\"";
  }
  return key;
}

void Metrics::set(std::string_view name, const Labels& labels, double value) {
  std::lock_guard lock(mutex_);
  families_[std::string(name)].values[label_key(labels)] = value;
}

void Metrics::add(std::string_view name, const Labels& labels, double value) {
  std::lock_guard lock(mutex_);
  families_[std::string(name)].values[label_key(labels)] += value;
}

void Metrics::observe(std::string_view name, const Labels& labels, double value) {
  std::lock_guard lock(mutex_);
  auto& h = families_[std::string(name)].histograms[label_key(labels)];
  if (h.counts.empty()) h.counts.assign(buckets_.size() + 1, 0);
  std::size_t i = 0;
  while (i < buckets_.size() && value > buckets_[i]) ++i;
  h.counts[i] += 1;
  h.sum += value;
  h.count += 1;
}

void Metrics::remove(std::string_view name, const Labels& labels) {
  std::lock_guard lock(mutex_);
  auto it = families_.find(name);
  if (it == families_.end()) return;
  it->second.values.erase(label_key(labels));
  it->second.histograms.erase(label_key(labels));
}

double Metrics::value(std::string_view name, const Labels& labels) const {
  std::lock_guard lock(mutex_);
  auto it = families_.find(name);
  if (it == families_.end()) return 0;
  auto v = it->second.values.find(label_key(labels));
  if (v != it->second.values.end()) return v->second;
  auto h = it->second.histograms.find(label_key(labels));
  return h != it->second.histograms.end() ? h->second.count : 0;
}

std::string Metrics::render() const {
  std::lock_guard lock(mutex_);
  std::string out;
  out.reserve(4096);
  for (const auto& [name, f] : families_) {
    if (f.values.empty() && f.histograms.empty()) continue;
    out += "# HELP " + name + " " + f.help + "\n";
    out += "# TYPE " + name + " " + type_name(f.type) + "\n";
    for (const auto& [key, v] : f.values) {
      out += name;
      if (!key.empty()) out += "{" + key + "}";
      out += " " + format_value(v) + "\n";
    }
    for (const auto& [key, h] : f.histograms) {
      double cumulative = 0;
      for (std::size_t i = 0; i < buckets_.size(); ++i) {
        cumulative += h.counts[i];
        out += name + "_bucket{" + with_label(key, "le=\"" + format_value(buckets_[i]) + "\"") +
               "} " + format_value(cumulative) + "\n";
      }
      out += name + "_bucket{" + with_label(key, "le=\"+Inf\"") + "} " + format_value(h.count) + "\n";
      const std::string braces = key.empty() ? "" : "{" + key + "}";
      out += name + "_sum" + braces + " " + format_value(h.sum) + "\n";
      out += name + "_count" + braces + " " + format_value(h.count) + "\n";
    }
  }
  return out;
}

}  // namespace certagent
