// Socket API benchmark: fetch throughput with 64 concurrent clients (keep-alive, and a new
// connection per request), fan-out latency from commit to the last of 1,000 watchers receiving
// the new bundle, and the server's memory with 1,000 watchers.
//
// The server runs in a child process, as the daemon would: one thread, one io_context, the real
// SocketServer and CertificateStore. Its resident memory is read from /proc/<pid>/status. The
// clients run in this process on one thread with epoll. Commits are triggered over a pipe; the
// child reports the CLOCK_MONOTONIC time taken just before each store.commit().
//
// Targets (issue 5): >= 40,000 fetches/s; fan-out p99 <= 10 ms; RSS with 1,000 watchers <= 32 MiB.
//
// Usage: socket_bench [--seconds N] [--watchers N] [--rotations N]

#include "core/logging.h"
#include "agent/socket_server.h"
#include "tests/unit/core/http/test_clients.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/signal_set.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace certagent;
using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;
namespace asio = boost::asio;

std::string pem_block(const std::string& label, std::size_t body_bytes, char fill) {
  std::string out = "-----BEGIN " + label + "-----\n";
  for (std::size_t i = 0; i < body_bytes; i += 64) {
    out.append(std::min<std::size_t>(64, body_bytes - i), fill);
    out.push_back('\n');
  }
  return out + "-----END " + label + "-----\n";
}

// PEM sizes of a real ECDSA P-256 leaf with one intermediate, its key and a root.
MaterialPtr make_material(SystemTime now, unsigned serial) {
  auto m = std::make_shared<Material>();
  m->cert_pem = pem_block("CERTIFICATE", 940, 'A');
  m->chain_pem = pem_block("CERTIFICATE", 900, 'B');
  m->key_pem = Secret(pem_block("PRIVATE KEY", 180, 'K'));
  char hex[32];
  std::snprintf(hex, sizeof hex, "5e%08x", serial);
  m->serial_hex = hex;
  m->not_before = now - 1h;
  m->not_after = now + 96h;
  m->broker = "dev";
  return m;
}

std::int64_t monotonic_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(SteadyClock::now().time_since_epoch())
      .count();
}

// ---- the server process --------------------------------------------------------------------

[[noreturn]] void run_server(const std::string& socket_path, int control_fd, int events_fd) {
  log::init({"warn", "text"});
  asio::io_context io;
  SystemClock clock;
  CertificateStore store;
  Metrics metrics;
  config::CertificateConfig cert;
  cert.name = "web";
  cert.broker = "dev";
  store.configure({cert});
  store.find("web")->trust_bundle_pem = pem_block("CERTIFICATE", 760, 'T');
  unsigned serial = 1;
  store.commit("web", make_material(clock.now(), serial), clock.now());

  config::SocketConfig config;
  config.path = socket_path;
  config.mode = 0600;
  config.max_connections = 4096;
  config.max_watchers = 4096;
  SocketServer server(io, config, store, metrics, clock, [] { return true; });
  if (auto r = server.start(); !r) {
    std::fprintf(stderr, "server: %s\n", r.error().message.c_str());
    std::_Exit(1);
  }
  auto report = [&](const std::string& line) {
    [[maybe_unused]] auto n = ::write(events_fd, line.data(), line.size());
  };
  asio::posix::stream_descriptor control(io, control_fd);
  char command = 0;
  std::function<void()> read_command = [&] {
    asio::async_read(control, asio::buffer(&command, 1),
                     [&](boost::system::error_code ec, std::size_t) {
                       if (ec || command == 'q') {
                         server.stop();
                         io.stop();
                         return;
                       }
                       auto material = make_material(clock.now(), ++serial);
                       const auto t = monotonic_ns();
                       store.commit("web", std::move(material), clock.now());
                       report("commit " + std::to_string(t) + " " + std::to_string(serial) + "\n");
                       read_command();
                     });
  };
  read_command();
  report("ready\n");
  io.run();
  std::_Exit(0);
}

// ---- client helpers ------------------------------------------------------------------------

