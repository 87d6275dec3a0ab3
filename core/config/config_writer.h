#pragma once
// Writes the effective configuration as YAML (`certagent check-config`): the core schema in
// config_dump.cpp, and each plug-in's own keys through PluginSettings::dump. Every value is
// written so that it parses back to the same value.

#include "core/config/duration.h"

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace certagent::config {

class ConfigWriter {
 public:
  ConfigWriter();

  void begin_map();
  void end_map();
  void key(std::string_view k);

  void str(std::string_view k, const std::string& v);
  void path(std::string_view k, const std::filesystem::path& v) { str(k, v.string()); }
  void duration(std::string_view k, Duration d) { str(k, format_duration(d)); }
  void boolean(std::string_view k, bool v);
  void number(std::string_view k, double v);  // shortest text that reads back as the same double
  template <class Int>
  void integer(std::string_view k, Int v) {
    key(k);
    out_ << std::to_string(v);
  }
  void quoted(std::string_view k, const std::string& v);
  void strings(std::string_view k, const std::vector<std::string>& v);
  void ids(std::string_view k, const std::vector<std::uint32_t>& v);
  void begin_seq(std::string_view k);
  void end_seq();
  void comment(const std::string& text);

  std::string text() const;

 private:
  void scalar(const std::string& v);

  YAML::Emitter out_;
};

}  // namespace certagent::config
