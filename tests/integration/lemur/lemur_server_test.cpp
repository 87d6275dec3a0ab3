// The Lemur test server itself, spoken to with plain HTTPS requests: it must reject what real
// Lemur rejects (so the renewer tests prove something) and answer what real Lemur answers.

#include "core/crypto/csr.h"
#include "core/crypto/keys.h"
#include "core/crypto/x509.h"
#include "core/http/client.h"
#include "tests/support/run_sync.h"
#include "tests/integration/lemur/lemur_test_server.h"
#include "tests/support/test_support.h"

#include <boost/asio/io_context.hpp>
#include <boost/json.hpp>

#include <openssl/bn.h>
#include <openssl/x509v3.h>

#include <gtest/gtest.h>

#include <ctime>

namespace certagent::test {
namespace {

using namespace std::chrono_literals;
namespace json = boost::json;

std::string iso_in(std::chrono::seconds from_now) {
  std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now() + from_now);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

class LemurServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server.add_authority("InternalCA", "pki@example.com");
    user = server.add_user("host-agent", {"pki@example.com"});
    token = server.create_api_key(user);
    write_file(dir / "ca.pem", server.tls_ca_pem());
    auto c = http::Client::create(ioc.get_executor(), http::ClientOptions{.ca_bundle = dir / "ca.pem", .timeout = 5s});
    ASSERT_TRUE(c) << c.error().message;
    client = std::move(*c);
    key = std::move(*crypto::generate_key(crypto::KeyType::ecdsa_p256));
    csr = *crypto::build_csr(key.get(), crypto::SubjectNames{"web.internal", {"web.internal"}, {"127.0.0.1"}, {}});
  }

  json::object good() const {
    return json::object{{"owner", "team@example.com"},     {"authority", {{"name", "InternalCA"}}},
                        {"csr", csr},                      {"validityStart", iso_in(-60s)},
                        {"validityEnd", iso_in(3540s)},    {"notify", false}};
  }

  http::Response send(std::string method, std::string path, std::string body = "",
                      std::optional<std::string> authorization = std::nullopt) {
    http::Request r{.method = std::move(method), .url = server.url() + path};
    r.headers.emplace_back("Authorization", authorization ? *authorization : "Bearer " + token);
    if (authorization && authorization->empty()) r.headers.clear();
    if (!body.empty()) r.headers.emplace_back("Content-Type", "application/json");
    r.body = std::move(body);
    auto res = run_sync(ioc, client->send(std::move(r)));
    EXPECT_TRUE(res) << res.error().message;
    return res ? *res : http::Response{};
  }

  http::Response post(const json::object& body, std::optional<std::string> authorization = std::nullopt) {
    return send("POST", "/api/1/certificates", json::serialize(body), std::move(authorization));
  }

  static json::object parse(const http::Response& r) {
    boost::system::error_code ec;
    auto v = json::parse(r.body, ec);
    EXPECT_FALSE(ec) << r.body;
    return ec || !v.is_object() ? json::object{} : v.as_object();
  }

  TempDir dir{"certagent-lemur-server"};
  LemurTestServer server;
  std::int64_t user{0};
  std::string token;
  boost::asio::io_context ioc;
  std::unique_ptr<http::Client> client;
  crypto::EvpPkeyPtr key;
  std::string csr;
};

