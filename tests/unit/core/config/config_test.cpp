// Configuration loader: located errors (file:line:col + what was expected), defaults,
// per-certificate overrides, the full DESIGN.md example, and dump_config round trips.

#include "core/config/config.h"
#include "core/config/config_writer.h"
#include "core/config/config_yaml.h"

#include "agent/builtin_plugins.h"
#include "reloaders/envoy_config.h"
#include "reloaders/exec_config.h"
#include "reloaders/haproxy_config.h"
#include "reloaders/nginx_config.h"
#include "reloaders/signal_config.h"
#include "reloaders/systemd_config.h"
#include "renewers/acme_config.h"
#include "renewers/cfssl_config.h"
#include "renewers/lemur_config.h"
#include "renewers/local_config.h"

#include "tests/support/test_support.h"

#include <gtest/gtest.h>

#include <csignal>
#include <unistd.h>
#include <sstream>
#include <string>
#include <vector>

namespace certagent::config {
namespace {

using namespace std::chrono_literals;
using crypto::KeyType;

const std::filesystem::path kSource = "/cfg/t.yaml";

// Configs as the daemon reads them: with the built-in plug-ins.
Result<Config> parse_config(std::string_view yaml, const std::filesystem::path& source) {
  return config::parse_config(yaml, source, agent::builtin_catalog());
}
Result<Config> load_config(const std::filesystem::path& path) {
  return config::load_config(path, agent::builtin_catalog());
}

std::vector<std::string> lines_of(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

Config parse_ok(const std::string& yaml) {
  auto r = parse_config(yaml, kSource);
  EXPECT_TRUE(r.has_value()) << (r ? std::string() : r.error().message);
  return r ? *r : Config{};
}

// ---- durations and key types ----------------------------------------------------------------

TEST(Duration, ParsesUnitsAndCombinations) {
  struct Case {
    const char* text;
    Duration want;
  };
  const Case cases[] = {
      {"500ms", 500ms}, {"30s", 30s},   {"10m", 10min},          {"96h", 96h},
      {"0s", 0ms},      {"1h30m", 90min}, {"1h30m15s250ms", 1h + 30min + 15s + 250ms},
      {"2m5s", 125s},   {"1s500ms", 1500ms},
  };
  for (const auto& c : cases) {
    auto d = parse_duration(c.text);
    ASSERT_TRUE(d.has_value()) << c.text;
    EXPECT_EQ(*d, c.want) << c.text;
  }
}

TEST(Duration, RejectsEverythingElse) {
  for (const char* bad : {"", "30", "-5s", "+5s", "5", "1.5h", "10x", "5d", "s", "ms", "1h 30m",
                          "30m1h", "10m10m", "5sms", "5 s", "1H", "99999999999999999999h",
                          "3000000000000h", " 5s", "5s "}) {
    EXPECT_FALSE(parse_duration(bad).has_value()) << "'" << bad << "'";
  }
}

TEST(Duration, FormatsCanonicallyAndRoundTrips) {
  EXPECT_EQ(format_duration(0ms), "0s");
  EXPECT_EQ(format_duration(500ms), "500ms");
  EXPECT_EQ(format_duration(96h), "96h");
  EXPECT_EQ(format_duration(90min), "1h30m");
  EXPECT_EQ(format_duration(1500ms), "1s500ms");
  for (Duration d : {Duration(1), Duration(999), Duration(3'600'001), Duration(86'400'000),
                     Duration(123'456'789)}) {
    EXPECT_EQ(parse_duration(format_duration(d)), d) << format_duration(d);
  }
}

// ---- located errors -------------------------------------------------------------------------

struct ErrorCase {
  const char* what;
  const char* yaml;
  const char* where;   // "line:col" of the first error
  const char* phrase;  // must appear in that error's line
};

// A minimal valid head the cases build on (lines 1-4).
#define HEAD                      \
  "brokers:\n"                    \
  "  dev: { type: local }\n"      \
  "certificates:\n"               \
  "  - name: web\n"

const ErrorCase kErrorCases[] = {
    {"syntax error: unclosed flow list",
     "certificates:\n"
     "  - name: web\n"
     "    dns_names: [a.internal, b.internal\n"
     "    broker: dev\n",
     "4:11", "YAML syntax error"},
    {"syntax error: bad indentation",
     "state_dir: /var/lib/certagent\n"
     "  log: x\n",
     "2:6", "YAML syntax error"},
    {"unknown key at the top level",
     "state_dir: /var/lib/certagent\n"
     "colour: blue\n",
     "2:1",
     "unknown key 'colour' at the top level; expected one of: state_dir, log, identity, socket, "
     "workload_api, metrics, brokers, defaults, certificates"},
    {"unknown key in a broker",
     "brokers:\n"
     "  dev:\n"
     "    type: local\n"
     "    url: https://ca.internal\n",
     "4:5", "unknown key 'url' in brokers.dev; expected one of: type, max_in_flight, timeout"},
    {"unknown key in an acme broker",
     "brokers:\n"
     "  corp:\n"
     "    type: acme\n"
     "    directory: https://acme.internal/directory\n"
     "    dir: x\n",
     "5:5", "unknown key 'dir' in brokers.corp; expected one of: type, max_in_flight, timeout, directory"},
    {"unknown key in a certificate", HEAD
     "    broker: dev\n"
     "    common_name: web.internal\n"
     "    lifetme: 96h\n",
     "7:5", "unknown key 'lifetme' in certificates[0]; expected one of: name, broker"},
    {"unknown key in files", HEAD
     "    broker: dev\n"
     "    common_name: web.internal\n"
     "    files: { dir: /srv/web, foo: 1 }\n",
     "7:29",
     "unknown key 'foo' in certificates[0].files; expected one of: dir, owner, group, keep, "
     "remove_on_expiry, formats, pkcs12"},
    {"unknown output format", HEAD
     "    broker: dev\n"
     "    common_name: web\n"
     "    files: { dir: /srv/web, formats: [pem, jks] }\n",
     "7:44", "certificates[0].files.formats[1]: unknown output format 'jks', expected output format: one of pem, pkcs12"},
    {"pkcs12 without a password", HEAD
     "    broker: dev\n"
     "    common_name: web\n"
     "    files: { dir: /srv/web, formats: [pkcs12] }\n",
     "7:38", "certificates[0].files.formats: pkcs12 needs a password, expected certificates[0].files.pkcs12: "
     "{ password_file: PATH }"},
    {"a keystore password without pkcs12", HEAD
     "    broker: dev\n"
     "    common_name: web\n"
     "    files: { dir: /srv/web, pkcs12: { password_file: /etc/p } }\n",
     "7:37", "certificates[0].files.pkcs12: a keystore password but no keystore, expected pkcs12 in "
     "certificates[0].files.formats"},
    {"pkcs12 password_file missing", HEAD
     "    broker: dev\n"
     "    common_name: web\n"
     "    files: { dir: /srv/web, formats: [pkcs12], pkcs12: { sealed: true } }\n",
     "7:48", "missing key 'password_file'"},
    {"unknown key in a reloader", HEAD
     "    broker: dev\n"
     "    common_name: web.internal\n"
     "    reload:\n"
     "      - type: exec\n"
     "        command: [/bin/true]\n"
     "        pidfile: /run/x.pid\n",
     "10:9", "unknown key 'pidfile' in certificates[0].reload[0]; expected one of: type, timeout, verify, command"},
    {"unknown key in verify", HEAD
     "    broker: dev\n"
     "    common_name: web.internal\n"
     "    reload:\n"
     "      - type: nginx\n"
     "        verify: { connect: \"127.0.0.1:443\", sni: web }\n",
     "9:45", "unknown key 'sni' in certificates[0].reload[0].verify"},
    {"wrong type: scalar for a list", HEAD
     "    broker: dev\n"
     "    dns_names: web.internal\n",
     "6:16", "certificates[0].dns_names: got 'web.internal', expected a list of DNS names"},
    {"wrong type: list for a duration", HEAD
     "    broker: dev\n"
     "    common_name: web\n"
     "    lifetime: [96h]\n",
     "7:15", "certificates[0].lifetime: got a list, expected a duration like 30s, 10m or 96h"},
    {"wrong type: scalar for a mapping",
     "log: info\n",
     "1:6", "log: got 'info', expected a mapping"},
    {"wrong type: not a number",
     "socket: { max_connections: many }\n",
     "1:28", "socket.max_connections: got 'many', expected a whole number from 1 to 1000000"},
    {"wrong type: not a boolean", HEAD
     "    broker: dev\n"
     "    common_name: web\n"
     "    files: { dir: /srv/web, remove_on_expiry: yes please }\n",
     "7:47", "got 'yes please', expected true or false"},
    {"empty value where a mapping is needed", HEAD
     "    broker: dev\n"
     "    common_name: web\n"
     "    files:\n",
     "7:5", "certificates[0].files: got no value, expected a mapping"},
    {"bad duration", HEAD
     "    broker: dev\n"
     "    common_name: web\n"
     "    lifetime: 10x\n",
     "7:15", "certificates[0].lifetime: got '10x', expected a duration like 30s, 10m or 96h"},
    {"bare number as a duration",
     "defaults:\n"
     "  lifetime: 96\n",
     "2:13", "defaults.lifetime: got '96', expected a duration like 30s, 10m or 96h"},
    {"negative duration",
     "socket:\n"
     "  request_timeout: -5s\n",
     "2:20", "expected a duration like 30s, 10m or 96h"},
    {"zero lifetime",
     "defaults: { lifetime: 0s }\n",
     "1:23", "defaults.lifetime: got '0s', expected a duration of at least 1s"},
    {"sub-second lifetime", HEAD
     "    broker: dev\n"
     "    common_name: web\n"
     "    lifetime: 500ms\n",
     "7:15", "certificates[0].lifetime: got '500ms', expected a duration of at least 1s"},
    {"haproxy cert name with white space", HEAD
     "    broker: dev\n"
     "    common_name: web\n"
     "    reload: [{ type: haproxy, admin_socket: /run/h.sock, cert: \"/etc/h/my site.pem\" }]\n",
     "7:64", "got '/etc/h/my site.pem' with white space"},
    {"bad key type",
     "defaults:\n"
     "  key: rsa-1024\n",
     "2:8",
     "defaults.key: got 'rsa-1024', expected a key type: ecdsa-p256, ecdsa-p384, rsa-2048, "
     "rsa-3072, rsa-4096 or ed25519"},
    {"duplicate certificate name", HEAD
     "    broker: dev\n"
     "    common_name: a\n"
     "  - name: web\n"
     "    broker: dev\n"
     "    common_name: b\n",
     "7:11", "certificates[1].name: duplicate certificate name 'web' (first at line 4), expected each name once"},
    {"bad certificate name",
     "brokers: { dev: { type: local } }\n"
     "certificates:\n"
     "  - name: Web!\n"
     "    broker: dev\n"
     "    common_name: web\n",
     "3:11", "certificates[0].name: got 'Web!', expected a name of 1 to 64 characters from a-z, 0-9"},
    {"certificate name too long",
     "brokers: { dev: { type: local } }\n"
     "certificates:\n"
     "  - name: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n"
     "    broker: dev\n"
     "    common_name: web\n",
     "3:11", "expected a name of 1 to 64 characters"},
    {"unknown broker", HEAD
     "    broker: nope\n"
     "    common_name: web\n",
     "5:13", "certificates[0].broker: unknown broker 'nope', expected one of the brokers defined under brokers: dev"},
    {"unknown broker type",
     "brokers:\n"
     "  vault: { type: hashicorp }\n",
     "2:18",
     "brokers.vault.type: unknown broker type 'hashicorp', expected broker type: one of local, acme, "
     "cfssl, lemur"},
    {"unknown reloader type", HEAD
     "    broker: dev\n"
     "    common_name: web\n"
     "    reload: [{ type: caddy }]\n",
     "7:22",
     "unknown reloader type 'caddy', expected reloader type: one of exec, signal, systemd, nginx, "
     "haproxy, envoy"},
    {"missing broker type",
     "brokers:\n"
     "  dev: { max_in_flight: 2 }\n",
     "2:3", "brokers.dev: missing key 'type', expected a broker type: one of local, acme, cfssl, lemur"},
    {"missing acme directory",
     "brokers:\n"
     "  corp:\n"
     "    type: acme\n",
     "2:3", "brokers.corp: missing key 'directory', expected the https URL of the ACME directory"},
    {"acme directory over plain http",
     "brokers:\n"
     "  corp: { type: acme, directory: \"http://acme.internal/dir\" }\n",
     "2:34", "got 'http://acme.internal/dir', expected the https URL of the ACME directory"},
    {"missing cfssl auth key",
     "brokers:\n"
     "  pki: { type: cfssl, url: \"http://127.0.0.1:8888\" }\n",
     "2:3", "brokers.pki: missing key 'auth_key_file'"},
    {"missing lemur owner",
     "brokers:\n"
     "  netflix:\n"
     "    type: lemur\n"
     "    url: https://lemur.internal\n"
     "    token_file: /etc/certagent/lemur.jwt\n"
     "    authority: InternalCA\n",
     "2:3", "brokers.netflix: missing key 'owner'"},
    {"eab without kid",
     "brokers:\n"
     "  corp:\n"
     "    type: acme\n"
     "    directory: https://acme.internal/directory\n"
     "    eab: { hmac_key_file: /etc/certagent/eab.key }\n",
     "5:5", "brokers.corp.eab: missing key 'kid'"},
    {"dns-01 without a hook",
     "brokers:\n"
     "  corp:\n"
     "    type: acme\n"
     "    directory: https://acme.internal/directory\n"
     "    challenge: { type: dns-01 }\n",
     "5:16", "challenge type dns-01 without a hook, expected hook: [argv]"},
    {"missing certificate broker",
     "certificates:\n"
     "  - name: web\n"
     "    common_name: web\n",
     "2:5", "certificates[0]: missing key 'broker'"},
    {"missing certificate name",
     "brokers: { dev: { type: local } }\n"
     "certificates:\n"
     "  - broker: dev\n"
     "    common_name: web\n",
     "3:5", "certificates[0]: missing key 'name'"},
    {"certificate without any name", HEAD
     "    broker: dev\n",
     "4:5", "certificates[0]: the certificate names nothing, expected at least one of common_name, dns_names, ip_addresses, uris"},
    {"files without dir", HEAD
     "    broker: dev\n"
     "    common_name: web\n"
     "    files:\n"
     "      owner: www-data\n",
     "7:5", "certificates[0].files: missing key 'dir'"},
    {"exec without command", HEAD
     "    broker: dev\n"
     "    common_name: web\n"
     "    reload:\n"
     "      - type: exec\n",
     "8:9", "certificates[0].reload[0]: missing key 'command', expected a non-empty argv list"},
    {"exec with an empty command", HEAD
     "    broker: dev\n"
     "    common_name: web\n"
     "    on_expiry: [{ type: exec, command: [] }]\n",
     "7:40", "certificates[0].on_expiry[0].command: got an empty command"},
    {"haproxy without cert", HEAD
     "    broker: dev\n"
     "    common_name: web\n"
     "    reload:\n"
     "      - { type: haproxy, admin_socket: /run/haproxy/admin.sock }\n",
     "8:9", "certificates[0].reload[0]: missing key 'cert'"},
    {"verify without connect", HEAD
     "    broker: dev\n"
     "    common_name: web\n"
     "    reload:\n"
     "      - type: nginx\n"
     "        verify: { server_name: web }\n",
     "9:9", "certificates[0].reload[0].verify: missing key 'connect'"},
    {"verify with a bad address", HEAD
     "    broker: dev\n"
     "    common_name: web\n"
     "    reload:\n"
     "      - type: nginx\n"
     "        verify: { connect: \"127.0.0.1\" }\n",
     "9:28", "got '127.0.0.1', expected host:port like 127.0.0.1:443"},
    {"verify with an unknown protocol", HEAD
     "    broker: dev\n"
     "    common_name: web\n"
     "    reload:\n"
     "      - type: exec\n"
     "        command: [pg_ctl, reload]\n"
     "        verify: { connect: \"127.0.0.1:5432\", protocol: postgresql }\n",
     "10:56", "unknown verify protocol 'postgresql', expected verify protocol: one of tls, postgres, smtp, imap"},
    {"verify with a protocol that is a list", HEAD
     "    broker: dev\n"
     "    common_name: web\n"
     "    reload:\n"
     "      - type: exec\n"
     "        command: [postfix, reload]\n"
     "        verify: { connect: \"127.0.0.1:25\", protocol: [smtp] }\n",
     "10:54", "expected verify protocol: one of tls, postgres, smtp, imap"},
    {"signal with both pid and pid_file", HEAD
     "    broker: dev\n"
     "    common_name: web\n"
     "    reload: [{ type: signal, pid_file: /run/a.pid, pid: 42 }]\n",
     "7:57", "both pid_file and pid, expected exactly one of them"},
    {"signal with neither pid nor pid_file", HEAD
     "    broker: dev\n"
     "    common_name: web\n"
     "    reload: [{ type: signal, signal: HUP }]\n",
     "7:14", "neither pid_file nor pid"},
    {"unknown signal", HEAD
     "    broker: dev\n"
     "    common_name: web\n"
     "    reload: [{ type: signal, pid: 42, signal: SIGFOO }]\n",
     "7:47", "got 'SIGFOO', expected a signal name like SIGHUP or HUP"},
    {"bad systemd action", HEAD
     "    broker: dev\n"
     "    common_name: web\n"
     "    reload: [{ type: systemd, unit: nginx.service, action: bounce }]\n",
     "7:60", "unknown systemd action 'bounce'"},
    {"bad IP address", HEAD
     "    broker: dev\n"
     "    ip_addresses: [127.0.0.1, 127.0.0.256]\n",
     "6:31", "certificates[0].ip_addresses[1]: got '127.0.0.256', expected an IPv4 or IPv6 address"},
    {"bad DNS name", HEAD
     "    broker: dev\n"
     "    dns_names: [web.internal, -bad.internal]\n",
     "6:31", "certificates[0].dns_names[1]: got '-bad.internal', expected a lowercase DNS name"},
    {"URI without a scheme", HEAD
     "    broker: dev\n"
     "    uris: [example.org/web]\n",
     "6:12", "certificates[0].uris[0]: got 'example.org/web', expected a URI with a scheme"},
    {"renew_at above 1",
     "defaults:\n"
     "  renew_at: 1.5\n",
     "2:13", "defaults.renew_at: got '1.5', expected a fraction of the lifetime between 0 and 1 (exclusive)"},
    {"renew_at of 0", HEAD
     "    broker: dev\n"
     "    common_name: web\n"
     "    renew_at: 0\n",
     "7:15", "certificates[0].renew_at: got '0', expected a fraction of the lifetime between 0 and 1"},
    {"jitter above 0.5",
     "defaults: { jitter: 0.6 }\n",
     "1:21", "defaults.jitter: got '0.6', expected a fraction from 0 to 0.5"},
    {"renew_at with jitter past expiry", HEAD
     "    broker: dev\n"
     "    common_name: web\n"
     "    renew_at: 0.95\n",
     "7:15", "can put the renewal at or after expiry, expected renew_at x (1 + jitter) < 1"},
    {"max_lifetime shorter than lifetime",
     "defaults:\n"
     "  lifetime: 200h\n",
     "2:13", "defaults.max_lifetime: max_lifetime 168h is shorter than lifetime 200h, expected max_lifetime >= lifetime"},
    {"missing trust_bundle for a non-local broker",
     "brokers:\n"
     "  pki: { type: cfssl, url: \"http://127.0.0.1:8888\", auth_key_file: /etc/certagent/cfssl.key }\n"
     "certificates:\n"
     "  - name: web\n"
     "    broker: pki\n"
     "    common_name: web\n",
     "4:5",
     "certificates[0]: no trust_bundle for broker 'pki' (type cfssl): the issued chain is verified "
     "against it"},
    {"socket mode without quotes",
     "socket:\n"
     "  mode: 0660\n",
     "2:9", "socket.mode: got '0660' without quotes, expected a quoted octal string like \"0660\""},
    {"socket mode not octal",
     "socket: { mode: \"0990\" }\n",
     "1:17", "expected an octal mode"},
    {"workload_api mode without quotes",
     "workload_api:\n"
     "  mode: 0666\n",
     "2:9", "workload_api.mode: got '0666' without quotes, expected a quoted octal string"},
    {"workload_api on the HTTP socket's path",
     "socket: { path: /run/a.sock }\n"
     "workload_api: { path: /run/a.sock }\n",
     "2:15", "workload_api.path equal to socket.path, expected a socket path of its own"},
    {"workload_api unknown key",
     "workload_api: { path: /run/w.sock, max_stream: 3 }\n",
     "1:36", "unknown key 'max_stream'"},
    {"workload_api zero streams",
     "workload_api: { max_streams_per_uid: 0 }\n",
     "1:38", "workload_api.max_streams_per_uid: got '0', expected a whole number from 1"},
    {"metrics listen without a port",
     "metrics: { listen: localhost }\n",
     "1:20", "metrics.listen: got 'localhost', expected host:port"},
    {"bad log level",
     "log: { level: verbose }\n",
     "1:15", "log.level: unknown log level 'verbose', expected log level: one of trace, debug, info, warn, error"},
    {"duplicate key",
     "state_dir: /a\n"
     "state_dir: /b\n",
     "2:1", "key 'state_dir' is given twice, expected each key once"},
    {"two documents",
     "state_dir: /a\n"
     "---\n"
     "state_dir: /b\n",
     "3:1", "a second YAML document, expected a single document"},
    {"empty file", "", "1:1", "the configuration is empty"},
    {"top level is a list", "- a\n- b\n", "1:1", "got a list, expected a mapping of top-level keys"},
    {"home-relative path", "state_dir: ~/certagent\n", "1:12", "'~' is not expanded"},
    {"bad broker name",
     "brokers:\n"
     "  Dev: { type: local }\n",
     "2:3", "brokers: got 'Dev' as a broker name, expected a name of 1 to 64 characters"},
};

class ConfigErrors : public ::testing::TestWithParam<ErrorCase> {};

TEST_P(ConfigErrors, NameTheLocationAndWhatWasExpected) {
  const ErrorCase& c = GetParam();
  auto r = parse_config(c.yaml, kSource);
  ASSERT_FALSE(r.has_value()) << c.what << ": parsed without error";
  EXPECT_TRUE(r.error().configuration);
  auto lines = lines_of(r.error().message);
  ASSERT_FALSE(lines.empty());
  const std::string prefix = kSource.string() + ":" + c.where + ": ";
  EXPECT_EQ(lines[0].substr(0, prefix.size()), prefix) << c.what << "\n" << r.error().message;
  EXPECT_NE(lines[0].find(c.phrase), std::string::npos)
      << c.what << ": wanted phrase: " << c.phrase << "\ngot: " << r.error().message;
}

INSTANTIATE_TEST_SUITE_P(Table, ConfigErrors, ::testing::ValuesIn(kErrorCases),
                         [](const auto& info) { return "case" + std::to_string(info.index); });

TEST(WorkloadApi, DefaultsOffAndEveryKeyParsesAndDumps) {
  const std::string head = "brokers: { dev: { type: local } }\n";
  EXPECT_TRUE(parse_ok(head).workload_api.path.empty());
  auto c = parse_ok(head +
                    "workload_api:\n"
                    "  path: /run/certagent/workload.sock\n"
                    "  mode: \"0666\"\n"
                    "  group: nogroup\n"
                    "  max_connections: 10\n"
                    "  max_connections_per_uid: 2\n"
                    "  max_streams: 30\n"
                    "  max_streams_per_uid: 4\n"
                    "  max_request_bytes: 2048\n"
                    "  calls_per_second: 5\n"
                    "  keepalive: 30s\n"
                    "  idle_timeout: 2m\n");
  const auto& a = c.workload_api;
  EXPECT_EQ(a.path, "/run/certagent/workload.sock");
  EXPECT_EQ(a.mode, 0666u);
  EXPECT_EQ(a.group, "nogroup");
  EXPECT_EQ(a.max_connections, 10u);
  EXPECT_EQ(a.max_connections_per_uid, 2u);
  EXPECT_EQ(a.max_streams, 30u);
  EXPECT_EQ(a.max_streams_per_uid, 4u);
  EXPECT_EQ(a.max_request_bytes, 2048u);
  EXPECT_EQ(a.calls_per_second, 5u);
  EXPECT_EQ(a.keepalive, std::chrono::seconds(30));
  EXPECT_EQ(a.idle_timeout, std::chrono::minutes(2));
  // The dump reads back to the same config.
  auto again = parse_config(dump_config(c), kSource);
  ASSERT_TRUE(again) << again.error().message;
  EXPECT_EQ(again->workload_api, a);
}

TEST(ConfigErrorsMisc, SeveralErrorsAreReportedTogether) {
  auto r = parse_config(HEAD
                        "    broker: nope\n"
                        "    common_name: web\n"
                        "    lifetime: 10x\n"
                        "    files: { dir: /srv/web, keep: 0 }\n"
                        "colour: blue\n",
                        kSource);
  ASSERT_FALSE(r.has_value());
  auto lines = lines_of(r.error().message);
  ASSERT_EQ(lines.size(), 4u) << r.error().message;
  // In file order, whatever order they were found in.
  EXPECT_EQ(lines[0].rfind("/cfg/t.yaml:5:13: ", 0), 0u) << r.error().message;
  EXPECT_EQ(lines[3].rfind("/cfg/t.yaml:9:1: ", 0), 0u) << r.error().message;
  EXPECT_NE(r.error().message.find("/cfg/t.yaml:9:1: unknown key 'colour'"), std::string::npos);
  EXPECT_NE(r.error().message.find("/cfg/t.yaml:5:13: certificates[0].broker: unknown broker 'nope'"),
            std::string::npos);
  EXPECT_NE(r.error().message.find("/cfg/t.yaml:7:15: certificates[0].lifetime"), std::string::npos);
  EXPECT_NE(r.error().message.find("/cfg/t.yaml:8:35: certificates[0].files.keep: got '0', expected a whole number from 1"),
            std::string::npos)
      << r.error().message;
}

// Found by fuzz_config: a string holding a byte that is not UTF-8 was accepted, and check-config
// wrote it back as something else (the dump did not read back as the same config).
TEST(ConfigErrorsMisc, TextThatIsNotUtf8IsRefusedWithItsPosition) {
  auto r = parse_config(HEAD "    broker: dev\n    common_name: \"web\xff.internal\"\n", kSource);
  ASSERT_FALSE(r.has_value());
  EXPECT_TRUE(r.error().configuration);
  EXPECT_EQ(r.error().message, "/cfg/t.yaml:6:22: byte 0xff is not UTF-8, expected a UTF-8 text "
                               "file of printable characters");
  // Overlong forms, surrogates and truncated sequences are not UTF-8 either.
  for (const char* bad : {"\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe2\x82"}) {
    EXPECT_FALSE(parse_config(HEAD "    broker: dev\n    common_name: \"web" + std::string(bad) + "\"\n", kSource))
        << bad;
  }
  // Multi-byte UTF-8 is fine (here in a comment, where nothing else checks it).
  parse_ok(HEAD "    broker: dev  # caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x94\x92\n    common_name: web.internal\n");
}

// fuzz_config: `label: primary <NUL> <CR> # comment` was read as a label ending in a NUL and a
// CR, which check-config wrote back as another label (and which would have reached the broker).
TEST(ConfigErrorsMisc, ControlCharactersAreRefusedWithTheirPosition) {
  const char nul[] = HEAD "    broker: dev\n    common_name: web   \x00  \r  # a comment\n";
  auto r = parse_config(std::string_view(nul, sizeof nul - 1), kSource);
  ASSERT_FALSE(r.has_value());
  EXPECT_TRUE(r.error().configuration);
  EXPECT_EQ(r.error().message, "/cfg/t.yaml:6:24: byte 0x00 is a control character, expected a UTF-8 "
                               "text file of printable characters");
  auto cr = parse_config(HEAD "    broker: dev\n    common_name: web\r  # a comment\n", kSource);
  ASSERT_FALSE(cr.has_value());
  EXPECT_NE(cr.error().message.find("6:21: byte 0x0d is a carriage return without a line feed"),
            std::string::npos)
      << cr.error().message;
  // DEL, ESC, and C1 controls (U+0085 as UTF-8) too.
  for (const char* bad : {"\x7f", "\x1b", "\xc2\x85"}) {
    EXPECT_FALSE(parse_config(HEAD "    broker: dev\n    common_name: \"web" + std::string(bad) + "\"\n", kSource))
        << bad;
  }
  // Tabs in a comment and CRLF line ends are fine.
  parse_ok(HEAD "    broker: dev\t# a\ttab\r\n    common_name: web.internal\r\n");
}

TEST(ConfigErrorsMisc, NoBrokersDefinedSaysSo) {
  auto r = parse_config("certificates: [{ name: web, broker: dev, common_name: web }]\n", kSource);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("unknown broker 'dev', expected a broker defined under brokers: (none is)"),
            std::string::npos)
      << r.error().message;
}

TEST(ConfigErrorsMisc, InconsistentDefaultsAreReportedOnceNotPerCertificate) {
  auto r = parse_config("defaults: { renew_at: 0.9, jitter: 0.2 }\n"
                        "brokers: { dev: { type: local } }\n"
                        "certificates:\n"
                        "  - { name: a, broker: dev, common_name: a }\n"
                        "  - { name: b, broker: dev, common_name: b }\n",
                        kSource);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(lines_of(r.error().message).size(), 1u) << r.error().message;
  EXPECT_EQ(r.error().message.rfind("/cfg/t.yaml:1:23: defaults.renew_at: ", 0), 0u) << r.error().message;
}

TEST(ConfigErrorsMisc, CertificateOverrideClashingWithDefaultsIsReportedAtTheCertificate) {
  auto r = parse_config("defaults: { max_lifetime: 100h }\n"
                        "brokers: { dev: { type: local } }\n"
                        "certificates:\n"
                        "  - { name: a, broker: dev, common_name: a, lifetime: 120h }\n",
                        kSource);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().message,
            "/cfg/t.yaml:4:55: certificates[0].max_lifetime: max_lifetime 100h is shorter than "
            "lifetime 120h, expected max_lifetime >= lifetime");
}

TEST(ConfigErrorsMisc, HostileNestingIsAnErrorNotACrash) {
  auto r = parse_config("log: " + std::string(100000, '[') + std::string(100000, ']') + "\n", kSource);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().message.rfind("/cfg/t.yaml:1:", 0), 0u) << r.error().message;
  EXPECT_NE(r.error().message.find("YAML nesting too deep"), std::string::npos) << r.error().message;
}

