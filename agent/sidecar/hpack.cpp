// HPACK decoding (RFC 7541): static table, dynamic table, integers, strings, Huffman code.

#include "agent/sidecar/hpack.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>

namespace certagent::sidecar::hpack {
namespace {

struct StaticEntry {
  std::string_view name;
  std::string_view value;
};

// RFC 7541 Appendix A; index 1 is kStatic[0].
constexpr std::array<StaticEntry, 61> kStatic{{
    {":authority", ""},
    {":method", "GET"},
    {":method", "POST"},
    {":path", "/"},
    {":path", "/index.html"},
    {":scheme", "http"},
    {":scheme", "https"},
    {":status", "200"},
    {":status", "204"},
    {":status", "206"},
    {":status", "304"},
    {":status", "400"},
    {":status", "404"},
    {":status", "500"},
    {"accept-charset", ""},
    {"accept-encoding", "gzip, deflate"},
    {"accept-language", ""},
    {"accept-ranges", ""},
    {"accept", ""},
    {"access-control-allow-origin", ""},
    {"age", ""},
    {"allow", ""},
    {"authorization", ""},
    {"cache-control", ""},
    {"content-disposition", ""},
    {"content-encoding", ""},
    {"content-language", ""},
    {"content-length", ""},
    {"content-location", ""},
    {"content-range", ""},
    {"content-type", ""},
    {"cookie", ""},
    {"date", ""},
    {"etag", ""},
    {"expect", ""},
    {"expires", ""},
    {"from", ""},
    {"host", ""},
    {"if-match", ""},
    {"if-modified-since", ""},
    {"if-none-match", ""},
    {"if-range", ""},
    {"if-unmodified-since", ""},
    {"last-modified", ""},
    {"link", ""},
    {"location", ""},
    {"max-forwards", ""},
    {"proxy-authenticate", ""},
    {"proxy-authorization", ""},
    {"range", ""},
    {"referer", ""},
    {"refresh", ""},
    {"retry-after", ""},
    {"server", ""},
    {"set-cookie", ""},
    {"strict-transport-security", ""},
    {"transfer-encoding", ""},
    {"user-agent", ""},
    {"vary", ""},
    {"via", ""},
    {"www-authenticate", ""},
}};

// RFC 7541 Appendix B, the "len" column: the code length in bits of each symbol (byte values,
// then EOS = 256). The code is canonical (codes of one length are consecutive, in symbol order,
// and each length's first code follows the previous length's last), so the lengths alone define
// it; the checks below and the differential test against libnghttp2 hold it to that.
constexpr std::array<std::uint8_t, 257> kCodeLength{
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,  //   0- 15
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,  //  16- 31
    6,  10, 10, 12, 13, 6,  8,  11, 10, 10, 8,  11, 8,  6,  6,  6,   //  32- 47  ' '..'/'
    5,  5,  5,  6,  6,  6,  6,  6,  6,  6,  7,  8,  15, 6,  12, 10,  //  48- 63  '0'..'?'
    13, 6,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,   //  64- 79  '@'..'O'
    7,  7,  7,  7,  7,  7,  7,  7,  8,  7,  8,  13, 19, 13, 14, 6,   //  80- 95  'P'..'_'
    15, 5,  6,  5,  6,  5,  6,  6,  6,  5,  7,  7,  6,  6,  6,  5,   //  96-111  '`'..'o'
    6,  7,  6,  5,  5,  6,  7,  7,  7,  7,  7,  15, 11, 14, 13, 28,  // 112-127  'p'..DEL
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,  // 128-143
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,  // 144-159
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,  // 160-175
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,  // 176-191
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,  // 192-207
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,  // 208-223
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,  // 224-239
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,  // 240-255
    30,                                                              // 256 EOS
};
constexpr unsigned kEos = 256;
constexpr unsigned kMaxCodeLength = 30;

// The canonical decoding tables: how many codes each length has, and the symbols in code order
// (by length, then symbol).
struct Canonical {
  std::array<std::uint16_t, kMaxCodeLength + 1> count{};
  std::array<std::uint16_t, 257> symbol{};
};

constexpr Canonical make_canonical() {
  Canonical c;
  for (unsigned s = 0; s < kCodeLength.size(); ++s) ++c.count[kCodeLength[s]];
  unsigned n = 0;
  for (unsigned len = 1; len <= kMaxCodeLength; ++len)
    for (unsigned s = 0; s < kCodeLength.size(); ++s)
      if (kCodeLength[s] == len) c.symbol[n++] = static_cast<std::uint16_t>(s);
  return c;
}
constexpr Canonical kCanonical = make_canonical();

// A complete prefix code (Kraft sum exactly 1): every bit string is a sequence of codes, which
// a single mistyped length breaks. Lengths 5..30 as in the appendix, and EOS the last code of
// the longest length, i.e. thirty 1 bits, which makes "padding is a prefix of EOS" mean "all
// ones".
constexpr bool code_is_complete() {
  std::uint64_t kraft = 0;
  for (auto len : kCodeLength) {
    if (len < 5 || len > kMaxCodeLength) return false;
    kraft += std::uint64_t{1} << (kMaxCodeLength - len);
  }
  return kraft == std::uint64_t{1} << kMaxCodeLength;
}
static_assert(code_is_complete(), "RFC 7541 Appendix B code lengths mistyped");
static_assert(kCodeLength[kEos] == kMaxCodeLength && kCanonical.symbol[256] == kEos);
static_assert(kCanonical.count[5] == 10 && kCanonical.count[30] == 4);

// Decodes a Huffman-coded string, appending to *out unless out is null (then it only checks).
// Canonical decoding one bit at a time: at most 30 steps per symbol, no per-decoder state.
bool huffman_decode(std::string_view in, std::string* out) {
  std::uint32_t code = 0;   // the bits read since the last symbol
  std::uint32_t first = 0;  // the first code of length len
  unsigned index = 0;       // kCanonical.symbol index of that first code
  unsigned len = 0;
  for (const char ch : in) {
    const auto byte = static_cast<unsigned char>(ch);
    for (int bit = 7; bit >= 0; --bit) {
      code = (code << 1) | ((byte >> bit) & 1u);
      ++len;
      const std::uint32_t count = kCanonical.count[len];
      if (code - first < count) {  // unsigned: code < first wraps and fails too
        const unsigned sym = kCanonical.symbol[index + (code - first)];
        if (sym == kEos) return false;
        if (out) out->push_back(static_cast<char>(sym));
        code = first = 0;
        index = len = 0;
        continue;
      }
      if (len == kMaxCodeLength) return false;  // unreachable: the code is complete
      index += count;
      first = (first + count) << 1;
    }
  }
  // Padding: fewer than 8 bits, all ones (the most significant bits of EOS).
  return len <= 7 && code == (std::uint32_t{1} << len) - 1;
}

// Reads the block front to back; every read checks the bytes are there.
class Reader {
 public:
  explicit Reader(std::string_view block) : in_(block) {}
  bool done() const { return at_ == in_.size(); }
  unsigned char peek() const { return static_cast<unsigned char>(in_[at_]); }

