#pragma once
// Real Debian PostgreSQL 15, Postfix and Dovecot for the verification tests of STARTTLS-style
// servers: private instances in temp dirs on loopback ports, started by the test and stopped
// by PID, and client loops that connect as real consumers do (psql sslmode=verify-full, Python's
// smtplib / imaplib with chain and name verification) and count every failure.

#include "core/config/config.h"
#include "reloaders/reloader.h"
#include "tests/support/test_support.h"

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <memory>

#include <sys/types.h>

#include <set>
#include <string>
#include <vector>

namespace certagent::test::reloaders {

// An exec reloader running `command`, verified through `protocol` on 127.0.0.1:port.
config::ReloaderConfig exec_verified(std::vector<std::string> command, int port, config::VerifyProtocol protocol,
                                     std::chrono::milliseconds settle, std::chrono::milliseconds deadline);
// The registered reloader for `c`; throws when the config is refused.
std::unique_ptr<certagent::reloaders::Reloader> make_reloader_or_throw(boost::asio::io_context& ioc,
                                                                       const config::ReloaderConfig& c);
// Makes the current generation's `name` unreadable as a key, even for root (a directory).
void break_current(const fs::path& live, const std::string& name);

// Who a server runs as. PostgreSQL refuses to run as root: root's tests run it as `nobody`
// (through setpriv, which execs, so the PID is the server's); anyone else runs it as themselves.
struct RunAs {
  uid_t uid{0};
  gid_t gid{0};
  std::string name;  // for files.owner
  bool switch_user{false};
  // argv prefixed with setpriv when switching.
  std::vector<std::string> wrap(std::vector<std::string> argv) const;
};
RunAs postgres_user();

// Makes `dir` (created if needed) 0755 for a server running as another user; throws when one of
// its parents is not searchable by others.
void open_for_others(const fs::path& dir);

// A private PostgreSQL cluster (initdb, trust authentication) with ssl on: cert and key are
// read from `cert`/`key` (the file sink's links) at start and on every reload.
class PostgresServer {
 public:
  PostgresServer(const fs::path& dir, int port, const fs::path& cert, const fs::path& key, const RunAs& user);
  ~PostgresServer();
  int port() const { return port_; }
  std::string log() const;
  // `pg_ctl reload -D <data>`, as the cluster's user.
  std::vector<std::string> pg_ctl_reload() const;
  // `psql ... -c "SELECT pg_reload_conf()"` over the cluster's Unix socket.
  std::vector<std::string> sql_reload() const;
  // One consumer connection: `psql "hostaddr=127.0.0.1 host=localhost ... sslmode=verify-full"`.
  std::vector<std::string> psql_verify_full(const fs::path& root_cert) const;

 private:
  fs::path dir_;
  fs::path data_;
  fs::path bin_;
  int port_;
  RunAs user_;
  Process process_;
};

// A private Postfix: its own config_directory, queue and data directories, master started in
// the foreground (`master -c DIR -d`), one smtpd on 127.0.0.1:port with STARTTLS offered from
// `chain_file` (key then chain in one file: every new smtpd reads one consistent generation).
// Needs root (master refuses anything else).
class PostfixServer {
 public:
  PostfixServer(const fs::path& dir, int port, const fs::path& chain_file);
  ~PostfixServer();
  int port() const { return port_; }
  std::string log() const;
  std::vector<std::string> reload_command() const;  // postfix -c DIR reload

 private:
  fs::path dir_;
  fs::path conf_;
  int port_;
  Process process_;
};

// A private Dovecot (imap only, STARTTLS on 127.0.0.1:port, no imaps) with its own base_dir,
// in the foreground (`dovecot -F -c FILE`). Needs root (as Dovecot normally runs).
class DovecotServer {
 public:
  DovecotServer(const fs::path& dir, int port, const fs::path& cert, const fs::path& key);
  ~DovecotServer();
  int port() const { return port_; }
  std::string log() const;
  std::vector<std::string> reload_command() const;  // doveadm -c FILE reload

 private:
  fs::path dir_;
  fs::path conf_;
  int port_;
  Process process_;
};

// A consumer that connects again and again until stopped; every attempt is one line of its
// output: "ok <served serial or ->" or "fail <why>".
class ClientLoop {
 public:
  struct Summary {
    int ok{0};
    int failed{0};
    std::set<std::string> serials;     // served serials the client saw (when it can tell)
    std::vector<std::string> failures; // the first few "fail ..." lines
    std::string output_tail;
  };
  // psql with sslmode=verify-full, one process per attempt.
  static ClientLoop psql(const fs::path& dir, const std::vector<std::string>& psql_argv);
  // Python smtplib (EHLO, STARTTLS, NOOP, QUIT) or imaplib (STARTTLS, NOOP, LOGOUT), the chain
  // verified against `root_cert` and the address 127.0.0.1 checked against the certificate.
  static ClientLoop python(const fs::path& dir, const std::string& protocol, int port, const fs::path& root_cert);

  ClientLoop(ClientLoop&&) = default;
  ~ClientLoop();
  int successes() const;  // so far
  Summary stop();         // asks the loop to end, waits for it, reads its output

 private:
  ClientLoop(const fs::path& dir, const std::string& name, const std::vector<std::string>& argv);
  fs::path out_;
  fs::path stop_file_;
  Process process_;
};

}  // namespace certagent::test::reloaders