// Found by fuzz_config (tests/fuzz/corpus/config/regression-stray-comma): yaml-cpp 0.7's LoadAll
// never ends on a ',' outside brackets (one more empty document each time, ~180 MB/s), so a
// config with a line starting with ',' hung check-config and the daemon's start. Run in a child
// that a deadline ends: without the fix this would never return and would eat the machine's memory.
TEST(ConfigErrorsMisc, AStrayCommaIsASyntaxErrorNotAHang) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {",\n", "/cfg/t.yaml:1:1: "},
      {"# a comment\n, with the identity in a TPM\nstate_dir: /var/lib/certagent\n", "/cfg/t.yaml:2:1: "},
      {"{ state_dir: /a }\n,\n", "/cfg/t.yaml:2:1: "},
      {"state_dir: /a\n...\n,\n", "/cfg/t.yaml:3:1: "},
  };
  const std::string expected = "YAML syntax error: unexpected ',' here, expected valid YAML";
  ASSERT_EXIT(
      {
        alarm(10);  // a deadline for a hang, not a measure of speed: a parse takes microseconds
        for (const auto& [yaml, where] : cases) {
          auto r = parse_config(yaml, kSource);
          if (r || r.error().message.rfind(where + expected, 0) != 0) std::_Exit(1);
        }
        std::_Exit(0);
      },
      ::testing::ExitedWithCode(0), "");
  // The child ended, so these return: the exact messages.
  for (const auto& [yaml, where] : cases) {
    auto r = parse_config(yaml, kSource);
    ASSERT_FALSE(r.has_value()) << yaml;
    EXPECT_TRUE(r.error().configuration);
    EXPECT_EQ(r.error().message.rfind(where + expected, 0), 0u) << yaml << "\n" << r.error().message;
  }
  // After a '---' it is a second document, named as such.
  auto two = parse_config("state_dir: /a\n---\n,\n", kSource);
  ASSERT_FALSE(two.has_value());
  EXPECT_EQ(two.error().message.rfind("/cfg/t.yaml:3:1: a second YAML document", 0), 0u) << two.error().message;
}

