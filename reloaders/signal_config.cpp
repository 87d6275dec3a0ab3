#include "reloaders/signal_config.h"

#include "core/config/config_writer.h"
#include "core/config/config_yaml.h"
#include "reloaders/signal_reloader.h"

#include <csignal>

#include <array>

namespace certagent::reloaders {

namespace {

using config::describe;
using config::Field;
using config::MapView;

struct SignalName {
  std::string_view name;
  int number;
};
constexpr std::array<SignalName, 12> kSignals{{
    {"SIGHUP", SIGHUP}, {"SIGINT", SIGINT}, {"SIGQUIT", SIGQUIT}, {"SIGKILL", SIGKILL},
    {"SIGUSR1", SIGUSR1}, {"SIGUSR2", SIGUSR2}, {"SIGALRM", SIGALRM}, {"SIGTERM", SIGTERM},
    {"SIGCONT", SIGCONT}, {"SIGWINCH", SIGWINCH}, {"SIGTTIN", SIGTTIN}, {"SIGTTOU", SIGTTOU},
}};
constexpr int kMaxSignal = 64;  // SIGRTMAX on Linux

SignalReloaderConfig parse(MapView& m, const config::ReloaderConfig&) {
  SignalReloaderConfig s;
  config::YamlReader& r = m.reader();
  auto pf = m.get("pid_file");
  auto pid = m.get("pid");
  if (pf && pid) {
    r.fail(*pid, "both pid_file and pid", "exactly one of them");
  } else if (!pf && !pid) {
    r.fail(m.self(), "neither pid_file nor pid", "pid_file: /run/app.pid or pid: <number>");
  }
  if (pf) {
    if (auto p = r.path(*pf, true)) s.pid_file = *p;
  }
  if (pid) {
    if (auto v = r.integer(*pid, 2, 4'194'304, "a process id from 2 to 4194304")) s.pid = static_cast<int>(*v);
  }
  if (auto sf = m.get("signal")) {
    constexpr std::string_view kExpected = "a signal name like SIGHUP or HUP, or a number from 1 to 64";
    if (auto v = r.string(*sf, kExpected)) {
      if (auto n = parse_signal(*v)) s.signal = *n;
      else r.fail(*sf, "got " + describe(sf->value), kExpected);
    }
  }
  return s;
}

}  // namespace

std::optional<int> parse_signal(std::string_view s) {
  std::string upper;
  for (char c : s) upper += (c >= 'a' && c <= 'z') ? static_cast<char>(c - 'a' + 'A') : c;
  std::string_view u = upper;
  for (const auto& sig : kSignals) {
    if (u == sig.name || u == sig.name.substr(3)) return sig.number;
  }
  if (u.empty() || u.size() > 2) return std::nullopt;
  int n = 0;
  for (char c : u) {
    if (c < '0' || c > '9') return std::nullopt;
    n = n * 10 + (c - '0');
  }
  if (n < 1 || n > kMaxSignal) return std::nullopt;
  return n;
}

std::string signal_name(int n) {
  for (const auto& sig : kSignals) {
    if (sig.number == n) return std::string(sig.name);
  }
  return std::to_string(n);
}

void SignalReloaderConfig::dump(config::ConfigWriter& w) const {
  if (pid) w.integer("pid", *pid);
  else w.path("pid_file", pid_file);
  w.str("signal", signal_name(signal));
}

ReloaderType signal_reloader_type() {
  return {
      .config = {.name = "signal",
                 .keys = {"pid_file", "pid", "signal"},
                 .parse = [](MapView& m, const config::ReloaderConfig& generic) -> config::SettingsSlot {
                   return parse(m, generic);
                 }},
      .make = [](const config::ReloaderConfig& config,
                 const ReloaderContext& context) -> Result<std::unique_ptr<Reloader>> {
        const auto* settings = config.settings.get_if<SignalReloaderConfig>();
        if (!settings) return make_error("signal: the entry holds no signal settings");
        const auto& s = *settings;
        if (s.pid_file.empty() && (!s.pid || *s.pid <= 0)) return make_error("signal: set pid_file or a positive pid");
        if (s.signal <= 0 || s.signal >= NSIG) return make_error("signal: not a valid signal number");
        return std::unique_ptr<Reloader>(std::make_unique<SignalReloader>(config, s, context));
      },
  };
}

}  // namespace certagent::reloaders
