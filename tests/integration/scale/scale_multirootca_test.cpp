// One real daemon with 1,000 certificates against a real multirootca (HMAC-authenticated
// `authsign` over TLS, max_in_flight: 8), profile "brief": 20-80 s left at issuance. Asserts
// every certificate valid, every one rotated, none ever expired, and the broker's in-flight
// high-water mark within max_in_flight and above 1 (the bound was exercised, not idle).
//
// Timing: cfssl's not_before is round(now, 1 min) - 30 s and its leaves live 80 s, so what is
// left at issuance depends on the second of the minute: 80 s just after :30, 20 s just before.
// The daemon starts between :30 and :33, so the start-up storm gets 50-80 s leaves; renew_at
// 0.5 (the renew point of a fresh leaf counts from its arrival) then renews each with >= 22 s
// left, time enough for the 1,000-renewal storm the bound has to carry without an expiry.

#include "tests/support/multirootca.h"
#include "tests/integration/scale/scale_support.h"

#include <gtest/gtest.h>

#include <thread>

namespace certagent::test {
namespace {

constexpr int kCertificates = 1000;
constexpr int kWithFiles = 20;
constexpr int kMaxInFlight = 8;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

TEST(ScaleMultirootca, ThousandCertificatesAllValidAndRotated) {
  ScaleDaemon d;
  Multirootca ca(d.dir / "cfssl");
  std::ostringstream broker;
  broker << "  ca:\n"
         << "    type: cfssl\n"
         << "    url: " << ca.url() << "\n"
         << "    ca_bundle: " << ca.tls_ca_file().string() << "\n"
         << "    auth_key_file: " << ca.auth_key_file().string() << "\n"
         << "    profile: brief\n"
         << "    label: primary\n"
         << "    max_in_flight: " << kMaxInFlight << "\n";
  d.write_config(broker.str(),
                 "{ lifetime: 80s, max_lifetime: 5m, renew_at: 0.5, jitter: 0.1, trust_bundle: " +
                     ca.ca_file().string() + " }",
                 kCertificates, kWithFiles);
  // What first boot does: create the identity and import the cfssl auth key into it.
  const auto enrolled = run({certagent_binary().string(), "enroll", "--config", (d.dir / "agent.yaml").string()},
                            30s);
  ASSERT_EQ(enrolled.exit_code, 0) << enrolled.out << enrolled.err;
  // Start at :30-:33 of a minute (see the top): a scenario setting, not an assertion.
  const auto now = std::chrono::system_clock::now();
  const auto into_minute = now - std::chrono::floor<std::chrono::minutes>(now);
  if (into_minute < 30s || into_minute >= 33s)
    std::this_thread::sleep_for((90s - into_minute) % 60s);
  const auto t0 = std::chrono::steady_clock::now();
  d.start();

  std::map<std::string, double> issued;
  ASSERT_TRUE(wait_until(
      [&] {
        if (!d.process->running()) return true;  // reported below
        issued = by_name(d.metrics(), "certagent_renewals_total", "result=\"success\"");
        return count_at_least(issued, 1) == kCertificates;
      },
      60s, 200ms) && d.process->running())
      << count_at_least(issued, 1) << " of " << kCertificates << " issued\n"
      << read_file(d.log_path()).substr(0, 4000);
  const double all_valid_s = seconds_since(t0);
  std::printf("scale/multirootca: %d certificates, start to all-valid %.2f s (nproc %ld)\n",
              kCertificates, all_valid_s, sysconf(_SC_NPROCESSORS_ONLN));

  // Every one renews 22-44 s after it arrived.
  double first_rotation_s = -1;
  ASSERT_TRUE(wait_until(
      [&] {
        issued = by_name(d.metrics(), "certagent_renewals_total", "result=\"success\"");
        const int rotated = count_at_least(issued, 2);
        if (rotated > 0 && first_rotation_s < 0) first_rotation_s = seconds_since(t0);
        return rotated == kCertificates;
      },
      90s, 200ms))
      << count_at_least(issued, 2) << " of " << kCertificates << " rotated\n"
      << read_file(d.log_path()).substr(0, 4000);
  const double all_rotated_s = seconds_since(t0);
  std::printf("scale/multirootca: first rotation seen at %.1f s, all %d rotated at %.1f s "
              "(%d renewals within %.1f s)\n",
              first_rotation_s, kCertificates, all_rotated_s, kCertificates,
              all_rotated_s - first_rotation_s + 0.2);

  const std::string text = d.metrics();
  const auto expired = by_name(text, "certagent_certificate_expired");
  EXPECT_EQ(static_cast<int>(expired.size()), kCertificates);
  for (const auto& [name, v] : expired) EXPECT_EQ(v, 0) << name << " expired";
  // Not only now: no certificate expired at any moment (the daemon logs each expiry).
  EXPECT_EQ(count_in_file(d.log_path(), "event=certificate_expired"), 0);
  // No renewal loop: a renew point already past on arrival would renew again and again.
  const auto successes = by_name(text, "certagent_renewals_total", "result=\"success\"");
  double total = 0;
  for (const auto& [name, v] : successes) {
    total += v;
    EXPECT_LE(v, 4) << name << " renewed again and again";
  }
  std::printf("scale/multirootca: %.0f certificates issued in all\n", total);
  const auto failures = by_name(text, "certagent_renewals_total", "result=\"failure\"");
  double failed = 0;
  for (const auto& [name, v] : failures) failed += v;
  const double high_water = series_value(text, "certagent_broker_requests_in_flight_max{broker=\"ca\"}");
  std::printf("scale/multirootca: broker requests in flight high-water %.0f (max_in_flight %d), "
              "failed attempts %.0f\n",
              high_water, kMaxInFlight, failed);
  EXPECT_LE(high_water, kMaxInFlight);
  EXPECT_GE(high_water, 2) << "requests never overlapped: the bound was not exercised";
  const pid_t pid = d.process->pid();
  std::printf("scale/multirootca: VmRSS %ld KiB, RssAnon %ld KiB\n", status_kb(pid, "VmRSS"),
              status_kb(pid, "RssAnon"));
  EXPECT_TRUE(d.process->running()) << read_file(d.log_path()).substr(0, 4000);
}

}  // namespace
}  // namespace certagent::test