TEST(ConfigErrorsMisc, TooManyErrorsAreCapped) {
  std::string yaml = "brokers: { dev: { type: local } }\ncertificates:\n";
  for (int i = 0; i < 80; ++i) {
    yaml += "  - { name: c" + std::to_string(i) + ", broker: dev, common_name: x, lifetime: bad }\n";
  }
  auto r = parse_config(yaml, kSource);
  ASSERT_FALSE(r.has_value());
  auto lines = lines_of(r.error().message);
  ASSERT_EQ(lines.size(), 51u);
  EXPECT_EQ(lines.back(), "... and 30 more errors");
}

TEST(ConfigErrorsMisc, LoadConfigNamesTheFile) {
  test::TempDir dir;
  auto missing = load_config(dir / "nope.yaml");
  ASSERT_FALSE(missing.has_value());
  EXPECT_NE(missing.error().message.find("nope.yaml: cannot open the configuration file"),
            std::string::npos)
      << missing.error().message;

  auto as_dir = load_config(dir.path());
  ASSERT_FALSE(as_dir.has_value());
  EXPECT_NE(as_dir.error().message.find("is a directory"), std::string::npos);

  test::write_file(dir / "bad.yaml", "state_dir: /x\nlog: { level: loud }\n");
  auto bad = load_config(dir / "bad.yaml");
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().message.rfind((dir / "bad.yaml").string() + ":2:15: log.level: unknown log level 'loud'", 0), 0u)
      << bad.error().message;
}

