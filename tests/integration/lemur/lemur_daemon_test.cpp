// End to end: the real certagent binary (`enroll`, then `run`) with a lemur broker pointing at
// the Lemur test server running as its own process. Short lifetimes make the daemon rotate
// within seconds; the server's record shows every rotation naming its predecessor in
// `replaces`, and meta.json keeps the Lemur id of the current certificate.

#include "tests/support/test_pki.h"
#include "tests/support/test_support.h"

#include <boost/json.hpp>

#include <gtest/gtest.h>

#include <openssl/x509v3.h>

#include <sstream>

#ifndef LEMUR_TEST_SERVER_BINARY
#error "LEMUR_TEST_SERVER_BINARY must name the lemur_test_server executable"
#endif

namespace certagent::test {
namespace {

namespace json = boost::json;

std::vector<json::object> issued(const fs::path& file) {
  std::vector<json::object> out;
  std::istringstream in(read_file(file));
  for (std::string line; std::getline(in, line);) {
    boost::system::error_code ec;
    auto v = json::parse(line, ec);
    if (!ec && v.is_object()) out.push_back(v.as_object());
  }
  return out;
}

TEST(LemurDaemon, RotationsAreLinkedByReplaces) {
  TempDir dir("certagent-lemur-e2e");
  const fs::path lemur_dir = dir / "lemur";
  fs::create_directories(lemur_dir);
  Process::Options server_options;
  server_options.stdout_file = dir / "lemur.log";
  server_options.stderr_file = dir / "lemur.log";
  Process lemur({LEMUR_TEST_SERVER_BINARY, lemur_dir.string()}, server_options);
  ASSERT_TRUE(wait_until([&] { return fs::exists(lemur_dir / "url"); }, 20s)) << read_file(dir / "lemur.log");
  const std::string url = read_file(lemur_dir / "url");
  const std::string token = [&] {
    std::string t = read_file(lemur_dir / "lemur.jwt");
    while (!t.empty() && std::isspace(static_cast<unsigned char>(t.back()))) t.pop_back();
    return t;
  }();

  const fs::path config = dir / "certagent.yaml";
  write_file(config, "state_dir: " + (dir / "state").string() + "\n" +
                         "log: { level: debug, format: text }\n"
                         "identity: { backend: file }\n"
                         "brokers:\n"
                         "  netflix:\n"
                         "    type: lemur\n"
                         "    url: " + url + "\n" +
                         "    ca_bundle: " + (lemur_dir / "tls-ca.pem").string() + "\n" +
                         "    token_file: " + (lemur_dir / "lemur.jwt").string() + "\n" +
                         "    authority: InternalCA\n"
                         "    owner: platform-security@example.com\n"
                         "    timeout: 5s\n"
                         "defaults:\n"
                         "  lifetime: 6s\n"
                         "  max_lifetime: 1m\n"
                         "  renew_at: 0.5\n"
                         "  jitter: 0\n"
                         "  trust_bundle: " + (lemur_dir / "issuer-root.pem").string() + "\n" +
                         "certificates:\n"
                         "  - name: web\n"
                         "    broker: netflix\n"
                         "    common_name: web.internal\n"
                         "    dns_names: [web.internal, localhost]\n"
                         "    files: { dir: " + (dir / "live" / "web").string() + " }\n");

  // First boot: enroll seals the API key and deletes the file.
  auto enrolled = run({certagent_binary().string(), "enroll", "--config", config.string()}, 60s);
  ASSERT_EQ(enrolled.exit_code, 0) << enrolled.out << enrolled.err;
  EXPECT_NE(enrolled.out.find("netflix.lemur_token"), std::string::npos) << enrolled.out;
  EXPECT_FALSE(fs::exists(lemur_dir / "lemur.jwt"));

  Process::Options daemon_options;
  daemon_options.stdout_file = dir / "agent.log";
  daemon_options.stderr_file = dir / "agent.log";
  Process daemon({certagent_binary().string(), "run", "--config", config.string()}, daemon_options);

  // The first issuance at start, then one rotation every ~3 s.
  const fs::path record = lemur_dir / "issued.jsonl";
  ASSERT_TRUE(wait_until([&] { return issued(record).size() >= 3; }, 45s))
      << "lemur saw " << issued(record).size() << " issuances\n" << read_file(dir / "agent.log");
  auto certs = issued(record);
  EXPECT_EQ(certs[0].at("replaces"), json::array{});
  for (std::size_t i = 1; i < certs.size(); ++i)
    EXPECT_EQ(certs[i].at("replaces"), json::array{certs[i - 1].at("id")}) << "issuance " << i;

  // meta.json of the current generation names the certificate Lemur issued last for it.
  const fs::path meta = dir / "live" / "web" / "meta.json";
  std::string lemur_id, serial;
  ASSERT_TRUE(wait_until(
      [&] {
        boost::system::error_code ec;
        auto v = json::parse(read_file(meta), ec);
        if (ec || !v.is_object()) return false;
        const auto* state = v.as_object().if_contains("state");
        if (!state || !state->is_object() || !state->as_object().contains("lemur_id")) return false;
        lemur_id = std::string(state->as_object().at("lemur_id").as_string());
        serial = std::string(v.as_object().at("serial").as_string());
        return true;
      },
      10s))
      << read_file(meta);
  certs = issued(record);
  bool found = false;
  for (const auto& c : certs) {
    if (std::to_string(c.at("id").as_int64()) != lemur_id) continue;
    found = true;
    std::string hex(c.at("serialHex").as_string());
    for (auto& ch : hex) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    EXPECT_EQ(serial.substr(serial.find_first_not_of('0')), hex);
  }
  EXPECT_TRUE(found) << "meta.json names lemur_id " << lemur_id;

  // What it validated and serves is what Lemur's cryptography issuer makes: a leaf with only the
  // SAN extension, issued by the root itself.
  auto served = parse_pem_chain(read_file(dir / "live" / "web" / "cert.pem"));
  ASSERT_EQ(served.size(), 1u);
  EXPECT_EQ(X509_get_ext_count(served[0].get()), 1);
  EXPECT_GE(X509_get_ext_by_NID(served[0].get(), NID_subject_alt_name, -1), 0);
  auto root = parse_pem_chain(read_file(lemur_dir / "issuer-root.pem"));
  ASSERT_EQ(root.size(), 1u);
  EXPECT_EQ(X509_check_issued(root[0].get(), served[0].get()), X509_V_OK);

  EXPECT_EQ(daemon.stop(), 0);
  lemur.stop();
  const std::string log = read_file(dir / "agent.log");
  EXPECT_EQ(log.find(token), std::string::npos) << "the API key was logged";
  EXPECT_NE(log.find("event=lemur_issued"), std::string::npos) << log;
}

}  // namespace
}  // namespace certagent::test
