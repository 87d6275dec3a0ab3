// The sidecar API end to end: a real SidecarServer (gRPC) on a real Unix socket, the store on its
// io_context thread, and an independent client — Debian's python3-grpcio (sidecar_client.py),
// run as root or as other users with setpriv. Covers DESIGN.md "Sidecar API over gRPC": SDS
// with xDS versions, nonces, ACK and NACK; the SPIFFE Workload API; authorization from the
// kernel; fail-closed at expiry and removal; limits and garbage on the socket.

#include "agent/sidecar/content.h"
#include "agent/sidecar/sidecar_server.h"
#include "core/logging.h"

#include "tests/support/run_sync.h"
#include "tests/support/test_support.h"
#include "tests/unit/agent/test_material.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "envoy/service/discovery/v3/discovery.pb.h"
#include "spiffe/workload/workload.pb.h"

#include <nghttp2/nghttp2.h>
#include <poll.h>
#include <spdlog/sinks/ostream_sink.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/json.hpp>
#include <gtest/gtest.h>
#include <openssl/sha.h>

#include <algorithm>
#include <deque>
#include <future>
#include <thread>

namespace certagent {
namespace {

using namespace std::chrono_literals;
using test::TempDir;
using test::wait_until;
namespace fs = std::filesystem;
namespace json = boost::json;
namespace asio = boost::asio;

constexpr uid_t kWebUid = 4242;   // may read "web"
constexpr gid_t kApiGid = 4343;   // may read "api"
constexpr uid_t kOtherUid = 4444; // may read nothing
constexpr auto kWait = 20s;

std::string sha256_hex(std::string_view data) {
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), md);
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (unsigned char c : md) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 15]);
  }
  return out;
}

config::CertificateConfig cert_config(const std::string& name, std::vector<std::uint32_t> uids,
                                      std::vector<std::uint32_t> gids, std::string uri = {}) {
  config::CertificateConfig c;
  c.name = name;
  c.broker = "dev";
  c.common_name = name + ".internal";
  if (!uri.empty()) c.uris = {std::move(uri)};
  c.socket.allow_uids = std::move(uids);
  c.socket.allow_gids = std::move(gids);
  return c;
}

// The independent clients: Debian's python3-grpcio (sidecar_client.py) and grpc-go
// (go_client/main.go, built offline from Debian's golang-google-grpc-dev). Same command line,
// same output.
enum class ClientKind { python, go };

// One run of a client; its output is one JSON object per line.
class PyClient {
 public:
  PyClient(const fs::path& dir, const fs::path& socket, std::vector<std::string> args,
           std::vector<std::string> as_user = {}, ClientKind kind = ClientKind::python) {
    static int n = 0;
    out_ = dir / ("client-" + std::to_string(++n) + ".out");
    err_ = dir / ("client-" + std::to_string(n) + ".err");
    std::vector<std::string> argv;
    if (!as_user.empty()) {
      argv.push_back(test::require_program("setpriv").string());
      argv.insert(argv.end(), as_user.begin(), as_user.end());
    }
    if (kind == ClientKind::go) {
      // Not a skip: a missing Go toolchain at configure time is a failure here.
      EXPECT_TRUE(fs::exists(CERTAGENT_SIDECAR_GO_CLIENT))
          << "the Go client was not built: install golang-go golang-google-grpc-dev "
             "golang-google-protobuf-dev protoc-gen-go protoc-gen-go-grpc "
             "(scripts/install-deps.sh test) and re-run cmake";
      argv.insert(argv.end(), {CERTAGENT_SIDECAR_GO_CLIENT, socket.string()});
    } else {
      EXPECT_TRUE(fs::exists("/usr/bin/python3")) << "python3-grpcio needs Debian's python3";
      argv.insert(argv.end(), {"/usr/bin/python3", CERTAGENT_SIDECAR_CLIENT, socket.string()});
    }
    argv.insert(argv.end(), args.begin(), args.end());
    test::Process::Options options;
    options.env["PYTHONPATH"] = CERTAGENT_SIDECAR_PY;
    options.stdout_file = out_;
    options.stderr_file = err_;
    process_ = test::Process(argv, options);
  }

  std::vector<json::object> lines() const {
    std::vector<json::object> out;
    std::error_code ec;
    if (!fs::exists(out_, ec)) return out;
    std::istringstream in(test::read_file(out_));
    std::string line;
    while (std::getline(in, line)) {
      boost::system::error_code jec;
      auto v = json::parse(line, jec);
      if (!jec && v.is_object()) out.push_back(v.as_object());
    }
    return out;
  }
  // The messages received (not the "started" and "end" lines).
  std::vector<json::object> messages() const {
    std::vector<json::object> out;
    for (auto& l : lines())
      if (l.contains("type")) out.push_back(l);
    return out;
  }
  bool wait_messages(std::size_t n) {
    return wait_until([&] { return messages().size() >= n; }, kWait);
  }
  bool started() {
    return wait_until([&] { return !lines().empty(); }, kWait);
  }
  // The status that ended the call: "OK", "PERMISSION_DENIED", ...
  std::string wait_end() {
    std::string code;
    wait_until([&] {
      for (auto& l : lines())
        if (l.contains("end")) code = std::string(l.at("end").as_string());
      return !code.empty();
    }, kWait);
    return code;
  }
  std::string end_message() const {
    for (auto& l : lines())
      if (l.contains("message")) return std::string(l.at("message").as_string());
    return {};
  }
  std::string stderr_text() const { return test::read_file(err_); }
  void stop() { process_.stop(); }

 private:
  fs::path out_, err_;
  test::Process process_;
};

std::vector<std::string> as_uid(uid_t uid, std::vector<gid_t> groups = {}) {
  std::vector<std::string> a = {"--reuid", std::to_string(uid), "--regid", std::to_string(uid)};
  if (groups.empty()) {
    a.push_back("--clear-groups");
  } else {
    std::string g;
    for (auto x : groups) g += (g.empty() ? "" : ",") + std::to_string(x);
    a.insert(a.end(), {"--groups", g});
  }
  return a;
}

std::string str(const json::value& v) { return v.is_string() ? std::string(v.as_string()) : json::serialize(v); }

class SidecarApiTest : public ::testing::Test {
 protected:
  SidecarApiTest()
      : clock_(std::chrono::floor<std::chrono::seconds>(std::chrono::system_clock::now())),
        ca_(test::make_test_ca("Sidecar Test CA")) {
    test::quiet_logs();
  }

  config::WorkloadApiConfig api_config() {
    config::WorkloadApiConfig c;
    c.path = dir_ / "run" / "workload.sock";
    c.mode = 0666;  // other users connect; authorization is per certificate
    c.calls_per_second = 1000;
    return c;
  }

  void start(config::WorkloadApiConfig config, const Clock* clock = nullptr) {
    store_.configure({cert_config("web", {kWebUid}, {}, "spiffe://example.org/web"),
                      cert_config("api", {}, {kApiGid}, "spiffe://example.org/api"),
                      cert_config("db", {}, {})});
    for (const char* name : {"web", "api", "db"}) store_.find(name)->trust_bundle_pem = ca_.cert_pem;
    commit("web", material("web"));
    commit("api", material("api"));
    commit("db", material("db"));
    server_ = std::make_unique<sidecar::SidecarServer>(io_, config, store_, metrics_,
                                                       clock ? *clock : clock_);
    auto r = server_->start();
    ASSERT_TRUE(r) << r.error().message;
    path_ = config.path;
    thread_ = std::thread([this] { io_.run(); });
  }
  void start() { start(api_config()); }

  void TearDown() override {
    if (thread_.joinable()) {
      on_io([&] { server_->stop(); });
      guard_.reset();
      thread_.join();
    }
    server_.reset();
  }

  template <class F>
  auto on_io(F f) -> decltype(f()) {
    return test::run_on_io(io_, std::move(f));
  }

  MaterialPtr material(const std::string& name, std::chrono::seconds lifetime = 96h) {
    auto m = std::make_shared<Material>(test::make_test_material(name + ".internal", lifetime, &ca_));
    m->broker = "dev";
    return m;
  }

  // Before start() directly; afterwards on the io thread, as the daemon does.
  void commit(const std::string& name, MaterialPtr m) {
    if (!thread_.joinable()) {
      store_.commit(name, std::move(m), clock_.now());
      return;
    }
    on_io([&] { store_.commit(name, std::move(m), clock_.now()); });
  }

