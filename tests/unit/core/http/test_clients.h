#pragma once
// Plain-socket HTTP clients for the server tests and the socket benchmark: they speak bytes, not
// Beast, so they can also misbehave (garbage, half-open, 1 byte at a time) and see exactly what
// the server sends back. Header-only; used by tests/unit/http, tests/integration/socket and
// bench/socket.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace certagent::test {

struct RawResponse {
  int status{0};
  std::map<std::string, std::string> headers;  // names lowercased
  std::string body;                            // de-chunked
  std::string header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? std::string() : it->second;
  }
};

// One blocking connection with deadlines on every read.
class RawClient {
 public:
  RawClient() = default;
  explicit RawClient(int fd) : fd_(fd) {}
  RawClient(RawClient&& o) noexcept : fd_(o.fd_), buf_(std::move(o.buf_)) { o.fd_ = -1; }
  RawClient& operator=(RawClient&& o) noexcept {
    if (this != &o) {
      close();
      fd_ = o.fd_;
      buf_ = std::move(o.buf_);
      o.fd_ = -1;
    }
    return *this;
  }
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;
  ~RawClient() { close(); }

  static RawClient unix_socket(const std::filesystem::path& path) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      ::close(fd);
      return RawClient();
    }
    return RawClient(fd);
  }
  static RawClient tcp(int port) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      ::close(fd);
      return RawClient();
    }
    return RawClient(fd);
  }

  bool connected() const { return fd_ >= 0; }
  int fd() const { return fd_; }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  // False when the peer is gone.
  bool send(std::string_view bytes) {
    while (!bytes.empty()) {
      ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      bytes.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  }

  static std::string get(std::string_view target, bool keep_alive = true) {
    std::string r = "GET " + std::string(target) + " HTTP/1.1\r\nHost: localhost\r\n";
    if (!keep_alive) r += "Connection: close\r\n";
    return r + "\r\n";
  }

  // A whole response (Content-Length, chunked or until EOF); nullopt on timeout, EOF before a
  // complete response, or a reset.
  std::optional<RawResponse> read_response(std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    RawResponse r;
    std::size_t header_end;
    while ((header_end = buf_.find("\r\n\r\n")) == std::string::npos) {
      if (!fill(end)) return std::nullopt;
    }
    if (!parse_head(buf_.substr(0, header_end), r)) return std::nullopt;
    buf_.erase(0, header_end + 4);
    if (r.header("transfer-encoding") == "chunked") {
      for (;;) {
        auto chunk = next_chunk(end);
        if (!chunk) return std::nullopt;
        if (chunk->empty()) break;
        r.body += *chunk;
      }
    } else if (!r.header("content-length").empty()) {
      const std::size_t len = std::stoul(r.header("content-length"));
      while (buf_.size() < len) {
        if (!fill(end)) return std::nullopt;
      }
      r.body = buf_.substr(0, len);
      buf_.erase(0, len);
    } else {
      while (fill(end)) {
      }
      r.body = std::move(buf_);
      buf_.clear();
    }
    return r;
  }

  // Reads a response's head only (for streams); the body is then read with next_line().
  std::optional<RawResponse> read_head(std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    std::size_t header_end;
    while ((header_end = buf_.find("\r\n\r\n")) == std::string::npos) {
      if (!fill(end)) return std::nullopt;
    }
    RawResponse r;
    if (!parse_head(buf_.substr(0, header_end), r)) return std::nullopt;
    buf_.erase(0, header_end + 4);
    return r;
  }

  // The next '\n'-terminated line of a chunked body (without the '\n'); nullopt on timeout or
  // end of stream.
  std::optional<std::string> next_line(std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      if (auto nl = lines_.find('\n'); nl != std::string::npos) {
        std::string line = lines_.substr(0, nl);
        lines_.erase(0, nl + 1);
        return line;
      }
      auto chunk = next_chunk(end);
      if (!chunk || chunk->empty()) return std::nullopt;
      lines_ += *chunk;
    }
  }

  // True once the server has closed the connection (EOF or reset), within the timeout.
  // Anything sent meanwhile is kept in the buffer.
  bool wait_closed(std::chrono::milliseconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      const int r = fill_status(end);
      if (r == 0) return true;    // EOF / reset
      if (r < 0) return false;    // timeout
    }
  }

  const std::string& buffered() const { return buf_; }

 private:
  // 1: got bytes, 0: EOF or error, -1: timeout.
  int fill_status(std::chrono::steady_clock::time_point end) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        end - std::chrono::steady_clock::now());
    if (left.count() <= 0) return -1;
    pollfd p{fd_, POLLIN, 0};
    const int pr = ::poll(&p, 1, static_cast<int>(left.count()));
    if (pr == 0) return -1;
    if (pr < 0) return errno == EINTR ? 1 : 0;
    char tmp[65536];
    const ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
    if (n < 0 && errno == EINTR) return 1;
    if (n <= 0) return 0;
    buf_.append(tmp, static_cast<std::size_t>(n));
    return 1;
  }
  bool fill(std::chrono::steady_clock::time_point end) { return fill_status(end) == 1; }

  static bool parse_head(const std::string& head, RawResponse& r) {
    if (head.compare(0, 9, "HTTP/1.1 ") != 0 && head.compare(0, 9, "HTTP/1.0 ") != 0) return false;
    r.status = std::atoi(head.c_str() + 9);
    std::size_t pos = head.find("\r\n");
    while (pos != std::string::npos && pos + 2 < head.size()) {
      const std::size_t next = head.find("\r\n", pos + 2);
      const std::string line = head.substr(pos + 2, next == std::string::npos ? std::string::npos : next - pos - 2);
      const auto colon = line.find(':');
      if (colon != std::string::npos) {
        std::string name = line.substr(0, colon);
        std::transform(name.begin(), name.end(), name.begin(),
                       [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
        std::string value = line.substr(colon + 1);
        value.erase(0, value.find_first_not_of(' '));
        r.headers[name] = value;
      }
      pos = next;
    }
    return true;
  }

  // One decoded chunk; "" for the last chunk; nullopt on timeout or EOF.
  std::optional<std::string> next_chunk(std::chrono::steady_clock::time_point end) {
    std::size_t eol;
    while ((eol = buf_.find("\r\n")) == std::string::npos) {
      if (!fill(end)) return std::nullopt;
    }
    const std::size_t size = std::stoul(buf_.substr(0, eol), nullptr, 16);
    while (buf_.size() < eol + 2 + size + 2) {
      if (!fill(end)) return std::nullopt;
    }
    std::string data = buf_.substr(eol + 2, size);
    buf_.erase(0, eol + 2 + size + 2);
    return data;
  }

  int fd_{-1};
  std::string buf_;
  std::string lines_;
};

// Many watch streams read by one thread with epoll, keeping almost nothing per stream, so the
// memory measured around it is the server's.
class WatcherFleet {
 public:
  WatcherFleet(const std::filesystem::path& socket_path, const std::string& target, std::size_t n)
      : epoll_(::epoll_create1(EPOLL_CLOEXEC)) {
    const std::string request = RawClient::get(target);
    watchers_.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
      RawClient c = RawClient::unix_socket(socket_path);
      if (!c.connected() || !c.send(request)) {
        ++failed_;
        continue;
      }
      Watcher w;
      w.fd = c.fd();
      // The client object gives up the descriptor: the fleet owns it now.
      released_.push_back(std::move(c));
      watchers_.push_back(std::move(w));
    }
    for (std::size_t i = 0; i < watchers_.size(); ++i) {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u64 = i;
      ::epoll_ctl(epoll_, EPOLL_CTL_ADD, watchers_[i].fd, &ev);
    }
  }
  ~WatcherFleet() {
    released_.clear();  // closes the descriptors
    ::close(epoll_);
  }
  WatcherFleet(const WatcherFleet&) = delete;
  WatcherFleet& operator=(const WatcherFleet&) = delete;

  std::size_t size() const { return watchers_.size(); }
  std::size_t failed() const { return failed_; }
  std::size_t closed() const {
    return static_cast<std::size_t>(
        std::count_if(watchers_.begin(), watchers_.end(), [](const Watcher& w) { return w.closed; }));
  }

  // Waits until every open watcher has received `marker` (counted from the previous call).
  // Returns when the last one got it, or nullopt at the deadline.
  std::optional<std::chrono::steady_clock::time_point> wait_all(
      const std::string& marker, std::chrono::milliseconds deadline) {
    const auto end = std::chrono::steady_clock::now() + deadline;
    std::size_t pending = 0;
    for (auto& w : watchers_) {
      w.seen = false;
      if (!w.closed) ++pending;
      // Data that arrived before this call was already scanned for the previous marker.
      if (!w.closed && w.carry.find(marker) != std::string::npos) {
        w.seen = true;
        --pending;
      }
    }
    std::chrono::steady_clock::time_point last{};
    std::vector<epoll_event> events(256);
    static thread_local char buffer[1 << 16];
    while (pending > 0) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          end - std::chrono::steady_clock::now());
      if (left.count() <= 0) return std::nullopt;
      const int n = ::epoll_wait(epoll_, events.data(), static_cast<int>(events.size()),
                                 static_cast<int>(left.count()));
      const auto now = std::chrono::steady_clock::now();
      for (int i = 0; i < n; ++i) {
        Watcher& w = watchers_[events[i].data.u64];
        const ssize_t got = ::recv(w.fd, buffer, sizeof buffer, MSG_DONTWAIT);
        if (got <= 0) {
          if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
          if (!w.closed) {
            w.closed = true;
            ::epoll_ctl(epoll_, EPOLL_CTL_DEL, w.fd, nullptr);
            if (!w.seen) --pending;
          }
          continue;
        }
        if (w.seen) {
          keep_tail(w, std::string_view(buffer, static_cast<std::size_t>(got)), marker.size());
          continue;
        }
        std::string scan = w.carry;
        scan.append(buffer, static_cast<std::size_t>(got));
        if (scan.find(marker) != std::string::npos) {
          w.seen = true;
          --pending;
          last = std::max(last, now);
          w.carry.clear();
        } else {
          w.carry = scan.substr(scan.size() > marker.size() ? scan.size() - marker.size() : 0);
        }
      }
    }
    return last;
  }

 private:
  struct Watcher {
    int fd{-1};
    bool seen{false};
    bool closed{false};
    std::string carry;  // the last few bytes, so a marker split between reads is found
  };
  static void keep_tail(Watcher& w, std::string_view data, std::size_t n) {
    w.carry.append(data);
    if (w.carry.size() > 4 * n + 64) w.carry.erase(0, w.carry.size() - (4 * n + 64));
  }

  int epoll_;
  std::vector<Watcher> watchers_;
  std::vector<RawClient> released_;
  std::size_t failed_{0};
};

// Resident memory of this process, bytes (VmRSS).
inline std::size_t resident_bytes(pid_t pid = 0) {
  std::ifstream in(pid ? "/proc/" + std::to_string(pid) + "/status" : "/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoul(line.substr(6)) * 1024;
  }
  return 0;
}

}  // namespace certagent::test