// ---- defaults and overrides -----------------------------------------------------------------

TEST(ConfigDefaults, AnEmptyishConfigTakesEveryDocumentedDefault) {
  Config c = parse_ok("state_dir: /var/lib/certagent\n");
  EXPECT_EQ(c.source, kSource);
  EXPECT_EQ(c.state_dir, "/var/lib/certagent");
  EXPECT_EQ(c.log.level, "info");
  EXPECT_EQ(c.log.format, "text");
  EXPECT_EQ(c.identity.backend, "tpm");
  EXPECT_EQ(c.identity.tcti, "device:/dev/tpmrm0");
  EXPECT_TRUE(c.socket.path.empty());
  EXPECT_EQ(c.socket.mode, 0660u);
  EXPECT_EQ(c.socket.max_connections, 256u);
  EXPECT_EQ(c.socket.max_watchers, 4096u);
  EXPECT_EQ(c.socket.max_header_bytes, 8192u);
  EXPECT_EQ(c.socket.request_timeout, 10s);
  EXPECT_TRUE(c.metrics.listen.empty());
  EXPECT_TRUE(c.brokers.empty());
  EXPECT_TRUE(c.certificates.empty());
  EXPECT_EQ(c.defaults, CertDefaults{});
}

TEST(ConfigDefaults, CertificatesTakeTheDefaultsBlock) {
  Config c = parse_ok(
      "defaults:\n"
      "  key: rsa-3072\n"
      "  lifetime: 10m\n"
      "  max_lifetime: 20m\n"
      "  renew_at: 0.6\n"
      "  jitter: 0.05\n"
      "  trust_bundle: /etc/certagent/roots.pem\n"
      "  ready_min_ttl: 1m\n"
      "brokers:\n"
      "  dev: { type: local }\n"
      "certificates:\n"
      "  - name: web\n"
      "    broker: dev\n"
      "    dns_names: [web.internal]\n");
  ASSERT_EQ(c.certificates.size(), 1u);
  const auto& w = c.certificates[0];
  EXPECT_EQ(w.key, KeyType::rsa_3072);
  EXPECT_EQ(w.lifetime, 10min);
  EXPECT_EQ(w.max_lifetime, 20min);
  EXPECT_DOUBLE_EQ(w.renew_at, 0.6);
  EXPECT_DOUBLE_EQ(w.jitter, 0.05);
  EXPECT_EQ(w.trust_bundle, "/etc/certagent/roots.pem");
  EXPECT_EQ(w.ready_min_ttl, 1min);
  EXPECT_FALSE(w.files.has_value());
  EXPECT_TRUE(w.reload.empty());
  EXPECT_TRUE(w.on_expiry.empty());
  EXPECT_EQ(c.defaults.key, KeyType::rsa_3072);
}