  MaterialPtr held(const std::string& name) {
    return on_io([&] { return store_.find(name)->material; });
  }

  PyClient client(std::vector<std::string> args, std::vector<std::string> as_user = {}) {
    return PyClient(dir_.path(), path_, std::move(args), std::move(as_user));
  }
  PyClient go_client(std::vector<std::string> args, std::vector<std::string> as_user = {}) {
    return PyClient(dir_.path(), path_, std::move(args), std::move(as_user), ClientKind::go);
  }

  double metric(std::string_view name, const Metrics::Labels& labels = {}) {
    return metrics_.value(name, labels);
  }

  TempDir dir_{"sidecar-api"};
  fs::path path_;
  ManualClock clock_;
  test::TestCa ca_;
  CertificateStore store_;
  Metrics metrics_;
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> guard_{io_.get_executor()};
  std::unique_ptr<sidecar::SidecarServer> server_;
  std::thread thread_;
};

// The resource of `name` in an SDS message, or null.
const json::object* resource(const json::object& message, const std::string& name) {
  for (const auto& r : message.at("resources").as_array())
    if (r.as_object().contains("name") && r.as_object().at("name").as_string() == name)
      return &r.as_object();
  return nullptr;
}

// ---- SDS -------------------------------------------------------------------------------------

TEST_F(SidecarApiTest, SdsStreamGetsCertificateAndTrustThenEveryRotation) {
  start();
  auto c = client({"sds", "web", "web/trust"});
  ASSERT_TRUE(c.wait_messages(1)) << c.stderr_text();
  auto first = c.messages()[0];
  EXPECT_EQ(str(first.at("type_url")), std::string(sidecar::kSecretTypeUrl));
  const auto* tls = resource(first, "web");
  ASSERT_NE(tls, nullptr) << json::serialize(first);
  auto m1 = held("web");
  EXPECT_EQ(str(tls->at("kind")), "tls");
  EXPECT_EQ(str(tls->at("leaf_sha256")), m1->sha256_hex);
  EXPECT_EQ(tls->at("chain_certs").as_int64(), 2);  // leaf, then the CA as chain
  EXPECT_EQ(str(tls->at("key_sha256")), sha256_hex(m1->key_pem.view()));
  const auto* trust = resource(first, "web/trust");
  ASSERT_NE(trust, nullptr);
  EXPECT_EQ(str(trust->at("trusted_ca_sha256")), sha256_hex(ca_.cert_pem));

  // Two rotations, each pushed with a new version and nonce.
  std::set<std::string> versions{str(first.at("version"))}, nonces{str(first.at("nonce"))};
  for (int i = 2; i <= 3; ++i) {
    commit("web", material("web"));
    ASSERT_TRUE(c.wait_messages(static_cast<std::size_t>(i))) << c.stderr_text();
    auto m = c.messages()[static_cast<std::size_t>(i - 1)];
    const auto* r = resource(m, "web");
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(str(r->at("leaf_sha256")), held("web")->sha256_hex);
    versions.insert(str(m.at("version")));
    nonces.insert(str(m.at("nonce")));
  }
  EXPECT_EQ(versions.size(), 3u);
  EXPECT_EQ(nonces.size(), 3u);
  EXPECT_EQ(on_io([&] { return server_->streams(); }), 1u);
  // ACKs are not answered and another certificate's rotation sends nothing: the next message
  // is web's next rotation.
  commit("db", material("db"));
  commit("web", material("web"));
  ASSERT_TRUE(c.wait_messages(4));
  EXPECT_EQ(str(resource(c.messages()[3], "web")->at("leaf_sha256")), held("web")->sha256_hex);
  EXPECT_GE(metric("certagent_sidecar_pushes_total", {{"api", "sds"}}), 4.0);
}

TEST_F(SidecarApiTest, SdsLeavesOutNamesTheCallerMayNotHaveOrThatDoNotExist) {
  start();
  // uid 4242 may read web, not db; "nope" does not exist.
  auto c = client({"sds", "web", "db", "nope", "db/trust"}, as_uid(kWebUid));
  ASSERT_TRUE(c.wait_messages(1)) << c.stderr_text();
  auto m = c.messages()[0];
  EXPECT_NE(resource(m, "web"), nullptr);
  EXPECT_EQ(resource(m, "db"), nullptr);
  EXPECT_EQ(resource(m, "db/trust"), nullptr);
  EXPECT_EQ(resource(m, "nope"), nullptr);
  EXPECT_EQ(m.at("resources").as_array().size(), 1u);
  EXPECT_TRUE(wait_until([&] { return metric("certagent_sidecar_rejected_total", {{"reason", "forbidden"}}) >= 2; }, kWait));

  // A group member gets "api"; the unary FetchSecrets follows the same rule.
  auto g = client({"fetch", "api", "web"}, as_uid(kOtherUid, {kApiGid}));
  ASSERT_EQ(g.wait_end(), "OK") << g.stderr_text();
  auto f = g.messages().at(0);
  ASSERT_EQ(f.at("resources").as_array().size(), 1u) << json::serialize(f);
  EXPECT_NE(resource(f, "api"), nullptr);
  // Nobody else gets anything.
  auto o = client({"fetch", "web", "api", "db"}, as_uid(kOtherUid));
  ASSERT_EQ(o.wait_end(), "OK") << o.stderr_text();
  EXPECT_TRUE(o.messages().at(0).at("resources").as_array().empty());
}

TEST_F(SidecarApiTest, SdsNackIsLoggedAndCountedAndTheStreamGoesOn) {
  start();
  auto c = client({"sds-nack", "web"});
  ASSERT_TRUE(c.wait_messages(1)) << c.stderr_text();
  EXPECT_TRUE(wait_until([&] { return metric("certagent_sidecar_sds_nacks_total") == 1; }, kWait));
  commit("web", material("web"));
  ASSERT_TRUE(c.wait_messages(2));
  EXPECT_EQ(str(resource(c.messages()[1], "web")->at("leaf_sha256")), held("web")->sha256_hex);
}

TEST_F(SidecarApiTest, SdsFailsClosedAtExpiryAndOnRemoval) {
  start();
  auto c = client({"sds", "web", "web/trust"});
  ASSERT_TRUE(c.wait_messages(1)) << c.stderr_text();
  ASSERT_NE(resource(c.messages()[0], "web"), nullptr);
  // web expires (the store says so): the next response leaves it out, keeps its trust bundle.
  on_io([&] {
    clock_.set(store_.find("web")->material->not_after + 1s);
    store_.mark_expired("web");
  });
  ASSERT_TRUE(c.wait_messages(2));
  auto expired = c.messages()[1];
  EXPECT_EQ(resource(expired, "web"), nullptr) << json::serialize(expired);
  EXPECT_NE(resource(expired, "web/trust"), nullptr);
  // A fresh web comes back (valid at the test clock, which is past the first one's expiry).
  commit("web", material("web", 200h));
  ASSERT_TRUE(c.wait_messages(3));
  EXPECT_NE(resource(c.messages()[2], "web"), nullptr);
  // A config reload removes web: it disappears from the stream.
  on_io([&] { store_.configure({cert_config("api", {}, {kApiGid}, "spiffe://example.org/api")}); });
  ASSERT_TRUE(c.wait_messages(4));
  EXPECT_TRUE(c.messages()[3].at("resources").as_array().empty()) << json::serialize(c.messages()[3]);
}

TEST_F(SidecarApiTest, DeltaSecretsIsUnimplemented) {
  start();
  auto c = client({"delta", "web"});
  EXPECT_EQ(c.wait_end(), "UNIMPLEMENTED") << c.stderr_text();
}

// ---- the SPIFFE Workload API ----------------------------------------------------------------

