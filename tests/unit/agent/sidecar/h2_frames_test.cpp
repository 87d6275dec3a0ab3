// The HTTP/2 pieces the sidecar API sends (agent/sidecar/h2_frames.*), read back by libnghttp2's
// HPACK decoder (an independent implementation) and checked byte by byte against RFC 9113.

#include "agent/sidecar/h2_frames.h"

#include <nghttp2/nghttp2.h>

#include <gtest/gtest.h>

#include <utility>
#include <vector>

namespace certagent::sidecar::h2 {
namespace {

using Fields = std::vector<std::pair<std::string, std::string>>;

// Decodes one block with nghttp2's inflater; nullopt when it refuses the block.
std::optional<Fields> inflate(nghttp2_hd_inflater* inflater, const std::string& block) {
  Fields out;
  auto* in = reinterpret_cast<const std::uint8_t*>(block.data());
  std::size_t left = block.size();
  for (;;) {
    nghttp2_nv nv;
    int flags = 0;
    const auto n = nghttp2_hd_inflate_hd2(inflater, &nv, &flags, in, left, 1);
    if (n < 0) return std::nullopt;
    in += n;
    left -= static_cast<std::size_t>(n);
    if (flags & NGHTTP2_HD_INFLATE_EMIT) {
      out.emplace_back(std::string(reinterpret_cast<char*>(nv.name), nv.namelen),
                       std::string(reinterpret_cast<char*>(nv.value), nv.valuelen));
    }
    if (flags & NGHTTP2_HD_INFLATE_FINAL) {
      nghttp2_hd_inflate_end_headers(inflater);
      return out;
    }
    if (n == 0 && left == 0) return std::nullopt;
  }
}

struct Inflater {
  Inflater() { nghttp2_hd_inflate_new(&p); }
  ~Inflater() { nghttp2_hd_inflate_del(p); }
  nghttp2_hd_inflater* p{nullptr};
};

TEST(H2Frames, ResponseHeaderBlocksDecodeWithAnotherImplementation) {
  Inflater inflater;
  const std::string long_value(300, 'x');  // a length past the 7-bit prefix
  const auto first = inflate(inflater.p, HeaderBlock()
                                             .status("200")
                                             .field("content-type", "application/grpc")
                                             .field("grpc-accept-encoding", "identity")
                                             .bytes());
  ASSERT_TRUE(first);
  EXPECT_EQ(*first, (Fields{{":status", "200"},
                            {"content-type", "application/grpc"},
                            {"grpc-accept-encoding", "identity"}}));
  const auto second =
      inflate(inflater.p, HeaderBlock().status("415").field("grpc-message", long_value).bytes());
  ASSERT_TRUE(second);
  EXPECT_EQ(*second, (Fields{{":status", "415"}, {"grpc-message", long_value}}));
  // Nothing was indexed: the client's table stays empty.
  EXPECT_EQ(nghttp2_hd_inflate_get_dynamic_table_size(inflater.p), 0u);
}

TEST(H2Frames, APeerThatShrankItsHeaderTableHearsOfItInEveryBlock) {
  // A decoder told SETTINGS_HEADER_TABLE_SIZE 0 refuses a block without a size update first.
  Inflater inflater;
  ASSERT_EQ(nghttp2_hd_inflate_change_table_size(inflater.p, 0), 0);
  const auto fields = inflate(inflater.p, HeaderBlock().status("200").bytes());
  ASSERT_TRUE(fields);
  EXPECT_EQ(*fields, (Fields{{":status", "200"}}));
  Inflater strict;
  ASSERT_EQ(nghttp2_hd_inflate_change_table_size(strict.p, 0), 0);
  EXPECT_FALSE(inflate(strict.p, std::string("\x88", 1)));  // the same field, no update: refused
}

TEST(H2Frames, FrameHeadersAreNineBytesAndTheReservedBitIsIgnored) {
  std::string out;
  append_frame_header(out, 0x012345, Type::data, flag::end_stream, 0x80000007u);
  ASSERT_EQ(out, std::string("\x01\x23\x45\x00\x01\x00\x00\x00\x07", 9));
  out[5] = '\x80';  // the reserved bit set by a peer
  const auto h = parse_frame_header(reinterpret_cast<const std::uint8_t*>(out.data()));
  EXPECT_EQ(h.length, 0x012345u);
  EXPECT_EQ(h.type, Type::data);
  EXPECT_EQ(h.flags, flag::end_stream);
  EXPECT_EQ(h.stream_id, 7u);
}

TEST(H2Frames, ControlFramesAreAsTheRfcLaysThemOut) {
  std::string out;
  append_settings(out, {{Setting::max_concurrent_streams, 100}, {Setting::enable_push, 0}});
  EXPECT_EQ(out, std::string("\x00\x00\x0c\x04\x00\x00\x00\x00\x00"
                             "\x00\x03\x00\x00\x00\x64"
                             "\x00\x02\x00\x00\x00\x00", 21));
  out.clear();
  append_settings_ack(out);
  EXPECT_EQ(out, std::string("\x00\x00\x00\x04\x01\x00\x00\x00\x00", 9));
  out.clear();
  append_goaway(out, 5, ErrorCode::enhance_your_calm);
  EXPECT_EQ(out, std::string("\x00\x00\x08\x07\x00\x00\x00\x00\x00"
                             "\x00\x00\x00\x05\x00\x00\x00\x0b", 17));
  out.clear();
  append_rst_stream(out, 3, ErrorCode::refused_stream);
  EXPECT_EQ(out, std::string("\x00\x00\x04\x03\x00\x00\x00\x00\x03\x00\x00\x00\x07", 13));
  out.clear();
  append_window_update(out, 0, 40000);
  EXPECT_EQ(out, std::string("\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x9c\x40", 13));
  out.clear();
  const std::uint8_t opaque[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  append_ping(out, true, opaque);
  EXPECT_EQ(out, std::string("\x00\x00\x08\x06\x01\x00\x00\x00\x00\x01\x02\x03\x04\x05\x06\x07\x08", 17));
  out.clear();
  append_headers(out, 1, HeaderBlock().status("200"), true);
  EXPECT_EQ(out, std::string("\x00\x00\x02\x01\x05\x00\x00\x00\x01\x20\x88", 11));
  EXPECT_EQ(error_name(ErrorCode::enhance_your_calm), "ENHANCE_YOUR_CALM");
  EXPECT_EQ(error_name(static_cast<ErrorCode>(0x99)), "UNKNOWN");
}

}  // namespace
}  // namespace certagent::sidecar::h2
