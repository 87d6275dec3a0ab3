#include "agent/renewal_policy.h"

#include <gtest/gtest.h>

namespace certagent::policy {
namespace {

using namespace std::chrono_literals;

const SystemTime kT0 = SystemTime{} + 1'800'000'000s;

struct RenewCase {
  std::chrono::seconds lifetime;
  double renew_at;
  double u;
  std::chrono::seconds expected_offset;
};

class RenewPointTest : public ::testing::TestWithParam<RenewCase> {};

TEST_P(RenewPointTest, IsNotBeforePlusLifetimeTimesRenewAtTimesOnePlusU) {
  const auto& c = GetParam();
  EXPECT_EQ(renew_point(kT0, kT0 + c.lifetime, c.renew_at, c.u), kT0 + c.expected_offset);
}

INSTANTIATE_TEST_SUITE_P(
    Table, RenewPointTest,
    ::testing::Values(RenewCase{96h, 0.5, 0.0, 48h},          // the default: half-way
                      RenewCase{96h, 0.5, 0.1, 52h + 48min},   // 48h × 1.1
                      RenewCase{96h, 0.5, -0.1, 43h + 12min},  // 48h × 0.9
                      RenewCase{60s, 0.5, 0.0, 30s},           // the demo's one-minute leaves
                      RenewCase{100s, 0.66, 0.0, 66s}));

TEST(RenewPoint, SubSecondPrecision) {
  EXPECT_EQ(renew_point(kT0, kT0 + 10s, 0.5, 0.5), kT0 + 7500ms);
}

TEST(RenewPointOnArrival, CountsFromArrivalWhenNotBeforeIsBackdated) {
  // cfssl "brief": not_before rounded to the minute minus 30 s, 80 s of life; arrives 55 s in.
  // The plain rule says kT0 + 40 s, already past: it would renew again at once.
  EXPECT_EQ(renew_point(kT0, kT0 + 80s, 0.5, 0.0), kT0 + 40s);
  EXPECT_EQ(renew_point_on_arrival(kT0 + 55s, kT0, kT0 + 80s, 0.5, 0.0), kT0 + 55s + 12500ms);
  EXPECT_EQ(renew_point_on_arrival(kT0 + 55s, kT0, kT0 + 80s, 0.5, 0.1), kT0 + 55s + 13750ms);
  // A 5-minute backdate on a 4-hour leaf moves the point by 2.5 minutes.
  EXPECT_EQ(renew_point_on_arrival(kT0 + 5min, kT0, kT0 + 4h, 0.5, 0.0), kT0 + 5min + 1h + 57min + 30s);
}

TEST(RenewPointOnArrival, SameAsTheRuleWhenNotBeforeIsArrivalOrLater) {
  EXPECT_EQ(renew_point_on_arrival(kT0, kT0, kT0 + 96h, 0.5, 0.1), renew_point(kT0, kT0 + 96h, 0.5, 0.1));
  // A broker whose clock runs ahead: not_before after arrival, the rule as it stands.
  EXPECT_EQ(renew_point_on_arrival(kT0 - 3s, kT0, kT0 + 96h, 0.5, -0.1), renew_point(kT0, kT0 + 96h, 0.5, -0.1));
}

TEST(ApplyHint, EarlierHintWinsLaterIsIgnored) {
  EXPECT_EQ(apply_hint(kT0 + 10h, kT0 + 5h), kT0 + 5h);
  EXPECT_EQ(apply_hint(kT0 + 10h, kT0 + 20h), kT0 + 10h);
  EXPECT_EQ(apply_hint(kT0 + 10h, std::nullopt), kT0 + 10h);
}

struct CapCase {
  std::optional<std::chrono::seconds> left;  // time left until not_after; nullopt: nothing held
  Duration expected;
};

class BackoffCapTest : public ::testing::TestWithParam<CapCase> {};

TEST_P(BackoffCapTest, MinFiveMinutesMaxOneSecondTenPercentLeftThirtySecondsOnceExpired) {
  const auto& c = GetParam();
  std::optional<SystemTime> not_after;
  if (c.left) not_after = kT0 + *c.left;
  EXPECT_EQ(backoff_cap(kT0, not_after), c.expected);
}

INSTANTIATE_TEST_SUITE_P(Table, BackoffCapTest,
                         ::testing::Values(CapCase{std::nullopt, 30s},  // nothing held
                                           CapCase{-5s, 30s},           // expired
                                           CapCase{0s, 30s},            // expires now
                                           CapCase{5s, 1s},             // 10% = 0.5s -> 1s floor
                                           CapCase{100s, 10s},          // 10%
                                           CapCase{3000s, 300s},        // 10% = 300s = 5 min
                                           CapCase{96h, 300s}));        // capped at 5 min

struct DelayCase {
  int failures;
  Duration cap;
  double r;
  Duration expected;
};

class BackoffDelayTest : public ::testing::TestWithParam<DelayCase> {};

TEST_P(BackoffDelayTest, FullJitterOverDoublingFromOneSecond) {
  const auto& c = GetParam();
  EXPECT_EQ(backoff_delay(c.failures, c.cap, c.r), c.expected);
}

INSTANTIATE_TEST_SUITE_P(Table, BackoffDelayTest,
                         ::testing::Values(DelayCase{1, 300s, 0.999999, 999ms},  // ceiling 1 s
                                           DelayCase{1, 300s, 0.5, 500ms},
                                           DelayCase{2, 300s, 0.5, 1s},     // ceiling 2 s
                                           DelayCase{3, 300s, 0.5, 2s},     // ceiling 4 s
                                           DelayCase{10, 300s, 0.5, 150s},  // 512 s capped at 300
                                           DelayCase{10, 30s, 1.0, 30s},    // expired cap
                                           DelayCase{100, 30s, 0.5, 15s},   // huge exponent
                                           DelayCase{4, 300s, 0.0, 0ms}));  // full jitter floor

TEST(RetryDelay, NeverSoonerThanRetryAfterAndJitteredPastIt) {
  EXPECT_EQ(retry_delay(1, kT0, kT0 + 96h, 120s, false, 0.5), 120s + 500ms);
  EXPECT_EQ(retry_delay(3, kT0, kT0 + 96h, 120s, false, 0.0), 120s);
  EXPECT_EQ(retry_delay(1, kT0, kT0 + 96h, 0s, false, 0.5), 500ms);
}

TEST(RetryDelay, CapsAnAbsurdRetryAfter) {
  EXPECT_EQ(retry_delay(1, kT0, kT0 + 96h, Duration(24h), false, 0.0), kMaxRetryAfter);
}

TEST(RetryDelay, ConfigurationErrorsWaitTheWholeCap) {
  EXPECT_EQ(retry_delay(1, kT0, kT0 + 96h, std::nullopt, true, 0.0), 300s);
  EXPECT_EQ(retry_delay(1, kT0, std::nullopt, std::nullopt, true, 0.0), 30s);
}

TEST(RetryDelay, OnceExpiredNeverMoreThanThirtySecondsWithoutBrokerHint) {
  for (int failures = 1; failures < 64; ++failures)
    for (double r : {0.0, 0.3, 0.99, 1.0})
      EXPECT_LE(retry_delay(failures, kT0, kT0 - 1s, std::nullopt, false, r), 30s);
}

}  // namespace
}  // namespace certagent::policy