TEST_F(SidecarApiTest, WorkloadApiStreamsSvidsAndTwoRotations) {
  start();
  auto c = client({"svid"}, as_uid(kWebUid));
  ASSERT_TRUE(c.wait_messages(1)) << c.stderr_text();
  auto first = c.messages()[0].at("svids").as_array();
  ASSERT_EQ(first.size(), 1u);  // web only: api and db are not this caller's
  auto svid = first[0].as_object();
  EXPECT_EQ(str(svid.at("spiffe_id")), "spiffe://example.org/web");
  EXPECT_EQ(str(svid.at("hint")), "web");
  EXPECT_EQ(str(svid.at("leaf_sha256")), held("web")->sha256_hex);
  EXPECT_EQ(svid.at("chain_certs").as_int64(), 2);
  EXPECT_EQ(svid.at("bundle_certs").as_int64(), 1);
  auto key_der = sidecar::pem_key_to_der(held("web")->key_pem.view());
  ASSERT_TRUE(key_der);
  EXPECT_EQ(str(svid.at("key_sha256")), sha256_hex(key_der->view()));
  for (std::size_t i = 2; i <= 3; ++i) {
    commit("web", material("web"));
    ASSERT_TRUE(c.wait_messages(i)) << c.stderr_text();
    EXPECT_EQ(str(c.messages()[i - 1].at("svids").as_array()[0].as_object().at("leaf_sha256")),
              held("web")->sha256_hex);
  }
  // A rotation of a certificate this caller may not have sends nothing.
  commit("db", material("db"));
  commit("web", material("web"));
  ASSERT_TRUE(c.wait_messages(4));
  EXPECT_EQ(str(c.messages()[3].at("svids").as_array()[0].as_object().at("leaf_sha256")),
            held("web")->sha256_hex);

  // Root may have every SPIFFE certificate: api and web, by name (db has no SPIFFE ID).
  auto root = client({"svid"});
  ASSERT_TRUE(root.wait_messages(1)) << root.stderr_text();
  auto all = root.messages()[0].at("svids").as_array();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(str(all[0].as_object().at("hint")), "api");
  EXPECT_EQ(str(all[1].as_object().at("hint")), "web");
}

TEST_F(SidecarApiTest, WorkloadApiRefusesCallersByUidAndWithoutTheSecurityHeader) {
  start();
  auto other = client({"svid"}, as_uid(kOtherUid));
  EXPECT_EQ(other.wait_end(), "PERMISSION_DENIED") << other.stderr_text();
  EXPECT_NE(other.end_message().find("no identity"), std::string::npos) << other.end_message();
  auto bundles = client({"bundles"}, as_uid(kOtherUid));
  EXPECT_EQ(bundles.wait_end(), "PERMISSION_DENIED");
  auto no_header = client({"svid", "--no-header"});
  EXPECT_EQ(no_header.wait_end(), "INVALID_ARGUMENT");
  auto jwt = client({"jwt"});
  EXPECT_EQ(jwt.wait_end(), "UNIMPLEMENTED");
  // The group member gets its bundle.
  auto member = client({"bundles"}, as_uid(kOtherUid, {kApiGid}));
  ASSERT_TRUE(member.wait_messages(1)) << member.stderr_text();
  EXPECT_EQ(member.messages()[0].at("bundles").as_object().at("spiffe://example.org").as_int64(), 1);
  EXPECT_TRUE(wait_until([&] { return metric("certagent_sidecar_rejected_total", {{"reason", "no_identity"}}) >= 1; }, kWait));
  EXPECT_TRUE(wait_until([&] { return metric("certagent_sidecar_rejected_total", {{"reason", "missing_security_header"}}) >= 1; }, kWait));
}

TEST_F(SidecarApiTest, WorkloadApiEndsTheStreamWhenTheLastSvidExpires) {
  start();
  auto c = client({"svid"}, as_uid(kWebUid));
  ASSERT_TRUE(c.wait_messages(1)) << c.stderr_text();
  on_io([&] {
    clock_.set(store_.find("web")->material->not_after + 1s);
    store_.mark_expired("web");
  });
  EXPECT_EQ(c.wait_end(), "PERMISSION_DENIED");
  EXPECT_NE(c.end_message().find("no valid X.509-SVID"), std::string::npos) << c.end_message();
  EXPECT_EQ(c.messages().size(), 1u);
}

// With the real clock and no word from the store: the expiry timer alone ends the stream.
TEST_F(SidecarApiTest, ExpiryTimerFailsClosedWithoutTheStore) {
  SystemClock real;
  start(api_config(), &real);
  auto c = client({"svid"}, as_uid(kWebUid));
  auto s = client({"sds", "web"}, as_uid(kWebUid));
  ASSERT_TRUE(c.wait_messages(1)) << c.stderr_text();
  ASSERT_TRUE(s.wait_messages(1)) << s.stderr_text();
  commit("web", material("web", 3s));  // make_test_material: valid from now - 1h
  ASSERT_TRUE(c.wait_messages(2));
  ASSERT_TRUE(s.wait_messages(2));
  EXPECT_EQ(c.wait_end(), "PERMISSION_DENIED");
  ASSERT_TRUE(s.wait_messages(3));
  EXPECT_TRUE(s.messages()[2].at("resources").as_array().empty());
}

// ---- a second independent client: grpc-go ----------------------------------------------------

TEST_F(SidecarApiTest, GoClientSdsGetsCertificateTrustAndTwoRotations) {
  start();
  auto c = go_client({"sds", "web", "web/trust", "db"}, as_uid(kWebUid));
  ASSERT_TRUE(c.wait_messages(1)) << c.stderr_text();
  auto first = c.messages()[0];
  EXPECT_EQ(str(first.at("type_url")), std::string(sidecar::kSecretTypeUrl));
  const auto* tls = resource(first, "web");
  ASSERT_NE(tls, nullptr) << json::serialize(first);
  EXPECT_EQ(str(tls->at("kind")), "tls");
  EXPECT_EQ(str(tls->at("leaf_sha256")), held("web")->sha256_hex);
  EXPECT_EQ(str(tls->at("key_sha256")), sha256_hex(held("web")->key_pem.view()));
  const auto* trust = resource(first, "web/trust");
  ASSERT_NE(trust, nullptr);
  EXPECT_EQ(str(trust->at("trusted_ca_sha256")), sha256_hex(ca_.cert_pem));
  EXPECT_EQ(resource(first, "db"), nullptr);  // not this uid's
  std::set<std::string> versions{str(first.at("version"))};
  for (std::size_t i = 2; i <= 3; ++i) {
    commit("web", material("web"));
    ASSERT_TRUE(c.wait_messages(i)) << c.stderr_text();
    const auto m = c.messages()[i - 1];
    const auto* r = resource(m, "web");
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(str(r->at("leaf_sha256")), held("web")->sha256_hex);
    versions.insert(str(m.at("version")));
  }
  EXPECT_EQ(versions.size(), 3u);
}

TEST_F(SidecarApiTest, GoClientWorkloadApiRotationsRefusalAndExpiry) {
  start();
  auto c = go_client({"svid"}, as_uid(kWebUid));
  ASSERT_TRUE(c.wait_messages(1)) << c.stderr_text();
  auto svids = c.messages()[0].at("svids").as_array();
  ASSERT_EQ(svids.size(), 1u);
  EXPECT_EQ(str(svids[0].as_object().at("spiffe_id")), "spiffe://example.org/web");
  EXPECT_EQ(str(svids[0].as_object().at("leaf_sha256")), held("web")->sha256_hex);
  auto key_der = sidecar::pem_key_to_der(held("web")->key_pem.view());
  ASSERT_TRUE(key_der);
  EXPECT_EQ(str(svids[0].as_object().at("key_sha256")), sha256_hex(key_der->view()));
  for (std::size_t i = 2; i <= 3; ++i) {
    commit("web", material("web"));
    ASSERT_TRUE(c.wait_messages(i)) << c.stderr_text();
    EXPECT_EQ(str(c.messages()[i - 1].at("svids").as_array()[0].as_object().at("leaf_sha256")),
              held("web")->sha256_hex);
  }
  // Refused by uid.
  auto other = go_client({"svid"}, as_uid(kOtherUid));
  EXPECT_EQ(other.wait_end(), "PERMISSION_DENIED") << other.stderr_text();
  EXPECT_NE(other.end_message().find("no identity"), std::string::npos) << other.end_message();
  // The group member gets the bundle of its trust domain.
  auto member = go_client({"bundles"}, as_uid(kOtherUid, {kApiGid}));
  ASSERT_TRUE(member.wait_messages(1)) << member.stderr_text();
  EXPECT_EQ(member.messages()[0].at("bundles").as_object().at("spiffe://example.org").as_int64(), 1);
  // Fail-closed at expiry: the stream ends as the standard says.
  on_io([&] {
    clock_.set(store_.find("web")->material->not_after + 1s);
    store_.mark_expired("web");
  });
  EXPECT_EQ(c.wait_end(), "PERMISSION_DENIED") << c.stderr_text();
  EXPECT_NE(c.end_message().find("no valid X.509-SVID"), std::string::npos) << c.end_message();
  EXPECT_EQ(c.messages().size(), 3u);
}

