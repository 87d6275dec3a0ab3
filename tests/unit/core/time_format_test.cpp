// RFC 3339 and seconds-since-the-epoch conversions at the edges of SystemTime's range, where
// std::chrono::system_clock::from_time_t overflows (found by fuzz_formats).

#include "core/time_format.h"

#include <gtest/gtest.h>

namespace certagent {
namespace {

using namespace std::chrono_literals;

TEST(TimeFormat, Rfc3339RoundTripsAndOffsets) {
  auto t = parse_rfc3339("2026-11-22T10:15:30Z");
  ASSERT_TRUE(t);
  EXPECT_EQ(format_rfc3339(*t), "2026-11-22T10:15:30Z");
  EXPECT_EQ(parse_rfc3339("2026-11-22T12:15:30.5+02:00"), *t + 500ms);
}

TEST(TimeFormat, Rfc3339BeyondSystemTimeIsRefusedNotWrapped) {
  EXPECT_FALSE(parse_rfc3339("9999-12-31T23:59:59Z"));
  EXPECT_FALSE(parse_rfc3339("4030-10-21T07:28:00Z"));
  EXPECT_FALSE(parse_rfc3339("1000-01-01T00:00:00Z"));
  auto late = parse_rfc3339("2261-12-31T00:00:00Z");
  ASSERT_TRUE(late);
  EXPECT_EQ(format_rfc3339(*late), "2261-12-31T00:00:00Z");
}

TEST(TimeFormat, SecondsSinceTheEpochSaturate) {
  EXPECT_EQ(system_time_from_time_t(0), SystemTime{});
  EXPECT_EQ(system_time_from_time_t(1'800'000'000), SystemTime{1'800'000'000s});
  EXPECT_EQ(system_time_from_time_t(253402300799), SystemTime::max());  // 9999-12-31T23:59:59Z
  EXPECT_EQ(system_time_from_time_t(-253402300799), SystemTime::min());
}

}  // namespace
}  // namespace certagent
