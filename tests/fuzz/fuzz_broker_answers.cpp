// What brokers answer, through the real HTTPS client code (plain http:// on loopback, which the
// cfssl and Lemur brokers allow): an in-process server answers the client's requests with the
// input's segments (separated by "\n=====\n"), one per request, and closes each connection.
// The first byte picks the caller:
//   0  the HTTP client alone (status line, headers, chunked bodies, Retry-After, Date, Link)
//   1  a cfssl/multirootca issuance (authsign answer JSON, PEM in it)
//   2  a Lemur issuance (certificate or pending answer, polls, JSON errors)
// Invariants: an accepted response has a 3-digit status and a body within the limit, and its
// Retry-After is never negative; an issuance that succeeds returns PEM certificates; whatever
// happens, the broker's secret (cfssl auth key, Lemur token) appears in no error message, and
// the call ends within its timeout.

#include "core/clock.h"
#include "core/encoding.h"
#include "core/crypto/csr.h"
#include "core/crypto/keys.h"
#include "core/http/client.h"
#include "renewers/cfssl_config.h"
#include "renewers/cfssl_renewer.h"
#include "renewers/lemur_config.h"
#include "renewers/lemur_renewer.h"
#include "tests/fuzz/fuzz_async.h"
#include "tests/fuzz/fuzz_util.h"
#include "tests/support/software_identity.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>

#include <chrono>
#include <memory>
#include <optional>
#include <span>

namespace asio = boost::asio;
namespace bhttp = boost::beast::http;
using asio::ip::tcp;
using namespace std::chrono_literals;
using namespace certagent;