TEST(ConfigDefaults, WithoutDefaultsBlockCertificatesGetTheBuiltIns) {
  Config c = parse_ok("brokers: { dev: { type: local } }\n"
                      "certificates: [{ name: web, broker: dev, common_name: web }]\n");
  const auto& w = c.certificates.at(0);
  EXPECT_EQ(w.key, KeyType::ecdsa_p256);
  EXPECT_EQ(w.lifetime, 96h);
  EXPECT_EQ(w.max_lifetime, 168h);
  EXPECT_DOUBLE_EQ(w.renew_at, 0.5);
  EXPECT_DOUBLE_EQ(w.jitter, 0.1);
  EXPECT_TRUE(w.trust_bundle.empty());  // local broker: its own root
  EXPECT_EQ(w.ready_min_ttl, 0ms);
  const auto& b = c.brokers.at("dev");
  EXPECT_EQ(b.name, "dev");
  EXPECT_EQ(b.max_in_flight, 4u);
  EXPECT_EQ(b.timeout, 30s);
  EXPECT_TRUE(b.settings.get_if<renewers::LocalRenewerConfig>());
}

TEST(ConfigDefaults, ACertificateOverridesEachKeyOnItsOwn) {
  Config c = parse_ok(
      "defaults: { lifetime: 96h, renew_at: 0.5, trust_bundle: /etc/roots.pem }\n"
      "brokers: { dev: { type: local } }\n"
      "certificates:\n"
      "  - name: short\n"
      "    broker: dev\n"
      "    common_name: short\n"
      "    key: ed25519\n"
      "    lifetime: 5m\n"
      "    max_lifetime: 6m\n"
      "    renew_at: 0.7\n"
      "    jitter: 0\n"
      "    trust_bundle: other-roots.pem\n"
      "    ready_min_ttl: 30s\n"
      "  - name: plain\n"
      "    broker: dev\n"
      "    common_name: plain\n");
  ASSERT_EQ(c.certificates.size(), 2u);
  const auto& s = c.certificates[0];
  EXPECT_EQ(s.key, KeyType::ed25519);
  EXPECT_EQ(s.lifetime, 5min);
  EXPECT_EQ(s.max_lifetime, 6min);
  EXPECT_DOUBLE_EQ(s.renew_at, 0.7);
  EXPECT_DOUBLE_EQ(s.jitter, 0.0);
  EXPECT_EQ(s.trust_bundle, "/cfg/other-roots.pem");  // relative to the config file's directory
  EXPECT_EQ(s.ready_min_ttl, 30s);
  const auto& p = c.certificates[1];
  EXPECT_EQ(p.key, KeyType::ecdsa_p256);
  EXPECT_EQ(p.lifetime, 96h);
  EXPECT_EQ(p.max_lifetime, 168h);
  EXPECT_DOUBLE_EQ(p.renew_at, 0.5);
  EXPECT_DOUBLE_EQ(p.jitter, 0.1);
  EXPECT_EQ(p.trust_bundle, "/etc/roots.pem");
}