// ---- limits and garbage ------------------------------------------------------------------------

int connect_raw(const fs::path& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// Reads until the server closes the connection; false if it is still open at the deadline.
bool closed_by_server(int fd, std::chrono::milliseconds deadline) {
  timeval tv{};
  tv.tv_sec = static_cast<long>(deadline.count() / 1000);
  tv.tv_usec = static_cast<long>((deadline.count() % 1000) * 1000);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char buf[4096];
  while (true) {
    const auto n = ::recv(fd, buf, sizeof buf, 0);
    if (n == 0) return true;
    if (n < 0) return errno == ECONNRESET;
  }
}


// ---- the HTTP/2 transport, byte by byte: nghttp2's client session ------------------------------

// A gRPC client at the HTTP/2 level (nghttp2's client session over a blocking socket), for what
// gRPC libraries never send: DATA frames cut where we want, a client that never reads, a wrong
// content-type. Each request's DATA frames are exactly the chunks given.
class H2Client {
 public:
  struct Stream {
    std::map<std::string, std::string> headers;   // the response's first HEADERS
    std::map<std::string, std::string> trailers;  // the second, if any
    bool trailers_only{false};                    // the first HEADERS ended the stream
    std::string data;
    std::size_t data_frames{0};
    bool closed{false};
    std::uint32_t reset_code{0};
    std::deque<std::string> chunks;  // DATA frames still to send
    bool end{false};                 // END_STREAM after the last chunk
  };

  explicit H2Client(const fs::path& path) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    EXPECT_EQ(::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    nghttp2_session_callbacks* cb = nullptr;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_header_callback(
        cb, [](nghttp2_session*, const nghttp2_frame* f, const uint8_t* n, size_t nl, const uint8_t* v,
               size_t vl, uint8_t, void* u) {
          auto& s = static_cast<H2Client*>(u)->streams_[f->hd.stream_id];
          auto& into = f->headers.cat == NGHTTP2_HCAT_HEADERS ? s.trailers : s.headers;
          into[std::string(reinterpret_cast<const char*>(n), nl)] = std::string(reinterpret_cast<const char*>(v), vl);
          return 0;
        });
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, [](nghttp2_session*, const nghttp2_frame* f, void* u) {
      auto* self = static_cast<H2Client*>(u);
      if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_RESPONSE &&
          (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        self->streams_[f->hd.stream_id].trailers_only = true;
      }
      if (f->hd.type == NGHTTP2_DATA) ++self->streams_[f->hd.stream_id].data_frames;
      if (f->hd.type == NGHTTP2_GOAWAY) self->goaway_ = true;
      return 0;
    });
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(
        cb, [](nghttp2_session*, uint8_t, int32_t id, const uint8_t* d, size_t n, void* u) {
          static_cast<H2Client*>(u)->streams_[id].data.append(reinterpret_cast<const char*>(d), n);
          return 0;
        });
    nghttp2_session_callbacks_set_on_stream_close_callback(
        cb, [](nghttp2_session*, int32_t id, uint32_t code, void* u) {
          auto& s = static_cast<H2Client*>(u)->streams_[id];
          s.closed = true;
          s.reset_code = code;
          return 0;
        });
    nghttp2_session_client_new(&session_, cb, this);
    nghttp2_session_callbacks_del(cb);
    nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, nullptr, 0);
  }
  ~H2Client() {
    nghttp2_session_del(session_);
    if (fd_ >= 0) ::close(fd_);
  }

  // A call; `frames`: the request's DATA frames, byte for byte.
  std::int32_t call(const std::string& path, std::vector<std::string> frames, bool end,
                    std::vector<std::pair<std::string, std::string>> extra = {},
                    const std::string& content_type = "application/grpc") {
    std::vector<std::pair<std::string, std::string>> h = {
        {":method", "POST"}, {":scheme", "http"}, {":authority", "localhost"}, {":path", path},
        {"content-type", content_type}, {"te", "trailers"}};
    h.insert(h.end(), extra.begin(), extra.end());
    std::vector<nghttp2_nv> nva;
    for (auto& [n, v] : h) {
      nva.push_back({reinterpret_cast<uint8_t*>(n.data()), reinterpret_cast<uint8_t*>(v.data()),
                     n.size(), v.size(), NGHTTP2_NV_FLAG_NONE});
    }
    nghttp2_data_provider provider{};
    provider.read_callback = [](nghttp2_session*, int32_t id, uint8_t* buf, size_t len, uint32_t* flags,
                                nghttp2_data_source*, void* u) -> ssize_t {
      auto& s = static_cast<H2Client*>(u)->streams_[id];
      if (s.chunks.empty()) {
        if (s.end) {
          *flags |= NGHTTP2_DATA_FLAG_EOF;
          return 0;
        }
        return NGHTTP2_ERR_DEFERRED;
      }
      std::string& c = s.chunks.front();
      const std::size_t k = std::min(len, c.size());
      std::memcpy(buf, c.data(), k);
      c.erase(0, k);
      if (c.empty()) s.chunks.pop_front();
      if (s.chunks.empty() && s.end) *flags |= NGHTTP2_DATA_FLAG_EOF;
      return static_cast<ssize_t>(k);
    };
    const auto id = nghttp2_submit_request(session_, nullptr, nva.data(), nva.size(), &provider, nullptr);
    auto& s = streams_[id];
    s.chunks.assign(frames.begin(), frames.end());
    s.end = end;
    return id;
  }

  // Sends what the session has (all of it, blocking).
  void send_all() {
    for (;;) {
      const uint8_t* data = nullptr;
      const auto n = nghttp2_session_mem_send(session_, &data);
      if (n <= 0) return;
      std::size_t done = 0;
      while (done < static_cast<std::size_t>(n)) {
        const auto w = ::send(fd_, data + done, static_cast<std::size_t>(n) - done, MSG_NOSIGNAL);
        if (w <= 0) return;
        done += static_cast<std::size_t>(w);
      }
    }
  }

  // Sends and receives until `done()` or the deadline; false at the deadline.
  template <class F>
  bool pump(F done, std::chrono::milliseconds deadline = std::chrono::duration_cast<std::chrono::milliseconds>(kWait)) {
    const auto end = std::chrono::steady_clock::now() + deadline;
    while (!done()) {
      send_all();
      if (std::chrono::steady_clock::now() > end) return false;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) > 0) {
        char buf[16384];
        const auto n = ::recv(fd_, buf, sizeof buf, 0);
        if (n <= 0) {
          eof_ = true;
          return done();
        }
        nghttp2_session_mem_recv(session_, reinterpret_cast<const uint8_t*>(buf), static_cast<std::size_t>(n));
      }
    }
    return true;
  }

  // RST_STREAM CANCEL, as a gRPC client cancels a call.
  void reset(std::int32_t id) {
    nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL);
    send_all();
  }

  Stream& stream(std::int32_t id) { return streams_[id]; }
  int fd() const { return fd_; }
  bool eof() const { return eof_; }

 private:
  int fd_{-1};
  nghttp2_session* session_{nullptr};
  std::map<std::int32_t, Stream> streams_;
  bool goaway_{false};
  bool eof_{false};
};

std::string grpc_frame(const google::protobuf::MessageLite& m) {
  const std::string body = m.SerializeAsString();
  const auto n = static_cast<std::uint32_t>(body.size());
  return std::string{0, static_cast<char>(n >> 24), static_cast<char>(n >> 16),
                     static_cast<char>(n >> 8), static_cast<char>(n)} + body;
}

// The gRPC messages in a stream's DATA bytes.
std::vector<std::string> grpc_messages(const std::string& data) {
  std::vector<std::string> out;
  std::size_t at = 0;
  while (data.size() - at >= 5) {
    const auto* p = reinterpret_cast<const unsigned char*>(data.data() + at);
    const std::size_t n = (std::size_t{p[1]} << 24) | (std::size_t{p[2]} << 16) | (std::size_t{p[3]} << 8) | p[4];
    if (data.size() - at - 5 < n) break;
    out.push_back(data.substr(at + 5, n));
    at += 5 + n;
  }
  return out;
}

