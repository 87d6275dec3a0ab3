// nginx's error log as the nginx reloader watches it during a reload (ErrorLogWatch on a real
// file): anyone who can make nginx log a line (a client's request URI is logged with errors)
// writes into it. The input's segments (separated by "\n=====\n") are: the log before the
// reload, then what is appended between two checks; a segment starting with byte 0x01 is a
// rotation (the file truncated, checked, then written anew).
// Invariants: a reported line is a whole line written after start() whose level field is
// [emerg] (nginx's "yyyy/mm/dd hh:mm:ss [emerg] pid#tid: " form, not "[emerg]" in a message),
// at most 400 bytes, without control characters; the report is sticky; when every line is short
// enough to hold, the first such line is reported.

#include "reloaders/nginx_reloader.h"
#include "tests/fuzz/fuzz_util.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <optional>

namespace fs = std::filesystem;
using namespace certagent;

namespace {

constexpr std::string_view kSeparator = "\n=====\n";
constexpr std::size_t kMaxLine = 400;
constexpr std::size_t kHeldLine = 1600;  // the watch's limit for a line not ended yet

fs::path dir;
fs::path log_path;

void remove_dir() {
  std::error_code ec;
  fs::remove_all(dir, ec);
}

void write_at_end(std::string_view bytes) {
  const int fd = ::open(log_path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  FUZZ_REQUIRE(fd >= 0, "open log");
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    FUZZ_REQUIRE(n > 0, "write log");
    done += static_cast<std::size_t>(n);
  }
  ::close(fd);
}

// nginx's own form of an emergency line, checked here independently of the reloader's code.
bool emerg_form(std::string_view line) {
  auto digit = [&](std::size_t i) { return line[i] >= '0' && line[i] <= '9'; };
  if (line.size() < 32) return false;
  for (std::size_t i : {0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18})
    if (!digit(i)) return false;
  if (line[4] != '/' || line[7] != '/' || line[10] != ' ' || line[13] != ':' || line[16] != ':') return false;
  if (line.substr(19, 9) != " [emerg] ") return false;
  std::size_t i = 28;
  while (i < line.size() && digit(i)) ++i;
  return i > 28 && i < line.size() && line[i] == '#';
}

std::string cleaned(std::string_view line) {
  std::string out(line.substr(0, kMaxLine));
  for (char& c : out)
    if (static_cast<unsigned char>(c) < 0x20) c = ' ';
  return out;
}

// The log after start() as the watch must read it: its whole lines, and whether one was cut.
struct Expected {
  std::string stream;        // bytes after start() (after the last rotation)
  bool starts_a_line{true};  // the stream's first byte begins a line
  bool long_line{false};     // a line longer than the watch holds
  std::vector<std::string> emerg_lines() const {
    std::vector<std::string> out;
    std::size_t pos = 0;
    bool first = true;
    for (;;) {
      const std::size_t nl = stream.find('\n', pos);
      if (nl == std::string::npos) break;
      const std::string_view line(stream.data() + pos, nl - pos);
      if (!(first && !starts_a_line) && emerg_form(line)) out.push_back(cleaned(line));
      first = false;
      pos = nl + 1;
    }
    return out;
  }
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::quiet_logging();
  std::string d = (fs::temp_directory_path() / "certagent-fuzz-nginx-log-XXXXXX").string();
  FUZZ_REQUIRE(::mkdtemp(d.data()) != nullptr, "mkdtemp");
  dir = d;
  log_path = dir / "error.log";
  std::atexit(remove_dir);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > 64 * 1024) return 0;
  std::vector<std::string_view> segments;
  std::string_view rest = fuzz::text_of(data, size);
  for (;;) {
    const std::size_t sep = rest.find(kSeparator);
    segments.push_back(rest.substr(0, sep));
    if (sep == std::string_view::npos) break;
    rest.remove_prefix(sep + kSeparator.size());
  }

  std::error_code ec;
  fs::remove(log_path, ec);
  write_at_end(segments[0]);
  reloaders::ErrorLogWatch watch(log_path);
  watch.start();
  Expected expected;
  expected.starts_a_line = segments[0].empty() || segments[0].back() == '\n';
  std::optional<std::string> reported;
  auto check = [&] {
    auto found = watch.check();
    if (reported) {
      FUZZ_REQUIRE(found == reported, "a report that changed");
      return;
    }
    if (!found) return;
    FUZZ_REQUIRE(found->size() <= kMaxLine, "a report longer than 400 bytes");
    for (char c : *found) FUZZ_REQUIRE(static_cast<unsigned char>(c) >= 0x20, "a control character in a report");
    const auto lines = expected.emerg_lines();
    FUZZ_REQUIRE(std::find(lines.begin(), lines.end(), *found) != lines.end(),
                 "a report that is no [emerg] line written after start(): " + *found);
    reported = found;
  };
  // Lines the watch may have to drop: longer than it holds while not ended.
  auto note_long_lines = [&] {
    std::size_t start = 0;
    for (;;) {
      const std::size_t nl = expected.stream.find('\n', start);
      const std::size_t end = nl == std::string::npos ? expected.stream.size() : nl;
      if (end - start > kHeldLine) expected.long_line = true;
      if (nl == std::string::npos) break;
      start = nl + 1;
    }
  };
  for (std::size_t i = 1; i < segments.size(); ++i) {
    std::string_view seg = segments[i];
    if (!seg.empty() && seg[0] == '\x01') {
      seg.remove_prefix(1);
      FUZZ_REQUIRE(::truncate(log_path.c_str(), 0) == 0, "truncate");
      if (!reported) {  // rotated before anything was reported: only the new file counts
        check();
        if (!reported) expected = Expected{};
      }
    }
    write_at_end(seg);
    if (!reported) expected.stream += seg;
    note_long_lines();
    check();
  }
  check();
  if (!expected.long_line && !expected.stream.empty()) {
    const auto lines = expected.emerg_lines();
    if (!lines.empty()) {
      FUZZ_REQUIRE(reported.has_value(), "an [emerg] line was not reported: " + lines.front());
      FUZZ_REQUIRE(*reported == lines.front(), "not the first [emerg] line: " + *reported);
    }
  }
  return 0;
}
