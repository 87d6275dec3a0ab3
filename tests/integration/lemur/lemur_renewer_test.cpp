// The lemur renewer against the Lemur test server (HTTPS, real JWT API keys, CSR signing by a
// test CA). The API key goes the production way: written to token_file, sealed by
// `certagent enroll`'s code (tpm::enroll), which deletes the file, and unsealed by the renewer
// from the file identity or a TPM identity on a private swtpm. Every chain is checked with the
// core's validate_issued against the test CA's root.

#include "renewers/lemur_renewer.h"

#include "core/config/config.h"
#include "core/crypto/csr.h"
#include "core/crypto/keys.h"
#include "core/crypto/x509.h"
#include "core/logging.h"
#include "core/crypto/validation.h"
#include "tests/support/run_sync.h"
#include "tests/support/software_identity.h"
#include "tests/integration/lemur/lemur_test_server.h"
#include "tests/support/test_support.h"
#include "tests/support/swtpm.h"
#include "agent/builtin_plugins.h"
#include "tests/support/test_pki.h"
#include "agent/enroll.h"
#include "tpm/identity.h"

#include <boost/asio/io_context.hpp>
#include <boost/json.hpp>

#include <spdlog/sinks/ostream_sink.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>
#include <sstream>

namespace certagent::test {
namespace {

using namespace std::chrono_literals;
namespace json = boost::json;
using renewers::IssueRequest;
using renewers::IssueResult;
using renewers::LemurRenewer;
using renewers::LemurTuning;

constexpr LemurTuning kFast{.first_poll = 20ms, .max_poll = 100ms, .pending_retry_after = 30s};

struct BrokerSetup {
  std::string backend{"file"};
  std::string tcti;
  std::string url;            // empty: the server's
  std::string authority{"InternalCA"};
  std::string timeout{"5s"};
  std::string extra;          // more keys of the broker, YAML lines indented by 4
};

class LemurRenewerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server.add_authority("InternalCA", "pki@example.com");
    user = server.add_user("host-agent", {"pki@example.com"});
    token = server.create_api_key(user);
    write_file(dir / "broker-ca.pem", server.tls_ca_pem());
    write_file(dir / "issuer-root.pem", server.issuer_root_pem());
    // Every renewer log line of the test, to prove the token never shows up in one.
    auto logger = log::get("renewer.lemur");
    logger->set_level(spdlog::level::trace);
    sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(log_text);
    logger->sinks().push_back(sink);
  }

  void TearDown() override {
    auto logger = log::get("renewer.lemur");
    auto& sinks = logger->sinks();
    sinks.erase(std::remove(sinks.begin(), sinks.end(), sink), sinks.end());
    EXPECT_EQ(log_text.str().find(token), std::string::npos) << "the API key was logged";
    const std::string jwt_body = token.substr(token.find('.') + 1, 20);
    EXPECT_EQ(log_text.str().find(jwt_body), std::string::npos) << "part of the API key was logged";
  }

  std::string yaml(const BrokerSetup& s) const {
    std::string y = "state_dir: " + (dir / "state").string() + "\n" +
                    "identity:\n  backend: " + s.backend + "\n" + (s.tcti.empty() ? "" : "  tcti: \"" + s.tcti + "\"\n") +
                    "brokers:\n"
                    "  netflix:\n"
                    "    type: lemur\n"
                    "    url: " + (s.url.empty() ? server.url() : s.url) + "\n" +
                    "    ca_bundle: " + (dir / "broker-ca.pem").string() + "\n" +
                    "    token_file: " + (dir / "lemur.jwt").string() + "\n" +
                    "    authority: " + s.authority + "\n" +
                    "    owner: platform-security@example.com\n"
                    "    timeout: " + s.timeout + "\n" + s.extra +
                    "defaults:\n"
                    "  lifetime: 1h\n"
                    "  max_lifetime: 2h\n"
                    "  trust_bundle: " + (dir / "issuer-root.pem").string() + "\n" +
                    "certificates:\n"
                    "  - name: web\n"
                    "    broker: netflix\n"
                    "    common_name: web.internal\n"
                    "    dns_names: [web.internal, localhost]\n"
                    "    ip_addresses: [127.0.0.1]\n";
    return y;
  }

