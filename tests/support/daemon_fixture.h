#pragma once
// Runs the real certagent binary against a config in a temp dir and reads what it leaves on
// disk, in state.json, the audit log and over its metrics listener.

#include "tests/support/test_support.h"

#include <boost/json/value.hpp>

#include <optional>
#include <string>
#include <vector>

namespace certagent::test {

class DaemonFixture {
 public:
  DaemonFixture();
  ~DaemonFixture();

  const TempDir& dir() const { return dir_; }
  fs::path state_dir() const { return dir_ / "state"; }
  fs::path live_dir(const std::string& name) const { return dir_.path() / "live" / name; }
  fs::path config_path() const { return dir_ / "agent.yaml"; }
  fs::path log_path() const { return dir_ / "agent.log"; }
  fs::path socket_path() const { return dir_ / "agent.sock"; }
  int metrics_port() const { return metrics_port_; }

  // What goes into agent.yaml above `body`, besides state_dir, log, socket and metrics.
  struct Header {
    std::string identity{"{ backend: file }"};
    std::string extra_brokers;  // more entries under `brokers:` (indented two spaces)
  };
  // Writes agent.yaml: the common header (state_dir, socket, metrics, a `dev` local broker)
  // followed by `body` (defaults: and certificates:, indented as top-level YAML).
  void write_config(const std::string& body, const Header& header);
  void write_config(const std::string& body) { write_config(body, Header{}); }
  // Runs `certagent <args> --config agent.yaml` to completion (enroll, status, ...).
  RunResult cli(std::vector<std::string> args) const;

  void start() { start({}); }
  // With `prefix` in front of the command line (e.g. setpriv to run it as another user).
  void start(const std::vector<std::string>& prefix);
  int stop(int signal = 15);  // returns the wait status
  void kill9();
  bool running() { return daemon_ && daemon_->running(); }
  pid_t pid() const { return daemon_ ? daemon_->pid() : -1; }
  std::string log() const { return read_file(log_path()); }

  // The serial in <live>/meta.json, or "" when none can be read.
  std::string current_serial(const std::string& name) const;
  // Waits until meta.json shows a serial different from every one in `seen`.
  std::optional<std::string> wait_new_serial(const std::string& name,
                                             const std::vector<std::string>& seen,
                                             std::chrono::milliseconds deadline);
  // The audit log's events, parsed.
  std::vector<boost::json::object> audit_events() const;
  int count_events(const std::string& event, const std::string& name) const;

  // GET on the metrics listener; "" when it does not answer. Status in *status.
  std::string http_get(const std::string& path, int* status = nullptr) const;
  // GET on the daemon's Unix socket (the socket API); status 0 when it does not answer.
  std::string socket_get(const std::string& path, int* status = nullptr) const;
  // One metric sample's value, e.g. metric("certagent_certificate_expired", "name=\"web\"").
  std::optional<double> metric(const std::string& name, const std::string& labels) const;

 private:
  TempDir dir_;
  int metrics_port_;
  std::optional<Process> daemon_;
};

// Checks that a set of files read through one resolution of ..data, and bundle.pem on its own,
// hold a key that matches the certificate. Returns an empty string when consistent, or what
// was wrong.
std::string check_consistent(const fs::path& live_dir);

}  // namespace certagent::test
