#include "tests/support/daemon_fixture.h"

#include "core/crypto/keys.h"
#include "core/crypto/x509.h"

#include <boost/json/parse.hpp>

#include <unistd.h>

#include <fstream>
#include <sstream>

namespace certagent::test {

DaemonFixture::DaemonFixture() : dir_("certagent-daemon"), metrics_port_(free_tcp_port()) {}

DaemonFixture::~DaemonFixture() {
  if (daemon_) daemon_->stop(15, 10s);
}

void DaemonFixture::write_config(const std::string& body, const Header& header) {
  std::ostringstream c;
  c << "state_dir: " << state_dir().string() << "\n"
    << "log: { level: debug, format: text }\n"
    << "identity: " << header.identity << "\n"
    << "socket: { path: " << socket_path().string() << ", mode: \"0660\" }\n"
    << "metrics: { listen: \"127.0.0.1:" << metrics_port_ << "\" }\n"
    << "brokers:\n  dev: { type: local }\n"
    << header.extra_brokers << body;
  write_file(config_path(), c.str());
}

RunResult DaemonFixture::cli(std::vector<std::string> args) const {
  args.insert(args.begin(), certagent_binary().string());
  args.push_back("--config");
  args.push_back(config_path().string());
  return run(args, 60s);
}

void DaemonFixture::start(const std::vector<std::string>& prefix) {
  Process::Options options;
  options.stdout_file = log_path();
  options.stderr_file = log_path();
  std::vector<std::string> argv = prefix;
  argv.insert(argv.end(), {certagent_binary().string(), "run", "--config", config_path().string()});
  daemon_.emplace(argv, options);
}

int DaemonFixture::stop(int signal) {
  if (!daemon_) return -1;
  int status = daemon_->stop(signal, 15s);
  daemon_.reset();
  return status;
}

void DaemonFixture::kill9() {
  if (daemon_) daemon_->kill_now();
  daemon_.reset();
}

std::string DaemonFixture::current_serial(const std::string& name) const {
  const std::string text = read_file(live_dir(name) / "meta.json");
  if (text.empty()) return {};
  boost::system::error_code ec;
  auto v = boost::json::parse(text, ec);
  if (ec || !v.is_object()) return {};
  const auto* serial = v.as_object().if_contains("serial");
  return serial && serial->is_string() ? std::string(serial->as_string()) : std::string();
}

std::optional<std::string> DaemonFixture::wait_new_serial(const std::string& name,
                                                          const std::vector<std::string>& seen,
                                                          std::chrono::milliseconds deadline) {
  std::string found;
  bool ok = wait_until(
      [&] {
        found = current_serial(name);
        return !found.empty() && std::find(seen.begin(), seen.end(), found) == seen.end();
      },
      deadline, 20ms);
  if (!ok) return std::nullopt;
  return found;
}

std::vector<boost::json::object> DaemonFixture::audit_events() const {
  std::vector<boost::json::object> out;
  std::istringstream in(read_file(state_dir() / "audit.log"));
  std::string line;
  while (std::getline(in, line)) {
    boost::system::error_code ec;
    auto v = boost::json::parse(line, ec);
    if (!ec && v.is_object()) out.push_back(v.as_object());
  }
  return out;
}

int DaemonFixture::count_events(const std::string& event, const std::string& name) const {
  int n = 0;
  for (const auto& e : audit_events()) {
    const auto* ev = e.if_contains("event");
    const auto* nm = e.if_contains("name");
    if (ev && ev->is_string() && ev->as_string() == event && nm && nm->is_string() &&
        nm->as_string() == name)
      ++n;
  }
  return n;
}

namespace {

// curl GET of `url` (with `extra` options before it); body out, status in *status (0: no answer).
std::string curl_get(std::vector<std::string> extra, const std::string& url, int* status) {
  std::vector<std::string> argv{require_program("curl").string(), "-s", "-m", "5", "-o", "-", "-w", "\n%{http_code}"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  argv.push_back(url);
  auto r = run(argv, 10s);
  if (r.exit_code != 0) {
    if (status) *status = 0;
    return {};
  }
  auto nl = r.out.rfind('\n');
  if (status) *status = std::atoi(r.out.c_str() + nl + 1);
  return r.out.substr(0, nl);
}

}  // namespace

std::string DaemonFixture::http_get(const std::string& path, int* status) const {
  return curl_get({}, "http://127.0.0.1:" + std::to_string(metrics_port_) + path, status);
}

std::string DaemonFixture::socket_get(const std::string& path, int* status) const {
  return curl_get({"--unix-socket", socket_path().string()}, "http://certagent" + path, status);
}

std::optional<double> DaemonFixture::metric(const std::string& name, const std::string& labels) const {
  const std::string text = http_get("/metrics");
  const std::string key = name + "{" + labels + "} ";
  auto pos = text.find(key);
  if (pos == std::string::npos) return std::nullopt;
  return std::stod(text.substr(pos + key.size()));
}

namespace {

std::string check_pair(const std::string& cert_pem, const std::string& key_pem) {
  auto chain = crypto::parse_chain(cert_pem);
  if (!chain || chain->empty()) return "certificate does not parse";
  auto key = crypto::parse_private_key(key_pem);
  if (!key) return "key does not parse: " + key.error().message;
  crypto::EvpPkeyPtr leaf_key(X509_get_pubkey(chain->front().get()));
  if (!crypto::same_public_key(leaf_key.get(), key->get())) return "key does not match certificate";
  return {};
}

// bundle.pem: key first, then the full chain.
std::string split_bundle(const std::string& bundle, std::string& key, std::string& certs) {
  auto begin_cert = bundle.find("-----BEGIN CERTIFICATE-----");
  if (begin_cert == std::string::npos) return "bundle has no certificate";
  key = bundle.substr(0, begin_cert);
  certs = bundle.substr(begin_cert);
  return {};
}

}  // namespace

std::string check_consistent(const fs::path& live_dir) {
  // One resolution of ..data, then everything relative to that generation.
  std::error_code ec;
  const auto target = fs::read_symlink(live_dir / "..data", ec);
  if (ec) return "..data: " + ec.message();
  const auto gen = live_dir / target;
  const std::string cert = read_file(gen / "cert.pem");
  const std::string key = read_file(gen / "key.pem");
  if (cert.empty() || key.empty()) {
    // The generation may have been pruned between the readlink and the reads (keep: N): that is
    // a reader that held ..data too long, not a torn set. Re-resolving is what readers do.
    if (!fs::exists(gen)) return {};
    return "generation " + target.string() + " is missing files";
  }
  if (auto why = check_pair(cert, key); !why.empty()) return target.string() + ": " + why;
  std::string bkey, bcerts;
  const std::string bundle = read_file(live_dir / "bundle.pem");
  if (auto why = split_bundle(bundle, bkey, bcerts); !why.empty()) return "bundle.pem: " + why;
  if (auto why = check_pair(bcerts, bkey); !why.empty()) return "bundle.pem: " + why;
  return {};
}

}  // namespace certagent::test