class EventPipe {
 public:
  explicit EventPipe(int fd) : fd_(fd) {}
  std::string line() {
    for (;;) {
      if (auto nl = buf_.find('\n'); nl != std::string::npos) {
        std::string l = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return l;
      }
      char tmp[256];
      ssize_t n = ::read(fd_, tmp, sizeof tmp);
      if (n <= 0) return {};
      buf_.append(tmp, static_cast<std::size_t>(n));
    }
  }

 private:
  int fd_;
  std::string buf_;
};

int connect_unix(const std::string& path, bool nonblocking) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0), 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t i = std::min(v.size() - 1, static_cast<std::size_t>(p * (v.size() - 1) + 0.5));
  return v[i];
}

struct ThroughputResult {
  double per_second{0};
  std::size_t requests{0};
  std::size_t errors{0};
  double p50_us{0};
  double p99_us{0};
};

// `clients` connections, each with one request in flight, for `duration`. keep_alive=false
// opens a new connection for every request.
ThroughputResult run_fetches(const std::string& path, int clients, std::chrono::seconds duration,
                             bool keep_alive) {
  const std::string request =
      std::string("GET /v1/certificates/web HTTP/1.1\r\nHost: localhost\r\n") +
      (keep_alive ? "" : "Connection: close\r\n") + "\r\n";
  struct Conn {
    int fd{-1};
    std::string in;
    std::size_t need{0};  // header + body, once the header is complete
    SteadyClock::time_point sent;
  };
  std::vector<Conn> conns(static_cast<std::size_t>(clients));
  const int ep = ::epoll_create1(EPOLL_CLOEXEC);
  ThroughputResult result;
  std::vector<double> latencies;
  latencies.reserve(1 << 20);

  auto open = [&](std::size_t i) {
    Conn& c = conns[i];
    for (int attempt = 0; c.fd < 0 && attempt < 1000; ++attempt) {
      c.fd = connect_unix(path, true);
      if (c.fd < 0) std::this_thread::sleep_for(100us);  // backlog full: retry
    }
    c.in.clear();
    c.need = 0;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = i;
    ::epoll_ctl(ep, EPOLL_CTL_ADD, c.fd, &ev);
  };
  auto send = [&](std::size_t i) {
    Conn& c = conns[i];
    c.sent = SteadyClock::now();
    [[maybe_unused]] auto n = ::send(c.fd, request.data(), request.size(), MSG_NOSIGNAL);
  };
  auto reopen = [&](std::size_t i) {
    ::epoll_ctl(ep, EPOLL_CTL_DEL, conns[i].fd, nullptr);
    ::close(conns[i].fd);
    conns[i].fd = -1;
    open(i);
  };

  for (std::size_t i = 0; i < conns.size(); ++i) {
    open(i);
    send(i);
  }
  const auto end = SteadyClock::now() + duration;
  const auto start = SteadyClock::now();
  std::vector<epoll_event> events(256);
  static char buffer[1 << 16];
  while (SteadyClock::now() < end) {
    const int n = ::epoll_wait(ep, events.data(), static_cast<int>(events.size()), 100);
    for (int e = 0; e < n; ++e) {
      const std::size_t i = events[e].data.u64;
      Conn& c = conns[i];
      const ssize_t got = ::recv(c.fd, buffer, sizeof buffer, 0);
      if (got <= 0) {
        if (got < 0 && errno == EAGAIN) continue;
        ++result.errors;  // closed before a whole answer
        reopen(i);
        send(i);
        continue;
      }
      c.in.append(buffer, static_cast<std::size_t>(got));
      if (c.need == 0) {
        const auto head_end = c.in.find("\r\n\r\n");
        if (head_end == std::string::npos) continue;
        const auto cl = c.in.find("Content-Length: ");
        if (c.in.compare(0, 12, "HTTP/1.1 200") != 0 || cl == std::string::npos || cl > head_end) {
          ++result.errors;
          reopen(i);
          send(i);
          continue;
        }
        c.need = head_end + 4 + std::strtoul(c.in.c_str() + cl + 16, nullptr, 10);
      }
      if (c.in.size() < c.need) continue;
      const auto now = SteadyClock::now();
      latencies.push_back(std::chrono::duration<double, std::micro>(now - c.sent).count());
      ++result.requests;
      if (keep_alive) {
        c.in.erase(0, c.need);
        c.need = 0;
      } else {
        reopen(i);
      }
      send(i);
    }
  }
  const double seconds = std::chrono::duration<double>(SteadyClock::now() - start).count();
  for (auto& c : conns) ::close(c.fd);
  ::close(ep);
  result.per_second = static_cast<double>(result.requests) / seconds;
  result.p50_us = percentile(latencies, 0.50);
  result.p99_us = percentile(latencies, 0.99);
  return result;
}

