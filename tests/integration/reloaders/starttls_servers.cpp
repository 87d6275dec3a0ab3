#include "tests/integration/reloaders/starttls_servers.h"
#include "tests/integration/reloaders/reloader_fixtures.h"

#include "agent/builtin_plugins.h"
#include "reloaders/exec_config.h"

#include <gtest/gtest.h>

#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <optional>
#include <sstream>
#include <stdexcept>

namespace certagent::test::reloaders {

config::ReloaderConfig exec_verified(std::vector<std::string> command, int port, config::VerifyProtocol protocol,
                                     std::chrono::milliseconds settle, std::chrono::milliseconds deadline) {
  config::ReloaderConfig c;
  c.type = "exec";
  c.timeout = std::chrono::seconds(30);
  config::VerifyConfig v;
  v.connect = "127.0.0.1:" + std::to_string(port);
  v.protocol = protocol;
  v.settle = settle;
  v.deadline = deadline;
  c.verify = v;
  certagent::reloaders::ExecReloaderConfig e;
  e.command = std::move(command);
  e.timeout = c.timeout;
  c.settings = e;
  return c;
}

std::unique_ptr<certagent::reloaders::Reloader> make_reloader_or_throw(boost::asio::io_context& ioc,
                                                                       const config::ReloaderConfig& c) {
  auto made = certagent::agent::make_reloader(c, certagent::reloaders::ReloaderContext{ioc.get_executor()});
  if (!made) throw std::runtime_error(made.error().message);
  return std::move(*made);
}

void break_current(const fs::path& live, const std::string& name) {
  auto file = fs::canonical(live / name);
  fs::remove(file);
  fs::create_directory(file);
}

namespace {

void chown_tree(const fs::path& dir, uid_t uid, gid_t gid) {
  if (::chown(dir.c_str(), uid, gid) != 0) throw std::runtime_error("chown " + dir.string());
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (::lchown(e.path().c_str(), uid, gid) != 0) throw std::runtime_error("chown " + e.path().string());
  }
}

void make_dir(const fs::path& dir, fs::perms mode, std::optional<std::pair<uid_t, gid_t>> owner = std::nullopt) {
  fs::create_directories(dir);
  fs::permissions(dir, mode);
  if (owner && ::chown(dir.c_str(), owner->first, owner->second) != 0) {
    throw std::runtime_error("chown " + dir.string());
  }
}

std::pair<uid_t, gid_t> user_ids(const std::string& name) {
  passwd* pw = ::getpwnam(name.c_str());
  if (!pw) throw std::runtime_error("no user " + name + " (its Debian package creates it)");
  return {pw->pw_uid, pw->pw_gid};
}

// /usr/lib/postgresql/<major>/bin of the newest installed major version.
fs::path postgres_bin_dir() {
  fs::path best;
  int best_major = -1;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/usr/lib/postgresql", ec)) {
    int major = std::atoi(e.path().filename().c_str());
    if (major > best_major && fs::exists(e.path() / "bin" / "postgres")) {
      best_major = major;
      best = e.path() / "bin";
    }
  }
  if (best.empty()) {
    ADD_FAILURE() << "PostgreSQL is not installed (scripts/install-deps.sh test installs postgresql-15)";
    throw std::runtime_error("missing PostgreSQL");
  }
  return best;
}

std::string tail_of(const std::string& s, std::size_t n = 2000) {
  return s.size() <= n ? s : "..." + s.substr(s.size() - n);
}

// The psql loop: one process per attempt, its error on one line.
constexpr const char* kPsqlLoop = R"SH(
end=$((SECONDS + 120))
while [ ! -e "$CLIENT_STOP" ] && [ $SECONDS -lt $end ]; do
  if out=$("$@" 2>&1); then echo "ok -"; else echo "fail $(echo "$out" | tr '\n' ' ')"; fi
done
echo done
)SH";

// smtplib / imaplib with a verifying context; getpeercert() gives the served serial.
constexpr const char* kPythonLoop = R"PY(
import imaplib, os, smtplib, ssl, sys, time
protocol, port, root, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3], os.environ["CLIENT_STOP"]
ctx = ssl.create_default_context(cafile=root)
end = time.monotonic() + 120
while not os.path.exists(stop) and time.monotonic() < end:
    try:
        if protocol == "smtp":
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
                s.starttls(context=ctx)
                serial = s.sock.getpeercert()["serialNumber"]
                s.noop()
        else:
            with imaplib.IMAP4("127.0.0.1", port, timeout=5) as m:
                m.starttls(ssl_context=ctx)
                serial = m.sock.getpeercert()["serialNumber"]
                m.noop()
        print("ok", serial.lower().lstrip("0") or "0", flush=True)
    except Exception as e:
        print("fail", repr(e).replace("\n", " "), flush=True)