envoy::service::discovery::v3::DiscoveryRequest sds_request(std::vector<std::string> names,
                                                            const std::string& nonce = {}) {
  envoy::service::discovery::v3::DiscoveryRequest r;
  r.set_type_url(std::string(sidecar::kSecretTypeUrl));
  for (auto& n : names) r.add_resource_names(n);
  r.set_response_nonce(nonce);
  return r;
}

std::vector<std::string> secret_names(const std::string& message) {
  envoy::service::discovery::v3::DiscoveryResponse r;
  EXPECT_TRUE(r.ParseFromString(message));
  std::vector<std::string> out;
  for (const auto& any : r.resources()) {
    envoy::extensions::transport_sockets::tls::v3::Secret secret;
    any.UnpackTo(&secret);
    out.push_back(secret.name());
  }
  return out;
}

constexpr const char* kStreamSecrets = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets";
constexpr const char* kFetchX509Svid = "/SpiffeWorkloadAPI/FetchX509SVID";

TEST_F(SidecarApiTest, RequestMessagesSplitOverDataFramesOrSharingOneAreEachRead) {
  start();
  H2Client h2(path_);
  // One request cut into three DATA frames: 2 bytes, the rest of the prefix and a byte, the rest.
  const std::string first = grpc_frame(sds_request({"web"}));
  const auto split = h2.call(kStreamSecrets, {first.substr(0, 2), first.substr(2, 4), first.substr(6)}, false);
  ASSERT_TRUE(h2.pump([&] { return grpc_messages(h2.stream(split).data).size() >= 1; }));
  EXPECT_EQ(h2.stream(split).headers[":status"], "200");
  EXPECT_EQ(h2.stream(split).headers["content-type"], "application/grpc");
  auto m1 = grpc_messages(h2.stream(split).data)[0];
  EXPECT_EQ(secret_names(m1), std::vector<std::string>{"web"});
  envoy::service::discovery::v3::DiscoveryResponse r1;
  ASSERT_TRUE(r1.ParseFromString(m1));
  EXPECT_FALSE(r1.version_info().empty());
  EXPECT_EQ(r1.nonce(), "1");

  // Two requests in one DATA frame, on another stream: the first asks for web, the second (its
  // ACK, naming web/trust too) changes the names. Both are read: the stream ends up with both
  // names (the first response, not yet written when the second came, is replaced: every
  // response is a complete state).
  envoy::service::discovery::v3::DiscoveryRequest ack = sds_request({"web", "web/trust"}, "1");
  const auto both = h2.call(kStreamSecrets, {grpc_frame(sds_request({"web"})) + grpc_frame(ack)}, false);
  auto last_names = [&] {
    auto messages = grpc_messages(h2.stream(both).data);
    if (messages.empty()) return std::vector<std::string>{};
    auto names = secret_names(messages.back());
    std::sort(names.begin(), names.end());
    return names;
  };
  ASSERT_TRUE(h2.pump([&] { return last_names().size() == 2; })) << h2.stream(both).data.size();
  EXPECT_EQ(last_names(), (std::vector<std::string>{"web", "web/trust"}));
  EXPECT_EQ(on_io([&] { return server_->streams(); }), 2u);
}

