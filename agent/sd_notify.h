#pragma once
// The systemd notification protocol (sd_notify(3)) without libsystemd: one datagram per call to
// the AF_UNIX socket named by $NOTIFY_SOCKET (a path, or an abstract name written "@name").
// Outside systemd (no NOTIFY_SOCKET) every call is a cheap no-op returning false.
//
// How the daemon uses it (certagent.service is Type=notify, WatchdogSec=30s):
//   READY=1     once every certificate holds valid material, or when the start timeout passes
//               (whichever is first; systemd's TimeoutStartSec must be longer than that timeout)
//   STATUS=...  one human line, shown by `systemctl status`
//   WATCHDOG=1  from the event loop every watchdog_interval() / 2
//   RELOADING=1 on SIGHUP, then READY=1 when the new config is in force
//   STOPPING=1  at the start of a graceful shutdown

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

namespace certagent::systemd {

// Sends `state` (one or more newline-separated VAR=value assignments) to $NOTIFY_SOCKET.
// Returns true when the datagram was sent; false when NOTIFY_SOCKET is unset or unusable or the
// send failed. Never blocks for longer than a short send timeout (the receiver's queue full).
bool notify(std::string_view state);

// "STATUS=<text>" with newlines in `text` replaced by spaces (so an error message can never
// inject another assignment such as READY=1) and the text capped at kMaxStatusBytes.
bool notify_status(std::string_view text);
inline constexpr std::size_t kMaxStatusBytes = 1024;

// "RELOADING=1\nMONOTONIC_USEC=<now>" as systemd >= 253 wants for reloads (older ones ignore
// MONOTONIC_USEC). Follow it with notify("READY=1") when the reload is done.
bool notify_reloading();
std::string reloading_state();  // the datagram notify_reloading() sends (for tests)

// The watchdog interval systemd expects pings within: $WATCHDOG_USEC, if set, positive and, when
// $WATCHDOG_PID is set, that PID is this process. Ping (notify("WATCHDOG=1")) at half of it.
std::optional<std::chrono::microseconds> watchdog_interval();

// True when $NOTIFY_SOCKET is set: we run as a Type=notify service (or under a test harness).
bool notify_socket_set();

}  // namespace certagent::systemd