TEST_F(LemurServerTest, IssuesTheCertificateObjectLemurReturns) {
  auto res = post(good());
  ASSERT_EQ(res.status, 200u) << res.body;
  auto o = parse(res);
  for (const char* k : {"id", "body", "chain", "serial", "serialHex", "notBefore", "notAfter", "issuer", "name",
                        "replaces", "owner", "commonName", "validityStart", "validityEnd", "authority"})
    EXPECT_TRUE(o.contains(k)) << k;
  auto chain = parse_pem_chain(std::string(o.at("body").as_string()));
  ASSERT_EQ(chain.size(), 1u);
  auto info = crypto::describe(chain[0].get());
  EXPECT_EQ(info.subject_cn, "web.internal");
  EXPECT_EQ(info.dns_names, std::vector<std::string>{"web.internal"});
  EXPECT_EQ(info.ip_addresses, std::vector<std::string>{"127.0.0.1"});
  EXPECT_EQ(std::chrono::duration_cast<std::chrono::seconds>(info.not_after - info.not_before), 3600s);
  // serial: decimal; serialHex: the same number in upper-case hex.
  BIGNUM* dec = nullptr;
  BIGNUM* hex = nullptr;
  ASSERT_GT(BN_dec2bn(&dec, std::string(o.at("serial").as_string()).c_str()), 0);
  ASSERT_GT(BN_hex2bn(&hex, std::string(o.at("serialHex").as_string()).c_str()), 0);
  EXPECT_EQ(BN_cmp(dec, hex), 0);
  BN_free(dec);
  BN_free(hex);
  std::string upper(o.at("serialHex").as_string());
  for (auto& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  EXPECT_EQ(upper, o.at("serialHex").as_string());
  // The cryptography issuer: the leaf carries the SAN extension only, signed by the root, and
  // `chain` is the root itself.
  EXPECT_EQ(X509_get_ext_count(chain[0].get()), 1);
  EXPECT_GE(X509_get_ext_by_NID(chain[0].get(), NID_subject_alt_name, -1), 0);
  EXPECT_EQ(o.at("chain").as_string(), server.issuer_root_pem());
  auto inter = parse_pem_chain(std::string(o.at("chain").as_string()));
  ASSERT_EQ(inter.size(), 1u);
  auto store = crypto::trust_store_from_pem(server.issuer_root_pem());
  ASSERT_TRUE(store);
  EXPECT_TRUE(crypto::verify_chain(chain[0].get(), {}, store->get(), std::chrono::system_clock::now()));
  // The CSR comes back; a missing description is "".
  EXPECT_EQ(o.at("csr"), json::value(csr));
  EXPECT_EQ(o.at("description"), json::value(""));
  for (const char* k : {"dateCreated", "distinguishedName", "dnsProvider", "dnsProviderId", "extensions", "user"})
    EXPECT_TRUE(o.contains(k)) << k;
  auto fetched = send("GET", "/api/1/certificates/" + std::to_string(o.at("id").as_int64()));
  EXPECT_EQ(fetched.status, 200u);
  EXPECT_EQ(parse(fetched).at("body"), o.at("body"));
  EXPECT_EQ(send("GET", "/api/1/certificates/424242").status, 404u);

  // replaces/replacedBy hold full nested certificate objects.
  auto next = good();
  next["replaces"] = json::array{json::object{{"id", o.at("id")}}};
  auto second = post(next);
  ASSERT_EQ(second.status, 200u) << second.body;
  auto s2 = parse(second);
  ASSERT_EQ(s2.at("replaces").as_array().size(), 1u);
  EXPECT_EQ(s2.at("replaces").as_array()[0].as_object().at("body"), o.at("body"));
  auto first_again = parse(send("GET", "/api/1/certificates/" + std::to_string(o.at("id").as_int64())));
  ASSERT_EQ(first_again.at("replacedBy").as_array().size(), 1u);
  EXPECT_EQ(first_again.at("replacedBy").as_array()[0].as_object().at("id"), s2.at("id"));
  EXPECT_EQ(first_again.at("replacedBy").as_array()[0].as_object().at("body"), s2.at("body"));
}

TEST_F(LemurServerTest, RejectsWhatLemurRejects) {
  struct Case {
    std::string name;
    std::function<void(json::object&)> change;
    unsigned status;
    json::object reasons;  // empty: not checked
    json::value body{};    // non-null: the whole answer, exactly
  };
  auto rule = [](std::string text) { return json::object{{"Schema", {{"rule", json::array{json::value(text)}}}}}; };
  const json::value ise = json::object{{"message", "Internal Server Error"}};
  auto unknown = [](const char* field, const char* model, int id) -> json::value {
    return json::object{{field, {{"_schema", "Unable to find <class '" + std::string(model) + "'> with id: " +
                                                 std::to_string(id)}}}};
  };
  auto no_cn = *crypto::build_csr(key.get(), crypto::SubjectNames{"", {"web.internal"}, {}, {}});
  const std::vector<Case> cases = {
      {"missing owner", [](json::object& b) { b.erase("owner"); }, 400,
       {{"owner", "Missing data for required field."}}},
      {"owner not an email", [](json::object& b) { b["owner"] = "platform security"; }, 400,
       {{"owner", "Not a valid email address."}}},
      {"missing authority", [](json::object& b) { b.erase("authority"); }, 400, rule("Missing Authority.")},
      // Real Lemur 1.9 answers 500 for an unknown authority, by name or id, and for a string.
      {"unknown authority", [](json::object& b) { b["authority"] = {{"name", "NoSuchCA"}}; }, 500, {}, ise},
      {"unknown authority id", [](json::object& b) { b["authority"] = {{"id", 77}}; }, 500, {}, ise},
      {"authority as a string", [](json::object& b) { b["authority"] = "InternalCA"; }, 500, {}, ise},
      {"no validity", [](json::object& b) { b.erase("validityStart"); b.erase("validityEnd"); }, 500, {},
       json::object{{"message", "`validity_start` is required but is missing or not configured.  Please provide "
                                "and try again."}}},
      {"authority without id or name", [](json::object& b) { b["authority"] = json::object{}; }, 400,
       rule("Missing Authority.")},
      {"missing csr", [](json::object& b) { b.erase("csr"); }, 400, {}},
      {"malformed csr",
       [](json::object& b) {
         b["csr"] = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
       },
       400, rule("CSR presented is not valid.")},
      {"csr without a common name", [&](json::object& b) { b["csr"] = no_cn; }, 400, rule("Missing common_name")},
      {"only validityStart", [](json::object& b) { b.erase("validityEnd"); }, 400,
       rule("If validity end is specified so must validity start.")},
      {"only validityEnd", [](json::object& b) { b.erase("validityStart"); }, 400,
       rule("If validity start is specified so must validity end.")},
      {"start after end", [](json::object& b) { std::swap(b["validityStart"], b["validityEnd"]); }, 400,
       rule("Validity start must be before validity end.")},
      {"end after the CA", [](json::object& b) { b["validityEnd"] = iso_in(std::chrono::hours(24 * 400)); }, 400, {}},
      // The field error is hidden by the schema error its absence then causes, as in Lemur.
      {"not a date", [](json::object& b) { b["validityStart"] = "next tuesday"; }, 400,
       rule("If validity start is specified so must validity end.")},
      {"not a date, without end",
       [](json::object& b) {
         b["validityStart"] = "next tuesday";
         b.erase("validityEnd");
       },
       400, {{"validityStart", "Not a valid datetime."}}},
      {"notify not a boolean", [](json::object& b) { b["notify"] = "no"; }, 400, {{"notify", "Not a valid boolean."}}},
      // Unknown ids: 400 with the field's _schema error as the whole body.
      {"replaces an unknown id", [](json::object& b) { b["replaces"] = json::array{json::object{{"id", 99999}}}; }, 400, {},
       unknown("replaces", "lemur.certificates.models.Certificate", 99999)},
      {"an unknown destination id", [](json::object& b) { b["destinations"] = json::array{json::object{{"id", 5}}}; }, 400, {},
       unknown("destinations", "lemur.destinations.models.Destination", 5)},
      {"an unknown notification id", [](json::object& b) { b["notifications"] = json::array{json::object{{"id", 6}}}; }, 400,
       {}, unknown("notifications", "lemur.notifications.models.Notification", 6)},
      {"an unknown role id", [](json::object& b) { b["roles"] = json::array{json::object{{"id", 999}}}; }, 400, {},
       unknown("roles", "lemur.roles.models.Role", 999)},
      {"destination by name (Lemur crashes)",
       [](json::object& b) { b["destinations"] = json::array{json::object{{"name", "aws"}}}; }, 500, {}},
      {"unknown role by name", [](json::object& b) { b["roles"] = json::array{json::object{{"name", "nobody"}}}; }, 400, {}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    auto body = good();
    c.change(body);
    auto res = post(body);
    EXPECT_EQ(res.status, c.status) << res.body;
    if (!c.body.is_null()) {
      EXPECT_EQ(json::value(parse(res)), c.body) << res.body;
    } else if (c.status == 400) {
      auto o = parse(res);
      EXPECT_EQ(o["message"], "Validation Error.") << res.body;
      EXPECT_TRUE(o.contains("reasons")) << res.body;
      if (!c.reasons.empty()) {
        EXPECT_EQ(o["reasons"], c.reasons) << res.body;
      }
    }
  }
  auto bad_json = send("POST", "/api/1/certificates", "{not json");
  EXPECT_EQ(bad_json.status, 400u);
  EXPECT_EQ(parse(bad_json)["message"],
            "The browser (or proxy) sent a request that this server could not understand.");
  EXPECT_TRUE(server.issued().empty());
}

TEST_F(LemurServerTest, AuthenticatesLikeLemur) {
  auto said = [&](const http::Response& r) { return std::string(parse(r)["message"].as_string()); };
  auto none = post(good(), "");
  EXPECT_EQ(none.status, 401u);
  EXPECT_EQ(said(none), "Missing authorization header");
  for (const std::string& h : std::vector<std::string>{"Bearer", "Bearer nonsense", "Bearer a.b.c",
                                                      "Bearer " + server.foreign_token(user)}) {
    auto r = post(good(), h);
    EXPECT_EQ(r.status, 403u) << h;
    EXPECT_EQ(said(r), "Token is invalid") << h;
  }
  auto expired = post(good(), "Bearer " + server.expired_login_token(user));
  EXPECT_EQ(expired.status, 403u);
  EXPECT_EQ(said(expired), "Token has expired");
  auto old_key = post(good(), "Bearer " + server.create_api_key(user, 1, std::chrono::system_clock::now() - 25h));
  EXPECT_EQ(said(old_key), "Token has expired");
  const std::string revoked = server.create_api_key(user);
  server.revoke_api_key(revoked);
  EXPECT_EQ(said(post(good(), "Bearer " + revoked)), "Token has been revoked");
  const auto stranger = server.add_user("stranger", {"other@example.com"});
  auto denied = post(good(), "Bearer " + server.create_api_key(stranger));
  EXPECT_EQ(denied.status, 403u);
  EXPECT_EQ(said(denied), "You are not authorized to use the authority: InternalCA");
  // Validation runs before the permission check, authentication before both.
  auto body = good();
  body.erase("owner");
  EXPECT_EQ(post(body, "Bearer " + server.create_api_key(stranger)).status, 400u);
  EXPECT_EQ(post(body, "").status, 401u);
  // The scheme word is not checked (split()[1]), the token is.
  EXPECT_EQ(post(good(), "Token " + token).status, 200u);
  // Health needs no token; unknown routes and methods are Flask's 404/405.
  auto health = send("GET", "/api/1/healthcheck", "", "");
  EXPECT_EQ(health.status, 200u);
  EXPECT_EQ(health.body, "ok");
  // Unknown routes and methods answer JSON, as Lemur's error handlers do.
  auto nothing = send("GET", "/api/1/nothing-here");
  EXPECT_EQ(nothing.status, 404u);
  EXPECT_EQ(std::string(parse(nothing)["error"].as_string()).rfind("404 Not Found: ", 0), 0u) << nothing.body;
  auto method = send("DELETE", "/api/1/certificates");
  EXPECT_EQ(method.status, 405u);
  EXPECT_EQ(said(method), "The method is not allowed for the requested URL.");
  // A deleted API key, or a token for an unknown user: 500 (AttributeError in Lemur).
  const std::string deleted = server.create_api_key(user);
  server.delete_api_key(deleted);
  auto gone = post(good(), "Bearer " + deleted);
  EXPECT_EQ(gone.status, 500u);
  EXPECT_EQ(said(gone), "Internal Server Error");
  const auto temp = server.add_user("temp", {"pki@example.com"});
  const std::string orphan = server.create_api_key(temp);
  server.delete_user(temp);
  EXPECT_EQ(post(good(), "Bearer " + orphan).status, 500u);
  // Database down: the healthcheck says so (with a 200), authenticated requests answer 500.
  server.set_db_down(true);
  auto sick = send("GET", "/api/1/healthcheck", "", "");
  EXPECT_EQ(sick.status, 200u);
  EXPECT_EQ(sick.body, "db check failed");
  EXPECT_EQ(post(good()).status, 500u);
  server.set_db_down(false);
}

TEST_F(LemurServerTest, AuthoritiesByNameOrId) {
  server.add_authority("InternalCA-EU", "pki@example.com");
  auto o = parse(send("GET", "/api/1/authorities?filter=name;internalca&count=100"));
  EXPECT_EQ(o.at("total"), 2);
  EXPECT_EQ(parse(send("GET", "/api/1/authorities?filter=name;NoSuchCA")).at("total"), 0);
  auto one = send("GET", "/api/1/authorities/1");
  EXPECT_EQ(one.status, 200u);
  EXPECT_EQ(parse(one).at("name"), "InternalCA");
  EXPECT_EQ(send("GET", "/api/1/authorities/77").status, 404u);
}

// The README's `POST /api/1/keys` example, as written, creates a key that works; the body the
// README used to show ({"user": {"id": N}}) gets 400, as from real Lemur.
TEST_F(LemurServerTest, TheReadmesApiKeyExampleWorksAsWritten) {
  const std::string readme = read_file(source_dir() / "README.md");
  const auto at = readme.find("/api/1/keys");
  ASSERT_NE(at, std::string::npos);
  const auto start = readme.rfind("-d '", at);
  ASSERT_NE(start, std::string::npos);
  const auto end = readme.find('\'', start + 4);
  std::string body = readme.substr(start + 4, end - start - 4);
  auto example = json::parse(body).as_object();
  // The README's user 42 is whoever the API key is for; here: this server's user.
  example["user"].as_object()["id"] = user;
  const auto admin = server.add_user("admin", {"admin"});
  const std::string admin_token = server.create_api_key(admin);
  auto created = send("POST", "/api/1/keys", json::serialize(example), "Bearer " + admin_token);
  ASSERT_EQ(created.status, 200u) << created.body;
  const std::string jwt(parse(created).at("jwt").as_string());
  EXPECT_EQ(post(good(), "Bearer " + jwt).status, 200u);
  auto short_form = send("POST", "/api/1/keys",
                         json::serialize(json::object{{"name", "x"}, {"ttl", -1}, {"user", {{"id", user}}}}),
                         "Bearer " + admin_token);
  EXPECT_EQ(short_form.status, 400u) << short_form.body;
}

TEST_F(LemurServerTest, PendingCertificatesResolveAndCancel) {
  server.set_pending("InternalCA", 2);
  auto res = post(good());
  ASSERT_EQ(res.status, 200u) << res.body;
  auto p = parse(res);
  EXPECT_FALSE(p.contains("body"));
  EXPECT_EQ(p.at("resolved"), false);
  const auto id = p.at("id").as_int64();
  auto first = parse(send("GET", "/api/1/pending_certificates/" + std::to_string(id)));
  EXPECT_EQ(first.at("resolved"), false);
  auto second = parse(send("GET", "/api/1/pending_certificates/" + std::to_string(id)));
  ASSERT_EQ(second.at("resolved"), true);
  const auto cert_id = second.at("resolvedCertId").as_int64();
  EXPECT_NE(cert_id, id);
  EXPECT_EQ(send("GET", "/api/1/certificates/" + std::to_string(cert_id)).status, 200u);

  auto again = parse(post(good()));
  const auto other = again.at("id").as_int64();
  auto cancel = send("DELETE", "/api/1/pending_certificates/" + std::to_string(other), R"({"note":"test"})");
  EXPECT_EQ(cancel.status, 204u);
  EXPECT_EQ(server.cancelled_pending(), std::vector<std::int64_t>{other});
  EXPECT_EQ(send("GET", "/api/1/pending_certificates/" + std::to_string(other)).status, 404u);
}

TEST_F(LemurServerTest, LabelFilterIsASubstringMatch) {
  server.add_destination("aws-prod");
  server.add_destination("AWS-prod-eu");
  server.add_destination("gcp");
  auto o = parse(send("GET", "/api/1/destinations?filter=label;aws-prod&count=100"));
  EXPECT_EQ(o.at("total"), 2);
  auto none = parse(send("GET", "/api/1/notifications?filter=label;pager"));
  EXPECT_EQ(none.at("total"), 0);
}

}  // namespace
}  // namespace certagent::test