print("done", flush=True)
)PY";

}  // namespace

// ---- users ----------------------------------------------------------------------------------

std::vector<std::string> RunAs::wrap(std::vector<std::string> argv) const {
  if (!switch_user) return argv;
  std::vector<std::string> out{require_program("setpriv").string(), "--reuid=" + std::to_string(uid),
                               "--regid=" + std::to_string(gid), "--clear-groups", "--"};
  out.insert(out.end(), argv.begin(), argv.end());
  return out;
}

RunAs postgres_user() {
  RunAs r;
  if (::geteuid() == 0) {
    auto [uid, gid] = user_ids("nobody");
    r.uid = uid;
    r.gid = gid;
    r.name = "nobody";
    r.switch_user = true;
  } else {
    r.uid = ::geteuid();
    r.gid = ::getegid();
    passwd* pw = ::getpwuid(r.uid);
    r.name = pw ? pw->pw_name : std::to_string(r.uid);
  }
  return r;
}

void open_for_others(const fs::path& dir) {
  fs::create_directories(dir);
  fs::permissions(dir, fs::perms(0755));
  for (fs::path p = dir.parent_path(); !p.empty() && p != p.root_path(); p = p.parent_path()) {
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0 || (st.st_mode & S_IXOTH) == 0) {
      throw std::runtime_error("a server running as another user cannot reach " + dir.string() + ": " +
                               p.string() + " is not searchable by others (set TMPDIR to a directory it can reach)");
    }
  }
}

// ---- PostgreSQL -----------------------------------------------------------------------------

PostgresServer::PostgresServer(const fs::path& dir, int port, const fs::path& cert, const fs::path& key,
                               const RunAs& user)
    : dir_(dir), data_(dir / "data"), bin_(postgres_bin_dir()), port_(port), user_(user) {
  make_dir(dir_ / "run", fs::perms(0755));
  if (user_.switch_user) chown_tree(dir_, user_.uid, user_.gid);
  open_for_others(dir_);
  auto init = run(user_.wrap({(bin_ / "initdb").string(), "-D", data_.string(), "-A", "trust", "-U", "postgres",
                              "--no-sync", "--no-instructions", "-E", "UTF8", "--locale=C"}),
                  120s);
  if (init.exit_code != 0) throw std::runtime_error("initdb failed: " + init.out + init.err);
  std::string conf = read_file(data_ / "postgresql.conf");
  conf += "\n# certagent test instance\n"
          "listen_addresses = '127.0.0.1'\n"
          "port = " + std::to_string(port_) + "\n"
          "unix_socket_directories = '" + (dir_ / "run").string() + "'\n"
          "ssl = on\n"
          "ssl_cert_file = '" + cert.string() + "'\n"
          "ssl_key_file = '" + key.string() + "'\n"
          "fsync = off\n"
          "shared_buffers = 16MB\n"
          "max_connections = 30\n";
  write_file(data_ / "postgresql.conf", conf, fs::perms(0600));
  if (user_.switch_user && ::chown((data_ / "postgresql.conf").c_str(), user_.uid, user_.gid) != 0) {
    throw std::runtime_error("chown postgresql.conf");
  }
  Process::Options options;
  options.stderr_file = dir_ / "postgres.log";
  options.stdout_file = dir_ / "postgres.log";
  process_ = Process(user_.wrap({(bin_ / "postgres").string(), "-D", data_.string()}), options);
  if (!wait_until([&] { return log().find("ready to accept connections") != std::string::npos || !process_.running(); },
                  60s) ||
      !process_.running()) {
    throw std::runtime_error("postgres did not start: " + tail_of(log()));
  }
}

// SIGINT: fast shutdown (sessions are ended, no waiting for clients).
PostgresServer::~PostgresServer() { process_.stop(SIGINT, 20s); }

std::string PostgresServer::log() const { return read_file(dir_ / "postgres.log"); }

std::vector<std::string> PostgresServer::pg_ctl_reload() const {
  return user_.wrap({(bin_ / "pg_ctl").string(), "reload", "-s", "-D", data_.string()});
}

std::vector<std::string> PostgresServer::sql_reload() const {
  return {(bin_ / "psql").string(), "-X", "-At", "-h", (dir_ / "run").string(), "-p", std::to_string(port_),
          "-U", "postgres", "-d", "postgres", "-c", "SELECT pg_reload_conf()"};
}

