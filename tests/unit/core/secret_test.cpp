// Secret and CleansingAllocator: secret bytes are wiped before memory is released. The upstream
// allocator below looks at each block as it is handed back.

#include "core/encoding.h"
#include "core/secret.h"

#include <boost/beast/http/fields.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

namespace certagent {
namespace {

const std::string kToken = "eyJhbGciOiJIUzI1NiJ9.secret-bearer-token.signature";

// Counts released blocks that still contained any byte other than zero.
struct Inspection {
  int released{0};
  int dirty{0};
};

template <class T>
struct InspectingAllocator {
  using value_type = T;
  template <class U>
  struct rebind {
    using other = InspectingAllocator<U>;
  };
  explicit InspectingAllocator(Inspection* i = nullptr) : inspection(i) {}
  template <class U>
  InspectingAllocator(const InspectingAllocator<U>& other) : inspection(other.inspection) {}
  T* allocate(std::size_t n) { return std::allocator<T>{}.allocate(n); }
  void deallocate(T* p, std::size_t n) {
    if (inspection) {
      ++inspection->released;
      const auto* bytes = reinterpret_cast<const unsigned char*>(p);
      if (std::any_of(bytes, bytes + n * sizeof(T), [](unsigned char b) { return b != 0; })) ++inspection->dirty;
    }
    std::allocator<T>{}.deallocate(p, n);
  }
  template <class U>
  bool operator==(const InspectingAllocator<U>& o) const { return inspection == o.inspection; }
  Inspection* inspection;
};

TEST(CleansingAllocator, WipesEveryBlockBeforeReleasingIt) {
  Inspection seen;
  using Alloc = CleansingAllocator<char, InspectingAllocator<char>>;
  Alloc alloc;
  alloc.upstream = InspectingAllocator<char>(&seen);
  {
    std::vector<char, Alloc> v(alloc);
    for (char c : kToken) v.push_back(c);  // grows: several blocks released on the way
  }
  EXPECT_GT(seen.released, 1);
  EXPECT_EQ(seen.dirty, 0);

  // The control: without the wipe, released blocks do hold the bytes.
  Inspection control;
  {
    std::vector<char, InspectingAllocator<char>> v{InspectingAllocator<char>(&control)};
    for (char c : kToken) v.push_back(c);
  }
  EXPECT_GT(control.dirty, 0);
}

TEST(CleansingAllocator, BeastHeaderFieldsWipeABearerToken) {
  Inspection seen;
  using Alloc = CleansingAllocator<char, InspectingAllocator<char>>;
  Alloc alloc;
  alloc.upstream = InspectingAllocator<char>(&seen);
  {
    boost::beast::http::basic_fields<Alloc> fields(alloc);
    fields.set(boost::beast::http::field::authorization, "Bearer " + kToken);
    fields.set(boost::beast::http::field::accept, "application/json");
    fields.set(boost::beast::http::field::authorization, "Bearer replaced-" + kToken);  // frees the first
  }
  EXPECT_GE(seen.released, 3);
  EXPECT_EQ(seen.dirty, 0);
}

TEST(Secret, MovedFromAndReassignedAreEmpty) {
  Secret a(kToken);
  Secret b(std::move(a));
  EXPECT_TRUE(a.empty());  // NOLINT(bugprone-use-after-move): wiped on move by design
  EXPECT_EQ(b.view(), kToken);
  b = Secret("other");
  EXPECT_EQ(b.view(), "other");
  b.wipe();
  EXPECT_TRUE(b.empty());
}

TEST(Base64url, DecodesBothAlphabetsWithOrWithoutPaddingAndRejectsGarbage) {
  EXPECT_EQ(base64url_decode("Zm9vYmFy")->view(), "foobar");
  EXPECT_EQ(base64url_decode("Zm8=")->view(), "fo");
  EXPECT_EQ(base64url_decode("Zm8")->view(), "fo");
  EXPECT_EQ(base64url_decode("-_-_")->view(), base64url_decode("+/+/")->view());
  EXPECT_EQ(base64url_decode("")->view(), "");
  EXPECT_FALSE(base64url_decode("Zm9v!"));   // not in either alphabet
  EXPECT_FALSE(base64url_decode("Zm9vY"));   // a lone trailing character encodes no byte
}

TEST(Hex, DecodesPairsOfEitherCaseAndRejectsOddOrNonHexInput) {
  EXPECT_EQ(hex_decode("00ff7Fa0")->view(), std::string_view("\x00\xff\x7f\xa0", 4));
  EXPECT_EQ(hex_decode("")->view(), "");
  EXPECT_FALSE(hex_decode("abc"));  // odd count
  EXPECT_FALSE(hex_decode("zz"));
  EXPECT_FALSE(hex_decode("0g"));
  EXPECT_FALSE(hex_decode(" 00"));  // callers trim; the decoder does not
}

}  // namespace
}  // namespace certagent