TEST(ConfigDefaults, RelativePathsStartAtTheConfigFilesDirectory) {
  Config c = parse_ok(
      "state_dir: state\n"
      "socket: { path: ../run/agent.sock }\n"
      "brokers:\n"
      "  pki: { type: cfssl, url: \"http://127.0.0.1:8888\", auth_key_file: ./keys/cfssl.key }\n"
      "certificates:\n"
      "  - name: web\n"
      "    broker: pki\n"
      "    common_name: web\n"
      "    trust_bundle: roots.pem\n"
      "    files: { dir: live/web }\n");
  EXPECT_EQ(c.state_dir, "/cfg/state");
  EXPECT_EQ(c.socket.path, "/run/agent.sock");
  EXPECT_EQ(c.brokers.at("pki").settings.as<renewers::CfsslRenewerConfig>().auth_key_file, "/cfg/keys/cfssl.key");
  EXPECT_EQ(c.certificates.at(0).trust_bundle, "/cfg/roots.pem");
  EXPECT_EQ(c.certificates.at(0).files->dir, "/cfg/live/web");
}

TEST(ConfigDefaults, ReloaderDefaultsByType) {
  Config c = parse_ok(
      "brokers: { dev: { type: local } }\n"
      "certificates:\n"
      "  - name: web\n"
      "    broker: dev\n"
      "    common_name: web\n"
      "    files: { dir: /srv/web }\n"
      "    reload:\n"
      "      - { type: exec, command: [/bin/true] }\n"
      "      - { type: exec, command: [/bin/true], timeout: 2s }\n"
      "      - { type: nginx, verify: { connect: \"127.0.0.1:8443\" } }\n"
      "      - { type: nginx, command: [/usr/sbin/nginx, -s, reload], timeout: 5s }\n"
      "      - { type: haproxy, admin_socket: /run/h.sock, cert: /etc/h/site.pem,\n"
      "          verify: { connect: \"[::1]:443\", server_name: web, deadline: 3s } }\n"
      "      - { type: signal, pid: 42, signal: usr1 }\n"
      "      - { type: signal, pid_file: /run/app.pid, signal: 10 }\n"
      "      - { type: signal, pid_file: /run/app.pid }\n"
      "      - { type: systemd, unit: envoy.service }\n"
      "      - { type: envoy, sds_dir: /etc/envoy/sds/web }\n");
  const auto& r = c.certificates.at(0).reload;
  ASSERT_EQ(r.size(), 10u);
  EXPECT_EQ(r[0].timeout, 10s);
  EXPECT_EQ(r[0].settings.as<reloaders::ExecReloaderConfig>().timeout, 10s);
  EXPECT_EQ(r[1].timeout, 2s);
  EXPECT_EQ(r[1].settings.as<reloaders::ExecReloaderConfig>().timeout, 2s);

  EXPECT_EQ(r[2].timeout, 30s);
  const auto& n = r[2].settings.as<reloaders::NginxReloaderConfig>();
  EXPECT_EQ(n.command, (std::vector<std::string>{"nginx", "-s", "reload"}));
  EXPECT_TRUE(n.test_command.empty());  // derived from command by the nginx reloader
  ASSERT_TRUE(r[2].verify.has_value());
  EXPECT_EQ(r[2].verify->connect, "127.0.0.1:8443");
  EXPECT_EQ(r[2].verify->settle, 150ms);
  EXPECT_EQ(r[2].verify->deadline, 10s);
  EXPECT_EQ(r[2].verify->protocol, VerifyProtocol::tls);
  EXPECT_TRUE(r[3].settings.as<reloaders::NginxReloaderConfig>().test_command.empty());
  EXPECT_EQ(r[3].timeout, 5s);
  EXPECT_FALSE(r[3].verify.has_value());

  ASSERT_TRUE(r[4].verify.has_value());
  EXPECT_EQ(r[4].verify->settle, 0ms);
  EXPECT_EQ(r[4].verify->deadline, 3s);
  EXPECT_EQ(r[4].verify->server_name, "web");
  EXPECT_EQ(r[4].settings.as<reloaders::HaproxyReloaderConfig>().cert, "/etc/h/site.pem");

  EXPECT_EQ(r[5].settings.as<reloaders::SignalReloaderConfig>().pid, 42);
  EXPECT_EQ(r[5].settings.as<reloaders::SignalReloaderConfig>().signal, SIGUSR1);
  EXPECT_EQ(r[6].settings.as<reloaders::SignalReloaderConfig>().signal, 10);
  EXPECT_EQ(r[7].settings.as<reloaders::SignalReloaderConfig>().signal, SIGHUP);
  EXPECT_EQ(r[7].settings.as<reloaders::SignalReloaderConfig>().pid_file, "/run/app.pid");
  EXPECT_FALSE(r[7].settings.as<reloaders::SignalReloaderConfig>().pid.has_value());
  EXPECT_EQ(r[8].settings.as<reloaders::SystemdReloaderConfig>().action, "reload-or-restart");
  EXPECT_EQ(r[9].settings.as<reloaders::EnvoyReloaderConfig>().sds_dir, "/etc/envoy/sds/web");

  const auto& files = c.certificates.at(0).files;
  ASSERT_TRUE(files.has_value());
  EXPECT_EQ(files->keep, 3u);
  EXPECT_FALSE(files->remove_on_expiry);
  EXPECT_TRUE(files->owner.empty());
}