std::vector<std::string> PostgresServer::psql_verify_full(const fs::path& root_cert) const {
  return {(bin_ / "psql").string(), "-X", "-At",
          "hostaddr=127.0.0.1 host=localhost port=" + std::to_string(port_) +
              " user=postgres dbname=postgres connect_timeout=5 sslmode=verify-full sslrootcert=" + root_cert.string(),
          "-c", "SELECT 1"};
}

// ---- Postfix --------------------------------------------------------------------------------

PostfixServer::PostfixServer(const fs::path& dir, int port, const fs::path& chain_file)
    : dir_(dir), conf_(dir / "conf"), port_(port) {
  auto postconf = require_program("postconf");
  require_program("postfix");
  auto daemon_dir = run({postconf.string(), "-h", "daemon_directory"});
  std::string daemons = daemon_dir.out.substr(0, daemon_dir.out.find('\n'));
  if (daemon_dir.exit_code != 0 || daemons.empty()) throw std::runtime_error("postconf: " + daemon_dir.err);
  const auto postfix_ids = user_ids("postfix");
  auto postdrop = run({"getent", "group", "postdrop"});
  if (postdrop.exit_code != 0) throw std::runtime_error("no group postdrop (the postfix package creates it)");
  const gid_t postdrop_gid = static_cast<gid_t>(std::stoul(postdrop.out.substr(postdrop.out.find(':', postdrop.out.find(':') + 1) + 1)));

  open_for_others(dir_);
  make_dir(conf_, fs::perms(0755));
  const fs::path queue = dir_ / "queue";
  make_dir(queue, fs::perms(0755));
  // The queue as `postfix check` would make it; `postfix reload` runs `postsuper active`, which
  // needs them all.
  for (const char* d : {"active", "bounce", "corrupt", "defer", "deferred", "flush", "hold", "incoming", "private",
                        "saved", "trace"}) {
    make_dir(queue / d, fs::perms(0700), postfix_ids);
  }
  make_dir(queue / "maildrop", fs::perms(0730), std::make_pair(postfix_ids.first, postdrop_gid));
  make_dir(queue / "public", fs::perms(0710), std::make_pair(postfix_ids.first, postdrop_gid));
  make_dir(queue / "pid", fs::perms(0755));
  make_dir(dir_ / "data", fs::perms(0700), postfix_ids);
  write_file(conf_ / "main.cf",
             "compatibility_level = 3.6\n"
             "queue_directory = " + queue.string() + "\n"
             "data_directory = " + (dir_ / "data").string() + "\n"
             "mail_owner = postfix\n"
             "setgid_group = postdrop\n"
             "myhostname = localhost\n"
             "mydestination =\n"
             "inet_interfaces = loopback-only\n"
             "inet_protocols = ipv4\n"
             "maillog_file = " + (dir_ / "maillog").string() + "\n"
             "maillog_file_prefixes = " + dir_.string() + "\n"
             "notify_classes =\n"
             "smtpd_banner = $myhostname ESMTP\n"
             "smtpd_client_connection_count_limit = 0\n"
             "smtpd_tls_security_level = may\n"
             "smtpd_tls_chain_files = " + chain_file.string() + "\n"
             "smtpd_tls_session_cache_database =\n");
  write_file(conf_ / "master.cf",
             "127.0.0.1:" + std::to_string(port_) + " inet n - n - - smtpd\n"
             "anvil     unix - - n - 1 anvil\n"
             "proxymap  unix - - n - - proxymap\n"
             "rewrite   unix - - n - - trivial-rewrite\n"
             "tlsmgr    unix - - n 1000? 1 tlsmgr\n"
             "postlog   unix-dgram n - n - 1 postlogd\n");
  Process::Options options;
  options.stdout_file = dir_ / "master.out";
  options.stderr_file = dir_ / "master.out";
  // In the foreground (-d) and without postfix-script's slow checks. Not `-s` (what `postfix
  // start-fg` uses): it calls setsid(), which fails for a process group leader like ours.
  process_ = Process({(fs::path(daemons) / "master").string(), "-c", conf_.string(), "-d"}, options);
  if (!wait_until([&] { return port_open(port_) || !process_.running(); }, 30s) || !process_.running()) {
    throw std::runtime_error("postfix master did not start: " + read_file(dir_ / "master.out") + tail_of(log()));
  }
}

// The master ends its children (its own process group) on SIGTERM.
PostfixServer::~PostfixServer() { process_.stop(SIGTERM, 20s); }

std::string PostfixServer::log() const { return read_file(dir_ / "maillog"); }

std::vector<std::string> PostfixServer::reload_command() const {
  return {require_program("postfix").string(), "-c", conf_.string(), "reload"};
}

