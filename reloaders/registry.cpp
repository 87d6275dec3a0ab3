// The built-in reloaders, registered in one explicit place (no static initialisers).

#include "reloaders/envoy_reloader.h"
#include "reloaders/exec_reloader.h"
#include "reloaders/haproxy_reloader.h"
#include "reloaders/nginx_reloader.h"
#include "reloaders/serving_probe.h"
#include "reloaders/signal_reloader.h"
#include "reloaders/systemd_reloader.h"

#include <signal.h>

#include <type_traits>

namespace certagent::reloaders {

namespace {

template <class>
inline constexpr bool kAlwaysFalse = false;

Result<> check_verify(const config::ReloaderConfig& config) {
  if (!config.verify) return {};
  if (auto hp = split_host_port(config.verify->connect); !hp) {
    return make_error("verify.connect: " + hp.error().message);
  }
  if (config.verify->deadline.count() <= 0) return make_error("verify.deadline must be positive");
  if (config.verify->settle.count() < 0) return make_error("verify.settle must not be negative");
  return {};
}

Result<std::unique_ptr<Reloader>> build(const config::ReloaderConfig& config, const ReloaderContext& context) {
  return std::visit(
      [&](const auto& s) -> Result<std::unique_ptr<Reloader>> {
        using T = std::decay_t<decltype(s)>;
        if constexpr (std::is_same_v<T, config::ExecReloaderConfig>) {
          if (s.command.empty() || s.command[0].empty()) return make_error("exec: command must not be empty");
          if (s.timeout.count() <= 0) return make_error("exec: timeout must be positive");
          return std::unique_ptr<Reloader>(std::make_unique<ExecReloader>(config, s, context));
        } else if constexpr (std::is_same_v<T, config::SignalReloaderConfig>) {
          if (s.pid_file.empty() && (!s.pid || *s.pid <= 0)) {
            return make_error("signal: set pid_file or a positive pid");
          }
          if (s.signal <= 0 || s.signal >= NSIG) return make_error("signal: not a valid signal number");
          return std::unique_ptr<Reloader>(std::make_unique<SignalReloader>(config, s, context));
        } else if constexpr (std::is_same_v<T, config::SystemdReloaderConfig>) {
          if (s.unit.empty()) return make_error("systemd: unit must not be empty");
          if (!SystemdReloader::valid_action(s.action)) {
            return make_error("systemd: action '" + s.action +
                              "' is not one of reload, restart, reload-or-restart, try-reload-or-restart, try-restart");
          }
          return std::unique_ptr<Reloader>(std::make_unique<SystemdReloader>(config, s, context));
        } else if constexpr (std::is_same_v<T, config::NginxReloaderConfig>) {
          if (s.command.empty() || s.command[0].empty()) return make_error("nginx: command must not be empty");
          return std::unique_ptr<Reloader>(std::make_unique<NginxReloader>(config, s, context));
        } else if constexpr (std::is_same_v<T, config::HaproxyReloaderConfig>) {
          if (s.admin_socket.empty()) return make_error("haproxy: admin_socket must be set");
          if (s.cert.empty()) return make_error("haproxy: cert (the name haproxy lists) must be set");
          if (s.cert.find_first_of(" \t\r\n") != std::string::npos) {
            return make_error("haproxy: cert must not contain white space");
          }
          return std::unique_ptr<Reloader>(std::make_unique<HaproxyReloader>(config, s, context));
        } else if constexpr (std::is_same_v<T, config::EnvoyReloaderConfig>) {
          if (s.sds_dir.empty()) return make_error("envoy: sds_dir must be set");
          return std::unique_ptr<Reloader>(std::make_unique<EnvoyReloader>(config, s, context));
        } else {
          static_assert(kAlwaysFalse<T>, "a reloader type is missing from make_reloader");
        }
      },
      config.settings);
}

}  // namespace

std::string_view to_string(ReloadResult r) {
  switch (r) {
    case ReloadResult::success: return "success";
    case ReloadResult::failure: return "failure";
    case ReloadResult::unverified: return "unverified";
    case ReloadResult::timeout: return "timeout";
  }
  return "failure";
}

std::vector<std::string> known_reloader_types() {
  return {"exec", "signal", "systemd", "nginx", "haproxy", "envoy"};
}

Result<std::unique_ptr<Reloader>> make_reloader(const config::ReloaderConfig& config, const ReloaderContext& context) {
  if (config.timeout.count() <= 0) return make_error("reloader timeout must be positive");
  if (auto r = check_verify(config); !r) return r.error();
  return build(config, context);
}

}  // namespace certagent::reloaders
