#pragma once
// `certagent doctor`: one command that checks what a host needs and says what to fix, in order
// of dependence — config; state_dir; identity and its sealed secrets; each broker (answers,
// TLS trusted, accepts our credentials); the daemon; each certificate's trust bundle (parses and
// covers the current leaf), output directory (writable by the daemon's user, owner and mode of
// what is written), reloader targets (admin socket, pid file, unit, command) and verify address
// (serving, and which serial); the clock; the systemd unit.
//
// The daemon's user is the owner of state_dir (the daemon creates it and refuses one it cannot
// write), or this user when there is none yet: run doctor as root or as that user.
//
// Exit codes: 0 every check passed (or did not apply), 1 warnings only, 2 at least one failure
// (an invalid config is a failure).

#include "core/clock.h"

#include <boost/json/object.hpp>

#include <chrono>
#include <filesystem>
#include <ostream>
#include <string>
#include <vector>

namespace certagent::doctor {

enum class Verdict { ok, warn, fail, skip };
std::string_view to_string(Verdict v);

struct Check {
  std::string id;       // config, state_dir, identity, sealed_secret, broker, broker_credentials,
                        // daemon, trust_bundle, files, reloader, verify, clock, systemd
  std::string subject;  // what it is about: a file, a broker, "web", "web reload[0] haproxy"
  Verdict verdict{Verdict::ok};
  std::string message;  // what was found
  std::string fix;      // what to do; empty when nothing is to be done
};

struct Report {
  std::vector<Check> checks;

  int exit_code() const;  // 0 / 1 / 2, see above
  boost::json::object to_json() const;
  std::string to_text() const;
  // The first check with this id (and subject, when given); null when none.
  const Check* find(std::string_view id, std::string_view subject = {}) const;
};

struct Options {
  std::chrono::milliseconds timeout{std::chrono::seconds(10)};  // per network check
  const Clock* clock{nullptr};                                  // null: the system clock
  std::string unit{"certagent.service"};
};

Report diagnose(const std::filesystem::path& config_path, const Options& options = {});

// `certagent doctor --config FILE [--json]`.
int run_doctor(const std::filesystem::path& config_path, bool json, std::ostream& out);

}  // namespace certagent::doctor