TEST_F(SidecarApiTest, ErrorsBeforeAnyMessageAreTrailersOnlyAndNonGrpcIsHttp415) {
  start();
  H2Client h2(path_);
  const std::string empty("\0\0\0\0\0", 5);
  const auto unknown = h2.call("/no.Such/Method", {empty}, true);
  const auto jwt = h2.call("/SpiffeWorkloadAPI/FetchJWTSVID", {empty}, true, {{"workload.spiffe.io", "true"}});
  const auto no_header = h2.call(kFetchX509Svid, {empty}, true);
  const auto text = h2.call(kFetchX509Svid, {empty}, true, {{"workload.spiffe.io", "true"}}, "text/plain");
  const auto gzip = h2.call(kFetchX509Svid, {empty}, true,
                            {{"workload.spiffe.io", "true"}, {"grpc-encoding", "gzip"}});
  const std::string compressed("\1\0\0\0\0", 5);
  const auto flagged = h2.call(kFetchX509Svid, {compressed}, true, {{"workload.spiffe.io", "true"}});
  ASSERT_TRUE(h2.pump([&] {
    for (auto id : {unknown, jwt, no_header, text, gzip, flagged})
      if (!h2.stream(id).closed) return false;
    return true;
  }));
  for (auto [id, status] : {std::pair{unknown, "12"}, {jwt, "12"}, {no_header, "3"}, {gzip, "12"}}) {
    auto& s = h2.stream(id);
    EXPECT_TRUE(s.trailers_only) << id;
    EXPECT_EQ(s.headers[":status"], "200");
    EXPECT_EQ(s.headers["content-type"], "application/grpc");
    EXPECT_EQ(s.headers["grpc-status"], status) << id << " " << s.headers["grpc-message"];
    EXPECT_TRUE(s.data.empty());
  }
  // grpc-message is percent-encoded where needed, readable here.
  EXPECT_NE(h2.stream(no_header).headers["grpc-message"].find("workload.spiffe.io"), std::string::npos);
  EXPECT_EQ(h2.stream(text).headers[":status"], "415");
  EXPECT_EQ(h2.stream(text).headers.count("grpc-status"), 0u);
  // A compressed message with no encoding we accept: INTERNAL, as the gRPC spec says.
  EXPECT_EQ(h2.stream(flagged).headers["grpc-status"], "13");
  // A request's own text quoted back in a status is cut short (found by fuzz_sidecar): a 10 KB
  // type_url gets INVALID_ARGUMENT with a short grpc-message, not a 10 KB trailer.
  auto wrong = sds_request({"web"});
  wrong.set_type_url(std::string(10'000, 'x'));
  const auto long_type = h2.call(kStreamSecrets, {grpc_frame(wrong)}, true);
  ASSERT_TRUE(h2.pump([&] { return h2.stream(long_type).closed; }));
  EXPECT_EQ(h2.stream(long_type).headers["grpc-status"], "3");
  EXPECT_LT(h2.stream(long_type).headers["grpc-message"].size(), 300u);
  // The connection is still good: a call on it gets its SVIDs.
  const auto good = h2.call(kFetchX509Svid, {empty}, true, {{"workload.spiffe.io", "true"}});
  ASSERT_TRUE(h2.pump([&] { return grpc_messages(h2.stream(good).data).size() >= 1; }));
  X509SVIDResponse svids;
  ASSERT_TRUE(svids.ParseFromString(grpc_messages(h2.stream(good).data)[0]));
  EXPECT_EQ(svids.svids_size(), 2);  // root: api and web
}

TEST_F(SidecarApiTest, AStreamWithAGrpcTimeoutEndsWithDeadlineExceededWhenItPasses) {
  start();
  H2Client h2(path_);
  const std::string empty("\0\0\0\0\0", 5);
  auto svid_call = [&](std::string timeout) {
    std::vector<std::pair<std::string, std::string>> headers = {{"workload.spiffe.io", "true"}};
    if (!timeout.empty()) headers.emplace_back("grpc-timeout", timeout);
    return h2.call(kFetchX509Svid, {empty}, true, headers);
  };
  const auto timed = svid_call("300m");
  const auto untimed = svid_call("");
  const auto far = svid_call("99999999H");  // 11,000 years: as good as none
  const auto letter = svid_call("5x");
  const auto nine_digits = svid_call("123456789m");
  const auto no_digits = svid_call("S");
  // A bidirectional SDS stream whose client keeps its side open.
  const auto sds = h2.call(kStreamSecrets, {grpc_frame(sds_request({"web"}))}, false, {{"grpc-timeout", "200m"}});
  ASSERT_TRUE(h2.pump([&] { return h2.stream(timed).closed && h2.stream(sds).closed; }));
  for (auto id : {timed, sds}) {
    auto& st = h2.stream(id);
    EXPECT_EQ(grpc_messages(st.data).size(), 1u) << id;  // served, then ended
    EXPECT_EQ(st.trailers["grpc-status"], "4") << id << " " << st.trailers["grpc-message"];
  }
  for (auto id : {letter, nine_digits, no_digits}) {
    auto& st = h2.stream(id);
    EXPECT_TRUE(st.closed) << id;
    EXPECT_EQ(st.headers["grpc-status"], "13") << id;
    EXPECT_EQ(st.headers["grpc-message"], "malformed grpc-timeout") << id;
  }
  // The others go on, on the same connection, and get the next rotation.
  EXPECT_FALSE(h2.stream(untimed).closed);
  EXPECT_FALSE(h2.stream(far).closed);
  EXPECT_EQ(on_io([&] { return server_->streams(); }), 2u);
  commit("web", material("web"));
  ASSERT_TRUE(h2.pump([&] {
    return grpc_messages(h2.stream(untimed).data).size() == 2 && grpc_messages(h2.stream(far).data).size() == 2;
  }));
}

TEST_F(SidecarApiTest, AClientThatNeverAnswersPingsIsDroppedAndLoggedOthersCarryOn) {
  auto config = api_config();
  config.keepalive = 300ms;
  start(config);
  std::ostringstream captured;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(captured);
  auto logger = log::get("sidecar");
  const auto level = logger->level();
  on_io([&] {
    logger->sinks().push_back(sink);
    logger->set_level(spdlog::level::warn);
  });
  auto c = client({"sds", "web"});  // grpcio answers PINGs
  ASSERT_TRUE(c.wait_messages(1)) << c.stderr_text();
  // A valid HTTP/2 client with an open stream that stops reading: its PINGs go unanswered.
  H2Client silent(path_);
  const auto id = silent.call(kFetchX509Svid, {std::string("\0\0\0\0\0", 5)}, true, {{"workload.spiffe.io", "true"}});
  silent.send_all();
  EXPECT_TRUE(wait_until([&] {
    return metric("certagent_sidecar_rejected_total", {{"reason", "keepalive_timeout"}}) >= 1;
  }, kWait));
  EXPECT_TRUE(closed_by_server(silent.fd(), kWait));
  EXPECT_TRUE(wait_until([&] { return on_io([&] { return server_->streams(); }) == 1u; }, kWait));
  (void)id;
  // The grpcio stream outlived it, through several keep-alive rounds, and still gets rotations.
  commit("web", material("web"));
  ASSERT_TRUE(c.wait_messages(2));
  const std::string log = on_io([&] {
    logger->sinks().pop_back();
    logger->set_level(level);
    return captured.str();
  });
  EXPECT_NE(log.find("event=sidecar_connection_dropped reason=keepalive_timeout pid=" +
                     std::to_string(::getpid()) + " uid=" + std::to_string(::getuid())),
            std::string::npos) << log;
}

TEST_F(SidecarApiTest, GarbageAndBrokenFramesAreLoggedWithTheCaller) {
  start();
  std::ostringstream captured;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(captured);
  auto logger = log::get("sidecar");
  const auto level = logger->level();
  on_io([&] {
    logger->sinks().push_back(sink);
    logger->set_level(spdlog::level::warn);
  });
  int fd = connect_raw(path_);
  const std::string junk = "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not HTTP/2 at all";  // TLS-ish
  ASSERT_GT(::send(fd, junk.data(), junk.size(), MSG_NOSIGNAL), 0);
  EXPECT_TRUE(closed_by_server(fd, kWait));
  ::close(fd);
  // A valid preface, then a DATA frame on stream 0 (a connection error).
  fd = connect_raw(path_);
  const std::string preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  const std::string settings("\x00\x00\x00\x04\x00\x00\x00\x00\x00", 9);
  const std::string data0("\x00\x00\x01\x00\x00\x00\x00\x00\x00z", 10);
  const std::string bytes = preface + settings + data0;
  ASSERT_GT(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL), 0);
  EXPECT_TRUE(closed_by_server(fd, kWait));
  ::close(fd);
  EXPECT_TRUE(wait_until([&] {
    return metric("certagent_sidecar_rejected_total", {{"reason", "not_http2"}}) >= 1 &&
           metric("certagent_sidecar_rejected_total", {{"reason", "protocol_error"}}) >= 1;
  }, kWait));
  const std::string log = on_io([&] {
    logger->sinks().pop_back();
    logger->set_level(level);
    return captured.str();
  });
  const std::string who = " pid=" + std::to_string(::getpid()) + " uid=" + std::to_string(::getuid());
  EXPECT_NE(log.find("event=sidecar_connection_dropped reason=not_http2" + who), std::string::npos) << log;
  EXPECT_NE(log.find("event=sidecar_connection_dropped reason=protocol_error" + who), std::string::npos) << log;
}

TEST_F(SidecarApiTest, ClientResetEndsTheStreamAndReleasesItsLimit) {
  auto config = api_config();
  config.max_streams_per_uid = 1;
  start(config);
  H2Client h2(path_);
  const std::string empty("\0\0\0\0\0", 5);
  const auto first = h2.call(kFetchX509Svid, {empty}, true, {{"workload.spiffe.io", "true"}});
  ASSERT_TRUE(h2.pump([&] { return !h2.stream(first).data.empty(); }));
  EXPECT_EQ(on_io([&] { return server_->streams(); }), 1u);
  // The client cancels (RST_STREAM CANCEL): the server forgets the stream and its slot.
  h2.reset(first);
  ASSERT_TRUE(wait_until([&] {
    h2.pump([&] { return true; }, 10ms);
    return on_io([&] { return server_->streams(); }) == 0u;
  }, kWait));
  const auto second = h2.call(kFetchX509Svid, {empty}, true, {{"workload.spiffe.io", "true"}});
  ASSERT_TRUE(h2.pump([&] { return !h2.stream(second).data.empty(); }));
  EXPECT_FALSE(h2.stream(second).closed);
}

TEST_F(SidecarApiTest, GarbageOnTheSocketIsDroppedAndOthersCarryOn) {
  start();
  auto c = client({"sds", "web"});
  ASSERT_TRUE(c.wait_messages(1)) << c.stderr_text();
  int fd = connect_raw(path_);
  ASSERT_GE(fd, 0);
  const std::string junk = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(::send(fd, junk.data(), junk.size(), MSG_NOSIGNAL), static_cast<ssize_t>(junk.size()));
  EXPECT_TRUE(closed_by_server(fd, kWait));
  ::close(fd);
  // A broken HTTP/2 frame after a valid preface.
  fd = connect_raw(path_);
  const std::string preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  const std::string bad_frame("\x00\x00\x04\x09\x00\x00\x00\x00\x01zzzz", 13);  // CONTINUATION first
  ASSERT_GT(::send(fd, (preface + bad_frame).data(), preface.size() + bad_frame.size(), MSG_NOSIGNAL), 0);
  EXPECT_TRUE(closed_by_server(fd, kWait));
  ::close(fd);
  commit("web", material("web"));
  ASSERT_TRUE(c.wait_messages(2));
}

TEST_F(SidecarApiTest, ConnectionsWithoutCallsAreClosedAfterIdleTimeout) {
  auto config = api_config();
  config.idle_timeout = 500ms;
  start(config);
  int fd = connect_raw(path_);
  ASSERT_GE(fd, 0);
  EXPECT_TRUE(closed_by_server(fd, kWait));
  ::close(fd);
}

TEST_F(SidecarApiTest, ConnectionLimitRefusesAtOnceAndForgetsClosedConnections) {
  auto config = api_config();
  config.max_connections_per_uid = 2;
  start(config);
  const int a = connect_raw(path_);
  const int b = connect_raw(path_);
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);
  // The third of this uid is closed at once, and counted.
  const int c = connect_raw(path_);
  EXPECT_TRUE(closed_by_server(c, kWait));
  ::close(c);
  EXPECT_TRUE(wait_until([&] {
    return metric("certagent_sidecar_rejected_total", {{"reason", "max_connections_per_uid"}}) >= 1;
  }, kWait));
  // Once the first two are gone, a new connection is admitted again (closed connections are
  // forgotten when a limit would otherwise refuse).
  ::close(a);
  ::close(b);
  EXPECT_TRUE(wait_until([&] {
    const int probe = connect_raw(path_);
    const bool refused = closed_by_server(probe, 300ms);
    ::close(probe);
    return !refused;
  }, kWait));
}

