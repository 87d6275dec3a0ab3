#include "agent/sidecar/h2_frames.h"

#include <array>

namespace certagent::sidecar::h2 {

namespace {

void append_u32(std::string& out, std::uint32_t v) {
  out.push_back(static_cast<char>(v >> 24));
  out.push_back(static_cast<char>(v >> 16));
  out.push_back(static_cast<char>(v >> 8));
  out.push_back(static_cast<char>(v));
}

// RFC 7541 5.1: an integer with an N-bit prefix; `first` holds the bits above the prefix.
void append_int(std::string& out, std::uint8_t first, int prefix_bits, std::size_t value) {
  const std::size_t max = (std::size_t{1} << prefix_bits) - 1;
  if (value < max) {
    out.push_back(static_cast<char>(first | value));
    return;
  }
  out.push_back(static_cast<char>(first | max));
  value -= max;
  while (value >= 128) {
    out.push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out.push_back(static_cast<char>(value));
}

void append_string(std::string& out, std::string_view s) {
  append_int(out, 0x00, 7, s.size());  // H = 0: raw octets
  out.append(s);
}

// Static table names (RFC 7541 Appendix A) this server sends.
constexpr std::size_t kStatusIndex = 8;         // :status 200
constexpr std::size_t kContentTypeIndex = 31;  // content-type

}  // namespace

std::string_view error_name(ErrorCode code) {
  static constexpr std::array<std::string_view, 14> kNames = {
      "NO_ERROR",       "PROTOCOL_ERROR",      "INTERNAL_ERROR",    "FLOW_CONTROL_ERROR",
      "SETTINGS_TIMEOUT", "STREAM_CLOSED",     "FRAME_SIZE_ERROR",  "REFUSED_STREAM",
      "CANCEL",         "COMPRESSION_ERROR",   "CONNECT_ERROR",     "ENHANCE_YOUR_CALM",
      "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED"};
  const auto i = static_cast<std::size_t>(code);
  return i < kNames.size() ? kNames[i] : "UNKNOWN";
}

std::uint32_t read_u32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         std::uint32_t{p[3]};
}

FrameHeader parse_frame_header(const std::uint8_t* p) {
  FrameHeader h;
  h.length = (std::uint32_t{p[0]} << 16) | (std::uint32_t{p[1]} << 8) | std::uint32_t{p[2]};
  h.type = static_cast<Type>(p[3]);
  h.flags = p[4];
  h.stream_id = read_u32(p + 5) & 0x7fffffffu;
  return h;
}

void append_frame_header(std::string& out, std::uint32_t length, Type type, std::uint8_t flags,
                         std::uint32_t stream_id) {
  stream_id &= 0x7fffffffu;
  const char h[kFrameHeaderBytes] = {
      static_cast<char>(length >> 16), static_cast<char>(length >> 8), static_cast<char>(length),
      static_cast<char>(type),         static_cast<char>(flags),       static_cast<char>(stream_id >> 24),
      static_cast<char>(stream_id >> 16), static_cast<char>(stream_id >> 8), static_cast<char>(stream_id)};
  out.append(h, sizeof h);
}

void append_settings(std::string& out,
                     std::initializer_list<std::pair<Setting, std::uint32_t>> settings) {
  append_frame_header(out, static_cast<std::uint32_t>(settings.size() * 6), Type::settings, 0, 0);
  for (const auto& [id, value] : settings) {
    const auto v = static_cast<std::uint16_t>(id);
    out.push_back(static_cast<char>(v >> 8));
    out.push_back(static_cast<char>(v));
    append_u32(out, value);
  }
}

void append_settings_ack(std::string& out) { append_frame_header(out, 0, Type::settings, flag::ack, 0); }

void append_ping(std::string& out, bool ack, const std::uint8_t* opaque8) {
  append_frame_header(out, 8, Type::ping, ack ? flag::ack : 0, 0);
  out.append(reinterpret_cast<const char*>(opaque8), 8);
}

void append_rst_stream(std::string& out, std::uint32_t stream_id, ErrorCode code) {
  append_frame_header(out, 4, Type::rst_stream, 0, stream_id);
  append_u32(out, static_cast<std::uint32_t>(code));
}

void append_goaway(std::string& out, std::uint32_t last_stream_id, ErrorCode code) {
  append_frame_header(out, 8, Type::goaway, 0, 0);
  append_u32(out, last_stream_id & 0x7fffffffu);
  append_u32(out, static_cast<std::uint32_t>(code));
}

void append_window_update(std::string& out, std::uint32_t stream_id, std::uint32_t increment) {
  append_frame_header(out, 4, Type::window_update, 0, stream_id);
  append_u32(out, increment & 0x7fffffffu);
}

HeaderBlock::HeaderBlock() { append_int(bytes_, 0x20, 5, 0); }

HeaderBlock& HeaderBlock::status(std::string_view code) {
  if (code == "200") {
    append_int(bytes_, 0x80, 7, kStatusIndex);
  } else {
    append_int(bytes_, 0x00, 4, kStatusIndex);
    append_string(bytes_, code);
  }
  return *this;
}

HeaderBlock& HeaderBlock::field(std::string_view name, std::string_view value) {
  if (name == "content-type") {
    append_int(bytes_, 0x00, 4, kContentTypeIndex);
  } else {
    bytes_.push_back(0x00);
    append_string(bytes_, name);
  }
  append_string(bytes_, value);
  return *this;
}

void append_headers(std::string& out, std::uint32_t stream_id, const HeaderBlock& block,
                    bool end_stream) {
  const auto& b = block.bytes();
  append_frame_header(out, static_cast<std::uint32_t>(b.size()), Type::headers,
                      static_cast<std::uint8_t>(flag::end_headers | (end_stream ? flag::end_stream : 0)),
                      stream_id);
  out.append(b);
}

}  // namespace certagent::sidecar::h2
