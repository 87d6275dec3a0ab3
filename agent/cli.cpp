#include "agent/cli.h"

#include "agent/agent.h"
#include "agent/builtin_plugins.h"
#include "agent/cli_client.h"
#include "agent/doctor.h"
#include "core/config/config.h"
#include "core/logging.h"
#include "agent/state_file.h"
#include "agent/enroll.h"

#include <boost/json/serialize.hpp>

#include <algorithm>

#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace certagent {
namespace {

constexpr const char* kDefaultConfig = "/etc/certagent/agent.yaml";
constexpr const char* kDefaultSocket = "/run/certagent/agent.sock";

constexpr const char* kUsage = R"(certagent — short-lived certificates from a central broker, authenticated by the host's TPM

Usage:
  certagent run          --config FILE       run the daemon in the foreground
  certagent check-config --config FILE       validate and print the effective config; exit 2 on error
  certagent status       [--config FILE | --socket PATH] [--json]   certificates, state, expiry
  certagent fetch NAME   [--socket PATH] [--out DIR]                pull a bundle over the socket
  certagent renew NAME   [--socket PATH]                            ask for an immediate rotation
  certagent enroll       --config FILE [--csr-out FILE] [--csr-subject CN]
                                             create the TPM identity (first boot), print its public key
  certagent doctor       [--config FILE] [--json]
                                             check what this host needs, say what to fix
  certagent version

Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error
(doctor: 0 all checks pass, 1 warnings only, 2 a check failed).
`certagent COMMAND --help` describes one command.
)";

struct CommandHelp {
  const char* usage;
  const char* text;
};

const std::map<std::string, CommandHelp>& command_help() {
  static const std::map<std::string, CommandHelp> help{
      {"run", {"certagent run --config FILE",
               "Runs the daemon in the foreground until SIGTERM/SIGINT (exit 0). SIGHUP re-reads\n"
               "the config without losing current material; a bad new config is logged and ignored."}},
      {"check-config", {"certagent check-config --config FILE",
                        "Validates FILE and prints the effective configuration (defaults filled in).\n"
                        "Errors name file:line:column. Exit 0 when valid, 2 otherwise."}},
      {"status", {"certagent status [--config FILE | --socket PATH] [--json]",
                  "Shows each certificate's state, serial, expiry and next renewal. Asks the daemon\n"
                  "over its socket (--socket, or socket.path of --config); with --config and no\n"
                  "answering socket, reads <state_dir>/state.json. Exit 1 if the daemon is\n"
                  "unreachable and no state file exists."}},
      {"fetch", {"certagent fetch NAME [--socket PATH] [--out DIR]",
                 "Pulls NAME's bundle over the socket. With --out, writes DIR in the same atomic\n"
                 "..data layout as the daemon's file sink; without, prints the JSON bundle.\n"
                 "Exit 1 when refused (403), unknown (404) or nothing valid is held (503)."}},
      {"renew", {"certagent renew NAME [--socket PATH]",
                 "Asks the daemon to rotate NAME now (root or socket.admin_uids only)."}},
      {"enroll", {"certagent enroll --config FILE [--csr-out FILE] [--csr-subject CN]",
                  "Creates the host identity in the TPM if it does not exist (idempotent), prints\n"
                  "its public key and SHA-256 fingerprint for the broker's allowlist, seals broker\n"
                  "secrets named in the config into the TPM and deletes their plaintext files.\n"
                  "--csr-out writes a CSR for an identity certificate, signed in the TPM."}},
      {"doctor", {"certagent doctor [--config FILE] [--json]",
                  "Checks what this host needs and says what to fix: config; state_dir owner and mode;\n"
                  "TPM and identity; sealed secrets of every broker; each broker (answers, TLS trusted,\n"
                  "accepts our credentials at the last issuance); the daemon; each certificate's trust\n"
                  "bundle (parses, covers the current leaf), output directory (writable by the daemon's\n"
                  "user = state_dir's owner; owner and mode of the files), reloader targets and verify\n"
                  "addresses (serving the current serial); the clock; the systemd unit.\n"
                  "Exit 0 when every check passes, 1 with warnings only, 2 when one fails.\n"
                  "Run it as root or as the daemon's user."}},
      {"version", {"certagent version", "Prints the version."}},
  };
  return help;
}