std::string status_field(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) {
      auto v = line.substr(field.size() + 1);
      v.erase(0, v.find_first_not_of(" \t"));
      return v;
    }
  }
  return "?";
}

// CPU time (user + system) a process has used, seconds.
double cpu_seconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto close = stat.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream fields(stat.substr(close + 2));
  std::string skip;
  for (int i = 3; i < 14; ++i) fields >> skip;  // state .. cmajflt
  unsigned long utime = 0, stime = 0;
  fields >> utime >> stime;
  return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

double rss_mib(pid_t pid) { return static_cast<double>(test::resident_bytes(pid)) / 1048576.0; }

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

}  // namespace

int main(int argc, char** argv) {
  int seconds = 3;
  std::size_t watchers = 1000;
  int rotations = 50;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--seconds") seconds = std::atoi(argv[i + 1]);
    else if (a == "--watchers") watchers = std::strtoul(argv[i + 1], nullptr, 10);
    else if (a == "--rotations") rotations = std::atoi(argv[i + 1]);
  }

  rlimit nofile{};
  ::getrlimit(RLIMIT_NOFILE, &nofile);
  nofile.rlim_cur = std::min<rlim_t>(nofile.rlim_max, 8192);
  ::setrlimit(RLIMIT_NOFILE, &nofile);

  double load = 0;
  {
    std::ifstream in("/proc/loadavg");
    in >> load;
  }
  std::printf("socket_bench: nproc=%u cpu=\"%s\" loadavg(1m)=%.2f\n",
              std::thread::hardware_concurrency(), cpu_model().c_str(), load);

  char dir_template[] = "/tmp/socket-bench-XXXXXX";
  if (!::mkdtemp(dir_template)) return 1;
  const std::string dir = dir_template;
  const std::string path = dir + "/agent.sock";

  int control[2], events[2];
  if (::pipe2(control, O_CLOEXEC) != 0 || ::pipe2(events, O_CLOEXEC) != 0) return 1;
  const pid_t server = ::fork();
  if (server == 0) {
    ::close(control[1]);
    ::close(events[0]);
    run_server(path, control[0], events[1]);
  }
  ::close(control[0]);
  ::close(events[1]);
  EventPipe server_events(events[0]);
  if (server_events.line() != "ready") {
    std::fprintf(stderr, "server did not start\n");
    return 1;
  }
  std::printf("server pid=%d (one thread, one io_context), RSS idle %.1f MiB\n", server,
              rss_mib(server));

  {
    auto c = test::RawClient::unix_socket(path);
    c.send(test::RawClient::get("/v1/certificates/web"));
    auto r = c.read_response();
    std::printf("bundle: %zu bytes of JSON per fetch\n", r ? r->body.size() : 0);
  }

  // Throughput.
  run_fetches(path, 64, 1s, true);  // warm up
  double cpu0 = cpu_seconds(server);
  const auto ka = run_fetches(path, 64, std::chrono::seconds(seconds), true);
  const double ka_cpu_us = (cpu_seconds(server) - cpu0) * 1e6 / static_cast<double>(ka.requests);
  std::printf("fetch, 64 clients, keep-alive:        %8.0f req/s  p50 %6.0f us  p99 %6.0f us  "
              "server CPU %.1f us/request (%zu requests, %zu errors)\n",
              ka.per_second, ka.p50_us, ka.p99_us, ka_cpu_us, ka.requests, ka.errors);
  cpu0 = cpu_seconds(server);
  const auto nc = run_fetches(path, 64, std::chrono::seconds(seconds), false);
  const double nc_cpu_us = (cpu_seconds(server) - cpu0) * 1e6 / static_cast<double>(nc.requests);
  std::printf("fetch, 64 clients, new conn/request:  %8.0f req/s  p50 %6.0f us  p99 %6.0f us  "
              "server CPU %.1f us/request (%zu requests, %zu errors)\n",
              nc.per_second, nc.p50_us, nc.p99_us, nc_cpu_us, nc.requests, nc.errors);
  std::printf("server RSS after the fetch runs %.1f MiB\n", rss_mib(server));

  // Fan-out.
  const double rss_before_watchers = rss_mib(server);
  test::WatcherFleet fleet(path, "/v1/certificates/web?watch=1", watchers);
  if (fleet.failed() > 0) std::printf("warning: %zu watchers failed to connect\n", fleet.failed());
  if (!fleet.wait_all("\"serial\":\"5e00000001\"", 60s)) {
    std::fprintf(stderr, "watchers did not all get the first bundle\n");
  }
  const double rss_watching = rss_mib(server);
  std::vector<double> fanout_ms;
  const double fan_cpu0 = cpu_seconds(server);
  for (int i = 0; i < rotations; ++i) {
    const char go = 'c';
    [[maybe_unused]] auto n = ::write(control[1], &go, 1);
    const std::string line = server_events.line();  // "commit <ns> <serial>"
    std::int64_t committed_ns = 0;
    unsigned serial = 0;
    std::sscanf(line.c_str(), "commit %ld %u", &committed_ns, &serial);
    char marker[64];
    std::snprintf(marker, sizeof marker, "\"serial\":\"5e%08x\"", serial);
    auto last = fleet.wait_all(marker, 10s);
    if (!last) {
      std::fprintf(stderr, "rotation %d: not every watcher got serial %u\n", i, serial);
      continue;
    }
    const auto last_ns =
        std::chrono::duration_cast<std::chrono::nanoseconds>(last->time_since_epoch()).count();
    fanout_ms.push_back(static_cast<double>(last_ns - committed_ns) / 1e6);
    std::this_thread::sleep_for(20ms);
  }
  const double rss_after_rotations = rss_mib(server);
  const double fan_cpu_ms = (cpu_seconds(server) - fan_cpu0) * 1e3 / std::max(1, rotations);
  std::printf("fan-out to %zu watchers, %zu rotations: commit -> last watcher p50 %.2f ms  "
              "p99 %.2f ms  max %.2f ms  server CPU %.2f ms/rotation (%zu watchers closed)\n",
              fleet.size(), fanout_ms.size(), percentile(fanout_ms, 0.5),
              percentile(fanout_ms, 0.99), percentile(fanout_ms, 1.0), fan_cpu_ms, fleet.closed());
  std::printf("server RSS: before watchers %.1f MiB, with %zu watchers %.1f MiB, after %d "
              "rotations %.1f MiB, peak (VmHWM) %s\n",
              rss_before_watchers, fleet.size(), rss_watching, rotations, rss_after_rotations,
              status_field(server, "VmHWM").c_str());

  const char quit = 'q';
  [[maybe_unused]] auto n = ::write(control[1], &quit, 1);
  int status = 0;
  for (int i = 0; i < 100 && ::waitpid(server, &status, WNOHANG) == 0; ++i) {
    std::this_thread::sleep_for(50ms);
  }
  if (::waitpid(server, &status, WNOHANG) == 0) {
    ::kill(server, SIGKILL);
    ::waitpid(server, &status, 0);
  }
  ::unlink(path.c_str());
  ::rmdir(dir.c_str());

  const bool ok = ka.per_second >= 40000 && percentile(fanout_ms, 0.99) <= 10.0 &&
                  rss_watching <= 32.0;
  std::printf("targets (>= 40,000 fetches/s keep-alive; fan-out p99 <= 10 ms; RSS with 1,000 "
              "watchers <= 32 MiB): %s\n",
              ok ? "met" : "NOT met");
  return 0;
}
