#include "tests/integration/reloaders/reloader_fixtures.h"

#include "core/crypto/ossl_ptr.h"
#include "agent/file_sink.h"
#include "reloaders/reloader_base.h"
#include "reloaders/serving_probe.h"
#include "tests/support/test_pki.h"

#include <gtest/gtest.h>

#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <regex>
#include <stdexcept>
#include <thread>

namespace certagent::test::reloaders {
namespace {

void check(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string("OpenSSL: ") + what);
}

// A sequential serial, big-endian.
std::vector<std::uint8_t> serial_bytes(std::uint64_t serial) {
  std::vector<std::uint8_t> out(8);
  for (int i = 7; i >= 0; --i, serial >>= 8) out[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(serial);
  return out;
}

long number_after(const std::string& text, const std::string& pattern) {
  std::smatch m;
  if (std::regex_search(text, m, std::regex(pattern))) return std::stol(m[1].str());
  return 0;
}

}  // namespace

bool port_open(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

std::string hex_serial(std::uint64_t serial) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%llx", static_cast<unsigned long long>(serial));
  return buf;
}

// ---- TestCa -----------------------------------------------------------------------------------

struct TestCa::Impl {
  TestCert ca;
  std::string cert_pem;
  std::string key_pem;
};

TestCa::TestCa() : impl_(std::make_unique<Impl>()) {
  impl_->ca = make_cert(CertSpec{.common_name = "certagent reloader test CA",
                                 .is_ca = true,
                                 .not_before_offset = std::chrono::hours(-1),
                                 .lifetime = std::chrono::hours(1 + 7 * 24),
                                 .serial = serial_bytes(1)});
  impl_->cert_pem = impl_->ca.cert_pem();
  impl_->key_pem = impl_->ca.key_pem();
}

TestCa::~TestCa() = default;

std::string TestCa::cert_pem() const { return impl_->cert_pem; }

Material TestCa::issue(std::uint64_t serial) const {
  TestCert leaf = make_cert(CertSpec{.common_name = "localhost",
                                     .dns_names = {"localhost"},
                                     .ip_addresses = {"127.0.0.1"},
                                     .not_before_offset = std::chrono::hours(-1),
                                     .lifetime = std::chrono::hours(1 + 24),
                                     .serial = serial_bytes(serial)},
                            &impl_->ca);
  Material m;
  m.cert_pem = leaf.cert_pem();
  m.key_pem = Secret(leaf.key_pem());
  m.serial_hex = hex_serial(serial);
  const auto now = std::chrono::system_clock::now();
  m.not_before = std::chrono::time_point_cast<std::chrono::seconds>(now - std::chrono::hours(1));
  m.not_after = std::chrono::time_point_cast<std::chrono::seconds>(now + std::chrono::hours(24));
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  check(X509_digest(leaf.cert.get(), EVP_sha256(), md, &md_len) == 1, "X509_digest");
  static constexpr char kHex[] = "0123456789abcdef";
  for (unsigned i = 0; i < md_len; ++i) {
    m.sha256_hex += kHex[md[i] >> 4];
    m.sha256_hex += kHex[md[i] & 15];
  }
  m.broker = "test";
  return m;
}

std::string TestCa::ocsp_response_der(const Material& leaf, const fs::path& work_dir) const {
  fs::create_directories(work_dir);
  write_file(work_dir / "ca.pem", impl_->cert_pem);
  write_file(work_dir / "ca.key", impl_->key_pem, fs::perms(0600));
  write_file(work_dir / "leaf.pem", leaf.cert_pem);
  std::string upper = leaf.serial_hex;
  if (upper.size() % 2) upper = "0" + upper;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  write_file(work_dir / "index.txt", "V\t350101000000Z\t\t" + upper + "\tunknown\t/CN=localhost\n");
  write_file(work_dir / "index.txt.attr", "unique_subject = no\n");
  auto openssl = require_program("openssl");
  auto req = run({openssl.string(), "ocsp", "-issuer", (work_dir / "ca.pem").string(), "-cert",
                  (work_dir / "leaf.pem").string(), "-no_nonce", "-reqout", (work_dir / "req.der").string()});
  if (req.exit_code != 0) throw std::runtime_error("openssl ocsp request: " + req.err);
  auto resp = run({openssl.string(), "ocsp", "-index", (work_dir / "index.txt").string(), "-rsigner",
                   (work_dir / "ca.pem").string(), "-rkey", (work_dir / "ca.key").string(), "-CA",
                   (work_dir / "ca.pem").string(), "-reqin", (work_dir / "req.der").string(), "-respout",
                   (work_dir / "resp.der").string(), "-ndays", "1"});
  if (resp.exit_code != 0) throw std::runtime_error("openssl ocsp response: " + resp.err);
  return read_file(work_dir / "resp.der");
}

// ---- Generations ------------------------------------------------------------------------------

struct Generations::Impl {
  explicit Impl(config::FilesConfig files) : sink(std::move(files)) {}
  FileSink sink;
};

Generations::Generations(fs::path dir, std::string owner) : dir_(std::move(dir)) {
  fs::create_directories(dir_);
  config::FilesConfig files;
  files.dir = dir_;
  files.owner = std::move(owner);
  files.keep = 3;
  impl_ = std::make_unique<Impl>(files);
}

Generations::~Generations() = default;

void Generations::commit(const Material& m) {
  auto r = impl_->sink.commit(m);
  if (!r) throw std::runtime_error("file sink commit: " + r.error().message);
}

// ---- nginx ------------------------------------------------------------------------------------

NginxServer::NginxServer(const fs::path& dir, int port, const fs::path& cert, const fs::path& key, int workers)
    : dir_(dir), conf_(dir / "nginx.conf"), error_log_(dir / "error.log"), port_(port) {
  fs::create_directories(dir / "tmp");
  std::string t = (dir / "tmp").string();
  write_file(conf_,
             "daemon off;\n"
             "worker_processes " + std::to_string(workers) + ";\n"
             "pid " + (dir / "nginx.pid").string() + ";\n"
             "error_log " + error_log_.string() + ";\n"
             "events { worker_connections 1024; }\n"
             "http {\n"
             "  access_log off;\n"
             "  client_body_temp_path " + t + "/client;\n"
             "  proxy_temp_path " + t + "/proxy;\n"
             "  fastcgi_temp_path " + t + "/fastcgi;\n"
             "  uwsgi_temp_path " + t + "/uwsgi;\n"
             "  scgi_temp_path " + t + "/scgi;\n"
             "  keepalive_requests 1000000;\n"
             "  server {\n"
             "    listen 127.0.0.1:" + std::to_string(port) + " ssl;\n"
             "    ssl_certificate " + cert.string() + ";\n"
             "    ssl_certificate_key " + key.string() + ";\n"
             "    ssl_session_tickets off;\n"
             "    ssl_session_cache off;\n"
             "    location / { return 200 \"ok\"; }\n"
             "  }\n"
             "}\n");
  auto nginx = require_program("nginx");
  Process::Options options;
  options.stderr_file = dir / "nginx.stderr";
  process_ = Process({nginx.string(), "-p", dir.string(), "-e", error_log_.string(), "-c", conf_.string()}, options);
  if (!wait_until([&] { return port_open(port_) || !process_.running(); }, 10s) || !process_.running()) {
    throw std::runtime_error("nginx did not start: " + read_file(dir / "nginx.stderr") + read_file(error_log_));
  }
}

NginxServer::~NginxServer() { process_.stop(SIGTERM, 10s); }

std::vector<std::string> NginxServer::base_command() const {
  return {require_program("nginx").string(), "-p", dir_.string(), "-e", error_log_.string(), "-c", conf_.string()};
}

std::vector<std::string> NginxServer::reload_command() const {
  auto c = base_command();
  c.push_back("-s");
  c.push_back("reload");
  return c;
}

// ---- haproxy ----------------------------------------------------------------------------------

HaproxyServer::HaproxyServer(const fs::path& dir, int port, const fs::path& crt, bool)
    : dir_(dir), admin_socket_(dir / "admin.sock"), port_(port) {
  fs::create_directories(dir);
  const fs::path cfg = dir / "haproxy.cfg";
  write_file(cfg,
             "global\n"
             "  master-worker\n"
             "  pidfile " + (dir / "haproxy.pid").string() + "\n"
             "  stats socket " + admin_socket_.string() + " mode 600 level admin expose-fd listeners\n"
             "  tune.ssl.cachesize 0\n"
             "  nbthread 2\n"
             "defaults\n"
             "  mode http\n"
             "  timeout client 30s\n"
             "  timeout server 30s\n"
             "  timeout connect 5s\n"
             "  timeout http-keep-alive 30s\n"
             "frontend fe\n"
             "  bind 127.0.0.1:" + std::to_string(port) + " ssl crt " + crt.string() + " no-tls-tickets\n"
             "  http-request return status 200 content-type text/plain string ok\n");
  auto haproxy = require_program("haproxy");
  Process::Options options;
  options.stderr_file = dir / "haproxy.stderr";
  options.stdout_file = dir / "haproxy.stdout";
  process_ = Process({haproxy.string(), "-W", "-S", (dir / "master.sock").string(), "-f", cfg.string()}, options);
  if (!wait_until([&] { return (port_open(port_) && fs::exists(admin_socket_)) || !process_.running(); }, 10s) ||
      !process_.running()) {
    throw std::runtime_error("haproxy did not start: " + read_file(dir / "haproxy.stderr"));
  }
}

HaproxyServer::~HaproxyServer() { process_.stop(SIGTERM, 10s); }

std::string HaproxyServer::admin(const std::string& command) const {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", admin_socket_.c_str());
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return "(cannot connect)";
  }
  std::string c = command + "\n";
  if (::write(fd, c.data(), c.size()) != static_cast<ssize_t>(c.size())) {
    ::close(fd);
    return "(write failed)";
  }
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) out.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  return out;
}

