#pragma once
// HPACK (RFC 7541) decoding of request header blocks, one Decoder per HTTP/2 connection.
//
// An idle connection holds its Decoder, so it is small: the static table and the Huffman code
// are shared constants, and the dynamic table is two rings (entry bytes, entry lengths) that
// grow with the table up to its maximum and hold no heap memory while the table is empty.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace certagent::sidecar::hpack {

enum class Error { none, compression, too_large };

class Decoder {
 public:
  // max_table_bytes: the SETTINGS_HEADER_TABLE_SIZE this side advertises (HTTP/2's default
  // 4096): a dynamic table size update above it is a compression error. The table starts at
  // this size. A peer's encoder assumes 4096 until it has our SETTINGS (a client's first
  // requests usually go out before), so to advertise less, still construct with 4096: the
  // peer shrinks the table with a size update once it has the SETTINGS.
  explicit Decoder(std::size_t max_table_bytes = 4096);

  // Decodes one whole header block (a HEADERS payload and its CONTINUATIONs, padding and
  // priority already removed). Fields go to on_field(name, value) in order (views valid only
  // during the call). Once the fields' RFC 9113 size (name + value + 32 each) passes
  // max_list_bytes, no more fields are delivered but the block is still decoded to its end, so
  // the dynamic table stays in step, and the result is too_large (the caller then resets just
  // that stream). compression: anything malformed (index 0 or out of range, bad or over-long
  // Huffman code, padding longer than 7 bits or not all ones, EOS in a string, integer overflow
  // past 2^32, truncated block, a size update not at the start of the block or above the
  // maximum); after it the connection must end (COMPRESSION_ERROR), the decoder is unusable
  // (every later call returns compression).
  Error decode(std::string_view block, std::size_t max_list_bytes,
               const std::function<void(std::string_view, std::string_view)>& on_field);

  // RFC 7541 size (sum of name + value + 32) of the dynamic table now.
  std::size_t table_bytes() const;
  // The dynamic table's current maximum size (the last size update, else max_table_bytes).
  std::size_t table_max_bytes() const { return max_size_; }
  // Entries in the dynamic table, and entry i (0 the newest, HPACK index 62 + i) as a copy.
  std::size_t entry_count() const { return entries_count_; }
  std::pair<std::string, std::string> entry(std::size_t i) const;
  // Heap memory the decoder holds between calls (0 while the dynamic table is empty).
  std::size_t heap_bytes() const;

 private:
  // Where an entry's bytes (name, then value) start in the byte ring, and their lengths.
  struct Entry {
    std::uint32_t offset;
    std::uint32_t name_len;
    std::uint32_t value_len;
  };

  Error decode_block(std::string_view block, std::size_t max_list_bytes,
                     const std::function<void(std::string_view, std::string_view)>& on_field);
  // Entry i's name and value; a part that wraps around the ring is copied into its scratch.
  std::string_view name_of(const Entry& e, std::string& scratch) const;
  std::string_view value_of(const Entry& e, std::string& scratch) const;
  std::string_view ring_view(std::size_t offset, std::size_t len, std::string& scratch) const;
  const Entry& entry_at(std::size_t i) const;
  // name and value must not point into the table (insert may evict or move it).
  void insert(std::string_view name, std::string_view value);
  void evict_oldest();
  void set_max_size(std::uint32_t size);
  void release();
  void resize_bytes(std::size_t cap);
  void grow_entries();

  std::unique_ptr<char[]> bytes_;     // ring of entry bytes, oldest first
  std::unique_ptr<Entry[]> entries_;  // ring of entries, oldest first; capacity a power of two
  std::uint32_t bytes_cap_ = 0;
  std::uint32_t bytes_head_ = 0;  // offset of the oldest entry's first byte
  std::uint32_t bytes_used_ = 0;
  std::uint32_t entries_cap_ = 0;
  std::uint32_t entries_head_ = 0;
  std::uint32_t entries_count_ = 0;
  std::uint32_t max_table_bytes_;
  std::uint32_t max_size_;
  std::uint64_t size_ = 0;  // RFC 7541 size, <= max_size_
  bool broken_ = false;
};

}  // namespace certagent::sidecar::hpack
