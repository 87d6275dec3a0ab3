// One real daemon with 1,000 certificates against a real multirootca (HMAC-authenticated
// `authsign` over TLS, max_in_flight: 8), profile "brief": 20-80 s left at issuance. Asserts
// every certificate valid, every one rotated, none ever expired, and the broker's in-flight
// high-water mark within max_in_flight and above 1 (the bound was exercised, not idle).
//
// Why renew_at 0.8 and jitter 0.05: cfssl's not_before is round(now, 1 min) - 30 s, so all
// certificates issued in the same minute share one not_before and 80 s of validity. A renew
// point inside that window (e.g. 0.5 × 80 s = 40 s) would get back a certificate with the same
// not_before, whose renew point has passed too, and renew again until the minute turns. From
// 0.8 × 0.95 × 80 s = 60.8 s on, every renewal lands in the next window: 1,000 renewals fall
// inside 6.4 s with 12.8 s left, the storm the bound has to carry without an expiry.

#include "tests/integration/cfssl/multirootca.h"
#include "tests/integration/scale/scale_support.h"

#include <gtest/gtest.h>

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
                 "{ lifetime: 80s, max_lifetime: 5m, renew_at: 0.8, jitter: 0.05, trust_bundle: " +
                     ca.ca_file().string() + " }",
                 kCertificates, kWithFiles);
  // What first boot does: create the identity and import the cfssl auth key into it.
  const auto enrolled = run({certagent_binary().string(), "enroll", "--config", (d.dir / "agent.yaml").string()},
                            30s);
  ASSERT_EQ(enrolled.exit_code, 0) << enrolled.out << enrolled.err;
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

  // Every one renews at 60.8-67.2 s after its not_before: within ~70 s of all-valid.
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
    EXPECT_LE(v, 3) << name << " renewed again and again";
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
