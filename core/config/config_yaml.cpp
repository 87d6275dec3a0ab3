#include "core/config/config_yaml.h"

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <set>
#include <tuple>

namespace certagent::config {

namespace {

// Enough errors to fix a whole file in one go, not so many that the first ones scroll away.
constexpr std::size_t kMaxErrors = 50;
constexpr std::size_t kMaxQuoted = 60;

bool has_mark(const YAML::Node& node) {
  // A default-constructed Node (no key for list items) has no position.
  return node.IsDefined() && !node.Mark().is_null();
}

std::string join(const std::vector<std::string_view>& words) {
  std::string out;
  for (auto w : words) {
    if (!out.empty()) out += ", ";
    out += w;
  }
  return out;
}

}  // namespace

bool valid_url(std::string_view s, bool https_only) {
  std::string_view rest;
  if (s.starts_with("https://")) rest = s.substr(8);
  else if (!https_only && s.starts_with("http://")) rest = s.substr(7);
  else return false;
  std::size_t host_end = rest.find_first_of("/?#");
  if (rest.substr(0, host_end).empty()) return false;
  for (char c : s) {
    if (c == ' ' || c == '\t' || c == '\n') return false;
  }
  return true;
}

bool valid_host_port(std::string_view s, bool allow_port_zero) {
  std::string_view host;
  std::string_view port;
  if (s.starts_with("[")) {
    std::size_t close = s.find(']');
    if (close == std::string_view::npos || close + 1 >= s.size() || s[close + 1] != ':') {
      return false;
    }
    host = s.substr(1, close - 1);
    port = s.substr(close + 2);
    unsigned char buf[16];
    if (inet_pton(AF_INET6, std::string(host).c_str(), buf) != 1) return false;
  } else {
    std::size_t colon = s.rfind(':');
    if (colon == std::string_view::npos) return false;
    host = s.substr(0, colon);
    port = s.substr(colon + 1);
    if (host.empty()) return false;
    for (char c : host) {
      bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '.' || c == '-' || c == '_';
      if (!ok) return false;
    }
  }
  if (port.empty() || port.size() > 5) return false;
  unsigned value = 0;
  for (char c : port) {
    if (c < '0' || c > '9') return false;
    value = value * 10 + static_cast<unsigned>(c - '0');
  }
  return value <= 65535 && (value > 0 || allow_port_zero);
}

YAML::Mark Field::mark() const {
  if ((value.IsNull() || !has_mark(value)) && has_mark(key)) return key.Mark();
  return value.Mark();
}

std::string Field::child(std::string_view k) const {
  return path.empty() ? std::string(k) : path + "." + std::string(k);
}

std::string describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map: return "a mapping";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Scalar: {
      const std::string& s = node.Scalar();
      if (s.size() > kMaxQuoted) return "'" + s.substr(0, kMaxQuoted) + "...'";
      return "'" + s + "'";
    }
    default: return "no value";
  }
}

YamlReader::YamlReader(std::string file_name, std::filesystem::path base_dir)
    : file_name_(std::move(file_name)), base_dir_(std::move(base_dir)) {}

void YamlReader::error(const YAML::Mark& mark, std::string message) {
  if (errors_.size() >= kMaxErrors) {
    ++dropped_;
    return;
  }
  std::string where = file_name_;
  if (!mark.is_null()) {
    where += ":" + std::to_string(mark.line + 1) + ":" + std::to_string(mark.column + 1);
  }
  errors_.push_back(Located{mark.is_null() ? -1 : mark.line, mark.is_null() ? -1 : mark.column,
                            where + ": " + message});
}

void YamlReader::fail(const Field& f, std::string_view problem, std::string_view expected) {
  std::string msg;
  if (!f.path.empty()) msg = f.path + ": ";
  msg += problem;
  msg += ", expected ";
  msg += expected;
  error(f.mark(), std::move(msg));
}

std::string YamlReader::joined_errors() const {
  std::vector<Located> sorted = errors_;
  std::stable_sort(sorted.begin(), sorted.end(), [](const Located& a, const Located& b) {
    return std::tie(a.line, a.column) < std::tie(b.line, b.column);
  });
  std::string out;
  for (const auto& e : sorted) {
    if (!out.empty()) out += "\n";
    out += e.text;
  }
  if (dropped_ > 0) out += "\n... and " + std::to_string(dropped_) + " more errors";
  return out;
}

std::optional<std::string> YamlReader::string(const Field& f, std::string_view expected) {
  if (!f.value.IsScalar()) {
    fail(f, "got " + describe(f.value), expected);
    return std::nullopt;
  }
  return f.value.Scalar();
}

