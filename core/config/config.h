#pragma once
// The daemon's configuration as plain structs. config.cpp turns YAML into these and does all
// validation; nothing downstream re-checks syntax. The schema is a contract (DESIGN.md).
// Every struct compares with ==, so a reload (SIGHUP) can tell which parts changed.

#include "core/clock.h"
#include "core/crypto/keys.h"
#include "core/result.h"

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace certagent::config {

using Duration = std::chrono::milliseconds;

// "500ms", "30s", "10m", "96h", "1h30m". Returns nullopt on anything else.
std::optional<Duration> parse_duration(std::string_view s);
std::string format_duration(Duration d);

struct LogConfig {
  std::string level{"info"};   // trace | debug | info | warn | error
  std::string format{"text"};  // text | json

  bool operator==(const LogConfig&) const = default;
};

struct IdentityConfig {
  std::string backend{"tpm"};                // tpm | file
  std::string tcti{"device:/dev/tpmrm0"};

  bool operator==(const IdentityConfig&) const = default;
};

struct SocketConfig {
  std::filesystem::path path;                // empty: no socket server
  std::uint32_t mode{0660};
  std::string group;                         // empty: the daemon's own group
  std::vector<std::uint32_t> admin_uids;     // may POST .../renew besides root
  std::size_t max_connections{256};
  std::size_t max_watchers{4096};
  std::size_t max_header_bytes{8192};
  Duration request_timeout{std::chrono::seconds(10)};

  bool operator==(const SocketConfig&) const = default;
};

struct MetricsConfig {
  std::string listen;                        // "127.0.0.1:9464"; empty: no TCP listener

  bool operator==(const MetricsConfig&) const = default;
};

// ---- brokers -------------------------------------------------------------------------------

struct LocalBrokerConfig {                   // embedded development CA
  bool operator==(const LocalBrokerConfig&) const = default;
};

struct AcmeChallengeConfig {
  std::string type{"http-01"};               // http-01 | dns-01
  std::string listen{"0.0.0.0:80"};          // http-01 responder
  std::vector<std::string> hook;             // dns-01: argv; the agent appends
                                             // "present|cleanup" <fqdn> <txt value>

  bool operator==(const AcmeChallengeConfig&) const = default;
};

struct AcmeBrokerConfig {
  std::string directory;                     // https URL of the ACME directory
  std::filesystem::path ca_bundle;           // trust for the broker's own TLS; empty: system store
  std::optional<std::string> eab_kid;
  std::filesystem::path eab_hmac_key_file;   // sealed into the TPM at enroll
  AcmeChallengeConfig challenge;
  std::string preferred_chain;               // issuer CN of the preferred chain's root
  std::string contact;                       // optional mailto:

  bool operator==(const AcmeBrokerConfig&) const = default;
};

struct CfsslBrokerConfig {
  std::string url;
  std::filesystem::path ca_bundle;
  std::filesystem::path auth_key_file;       // hex HMAC key, sealed into the TPM at enroll
  std::string profile;
  std::string label;                         // multirootca signer

  bool operator==(const CfsslBrokerConfig&) const = default;
};

struct LemurBrokerConfig {
  std::string url;
  std::filesystem::path ca_bundle;
  std::filesystem::path token_file;          // API key JWT, sealed into the TPM at enroll
  std::string authority;
  std::string owner;
  std::string description;
  std::vector<std::string> destinations;
  std::vector<std::string> notifications;
  std::vector<std::string> roles;

  bool operator==(const LemurBrokerConfig&) const = default;
};

using BrokerSettings =
    std::variant<LocalBrokerConfig, AcmeBrokerConfig, CfsslBrokerConfig, LemurBrokerConfig>;

struct BrokerConfig {
  std::string name;                          // the key under `brokers:`
  std::string type;                          // local | acme | cfssl | lemur
  std::size_t max_in_flight{4};              // concurrent issuance requests to this broker
  Duration timeout{std::chrono::seconds(30)};// per broker request
  BrokerSettings settings;

  bool operator==(const BrokerConfig&) const = default;
};

// ---- reloaders -----------------------------------------------------------------------------

struct VerifyConfig {
  std::string connect;                       // "127.0.0.1:443"
  std::string server_name;                   // SNI; empty: none
  Duration settle{std::chrono::milliseconds(150)};
  Duration deadline{std::chrono::seconds(10)};

  bool operator==(const VerifyConfig&) const = default;
};

struct ExecReloaderConfig {
  std::vector<std::string> command;          // argv, no shell
  Duration timeout{std::chrono::seconds(10)};

  bool operator==(const ExecReloaderConfig&) const = default;
};
struct SignalReloaderConfig {
  std::filesystem::path pid_file;
  std::optional<int> pid;
  int signal{1};                             // SIGHUP

  bool operator==(const SignalReloaderConfig&) const = default;
};
struct SystemdReloaderConfig {
  std::string unit;
  std::string action{"reload-or-restart"};   // reload | restart | reload-or-restart | try-(reload-or-)restart

  bool operator==(const SystemdReloaderConfig&) const = default;
};
struct NginxReloaderConfig {
  std::vector<std::string> command{"nginx", "-s", "reload"};
  std::vector<std::string> test_command;     // pre-check; empty: derived from command (binary -t)
  std::filesystem::path error_log;           // [emerg] lines after the reload = failure

  bool operator==(const NginxReloaderConfig&) const = default;
};
struct HaproxyReloaderConfig {
  std::filesystem::path admin_socket;
  std::string cert;                          // the name exactly as haproxy lists it
  std::filesystem::path issuer_file;         // optional .issuer carried in the transaction
  std::filesystem::path ocsp_file;           // optional .ocsp carried in the transaction

  bool operator==(const HaproxyReloaderConfig&) const = default;
};
struct EnvoyReloaderConfig {
  std::filesystem::path sds_dir;

  bool operator==(const EnvoyReloaderConfig&) const = default;
};

using ReloaderSettings =
    std::variant<ExecReloaderConfig, SignalReloaderConfig, SystemdReloaderConfig,
                 NginxReloaderConfig, HaproxyReloaderConfig, EnvoyReloaderConfig>;

struct ReloaderConfig {
  std::string type;                          // exec | signal | systemd | nginx | haproxy | envoy
  Duration timeout{std::chrono::seconds(30)};// whole reload, verification included
  std::optional<VerifyConfig> verify;        // on by default for nginx/haproxy when given
  ReloaderSettings settings;

  bool operator==(const ReloaderConfig&) const = default;
};

// ---- certificates --------------------------------------------------------------------------

struct CertDefaults {
  crypto::KeyType key{crypto::KeyType::ecdsa_p256};
  Duration lifetime{std::chrono::hours(96)};
  Duration max_lifetime{std::chrono::hours(168)};
  double renew_at{0.5};
  double jitter{0.1};
  std::filesystem::path trust_bundle;        // empty: for the local broker, its own root
  Duration ready_min_ttl{0};                 // /readyz wants more than this left

  bool operator==(const CertDefaults&) const = default;
};

struct FilesConfig {
  std::filesystem::path dir;
  std::string owner;                         // empty: the daemon's user
  std::string group;                         // empty: the daemon's group
  std::uint32_t keep{3};
  bool remove_on_expiry{false};

  bool operator==(const FilesConfig&) const = default;
};

struct SocketAccess {
  std::vector<std::uint32_t> allow_uids;
  std::vector<std::uint32_t> allow_gids;

  bool operator==(const SocketAccess&) const = default;
};

struct CertificateConfig {
  std::string name;                          // [a-z0-9_-]+, unique
  std::string broker;                        // a key of `brokers:`
  std::string common_name;
  std::vector<std::string> dns_names;
  std::vector<std::string> ip_addresses;
  std::vector<std::string> uris;
  // Effective values: defaults merged with the certificate's own keys.
  crypto::KeyType key{crypto::KeyType::ecdsa_p256};
  Duration lifetime{};
  Duration max_lifetime{};
  double renew_at{};
  double jitter{};
  std::filesystem::path trust_bundle;
  Duration ready_min_ttl{};
  std::optional<FilesConfig> files;
  SocketAccess socket;
  std::vector<ReloaderConfig> reload;
  std::vector<ReloaderConfig> on_expiry;

  bool operator==(const CertificateConfig&) const = default;
};

struct Config {
  std::filesystem::path source;              // the file it was read from
  std::filesystem::path state_dir{"/var/lib/certagent"};
  LogConfig log;
  IdentityConfig identity;
  SocketConfig socket;
  MetricsConfig metrics;
  std::map<std::string, BrokerConfig> brokers;
  CertDefaults defaults;
  std::vector<CertificateConfig> certificates;

  const BrokerConfig* broker(const std::string& name) const {
    auto it = brokers.find(name);
    return it == brokers.end() ? nullptr : &it->second;
  }

  bool operator==(const Config&) const = default;
};

// Reads and validates a config file. Errors name file:line:column and what was expected;
// several errors may be joined by newlines.
[[nodiscard]] Result<Config> load_config(const std::filesystem::path& path);
[[nodiscard]] Result<Config> parse_config(std::string_view yaml_text,
                                          const std::filesystem::path& source_name);

// The effective configuration (defaults filled in) as YAML, for `certagent check-config`.
std::string dump_config(const Config& config);

}  // namespace certagent::config
