#pragma once
// Tells a local TLS terminator (or any consumer) that a new generation is committed, and where
// it can, verifies that the new certificate is actually being served.

#include "core/config/config.h"
#include "core/material.h"
#include "core/result.h"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace certagent::reloaders {

enum class ReloadResult { success, failure, unverified, timeout };
std::string_view to_string(ReloadResult r);  // "success" | "failure" | "unverified" | "timeout"

struct ReloadEvent {
  std::string cert_name;
  MaterialPtr material;                       // the committed material (never null)
  std::optional<std::filesystem::path> files_dir;  // <dir> of the file sink, if configured
  bool expired{false};                        // true when run as an on_expiry hook
};

struct ReloadOutcome {
  ReloadResult result{ReloadResult::success};
  std::string detail;                         // for logs and the audit log; never key material
};

class Reloader {
 public:
  virtual ~Reloader() = default;
  virtual std::string_view type() const = 0;
  // Runs the reload; must finish within the configured timeout and never throw. `event` is
  // taken by reference: keep it alive until the returned awaitable completes.
  virtual boost::asio::awaitable<ReloadOutcome> reload(const ReloadEvent& event) = 0;
};

struct ReloaderContext {
  boost::asio::any_io_executor executor;
};

// A reloader type: its config (name, keys, parser) and how to make it. The built-in ones are
// registered in agent/builtin_plugins.cpp.
struct ReloaderType {
  config::ReloaderType config;
  // Gets only entries of this type, whose generic part (timeout, verify) is already checked.
  std::function<Result<std::unique_ptr<Reloader>>(const config::ReloaderConfig&, const ReloaderContext&)> make;
};

}  // namespace certagent::reloaders
