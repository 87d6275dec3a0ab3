#pragma once
// Located reading of YAML, for the core schema (config.cpp) and the plug-ins' own keys (their
// Catalog entries). Every value keeps its position, so each error names file:line:column;
// mappings reject unknown and repeated keys; errors are collected instead of stopping at the
// first one.

#include "core/config/duration.h"

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace certagent::config {

inline constexpr std::string_view kHostPortExpected = "host:port like 127.0.0.1:443";
inline constexpr std::string_view kArgvExpected = "a non-empty argv list like [\"/usr/bin/prog\", \"arg\"]";

// "https://host/...", or also "http://" unless https_only; no white space.
bool valid_url(std::string_view s, bool https_only);
// "127.0.0.1:443", "[::1]:443", "localhost:8443". Port 0 only where the agent listens.
bool valid_host_port(std::string_view s, bool allow_port_zero);

// A value in the document together with the key it came from and its dotted path.
struct Field {
  YAML::Node key;    // undefined for list items and the root
  YAML::Node value;
  std::string path;  // "certificates[0].files.dir"; empty for the root

  // Where to point the user: the value, or its key when the value is empty (`dir:` alone).
  YAML::Mark mark() const;
  // "certificates[0].files" -> child "certificates[0].files.dir"
  std::string child(std::string_view key) const;
};

// "'some text'", "a mapping", "a list", "no value": what was found, for messages.
std::string describe(const YAML::Node& node);

class YamlReader {
 public:
  YamlReader(std::string file_name, std::filesystem::path base_dir);

  // "<file>:<line>:<col>: <message>" (1-based), or "<file>: <message>" without a position.
  // joined_errors() lists them in file order, whatever order they were found in.
  void error(const YAML::Mark& mark, std::string message);
  // "<path>: <problem>, expected <expected>" at the field.
  void fail(const Field& field, std::string_view problem, std::string_view expected);
  bool has_errors() const { return !errors_.empty(); }
  std::string joined_errors() const;

  // Typed readers: the value, or nullopt after reporting what was expected.
  std::optional<std::string> string(const Field& f, std::string_view expected = "a string");
  std::optional<std::string> non_empty_string(const Field& f, std::string_view expected);
  std::optional<std::uint64_t> integer(const Field& f, std::uint64_t min, std::uint64_t max,
                                       std::string_view expected);
  std::optional<double> number(const Field& f, std::string_view expected);
  std::optional<bool> boolean(const Field& f);
  std::optional<Duration> duration(const Field& f);
  std::optional<std::string> one_of(const Field& f, std::initializer_list<std::string_view> allowed,
                                    std::string_view what);
  std::optional<std::string> one_of(const Field& f, const std::vector<std::string_view>& allowed,
                                    std::string_view what);
  // A file path; relative paths are taken relative to the config file's directory (so a
  // config and the files next to it move together). Empty is allowed unless `required`.
  std::optional<std::filesystem::path> path(const Field& f, bool required);
  std::optional<std::vector<std::string>> string_list(const Field& f, std::string_view expected);
  // A command: a non-empty list of strings whose first one is not empty.
  std::optional<std::vector<std::string>> argv(const Field& f);
  std::optional<std::vector<std::uint32_t>> id_list(const Field& f);
  // The items of a list as Fields "path[i]"; reports (and returns nothing) if not a list.
  std::optional<std::vector<Field>> items(const Field& f, std::string_view expected);

 private:
  std::string file_name_;
  std::filesystem::path base_dir_;
  struct Located {
    int line;  // -1: no position
    int column;
    std::string text;
  };
  std::vector<Located> errors_;
  std::size_t dropped_{0};
};

// A mapping's keys, in document order.
class MapView {
 public:
  // Reports (and yields an invalid view) when the field is not a mapping.
  MapView(YamlReader& reader, Field field, std::string_view expected = "a mapping");

  bool valid() const { return valid_; }
  const Field& self() const { return self_; }
  YamlReader& reader() const { return reader_; }

  // Reports each key outside `allowed` (listing the allowed ones) and each repeated key.
  void allow(const std::vector<std::string_view>& allowed);
  std::optional<Field> get(std::string_view key) const;
  // Like get(), but reports "missing key '<key>', expected <expected>" at the mapping.
  std::optional<Field> require(std::string_view key, std::string_view expected);
  const std::vector<std::pair<std::string, Field>>& entries() const { return entries_; }

  // Optional and required keys: each reads the key if present (or reports it missing), and
  // stores the value only when it is valid.
  template <class Read, class Set>
  void opt(std::string_view key, Read read, Set set) const {
    if (auto f = get(key)) {
      if (auto v = read(*f)) set(std::move(*v));
    }
  }
  void opt_string(std::string_view key, std::string& out) const;
  void opt_path(std::string_view key, std::filesystem::path& out) const;
  void opt_strings(std::string_view key, std::string_view expected, std::vector<std::string>& out) const;
  // `positive`: longer than 0s.
  void opt_duration(std::string_view key, Duration& out, bool positive) const;
  template <class Int>
  void opt_int(std::string_view key, std::uint64_t min, std::uint64_t max, Int& out) const {
    if (auto f = get(key)) {
      if (auto v = reader_.integer(*f, min, max, int_expected(min, max))) out = static_cast<Int>(*v);
    }
  }
  void req_path(std::string_view key, std::filesystem::path& out);
  void req_string(std::string_view key, std::string_view expected, std::string& out);

 private:
  static std::string int_expected(std::uint64_t min, std::uint64_t max);

  YamlReader& reader_;
  Field self_;
  bool valid_{false};
  std::vector<std::pair<std::string, Field>> entries_;
};

}  // namespace certagent::config
