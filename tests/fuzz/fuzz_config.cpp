// Config YAML -> validated config (core/config with every built-in plug-in's own keys).
// Invariants: a rejection is a configuration error with a message; an accepted config dumps
// (check-config) to YAML that parses back to an equal config and dumps to the same text.

#include "agent/builtin_plugins.h"
#include "core/config/config.h"
#include "tests/fuzz/fuzz_util.h"

namespace cfg = certagent::config;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  certagent::fuzz::quiet_logging();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // load_config refuses more than 4 MiB; bigger inputs only slow the search.
  if (size > 64 * 1024) return 0;
  const auto& catalog = certagent::agent::builtin_catalog();
  // Relative paths resolve against /fuzz, which does not exist: nothing is read or written.
  const std::filesystem::path source = "/fuzz/certagent.yaml";
  auto config = cfg::parse_config(certagent::fuzz::text_of(data, size), source, catalog);
  if (!config) {
    FUZZ_REQUIRE(!config.error().message.empty(), "a rejection without a message");
    FUZZ_REQUIRE(config.error().configuration, "a rejection not marked as a configuration error");
    return 0;
  }
  const std::string dump = cfg::dump_config(*config);
  auto again = cfg::parse_config(dump, source, catalog);
  FUZZ_REQUIRE(again.has_value(), "the dump of an accepted config is rejected: " +
                                      (again ? std::string() : again.error().message) + "\n" + dump);
  FUZZ_REQUIRE(*again == *config, "the dump reads back as a different config:\n" + dump);
  FUZZ_REQUIRE(cfg::dump_config(*again) == dump, "the dump is not stable:\n" + dump);
  return 0;
}