  // The production path: config file -> `certagent enroll` (seals token_file into the
  // identity, deletes the file) -> open_identity -> the renewer.
  void start(const BrokerSetup& s = {}, bool enroll = true) {
    write_file(dir / "lemur.jwt", token + "\n", fs::perms(0600));
    write_file(dir / "certagent.yaml", yaml(s));
    auto c = config::load_config(dir / "certagent.yaml", agent::builtin_catalog());
    ASSERT_TRUE(c) << c.error().message;
    config = std::move(*c);
    if (enroll) {
      auto report = tpm::enroll(*config, {});
      ASSERT_TRUE(report) << report.error().message;
      EXPECT_EQ(report->sealed, std::vector<std::string>{"netflix.lemur_token"});
      EXPECT_FALSE(fs::exists(dir / "lemur.jwt")) << "enroll leaves no plaintext token behind";
      auto id = tpm::open_identity(*config);
      ASSERT_TRUE(id) << id.error().message;
      identity = std::move(*id);
    } else {
      auto id = tpm::enroll_identity(*config);  // the identity only, no secret sealed
      ASSERT_TRUE(id) << id.error().message;
      identity = std::move(*id);
    }
    make_renewer();
  }

  void make_renewer(LemurTuning tuning = kFast) {
    renewers::RenewerContext context{ioc.get_executor(), identity.get(), config->state_dir, &clock};
    auto r = LemurRenewer::create(*config->broker("netflix"), context, tuning);
    ASSERT_TRUE(r) << r.error().message;
    renewer = std::move(*r);
  }

  void reseal(const std::string& value) {
    auto sealed = identity->seal(renewers::lemur_token_name("netflix"),
                                 std::span(reinterpret_cast<const std::uint8_t*>(value.data()), value.size()));
    ASSERT_TRUE(sealed) << sealed.error().message;
  }

  crypto::SubjectNames names() const {
    const auto& c = config->certificates.front();
    return crypto::SubjectNames{c.common_name, c.dns_names, c.ip_addresses, c.uris};
  }

  struct Attempt {
    crypto::EvpPkeyPtr key;
    Result<IssueResult> result{make_error("not run")};
  };

  Attempt issue(std::map<std::string, std::string> previous = {},
                crypto::KeyType key_type = crypto::KeyType::ecdsa_p256) {
    Attempt a;
    auto key = crypto::generate_key(key_type);
    EXPECT_TRUE(key);
    a.key = std::move(*key);
    IssueRequest request;
    request.cert_name = "web";
    request.csr_pem = *crypto::build_csr(a.key.get(), names());
    const auto& c = config->certificates.front();
    request.common_name = c.common_name;
    request.dns_names = c.dns_names;
    request.ip_addresses = c.ip_addresses;
    request.lifetime = c.lifetime;
    request.previous_state = std::move(previous);
    a.result = run_sync(ioc, renewer->issue(std::move(request)));
    return a;
  }

  Result<Material> validate(const Attempt& a) {
    auto trust = crypto::load_trust_store(dir / "issuer-root.pem");
    EXPECT_TRUE(trust);
    ValidationInput input;
    input.chain_pem = a.result->chain_pem;
    input.key = a.key.get();
    input.requested = names();
    input.trust = trust->get();
    input.max_lifetime = config->certificates.front().max_lifetime;
    input.now = clock.now();
    input.broker = "netflix";
    return validate_issued(input);
  }

  // A successful issuance, validated; returns its Lemur id.
  std::int64_t issue_ok(std::map<std::string, std::string> previous = {}) {
    auto a = issue(std::move(previous));
    EXPECT_TRUE(a.result) << a.result.error().message;
    if (!a.result) return 0;
    auto m = validate(a);
    EXPECT_TRUE(m) << m.error().message;
    EXPECT_EQ(a.result->state.at("lemur_url"), server.url());
    return std::stoll(a.result->state.at("lemur_id"));
  }

  Error issue_error(std::map<std::string, std::string> previous = {}) {
    auto a = issue(std::move(previous));
    EXPECT_FALSE(a.result);
    return a.result ? make_error("issued") : a.result.error();
  }

  TempDir dir{"certagent-lemur"};
  LemurTestServer server;
  std::int64_t user{0};
  std::string token;
  SystemClock clock;
  boost::asio::io_context ioc;
  std::optional<config::Config> config;
  std::unique_ptr<tpm::Identity> identity;
  std::unique_ptr<LemurRenewer> renewer;
  std::ostringstream log_text;
  std::shared_ptr<spdlog::sinks::ostream_sink_mt> sink;
};

