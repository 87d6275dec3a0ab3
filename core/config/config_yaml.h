#pragma once
// Located reading of YAML for config.cpp (internal to certagent_config). Every value keeps its
// position, so each error names file:line:column; mappings reject unknown and repeated keys;
// errors are collected instead of stopping at the first one.

#include "core/config/config.h"

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
  // A file path; relative paths are taken relative to the config file's directory (so a
  // config and the files next to it move together). Empty is allowed unless `required`.
  std::optional<std::filesystem::path> path(const Field& f, bool required);
  std::optional<std::vector<std::string>> string_list(const Field& f, std::string_view expected);
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

  // Reports each key outside `allowed` (listing the allowed ones) and each repeated key.
  void allow(const std::vector<std::string_view>& allowed);
  std::optional<Field> get(std::string_view key) const;
  // Like get(), but reports "missing key '<key>', expected <expected>" at the mapping.
  std::optional<Field> require(std::string_view key, std::string_view expected);
  const std::vector<std::pair<std::string, Field>>& entries() const { return entries_; }

 private:
  YamlReader& reader_;
  Field self_;
  bool valid_{false};
  std::vector<std::pair<std::string, Field>> entries_;
};

}  // namespace certagent::config
