#pragma once
// The daemon: one io_context on the main thread running a loop per certificate, the socket
// server, the metrics listener, signals (SIGTERM/SIGINT stop, SIGHUP reloads the config) and
// systemd notifications.

#include "core/config/config.h"

#include <filesystem>

namespace certagent {

// Runs `certagent run`. Returns the process exit code: 0 after a graceful stop, 1 on a runtime
// failure at start (state dir, identity, socket), 2 on a configuration error.
int run_agent(const std::filesystem::path& config_path);

// Prepares state_dir (created 0700 when missing; refused when others may write to it).
[[nodiscard]] Result<> prepare_state_dir(const std::filesystem::path& dir);

}  // namespace certagent