std::optional<std::string> YamlReader::non_empty_string(const Field& f, std::string_view expected) {
  auto s = string(f, expected);
  if (s && s->empty()) {
    fail(f, "got an empty string", expected);
    return std::nullopt;
  }
  return s;
}

std::optional<std::uint64_t> YamlReader::integer(const Field& f, std::uint64_t min, std::uint64_t max,
                                                 std::string_view expected) {
  auto s = string(f, expected);
  if (!s) return std::nullopt;
  std::uint64_t v = 0;
  auto [end, ec] = std::from_chars(s->data(), s->data() + s->size(), v);
  if (s->empty() || ec != std::errc() || end != s->data() + s->size() || v < min || v > max) {
    fail(f, "got " + describe(f.value), expected);
    return std::nullopt;
  }
  return v;
}

std::optional<double> YamlReader::number(const Field& f, std::string_view expected) {
  auto s = string(f, expected);
  if (!s) return std::nullopt;
  double v = 0;
  auto [end, ec] = std::from_chars(s->data(), s->data() + s->size(), v);
  if (s->empty() || ec != std::errc() || end != s->data() + s->size() || !std::isfinite(v)) {
    fail(f, "got " + describe(f.value), expected);
    return std::nullopt;
  }
  return v;
}

std::optional<bool> YamlReader::boolean(const Field& f) {
  constexpr std::string_view kExpected = "true or false";
  auto s = string(f, kExpected);
  if (!s) return std::nullopt;
  if (*s == "true" || *s == "True" || *s == "TRUE") return true;
  if (*s == "false" || *s == "False" || *s == "FALSE") return false;
  fail(f, "got " + describe(f.value), kExpected);
  return std::nullopt;
}

std::optional<Duration> YamlReader::duration(const Field& f) {
  constexpr std::string_view kExpected = "a duration like 30s, 10m or 96h";
  auto s = string(f, kExpected);
  if (!s) return std::nullopt;
  auto d = parse_duration(*s);
  if (!d) fail(f, "got " + describe(f.value), kExpected);
  return d;
}

std::optional<std::string> YamlReader::one_of(const Field& f,
                                              std::initializer_list<std::string_view> allowed,
                                              std::string_view what) {
  return one_of(f, std::vector<std::string_view>(allowed), what);
}

std::optional<std::string> YamlReader::one_of(const Field& f, const std::vector<std::string_view>& allowed,
                                              std::string_view what) {
  std::string expected = std::string(what) + ": one of " + join(allowed);
  auto s = string(f, expected);
  if (!s) return std::nullopt;
  for (auto a : allowed) {
    if (*s == a) return s;
  }
  fail(f, "unknown " + std::string(what) + " " + describe(f.value), expected);
  return std::nullopt;
}

std::optional<std::filesystem::path> YamlReader::path(const Field& f, bool required) {
  constexpr std::string_view kExpected = "a file path (relative paths start at the config file's directory)";
  auto s = string(f, kExpected);
  if (!s) return std::nullopt;
  if (s->empty()) {
    if (required) {
      fail(f, "got an empty path", kExpected);
      return std::nullopt;
    }
    return std::filesystem::path{};
  }
  if ((*s)[0] == '~') {
    fail(f, "got " + describe(f.value) + " ('~' is not expanded)", "an absolute path");
    return std::nullopt;
  }
  std::filesystem::path p(*s);
  if (p.is_relative()) p = base_dir_ / p;
  return p.lexically_normal();
}

std::optional<std::vector<std::string>> YamlReader::string_list(const Field& f,
                                                                std::string_view expected) {
  auto list = items(f, expected);
  if (!list) return std::nullopt;
  std::vector<std::string> out;
  bool ok = true;
  for (const auto& item : *list) {
    auto s = string(item, "a string");
    if (s) out.push_back(std::move(*s));
    else ok = false;
  }
  if (!ok) return std::nullopt;
  return out;
}

std::optional<std::vector<std::string>> YamlReader::argv(const Field& f) {
  auto v = string_list(f, kArgvExpected);
  if (v && (v->empty() || (*v)[0].empty())) {
    fail(f, "got an empty command", kArgvExpected);
    return std::nullopt;
  }
  return v;
}

std::optional<std::vector<std::uint32_t>> YamlReader::id_list(const Field& f) {
  auto list = items(f, "a list of numeric ids like [0, 33]");
  if (!list) return std::nullopt;
  std::vector<std::uint32_t> out;
  bool ok = true;
  for (const auto& item : *list) {
    // 4294967295 is (uid_t)-1, "no id", never a real account.
    auto v = integer(item, 0, std::numeric_limits<std::uint32_t>::max() - 1,
                     "a numeric id from 0 to 4294967294");
    if (v) out.push_back(static_cast<std::uint32_t>(*v));
    else ok = false;
  }
  if (!ok) return std::nullopt;
  return out;
}

