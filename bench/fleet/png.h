#pragma once
// A minimal PNG writer for the fleet charts: 1-bit greyscale, zlib "stored" blocks (no
// compression library needed; 1-bit keeps an 800x260 chart near 26 KiB).

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace certagent::bench {

// A black-on-white bitmap.
class Bitmap {
 public:
  Bitmap(int width, int height);
  int width() const { return width_; }
  int height() const { return height_; }
  void set(int x, int y);  // paints black; out-of-range points are ignored
  void hline(int x0, int x1, int y, int dash = 0);
  void vline(int x, int y0, int y1);
  // Writes the bitmap as PNG; false when the file cannot be written.
  bool write_png(const std::filesystem::path& path) const;

 private:
  int width_;
  int height_;
  std::vector<std::uint8_t> black_;  // one byte per pixel, 1 = black
};

std::uint32_t crc32(const std::uint8_t* data, std::size_t size, std::uint32_t crc = 0);
std::uint32_t adler32(const std::uint8_t* data, std::size_t size);
// The zlib stream of `data` in stored (uncompressed) deflate blocks.
std::vector<std::uint8_t> zlib_stored(const std::vector<std::uint8_t>& data);

}  // namespace certagent::bench