// ---- wrk --------------------------------------------------------------------------------------

WrkResult parse_wrk(const std::string& output) {
  WrkResult r;
  r.output = output;
  std::smatch m;
  if (std::regex_search(output, m, std::regex(R"((\d+) requests in)"))) {
    r.requests = std::stol(m[1].str());
    r.parsed = true;
  }
  if (std::regex_search(output, m,
                        std::regex(R"(Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+))"))) {
    r.connect_errors = std::stol(m[1].str());
    r.read_errors = std::stol(m[2].str());
    r.write_errors = std::stol(m[3].str());
    r.timeouts = std::stol(m[4].str());
  }
  r.non_2xx = number_after(output, R"(Non-2xx or 3xx responses: (\d+))");
  return r;
}

struct WrkRun::Impl {
  std::thread thread;
  std::atomic<bool> done{false};
  RunResult result;
};

WrkRun::WrkRun(int port, std::chrono::seconds duration, int connections, bool connection_close, int threads)
    : impl_(std::make_unique<Impl>()) {
  std::vector<std::string> argv{require_program("wrk").string(), "-t" + std::to_string(threads),
                                "-c" + std::to_string(connections), "-d" + std::to_string(duration.count()) + "s",
                                "--timeout", "5s"};
  if (connection_close) {
    argv.push_back("-H");
    argv.push_back("Connection: close");
  }
  argv.push_back("https://127.0.0.1:" + std::to_string(port) + "/");
  auto limit = std::chrono::duration_cast<std::chrono::milliseconds>(duration) + 60s;
  impl_->thread = std::thread([impl = impl_.get(), argv, limit] {
    impl->result = run(argv, limit);
    impl->done = true;
  });
}