std::optional<std::vector<Field>> YamlReader::items(const Field& f, std::string_view expected) {
  if (!f.value.IsSequence()) {
    fail(f, "got " + describe(f.value), expected);
    return std::nullopt;
  }
  std::vector<Field> out;
  std::size_t i = 0;
  for (const auto& item : f.value) {
    out.push_back(Field{YAML::Node(), item, f.path + "[" + std::to_string(i) + "]"});
    ++i;
  }
  return out;
}

MapView::MapView(YamlReader& reader, Field field, std::string_view expected)
    : reader_(reader), self_(std::move(field)) {
  if (!self_.value.IsMap()) {
    reader_.fail(self_, "got " + describe(self_.value), expected);
    return;
  }
  valid_ = true;
  for (auto it = self_.value.begin(); it != self_.value.end(); ++it) {
    if (!it->first.IsScalar()) {
      reader_.error(it->first.Mark(),
                    (self_.path.empty() ? std::string() : self_.path + ": ") + "got " +
                        describe(it->first) + " as a key, expected a plain word");
      continue;
    }
    const std::string& k = it->first.Scalar();
    entries_.emplace_back(k, Field{it->first, it->second, self_.child(k)});
  }
}

void MapView::allow(const std::vector<std::string_view>& allowed) {
  if (!valid_) return;
  std::set<std::string, std::less<>> seen;
  for (const auto& [k, f] : entries_) {
    bool known = false;
    for (auto a : allowed) known = known || a == k;
    if (!known) {
      std::string where = self_.path.empty() ? "at the top level" : "in " + self_.path;
      std::string list;
      for (auto a : allowed) {
        if (!list.empty()) list += ", ";
        list += a;
      }
      reader_.error(f.key.Mark(),
                    "unknown key '" + k + "' " + where + "; expected one of: " + list);
      continue;
    }
    if (!seen.insert(k).second) {
      reader_.error(f.key.Mark(), "key '" + f.path + "' is given twice, expected each key once");
    }
  }
}

std::optional<Field> MapView::get(std::string_view key) const {
  for (const auto& [k, f] : entries_) {
    if (k == key) return f;
  }
  return std::nullopt;
}

std::optional<Field> MapView::require(std::string_view key, std::string_view expected) {
  if (!valid_) return std::nullopt;
  auto f = get(key);
  if (!f) {
    // Point at the mapping's own key ("files:") when it has one: that is where to add it.
    YAML::Mark where = has_mark(self_.key) ? self_.key.Mark() : self_.mark();
    reader_.error(where, (self_.path.empty() ? std::string() : self_.path + ": ") +
                             "missing key '" + std::string(key) + "', expected " +
                             std::string(expected));
  }
  return f;
}

void MapView::opt_string(std::string_view key, std::string& out) const {
  opt(key, [&](const Field& f) { return reader_.string(f); }, [&](std::string v) { out = std::move(v); });
}

void MapView::opt_path(std::string_view key, std::filesystem::path& out) const {
  opt(key, [&](const Field& f) { return reader_.path(f, false); },
      [&](std::filesystem::path v) { out = std::move(v); });
}

void MapView::opt_strings(std::string_view key, std::string_view expected, std::vector<std::string>& out) const {
  opt(key, [&](const Field& f) { return reader_.string_list(f, expected); },
      [&](std::vector<std::string> v) { out = std::move(v); });
}

void MapView::opt_duration(std::string_view key, Duration& out, bool positive) const {
  if (auto f = get(key)) {
    auto d = reader_.duration(*f);
    if (d && positive && d->count() <= 0) {
      reader_.fail(*f, "got " + describe(f->value), "a duration longer than 0s");
    } else if (d) {
      out = *d;
    }
  }
}

void MapView::req_path(std::string_view key, std::filesystem::path& out) {
  if (auto f = require(key, "a file path")) {
    if (auto v = reader_.path(*f, true)) out = std::move(*v);
  }
}

void MapView::req_string(std::string_view key, std::string_view expected, std::string& out) {
  if (auto f = require(key, expected)) {
    if (auto v = reader_.non_empty_string(*f, expected)) out = std::move(*v);
  }
}

std::string MapView::int_expected(std::uint64_t min, std::uint64_t max) {
  return "a whole number from " + std::to_string(min) + " to " + std::to_string(max);
}

}  // namespace certagent::config
