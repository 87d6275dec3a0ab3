// What the daemon tells operators about its brokers (issue 15): the real binary, with brokers
// of each kind in each state at once — healthy, down, up but refusing us, and our own
// configuration broken — against real servers (the Lemur stand-in, multirootca, pebble).
// `certagent status` (table and JSON) and the metrics must tell the four apart, each refusal
// with its reason and what to change; configuration-class errors wait the whole backoff cap;
// a healthy broker is probed once, not on every renewal.

#include "core/time_format.h"
#include "tests/integration/lemur/lemur_test_server.h"
#include "tests/support/daemon_fixture.h"
#include "tests/support/multirootca.h"
#include "tests/support/pebble.h"
#include "tests/support/test_pki.h"

#include <boost/json.hpp>

#include <gtest/gtest.h>

#include <algorithm>

namespace certagent::test {
namespace {

namespace json = boost::json;

// The brokers list the socket serves (GET /v1/certificates), by name.
std::map<std::string, json::object> brokers(const DaemonFixture& d) {
  std::map<std::string, json::object> out;
  int status = 0;
  const std::string body = d.socket_get("/v1/certificates", &status);
  boost::system::error_code ec;
  auto v = json::parse(body, ec);
  if (ec || status != 200 || !v.is_object()) return out;
  if (const auto* list = v.as_object().if_contains("brokers"); list && list->is_array())
    for (const auto& b : list->as_array())
      if (b.is_object()) out[std::string(b.as_object().at("name").as_string())] = b.as_object();
  return out;
}

std::string text(const json::object& o, const char* key) {
  const auto* v = o.if_contains(key);
  return v && v->is_string() ? std::string(v->as_string()) : std::string();
}

// What a broker's entry must say.
struct Expect {
  std::string broker;
  std::optional<bool> up;
  std::optional<bool> accepts;
  std::string cause;   // when !accepts
  std::string reason;  // when !accepts
  std::string detail;  // a part of what to change, when !accepts or down
};

bool matches(const json::object& b, const Expect& e) {
  auto tri = [](const json::value* v) -> std::optional<bool> {
    if (!v || !v->is_bool()) return std::nullopt;
    return v->get_bool();
  };
  if (tri(b.if_contains("up")) != e.up || tri(b.if_contains("accepts")) != e.accepts) return false;
  if (e.accepts == false && (text(b, "cause") != e.cause || text(b, "reason") != e.reason)) return false;
  return true;
}

std::string column(const Expect& e) {
  if (!e.accepts) return "-";
  if (*e.accepts) return "yes";
  return (e.cause == "local_config" ? "config:" : "no:") + e.reason;
}

// Waits for every broker to say what `expects` says, then checks the table, the metrics and the
// backoff of configuration-class failures.
void check_brokers(DaemonFixture& d, const std::vector<Expect>& expects) {
  std::map<std::string, json::object> seen;
  const bool all = wait_until(
      [&] {
        seen = brokers(d);
        for (const auto& e : expects)
          if (!seen.count(e.broker) || !matches(seen.at(e.broker), e)) return false;
        return true;
      },
      60s);
  std::string dump;
  for (const auto& [name, b] : seen) dump += json::serialize(b) + "\n";
  ASSERT_TRUE(all) << dump << d.log();

  for (const auto& e : expects) {
    SCOPED_TRACE(e.broker);
    const auto& b = seen.at(e.broker);
    if (!e.detail.empty()) {
      const std::string said = e.accepts == false ? text(b, "detail") : text(b, "down_detail");
      EXPECT_NE(said.find(e.detail), std::string::npos) << said;
    }
    // The probe schedule: an hour ahead while all is well, two minutes while failing (±10 %).
    const auto last = parse_rfc3339(text(b, "last_probe")), next = parse_rfc3339(text(b, "next_probe"));
    ASSERT_TRUE(last && next) << json::serialize(b);
    const auto ahead = std::chrono::duration_cast<std::chrono::seconds>(*next - *last);
    if (e.up == true && e.accepts == true) {
      EXPECT_GE(ahead, 53min) << json::serialize(b);
      EXPECT_LE(ahead, 67min) << json::serialize(b);
    } else {
      EXPECT_GE(ahead, 100s) << json::serialize(b);
      EXPECT_LE(ahead, 135s) << json::serialize(b);
    }
    const std::string label = "broker=\"" + e.broker + "\"";
    EXPECT_EQ(d.metric("certagent_broker_up", label), e.up ? std::optional<double>(*e.up ? 1 : 0) : std::nullopt);
    if (e.accepts == true) {
      EXPECT_EQ(d.metric("certagent_broker_accepts", label + ",cause=\"\",reason=\"\"").value_or(-1), 1);
    }
    if (e.accepts == false) {
      EXPECT_EQ(d.metric("certagent_broker_accepts",
                         label + ",cause=\"" + e.cause + "\",reason=\"" + e.reason + "\"")
                    .value_or(-1),
                0);
    }
  }

  // The table: one row per certificate (named after its broker here) with both columns, and a
  // line per broker in trouble saying what to change.
  auto st = d.cli({"status"});
  ASSERT_EQ(st.exit_code, 0) << st.err;
  EXPECT_NE(st.out.find("BROKER_UP"), std::string::npos) << st.out;
  EXPECT_NE(st.out.find("BROKER_ACCEPTS"), std::string::npos) << st.out;
  std::istringstream lines(st.out);
  for (std::string line; std::getline(lines, line);) {
    for (const auto& e : expects) {
      if (line.rfind("c-" + e.broker + " ", 0) != 0) continue;
      std::istringstream words(line);
      std::vector<std::string> w{std::istream_iterator<std::string>(words), {}};
      ASSERT_GE(w.size(), 2u) << line;
      EXPECT_EQ(w[w.size() - 2], e.up ? (*e.up ? "up" : "down") : "-") << line;
      EXPECT_EQ(w.back(), column(e)) << line;
    }
  }
  for (const auto& e : expects) {
    if (e.accepts != false && e.up != false) continue;
    EXPECT_NE(st.out.find("broker " + e.broker + " ("), std::string::npos) << st.out;
    if (!e.detail.empty()) {
      EXPECT_NE(st.out.find(e.detail), std::string::npos) << st.out;
    }
  }

  // Configuration-class failures wait the whole cap (30 s with nothing valid held), not the
  // plain backoff's 0-1 s after a first failure: the audit log has each wait.
  const auto events = d.audit_events();
  for (const auto& e : expects) {
    if (e.accepts != false) continue;
    bool found = false;
    for (const auto& ev : events) {
      if (text(ev, "event") != "renewal_failed" || text(ev, "name") != "c-" + e.broker) continue;
      found = true;
      EXPECT_GE(ev.at("retry_in_ms").to_number<double>(), 30000) << e.broker << ": " << json::serialize(ev);
    }
    EXPECT_TRUE(found) << e.broker;
  }
}

std::string certificate(const std::string& broker, const std::string& dns, const std::string& trust) {
  return "  - name: c-" + broker + "\n"
         "    broker: " + broker + "\n"
         "    common_name: " + dns + "\n"
         "    dns_names: [" + dns + "]\n"
         "    trust_bundle: " + trust + "\n";
}

// A CA nobody uses: the ca_bundle that does not verify the broker.
fs::path wrong_ca(const DaemonFixture& d) {
  const auto path = d.dir() / "wrong-ca.pem";
  if (!fs::exists(path))
    write_file(path, make_cert(CertSpec{.common_name = "Unrelated CA", .is_ca = true}).cert_pem());
  return path;
}

std::string closed_port_url(const std::string& scheme, const std::string& path = "") {
  return scheme + "://127.0.0.1:" + std::to_string(free_tcp_port()) + path;
}

TEST(BrokerHealth, LemurDownRefusingOrMisconfiguredAreToldApart) {
  DaemonFixture d;
  LemurTestServer good, other;
  for (auto* s : {&good, &other}) s->add_authority("InternalCA", "pki@example.com");
  const auto user = good.add_user("host-agent", {"pki@example.com"});
  const auto other_user = other.add_user("host-agent", {"pki@example.com"});
  write_file(d.dir() / "good-tls.pem", good.tls_ca_pem());
  write_file(d.dir() / "other-tls.pem", other.tls_ca_pem());
  write_file(d.dir() / "good-root.pem", good.issuer_root_pem());
  write_file(d.dir() / "other-root.pem", other.issuer_root_pem());

  const std::string revoked = other.create_api_key(other_user);
  other.revoke_api_key(revoked);
  const std::string deleted = other.create_api_key(other_user);
  other.delete_api_key(deleted);
  struct B {
    std::string name, url, ca, token, authority{"InternalCA"};
  };
  const std::vector<B> list = {
      {"ok", good.url(), "good-tls.pem", good.create_api_key(user)},
      {"revoked", other.url(), "other-tls.pem", revoked},
      {"deleted", other.url(), "other-tls.pem", deleted},
      {"noauthority", other.url(), "other-tls.pem", other.create_api_key(other_user), "NoSuchCA"},
      {"tls", other.url(), wrong_ca(d).filename().string(), other.create_api_key(other_user)},
      {"down", closed_port_url("https"), "good-tls.pem", good.create_api_key(user)},
  };
  DaemonFixture::Header header;
  std::string certs;
  for (const auto& b : list) {
    write_file(d.dir() / (b.name + ".jwt"), b.token + "\n", fs::perms(0600));
    header.extra_brokers += "  " + b.name + ":\n    type: lemur\n    url: " + b.url + "\n    ca_bundle: " +
                            (d.dir() / b.ca).string() + "\n    token_file: " + (d.dir() / (b.name + ".jwt")).string() +
                            "\n    authority: " + b.authority + "\n    owner: platform@example.com\n    timeout: 5s\n";
    certs += certificate(b.name, b.name + ".internal",
                         (d.dir() / (b.url == good.url() ? "good-root.pem" : "other-root.pem")).string());
  }
  d.write_config("defaults: { lifetime: 1h, max_lifetime: 2h }\ncertificates:\n" + certs, header);
  auto enrolled = d.cli({"enroll"});
  ASSERT_EQ(enrolled.exit_code, 0) << enrolled.out << enrolled.err;
  d.start();

  check_brokers(d, {
                       {"ok", true, true},
                       {"revoked", true, false, "refused", "credentials", "revoked"},
                       {"deleted", true, false, "refused", "credentials", "no longer knows the API key"},
                       {"noauthority", true, false, "refused", "authority", "set the broker's authority"},
                       {"tls", true, false, "local_config", "tls_trust", "ca_bundle " + wrong_ca(d).string()},
                       {"down", false, std::nullopt, "", "", "connect"},
                   });
  // The healthy broker cost one probe (at start), not one per request or per second.
  const auto reqs = good.requests();
  EXPECT_EQ(std::count(reqs.begin(), reqs.end(), "GET /api/1/healthcheck"), 1) << reqs.size();
  EXPECT_EQ(d.stop(), 0);
}

TEST(BrokerHealth, CfsslDownRefusingOrMisconfiguredAreToldApart) {
  DaemonFixture d;
  Multirootca ca(d.dir() / "cfssl");
  write_file(d.dir() / "wrong.key", "00112233445566778899aabbccddeeff\n", fs::perms(0600));
  struct B {
    std::string name, url, ca_bundle, key_file, profile{"short"};
  };
  std::vector<B> list = {
      {"ok", ca.url(), ca.tls_ca_file().string(), "ok.key"},
      {"badkey", ca.url(), ca.tls_ca_file().string(), "wrong.key"},
      {"badprofile", ca.url(), ca.tls_ca_file().string(), "badprofile.key", "no-such-profile"},
      {"tls", ca.url(), wrong_ca(d).string(), "tls.key"},
      {"down", closed_port_url("https"), ca.tls_ca_file().string(), "down.key"},
  };
  DaemonFixture::Header header;
  std::string certs;
  for (const auto& b : list) {
    if (b.key_file != "wrong.key")
      write_file(d.dir() / b.key_file, read_file(ca.auth_key_file()), fs::perms(0600));
    header.extra_brokers += "  " + b.name + ":\n    type: cfssl\n    url: " + b.url + "\n    ca_bundle: " +
                            b.ca_bundle + "\n    auth_key_file: " + (d.dir() / b.key_file).string() +
                            "\n    profile: " + b.profile + "\n    label: primary\n    timeout: 5s\n";
    certs += certificate(b.name, b.name + ".internal", ca.ca_file().string());
  }
  d.write_config("defaults: { lifetime: 5m, max_lifetime: 1h }\ncertificates:\n" + certs, header);
  auto enrolled = d.cli({"enroll"});
  ASSERT_EQ(enrolled.exit_code, 0) << enrolled.out << enrolled.err;
  d.start();
  check_brokers(d, {
                       {"ok", true, true},
                       {"badkey", true, false, "refused", "credentials", "auth_key_file"},
                       {"badprofile", true, false, "refused", "profile", "no-such-profile"},
                       {"tls", true, false, "local_config", "tls_trust", "ca_bundle " + wrong_ca(d).string()},
                       {"down", false, std::nullopt, "", "", "connect"},
                   });
  EXPECT_EQ(d.stop(), 0);
}

TEST(BrokerHealth, AcmeDownRefusingOrMisconfiguredAreToldApart) {
  DaemonFixture d;
  ChallTestSrv dns(d.dir().path());
  fs::create_directories(d.dir() / "pebble");
  fs::create_directories(d.dir() / "pebble-eab");
  Pebble pebble(d.dir() / "pebble", PebbleOptions{.dns_server = dns.dns_address()});
  // A CA that requires External Account Binding, asked without it: it refuses our account.
  Pebble eab(d.dir() / "pebble-eab",
             PebbleOptions{.eab_keys = {{"kid-1", "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"}},
                           .dns_server = dns.dns_address()});
  write_file(d.dir() / "pebble-root.pem", pebble.root_pem());
  struct B {
    std::string name, directory, ca_bundle;
  };
  const std::vector<B> list = {
      {"ok", pebble.directory_url(), pebble.tls_ca_file().string()},
      {"noeab", eab.directory_url(), eab.tls_ca_file().string()},
      {"tls", pebble.directory_url(), wrong_ca(d).string()},
      {"down", closed_port_url("https", "/dir"), pebble.tls_ca_file().string()},
  };
  DaemonFixture::Header header;
  std::string certs;
  for (const auto& b : list) {
    const bool validates = b.name == "ok";
    header.extra_brokers += "  " + b.name + ":\n    type: acme\n    directory: " + b.directory + "\n    ca_bundle: " +
                            b.ca_bundle + "\n    timeout: 5s\n" +
                            (validates ? "    challenge: { type: http-01, listen: \"127.0.0.1:" +
                                             std::to_string(pebble.http_port()) + "\" }\n"
                                       : "    challenge: { type: http-01, listen: \"127.0.0.1:" +
                                             std::to_string(free_tcp_port()) + "\" }\n");
    certs += certificate(b.name, b.name + ".certagent.test", (d.dir() / "pebble-root.pem").string());
  }
  d.write_config("defaults: { lifetime: 5m, max_lifetime: 1h }\ncertificates:\n" + certs, header);
  auto enrolled = d.cli({"enroll"});
  ASSERT_EQ(enrolled.exit_code, 0) << enrolled.out << enrolled.err;
  d.start();
  check_brokers(d, {
                       {"ok", true, true},
                       {"noeab", true, false, "refused", "account", "eab.kid"},
                       {"tls", true, false, "local_config", "tls_trust", "ca_bundle " + wrong_ca(d).string()},
                       {"down", false, std::nullopt, "", "", "connect"},
                   });
  EXPECT_EQ(d.stop(), 0);
}

}  // namespace
}  // namespace certagent::test
