#pragma once
// Real TLS terminators for the reloader tests and the benchmark: a test CA that issues leaves
// with distinct serials, private nginx and haproxy instances on loopback (TLS resumption off,
// trivial backends), wrk as load, and a helper that runs a coroutine to completion.

#include "core/material.h"
#include "reloaders/reloader.h"
#include "tests/support/test_support.h"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <cstdint>
#include <exception>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace certagent::test::reloaders {

// Whether something accepts TCP connections on 127.0.0.1:port.
bool port_open(int port);

// Runs `a` on `ioc` until it completes; rethrows what it threw.
template <class T>
T run_on(boost::asio::io_context& ioc, boost::asio::awaitable<T> a) {
  std::optional<T> out;
  std::exception_ptr error;
  boost::asio::co_spawn(ioc, std::move(a), [&](std::exception_ptr e, T v) {
    error = e;
    if (!e) out.emplace(std::move(v));
  });
  ioc.restart();
  ioc.run();
  if (error) std::rethrow_exception(error);
  return std::move(*out);
}

// An ECDSA P-256 root; leaves for CN localhost, DNS localhost, IP 127.0.0.1.
class TestCa {
 public:
  TestCa();
  ~TestCa();
  TestCa(const TestCa&) = delete;
  TestCa& operator=(const TestCa&) = delete;

  // A leaf with this serial, valid from an hour ago for a day.
  Material issue(std::uint64_t serial) const;
  std::string cert_pem() const;
  // A "good" OCSP response (DER) for `leaf`, made with the openssl CLI in `work_dir`.
  std::string ocsp_response_der(const Material& leaf, const fs::path& work_dir) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Writes generations in DESIGN.md's ..data layout with the real file sink (agent/file_sink.h).
class Generations {
 public:
  // `owner`: files.owner (empty: the test's user), e.g. the user PostgreSQL runs as.
  explicit Generations(fs::path dir, std::string owner = {});
  ~Generations();
  void commit(const Material& m);  // fails the test on error
  const fs::path& dir() const { return dir_; }

 private:
  fs::path dir_;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A private nginx (foreground master, own prefix, pid, error_log and temp paths).
class NginxServer {
 public:
  // Serves `cert`/`key` (usually <files dir>/fullchain.pem and key.pem) on 127.0.0.1:port.
  NginxServer(const fs::path& dir, int port, const fs::path& cert, const fs::path& key, int workers = 2);
  ~NginxServer();
  int port() const { return port_; }
  const fs::path& error_log() const { return error_log_; }
  const fs::path& conf() const { return conf_; }
  fs::path pid_file() const { return dir_ / "nginx.pid"; }
  // `nginx -p DIR -e LOG -c CONF -s reload`
  std::vector<std::string> reload_command() const;
  std::vector<std::string> base_command() const;
  pid_t master_pid() const { return process_.pid(); }
  bool running() { return process_.running(); }

 private:
  fs::path dir_;
  fs::path conf_;
  fs::path error_log_;
  int port_;
  Process process_;
};

// A private haproxy in master-worker mode with an admin socket (level admin).
class HaproxyServer {
 public:
  HaproxyServer(const fs::path& dir, int port, const fs::path& crt, bool ocsp_stapling = false);
  ~HaproxyServer();
  int port() const { return port_; }
  const fs::path& admin_socket() const { return admin_socket_; }
  // `show ssl cert` etc. through the admin socket, synchronously (for assertions).
  std::string admin(const std::string& command) const;

 private:
  fs::path dir_;
  fs::path admin_socket_;
  int port_;
  Process process_;
};

struct WrkResult {
  long requests{0};
  long connect_errors{0};
  long read_errors{0};
  long write_errors{0};
  long timeouts{0};
  long non_2xx{0};
  bool parsed{false};
  std::string output;
  long errors() const { return connect_errors + read_errors + write_errors + timeouts + non_2xx; }
};
WrkResult parse_wrk(const std::string& output);

// Runs wrk in a thread; join() waits for it and parses the output.
class WrkRun {
 public:
  WrkRun(int port, std::chrono::seconds duration, int connections, bool connection_close, int threads = 2);
  ~WrkRun();
  bool finished() const;
  WrkResult join();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Rotations every `interval` while wrk loads the server for `duration`.
struct LoadRun {
  WrkResult wrk;
  int reloads{0};
  int successes{0};
  std::vector<std::string> failures;   // "serial: result: detail"
  std::vector<long> stable_ms;         // per verified reload: probe start -> stable new serial
};
LoadRun rotate_under_load(boost::asio::io_context& ioc, certagent::reloaders::Reloader& reloader,
                          Generations& generations, const TestCa& ca, int port, std::chrono::seconds duration,
                          std::chrono::milliseconds interval, bool connection_close, std::uint64_t& next_serial,
                          int connections = 50);

// The served leaf's serial through one fresh handshake (openssl-free: our own probe), after
// the SSLRequest / STARTTLS of `protocol`.
std::string served_serial(int port, const std::string& sni = "localhost",
                          config::VerifyProtocol protocol = config::VerifyProtocol::tls);

certagent::reloaders::ReloadEvent event_for(const std::string& name, const Material& m,
                                            std::optional<fs::path> files_dir = std::nullopt);

std::string hex_serial(std::uint64_t serial);

}  // namespace certagent::test::reloaders