// ---- the full example and round trips -------------------------------------------------------

TEST(ConfigExample, FullReferenceParses) {
  auto r = load_config(test::source_dir() / "examples/full-reference.yaml");
  ASSERT_TRUE(r.has_value()) << r.error().message;
  const Config& c = *r;
  EXPECT_EQ(c.state_dir, "/var/lib/certagent");
  EXPECT_EQ(c.socket.path, "/run/certagent/agent.sock");
  EXPECT_EQ(c.socket.mode, 0660u);
  EXPECT_EQ(c.socket.group, "certagent");
  EXPECT_EQ(c.metrics.listen, "127.0.0.1:9464");
  ASSERT_EQ(c.brokers.size(), 4u);
  const auto& acme = c.brokers.at("corp").settings.as<renewers::AcmeRenewerConfig>();
  EXPECT_EQ(acme.directory, "https://acme.internal/directory");
  EXPECT_EQ(acme.eab_kid, "kid-1");
  EXPECT_EQ(acme.eab_hmac_key_file, "/etc/certagent/eab.key");
  EXPECT_EQ(acme.challenge.type, "http-01");
  EXPECT_EQ(acme.preferred_chain, "ISRG Root X1");
  const auto& cfssl = c.brokers.at("pki").settings.as<renewers::CfsslRenewerConfig>();
  EXPECT_EQ(cfssl.label, "primary");
  const auto& lemur = c.brokers.at("netflix").settings.as<renewers::LemurRenewerConfig>();
  EXPECT_EQ(lemur.owner, "platform-security@example.com");
  EXPECT_EQ(c.defaults.trust_bundle, "/etc/certagent/issuer-roots.pem");

  ASSERT_EQ(c.certificates.size(), 1u);
  const auto& web = c.certificates[0];
  EXPECT_EQ(web.name, "web");
  EXPECT_EQ(web.dns_names, (std::vector<std::string>{"web.internal", "localhost"}));
  EXPECT_EQ(web.ip_addresses, (std::vector<std::string>{"127.0.0.1"}));
  EXPECT_EQ(web.uris, (std::vector<std::string>{"spiffe://example.org/web"}));
  EXPECT_EQ(web.files->owner, "www-data");
  EXPECT_EQ(web.socket.allow_uids, (std::vector<std::uint32_t>{33}));
  ASSERT_EQ(web.reload.size(), 6u);
  EXPECT_EQ(web.reload[0].type, "haproxy");
  EXPECT_EQ(web.reload[1].verify->settle, 150ms);
  EXPECT_EQ(web.reload[5].timeout, 10s);
  ASSERT_EQ(web.on_expiry.size(), 1u);
  EXPECT_EQ(web.on_expiry[0].settings.as<reloaders::ExecReloaderConfig>().command,
            (std::vector<std::string>{"/usr/local/bin/drain", "web"}));
}

void expect_round_trip(const Config& c) {
  std::string text = dump_config(c);
  auto again = parse_config(text, c.source);
  ASSERT_TRUE(again.has_value()) << again.error().message << "\n--- dump ---\n" << text;
  EXPECT_TRUE(*again == c) << "--- dump ---\n" << text << "--- dump of the re-read ---\n"
                           << dump_config(*again);
  EXPECT_EQ(dump_config(*again), text);
}

TEST(ConfigDump, FullReferenceRoundTrips) {
  auto r = load_config(test::source_dir() / "examples/full-reference.yaml");
  ASSERT_TRUE(r.has_value()) << r.error().message;
  expect_round_trip(*r);
  std::string text = dump_config(*r);
  // Readable, with every default written out.
  EXPECT_NE(text.find("mode: \"0660\""), std::string::npos) << text;
  EXPECT_NE(text.find("max_in_flight: 4"), std::string::npos) << text;
  EXPECT_NE(text.find("lifetime: 96h"), std::string::npos) << text;
  EXPECT_NE(text.find("test_command: []"), std::string::npos) << text;
  EXPECT_NE(text.find("signal: SIGHUP"), std::string::npos) << text;
}