namespace {

constexpr std::string_view kSeparator = "\n=====\n";
constexpr std::string_view kCfsslKeyHex = "00112233445566778899aabbccddeeff";
constexpr std::string_view kLemurToken = "eyJhbGciOiJIUzI1NiJ9.fuzz-lemur-token.c2lnbmF0dXJl";
constexpr std::size_t kBodyLimit = 4096;

struct Harness {
  asio::io_context io;
  std::unique_ptr<tcp::acceptor> acceptor;
  std::string base_url;
  test::SoftwareIdentity identity;
  SystemClock clock;
  std::unique_ptr<http::Client> client;
  std::unique_ptr<renewers::CfsslRenewer> cfssl;
  std::unique_ptr<renewers::LemurRenewer> lemur;
  renewers::IssueRequest request;
  // This input's answers, in order; the next one to hand out.
  std::vector<std::string> segments;
  std::size_t next{0};
  std::size_t sessions{0};
};
Harness* harness = nullptr;

asio::awaitable<void> serve(tcp::socket socket) {
  ++harness->sessions;
  boost::beast::flat_buffer buffer;
  bhttp::request<bhttp::string_body> req;
  auto [ec, n] = co_await bhttp::async_read(socket, buffer, req, asio::as_tuple(asio::use_awaitable));
  if (!ec && harness->next < harness->segments.size()) {
    const std::string& answer = harness->segments[harness->next++];
    co_await asio::async_write(socket, asio::buffer(answer), asio::as_tuple(asio::use_awaitable));
  }
  boost::system::error_code ignored;
  socket.shutdown(tcp::socket::shutdown_both, ignored);
  socket.close(ignored);
  --harness->sessions;
}

asio::awaitable<void> accept_loop() {
  for (;;) {
    auto [ec, socket] = co_await harness->acceptor->async_accept(asio::as_tuple(asio::use_awaitable));
    if (ec) co_return;
    asio::co_spawn(harness->io, serve(std::move(socket)), asio::detached);
  }
}

config::BrokerConfig broker(std::string name, config::SettingsSlot settings) {
  config::BrokerConfig b;
  b.name = std::move(name);
  b.timeout = 300ms;
  b.settings = std::move(settings);
  return b;
}

// The caller's own secret is never in its error messages. The Lemur token is sent (in the
// Authorization header), so an answer may echo it: whole, it must still not show (the renewer
// redacts it); a part of it only counts when the broker did not send that part itself. The cfssl
// key never goes on the wire (HMAC): a message may hold it only if the broker sent it.
enum class Caller { cfssl, lemur };

void no_secret_in(const std::string& message, Caller caller, std::string_view input) {
  auto leaked = [&](std::string_view secret) {
    return message.find(secret) != std::string::npos && input.find(secret) == std::string_view::npos;
  };
  if (caller == Caller::cfssl) {
    FUZZ_REQUIRE(!leaked(kCfsslKeyHex), "the cfssl key in a message");
  } else {
    FUZZ_REQUIRE(message.find(kLemurToken) == std::string::npos, "the Lemur token in a message");
    FUZZ_REQUIRE(!leaked("fuzz-lemur-token"), "a part of the Lemur token in a message");
  }
}

void check_issued(const Result<renewers::IssueResult>& r, Caller caller, std::string_view input) {
  if (!r) {
    FUZZ_REQUIRE(!r.error().message.empty(), "an error without a message");
    no_secret_in(r.error().message, caller, input);
    return;
  }
  FUZZ_REQUIRE(r->chain_pem.find("-----BEGIN CERTIFICATE-----") != std::string::npos,
               "an issuance without a PEM certificate");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::quiet_logging();
  harness = new Harness;
  harness->acceptor = std::make_unique<tcp::acceptor>(harness->io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  harness->base_url = "http://127.0.0.1:" + std::to_string(harness->acceptor->local_endpoint().port());
  asio::co_spawn(harness->io, accept_loop(), asio::detached);

  auto client = http::Client::create(harness->io.get_executor(),
                                     http::ClientOptions{.timeout = 300ms, .body_limit = kBodyLimit});
  FUZZ_REQUIRE(client.has_value(), "client");
  harness->client = std::move(*client);

  // The brokers' secrets, as `certagent enroll` would have put them into the identity.
  auto hmac_key = certagent::hex_decode(kCfsslKeyHex);
  FUZZ_REQUIRE(hmac_key.has_value(), "hex key");
  const auto* key_bytes = reinterpret_cast<const std::uint8_t*>(hmac_key->data());
  FUZZ_REQUIRE(harness->identity.import_hmac_key(renewers::cfssl_auth_key_name("ca"),
                                                 std::span(key_bytes, hmac_key->size())).has_value(),
               "import_hmac_key");
  FUZZ_REQUIRE(harness->identity.seal(renewers::lemur_token_name("lemur"),
                                      std::span(reinterpret_cast<const std::uint8_t*>(kLemurToken.data()),
                                                kLemurToken.size())).has_value(),
               "seal");
  renewers::RenewerContext context{harness->io.get_executor(), &harness->identity, "/nonexistent",
                                   &harness->clock};
  auto cfssl = renewers::CfsslRenewer::create(
      broker("ca", renewers::CfsslRenewerConfig{.url = harness->base_url, .profile = "default", .label = "primary"}),
      context);
  FUZZ_REQUIRE(cfssl.has_value(), cfssl ? "" : cfssl.error().message);
  harness->cfssl = std::move(*cfssl);
  auto lemur = renewers::LemurRenewer::create(
      broker("lemur", renewers::LemurRenewerConfig{.url = harness->base_url, .authority = "fuzz-ca",
                                                   .owner = "ops@example.org"}),
      context, renewers::LemurTuning{.first_poll = 1ms, .max_poll = 5ms, .pending_retry_after = 1s});
  FUZZ_REQUIRE(lemur.has_value(), lemur ? "" : lemur.error().message);
  harness->lemur = std::move(*lemur);

  // One CSR for every issuance: the brokers' answers are what varies.
  auto key = crypto::generate_key(crypto::KeyType::ecdsa_p256);
  FUZZ_REQUIRE(key.has_value(), "generate_key");
  crypto::SubjectNames names{"web.internal", {"web.internal"}, {}, {}};
  auto csr = crypto::build_csr(key->get(), names);
  FUZZ_REQUIRE(csr.has_value(), "build_csr");
  harness->request.cert_name = "web";
  harness->request.csr_pem = *csr;
  harness->request.common_name = names.common_name;
  harness->request.dns_names = names.dns_names;
  harness->request.lifetime = 1h;
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1 || size > 64 * 1024) return 0;
  const std::string_view input = fuzz::text_of(data + 1, size - 1);
  std::string_view rest = input;
  harness->segments.clear();
  harness->next = 0;
  for (;;) {
    const std::size_t sep = rest.find(kSeparator);
    harness->segments.emplace_back(rest.substr(0, sep));
    if (sep == std::string_view::npos) break;
    rest.remove_prefix(sep + kSeparator.size());
  }

  switch (data[0] % 3) {
    case 0: {
      auto r = certagent::fuzz::run_within(harness->io, harness->client->get(harness->base_url + "/api/v1/cfssl/info"));
      harness->client->close();
      if (!r) {
        FUZZ_REQUIRE(!r.error().message.empty(), "an error without a message");
        break;
      }
      FUZZ_REQUIRE(r->status >= 100 && r->status <= 999, "status " + std::to_string(r->status));
      FUZZ_REQUIRE(r->body.size() <= kBodyLimit, "a body over the limit");
      for (const auto& [name, value] : r->headers) FUZZ_REQUIRE(!name.empty(), "a header without a name");
      if (auto after = r->retry_after(harness->clock.now())) FUZZ_REQUIRE(after->count() >= 0, "Retry-After < 0");
      (void)r->date();
      (void)r->header_values("Link");
      break;
    }
    case 1: check_issued(certagent::fuzz::run_within(harness->io, harness->cfssl->issue(harness->request)), Caller::cfssl, input); break;
    default: check_issued(certagent::fuzz::run_within(harness->io, harness->lemur->issue(harness->request)), Caller::lemur, input); break;
  }
  // The server side of this input's connections ends with them.
  for (int i = 0; i < 1000 && harness->sessions != 0; ++i) harness->io.run_one_for(1ms);
  return 0;
}
