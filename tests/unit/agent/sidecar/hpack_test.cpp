// The HPACK decoder against RFC 7541's own examples (Appendix C), against libnghttp2's deflater
// as an independent encoder (random header lists of every byte value, many blocks per
// connection, table size changes; every byte value Huffman-coded at least once), and against
// malformed blocks.

#include "agent/sidecar/hpack.h"

#include <gtest/gtest.h>
#include <nghttp2/nghttp2.h>

#include <cstdint>
#include <iostream>
#include <iterator>
#include <limits>
#include <memory>
#include <random>
#include <type_traits>
#include <string>
#include <utility>
#include <vector>

namespace certagent::sidecar::hpack {
namespace {

using Field = std::pair<std::string, std::string>;
using Fields = std::vector<Field>;
constexpr std::size_t kNoLimit = std::numeric_limits<std::size_t>::max();

std::string hex(std::string_view text) {
  std::string out;
  int nibbles = 0;
  unsigned byte = 0;
  for (const char c : text) {
    if (c == ' ') continue;
    const unsigned v = c <= '9' ? unsigned(c - '0') : unsigned(c - 'a' + 10);
    byte = (byte << 4) | v;
    if (++nibbles % 2 == 0) {
      out.push_back(static_cast<char>(byte));
      byte = 0;
    }
  }
  EXPECT_EQ(nibbles % 2, 0) << text;
  return out;
}

Error decode(Decoder& d, std::string_view block, Fields& out, std::size_t limit = kNoLimit) {
  out.clear();
  return d.decode(block, limit, [&](std::string_view name, std::string_view value) {
    out.emplace_back(std::string(name), std::string(value));
  });
}

// The dynamic table, newest first.
Fields table_of(const Decoder& d) {
  Fields out;
  for (std::size_t i = 0; i < d.entry_count(); ++i) out.push_back(d.entry(i));
  return out;
}

template <auto Fn>
struct CDeleter {
  template <class T>
  void operator()(T* p) const noexcept {
    Fn(p);
  }
};
using DeflaterPtr = std::unique_ptr<nghttp2_hd_deflater, CDeleter<nghttp2_hd_deflate_del>>;

DeflaterPtr make_deflater(std::size_t max_table) {
  nghttp2_hd_deflater* d = nullptr;
  EXPECT_EQ(nghttp2_hd_deflate_new(&d, max_table), 0);
  return DeflaterPtr(d);
}

std::uint8_t* bytes(const std::string& s) {
  return reinterpret_cast<std::uint8_t*>(const_cast<char*>(s.data()));
}

// One header block from nghttp2; `sensitive` fields are sent never indexed.
std::string deflate(nghttp2_hd_deflater* d, const Fields& fields,
                    const std::vector<bool>& sensitive = {}) {
  std::vector<nghttp2_nv> nva;
  for (std::size_t i = 0; i < fields.size(); ++i) {
    const auto& [name, value] = fields[i];
    const bool no_index = i < sensitive.size() && sensitive[i];
    nva.push_back({bytes(name), bytes(value), name.size(), value.size(),
                   std::uint8_t(no_index ? NGHTTP2_NV_FLAG_NO_INDEX : NGHTTP2_NV_FLAG_NONE)});
  }
  std::string out(nghttp2_hd_deflate_bound(d, nva.data(), nva.size()), '\0');
  const auto n = nghttp2_hd_deflate_hd(d, bytes(out), out.size(), nva.data(), nva.size());
  EXPECT_GE(n, 0);
  out.resize(n < 0 ? 0 : static_cast<std::size_t>(n));
  return out;
}

// nghttp2's dynamic table, newest first.
Fields table_of(nghttp2_hd_deflater* d) {
  Fields out;
  const std::size_t n = nghttp2_hd_deflate_get_num_table_entries(d);
  for (std::size_t i = 62; i <= n; ++i) {
    const nghttp2_nv* nv = nghttp2_hd_deflate_get_table_entry(d, i);
    out.emplace_back(std::string(reinterpret_cast<const char*>(nv->name), nv->namelen),
                     std::string(reinterpret_cast<const char*>(nv->value), nv->valuelen));
  }
  return out;
}

// Counts a block's string literals by their H bit, walking the representations (RFC 7541 6)
// independently of the decoder: proof that Huffman decoding was exercised.
struct StringKinds {
  int huffman = 0;
  int raw = 0;
};
void count_strings(std::string_view b, StringKinds& k) {
  std::size_t at = 0;
  auto integer = [&](unsigned prefix) {
    std::uint64_t v = static_cast<unsigned char>(b.at(at++)) & ((1u << prefix) - 1);
    if (v == (1u << prefix) - 1) {
      for (unsigned shift = 0;; shift += 7) {
        const auto c = static_cast<unsigned char>(b.at(at++));
        v += std::uint64_t(c & 0x7f) << shift;
        if (!(c & 0x80)) break;
      }
    }
    return v;
  };
  auto string = [&]() {
    (static_cast<unsigned char>(b.at(at)) & 0x80 ? k.huffman : k.raw)++;
    at += integer(7);
  };
  while (at < b.size()) {
    const auto c = static_cast<unsigned char>(b[at]);
    if (c & 0x80) {
      integer(7);
    } else if ((c & 0xe0) == 0x20) {
      integer(5);
    } else {
      if (integer((c & 0xc0) == 0x40 ? 6 : 4) == 0) string();
      string();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// RFC 7541 Appendix C.

TEST(HpackTest, StaticTableIsTheOneNghttp2Uses) {
  auto deflater = make_deflater(4096);
  for (int i = 1; i <= 61; ++i) {
    Decoder d;
    Fields out;
    ASSERT_EQ(decode(d, std::string(1, static_cast<char>(0x80 | i)), out), Error::none) << i;
    const nghttp2_nv* nv = nghttp2_hd_deflate_get_table_entry(deflater.get(), i);
    ASSERT_NE(nv, nullptr);
    const Fields expected{{std::string(reinterpret_cast<const char*>(nv->name), nv->namelen),
                           std::string(reinterpret_cast<const char*>(nv->value), nv->valuelen)}};
    EXPECT_EQ(out, expected) << i;
  }
}

TEST(HpackTest, C2_LiteralsAndIndexed) {
  Fields out;
  {  // C.2.1 literal with indexing
    Decoder d;
    ASSERT_EQ(decode(d, hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572"),
                     out),
              Error::none);
    EXPECT_EQ(out, (Fields{{"custom-key", "custom-header"}}));
    EXPECT_EQ(table_of(d), (Fields{{"custom-key", "custom-header"}}));
    EXPECT_EQ(d.table_bytes(), 55u);
  }
  {  // C.2.2 literal without indexing
    Decoder d;
    ASSERT_EQ(decode(d, hex("040c 2f73 616d 706c 652f 7061 7468"), out), Error::none);
    EXPECT_EQ(out, (Fields{{":path", "/sample/path"}}));
    EXPECT_EQ(d.table_bytes(), 0u);
  }
  {  // C.2.3 literal never indexed
    Decoder d;
    ASSERT_EQ(decode(d, hex("1008 7061 7373 776f 7264 0673 6563 7265 74"), out), Error::none);
    EXPECT_EQ(out, (Fields{{"password", "secret"}}));
    EXPECT_EQ(d.table_bytes(), 0u);
  }
  {  // C.2.4 indexed
    Decoder d;
    ASSERT_EQ(decode(d, hex("82"), out), Error::none);
    EXPECT_EQ(out, (Fields{{":method", "GET"}}));
    EXPECT_EQ(d.table_bytes(), 0u);
  }
}

struct Step {
  const char* block;
  Fields fields;
  Fields table;
  std::size_t table_bytes;
};

void run_sequence(Decoder& d, const std::vector<Step>& steps) {
  for (std::size_t i = 0; i < steps.size(); ++i) {
    Fields out;
    ASSERT_EQ(decode(d, hex(steps[i].block), out), Error::none) << "block " << i;
    EXPECT_EQ(out, steps[i].fields) << "block " << i;
    EXPECT_EQ(table_of(d), steps[i].table) << "block " << i;
    EXPECT_EQ(d.table_bytes(), steps[i].table_bytes) << "block " << i;
  }
}

const Fields kRequest1{
    {":method", "GET"}, {":scheme", "http"}, {":path", "/"}, {":authority", "www.example.com"}};
const Fields kRequest2{{":method", "GET"},
                       {":scheme", "http"},
                       {":path", "/"},
                       {":authority", "www.example.com"},
                       {"cache-control", "no-cache"}};
const Fields kRequest3{{":method", "GET"},
                       {":scheme", "https"},
                       {":path", "/index.html"},
                       {":authority", "www.example.com"},
                       {"custom-key", "custom-value"}};
const Fields kRequestTable1{{":authority", "www.example.com"}};
const Fields kRequestTable2{{"cache-control", "no-cache"}, {":authority", "www.example.com"}};
const Fields kRequestTable3{{"custom-key", "custom-value"},
                            {"cache-control", "no-cache"},
                            {":authority", "www.example.com"}};

TEST(HpackTest, C3_RequestsWithoutHuffman) {
  Decoder d;
  run_sequence(d, {
                      {"8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d", kRequest1,
                       kRequestTable1, 57},
                      {"8286 84be 5808 6e6f 2d63 6163 6865", kRequest2, kRequestTable2, 110},
                      {"8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
                       kRequest3, kRequestTable3, 164},
                  });
}

TEST(HpackTest, C4_RequestsWithHuffman) {
  Decoder d;
  run_sequence(d, {
                      {"8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff", kRequest1, kRequestTable1, 57},
                      {"8286 84be 5886 a8eb 1064 9cbf", kRequest2, kRequestTable2, 110},
                      {"8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf", kRequest3,
                       kRequestTable3, 164},
                  });
}

const std::string kDate1 = "Mon, 21 Oct 2013 20:13:21 GMT";
const std::string kDate2 = "Mon, 21 Oct 2013 20:13:22 GMT";
const std::string kLocation = "https://www.example.com";
const std::string kCookie = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
const Fields kResponse1{
    {":status", "302"}, {"cache-control", "private"}, {"date", kDate1}, {"location", kLocation}};
const Fields kResponse2{
    {":status", "307"}, {"cache-control", "private"}, {"date", kDate1}, {"location", kLocation}};
const Fields kResponse3{{":status", "200"},       {"cache-control", "private"},
                        {"date", kDate2},         {"location", kLocation},
                        {"content-encoding", "gzip"}, {"set-cookie", kCookie}};
const Fields kResponseTable1{
    {"location", kLocation}, {"date", kDate1}, {"cache-control", "private"}, {":status", "302"}};
const Fields kResponseTable2{
    {":status", "307"}, {"location", kLocation}, {"date", kDate1}, {"cache-control", "private"}};
const Fields kResponseTable3{
    {"set-cookie", kCookie}, {"content-encoding", "gzip"}, {"date", kDate2}};

TEST(HpackTest, C5_ResponsesWithoutHuffmanEvict) {
  Decoder d(256);
  run_sequence(
      d, {
             {"4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 "
              "2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 "
              "6c65 2e63 6f6d",
              kResponse1, kResponseTable1, 222},
             {"4803 3330 37c1 c0bf", kResponse2, kResponseTable2, 222},
             {"88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d "
              "54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 "
              "5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e "
              "3d31",
              kResponse3, kResponseTable3, 215},
         });
}

TEST(HpackTest, C6_ResponsesWithHuffmanEvict) {
  Decoder d(256);
  run_sequence(
      d, {
             {"4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 "
              "2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
              kResponse1, kResponseTable1, 222},
             {"4883 640e ffc1 c0bf", kResponse2, kResponseTable2, 222},
             {"88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab "
              "77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f "
              "9587 3160 65c0 03ed 4ee5 b106 3d50 07",
              kResponse3, kResponseTable3, 215},
         });
}

// ---------------------------------------------------------------------------------------------
// libnghttp2's deflater as the independent encoder.

// Each byte value, Huffman-coded by nghttp2 at the start, the middle and the end of a string of
// 'a's (5-bit code), so that the Huffman form is shorter and nghttp2 picks it; the block being
// shorter than the raw value proves it did. A wrong code length or a wrong canonical order
// decodes to something else or fails.
TEST(HpackTest, EveryByteValueThroughHuffmanFromNghttp2) {
  auto deflater = make_deflater(4096);
  Decoder d;
  for (int sym = 0; sym < 256; ++sym) {
    for (const std::size_t at : {std::size_t{0}, std::size_t{97}, std::size_t{200}}) {
      std::string value(200, 'a');
      value.insert(value.begin() + static_cast<std::ptrdiff_t>(at), static_cast<char>(sym));
      const Fields fields{{"x-sym", value}};
      const std::string block = deflate(deflater.get(), fields, {true});
      ASSERT_LT(block.size(), value.size()) << "nghttp2 did not Huffman-code symbol " << sym;
      StringKinds kinds;
      count_strings(block, kinds);
      ASSERT_EQ(kinds.huffman, 1 + 1) << sym;  // name ("x-sym") and value
      Fields out;
      ASSERT_EQ(decode(d, block, out), Error::none) << sym;
      ASSERT_EQ(out, fields) << sym;
    }
  }
  // Names too, and each symbol alone (padding of every length 0..7 appears across them).
  for (int sym = 0; sym < 256; ++sym) {
    const Fields fields{{std::string(40, 'e') + static_cast<char>(sym), std::string(1, char(sym))}};
    const std::string block = deflate(deflater.get(), fields, {true});
    Fields out;
    ASSERT_EQ(decode(d, block, out), Error::none) << sym;
    ASSERT_EQ(out, fields) << sym;
  }
  EXPECT_EQ(d.table_bytes(), 0u);
}

struct RandomLists {
  std::mt19937 rng;
  Fields history;

  explicit RandomLists(unsigned seed) : rng(seed) {}
  std::size_t below(std::size_t n) {
    return std::uniform_int_distribution<std::size_t>(0, n - 1)(rng);
  }

  // Lengths 0..300; either every byte value alike (Huffman loses, sent raw) or mostly common
  // characters with the odd byte of any value (Huffman wins).
  std::string text() {
    const std::size_t len = below(4) == 0 ? below(301) : below(24);
    const bool skewed = below(3) != 0;
    static constexpr std::string_view kCommon = "0123456789aceiost-/:";
    std::string s;
    for (std::size_t i = 0; i < len; ++i) {
      if (skewed && below(16) != 0)
        s.push_back(kCommon[below(kCommon.size())]);
      else
        s.push_back(static_cast<char>(below(256)));
    }
    return s;
  }

  Field field() {
    static const std::vector<std::string> kNames{":path", ":method", "content-type", "te",
                                                 "grpc-timeout", "user-agent", ":authority"};
    if (!history.empty() && below(2) == 0) return history[below(history.size())];
    Field f{below(3) == 0 ? kNames[below(kNames.size())] : text(), text()};
    history.push_back(f);
    if (history.size() > 64) history.erase(history.begin());
    return f;
  }
};

// Many connections, each many blocks on one Decoder and one nghttp2 deflater: every block gives
// back exactly its list, and afterwards the two dynamic tables are equal, entry by entry.
TEST(HpackTest, RandomListsFromNghttp2DecodeExactly) {
  StringKinds kinds;
  int size_updates = 0;
  for (unsigned seed = 1; seed <= 24; ++seed) {
    RandomLists gen(seed);
    // The size this side advertises; nghttp2 is told it as the peer's SETTINGS.
    static constexpr std::size_t kSettings[] = {4096, 256, 1000, 0, 65536, 4096};
    const std::size_t settings = kSettings[seed % std::size(kSettings)];
    auto deflater = make_deflater(settings);
    ASSERT_EQ(nghttp2_hd_deflate_change_table_size(deflater.get(), settings), 0);
    Decoder d(settings);
    for (int block_no = 0; block_no < 60; ++block_no) {
      if (gen.below(8) == 0) {  // SETTINGS changes: one or two size updates before the block
        ++size_updates;
        ASSERT_EQ(nghttp2_hd_deflate_change_table_size(deflater.get(), gen.below(settings + 1)), 0);
        if (gen.below(2) == 0) {
          ASSERT_EQ(nghttp2_hd_deflate_change_table_size(deflater.get(), settings), 0);
        }
      }
      Fields fields;
      std::vector<bool> sensitive;
      const std::size_t n = gen.below(13);
      for (std::size_t i = 0; i < n; ++i) {
        fields.push_back(gen.field());
        sensitive.push_back(gen.below(10) == 0);
      }
      const std::string block = deflate(deflater.get(), fields, sensitive);
      count_strings(block, kinds);
      Fields out;
      ASSERT_EQ(decode(d, block, out), Error::none) << "seed " << seed << " block " << block_no;
      ASSERT_EQ(out, fields) << "seed " << seed << " block " << block_no;
      ASSERT_EQ(d.table_bytes(), nghttp2_hd_deflate_get_dynamic_table_size(deflater.get()))
          << "seed " << seed << " block " << block_no;
      ASSERT_EQ(d.table_max_bytes(), nghttp2_hd_deflate_get_max_dynamic_table_size(deflater.get()));
      ASSERT_EQ(table_of(d), table_of(deflater.get())) << "seed " << seed << " block " << block_no;
    }
  }
  // Not vacuous: both string forms and size updates went through.
  EXPECT_GT(kinds.huffman, 1000);
  EXPECT_GT(kinds.raw, 1000);
  EXPECT_GT(size_updates, 50);
}

// A literal with incremental indexing whose name is the entry its own insertion evicts
// (RFC 7541 4.4).
TEST(HpackTest, InsertionMayEvictTheEntryItsNameComesFrom) {
  Decoder d(100);
  Fields out;
  const std::string name(30, 'n');
  std::string block = "\x40\x1e" + name + "\x01v";  // size 63
  ASSERT_EQ(decode(d, block, out), Error::none);
  ASSERT_EQ(d.table_bytes(), 63u);
  block = "\x7e\x1e" + std::string(30, 'w');  // name index 62, size 92: evicts it first
  ASSERT_EQ(decode(d, block, out), Error::none);
  EXPECT_EQ(out, (Fields{{name, std::string(30, 'w')}}));
  EXPECT_EQ(table_of(d), (Fields{{name, std::string(30, 'w')}}));
  EXPECT_EQ(d.table_bytes(), 92u);
}

// An entry larger than the table empties it and is not added (RFC 7541 4.4).
TEST(HpackTest, OversizedEntryEmptiesTheTable) {
  Decoder d(256);
  Fields out;
  ASSERT_EQ(decode(d, hex("4001 6101 62"), out), Error::none);
  ASSERT_EQ(d.table_bytes(), 34u);
  // Name of 127 + 123 = 250 bytes, empty value: 282 > 256.
  ASSERT_EQ(decode(d, hex("40 7f 7b") + std::string(250, 'x') + hex("00"), out), Error::none);
  EXPECT_EQ(out, (Fields{{std::string(250, 'x'), ""}}));
  EXPECT_EQ(d.entry_count(), 0u);
  EXPECT_EQ(d.table_bytes(), 0u);
  EXPECT_EQ(d.heap_bytes(), 0u);
  EXPECT_EQ(decode(d, hex("be"), out), Error::compression);  // index 62: nothing there
}

TEST(HpackTest, SizeUpdates) {
  Fields out;
  {  // several at the start, the last one rules; 4096 is the maximum, 4097 is past it
    Decoder d;
    ASSERT_EQ(decode(d, hex("20 3fe11f 3f e1 1f 4001 6101 62 82"), out), Error::none);
    EXPECT_EQ(d.table_max_bytes(), 4096u);
    EXPECT_EQ(d.table_bytes(), 34u);
  }
  {  // shrinking evicts; to 0 empties and frees
    Decoder d;
    ASSERT_EQ(decode(d, hex("4001 6101 62 4001 6301 64"), out), Error::none);
    EXPECT_EQ(d.table_bytes(), 68u);
    EXPECT_GT(d.heap_bytes(), 0u);
    ASSERT_EQ(decode(d, hex("3f 03"), out), Error::none);  // 34
    EXPECT_EQ(table_of(d), (Fields{{"c", "d"}}));
    ASSERT_EQ(decode(d, hex("20"), out), Error::none);
    EXPECT_EQ(d.entry_count(), 0u);
    EXPECT_EQ(d.heap_bytes(), 0u);
    ASSERT_EQ(decode(d, hex("4001 6101 62"), out), Error::none);  // too big for 0: not added
    EXPECT_EQ(d.table_bytes(), 0u);
  }
  {
    Decoder d;
    EXPECT_EQ(decode(d, hex("3f e2 1f"), out), Error::compression);  // 4097
  }
  {
    Decoder d(256);
    EXPECT_EQ(decode(d, hex("3f e2 01"), out), Error::compression);  // 257
  }
  {
    Decoder d;
    EXPECT_EQ(decode(d, hex("82 20"), out), Error::compression);  // after a field
  }
}

TEST(HpackTest, MalformedBlocksAreCompressionErrors) {
  const std::vector<std::pair<const char*, std::string>> cases{
      {"index 0", hex("80")},
      {"index past the static table", hex("be")},
      {"name index past the table", hex("7e 00")},
      {"name index past the table, never indexed", hex("1f 2f 00")},
      {"truncated integer", hex("ff")},
      {"truncated integer continuation", hex("ff 80")},
      {"integer past 2^32", hex("ff ff ff ff ff 0f")},
      {"integer of endless 0x80 octets", hex("ff 80 80 80 80 80 80 80 00")},
      {"truncated string length", hex("40")},
      {"truncated string", hex("40 05 6162")},
      {"missing value", hex("40 01 61")},
      {"truncated Huffman string", hex("00 85 1f")},
      {"padding not all ones", hex("00 81 18 00")},  // 'a' (00011) then 000
      {"padding of 8 bits or more", hex("00 82 1f ff 00")},  // 'a', then 11 ones
      {"padding only, 8 ones", hex("00 81 ff 00")},
      {"EOS in a string", hex("00 84 ffff ffff 00")},  // 30 ones are EOS
      {"EOS in a value", hex("00 01 61 84 ffff fffc")},
      {"size update above the maximum", hex("3f e2 1f")},
      {"size update after a field", hex("82 3f e1 1f")},
      {"literal after error-free fields then index 0", hex("82 86 80")},
  };
  for (const auto& [what, block] : cases) {
    Decoder d;
    Fields out;
    EXPECT_EQ(decode(d, block, out), Error::compression) << what;
    // The connection ends: the decoder stays broken.
    EXPECT_EQ(decode(d, hex("82"), out), Error::compression) << what;
    EXPECT_EQ(d.heap_bytes(), 0u) << what;
  }
  // The controls: the same shapes, well formed.
  for (const char* ok : {"00 81 1f 00", "00 81 1f 81 1f", "bd", "3f e1 1f 82", "00 80 80"}) {
    Decoder d;
    Fields out;
    EXPECT_EQ(decode(d, hex(ok), out), Error::none) << ok;
  }
  {  // Each truncation of a real block fails, and none crashes.
    const std::string full = hex(
        "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 "
        "2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3");
    for (std::size_t n = 1; n < full.size(); ++n) {
      Decoder d(256);
      Fields out;
      const Error e = decode(d, full.substr(0, n), out);
      // Cutting between two representations leaves a valid shorter block.
      if (e == Error::none) continue;
      EXPECT_EQ(e, Error::compression) << n;
    }
  }
}

// Past max_list_bytes no field is delivered, the block is still decoded (entries added), and
// the next block, which refers to them, decodes right.
TEST(HpackTest, TooLargeKeepsTheTableInStep) {
  auto deflater = make_deflater(4096);
  Decoder d;
  const Fields fields{{":method", "POST"},
                      {":path", "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets"},
                      {"x-big", std::string(300, 'v')},
                      {"x-after", "1"}};
  std::string block = deflate(deflater.get(), fields);
  Fields out;
  // The first two fit, x-big (5 + 300 + 32) does not.
  const std::size_t limit = (7 + 4 + 32) + (5 + fields[1].second.size() + 32) + 10;
  ASSERT_EQ(decode(d, block, out, limit), Error::too_large);
  EXPECT_EQ(out, (Fields{fields[0], fields[1]}));
  EXPECT_EQ(table_of(d), table_of(deflater.get()));
  EXPECT_EQ(d.table_bytes(), nghttp2_hd_deflate_get_dynamic_table_size(deflater.get()));
  // Exactly at the limit is still within it.
  {
    Decoder exact;
    auto deflater2 = make_deflater(4096);
    ASSERT_EQ(decode(exact, deflate(deflater2.get(), {fields[0]}), out, 43), Error::none);
    EXPECT_EQ(out.size(), 1u);
  }

  block = deflate(deflater.get(), fields);
  ASSERT_EQ(decode(d, block, out, 16384), Error::none);
  EXPECT_EQ(out, fields);
  EXPECT_EQ(table_of(d), table_of(deflater.get()));
}

// Many indexed references to one big entry: fields stop at the limit.
TEST(HpackTest, ManyReferencesToABigEntryStopAtTheLimit) {
  Decoder d;
  Fields out;
  const std::string value(4000, 'v');
  ASSERT_EQ(decode(d, hex("40 01 78 7f a1 1e") + value, out), Error::none);  // 127 + 3873
  ASSERT_EQ(out.size(), 1u);
  ASSERT_EQ(out[0].second.size(), 4000u);
  const std::string block(100000, '\xbe');
  std::size_t delivered = 0;
  const Error e = d.decode(block, 16384, [&](std::string_view name, std::string_view v) {
    delivered += name.size() + v.size() + 32;
  });
  EXPECT_EQ(e, Error::too_large);
  EXPECT_LE(delivered, 16384u);
  EXPECT_EQ(delivered, 4u * (1 + 4000 + 32));
  ASSERT_EQ(decode(d, hex("be"), out), Error::none);
  EXPECT_EQ(out, (Fields{{"x", value}}));
}

// A wrapped entry (its bytes across the ring's end) reads back whole.
TEST(HpackTest, EntriesAcrossTheRingsEndReadBackWhole) {
  auto deflater = make_deflater(300);
  ASSERT_EQ(nghttp2_hd_deflate_change_table_size(deflater.get(), 300), 0);
  Decoder d(300);
  for (int i = 0; i < 200; ++i) {
    const Field f{"k" + std::to_string(i % 7),
                  std::string(static_cast<std::size_t>(i % 53), static_cast<char>('a' + i % 26))};
    const Fields fields{f, f};
    Fields out;
    ASSERT_EQ(decode(d, deflate(deflater.get(), fields), out), Error::none) << i;
    ASSERT_EQ(out, fields) << i;
    ASSERT_EQ(table_of(d), table_of(deflater.get())) << i;
    // The byte ring stays within the table's maximum; the entry ring holds at most 300 / 32
    // entries, so 16 slots of three 32-bit words.
    EXPECT_LE(d.heap_bytes(), 300u + 16 * 3 * sizeof(std::uint32_t)) << i;
  }
}

// Mangled blocks (nghttp2's with bytes changed, cut or inserted; plain random bytes) on one
// decoder per connection until it fails: any result, but no crash or UB (ASan/UBSan build).
TEST(HpackTest, MangledBlocksNeverCrash) {
  std::mt19937 rng(7);
  auto below = [&](std::size_t n) {
    return std::uniform_int_distribution<std::size_t>(0, n - 1)(rng);
  };
  int outcomes[3] = {};
  for (unsigned conn = 0; conn < 300; ++conn) {
    RandomLists gen(1000 + conn);
    auto deflater = make_deflater(4096);
    Decoder d(conn % 3 == 0 ? 256 : 4096);
    if (conn % 3 == 0) {
      ASSERT_EQ(nghttp2_hd_deflate_change_table_size(deflater.get(), 256), 0);
    }
    for (int block_no = 0; block_no < 20; ++block_no) {
      Fields fields;
      for (std::size_t n = gen.below(8); n > 0; --n) fields.push_back(gen.field());
      std::string block = deflate(deflater.get(), fields);
      switch (below(5)) {
        case 0:
          break;  // as sent
        case 1:
          if (!block.empty()) block[below(block.size())] = static_cast<char>(below(256));
          break;
        case 2:
          block.resize(below(block.size() + 1));
          break;
        case 3:
          block.insert(below(block.size() + 1), 1, static_cast<char>(below(256)));
          break;
        default:
          block.resize(below(64));
          for (auto& c : block) c = static_cast<char>(below(256));
      }
      Fields out;
      const Error e = decode(d, block, out, below(2) == 0 ? kNoLimit : below(2000));
      ++outcomes[static_cast<int>(e)];
      if (e == Error::compression) break;
      EXPECT_LE(d.table_bytes(), d.table_max_bytes());
    }
  }
  EXPECT_GT(outcomes[static_cast<int>(Error::none)], 0);
  EXPECT_GT(outcomes[static_cast<int>(Error::compression)], 0);
  EXPECT_GT(outcomes[static_cast<int>(Error::too_large)], 0);
}

static_assert(std::is_nothrow_move_constructible_v<Decoder>);

TEST(HpackTest, EmptyDecoderHoldsNoHeap) {
  Decoder d;
  EXPECT_EQ(d.heap_bytes(), 0u);
  EXPECT_EQ(d.table_bytes(), 0u);
  EXPECT_EQ(d.table_max_bytes(), 4096u);
  Fields out;
  ASSERT_EQ(decode(d, hex("82 86 84"), out), Error::none);  // static entries only
  EXPECT_EQ(d.heap_bytes(), 0u);
  RecordProperty("sizeof_decoder", static_cast<int>(sizeof(Decoder)));
  std::cout << "sizeof(Decoder) = " << sizeof(Decoder) << " bytes\n";
}

// What a gRPC client's requests leave in the table: printed, for the benchmark notes.
TEST(HpackTest, GrpcLikeRequestsTableFootprint) {
  auto deflater = make_deflater(4096);
  Decoder d;
  Fields out;
  for (int i = 0; i < 100; ++i) {
    const Fields request{{":method", "POST"},
                         {":scheme", "http"},
                         {":path", "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets"},
                         {":authority", "localhost"},
                         {"content-type", "application/grpc"},
                         {"user-agent", "grpc-c++/1.51.1 grpc-c/29.0.0 (linux; chttp2)"},
                         {"te", "trailers"},
                         {"grpc-accept-encoding", "identity, deflate, gzip"},
                         {"grpc-timeout", std::to_string(1000 + i) + "m"}};
    ASSERT_EQ(decode(d, deflate(deflater.get(), request), out), Error::none);
    ASSERT_EQ(out, request);
    if (i == 0 || i == 99) {
      std::cout << "after request " << i + 1 << ": table_bytes=" << d.table_bytes()
                << " entries=" << d.entry_count() << " heap_bytes=" << d.heap_bytes() << "\n";
    }
  }
}

}  // namespace
}  // namespace certagent::sidecar::hpack
