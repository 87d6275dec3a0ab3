#pragma once
// The daemon's configuration as plain structs. config.cpp turns YAML into these and does all
// validation; nothing downstream re-checks syntax. The schema is a contract (DESIGN.md).
// Every struct compares with ==, so a reload (SIGHUP) can tell which parts changed.
//
// This is the core schema. A broker or reloader entry's own keys belong to its plug-in: the
// plug-in reads them (a Catalog entry passed to load_config) into its own struct, held here in
// a SettingsSlot.

#include "core/clock.h"
#include "core/config/duration.h"
#include "core/config/plugin_settings.h"
#include "core/crypto/keys.h"
#include "core/result.h"

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace certagent::config {

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

// The sidecar API (Envoy SDS and the SPIFFE Workload API over gRPC) on its own Unix socket.
struct WorkloadApiConfig {
  std::filesystem::path path;                // empty: no gRPC endpoint and no gRPC threads
  std::uint32_t mode{0660};
  std::string group;                         // empty: the daemon's own group
  std::size_t max_connections{1024};
  std::size_t max_connections_per_uid{64};
  std::size_t max_streams{4096};             // open calls, every caller together
  std::size_t max_streams_per_uid{256};
  std::size_t max_request_bytes{64 * 1024};  // largest request message accepted
  std::size_t calls_per_second{20};          // per uid, bursts of twice as many
  Duration keepalive{std::chrono::minutes(1)};      // HTTP/2 PING to find dead peers
  Duration idle_timeout{std::chrono::minutes(5)};   // a connection without calls is closed

  bool operator==(const WorkloadApiConfig&) const = default;
};

struct MetricsConfig {
  std::string listen;                        // "127.0.0.1:9464"; empty: no TCP listener

  bool operator==(const MetricsConfig&) const = default;
};

// ---- brokers -------------------------------------------------------------------------------

struct BrokerConfig {
  std::string name;                          // the key under `brokers:`
  std::string type;                          // a registered broker type: local, acme, ...
  std::size_t max_in_flight{4};              // concurrent issuance requests to this broker
  Duration timeout{std::chrono::seconds(30)};// per broker request
  SettingsSlot settings;                     // the plug-in's own keys

  bool operator==(const BrokerConfig&) const = default;
};

// ---- reloaders -----------------------------------------------------------------------------

// What the probe says before the TLS handshake: nothing (tls), PostgreSQL's SSLRequest, or
// STARTTLS after the SMTP greeting and EHLO / after the IMAP greeting.
enum class VerifyProtocol { tls, postgres, smtp, imap };
std::string_view to_string(VerifyProtocol p);  // "tls" | "postgres" | "smtp" | "imap"
inline constexpr std::string_view kVerifyProtocols[] = {"tls", "postgres", "smtp", "imap"};

struct VerifyConfig {
  std::string connect;                       // "127.0.0.1:443"
  std::string server_name;                   // SNI; empty: none
  Duration settle{std::chrono::milliseconds(150)};
  Duration deadline{std::chrono::seconds(10)};
  VerifyProtocol protocol{VerifyProtocol::tls};

  bool operator==(const VerifyConfig&) const = default;
};

struct ReloaderConfig {
  std::string type;                          // a registered reloader type: exec, nginx, ...
  Duration timeout{std::chrono::seconds(30)};// whole reload, verification included
  std::optional<VerifyConfig> verify;        // on by default for nginx/haproxy when given
  SettingsSlot settings;                     // the plug-in's own keys

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

// files.pkcs12: the password of keystore.p12 and truststore.p12.
struct Pkcs12Config {
  std::filesystem::path password_file;       // read at every write (left in place for the app) ...
  bool sealed{false};                        // ... or sealed into the identity by `certagent enroll`
                                             // as "<certificate>.pkcs12_password" and deleted

  bool operator==(const Pkcs12Config&) const = default;
};

// The identity's name for a certificate's sealed keystore password.
inline std::string pkcs12_password_secret(std::string_view certificate) {
  return std::string(certificate) + ".pkcs12_password";
}

struct FilesConfig {
  std::filesystem::path dir;
  std::string owner;                         // empty: the daemon's user
  std::string group;                         // empty: the daemon's group
  std::uint32_t keep{3};
  bool remove_on_expiry{false};
  // Output formats besides the PEM layout, which is always written (the daemon reloads from it):
  // "pkcs12" adds keystore.p12 and truststore.p12 to each generation.
  std::vector<std::string> formats{"pem"};
  std::optional<Pkcs12Config> pkcs12;        // given exactly when formats holds pkcs12

  bool pkcs12_enabled() const { return pkcs12.has_value(); }
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
  WorkloadApiConfig workload_api;
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

// ---- the plug-ins' part -----------------------------------------------------------------

class MapView;

// A broker type: how to read its own keys of a `brokers:` entry.
struct BrokerType {
  std::string name;                          // the `type:` value, e.g. "acme"
  std::vector<std::string_view> keys;        // its keys besides type, max_in_flight, timeout
  // Reads those keys from the entry (unknown keys are already reported); errors go to the
  // view's reader, located. Returns the settings even when some were wrong.
  std::function<SettingsSlot(MapView& entry)> parse;
  // The issued chain is checked against the certificate's trust_bundle, which must then be
  // given; false for a broker whose own root is the trust (local).
  bool needs_trust_bundle{true};
};

// A reloader type: how to read its own keys of a `reload:` / `on_expiry:` item.
struct ReloaderType {
  std::string name;                          // the `type:` value, e.g. "nginx"
  std::vector<std::string_view> keys;        // its keys besides type, timeout, verify
  // `generic` holds type and timeout as read already.
  std::function<SettingsSlot(MapView& entry, const ReloaderConfig& generic)> parse;
  Duration default_timeout{std::chrono::seconds(30)};
  Duration default_settle{0};                // verify.settle when not given
};

// The types config loading knows, in the order error messages list them. The daemon passes
// the built-in ones (agent/builtin_plugins.h); an entry of any other type is an error.
struct Catalog {
  std::vector<BrokerType> brokers;
  std::vector<ReloaderType> reloaders;

  const BrokerType* broker(std::string_view name) const;
  const ReloaderType* reloader(std::string_view name) const;
};

// Reads and validates a config file. Errors name file:line:column and what was expected;
// several errors may be joined by newlines.
[[nodiscard]] Result<Config> load_config(const std::filesystem::path& path, const Catalog& catalog);
[[nodiscard]] Result<Config> parse_config(std::string_view yaml_text,
                                          const std::filesystem::path& source_name,
                                          const Catalog& catalog);

// The effective configuration (defaults filled in) as YAML, for `certagent check-config`.
std::string dump_config(const Config& config);

}  // namespace certagent::config
