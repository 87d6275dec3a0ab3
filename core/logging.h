#pragma once
// Named spdlog loggers ("agent", "tpm", "renewer.acme", "reloader.nginx"), one event per line
// as key=value. Never log key material, tokens or PEM.

#include <spdlog/spdlog.h>

#include <memory>
#include <string>
#include <string_view>

namespace certagent::log {

struct Options {
  std::string level{"info"};    // trace | debug | info | warn | error
  std::string format{"text"};   // text | json
};

// Configures the process-wide sink (stderr) and level. Under systemd (JOURNAL_STREAM set and
// pointing at stderr) text lines carry "<N>" priority prefixes so journald keeps the levels.
void init(const Options& options);

// The named logger, created on first use with the configured sink.
std::shared_ptr<spdlog::logger> get(const std::string& name);

// Quotes a value for key=value output when it holds spaces, quotes or '=' (error messages).
std::string quote(std::string_view value);

// Text from a peer (a broker's answer body) made safe for one line: printable ASCII, at most
// `max` characters, "..." when cut.
std::string excerpt(std::string_view text, std::size_t max = 120);

}  // namespace certagent::log