// ---- issuance and lineage --------------------------------------------------------------------

TEST_F(LemurRenewerTest, IssuesAValidChainWithTheExactRequest) {
  start();
  const auto before = std::chrono::system_clock::now();
  auto a = issue();
  ASSERT_TRUE(a.result) << a.result.error().message;
  auto m = validate(a);
  ASSERT_TRUE(m) << m.error().message;

  auto records = server.issued();
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(a.result->state.at("lemur_id"), std::to_string(records[0].id));
  // The same number: the server's serialHex drops a leading zero nibble (1 run in 16), the DER
  // form keeps it.
  auto number = [](std::string s) {
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s.substr(std::min(s.find_first_not_of('0'), s.size()));
  };
  EXPECT_EQ(number(m->serial_hex), number(records[0].serial_hex));
  EXPECT_FALSE(records[0].notify);
  EXPECT_TRUE(records[0].replaces.empty());
  EXPECT_EQ(server.last_authorization(), "Bearer " + token);

  // The request as Lemur's schema reads it, nothing else.
  auto posted = server.posted();
  ASSERT_EQ(posted.size(), 1u);
  const auto& body = posted[0];
  std::set<std::string> keys;
  for (const auto& [k, v] : body) keys.insert(std::string(k));
  EXPECT_EQ(keys, (std::set<std::string>{"owner", "authority", "csr", "validityStart", "validityEnd", "notify",
                                         "replaces"}));
  EXPECT_EQ(body.at("owner"), "platform-security@example.com");
  EXPECT_EQ(body.at("authority"), (json::object{{"name", "InternalCA"}}));
  EXPECT_EQ(body.at("notify"), false);
  EXPECT_EQ(body.at("replaces"), json::array{});
  // Validity: the wanted hour, backdated by a minute, in ISO-8601 UTC.
  const std::string start_text(body.at("validityStart").as_string()), end_text(body.at("validityEnd").as_string());
  EXPECT_EQ(start_text.size(), 20u);
  EXPECT_EQ(start_text.back(), 'Z');
  EXPECT_NEAR(std::chrono::duration<double>(m->not_after - m->not_before).count(), 3600.0, 0.5);
  EXPECT_NEAR(std::chrono::duration<double>(before - m->not_before).count(), 60.0, 2.0);
  EXPECT_EQ(renewer->stats().unseals, 1u);
}

TEST_F(LemurRenewerTest, EachRotationReplacesThePreviousOne) {
  start();
  const auto first = issue_ok();
  auto second_attempt = issue({{"lemur_id", std::to_string(first)}, {"lemur_url", server.url()}});
  ASSERT_TRUE(second_attempt.result) << second_attempt.result.error().message;
  const auto second = std::stoll(second_attempt.result->state.at("lemur_id"));
  const auto third = issue_ok(second_attempt.result->state);  // the state as the core hands it back

  EXPECT_EQ(server.replaced_by(first), second);
  EXPECT_EQ(server.replaced_by(second), third);
  EXPECT_FALSE(server.replaced_by(third));
  EXPECT_EQ(server.certificate(second)->replaces, std::vector<std::int64_t>{first});
  EXPECT_EQ(server.certificate(third)->replaces, std::vector<std::int64_t>{second});
  auto posted = server.posted();
  ASSERT_EQ(posted.size(), 3u);
  EXPECT_EQ(posted[1].at("replaces"), (json::array{json::object{{"id", first}}}));
  // The predecessor is looked up before it is named.
  auto reqs = server.requests();
  EXPECT_NE(std::find(reqs.begin(), reqs.end(), "GET /api/1/certificates/" + std::to_string(first)), reqs.end());
}

