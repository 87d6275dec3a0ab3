#include "agent/sd_notify.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace certagent::systemd {

namespace {

// pid 1 reads notifications into a PIPE_BUF sized buffer: a longer datagram is dropped.
constexpr std::size_t kMaxDatagram = 4096;

// A notification must never stall the event loop for long, even if the receiver's queue is
// full; systemd's queue is huge, so this only matters when something is badly wrong.
constexpr timeval kSendTimeout{0, 500'000};

class UniqueFd {
 public:
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// Builds the address from $NOTIFY_SOCKET: "/path" or "@abstract". Anything else (relative
// paths, "vsock:..." which only VMs use) is not supported.
bool socket_address(std::string_view name, sockaddr_un& addr, socklen_t& len) {
  addr = {};
  addr.sun_family = AF_UNIX;
  if (name.size() < 2 || (name[0] != '/' && name[0] != '@')) return false;
  if (name.size() > sizeof(addr.sun_path) - 1) return false;
  std::memcpy(addr.sun_path, name.data(), name.size());
  if (name[0] == '@') {
    // Abstract names are exactly the given bytes after a leading NUL, with no terminator.
    addr.sun_path[0] = '\0';
    len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size());
  } else {
    len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size() + 1);
  }
  return true;
}

std::optional<std::uint64_t> parse_unsigned(const char* text) {
  if (text == nullptr || *text == '\0') return std::nullopt;
  std::string_view s(text);
  std::uint64_t value = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc{} || end != s.data() + s.size()) return std::nullopt;
  return value;
}

}  // namespace

bool notify_socket_set() {
  const char* name = std::getenv("NOTIFY_SOCKET");
  return name != nullptr && *name != '\0';
}

bool notify(std::string_view state) {
  const char* name = std::getenv("NOTIFY_SOCKET");
  if (name == nullptr || state.empty() || state.size() > kMaxDatagram) return false;
  sockaddr_un addr{};
  socklen_t addr_len = 0;
  if (!socket_address(name, addr, addr_len)) return false;

  UniqueFd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) return false;
  if (::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &kSendTimeout, sizeof(kSendTimeout)) != 0) {
    return false;
  }
  ssize_t sent = -1;
  do {
    sent = ::sendto(fd.get(), state.data(), state.size(), MSG_NOSIGNAL,
                    reinterpret_cast<const sockaddr*>(&addr), addr_len);
  } while (sent < 0 && errno == EINTR);
  return sent == static_cast<ssize_t>(state.size());
}

bool notify_status(std::string_view text) {
  std::string state = "STATUS=";
  text = text.substr(0, kMaxStatusBytes);
  state.reserve(state.size() + text.size());
  for (char c : text) state.push_back(c == '\n' || c == '\r' ? ' ' : c);
  return notify(state);
}

std::string reloading_state() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  const auto usec = static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000u +
                    static_cast<std::uint64_t>(ts.tv_nsec) / 1'000u;
  return "RELOADING=1\nMONOTONIC_USEC=" + std::to_string(usec);
}

bool notify_reloading() { return notify(reloading_state()); }

std::optional<std::chrono::microseconds> watchdog_interval() {
  auto usec = parse_unsigned(std::getenv("WATCHDOG_USEC"));
  if (!usec || *usec == 0) return std::nullopt;
  // WATCHDOG_PID names the process systemd watches; a child that inherited the variables
  // (a reloader's exec, say) must not think the watchdog is its business.
  if (const char* pid_text = std::getenv("WATCHDOG_PID"); pid_text != nullptr) {
    auto pid = parse_unsigned(pid_text);
    if (!pid || *pid != static_cast<std::uint64_t>(::getpid())) return std::nullopt;
  }
  if (*usec > static_cast<std::uint64_t>(std::chrono::microseconds::max().count())) {
    return std::nullopt;
  }
  return std::chrono::microseconds(static_cast<std::int64_t>(*usec));
}

}  // namespace certagent::systemd
