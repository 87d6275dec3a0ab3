#include "bench/fleet/png.h"

#include <array>
#include <fstream>

namespace certagent::bench {

namespace {

void put_be32(std::vector<std::uint8_t>& out, std::uint32_t v) {
  out.push_back(static_cast<std::uint8_t>(v >> 24));
  out.push_back(static_cast<std::uint8_t>(v >> 16));
  out.push_back(static_cast<std::uint8_t>(v >> 8));
  out.push_back(static_cast<std::uint8_t>(v));
}

void put_chunk(std::vector<std::uint8_t>& out, const char type[4],
               const std::vector<std::uint8_t>& data) {
  put_be32(out, static_cast<std::uint32_t>(data.size()));
  const std::size_t type_at = out.size();
  out.insert(out.end(), type, type + 4);
  out.insert(out.end(), data.begin(), data.end());
  // The CRC covers the type and the data, not the length.
  put_be32(out, crc32(out.data() + type_at, 4 + data.size()));
}

}  // namespace

std::uint32_t crc32(const std::uint8_t* data, std::size_t size, std::uint32_t crc) {
  static const auto table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t n = 0; n < 256; ++n) {
      std::uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[n] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (std::size_t i = 0; i < size; ++i) crc = table[(crc ^ data[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

std::uint32_t adler32(const std::uint8_t* data, std::size_t size) {
  std::uint32_t a = 1, b = 0;
  for (std::size_t i = 0; i < size; ++i) {
    a = (a + data[i]) % 65521;
    b = (b + a) % 65521;
  }
  return (b << 16) | a;
}

std::vector<std::uint8_t> zlib_stored(const std::vector<std::uint8_t>& data) {
  std::vector<std::uint8_t> out{0x78, 0x01};  // deflate, 32 KiB window, no dictionary
  std::size_t pos = 0;
  do {
    const std::size_t len = std::min<std::size_t>(65535, data.size() - pos);
    const bool last = pos + len == data.size();
    out.push_back(last ? 1 : 0);  // BFINAL, BTYPE=00 (stored)
    out.push_back(static_cast<std::uint8_t>(len));
    out.push_back(static_cast<std::uint8_t>(len >> 8));
    out.push_back(static_cast<std::uint8_t>(~len));
    out.push_back(static_cast<std::uint8_t>(~len >> 8));
    out.insert(out.end(), data.begin() + static_cast<std::ptrdiff_t>(pos),
               data.begin() + static_cast<std::ptrdiff_t>(pos + len));
    pos += len;
  } while (pos < data.size());
  put_be32(out, adler32(data.data(), data.size()));
  return out;
}

Bitmap::Bitmap(int width, int height)
    : width_(width), height_(height), black_(static_cast<std::size_t>(width * height), 0) {}

void Bitmap::set(int x, int y) {
  if (x < 0 || y < 0 || x >= width_ || y >= height_) return;
  black_[static_cast<std::size_t>(y * width_ + x)] = 1;
}

void Bitmap::hline(int x0, int x1, int y, int dash) {
  for (int x = x0; x <= x1; ++x)
    if (dash == 0 || (x / dash) % 2 == 0) set(x, y);
}

void Bitmap::vline(int x, int y0, int y1) {
  if (y0 > y1) std::swap(y0, y1);
  for (int y = y0; y <= y1; ++y) set(x, y);
}

bool Bitmap::write_png(const std::filesystem::path& path) const {
  // Rows: a filter byte (0, none) and the pixels packed 8 per byte, MSB first, 1 = white.
  const int row_bytes = (width_ + 7) / 8;
  std::vector<std::uint8_t> raw;
  raw.reserve(static_cast<std::size_t>(height_ * (row_bytes + 1)));
  for (int y = 0; y < height_; ++y) {
    raw.push_back(0);
    for (int bx = 0; bx < row_bytes; ++bx) {
      std::uint8_t byte = 0;
      for (int bit = 0; bit < 8; ++bit) {
        const int x = bx * 8 + bit;
        const bool white = x >= width_ || !black_[static_cast<std::size_t>(y * width_ + x)];
        if (white) byte |= static_cast<std::uint8_t>(0x80 >> bit);
      }
      raw.push_back(byte);
    }
  }
  std::vector<std::uint8_t> png{0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  std::vector<std::uint8_t> ihdr;
  put_be32(ihdr, static_cast<std::uint32_t>(width_));
  put_be32(ihdr, static_cast<std::uint32_t>(height_));
  ihdr.insert(ihdr.end(), {1, 0, 0, 0, 0});  // bit depth 1, greyscale, deflate, filter, no interlace
  put_chunk(png, "IHDR", ihdr);
  put_chunk(png, "IDAT", zlib_stored(raw));
  put_chunk(png, "IEND", {});
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(png.data()), static_cast<std::streamsize>(png.size()));
  return static_cast<bool>(f);
}

}  // namespace certagent::bench