TEST_F(LemurRenewerTest, AVanishedOrForeignPredecessorIsNotNamed) {
  start();
  const auto first = issue_ok();
  // Lemur 1.9 refuses an unknown id in `replaces` (400): the renewer drops it instead.
  issue_ok({{"lemur_id", "99999"}, {"lemur_url", server.url()}});
  auto posted = server.posted();
  EXPECT_EQ(posted.back().at("replaces"), json::array{});
  EXPECT_NE(log_text.str().find("event=lemur_predecessor_missing"), std::string::npos) << log_text.str();
  // State written for another URL (another Lemur, or this one moved from http:// to https://):
  // not this server's id space, so the lineage restarts, and a warning says so.
  const std::string moved = "http://" + server.url().substr(std::string("https://").size());
  issue_ok({{"lemur_id", std::to_string(first)}, {"lemur_url", moved}});
  EXPECT_EQ(server.posted().back().at("replaces"), json::array{});
  EXPECT_FALSE(server.replaced_by(first));
  const std::string logged = log_text.str();
  const auto warning = logged.find("event=lemur_new_lineage");
  ASSERT_NE(warning, std::string::npos) << logged;
  const std::string line = logged.substr(warning, logged.find('\n', warning) - warning);
  EXPECT_NE(line.find(moved), std::string::npos) << line;
  EXPECT_NE(line.find("lemur_id=" + std::to_string(first)), std::string::npos) << line;
}

TEST_F(LemurRenewerTest, AnUnknownIdLemurStillListsIsDroppedOnItsFourHundred) {
  start();
  // The look-up cannot tell (a Lemur answering 200 for a deleted row): the POST's 400 does.
  server.add_fault({.method = "GET", .path_prefix = "/api/1/certificates/99999",
                    .reply = {.status = 200, .headers = {{"Content-Type", "application/json"}}, .body = "{}"}});
  issue_ok({{"lemur_id", "99999"}, {"lemur_url", server.url()}});
  auto posted = server.posted();
  ASSERT_EQ(posted.size(), 2u);
  EXPECT_EQ(posted[0].at("replaces"), (json::array{json::object{{"id", 99999}}}));
  EXPECT_EQ(posted[1].at("replaces"), json::array{});
  EXPECT_NE(log_text.str().find("event=lemur_predecessor_missing"), std::string::npos) << log_text.str();
}

TEST_F(LemurRenewerTest, TpmIdentityOnSwtpm) {
  tpm::test::Swtpm swtpm(dir / "swtpm");
  start(BrokerSetup{.backend = "tpm", .tcti = swtpm.tcti()});
  EXPECT_EQ(identity->backend(), "tpm");
  const auto first = issue_ok();
  const auto second = issue_ok({{"lemur_id", std::to_string(first)}});
  EXPECT_EQ(server.replaced_by(first), second);
  EXPECT_EQ(server.last_authorization(), "Bearer " + token);
  EXPECT_EQ(renewer->stats().unseals, 2u);  // unsealed for each issuance
}

TEST_F(LemurRenewerTest, DestinationsNotificationsRolesAndDescription) {
  const auto dest = server.add_destination("aws-prod");
  server.add_destination("aws-prod-eu");  // a substring match Lemur's filter also returns
  const auto notif = server.add_notification("pager");
  server.add_role("web-team");
  start(BrokerSetup{.extra = "    description: host certificates of web\n"
                       "    destinations: [aws-prod, \"12\"]\n"
                       "    notifications: [pager]\n"
                       "    roles: [web-team]\n"});
  issue_ok();
  auto rec = server.issued().back();
  EXPECT_EQ(rec.destinations, (std::vector<std::int64_t>{dest, 12}));
  EXPECT_EQ(rec.notifications, std::vector<std::int64_t>{notif});
  EXPECT_EQ(rec.roles, std::vector<std::string>{"web-team"});
  EXPECT_EQ(rec.description, "host certificates of web");
  const auto body = server.posted().back();
  EXPECT_EQ(body.at("destinations"), (json::array{json::object{{"id", dest}}, json::object{{"id", 12}}}));
  EXPECT_EQ(body.at("roles"), (json::array{json::object{{"name", "web-team"}}}));
}

TEST_F(LemurRenewerTest, AnUnknownDestinationLabelIsAConfigurationError) {
  server.add_destination("aws-prod");
  start(BrokerSetup{.extra = "    destinations: [aws-staging]\n"});
  auto e = issue_error();
  EXPECT_TRUE(e.configuration);
  EXPECT_NE(e.message.find("no destination labelled aws-staging"), std::string::npos) << e.message;
  EXPECT_TRUE(server.posted().empty());
}

// ---- pending certificates --------------------------------------------------------------------

