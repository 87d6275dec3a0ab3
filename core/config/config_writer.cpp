#include "core/config/config_writer.h"

#include <array>
#include <charconv>

namespace certagent::config {

namespace {

// The emitter would write these plainly, and YAML would read them back as null.
bool needs_quotes(std::string_view s) {
  return s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL";
}

}  // namespace

ConfigWriter::ConfigWriter() {
  out_.SetIndent(2);
  out_.SetMapFormat(YAML::Block);
}

void ConfigWriter::begin_map() { out_ << YAML::BeginMap; }
void ConfigWriter::end_map() { out_ << YAML::EndMap; }
void ConfigWriter::key(std::string_view k) { out_ << YAML::Key << std::string(k) << YAML::Value; }

void ConfigWriter::str(std::string_view k, const std::string& v) {
  key(k);
  scalar(v);
}

void ConfigWriter::boolean(std::string_view k, bool v) {
  key(k);
  out_ << (v ? "true" : "false");
}

void ConfigWriter::number(std::string_view k, double v) {
  std::array<char, 64> buf{};
  auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), v);
  key(k);
  out_ << std::string(buf.data(), ec == std::errc() ? end : buf.data());
}

void ConfigWriter::quoted(std::string_view k, const std::string& v) {
  key(k);
  out_ << YAML::DoubleQuoted << v;
}

void ConfigWriter::strings(std::string_view k, const std::vector<std::string>& v) {
  key(k);
  out_ << YAML::Flow << YAML::BeginSeq;
  for (const auto& s : v) scalar(s);
  out_ << YAML::EndSeq;
}

void ConfigWriter::ids(std::string_view k, const std::vector<std::uint32_t>& v) {
  key(k);
  out_ << YAML::Flow << YAML::BeginSeq;
  for (auto id : v) out_ << std::to_string(id);
  out_ << YAML::EndSeq;
}

void ConfigWriter::begin_seq(std::string_view k) {
  key(k);
  out_ << YAML::BeginSeq;
}

void ConfigWriter::end_seq() { out_ << YAML::EndSeq; }

void ConfigWriter::comment(const std::string& text) { out_ << YAML::Comment(text) << YAML::Newline; }

std::string ConfigWriter::text() const { return std::string(out_.c_str()) + "\n"; }

void ConfigWriter::scalar(const std::string& v) {
  if (needs_quotes(v)) out_ << YAML::DoubleQuoted;
  out_ << v;
}

}  // namespace certagent::config