  // RFC 7541 5.1 with an N-bit prefix; values up to 2^32 - 1.
  bool integer(unsigned prefix_bits, std::uint32_t& out) {
    if (done()) return false;
    const std::uint32_t max_prefix = (1u << prefix_bits) - 1;
    std::uint64_t value = static_cast<unsigned char>(in_[at_++]) & max_prefix;
    if (value < max_prefix) {
      out = static_cast<std::uint32_t>(value);
      return true;
    }
    for (unsigned shift = 0;; shift += 7) {
      // Past 2^32 by the fifth continuation octet at the latest (shift 28), so a run of
      // 0x80 octets ends too.
      if (done() || shift > 28) return false;
      const auto b = static_cast<unsigned char>(in_[at_++]);
      value += std::uint64_t{b & 0x7fu} << shift;
      if (value > std::numeric_limits<std::uint32_t>::max()) return false;
      if (!(b & 0x80)) break;
    }
    out = static_cast<std::uint32_t>(value);
    return true;
  }

  // RFC 7541 5.2. A raw string is a view of the block; a Huffman-coded one is decoded into
  // scratch when `materialise`, else only checked (and out is left empty).
  bool string(std::string& scratch, bool materialise, std::string_view& out) {
    if (done()) return false;
    const bool huffman = peek() & 0x80;
    std::uint32_t len = 0;
    if (!integer(7, len) || len > in_.size() - at_) return false;
    const std::string_view bytes = in_.substr(at_, len);
    at_ += len;
    if (!huffman) {
      out = bytes;
      return true;
    }
    scratch.clear();
    if (!materialise) {
      out = {};
      return huffman_decode(bytes, nullptr);
    }
    scratch.reserve(bytes.size() * 8 / 5);  // the shortest code has 5 bits
    if (!huffman_decode(bytes, &scratch)) return false;
    out = scratch;
    return true;
  }

