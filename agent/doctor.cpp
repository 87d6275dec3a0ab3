#include "agent/doctor.h"

#include "agent/builtin_plugins.h"
#include "agent/cli_client.h"
#include "agent/file_sink.h"
#include "agent/state_file.h"
#include "core/config/config.h"
#include "core/crypto/keys.h"
#include "core/crypto/validation.h"
#include "core/crypto/x509.h"
#include "core/logging.h"
#include "core/time_format.h"
#include "reloaders/envoy_config.h"
#include "reloaders/exec_config.h"
#include "reloaders/haproxy_config.h"
#include "reloaders/nginx_config.h"
#include "reloaders/serving_probe.h"
#include "reloaders/signal_config.h"
#include "reloaders/systemd_config.h"
#include "renewers/local_renewer.h"
#include "tpm/identity.h"
#include "tpm/identity_store.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cmath>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>

extern char** environ;

namespace certagent::doctor {
namespace {

namespace asio = boost::asio;
namespace fs = std::filesystem;
namespace json = boost::json;
using namespace asio::experimental::awaitable_operators;

const SystemClock kSystemClock;
// Set when a TPM call was left waiting (open_identity_bounded): the process then ends without
// running destructors that thread might race with.
std::atomic<bool> g_abandoned_thread{false};

// ---- small facts about the host ------------------------------------------------------------

std::string user_name(uid_t uid) {
  long size = sysconf(_SC_GETPW_R_SIZE_MAX);
  std::vector<char> buf(static_cast<std::size_t>(size > 0 ? size : 16384));
  passwd pw{};
  passwd* found = nullptr;
  if (getpwuid_r(uid, &pw, buf.data(), buf.size(), &found) == 0 && found) return pw.pw_name;
  return "uid " + std::to_string(uid);
}

std::string group_name(gid_t gid) {
  long size = sysconf(_SC_GETGR_R_SIZE_MAX);
  std::vector<char> buf(static_cast<std::size_t>(size > 0 ? size : 16384));
  group gr{};
  group* found = nullptr;
  if (getgrgid_r(gid, &gr, buf.data(), buf.size(), &found) == 0 && found) return gr.gr_name;
  return "gid " + std::to_string(gid);
}

// A numeric owner or group as the file sink takes it ("1000").
std::optional<std::uint32_t> parse_id(const std::string& s) {
  std::uint32_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

std::optional<uid_t> lookup_user(const std::string& name) {
  long size = sysconf(_SC_GETPW_R_SIZE_MAX);
  std::vector<char> buf(static_cast<std::size_t>(size > 0 ? size : 16384));
  passwd pw{};
  passwd* found = nullptr;
  if (getpwnam_r(name.c_str(), &pw, buf.data(), buf.size(), &found) == 0 && found) return pw.pw_uid;
  return parse_id(name);
}

std::optional<gid_t> lookup_group(const std::string& name) {
  long size = sysconf(_SC_GETGR_R_SIZE_MAX);
  std::vector<char> buf(static_cast<std::size_t>(size > 0 ? size : 16384));
  group gr{};
  group* found = nullptr;
  if (getgrnam_r(name.c_str(), &gr, buf.data(), buf.size(), &found) == 0 && found) return gr.gr_gid;
  return parse_id(name);
}

// The user the daemon runs as: see doctor.h.
struct DaemonUser {
  uid_t uid{0};
  gid_t gid{0};
  std::vector<gid_t> groups;
  std::string name;
};

DaemonUser daemon_user(const fs::path& state_dir) {
  DaemonUser u;
  struct stat st {};
  u.uid = ::stat(state_dir.c_str(), &st) == 0 ? st.st_uid : ::geteuid();
  u.gid = u.uid == ::geteuid() ? ::getegid() : st.st_gid;
  u.name = user_name(u.uid);
  long size = sysconf(_SC_GETPW_R_SIZE_MAX);
  std::vector<char> buf(static_cast<std::size_t>(size > 0 ? size : 16384));
  passwd pw{};
  passwd* found = nullptr;
  if (getpwuid_r(u.uid, &pw, buf.data(), buf.size(), &found) == 0 && found) {
    u.gid = pw.pw_gid;
    int n = 64;
    std::vector<gid_t> groups(static_cast<std::size_t>(n));
    if (getgrouplist(pw.pw_name, pw.pw_gid, groups.data(), &n) < 0) {
      groups.resize(static_cast<std::size_t>(n));
      getgrouplist(pw.pw_name, pw.pw_gid, groups.data(), &n);
    }
    groups.resize(static_cast<std::size_t>(std::max(n, 0)));
    u.groups = std::move(groups);
  }
  if (std::find(u.groups.begin(), u.groups.end(), u.gid) == u.groups.end()) u.groups.push_back(u.gid);
  return u;
}

// Whether `user` may create and remove entries in the directory `st` describes.
bool can_write_dir(const struct stat& st, const DaemonUser& user) {
  if (user.uid == 0) return true;
  if (st.st_uid == user.uid) return (st.st_mode & (S_IWUSR | S_IXUSR)) == (S_IWUSR | S_IXUSR);
  if (std::find(user.groups.begin(), user.groups.end(), st.st_gid) != user.groups.end())
    return (st.st_mode & (S_IWGRP | S_IXGRP)) == (S_IWGRP | S_IXGRP);
  return (st.st_mode & (S_IWOTH | S_IXOTH)) == (S_IWOTH | S_IXOTH);
}

std::string mode_text(mode_t m) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(m & 07777));
  return buf;
}

struct CommandResult {
  int exit_code{-1};  // -1: could not run
  std::string out;
};

// Runs argv (no shell) with stdin and stderr on /dev/null; stdout captured (first 64 KiB).
CommandResult run_command(const std::vector<std::string>& argv) {
  CommandResult r;
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) return r;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, pipefd[1], 1);
  posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  const int rc = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(pipefd[1]);
  if (rc != 0) {
    ::close(pipefd[0]);
    return r;
  }
  char buf[4096];
  while (true) {
    ssize_t n = ::read(pipefd[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (r.out.size() < 65536) r.out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(pipefd[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  std::size_t b = 0;
  while (b < s.size() && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  return s.substr(b);
}

bool under_systemd() { return fs::is_directory("/run/systemd/system"); }

// Whether a program named by argv[0] can be run: an absolute path that is executable, or a
// name found on PATH.
std::optional<fs::path> find_program(const std::string& name) {
  if (name.find('/') != std::string::npos) {
    if (::access(name.c_str(), X_OK) == 0) return fs::path(name);
    return std::nullopt;
  }
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  std::istringstream in(dirs);
  for (std::string dir; std::getline(in, dir, ':');) {
    if (dir.empty()) continue;
    fs::path p = fs::path(dir) / name;
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  return std::nullopt;
}

// A Unix socket that accepts a connection now.
Result<> connect_unix(const fs::path& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.string().size() >= sizeof addr.sun_path) return make_error("path too long for a Unix socket");
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return make_error(std::string("socket: ") + std::strerror(errno));
  const int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return make_error(std::string("connect: ") + std::strerror(err));
  return {};
}

std::string normalize_serial(std::string_view s) { return reloaders::normalize_serial(s); }

// ---- an identity stand-in ------------------------------------------------------------------

// Lets a broker's client be made for its (unauthenticated) probe when the real identity did not
// open: the broker's reachability is worth knowing even then. Everything else fails.
class ProbeOnlyIdentity final : public tpm::Identity {
 public:
  ProbeOnlyIdentity() {
    if (auto key = crypto::generate_key(crypto::KeyType::ecdsa_p256)) public_pem_ = crypto::public_key_pem(key->get());
  }
  std::string_view backend() const override { return "none"; }
  std::string public_key_pem() const override { return public_pem_; }
  Result<tpm::Bytes> sign_digest(std::span<const std::uint8_t>) override { return unavailable(); }
  Result<crypto::EvpPkeyPtr> private_key() override { return unavailable(); }
  Result<tpm::Bytes> hmac(std::string_view, std::span<const std::uint8_t>) override { return unavailable(); }
  Result<> import_hmac_key(std::string_view, std::span<const std::uint8_t>) override { return unavailable(); }
  Result<> seal(std::string_view, std::span<const std::uint8_t>) override { return unavailable(); }
  Result<Secret> unseal(std::string_view) override { return unavailable(); }
  bool has_secret(std::string_view) const override { return false; }

 private:
  static Error unavailable() { return make_error("the host identity did not open"); }
  std::string public_pem_;
};

// ---- the checks ----------------------------------------------------------------------------

class Doctor {
 public:
  Doctor(const fs::path& config_path, const Options& options)
      : config_path_(config_path), options_(options), clock_(options.clock ? *options.clock : kSystemClock) {}

  Report run() {
    if (!check_config()) return std::move(report_);
    user_ = daemon_user(config_.state_dir);
    check_state_dir();
    read_daemon_view();
    check_identity();
    check_sealed_secrets();
    check_daemon();
    asio::co_spawn(io_, network_checks(), asio::detached);
    io_.run();
    for (const auto& cert : config_.certificates) {
      check_trust_bundle(cert);
      check_files(cert);
    }
    check_clock();
    check_systemd();
    // The network checks ran first (on the io_context) but read better after the brokers.
    std::stable_sort(report_.checks.begin(), report_.checks.end(),
                     [](const Check& a, const Check& b) { return order(a.id) < order(b.id); });
    return std::move(report_);
  }

 private:
  static int order(std::string_view id) {
    static constexpr std::string_view kOrder[] = {"config", "state_dir", "identity", "sealed_secret", "broker",
                                                  "broker_credentials", "daemon", "trust_bundle", "files",
                                                  "reloader", "verify", "clock", "systemd"};
    for (std::size_t i = 0; i < std::size(kOrder); ++i)
      if (kOrder[i] == id) return static_cast<int>(i);
    return static_cast<int>(std::size(kOrder));
  }

  void add(std::string id, std::string subject, Verdict v, std::string message, std::string fix = {}) {
    report_.checks.push_back(Check{std::move(id), std::move(subject), v, std::move(message), std::move(fix)});
  }

  // -- config --
  bool check_config() {
    auto loaded = config::load_config(config_path_, agent::builtin_catalog());
    if (!loaded) {
      add("config", config_path_.string(), Verdict::fail, loaded.error().message,
          "edit " + config_path_.string() + " at the positions named (certagent check-config shows the same)");
      return false;
    }
    config_ = std::move(*loaded);
    add("config", config_path_.string(), Verdict::ok,
        "valid: " + std::to_string(config_.brokers.size()) + " broker(s), " +
            std::to_string(config_.certificates.size()) + " certificate(s)");
    return true;
  }

  // -- state_dir --
  void check_state_dir() {
    const auto& dir = config_.state_dir;
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0) {
      add("state_dir", dir.string(), Verdict::warn, "does not exist yet",
          "the daemon (or `certagent enroll`) creates it 0700 at first start; create it owned by the daemon's "
          "user (install -d -m 0700 -o certagent " + dir.string() + ") if its parent is not writable");
      return;
    }
    if (!S_ISDIR(st.st_mode)) {
      add("state_dir", dir.string(), Verdict::fail, "is not a directory", "move it away or point state_dir elsewhere");
      return;
    }
    const std::string facts = "owner " + user_name(st.st_uid) + ", mode " + mode_text(st.st_mode);
    if (st.st_mode & (S_IWGRP | S_IWOTH)) {
      add("state_dir", dir.string(), Verdict::fail, facts + ": writable by group or others (it holds the identity)",
          "chmod 0700 " + dir.string());
      return;
    }
    if (::geteuid() != 0 && st.st_uid != ::geteuid()) {
      add("state_dir", dir.string(), Verdict::warn,
          facts + ": not this user's (" + user_name(::geteuid()) + "), so the other checks may not see everything",
          "run doctor as root or as " + user_name(st.st_uid));
      return;
    }
    if (st.st_mode & (S_IRGRP | S_IROTH)) {
      add("state_dir", dir.string(), Verdict::warn, facts + ": readable by group or others",
          "chmod 0700 " + dir.string());
      return;
    }
    add("state_dir", dir.string(), Verdict::ok, facts + " (the daemon's user: " + user_.name + ")");
  }

  // -- identity --
  bool needs_identity() const {
    for (const auto& [name, b] : config_.brokers)
      if (b.type != "local") return true;
    for (const auto& c : config_.certificates)
      if (c.files && c.files->pkcs12 && c.files->pkcs12->sealed) return true;
    return false;
  }

  void check_identity() {
    const std::string subject = config_.identity.backend + " " +
                                (config_.identity.backend == "tpm" ? config_.identity.tcti : tpm::identity_dir(config_).string());
    if (!needs_identity()) {
      add("identity", subject, Verdict::skip, "no broker or keystore needs the host identity");
      return;
    }
    if (daemon_answers_ && !tpm_shared_safely()) {
      identity_skipped_ = "the running daemon holds the TPM at " + config_.identity.tcti +
                          ", which has no resource manager: a second client would take its object slots";
      add("identity", subject, Verdict::skip, identity_skipped_ + " (the daemon runs, so its identity loaded)",
          "stop the daemon to check the TPM from here, or use device:/dev/tpmrm0");
      return;
    }
    auto opened = open_identity_bounded();
    if (!opened) {
      std::error_code ec;
      const bool enrolled = fs::exists(tpm::identity_dir(config_), ec);
      add("identity", subject, Verdict::fail, opened.error().message,
          enrolled ? (config_.identity.backend == "tpm"
                          ? "check that the TPM answers at " + config_.identity.tcti +
                                " (tpm2_getcap -T \"" + config_.identity.tcti +
                                "\" properties-fixed) and that the daemon's user may open it (group tss)"
                          : "the identity files in " + tpm::identity_dir(config_).string() + " are damaged: restore them")
                   : tpm::enroll_hint(config_));
      return;
    }
    identity_ = std::move(*opened);
    if (identity_->backend() == "file")
      add("identity", subject, Verdict::warn, "loads; the file backend keeps the key on disk (development only)",
          "use identity.backend: tpm in production");
    else
      add("identity", subject, Verdict::ok, "the TPM answers and the identity loads");
  }

  // The kernel's resource manager (/dev/tpmrm0) or tabrmd gives each client its own object
  // slots; a raw device or a swtpm socket does not.
  bool tpm_shared_safely() const {
    const auto& t = config_.identity.tcti;
    return config_.identity.backend != "tpm" || t.rfind("device:/dev/tpmrm", 0) == 0 || t.rfind("tabrmd", 0) == 0;
  }

  // open_identity() blocks while the TPM does not answer, and a swtpm socket serves one client
  // at a time (the running daemon's): wait at most the network timeout. A thread that is still
  // waiting then is left behind; the process ends soon after the report.
  Result<std::unique_ptr<tpm::Identity>> open_identity_bounded() {
    struct Shared {
      std::mutex mutex;
      std::condition_variable done;
      std::optional<Result<std::unique_ptr<tpm::Identity>>> result;
      config::Config config;
    };
    auto shared = std::make_shared<Shared>();
    shared->config = config_;
    std::thread([shared] {
      auto r = tpm::open_identity(shared->config);
      std::lock_guard lock(shared->mutex);
      shared->result.emplace(std::move(r));
      shared->done.notify_all();
    }).detach();
    std::unique_lock lock(shared->mutex);
    if (!shared->done.wait_for(lock, options_.timeout, [&] { return shared->result.has_value(); })) {
      g_abandoned_thread = true;
      return make_error("the TPM did not answer within " + config::format_duration(options_.timeout) +
                        " (a swtpm socket serves one client at a time: is the daemon holding it?)");
    }
    return std::move(*shared->result);
  }

  void check_sealed_secrets() {
    for (const auto& s : agent::sealed_secrets(config_)) {
      std::error_code ec;
      const bool plaintext = fs::exists(s.file, ec);
      if (!identity_) {
        add("sealed_secret", s.name, Verdict::skip,
            identity_skipped_.empty() ? "the identity did not open" : "not checked: " + identity_skipped_);
        continue;
      }
      if (identity_->has_secret(s.name)) {
        if (plaintext)
          add("sealed_secret", s.name, Verdict::warn,
              "sealed; its plaintext " + s.file.string() + " (" + s.config_key + ") is on disk again",
              "if it is a rotated secret, " + tpm::enroll_hint(config_) + " to seal it and delete the file; else delete it");
        else
          add("sealed_secret", s.name, Verdict::ok, "sealed in the identity");
        continue;
      }
      add("sealed_secret", s.name, Verdict::fail,
          "not sealed in the identity (" + s.config_key + " " + s.file.string() + ")",
          plaintext ? tpm::enroll_hint(config_) + " to seal " + s.file.string()
                    : "put the secret back at " + s.file.string() + " and " + tpm::enroll_hint(config_));
    }
  }

  // -- what the running daemon knows (socket), or last wrote (state.json) --
  void read_daemon_view() {
    if (!config_.socket.path.empty()) {
      auto answer = cli::socket_request(config_.socket.path, "GET", "/v1/certificates", std::chrono::seconds(3));
      if (answer && answer->status == 200) {
        boost::system::error_code ec;
        auto v = json::parse(answer->body, ec);
        if (!ec && v.is_object()) {
          view_ = v.as_object();
          view_source_ = "as the daemon says on " + config_.socket.path.string();
          daemon_answers_ = true;
          return;
        }
      }
    }
    if (auto state = read_state_file(config_.state_dir); state && state->is_object()) {
      view_ = state->as_object();
      view_source_ = "as " + (config_.state_dir / kStateFileName).string() + " says";
    }
  }

  const json::object* view_entry(const char* list, const std::string& name) const {
    if (!view_) return nullptr;
    const auto* l = view_->if_contains(list);
    if (!l || !l->is_array()) return nullptr;
    for (const auto& e : l->as_array()) {
      if (!e.is_object()) continue;
      const auto* n = e.as_object().if_contains("name");
      if (n && n->is_string() && n->as_string() == name) return &e.as_object();
    }
    return nullptr;
  }

  static std::string text_of(const json::object& o, const char* key) {
    const auto* v = o.if_contains(key);
    return v && v->is_string() ? std::string(v->as_string()) : std::string();
  }

  void check_daemon() {
    if (config_.socket.path.empty()) {
      add("daemon", "socket", Verdict::skip, "no socket configured: nothing to ask the daemon");
      return;
    }
    const std::string subject = config_.socket.path.string();
    if (!daemon_answers_) {
      add("daemon", subject, Verdict::warn, "the daemon does not answer on its socket",
          under_systemd() ? "systemctl start " + options_.unit + "; journalctl -u " + options_.unit + " says why it stopped"
                          : "start it: certagent run --config " + config_path_.string());
      return;
    }
    auto ready = cli::socket_request(config_.socket.path, "GET", "/readyz", std::chrono::seconds(3));
    if (ready && ready->status != 200) {
      add("daemon", subject, Verdict::warn, "running, not ready: " + trim(ready->body),
          "see the certificate checks below and `certagent status`");
      return;
    }
    add("daemon", subject, Verdict::ok, "running and ready");
  }

  // -- brokers and verify addresses: on the io_context --
  asio::awaitable<void> network_checks() {
    for (const auto& [name, broker] : config_.brokers) co_await check_broker(broker);
    for (const auto& cert : config_.certificates) co_await check_reloaders(cert);
  }

  asio::awaitable<Result<>> probe_with_timeout(renewers::Renewer& renewer) {
    asio::steady_timer deadline(io_, options_.timeout);
    auto outcome = co_await (renewer.probe() || deadline.async_wait(asio::use_awaitable));
    if (outcome.index() != 0) {
      Error e = make_error("no answer within " + config::format_duration(options_.timeout));
      e.cause = Cause::unreachable;
      co_return e;
    }
    co_return std::get<0>(std::move(outcome));
  }

  asio::awaitable<void> check_broker(const config::BrokerConfig& broker) {
    const std::string subject = broker.name;
    if (broker.type == "local") {
      const auto root = renewers::LocalRenewer::root_path(config_.state_dir);
      std::error_code ec;
      if (fs::exists(root, ec))
        add("broker", subject, Verdict::ok, "embedded development CA (development only), root " + root.string());
      else
        add("broker", subject, Verdict::ok, "embedded development CA (development only); the daemon creates its root at "
                                            "first start");
      co_return;
    }
    ProbeOnlyIdentity stand_in;
    renewers::RenewerContext context{io_.get_executor(), identity_ ? identity_.get() : &stand_in, config_.state_dir,
                                     &clock_};
    auto renewer = agent::make_renewer(broker, context);
    if (!renewer) {
      add("broker", subject, Verdict::fail, renewer.error().message, "fix brokers." + broker.name + " in the config");
      co_return;
    }
    auto probed = co_await probe_with_timeout(**renewer);
    const bool answered = probed.has_value();
    if (probed) {
      add("broker", subject, Verdict::ok, broker.type + ": answers, its TLS certificate is trusted");
    } else {
      const Error& e = probed.error();
      std::string fix;
      switch (e.cause) {
        case Cause::unreachable:
          fix = "start the broker, or check brokers." + broker.name + " (url, firewall, DNS)";
          break;
        case Cause::local_config:
          fix = "fix brokers." + broker.name + " in the config as the message says";
          break;
        case Cause::refused:
          fix = "ask the broker's operators, or fix brokers." + broker.name + " as the message says";
          break;
        case Cause::unspecified:
          fix = "see the message";
          break;
      }
      std::string said = e.message;
      if (!e.reason.empty()) said += " [" + std::string(to_string(e.cause)) + ": " + e.reason + "]";
      add("broker", subject, Verdict::fail, said, fix);
    }
    // Credentials: only an issuance shows whether the broker accepts us; the daemon saw the last one.
    const json::object* b = view_entry("brokers", broker.name);
    const json::value* accepts = b ? b->if_contains("accepts") : nullptr;
    if (!answered) {
      add("broker_credentials", subject, Verdict::skip, "not checked: the broker's probe fails (above)");
    } else if (!accepts || accepts->is_null()) {
      add("broker_credentials", subject, Verdict::skip,
          view_ ? "not known yet: no issuance answered since the daemon started"
                : "not known: the daemon does not answer and left no state.json");
    } else if (accepts->is_bool() && accepts->get_bool()) {
      add("broker_credentials", subject, Verdict::ok, "accepted at the last issuance (" + view_source_ + ")");
    } else {
      add("broker_credentials", subject, Verdict::fail,
          text_of(*b, "detail") + " [" + text_of(*b, "cause") + ": " + text_of(*b, "reason") + "] (" + view_source_ + ")",
          text_of(*b, "cause") == "local_config" ? "fix brokers." + broker.name + " in the config as the message says"
                                                 : "fix the credentials or account the broker refuses, then `certagent "
                                                   "renew` a certificate of this broker");
    }
  }

  // The serial the host holds for `cert`: on disk when it has files, else as the daemon says.
  std::optional<std::string> current_serial(const config::CertificateConfig& cert) {
    if (cert.files) {
      FileSink sink(*cert.files);
      if (auto loaded = sink.load_current(); loaded && *loaded) return normalize_serial((*loaded)->serial_hex);
    }
    if (const json::object* e = view_entry("certificates", cert.name)) {
      const std::string s = text_of(*e, "serial");
      if (!s.empty()) return normalize_serial(s);
    }
    return std::nullopt;
  }

  asio::awaitable<void> check_reloaders(const config::CertificateConfig& cert) {
    for (std::size_t i = 0; i < cert.reload.size(); ++i) {
      const auto& rc = cert.reload[i];
      const std::string subject = cert.name + " reload[" + std::to_string(i) + "] " + rc.type;
      check_reloader_target(subject, rc);
      if (!rc.verify) continue;
      const auto& v = *rc.verify;
      auto served = co_await reloaders::fetch_served_serial(
          v.connect, v.server_name, std::min<std::chrono::milliseconds>(options_.timeout, std::chrono::seconds(5)),
          v.protocol);
      const std::string where = v.connect + (v.server_name.empty() ? "" : " (SNI " + v.server_name + ")");
      if (!served) {
        add("verify", subject, Verdict::fail, "nothing serves TLS at " + where + ": " + served.error().message,
            "start the server, or fix verify.connect / server_name");
        continue;
      }
      const auto held = current_serial(cert);
      if (!held)
        add("verify", subject, Verdict::warn, where + " serves serial " + *served + "; no current certificate to compare",
            "see the files and daemon checks");
      else if (*held == *served)
        add("verify", subject, Verdict::ok, where + " serves the current serial " + *served);
      else
        add("verify", subject, Verdict::warn,
            where + " serves serial " + *served + ", the current certificate is " + *held,
            "the last reload did not take: reload the server, or `certagent renew " + cert.name +
                "` and read the reloader's log lines");
    }
  }

  void check_reloader_target(const std::string& subject, const config::ReloaderConfig& rc) {
    using namespace reloaders;
    if (const auto* h = rc.settings.get_if<HaproxyReloaderConfig>()) {
      if (auto r = connect_unix(h->admin_socket); !r)
        add("reloader", subject, Verdict::fail, "admin socket " + h->admin_socket.string() + ": " + r.error().message,
            "start haproxy with `stats socket " + h->admin_socket.string() + " level admin`, or fix admin_socket");
      else
        add("reloader", subject, Verdict::ok, "admin socket " + h->admin_socket.string() + " accepts connections");
      return;
    }
    if (const auto* s = rc.settings.get_if<SignalReloaderConfig>()) {
      pid_t pid = s->pid ? *s->pid : 0;
      std::string what = s->pid ? "pid " + std::to_string(*s->pid) : "pid_file " + s->pid_file.string();
      if (!s->pid) {
        std::ifstream in(s->pid_file);
        long n = 0;
        if (!(in >> n) || n <= 0) {
          add("reloader", subject, Verdict::fail, what + ": missing or holds no process id",
              "start the process, or fix pid_file");
          return;
        }
        pid = static_cast<pid_t>(n);
        what += " (" + std::to_string(n) + ")";
      }
      std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
      std::string line;
      std::getline(stat, line);
      const auto paren = line.rfind(')');
      const char state = paren != std::string::npos && paren + 2 < line.size() ? line[paren + 2] : '?';
      if (line.empty() || state == 'Z')
        add("reloader", subject, Verdict::fail, what + ": no such process", "start the process, or fix the pid");
      else
        add("reloader", subject, Verdict::ok, what + ": the process runs");
      return;
    }
    if (const auto* u = rc.settings.get_if<SystemdReloaderConfig>()) {
      if (!find_program("systemctl") || !under_systemd()) {
        add("reloader", subject, Verdict::skip, "unit " + u->unit + ": systemd is not running here");
        return;
      }
      auto shown = run_command({"timeout", "5", "systemctl", "show", "-p", "LoadState", "--value", u->unit});
      const std::string load = trim(shown.out);
      if (load != "loaded")
        add("reloader", subject, Verdict::fail, "unit " + u->unit + ": " + (load.empty() ? "unknown" : load),
            "install the unit, or fix unit:");
      else
        add("reloader", subject, Verdict::ok, "unit " + u->unit + " is loaded");
      return;
    }
    if (const auto* n = rc.settings.get_if<NginxReloaderConfig>()) {
      const std::string& prog = n->command.empty() ? std::string("nginx") : n->command.front();
      if (!find_program(prog))
        add("reloader", subject, Verdict::fail, "command " + prog + " not found", "install nginx, or fix command:");
      else
        add("reloader", subject, Verdict::ok, "command " + prog + " found");
      return;
    }
    if (const auto* e = rc.settings.get_if<EnvoyReloaderConfig>()) {
      struct stat st {};
      if (::stat(e->sds_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
        add("reloader", subject, Verdict::warn, "sds_dir " + e->sds_dir.string() + " does not exist yet",
            "the daemon creates it at the next rotation if its parent is writable");
      else if (!can_write_dir(st, user_))
        add("reloader", subject, Verdict::fail, "sds_dir " + e->sds_dir.string() + " is not writable by " + user_.name,
            "chown " + user_.name + " " + e->sds_dir.string());
      else
        add("reloader", subject, Verdict::ok, "sds_dir " + e->sds_dir.string() + " is writable");
      return;
    }
    if (const auto* x = rc.settings.get_if<ExecReloaderConfig>()) {
      const std::string prog = x->command.empty() ? std::string() : x->command.front();
      if (prog.empty() || !find_program(prog))
        add("reloader", subject, Verdict::fail, "command " + prog + " not found or not executable", "fix command:");
      else
        add("reloader", subject, Verdict::ok, "command " + prog + " found");
      return;
    }
    add("reloader", subject, Verdict::skip, "no target check for reloaders of type " + rc.type);
  }

  // -- per certificate --
  fs::path trust_path(const config::CertificateConfig& cert) const {
    if (!cert.trust_bundle.empty()) return cert.trust_bundle;
    return renewers::LocalRenewer::root_path(config_.state_dir);
  }

  void check_trust_bundle(const config::CertificateConfig& cert) {
    const fs::path path = trust_path(cert);
    const std::string subject = cert.name;
    auto store = crypto::load_trust_store(path);
    if (!store) {
      std::error_code ec;
      if (cert.trust_bundle.empty() && !fs::exists(path, ec)) {
        add("trust_bundle", subject, Verdict::warn, "the local CA's root " + path.string() + " does not exist yet",
            "the daemon creates it at first start");
        return;
      }
      add("trust_bundle", subject, Verdict::fail, path.string() + ": " + store.error().message,
          "put the issuing CA's certificates (PEM) in " + path.string() + ", or fix trust_bundle");
      return;
    }
    if (!cert.files) {
      add("trust_bundle", subject, Verdict::ok, path.string() + " parses (no files to check it against)");
      return;
    }
    FileSink sink(*cert.files);
    auto loaded = sink.load_current();
    if (!loaded || !*loaded) {
      add("trust_bundle", subject, Verdict::ok, path.string() + " parses (no current certificate on disk yet)");
      return;
    }
    const Material& m = **loaded;
    auto leaf = crypto::parse_chain(m.cert_pem, 1);
    std::vector<crypto::X509Ptr> chain;
    if (!m.chain_pem.empty() && m.chain_pem.find_first_not_of(" \t\r\n") != std::string::npos) {
      if (auto c = crypto::parse_chain(m.chain_pem)) chain = std::move(*c);
    }
    std::vector<X509*> intermediates;
    for (auto& c : chain) intermediates.push_back(c.get());
    // Within the leaf's validity: an expired leaf is the files check's business.
    SystemTime at = clock_.now();
    if (at < m.not_before || at >= m.not_after) at = m.not_before;
    auto verified = leaf ? crypto::verify_chain(leaf->front().get(), intermediates, store->get(), at)
                         : Result<>(leaf.error());
    if (!verified)
      add("trust_bundle", subject, Verdict::fail,
          path.string() + " does not cover the current certificate (serial " + m.serial_hex + "): " +
              verified.error().message,
          "add the CA that issues " + cert.name + "'s certificates (the broker's issuing root) to " + path.string());
    else
      add("trust_bundle", subject, Verdict::ok, path.string() + " covers the current certificate (serial " + m.serial_hex + ")");
  }

  void check_files(const config::CertificateConfig& cert) {
    if (!cert.files) return;
    const auto& files = *cert.files;
    const std::string subject = cert.name;
    std::vector<std::string> problems, warnings;
    std::string fix;
    struct stat st {};
    if (::stat(files.dir.c_str(), &st) != 0) {
      // The sink creates it: its nearest existing parent must be writable.
      fs::path parent = files.dir.parent_path();
      struct stat pst {};
      while (!parent.empty() && ::stat(parent.c_str(), &pst) != 0) parent = parent.parent_path();
      if (parent.empty() || !S_ISDIR(pst.st_mode) || !can_write_dir(pst, user_)) {
        add("files", subject, Verdict::fail,
            files.dir.string() + " does not exist and " + (parent.empty() ? std::string("no parent") : parent.string()) +
                " is not writable by " + user_.name,
            "install -d -o " + user_.name + " " + files.dir.string());
      } else {
        add("files", subject, Verdict::warn, files.dir.string() + " does not exist yet (the daemon creates it)",
            "start the daemon; `certagent status` shows the first issuance");
      }
      return;
    }
    if (!S_ISDIR(st.st_mode)) {
      add("files", subject, Verdict::fail, files.dir.string() + " is not a directory", "move it away, or fix files.dir");
      return;
    }
    if (!can_write_dir(st, user_)) {
      add("files", subject, Verdict::fail,
          files.dir.string() + " (owner " + user_name(st.st_uid) + ", group " + group_name(st.st_gid) + ", mode " +
              mode_text(st.st_mode) + ") is not writable by the daemon's user " + user_.name,
          "chown " + user_.name + " " + files.dir.string() + " (the daemon writes each generation there)");
      return;
    }
    if (files.pkcs12 && !files.pkcs12->sealed && ::access(files.pkcs12->password_file.c_str(), F_OK) != 0) {
      problems.push_back("files.pkcs12.password_file " + files.pkcs12->password_file.string() + " is missing");
      fix = "write the keystore password to " + files.pkcs12->password_file.string() + " (mode 0600)";
    }
    FileSink sink(files);
    auto loaded = sink.load_current();
    if (!loaded) {
      problems.push_back(loaded.error().message);
      if (fix.empty()) fix = "`certagent renew " + cert.name + "` writes a fresh generation";
    } else if (!*loaded) {
      warnings.push_back("no certificate written yet");
    } else {
      const Material& m = **loaded;
      const auto now = clock_.now();
      if (now >= m.not_after) {
        problems.push_back("the current certificate (serial " + m.serial_hex + ") expired at " + format_rfc3339(m.not_after));
        if (fix.empty()) fix = "see the broker checks above and `certagent status` for why it was not renewed";
      }
      // Owner, group and mode of what was written.
      struct stat kst {};
      const fs::path key = files.dir / "key.pem";
      if (::stat(key.c_str(), &kst) == 0) {
        if ((kst.st_mode & 07777) != 0600) problems.push_back(key.string() + " has mode " + mode_text(kst.st_mode) + ", not 0600");
        const uid_t want_uid = files.owner.empty() ? user_.uid : lookup_user(files.owner).value_or(kst.st_uid);
        if (kst.st_uid != want_uid)
          problems.push_back(key.string() + " is owned by " + user_name(kst.st_uid) + ", configured " +
                             (files.owner.empty() ? user_.name + " (the daemon's user)" : files.owner));
        if (!files.group.empty()) {
          if (auto g = lookup_group(files.group); g && kst.st_gid != *g)
            problems.push_back(key.string() + " has group " + group_name(kst.st_gid) + ", configured " + files.group);
        }
        if (fix.empty() && !problems.empty())
          fix = "`certagent renew " + cert.name + "` rewrites the files with the configured owner and mode";
      }
      for (const auto& missing : sink.missing_outputs())
        warnings.push_back("the current generation has no " + missing + " (formats changed; written at the next rotation)");
    }
    if (!problems.empty()) {
      std::string said;
      for (const auto& p : problems) said += (said.empty() ? "" : "; ") + p;
      add("files", subject, Verdict::fail, said, fix);
    } else if (!warnings.empty()) {
      std::string said;
      for (const auto& w : warnings) said += (said.empty() ? "" : "; ") + w;
      add("files", subject, Verdict::warn, files.dir.string() + ": " + said,
          "start the daemon, or `certagent renew " + cert.name + "`");
    } else {
      add("files", subject, Verdict::ok, files.dir.string() + " is writable by " + user_.name + "; the current files are " +
                                             "whole, owned as configured, key 0600");
    }
  }

  // -- clock --
  void check_clock() {
    std::vector<std::string> said;
    Verdict v = Verdict::ok;
    std::string fix;
    // What the brokers' clocks said at their last answers (Date headers), as the daemon measured it.
    std::int64_t worst = 0;
    std::string worst_cert;
    if (view_) {
      if (const auto* list = view_->if_contains("certificates"); list && list->is_array())
        for (const auto& e : list->as_array()) {
          const auto* s = e.is_object() ? e.as_object().if_contains("clock_skew_seconds") : nullptr;
          if (!s || !s->is_int64()) continue;
          if (std::llabs(s->as_int64()) > std::llabs(worst)) {
            worst = s->as_int64();
            worst_cert = text_of(e.as_object(), "name");
          }
        }
    }
    const auto tolerance = std::chrono::duration_cast<std::chrono::seconds>(kDefaultClockSkew).count();
    if (worst_cert.empty()) {
      said.push_back(view_ ? "no broker reported a clock difference" : "no broker measurement (the daemon left no state)");
    } else {
      said.push_back("the broker of " + worst_cert + " is " + std::to_string(std::llabs(worst)) + "s " +
                     (worst > 0 ? "ahead of" : "behind") + " this host");
      if (std::llabs(worst) >= tolerance) v = Verdict::fail;
      else if (std::llabs(worst) >= 60) v = Verdict::warn;
      if (v != Verdict::ok) fix = "fix time sync (timedatectl, chronyc tracking)";
    }
    if (find_program("timedatectl") && under_systemd()) {
      auto synced = run_command({"timeout", "5", "timedatectl", "show", "-p", "NTPSynchronized", "--value"});
      const std::string s = trim(synced.out);
      if (s == "yes") {
        said.push_back("NTP synchronized");
      } else if (s == "no") {
        said.push_back("NTP not synchronized");
        if (v == Verdict::ok) v = Verdict::warn;
        if (fix.empty()) fix = "enable time sync: timedatectl set-ntp true (or chrony)";
      }
    }
    std::string msg;
    for (const auto& s : said) msg += (msg.empty() ? "" : "; ") + s;
    add("clock", format_rfc3339(clock_.now()), v, msg, fix);
  }

  // -- systemd --
  void check_systemd() {
    if (!under_systemd() || !find_program("systemctl")) {
      add("systemd", options_.unit, Verdict::skip, "systemd is not running here");
      return;
    }
    const std::string enabled = trim(run_command({"timeout", "5", "systemctl", "is-enabled", options_.unit}).out);
    const std::string active = trim(run_command({"timeout", "5", "systemctl", "is-active", options_.unit}).out);
    const std::string said = "enabled: " + (enabled.empty() ? std::string("unknown") : enabled) +
                             ", active: " + (active.empty() ? std::string("unknown") : active);
    if (enabled != "enabled" && enabled != "static" && enabled != "enabled-runtime")
      add("systemd", options_.unit, Verdict::warn, said, "systemctl enable --now " + options_.unit);
    else if (active != "active")
      add("systemd", options_.unit, Verdict::warn, said,
          "systemctl start " + options_.unit + "; journalctl -u " + options_.unit + " says why it is not running");
    else
      add("systemd", options_.unit, Verdict::ok, said);
  }

  fs::path config_path_;
  Options options_;
  const Clock& clock_;
  Report report_;
  config::Config config_;
  DaemonUser user_;
  std::unique_ptr<tpm::Identity> identity_;
  std::string identity_skipped_;  // why the identity was not opened
  std::optional<json::object> view_;
  std::string view_source_;
  bool daemon_answers_{false};
  asio::io_context io_;
};

}  // namespace

std::string_view to_string(Verdict v) {
  switch (v) {
    case Verdict::ok: return "ok";
    case Verdict::warn: return "warn";
    case Verdict::fail: return "fail";
    case Verdict::skip: return "skip";
  }
  return "fail";
}

int Report::exit_code() const {
  int rc = 0;
  for (const auto& c : checks) {
    if (c.verdict == Verdict::fail) return 2;
    if (c.verdict == Verdict::warn) rc = 1;
  }
  return rc;
}

const Check* Report::find(std::string_view id, std::string_view subject) const {
  for (const auto& c : checks)
    if (c.id == id && (subject.empty() || c.subject == subject)) return &c;
  return nullptr;
}

json::object Report::to_json() const {
  json::object root;
  json::array list;
  std::map<std::string, int> counts{{"ok", 0}, {"warn", 0}, {"fail", 0}, {"skip", 0}};
  for (const auto& c : checks) {
    ++counts[std::string(to_string(c.verdict))];
    json::object o;
    o["id"] = c.id;
    o["subject"] = c.subject;
    o["verdict"] = to_string(c.verdict);
    o["message"] = c.message;
    o["fix"] = c.fix.empty() ? json::value(nullptr) : json::value(c.fix);
    list.push_back(std::move(o));
  }
  json::object summary;
  for (const auto& [k, n] : counts) summary[k] = n;
  root["exit_code"] = exit_code();
  root["summary"] = std::move(summary);
  root["checks"] = std::move(list);
  return root;
}

std::string Report::to_text() const {
  std::string out;
  int fails = 0, warns = 0;
  for (const auto& c : checks) {
    std::string head = std::string(to_string(c.verdict));
    head.resize(6, ' ');
    std::string id = c.id;
    if (id.size() < 19) id.resize(19, ' ');
    out += head + id + " " + c.subject + ": " + c.message + "\n";
    if (!c.fix.empty()) out += "      fix: " + c.fix + "\n";
    fails += c.verdict == Verdict::fail;
    warns += c.verdict == Verdict::warn;
  }
  out += std::to_string(checks.size()) + " checks: " + std::to_string(fails) + " failed, " + std::to_string(warns) +
         " warnings\n";
  return out;
}

Report diagnose(const fs::path& config_path, const Options& options) { return Doctor(config_path, options).run(); }

int run_doctor(const fs::path& config_path, bool as_json, std::ostream& out) {
  // The checks' own findings are the output; the plug-ins' log lines would only repeat them.
  log::init({"error", "text"});
  Report report = diagnose(config_path);
  if (as_json)
    out << json::serialize(report.to_json()) << "\n";
  else
    out << report.to_text();
  if (g_abandoned_thread) {
    out.flush();
    std::fflush(nullptr);
    std::_Exit(report.exit_code());
  }
  return report.exit_code();
}

}  // namespace certagent::doctor