TEST_F(LemurRenewerTest, APendingCertificateIsPolledUntilIssued) {
  server.set_pending("InternalCA", 3);
  start();
  const auto first = issue_ok();
  auto rec = server.certificate(first);
  ASSERT_TRUE(rec);
  ASSERT_NE(rec->from_pending, 0);
  EXPECT_NE(rec->from_pending, first);  // the certificate's id, not the pending one
  EXPECT_EQ(server.pending_polls(rec->from_pending), 3);
  // The lineage survives the pending step.
  const auto second = issue_ok({{"lemur_id", std::to_string(first)}});
  EXPECT_EQ(server.replaced_by(first), second);
  EXPECT_TRUE(server.cancelled_pending().empty());
}

TEST_F(LemurRenewerTest, StillPendingAtTheDeadlineIsCancelledAndRetriedLater) {
  server.set_pending("InternalCA", 1000000);
  start(BrokerSetup{.timeout = "1500ms"});
  const auto t0 = std::chrono::steady_clock::now();
  auto e = issue_error();
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_GE(took, 1400ms);
  EXPECT_LT(took, 4s);
  EXPECT_FALSE(e.configuration);
  ASSERT_TRUE(e.retry_after);
  EXPECT_EQ(*e.retry_after, 30s);
  EXPECT_NE(e.message.find("still pending"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("raise the broker's timeout"), std::string::npos) << e.message;
  ASSERT_EQ(server.cancelled_pending().size(), 1u);
  EXPECT_GE(renewer->stats().polls, 5u);  // short first interval, backing off
  EXPECT_TRUE(server.issued().empty());
}

// ---- the broker's clock ----------------------------------------------------------------------

// Lemur's Date header is handed to the loop (IssueResult::broker_time), which measures clock
// skew from it (certagent_clock_skew_seconds, the status CLOCK column), as for cfssl: for an
// answer with the certificate and for a pending certificate's resolution.
TEST_F(LemurRenewerTest, TheDateHeaderIsTheBrokersClock) {
  server.set_clock_ahead(1h);
  start();
  auto near = [](SystemTime t, SystemTime want) { return t >= want - 3s && t <= want + 3s; };
  auto a = issue();
  ASSERT_TRUE(a.result) << a.result.error().message;
  ASSERT_TRUE(a.result->broker_time) << "no Date read";
  EXPECT_TRUE(near(*a.result->broker_time, std::chrono::system_clock::now() + 1h));

  server.set_clock_ahead(-2h);
  server.set_pending("InternalCA", 1);
  auto pending = issue();
  ASSERT_TRUE(pending.result) << pending.result.error().message;
  ASSERT_TRUE(pending.result->broker_time) << "no Date read on the pending path";
  EXPECT_TRUE(near(*pending.result->broker_time, std::chrono::system_clock::now() - 2h));
}

// ---- errors ----------------------------------------------------------------------------------

TEST_F(LemurRenewerTest, NoSealedTokenSaysToRunEnroll) {
  start(BrokerSetup{}, /*enroll=*/false);
  auto e = issue_error();
  EXPECT_TRUE(e.configuration);
  EXPECT_NE(e.message.find("certagent enroll --config"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find((dir / "lemur.jwt").string()), std::string::npos) << e.message;
  EXPECT_TRUE(server.requests().empty());
}

TEST_F(LemurRenewerTest, ASealedValueThatIsNoJwtIsRefusedUnsent) {
  start();
  reseal("not a token\r\nX-Injected: 1");
  auto e = issue_error();
  EXPECT_TRUE(e.configuration);
  EXPECT_NE(e.message.find("not a JWT"), std::string::npos) << e.message;
  EXPECT_EQ(e.message.find("Injected"), std::string::npos);
  EXPECT_TRUE(server.requests().empty());
}

TEST_F(LemurRenewerTest, ValidationErrorsAreSurfacedAsConfiguration) {
  server.add_authority("RetiredCA", "pki@example.com").active = false;
  start(BrokerSetup{.authority = "RetiredCA"});
  auto e = issue_error();
  EXPECT_TRUE(e.configuration);
  EXPECT_EQ(e.cause, Cause::refused);
  EXPECT_EQ(e.reason, "authority");
  EXPECT_NE(e.message.find("HTTP 400: Validation Error. (authority: The authority is inactive.)"), std::string::npos)
      << e.message;
  EXPECT_NE(e.message.find("fix the broker's owner, authority"), std::string::npos) << e.message;
}

// Lemur 1.9 answers 500 for an unknown authority (a bug): one cheap look-up tells it apart
// from a broken server, and the error says what to change.
TEST_F(LemurRenewerTest, AnUnknownAuthorityIsAConfigurationErrorDespiteTheFiveHundred) {
  start(BrokerSetup{.authority = "NoSuchCA"});
  auto e = issue_error();
  EXPECT_TRUE(e.configuration);
  EXPECT_EQ(e.cause, Cause::refused);
  EXPECT_EQ(e.reason, "authority");
  EXPECT_NE(e.message.find("HTTP 500"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("Lemur has no authority"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("set the broker's authority"), std::string::npos) << e.message;
  auto reqs = server.requests();
  EXPECT_NE(std::find(reqs.begin(), reqs.end(), "GET /api/1/authorities?filter=name;NoSuchCA&count=100"), reqs.end());
}

TEST_F(LemurRenewerTest, AnUnknownAuthorityIdIsAConfigurationErrorToo) {
  start(BrokerSetup{.authority = "77"});
  auto e = issue_error();
  EXPECT_TRUE(e.configuration);
  EXPECT_EQ(e.reason, "authority") << e.message;
  auto reqs = server.requests();
  EXPECT_NE(std::find(reqs.begin(), reqs.end(), "GET /api/1/authorities/77"), reqs.end());
}

TEST_F(LemurRenewerTest, FiveHundredsAreToldApartByCause) {
  start();
  // A deleted API key (its row gone): Lemur's authentication itself fails with a 500.
  const std::string gone = server.create_api_key(user);
  server.delete_api_key(gone);
  reseal(gone);
  auto e = issue_error();
  EXPECT_TRUE(e.configuration);
  EXPECT_EQ(e.cause, Cause::refused);
  EXPECT_EQ(e.reason, "credentials");
  EXPECT_NE(e.message.find("no longer knows the API key"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("certagent enroll"), std::string::npos) << e.message;
  // The key's user deleted: the same.
  const auto temp = server.add_user("temp", {"pki@example.com"});
  const std::string orphan = server.create_api_key(temp);
  server.delete_user(temp);
  reseal(orphan);
  e = issue_error();
  EXPECT_EQ(e.reason, "credentials") << e.message;
  // Lemur's database down (the healthcheck says so, POSTs answer 500): the broker is down,
  // retried as a broker failure.
  reseal(token);
  server.set_db_down(true);
  e = issue_error();
  EXPECT_FALSE(e.configuration);
  EXPECT_EQ(e.cause, Cause::unreachable);
  EXPECT_NE(e.message.find("database"), std::string::npos) << e.message;
  server.set_db_down(false);
  issue_ok();
}

TEST_F(LemurRenewerTest, AnUntrustedBrokerCertificateIsAConfigurationErrorNamingTheCaBundle) {
  start();
  // The operator's ca_bundle holds some other CA (re-read when the file changes).
  write_file(dir / "broker-ca.pem",
             make_cert(CertSpec{.common_name = "Unrelated CA", .is_ca = true}).cert_pem());
  auto e = issue_error();
  EXPECT_TRUE(e.configuration);
  EXPECT_EQ(e.cause, Cause::local_config);
  EXPECT_EQ(e.reason, "tls_trust");
  EXPECT_NE(e.message.find("ca_bundle " + (dir / "broker-ca.pem").string()), std::string::npos) << e.message;
  auto probe = run_sync(ioc, renewer->probe());
  ASSERT_FALSE(probe);
  EXPECT_EQ(probe.error().reason, "tls_trust");
  EXPECT_TRUE(server.posted().empty());
}

TEST_F(LemurRenewerTest, TokenProblemsAreConfigurationErrorsSayingWhatToFix) {
  start();
  struct Case {
    std::string token;
    std::string lemur_says;
    std::string fix;
  };
  const auto other_user = server.add_user("someone-else", {"other-team@example.com"});
  const auto read_only = server.add_user("auditor", {"read-only", "pki@example.com"});
  const std::string revoked = server.create_api_key(user);
  server.revoke_api_key(revoked);
  std::vector<Case> cases = {
      {server.foreign_token(user), "Token is invalid", "create an API key in Lemur and seal it"},
      {"abc.def", "Token is invalid", "create an API key in Lemur and seal it"},
      {server.create_api_key(user, 1, std::chrono::system_clock::now() - 48h), "Token has expired",
       "the API key has expired"},
      {server.expired_login_token(user), "Token has expired", "the API key has expired"},
      {revoked, "Token has been revoked", "was revoked"},
      {server.create_api_key(other_user), "You are not authorized to use the authority: InternalCA",
       "give it the authority's owner role"},
      {server.create_api_key(read_only), "You are not authorized to create a new certificate.", "read-only"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.lemur_says);
    reseal(c.token);
    auto e = issue_error();
    EXPECT_TRUE(e.configuration);
    EXPECT_NE(e.message.find("HTTP 403: " + c.lemur_says), std::string::npos) << e.message;
    EXPECT_NE(e.message.find(c.fix), std::string::npos) << e.message;
    EXPECT_EQ(e.message.find(c.token), std::string::npos) << "the message carries the token";
  }
  server.set_user_active(user, false);
  reseal(token);
  auto e = issue_error();
  EXPECT_TRUE(e.configuration);
  EXPECT_NE(e.message.find("User is not currently active"), std::string::npos) << e.message;
  EXPECT_TRUE(server.issued().empty());
}

TEST_F(LemurRenewerTest, MissingAuthorizationHeaderIsAConfigurationError) {
  start();
  // A proxy that strips the header: Lemur answers as if none was sent.
  server.add_fault({.method = "POST", .path_prefix = "/api/1/certificates",
                    .reply = {.status = 401, .headers = {{"Content-Type", "application/json"}},
                              .body = R"({"message": "Missing authorization header"})"}});
  auto e = issue_error();
  EXPECT_TRUE(e.configuration);
  EXPECT_NE(e.message.find("HTTP 401: Missing authorization header"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("strips the Authorization header"), std::string::npos) << e.message;
}

TEST_F(LemurRenewerTest, ServerErrorsAndRateLimitsAreBrokerFailures) {
  start();
  server.add_fault({.method = "POST", .path_prefix = "/api/1/certificates",
                    .reply = {.status = 500, .headers = {{"Content-Type", "application/json"}},
                              .body = R"({"message": "Exception minting certificate"})"}});
  auto e = issue_error();
  EXPECT_FALSE(e.configuration);
  EXPECT_FALSE(e.retry_after);
  EXPECT_NE(e.message.find("HTTP 500: Exception minting certificate"), std::string::npos) << e.message;

  server.add_fault({.method = "POST", .path_prefix = "/api/1/certificates",
                    .reply = {.status = 429, .headers = {{"Retry-After", "7"}}, .body = "slow down"}});
  e = issue_error();
  EXPECT_FALSE(e.configuration);
  ASSERT_TRUE(e.retry_after);
  EXPECT_EQ(*e.retry_after, 7s);
  EXPECT_NE(e.message.find("HTTP 429: slow down"), std::string::npos) << e.message;

  server.add_fault({.method = "POST", .path_prefix = "/api/1/certificates",
                    .reply = {.status = 503, .headers = {{"Retry-After", "120"}}, .body = "<html>maintenance</html>"}});
  e = issue_error();
  EXPECT_FALSE(e.configuration);
  ASSERT_TRUE(e.retry_after);
  EXPECT_EQ(*e.retry_after, 120s);

  // An answer that is no certificate at all.
  server.add_fault({.method = "POST", .path_prefix = "/api/1/certificates",
                    .reply = {.status = 200, .body = "<html>login</html>"}});
  e = issue_error();
  EXPECT_FALSE(e.configuration);
  EXPECT_NE(e.message.find("not a JSON object"), std::string::npos) << e.message;

  // And then it works again, on the same connection pool.
  issue_ok();
}

// Found by fuzz_broker_answers: errors quote Lemur's answer, and an answer that echoes the
// request (a proxy's or a debugging error page) would have carried the API key into the log.
TEST_F(LemurRenewerTest, AnAnswerEchoingTheApiKeyIsQuotedWithoutIt) {
  start();
  server.add_fault({.method = "POST", .path_prefix = "/api/1/certificates",
                    .reply = {.status = 400, .headers = {{"Content-Type", "application/json"}},
                              .body = R"({"message": "bad request with Authorization: Bearer )" + token + R"("})"}});
  auto e = issue_error();
  EXPECT_EQ(e.message.find(token), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("Authorization: Bearer [redacted]"), std::string::npos) << e.message;

  server.add_fault({.method = "POST", .path_prefix = "/api/1/certificates",
                    .reply = {.status = 502, .body = "<html>upstream said " + token + " was wrong</html>"}});
  e = issue_error();
  EXPECT_EQ(e.message.find(token), std::string::npos) << e.message;
}

TEST_F(LemurRenewerTest, ASlowAnswerTimesOut) {
  start(BrokerSetup{.timeout = "1s"});
  server.set_delay(3s);
  const auto t0 = std::chrono::steady_clock::now();
  auto e = issue_error();
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_FALSE(e.configuration);
  EXPECT_NE(e.message.find("timed out"), std::string::npos) << e.message;
  EXPECT_LT(took, 2500ms);
  server.set_delay(0ms);
  issue_ok();
}

TEST_F(LemurRenewerTest, AWrongUrlIsAConfigurationError) {
  start(BrokerSetup{.url = server.url() + "/api/1"});
  auto e = issue_error();
  EXPECT_TRUE(e.configuration);
  EXPECT_NE(e.message.find("HTTP 404"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("check the broker's url"), std::string::npos) << e.message;
}

TEST_F(LemurRenewerTest, Ed25519IsRefusedBeforeAsking) {
  start();
  auto a = issue({}, crypto::KeyType::ed25519);
  ASSERT_FALSE(a.result);
  EXPECT_TRUE(a.result.error().configuration);
  EXPECT_NE(a.result.error().message.find("RSA and ECDSA keys only"), std::string::npos);
  EXPECT_TRUE(server.posted().empty());
  // RSA works.
  auto r = issue({}, crypto::KeyType::rsa_2048);
  ASSERT_TRUE(r.result) << r.result.error().message;
}

TEST_F(LemurRenewerTest, ProbeReadsTheHealthcheck) {
  start();
  EXPECT_TRUE(run_sync(ioc, renewer->probe()));
  server.set_db_down(true);  // Lemur still answers 200, with another text
  auto down = run_sync(ioc, renewer->probe());
  ASSERT_FALSE(down);
  EXPECT_EQ(down.error().cause, Cause::unreachable);
  EXPECT_NE(down.error().message.find("db check failed"), std::string::npos) << down.error().message;
  server.set_db_down(false);
  EXPECT_TRUE(run_sync(ioc, renewer->probe()));
}

TEST(LemurRenewerRequest, AuthorityByIdAndNoValidityWithoutLifetime) {
  config::BrokerConfig broker;
  broker.name = "netflix";
  broker.type = "lemur";
  renewers::LemurRenewerConfig lemur;
  lemur.url = "https://lemur.example/";
  lemur.authority = "42";
  lemur.owner = "team@example.com";
  broker.settings = lemur;
  boost::asio::io_context ioc;
  SoftwareIdentity identity;
  renewers::RenewerContext context{ioc.get_executor(), &identity, "/nonexistent", nullptr};
  auto r = LemurRenewer::create(broker, context);
  ASSERT_TRUE(r) << r.error().message;
  IssueRequest request;
  request.csr_pem = "CSR";
  auto body = json::parse((*r)->certificate_request_json(request, std::chrono::system_clock::now(), 7, {}, {}))
                  .as_object();
  EXPECT_EQ(body.at("authority"), (json::object{{"id", 42}}));
  EXPECT_FALSE(body.contains("validityStart"));
  EXPECT_FALSE(body.contains("validityEnd"));
  EXPECT_EQ(body.at("replaces"), (json::array{json::object{{"id", 7}}}));
  // previous_state: digits only, and only from this Lemur.
  request.previous_state = {{"lemur_id", "12"}, {"lemur_url", "https://lemur.example"}};
  EXPECT_EQ((*r)->previous_lemur_id(request), 12);
  request.previous_state = {{"lemur_id", "12x"}};
  EXPECT_FALSE((*r)->previous_lemur_id(request));
  request.previous_state = {{"lemur_id", "12"}, {"lemur_url", "https://lemur.other"}};
  EXPECT_FALSE((*r)->previous_lemur_id(request));
}

}  // namespace
}  // namespace certagent::test