struct Args {
  std::string command;
  std::vector<std::string> positional;
  std::map<std::string, std::string> options;  // --key value
  std::vector<std::string> flags;              // --json, --help
};

int usage_error(const std::string& message) {
  std::cerr << "certagent: " << message << "\n(see certagent --help)\n";
  return 2;
}

// Parses "--key value", "--key=value" and bare flags. Unknown options are errors.
std::optional<Args> parse_args(int argc, char** argv, std::string& error) {
  Args args;
  static const std::vector<std::string> kValued{"--config", "--socket", "--out", "--csr-out",
                                                "--csr-subject"};
  static const std::vector<std::string> kFlags{"--json", "--help", "-h"};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("-", 0) == 0) {
      std::string value;
      bool has_value = false;
      if (auto eq = a.find('='); eq != std::string::npos) {
        value = a.substr(eq + 1);
        a = a.substr(0, eq);
        has_value = true;
      }
      if (std::find(kFlags.begin(), kFlags.end(), a) != kFlags.end()) {
        args.flags.push_back(a == "-h" ? "--help" : a);
        continue;
      }
      if (std::find(kValued.begin(), kValued.end(), a) == kValued.end()) {
        error = "unknown option " + a;
        return std::nullopt;
      }
      if (!has_value) {
        if (i + 1 >= argc) {
          error = a + " needs a value";
          return std::nullopt;
        }
        value = argv[++i];
      }
      args.options[a] = value;
    } else if (args.command.empty()) {
      args.command = a;
    } else {
      args.positional.push_back(a);
    }
  }
  return args;
}

bool has_flag(const Args& a, const std::string& f) {
  return std::find(a.flags.begin(), a.flags.end(), f) != a.flags.end();
}

std::optional<std::string> option(const Args& a, const std::string& k) {
  auto it = a.options.find(k);
  if (it == a.options.end()) return std::nullopt;
  return it->second;
}

// Only the options a command takes: a typo must not be silently ignored.
int check_options(const Args& a, std::initializer_list<const char*> allowed, std::size_t positional) {
  for (const auto& [k, v] : a.options)
    if (std::find_if(allowed.begin(), allowed.end(), [&k = k](const char* x) { return k == x; }) ==
        allowed.end())
      return usage_error(a.command + " does not take " + k);
  for (const auto& f : a.flags)
    if (f != "--help" &&
        std::find_if(allowed.begin(), allowed.end(), [&](const char* x) { return f == x; }) ==
            allowed.end())
      return usage_error(a.command + " does not take " + f);
  if (a.positional.size() != positional)
    return usage_error(a.command + (positional ? " takes NAME" : " takes no arguments"));
  return 0;
}

int cmd_check_config(const Args& a) {
  const auto path = option(a, "--config").value_or(kDefaultConfig);
  auto config = config::load_config(path, agent::builtin_catalog());
  if (!config) {
    std::cerr << config.error().message << "\n";
    return 2;
  }
  std::cout << config::dump_config(*config);
  return 0;
}

int cmd_status(const Args& a) {
  const bool json = has_flag(a, "--json");
  if (auto socket = option(a, "--socket")) return cli::cli_status(*socket, json, std::cout, std::cerr);
  auto config_path = option(a, "--config");
  if (!config_path) return cli::cli_status(kDefaultSocket, json, std::cout, std::cerr);
  auto config = config::load_config(*config_path, agent::builtin_catalog());
  if (!config) {
    std::cerr << config.error().message << "\n";
    return 2;
  }
  if (!config->socket.path.empty() &&
      cli::socket_request(config->socket.path, "GET", "/healthz", std::chrono::seconds(2)))
    return cli::cli_status(config->socket.path, json, std::cout, std::cerr);
  auto state = read_state_file(config->state_dir);
  if (!state) {
    std::cerr << "certagent: " << state.error().message << "\n";
    return 1;
  }
  const auto* root = state->if_object();
  const auto* list = root ? root->if_contains("certificates") : nullptr;
  if (!list || !list->is_array()) {
    std::cerr << "certagent: " << (config->state_dir / kStateFileName).string()
              << " has no certificate list\n";
    return 1;
  }
  if (json) {
    std::cout << boost::json::serialize(*list) << "\n";
  } else {
    std::cout << "(from " << (config->state_dir / kStateFileName).string() << ", written "
              << root->at("written_at").as_string().c_str() << "; the daemon's socket did not answer)\n";
    const auto* brokers = root->if_contains("brokers");
    cli::print_status_table(list->as_array(), std::cout,
                            brokers && brokers->is_array() ? &brokers->as_array() : nullptr);
  }
  return 0;
}

