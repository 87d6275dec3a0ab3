#pragma once
// Envoy file-based SDS. Each rotation writes a new generation directory holding `sds.json`
// (one envoy.extensions.transport_sockets.tls.v3.Secret named after the certificate, with the
// chain and key inline, so Envoy reads one consistent file; mode 0600) and swaps it in by
// renaming a symlink over `..data` — Envoy reacts to moves in a watched directory, not to
// writes — then renames a fresh `sds.json -> ..data/sds.json` link too (a move of the file name
// itself, for configs without `watched_directory`). Envoy config:
//   sds_config: { path_config_source: { path: <sds_dir>/sds.json,
//                                       watched_directory: { path: <sds_dir> } } }
// Generations older than the previous one are removed.

#include "core/secret.h"
#include "reloaders/reloader_base.h"
#include "reloaders/envoy_config.h"

#include <filesystem>
#include <string>

namespace certagent::reloaders {

inline constexpr const char* kSdsFileName = "sds.json";

// The SDS discovery document (key inside: handle as a secret).
Secret sds_document(const std::string& secret_name, const Material& material);

// Writes and swaps in one generation; returns its directory name ("..20260501T120000.123Z.<serial>").
[[nodiscard]] Result<std::string> write_sds_generation(const std::filesystem::path& sds_dir,
                                                       const std::string& secret_name, const Material& material,
                                                       SystemTime now);

class EnvoyReloader final : public ReloaderBase {
 public:
  EnvoyReloader(const config::ReloaderConfig& config, const EnvoyReloaderConfig& envoy,
                const ReloaderContext& context);

 protected:
  boost::asio::awaitable<ReloadOutcome> apply(const ReloadEvent& event, Deadline deadline) override;

 private:
  EnvoyReloaderConfig envoy_;
};

}  // namespace certagent::reloaders
