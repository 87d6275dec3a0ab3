#pragma once
// HTTP/2 (RFC 9113) wire pieces the sidecar API's server needs: frame headers, the frames it
// sends, and the header blocks of its responses. Responses use HPACK literals without indexing
// (RFC 7541 6.2.2) and no Huffman: the encoder keeps no dynamic table, so a connection holds no
// encoder state at all.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <initializer_list>
#include <utility>

namespace certagent::sidecar::h2 {

inline constexpr std::string_view kPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
inline constexpr std::size_t kFrameHeaderBytes = 9;
// SETTINGS_MAX_FRAME_SIZE's floor and default: neither side may send more in a frame unless told.
inline constexpr std::uint32_t kDefaultMaxFrame = 16384;
inline constexpr std::int64_t kDefaultWindow = 65535;
inline constexpr std::int64_t kMaxWindow = 0x7fffffff;

enum class Type : std::uint8_t {
  data = 0,
  headers = 1,
  priority = 2,
  rst_stream = 3,
  settings = 4,
  push_promise = 5,
  ping = 6,
  goaway = 7,
  window_update = 8,
  continuation = 9,
};

namespace flag {
inline constexpr std::uint8_t end_stream = 0x1;
inline constexpr std::uint8_t ack = 0x1;
inline constexpr std::uint8_t end_headers = 0x4;
inline constexpr std::uint8_t padded = 0x8;
inline constexpr std::uint8_t priority = 0x20;
}  // namespace flag

enum class ErrorCode : std::uint32_t {
  no_error = 0x0,
  protocol_error = 0x1,
  internal_error = 0x2,
  flow_control_error = 0x3,
  settings_timeout = 0x4,
  stream_closed = 0x5,
  frame_size_error = 0x6,
  refused_stream = 0x7,
  cancel = 0x8,
  compression_error = 0x9,
  connect_error = 0xa,
  enhance_your_calm = 0xb,
  inadequate_security = 0xc,
  http_1_1_required = 0xd,
};

// The RFC's name of a code ("PROTOCOL_ERROR"), or "UNKNOWN".
std::string_view error_name(ErrorCode code);

enum class Setting : std::uint16_t {
  header_table_size = 1,
  enable_push = 2,
  max_concurrent_streams = 3,
  initial_window_size = 4,
  max_frame_size = 5,
  max_header_list_size = 6,
};

struct FrameHeader {
  std::uint32_t length{0};
  Type type{Type::data};
  std::uint8_t flags{0};
  std::uint32_t stream_id{0};  // the reserved bit cleared
};

// p points at 9 bytes.
FrameHeader parse_frame_header(const std::uint8_t* p);
std::uint32_t read_u32(const std::uint8_t* p);

// Appends one frame header.
void append_frame_header(std::string& out, std::uint32_t length, Type type, std::uint8_t flags,
                         std::uint32_t stream_id);
void append_settings(std::string& out, std::initializer_list<std::pair<Setting, std::uint32_t>> settings);
void append_settings_ack(std::string& out);
void append_ping(std::string& out, bool ack, const std::uint8_t* opaque8);
void append_rst_stream(std::string& out, std::uint32_t stream_id, ErrorCode code);
void append_goaway(std::string& out, std::uint32_t last_stream_id, ErrorCode code);
void append_window_update(std::string& out, std::uint32_t stream_id, std::uint32_t increment);

// Header blocks. Each starts with a dynamic table size update to 0 (RFC 7541 6.3): we index
// nothing, and a peer that lowered SETTINGS_HEADER_TABLE_SIZE may insist on hearing of it.
class HeaderBlock {
 public:
  HeaderBlock();
  // ":status: 200" is one byte (static index 8); others are literals with an indexed name.
  HeaderBlock& status(std::string_view code);
  HeaderBlock& field(std::string_view name, std::string_view value);
  const std::string& bytes() const { return bytes_; }

 private:
  std::string bytes_;
};

// A HEADERS frame (END_HEADERS set) around a block that fits one frame.
void append_headers(std::string& out, std::uint32_t stream_id, const HeaderBlock& block,
                    bool end_stream);

}  // namespace certagent::sidecar::h2
