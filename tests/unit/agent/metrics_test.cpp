#include "agent/metrics.h"

#include <gtest/gtest.h>

namespace certagent {
namespace {

TEST(Metrics, RendersContractNamesWithHelpTypeAndLabels) {
  Metrics m;
  m.set(metric::kNotAfter, {{"name", "web"}}, 1800000000);
  m.add(metric::kRenewals, {{"name", "web"}, {"result", "success"}});
  m.add(metric::kRenewals, {{"name", "web"}, {"result", "success"}});
  const std::string text = m.render();
  EXPECT_NE(text.find("# TYPE certagent_certificate_not_after_seconds gauge\n"), std::string::npos);
  EXPECT_NE(text.find("certagent_certificate_not_after_seconds{name=\"web\"} 1800000000\n"),
            std::string::npos);
  EXPECT_NE(text.find("# TYPE certagent_renewals_total counter\n"), std::string::npos);
  EXPECT_NE(text.find("certagent_renewals_total{name=\"web\",result=\"success\"} 2\n"),
            std::string::npos);
  // Families without series are not rendered at all.
  EXPECT_EQ(text.find("certagent_broker_up"), std::string::npos);
}

TEST(Metrics, TimeValuedGaugesKeepEverySecond) {
  Metrics m;
  m.set(metric::kNextRenewal, {{"name", "web"}}, 1796520123.25);
  m.set(metric::kNotAfter, {{"name", "web"}}, 2147483648.0 + 4e9);  // past 2038 and 2106
  const std::string text = m.render();
  EXPECT_NE(text.find("certagent_next_renewal_seconds{name=\"web\"} 1796520123.25\n"),
            std::string::npos) << text;
  EXPECT_NE(text.find("certagent_certificate_not_after_seconds{name=\"web\"} 6147483648\n"),
            std::string::npos) << text;
}

TEST(Metrics, HistogramBucketsAreCumulative) {
  Metrics m;
  m.observe(metric::kRenewalDuration, {{"name", "a"}}, 0.003);
  m.observe(metric::kRenewalDuration, {{"name", "a"}}, 0.2);
  m.observe(metric::kRenewalDuration, {{"name", "a"}}, 100);
  const std::string text = m.render();
  EXPECT_NE(text.find("certagent_renewal_duration_seconds_bucket{name=\"a\",le=\"0.005\"} 1\n"),
            std::string::npos);
  EXPECT_NE(text.find("certagent_renewal_duration_seconds_bucket{name=\"a\",le=\"0.25\"} 2\n"),
            std::string::npos);
  EXPECT_NE(text.find("certagent_renewal_duration_seconds_bucket{name=\"a\",le=\"+Inf\"} 3\n"),
            std::string::npos);
  EXPECT_NE(text.find("certagent_renewal_duration_seconds_count{name=\"a\"} 3\n"), std::string::npos);
}

TEST(Metrics, EscapesLabelValues) {
  Metrics m;
  m.set(metric::kBrokerUp, {{"broker", "a\"b\\c\nd"}}, 1);
  EXPECT_NE(m.render().find(R"(certagent_broker_up{broker="a\"b\\c\nd"} 1)"), std::string::npos);
}

TEST(Metrics, RemoveDropsTheSeries) {
  Metrics m;
  m.set(metric::kExpired, {{"name", "gone"}}, 1);
  m.remove(metric::kExpired, {{"name", "gone"}});
  EXPECT_EQ(m.render().find("gone"), std::string::npos);
  EXPECT_EQ(m.value(metric::kExpired, {{"name", "gone"}}), 0);
}

}  // namespace
}  // namespace certagent