TEST_F(SidecarApiTest, StreamLimitsAnswerUnavailable) {
  auto config = api_config();
  config.max_streams_per_uid = 1;
  start(config);
  auto first = client({"svid"}, as_uid(kWebUid));
  ASSERT_TRUE(first.wait_messages(1)) << first.stderr_text();
  auto second = client({"svid"}, as_uid(kWebUid));
  EXPECT_EQ(second.wait_end(), "UNAVAILABLE");
  EXPECT_NE(second.end_message().find("max_streams_per_uid"), std::string::npos);
  // Another uid is not affected.
  auto root = client({"svid"});
  ASSERT_TRUE(root.wait_messages(1)) << root.stderr_text();
}

TEST_F(SidecarApiTest, StopEndsStreamsAndRemovesTheSocket) {
  start();
  auto c = client({"sds", "web"});
  ASSERT_TRUE(c.wait_messages(1)) << c.stderr_text();
  on_io([&] { server_->stop(); });
  EXPECT_EQ(c.wait_end(), "UNAVAILABLE");
  EXPECT_FALSE(fs::exists(fs::symlink_status(path_)));
}


// ---- the HTTP/2 layer itself, frame by frame ----------------------------------------------

// A client writing frames by hand and reading the server's, for what no library sends: floods,
// malformed requests and header blocks, tiny windows. Header blocks are encoded by nghttp2's
// HPACK deflater (an independent encoder).
class RawH2 {
 public:
  struct Frame {
    std::uint8_t type{0};
    std::uint8_t flags{0};
    std::uint32_t stream{0};
    std::string payload;
  };

  // Connects and sends the preface and SETTINGS (entries: id, value).
  RawH2(const fs::path& path, std::vector<std::pair<std::uint16_t, std::uint32_t>> settings = {})
      : fd_(connect_raw(path)) {
    nghttp2_hd_deflate_new(&deflater_, 4096);
    std::string s;
    for (auto [id, value] : settings) {
      s.push_back(static_cast<char>(id >> 8));
      s.push_back(static_cast<char>(id));
      s += u32(value);
    }
    send(std::string("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") + frame(4, 0, 0, s));
  }
  ~RawH2() {
    nghttp2_hd_deflate_del(deflater_);
    if (fd_ >= 0) ::close(fd_);
  }

  static std::string u32(std::uint32_t v) {
    return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
            static_cast<char>(v)};
  }
  static std::string frame(std::uint8_t type, std::uint8_t flags, std::uint32_t stream,
                           const std::string& payload) {
    const auto n = static_cast<std::uint32_t>(payload.size());
    return std::string{static_cast<char>(n >> 16), static_cast<char>(n >> 8), static_cast<char>(n),
                       static_cast<char>(type), static_cast<char>(flags)} +
           u32(stream) + payload;
  }
  // A header block for a gRPC request (plus `extra`), HPACK-encoded by nghttp2.
  std::string block(const std::string& path,
                    std::vector<std::pair<std::string, std::string>> extra = {}) {
    std::vector<std::pair<std::string, std::string>> h = {
        {":method", "POST"}, {":scheme", "http"}, {":authority", "localhost"}, {":path", path},
        {"content-type", "application/grpc"}, {"te", "trailers"}, {"workload.spiffe.io", "true"}};
    h.insert(h.end(), extra.begin(), extra.end());
    std::vector<nghttp2_nv> nva;
    for (auto& [n, v] : h) {
      nva.push_back({reinterpret_cast<uint8_t*>(n.data()), reinterpret_cast<uint8_t*>(v.data()),
                     n.size(), v.size(), NGHTTP2_NV_FLAG_NONE});
    }
    std::string out(nghttp2_hd_deflate_bound(deflater_, nva.data(), nva.size()), '\0');
    const auto n = nghttp2_hd_deflate_hd(deflater_, reinterpret_cast<uint8_t*>(out.data()), out.size(),
                                         nva.data(), nva.size());
    out.resize(n < 0 ? 0 : static_cast<std::size_t>(n));
    return out;
  }
  // A FetchX509SVID call on `stream`: HEADERS, then its one (empty) message ending the stream.
  // A block past 16 KiB goes as HEADERS and CONTINUATION frames.
  void svid_call(std::uint32_t stream, std::vector<std::pair<std::string, std::string>> extra = {}) {
    const std::string b = block("/SpiffeWorkloadAPI/FetchX509SVID", std::move(extra));
    std::string out;
    for (std::size_t at = 0; at < b.size(); at += 16384) {
      const bool last = at + 16384 >= b.size();
      out += frame(at == 0 ? 1 : 9, last ? 0x4 : 0, stream, b.substr(at, 16384));
    }
    send(out + frame(0, 0x1, stream, std::string(5, '\0')));
  }

  void send(const std::string& bytes) {
    std::size_t done = 0;
    while (done < bytes.size()) {
      const auto n = ::send(fd_, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
      if (n <= 0) return;  // the server closed: what it sent is still read
      done += static_cast<std::size_t>(n);
    }
  }

  // Reads frames until `done(frames)` or the server closes or the deadline; done's last answer.
  template <class F>
  bool read_until(F done, std::chrono::milliseconds deadline = std::chrono::duration_cast<std::chrono::milliseconds>(kWait)) {
    const auto end = std::chrono::steady_clock::now() + deadline;
    while (!done(frames_)) {
      if (eof_ || std::chrono::steady_clock::now() > end) return false;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      char buf[16384];
      const auto n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) {
        eof_ = true;
        continue;
      }
      in_.append(buf, static_cast<std::size_t>(n));
      while (in_.size() >= 9) {
        const auto* h = reinterpret_cast<const unsigned char*>(in_.data());
        const std::size_t len = (std::size_t{h[0]} << 16) | (std::size_t{h[1]} << 8) | h[2];
        if (in_.size() < 9 + len) break;
        Frame f;
        f.type = h[3];
        f.flags = h[4];
        f.stream = ((std::uint32_t{h[5]} << 24) | (std::uint32_t{h[6]} << 16) |
                    (std::uint32_t{h[7]} << 8) | h[8]) & 0x7fffffffu;
        f.payload = in_.substr(9, len);
        in_.erase(0, 9 + len);
        frames_.push_back(std::move(f));
      }
    }
    return true;
  }
  bool closed(std::chrono::milliseconds deadline = std::chrono::duration_cast<std::chrono::milliseconds>(kWait)) {
    read_until([&](const auto&) { return eof_; }, deadline);
    return eof_;
  }

  const std::vector<Frame>& frames() const { return frames_; }
  static std::uint32_t code_of(const Frame& f) {  // RST_STREAM's code, GOAWAY's
    const auto* p = reinterpret_cast<const unsigned char*>(f.payload.data()) + (f.type == 7 ? 4 : 0);
    return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
  }
  // The first frame of `type` on `stream`, if any.
  const Frame* find(std::uint8_t type, std::uint32_t stream) const {
    for (const auto& f : frames_) {
      if (f.type == type && f.stream == stream) return &f;
    }
    return nullptr;
  }
  std::string data(std::uint32_t stream) const {
    std::string out;
    for (const auto& f : frames_) {
      if (f.type == 0 && f.stream == stream) out += f.payload;
    }
    return out;
  }

 private:
  int fd_{-1};
  nghttp2_hd_deflater* deflater_{nullptr};
  std::string in_;
  std::vector<Frame> frames_;
  bool eof_{false};
};

constexpr std::uint8_t kData = 0, kHeaders = 1, kRstStream = 3, kSettings = 4, kPing = 6,
                       kGoaway = 7, kWindowUpdate = 8;

TEST_F(SidecarApiTest, ServerSettingsComeFirstAndPingsAreAnsweredWithTheirData) {
  start();
  RawH2 c(path_);
  c.send(RawH2::frame(kPing, 0, 0, "certagnt"));
  ASSERT_TRUE(c.read_until([](const auto& f) {
    return std::any_of(f.begin(), f.end(), [](const auto& x) { return x.type == kPing; });
  }));
  ASSERT_FALSE(c.frames().empty());
  EXPECT_EQ(c.frames().front().type, kSettings);
  EXPECT_EQ(c.frames().front().flags & 1, 0);
  const auto* ack = c.find(kPing, 0);
  ASSERT_NE(ack, nullptr);
  EXPECT_EQ(ack->flags, 1);
  EXPECT_EQ(ack->payload, "certagnt");
}