TEST(ConfigDump, UnusualValuesRoundTrip) {
  Config c = parse_ok(
      "state_dir: /var/lib/certagent\n"
      "log: { level: debug, format: json }\n"
      "identity: { backend: file, tcti: \"swtpm:host=127.0.0.1,port=2321\" }\n"
      "socket:\n"
      "  path: /run/certagent/agent.sock\n"
      "  mode: \"0600\"\n"
      "  group: \"null\"\n"
      "  admin_uids: [0, 1000]\n"
      "  max_connections: 8\n"
      "  max_header_bytes: 2048\n"
      "  request_timeout: 1m30s\n"
      "metrics: { listen: \"[::1]:0\" }\n"
      "brokers:\n"
      "  corp:\n"
      "    type: acme\n"
      "    directory: https://127.0.0.1:14000/dir\n"
      "    max_in_flight: 1\n"
      "    timeout: 2m\n"
      "    challenge: { type: dns-01, hook: [/usr/local/bin/dns-hook, \"--zone\", \"a b: c\"] }\n"
      "    contact: mailto:pki@example.com\n"
      "  lem:\n"
      "    type: lemur\n"
      "    url: https://lemur.internal\n"
      "    token_file: /etc/certagent/lemur.jwt\n"
      "    authority: InternalCA\n"
      "    owner: sec@example.com\n"
      "    destinations: [aws-prod]\n"
      "    roles: [\"~\", \"true\", \"#x\"]\n"
      "defaults: { renew_at: 0.3333333333333333, jitter: 0.125, trust_bundle: /etc/roots.pem }\n"
      "certificates:\n"
      "  - name: svc_1\n"
      "    broker: corp\n"
      "    dns_names: [\"*.svc.internal\"]\n"
      "    ip_addresses: [\"::1\", 10.0.0.1]\n"
      "    lifetime: 1h30m\n"
      "    files: { dir: /srv/x, owner: \"1000\", keep: 7, remove_on_expiry: true, formats: [pkcs12],\n"
      "             pkcs12: { password_file: /etc/certagent/x.pass, sealed: true } }\n"
      "    socket: { allow_uids: [33], allow_gids: [4, 5] }\n"
      "    reload:\n"
      "      - { type: signal, pid: 4242, signal: 34 }\n"
      "      - { type: exec, command: [postfix, reload], verify: { connect: \"127.0.0.1:25\", protocol: smtp } }\n"
      "      - { type: nginx, command: [/usr/sbin/nginx, -c, /etc/n.conf, -s, reload],\n"
      "          test_command: [/usr/sbin/nginx, -t, -c, /etc/n.conf] }\n"
      "    on_expiry:\n"
      "      - { type: exec, command: [\"/bin/sh\", \"-c\", \"echo 'gone: now'\"], timeout: 500ms }\n"
      "  - name: lem-cert\n"
      "    broker: lem\n"
      "    common_name: \"yes\"\n");
  EXPECT_EQ(c.socket.group, "null");
  EXPECT_EQ(c.socket.mode, 0600u);
  ASSERT_TRUE(c.certificates[0].files && c.certificates[0].files->pkcs12);
  EXPECT_EQ(c.certificates[0].files->formats, (std::vector<std::string>{"pem", "pkcs12"}));
  EXPECT_EQ(c.certificates[0].files->pkcs12->password_file, "/etc/certagent/x.pass");
  EXPECT_TRUE(c.certificates[0].files->pkcs12->sealed);
  ASSERT_TRUE(c.certificates[0].reload[1].verify);
  EXPECT_EQ(c.certificates[0].reload[1].verify->protocol, VerifyProtocol::smtp);
  expect_round_trip(c);
}

// ---- the catalog: core/ knows no plug-in ----------------------------------------------------

// A plug-in as core/ sees one: its own struct, read and written through the catalog.
struct ToySettings {
  std::string colour{"red"};

  void dump(ConfigWriter& w) const { w.str("colour", colour); }
  bool operator==(const ToySettings&) const = default;
};

Catalog toy_catalog() {
  Catalog c;
  c.brokers.push_back(BrokerType{
      .name = "toy",
      .keys = {"colour"},
      .parse = [](MapView& m) -> SettingsSlot {
        ToySettings t;
        m.req_string("colour", "a colour", t.colour);
        return t;
      },
      .needs_trust_bundle = false});
  c.reloaders.push_back(ReloaderType{
      .name = "poke",
      .keys = {"colour"},
      .parse = [](MapView& m, const ReloaderConfig&) -> SettingsSlot {
        ToySettings t{"none"};
        m.opt_string("colour", t.colour);
        return t;
      },
      .default_timeout = 7s});
  return c;
}

TEST(Catalog, ReadsComparesAndDumpsAPluginsOwnKeys) {
  const std::string yaml =
      "brokers:\n"
      "  b: { type: toy, colour: blue }\n"
      "certificates:\n"
      "  - { name: web, broker: b, common_name: web, reload: [{ type: poke }] }\n";
  auto c = config::parse_config(yaml, kSource, toy_catalog());
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->brokers.at("b").settings.as<ToySettings>().colour, "blue");
  EXPECT_EQ(c->certificates[0].reload[0].timeout, 7s);
  auto other = config::parse_config(std::string(yaml).replace(yaml.find("blue"), 4, "green"), kSource, toy_catalog());
  ASSERT_TRUE(other) << other.error().message;
  EXPECT_FALSE(other->brokers == c->brokers);  // a reload sees the change
  std::string text = dump_config(*c);
  EXPECT_NE(text.find("    timeout: 30s\n    colour: blue\n"), std::string::npos) << text;
  auto again = config::parse_config(text, kSource, toy_catalog());
  ASSERT_TRUE(again) << again.error().message << "\n" << text;
  EXPECT_TRUE(*again == *c);
}

TEST(Catalog, UnknownTypesAndKeysAreLocatedErrorsListingTheCatalog) {
  auto r = config::parse_config("brokers:\n  b: { type: acme, directory: https://x }\n", kSource, toy_catalog());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message,
            "/cfg/t.yaml:2:14: brokers.b.type: unknown broker type 'acme', expected broker type: one of toy");
  r = config::parse_config("brokers:\n  b: { type: toy, colour: blue, size: 3 }\n", kSource, toy_catalog());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message, "/cfg/t.yaml:2:33: unknown key 'size' in brokers.b; expected one of: type, "
                               "max_in_flight, timeout, colour");
  r = config::parse_config("brokers:\n  b: { type: toy }\n", kSource, toy_catalog());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message, "/cfg/t.yaml:2:3: brokers.b: missing key 'colour', expected a colour");
}

TEST(ConfigDump, EmptyConfigRoundTrips) {
  expect_round_trip(parse_ok("state_dir: /var/lib/certagent\n"));
}

}  // namespace
}  // namespace certagent::config
