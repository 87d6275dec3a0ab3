#include "core/config/names.h"

#include <gtest/gtest.h>

#include <string>

namespace certagent::config {
namespace {

TEST(Names, AcceptOneToSixtyFourOfLowercaseDigitsUnderscoreAndDash) {
  EXPECT_TRUE(valid_name("web"));
  EXPECT_TRUE(valid_name("a"));
  EXPECT_TRUE(valid_name("api-2_internal"));
  EXPECT_TRUE(valid_name(std::string(kMaxNameLength, 'x')));
  EXPECT_FALSE(valid_name(""));
  EXPECT_FALSE(valid_name(std::string(kMaxNameLength + 1, 'x')));
  EXPECT_FALSE(valid_name("Web"));
  EXPECT_FALSE(valid_name("a.b"));
  EXPECT_FALSE(valid_name("a/b"));
  EXPECT_FALSE(valid_name("../etc"));
  EXPECT_FALSE(valid_name("a b"));
}

}  // namespace
}  // namespace certagent::config