TEST_F(SidecarApiTest, AMessageWaitsForTheClientsWindowAndArrivesWhole) {
  start();
  // Reference: the message as a client with the default window gets it.
  RawH2 wide(path_);
  wide.svid_call(1);
  ASSERT_TRUE(wide.read_until([&](const auto&) { return grpc_messages(wide.data(1)).size() == 1; }));
  const std::string message = grpc_messages(wide.data(1)).at(0);
  ASSERT_GT(message.size(), 200u);
  // A stream window of 100 bytes: at most 100 bytes, then nothing until a WINDOW_UPDATE.
  RawH2 narrow(path_, {{0x4, 100}});
  narrow.svid_call(1);
  ASSERT_TRUE(narrow.read_until([&](const auto&) { return narrow.data(1).size() >= 100; }));
  EXPECT_FALSE(narrow.read_until([&](const auto&) { return narrow.data(1).size() > 100; }, 300ms));
  EXPECT_EQ(narrow.data(1).size(), 100u);
  // Opening it bit by bit lets the rest through, the same bytes.
  while (grpc_messages(narrow.data(1)).empty()) {
    const auto had = narrow.data(1).size();
    narrow.send(RawH2::frame(kWindowUpdate, 0, 1, RawH2::u32(1000)));
    ASSERT_TRUE(narrow.read_until([&](const auto&) { return narrow.data(1).size() > had; }));
    EXPECT_LE(narrow.data(1).size(), had + 1000);
  }
  EXPECT_EQ(grpc_messages(narrow.data(1)).at(0), message);
  // Every DATA frame kept within the 16 KiB the client allows by default.
  for (const auto& f : narrow.frames()) EXPECT_LE(f.payload.size(), 16384u);
}

TEST_F(SidecarApiTest, AMalformedRequestIsResetAndTheConnectionCarriesOn) {
  start();
  RawH2 c(path_);
  c.svid_call(1, {{"Upper-Case", "x"}});               // names must be lower case
  c.svid_call(3, {{"connection", "keep-alive"}});      // connection-specific
  c.svid_call(5, {{std::string(20 * 1024, 'a'), "b"}});  // past SETTINGS_MAX_HEADER_LIST_SIZE
  c.svid_call(7);
  ASSERT_TRUE(c.read_until([&](const auto&) { return grpc_messages(c.data(7)).size() == 1; }));
  for (std::uint32_t id : {1u, 3u}) {
    const auto* rst = c.find(kRstStream, id);
    ASSERT_NE(rst, nullptr) << id;
    EXPECT_EQ(RawH2::code_of(*rst), 0x1u) << id;  // PROTOCOL_ERROR
  }
  const auto* large = c.find(kRstStream, 5);
  ASSERT_NE(large, nullptr);
  EXPECT_EQ(RawH2::code_of(*large), 0xbu);  // ENHANCE_YOUR_CALM
  EXPECT_EQ(c.find(kGoaway, 0), nullptr);
  EXPECT_EQ(on_io([&] { return server_->connections(); }), 1u);
}

TEST_F(SidecarApiTest, AHeaderBlockThatDoesNotDecodeEndsTheConnection) {
  start();
  RawH2 c(path_);
  // An indexed field whose index runs past 2^32 (RFC 7541 5.1): a COMPRESSION_ERROR.
  c.send(RawH2::frame(kHeaders, 0x5, 1, std::string("\xff\xff\xff\xff\xff\xff\x7f", 7)));
  ASSERT_TRUE(c.closed());
  const auto* goaway = c.find(kGoaway, 0);
  ASSERT_NE(goaway, nullptr);
  EXPECT_EQ(RawH2::code_of(*goaway), 0x9u);  // COMPRESSION_ERROR
  EXPECT_TRUE(wait_until([&] {
    return metric("certagent_sidecar_rejected_total", {{"reason", "protocol_error"}}) >= 1;
  }, kWait));
}

TEST_F(SidecarApiTest, FloodsOfResetsAndUnreadPingsEndTheConnectionAsFlooded) {
  start();
  {
    // Rapid reset (CVE-2023-44487): open and cancel streams in a loop.
    RawH2 c(path_);
    std::string burst;
    for (std::uint32_t id = 1; id < 2 * 400; id += 2) {
      burst += RawH2::frame(kHeaders, 0x4, id, c.block("/SpiffeWorkloadAPI/FetchX509SVID"));
      burst += RawH2::frame(kRstStream, 0, id, RawH2::u32(0x8));
    }
    c.send(burst);
    ASSERT_TRUE(c.closed());
    const auto* goaway = c.find(kGoaway, 0);
    ASSERT_NE(goaway, nullptr);
    EXPECT_EQ(RawH2::code_of(*goaway), 0xbu);  // ENHANCE_YOUR_CALM
  }
  {
    // PINGs by the thousand, none of the answers read.
    RawH2 c(path_);
    std::string pings;
    for (int i = 0; i < 2000; ++i) pings += RawH2::frame(kPing, 0, 0, "pingpong");
    c.send(pings);
    ASSERT_TRUE(c.closed());
  }
  EXPECT_TRUE(wait_until([&] {
    return metric("certagent_sidecar_rejected_total", {{"reason", "flooded"}}) >= 2;
  }, kWait));
  // Others carry on.
  RawH2 ok(path_);
  ok.svid_call(1);
  EXPECT_TRUE(ok.read_until([&](const auto&) { return grpc_messages(ok.data(1)).size() == 1; }));
}

TEST_F(SidecarApiTest, StreamsBeyondTheAdvertisedLimitAreRefusedByHttp2) {
  auto config = api_config();
  config.max_streams_per_uid = 2;
  start(config);
  RawH2 c(path_);
  c.svid_call(1);
  c.svid_call(3);
  c.svid_call(5);  // a third while two are open: REFUSED_STREAM, which a client may retry
  ASSERT_TRUE(c.read_until([&](const auto&) { return c.find(kRstStream, 5) != nullptr; }));
  EXPECT_EQ(RawH2::code_of(*c.find(kRstStream, 5)), 0x7u);
  ASSERT_TRUE(c.read_until([&](const auto&) {
    return grpc_messages(c.data(1)).size() == 1 && grpc_messages(c.data(3)).size() == 1;
  }));
}

TEST_F(SidecarApiTest, WindowsAndFramesBreakingTheRulesAreConnectionErrors) {
  start();
  struct Case {
    const char* what;
    std::string bytes;
    std::uint32_t code;
  };
  const std::vector<Case> cases = {
      {"WINDOW_UPDATE past 2^31-1", RawH2::frame(kWindowUpdate, 0, 0, RawH2::u32(0x7fffffff)), 0x3},
      {"WINDOW_UPDATE of 0", RawH2::frame(kWindowUpdate, 0, 0, RawH2::u32(0)), 0x1},
      {"PING of 7 bytes", RawH2::frame(kPing, 0, 0, "1234567"), 0x6},
      {"DATA on an idle stream", RawH2::frame(kData, 0, 9, "x"), 0x1},
      {"SETTINGS ENABLE_PUSH 2", RawH2::frame(kSettings, 0, 0, std::string("\x00\x02", 2) + RawH2::u32(2)), 0x1},
      {"a frame past 16 KiB", RawH2::frame(kData, 0, 1, std::string(16385, 'x')), 0x6},
      {"PUSH_PROMISE", RawH2::frame(5, 0x4, 1, RawH2::u32(2)), 0x1},
      {"a header block over 32 KiB",
       RawH2::frame(kHeaders, 0, 1, std::string(16384, '\x80')) +
           RawH2::frame(9, 0, 1, std::string(16384, '\x80')) + RawH2::frame(9, 0x4, 1, "x"),
       0xb},
  };
  for (const auto& k : cases) {
    RawH2 c(path_);
    c.send(k.bytes);
    ASSERT_TRUE(c.closed()) << k.what;
    const auto* goaway = c.find(kGoaway, 0);
    ASSERT_NE(goaway, nullptr) << k.what;
    EXPECT_EQ(RawH2::code_of(*goaway), k.code) << k.what;
  }
}

}  // namespace
}  // namespace certagent