WrkRun::~WrkRun() {
  if (impl_->thread.joinable()) impl_->thread.join();
}

bool WrkRun::finished() const { return impl_->done; }

WrkResult WrkRun::join() {
  if (impl_->thread.joinable()) impl_->thread.join();
  auto r = parse_wrk(impl_->result.out);
  if (impl_->result.exit_code != 0) r.parsed = false;
  r.output += impl_->result.err;
  return r;
}

LoadRun rotate_under_load(boost::asio::io_context& ioc, certagent::reloaders::Reloader& reloader,
                          Generations& generations, const TestCa& ca, int port, std::chrono::seconds duration,
                          std::chrono::milliseconds interval, bool connection_close, std::uint64_t& next_serial,
                          int connections) {
  namespace r = certagent::reloaders;
  LoadRun out;
  WrkRun wrk(port, duration, connections, connection_close);
  // Let wrk's connections open first, then rotate on a fixed cadence until it stops (leaving
  // a margin so the last reload settles while wrk still measures).
  const auto begin = std::chrono::steady_clock::now();
  const auto stop_at = begin + duration - 1500ms;
  auto next = begin + 500ms;
  while (std::chrono::steady_clock::now() < stop_at && !wrk.finished()) {
    std::this_thread::sleep_until(next);  // pacing, not an assertion
    next += interval;
    auto m = ca.issue(next_serial++);
    generations.commit(m);
    auto outcome = run_on(ioc, reloader.reload(event_for("web", m, generations.dir())));
    ++out.reloads;
    if (outcome.result == r::ReloadResult::success) {
      ++out.successes;
    } else {
      out.failures.push_back(m.serial_hex + ": " + std::string(r::to_string(outcome.result)) + ": " + outcome.detail);
    }
    if (auto* base = dynamic_cast<r::ReloaderBase*>(&reloader); base && base->last_probe() &&
                                                                 base->last_probe()->verified) {
      out.stable_ms.push_back(base->last_probe()->stable_since.count());
    }
    if (std::chrono::steady_clock::now() > next) next = std::chrono::steady_clock::now();
  }
  out.wrk = wrk.join();
  return out;
}

// ---- misc -------------------------------------------------------------------------------------

std::string served_serial(int port, const std::string& sni, config::VerifyProtocol protocol) {
  boost::asio::io_context ioc;
  auto r = run_on(ioc, certagent::reloaders::fetch_served_serial("127.0.0.1:" + std::to_string(port), sni, 5s,
                                                                 protocol));
  return r ? *r : "error: " + r.error().message;
}

certagent::reloaders::ReloadEvent event_for(const std::string& name, const Material& m,
                                            std::optional<fs::path> files_dir) {
  certagent::reloaders::ReloadEvent e;
  e.cert_name = name;
  auto copy = std::make_shared<Material>();
  copy->cert_pem = m.cert_pem;
  copy->chain_pem = m.chain_pem;
  copy->key_pem = m.key_pem.clone();
  copy->serial_hex = m.serial_hex;
  copy->not_before = m.not_before;
  copy->not_after = m.not_after;
  copy->sha256_hex = m.sha256_hex;
  copy->broker = m.broker;
  e.material = std::move(copy);
  e.files_dir = std::move(files_dir);
  return e;
}

}  // namespace certagent::test::reloaders