int cmd_enroll(const Args& a) {
  const auto path = option(a, "--config").value_or(kDefaultConfig);
  auto config = config::load_config(path, agent::builtin_catalog());
  if (!config) {
    std::cerr << config.error().message << "\n";
    return 2;
  }
  log::init({config->log.level, config->log.format});
  if (auto r = prepare_state_dir(config->state_dir); !r) {
    std::cerr << "certagent: " << r.error().message << "\n";
    return 1;
  }
  tpm::EnrollOptions options;
  if (auto csr = option(a, "--csr-out")) options.csr_out = *csr;
  if (auto subject = option(a, "--csr-subject")) options.csr_subject = *subject;
  auto report = tpm::enroll(*config, options);
  if (!report) {
    std::cerr << "certagent: enroll failed: " << report.error().message << "\n";
    return 1;
  }
  std::cout << tpm::format_report(*report);
  return 0;
}

}  // namespace

int run_cli(int argc, char** argv) {
  std::string error;
  auto args = parse_args(argc, argv, error);
  if (!args) return usage_error(error);
  if (args->command.empty()) {
    if (has_flag(*args, "--help")) {
      std::cout << kUsage;
      return 0;
    }
    std::cerr << kUsage;
    return 2;
  }
  const auto& help = command_help();
  auto h = help.find(args->command);
  if (h == help.end()) return usage_error("unknown command '" + args->command + "'");
  if (has_flag(*args, "--help")) {
    std::cout << "Usage: " << h->second.usage << "\n\n" << h->second.text << "\n";
    return 0;
  }
  const auto& cmd = args->command;
  if (cmd == "version") {
    if (int rc = check_options(*args, {}, 0)) return rc;
    std::cout << "certagent " << CERTAGENT_VERSION << "\n";
    return 0;
  }
  if (cmd == "run") {
    if (int rc = check_options(*args, {"--config"}, 0)) return rc;
    return run_agent(option(*args, "--config").value_or(kDefaultConfig));
  }
  if (cmd == "check-config") {
    if (int rc = check_options(*args, {"--config"}, 0)) return rc;
    return cmd_check_config(*args);
  }
  if (cmd == "status") {
    if (int rc = check_options(*args, {"--config", "--socket", "--json"}, 0)) return rc;
    if (option(*args, "--config") && option(*args, "--socket"))
      return usage_error("status takes --config or --socket, not both");
    return cmd_status(*args);
  }
  if (cmd == "fetch") {
    if (int rc = check_options(*args, {"--socket", "--out"}, 1)) return rc;
    std::optional<std::filesystem::path> out;
    if (auto o = option(*args, "--out")) out = *o;
    return cli::cli_fetch(option(*args, "--socket").value_or(kDefaultSocket), args->positional[0], out,
                     std::cout, std::cerr);
  }
  if (cmd == "renew") {
    if (int rc = check_options(*args, {"--socket"}, 1)) return rc;
    return cli::cli_renew(option(*args, "--socket").value_or(kDefaultSocket), args->positional[0],
                     std::cout, std::cerr);
  }
  if (cmd == "doctor") {
    if (int rc = check_options(*args, {"--config", "--json"}, 0)) return rc;
    return doctor::run_doctor(option(*args, "--config").value_or(kDefaultConfig), has_flag(*args, "--json"),
                              std::cout);
  }
  if (cmd == "enroll") {
    if (int rc = check_options(*args, {"--config", "--csr-out", "--csr-subject"}, 0)) return rc;
    return cmd_enroll(*args);
  }
  return usage_error("unknown command '" + cmd + "'");
}

}  // namespace certagent