// ---- Dovecot --------------------------------------------------------------------------------

DovecotServer::DovecotServer(const fs::path& dir, int port, const fs::path& cert, const fs::path& key)
    : dir_(dir), conf_(dir / "dovecot.conf"), port_(port) {
  auto dovecot = require_program("dovecot");
  require_program("doveadm");
  open_for_others(dir_);
  make_dir(dir_ / "run", fs::perms(0755));
  make_dir(dir_ / "state", fs::perms(0755));
  // `<file` reads the file's content when the config is (re)loaded.
  write_file(conf_,
             "base_dir = " + (dir_ / "run").string() + "\n"
             "state_dir = " + (dir_ / "state").string() + "\n"
             "log_path = " + (dir_ / "dovecot.log").string() + "\n"
             "protocols = imap\n"
             "listen = 127.0.0.1\n"
             "ssl = yes\n"
             "ssl_cert = <" + cert.string() + "\n"
             "ssl_key = <" + key.string() + "\n"
             "service imap-login {\n"
             "  inet_listener imap {\n"
             "    address = 127.0.0.1\n"
             "    port = " + std::to_string(port_) + "\n"
             "  }\n"
             "  inet_listener imaps {\n"
             "    port = 0\n"
             "  }\n"
             "}\n"
             "passdb {\n"
             "  driver = static\n"
             "  args = password=unused-in-tests\n"
             "}\n"
             "userdb {\n"
             "  driver = static\n"
             "  args = uid=nobody gid=nogroup home=" + (dir_ / "home").string() + "\n"
             "}\n");
  Process::Options options;
  options.stdout_file = dir_ / "dovecot.out";
  options.stderr_file = dir_ / "dovecot.out";
  process_ = Process({dovecot.string(), "-F", "-c", conf_.string()}, options);
  if (!wait_until([&] { return port_open(port_) || !process_.running(); }, 30s) || !process_.running()) {
    throw std::runtime_error("dovecot did not start: " + read_file(dir_ / "dovecot.out") + tail_of(log()));
  }
}

DovecotServer::~DovecotServer() { process_.stop(SIGTERM, 20s); }

std::string DovecotServer::log() const { return read_file(dir_ / "dovecot.log"); }

std::vector<std::string> DovecotServer::reload_command() const {
  return {require_program("doveadm").string(), "-c", conf_.string(), "reload"};
}

// ---- client loops ---------------------------------------------------------------------------

ClientLoop::ClientLoop(const fs::path& dir, const std::string& name, const std::vector<std::string>& argv)
    : out_(dir / (name + ".out")), stop_file_(dir / (name + ".stop")) {
  fs::create_directories(dir);
  fs::remove(stop_file_);
  Process::Options options;
  options.stdout_file = out_;
  options.stderr_file = out_;
  options.env["CLIENT_STOP"] = stop_file_.string();
  process_ = Process(argv, options);
}

ClientLoop ClientLoop::psql(const fs::path& dir, const std::vector<std::string>& psql_argv) {
  std::vector<std::string> argv{require_program("bash").string(), "-c", kPsqlLoop, "psql-loop"};
  argv.insert(argv.end(), psql_argv.begin(), psql_argv.end());
  return ClientLoop(dir, "psql", argv);
}

ClientLoop ClientLoop::python(const fs::path& dir, const std::string& protocol, int port, const fs::path& root_cert) {
  return ClientLoop(dir, protocol + "-client",
                    {require_program("python3").string(), "-c", kPythonLoop, protocol, std::to_string(port),
                     root_cert.string()});
}

ClientLoop::~ClientLoop() {
  if (stop_file_.empty()) return;
  write_file(stop_file_, "");
  process_.stop(SIGTERM, 10s);
}

int ClientLoop::successes() const {
  std::istringstream in(read_file(out_));
  int n = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("ok ", 0) == 0) ++n;
  }
  return n;
}

ClientLoop::Summary ClientLoop::stop() {
  write_file(stop_file_, "");
  // One attempt is at most a few seconds (connect_timeout / timeout 5 s).
  if (!process_.wait_exit(30s)) process_.stop(SIGTERM, 5s);
  Summary s;
  const std::string text = read_file(out_);
  s.output_tail = tail_of(text);
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("ok ", 0) == 0) {
      ++s.ok;
      if (line != "ok -") s.serials.insert(line.substr(3));
    } else if (line.rfind("fail", 0) == 0) {
      ++s.failed;
      if (s.failures.size() < 5) s.failures.push_back(line);
    }
  }
  return s;
}

}  // namespace certagent::test::reloaders