 private:
  std::string_view in_;
  std::size_t at_ = 0;
};

constexpr std::uint64_t kEntryOverhead = 32;
constexpr std::size_t kStaticCount = kStatic.size();

}  // namespace

Decoder::Decoder(std::size_t max_table_bytes)
    : max_table_bytes_(static_cast<std::uint32_t>(
          std::min<std::size_t>(max_table_bytes, std::numeric_limits<std::uint32_t>::max()))),
      max_size_(max_table_bytes_) {}

std::size_t Decoder::table_bytes() const { return static_cast<std::size_t>(size_); }

std::size_t Decoder::heap_bytes() const {
  return std::size_t{bytes_cap_} + std::size_t{entries_cap_} * sizeof(Entry);
}

Error Decoder::decode(std::string_view block, std::size_t max_list_bytes,
                      const std::function<void(std::string_view, std::string_view)>& on_field) {
  if (broken_) return Error::compression;
  const Error e = decode_block(block, max_list_bytes, on_field);
  if (e == Error::compression) {
    broken_ = true;
    release();
  }
  return e;
}

Error Decoder::decode_block(
    std::string_view block, std::size_t max_list_bytes,
    const std::function<void(std::string_view, std::string_view)>& on_field) {
  Reader r(block);
  bool fields_seen = false;  // size updates only before the first field
  bool too_large = false;
  std::size_t list_bytes = 0;
  std::string name_scratch;
  std::string value_scratch;

  // Counts the field against the limit and hands it on, until the limit is passed.
  auto deliver = [&](std::string_view name, std::string_view value) {
    if (too_large) return;
    const std::size_t size = name.size() + value.size() + kEntryOverhead;
    if (size > max_list_bytes - list_bytes) {
      too_large = true;
      return;
    }
    list_bytes += size;
    on_field(name, value);
  };

  while (!r.done()) {
    const unsigned char first = r.peek();
    std::uint32_t index = 0;

    if (first & 0x80) {  // 6.1 indexed header field
      if (!r.integer(7, index) || index == 0) return Error::compression;
      fields_seen = true;
      if (index <= kStaticCount) {
        deliver(kStatic[index - 1].name, kStatic[index - 1].value);
        continue;
      }
      const std::size_t i = index - kStaticCount - 1;
      if (i >= entries_count_) return Error::compression;
      if (too_large) continue;  // nothing to copy for a field that is not delivered
      const Entry& e = entry_at(i);
      deliver(name_of(e, name_scratch), value_of(e, value_scratch));
      continue;
    }

    if ((first & 0xe0) == 0x20) {  // 6.3 dynamic table size update
      if (fields_seen || !r.integer(5, index) || index > max_table_bytes_)
        return Error::compression;
      set_max_size(index);
      continue;
    }

    // 6.2 literal: with incremental indexing (01), without indexing (0000), never indexed
    // (0001). The last two differ only for intermediaries re-encoding the field.
    const bool indexing = (first & 0xc0) == 0x40;
    if (!r.integer(indexing ? 6 : 4, index)) return Error::compression;
    fields_seen = true;
    // An indexed entry's bytes are needed if the field is delivered or copied into the table.
    const bool materialise = indexing || !too_large;
    std::string_view name;
    if (index == 0) {
      if (!r.string(name_scratch, materialise, name)) return Error::compression;
    } else if (index <= kStaticCount) {
      name = kStatic[index - 1].name;
    } else {
      const std::size_t i = index - kStaticCount - 1;
      if (i >= entries_count_) return Error::compression;
      if (materialise) {
        // A copy: inserting may evict the very entry the name comes from (RFC 7541 4.4).
        const Entry& e = entry_at(i);
        const std::string_view n = name_of(e, name_scratch);
        if (n.data() != name_scratch.data()) name_scratch.assign(n);
        name = name_scratch;
      }
    }
    std::string_view value;
    if (!r.string(value_scratch, materialise, value)) return Error::compression;
    deliver(name, value);
    if (indexing) insert(name, value);
  }
  return too_large ? Error::too_large : Error::none;
}

const Decoder::Entry& Decoder::entry_at(std::size_t i) const {
  return entries_[(entries_head_ + entries_count_ - 1 - i) & (entries_cap_ - 1)];
}

std::string_view Decoder::ring_view(std::size_t offset, std::size_t len,
                                    std::string& scratch) const {
  if (len == 0) return {};
  if (offset + len <= bytes_cap_) return {bytes_.get() + offset, len};
  const std::size_t head = bytes_cap_ - offset;
  scratch.assign(bytes_.get() + offset, head);
  scratch.append(bytes_.get(), len - head);
  return scratch;
}

std::string_view Decoder::name_of(const Entry& e, std::string& scratch) const {
  return ring_view(e.offset, e.name_len, scratch);
}

std::string_view Decoder::value_of(const Entry& e, std::string& scratch) const {
  if (e.value_len == 0) return {};
  return ring_view((std::size_t{e.offset} + e.name_len) % bytes_cap_, e.value_len, scratch);
}

std::pair<std::string, std::string> Decoder::entry(std::size_t i) const {
  if (i >= entries_count_) return {};
  std::string name_scratch;
  std::string value_scratch;
  const Entry& e = entry_at(i);
  return {std::string(name_of(e, name_scratch)), std::string(value_of(e, value_scratch))};
}

void Decoder::insert(std::string_view name, std::string_view value) {
  const std::uint64_t size = std::uint64_t{name.size()} + value.size() + kEntryOverhead;
  if (size > max_size_) {  // 4.4: an entry larger than the table empties it and is not added
    release();
    return;
  }
  while (size_ + size > max_size_) evict_oldest();
  // Fits now: name + value <= max_size_ - 32 * entries, so both fit in 32 bits.
  const auto len = static_cast<std::uint32_t>(name.size() + value.size());
  if (std::size_t{bytes_used_} + len > bytes_cap_) {
    // Grow geometrically up to the table's maximum, which always holds the entries' bytes.
    const std::size_t need = std::size_t{bytes_used_} + len;
    const std::size_t grown = std::max<std::size_t>({need, std::size_t{bytes_cap_} * 2, 64});
    resize_bytes(std::min<std::size_t>(grown, std::max<std::size_t>(need, max_size_)));
  }
  if (entries_count_ == entries_cap_) grow_entries();

  const std::uint32_t offset =
      bytes_cap_ == 0 ? 0
                      : static_cast<std::uint32_t>((std::size_t{bytes_head_} + bytes_used_) %
                                                   bytes_cap_);
  std::size_t at = offset;
  for (const std::string_view part : {name, value}) {
    std::size_t done = 0;
    while (done < part.size()) {  // at most two pieces: up to the ring's end, then from 0
      const std::size_t n = std::min(part.size() - done, std::size_t{bytes_cap_} - at);
      std::memcpy(bytes_.get() + at, part.data() + done, n);
      done += n;
      at = (at + n) % bytes_cap_;
    }
  }
  entries_[(entries_head_ + entries_count_) & (entries_cap_ - 1)] = {
      offset, static_cast<std::uint32_t>(name.size()), static_cast<std::uint32_t>(value.size())};
  ++entries_count_;
  bytes_used_ += len;
  size_ += size;
}

void Decoder::evict_oldest() {
  const Entry& e = entries_[entries_head_];
  const std::uint32_t len = e.name_len + e.value_len;
  size_ -= len + kEntryOverhead;
  bytes_used_ -= len;
  if (bytes_cap_ != 0)
    bytes_head_ = static_cast<std::uint32_t>((std::size_t{bytes_head_} + len) % bytes_cap_);
  entries_head_ = (entries_head_ + 1) & (entries_cap_ - 1);
  --entries_count_;
}

void Decoder::set_max_size(std::uint32_t size) {
  max_size_ = size;
  while (size_ > max_size_) evict_oldest();
  if (entries_count_ == 0) {
    release();
  } else if (bytes_cap_ > max_size_) {
    resize_bytes(max_size_);  // the entries' bytes are below max_size_ - 32
  }
}

void Decoder::release() {
  bytes_.reset();
  entries_.reset();
  bytes_cap_ = bytes_head_ = bytes_used_ = 0;
  entries_cap_ = entries_head_ = entries_count_ = 0;
  size_ = 0;
}

// Moves the ring's bytes to a new buffer of `cap` (>= bytes_used_) bytes, oldest at offset 0.
void Decoder::resize_bytes(std::size_t cap) {
  std::unique_ptr<char[]> fresh;
  if (cap != 0) fresh = std::make_unique_for_overwrite<char[]>(cap);
  if (bytes_used_ != 0) {  // at most two pieces: up to the ring's end, then from 0
    const std::size_t first = std::min<std::size_t>(bytes_used_, bytes_cap_ - bytes_head_);
    std::memcpy(fresh.get(), bytes_.get() + bytes_head_, first);
    std::memcpy(fresh.get() + first, bytes_.get(), bytes_used_ - first);
  }
  if (bytes_cap_ != 0) {
    for (std::uint32_t k = 0; k < entries_count_; ++k) {
      Entry& e = entries_[(entries_head_ + k) & (entries_cap_ - 1)];
      e.offset = static_cast<std::uint32_t>(
          (std::size_t{e.offset} + bytes_cap_ - bytes_head_) % bytes_cap_);
    }
  }
  bytes_ = std::move(fresh);
  bytes_cap_ = static_cast<std::uint32_t>(cap);
  bytes_head_ = 0;
}

void Decoder::grow_entries() {
  const std::uint32_t cap = entries_cap_ == 0 ? 8 : entries_cap_ * 2;
  auto fresh = std::make_unique_for_overwrite<Entry[]>(cap);
  for (std::uint32_t k = 0; k < entries_count_; ++k)
    fresh[k] = entries_[(entries_head_ + k) & (entries_cap_ - 1)];
  entries_ = std::move(fresh);
  entries_cap_ = cap;
  entries_head_ = 0;
}

}  // namespace certagent::sidecar::hpack
