#pragma once
// HTTP(S) client for the brokers (ACME, cfssl, Lemur): one keep-alive connection per client,
// reconnected transparently when the server closes it, a trust store loaded once (and again
// only when the ca_bundle file changes), hostname verification, SNI, a timeout on every
// network operation and a limit on the response body. Requests from concurrent coroutines are
// serialized on the one connection.

#include "core/clock.h"
#include "core/result.h"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace certagent::http {

struct Url {
  std::string scheme;  // "https" | "http"
  std::string host;    // without IPv6 brackets
  std::string port;    // explicit, or the scheme's default
  std::string target;  // path and query; "/" when empty

  bool tls() const { return scheme == "https"; }
  std::string origin() const;  // "https://host:port"
};

// Absolute http(s) URLs only; no user info.
[[nodiscard]] Result<Url> parse_url(std::string_view text);

using Headers = std::vector<std::pair<std::string, std::string>>;

struct Request {
  std::string method{"GET"};  // GET | HEAD | POST | PUT | DELETE
  std::string url;            // absolute
  Headers headers;            // Host, User-Agent, Content-Length are set by the client
  std::string body;
};

struct Response {
  unsigned status{0};
  Headers headers;
  std::string body;

  // First value of a header (case-insensitive name), empty when absent.
  std::string header(std::string_view name) const;
  std::vector<std::string> header_values(std::string_view name) const;
  // The Retry-After header, as a delay from `now`.
  std::optional<std::chrono::seconds> retry_after(SystemTime now) const;
  // The Date header: the server's clock when it answered (to 1 s), when present and well-formed.
  std::optional<SystemTime> date() const;
};

struct ClientOptions {
  std::filesystem::path ca_bundle;                  // PEM roots; empty: the system store
  std::chrono::milliseconds timeout{std::chrono::seconds(30)};  // each resolve/connect/handshake/write/read
  std::size_t body_limit{1024 * 1024};              // larger responses are an error
  std::string user_agent{"certagent"};
};

struct ClientStats {
  std::uint64_t connections{0};  // TCP connects (each a full TLS handshake unless resumed)
  std::uint64_t resumed{0};      // TLS handshakes that resumed a session
  std::uint64_t requests{0};
};

class Client {
 public:
  // Fails when ca_bundle cannot be read or holds no certificate.
  [[nodiscard]] static Result<std::unique_ptr<Client>> create(boost::asio::any_io_executor executor,
                                                              ClientOptions options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Sends one request and reads the whole response. Any status is a value; errors are
  // network, TLS, timeout, malformed or oversized responses.
  boost::asio::awaitable<Result<Response>> send(Request request);
  boost::asio::awaitable<Result<Response>> get(std::string url);

  // Drops the connection (the next request reconnects).
  void close();
  ClientStats stats() const;

  class Impl;

 private:
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Retry-After: delay-seconds or an HTTP-date (IMF-fixdate, RFC 850 or asctime). A date in
// the past gives 0 s. nullopt when the value is neither.
std::optional<std::chrono::seconds> parse_retry_after(std::string_view value, SystemTime now);

}  // namespace certagent::http
