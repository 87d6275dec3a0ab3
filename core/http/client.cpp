#include "core/http/client.h"

#include "core/crypto/errors.h"
#include "core/logging.h"
#include "core/secret.h"
#include "core/time_format.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/channel.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <ctime>

namespace certagent::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using boost::system::error_code;
using asio::awaitable;

namespace {

constexpr auto kUseTuple = asio::as_tuple(asio::use_awaitable);

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

bool is_ip_literal(const std::string& host) {
  error_code ec;
  asio::ip::make_address(host, ec);
  return !ec;
}

std::string format_ms(std::chrono::milliseconds d) {
  if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + "s";
  return std::to_string(d.count()) + "ms";
}

struct SslSessionFree {
  void operator()(SSL_SESSION* s) const noexcept { SSL_SESSION_free(s); }
};
using SslSessionPtr = std::unique_ptr<SSL_SESSION, SslSessionFree>;

// What we know about a trust file, to notice that it changed.
struct FileStamp {
  std::int64_t mtime_ns{0};
  std::int64_t size{-1};
  std::uint64_t inode{0};
  bool operator==(const FileStamp&) const = default;
};

std::optional<FileStamp> stamp_of(const std::filesystem::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return std::nullopt;
  return FileStamp{static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec,
                   static_cast<std::int64_t>(st.st_size), static_cast<std::uint64_t>(st.st_ino)};
}

Result<std::shared_ptr<asio::ssl::context>> make_tls_context(const std::filesystem::path& ca_bundle) {
  auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_client);
  SSL_CTX* raw = ctx->native_handle();
  SSL_CTX_set_min_proto_version(raw, TLS1_2_VERSION);
  SSL_CTX_set_verify(raw, SSL_VERIFY_PEER, nullptr);
  ERR_clear_error();
  if (ca_bundle.empty()) {
    if (SSL_CTX_set_default_verify_paths(raw) != 1)
      return crypto::openssl_error("loading the system trust store");
    return ctx;
  }
  // X509_STORE_load_file accepts a file with no certificate at all: count them ourselves.
  X509_STORE* store = SSL_CTX_get_cert_store(raw);
  if (X509_STORE_load_file(store, ca_bundle.c_str()) != 1)
    return config_error(Cause::local_config, "ca_bundle",
                        crypto::openssl_error("loading ca_bundle " + ca_bundle.string()).message +
                            ": the broker's ca_bundle must be a readable PEM file of CA certificates");
  auto objects = X509_STORE_get0_objects(store);
  bool any = false;
  for (int i = 0; i < sk_X509_OBJECT_num(objects); ++i)
    if (X509_OBJECT_get_type(sk_X509_OBJECT_value(objects, i)) == X509_LU_X509) any = true;
  if (!any)
    return config_error(Cause::local_config, "ca_bundle",
                        "loading ca_bundle " + ca_bundle.string() +
                            ": no certificate in it: put the CA that issued the broker's TLS certificate there");
  return ctx;
}

// "Sun, 06 Nov 1994 08:49:37 GMT" and the two obsolete forms RFC 9110 still asks to accept.
std::optional<SystemTime> parse_http_date(std::string_view value) {
  std::string s(value);
  static constexpr const char* kFormats[] = {"%a, %d %b %Y %H:%M:%S GMT", "%A, %d-%b-%y %H:%M:%S GMT",
                                             "%a %b %d %H:%M:%S %Y"};
  for (const char* format : kFormats) {
    std::tm tm{};
    const char* end = ::strptime(s.c_str(), format, &tm);
    if (end == nullptr || *end != '\0') continue;
    time_t t = ::timegm(&tm);
    if (t == static_cast<time_t>(-1)) continue;
    return system_time_from_time_t(t);
  }
  return std::nullopt;
}

// The broker did not answer: waiting may help.
Error unreachable(std::string message) {
  Error e = make_error(std::move(message));
  e.cause = Cause::unreachable;
  return e;
}

}  // namespace

// ---- Url -----------------------------------------------------------------------------------

std::string Url::origin() const {
  std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  return scheme + "://" + h + ":" + port;
}

namespace {

// A host as a URL may carry it: a name or IPv4 address (letters, digits, '-', '.', '_', '~'),
// or IPv6 text inside brackets (hex digits, ':', '.'). Anything else (a ':' or ']' outside
// brackets, white space, control characters) would break the Host header or the origin.
bool url_host_ok(std::string_view host, bool bracketed) {
  return !host.empty() && std::all_of(host.begin(), host.end(), [bracketed](char c) {
    const auto u = static_cast<unsigned char>(c);
    if (bracketed) return std::isxdigit(u) != 0 || c == ':' || c == '.';
    return std::isalnum(u) != 0 || c == '-' || c == '.' || c == '_' || c == '~';
  });
}

}  // namespace

Result<Url> parse_url(std::string_view text) {
  Url url;
  auto sep = text.find("://");
  if (sep == std::string_view::npos) return make_error("URL " + log::quote(text) + " is not absolute");
  for (char c : text.substr(0, sep)) url.scheme += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (url.scheme != "https" && url.scheme != "http")
    return make_error("URL " + log::quote(text) + ": scheme must be https or http");
  std::string_view rest = text.substr(sep + 3);
  auto auth_end = rest.find_first_of("/?#");
  std::string_view authority = rest.substr(0, auth_end);
  std::string_view tail = auth_end == std::string_view::npos ? std::string_view{} : rest.substr(auth_end);
  if (authority.find('@') != std::string_view::npos)
    return make_error("URL " + log::quote(text) + ": user info is not supported");
  std::string_view port;
  if (!authority.empty() && authority.front() == '[') {
    auto close = authority.find(']');
    if (close == std::string_view::npos) return make_error("URL " + log::quote(text) + ": unclosed '['");
    url.host = std::string(authority.substr(1, close - 1));
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return make_error("URL " + log::quote(text) + ": junk after ']'");
      port = after.substr(1);
    }
  } else {
    auto colon = authority.rfind(':');
    url.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) port = authority.substr(colon + 1);
  }
  if (url.host.empty()) return make_error("URL " + log::quote(text) + " has no host");
  if (!url_host_ok(url.host, !authority.empty() && authority.front() == '['))
    return make_error("URL " + log::quote(text) + ": bad host " + log::quote(url.host));
  // The target goes into the request line as it is.
  if (std::any_of(tail.begin(), tail.end(), [](char c) { return static_cast<unsigned char>(c) <= ' ' || c == 0x7f; }))
    return make_error("URL " + log::quote(text) + ": white space or a control character in the path");
  // URLs are ASCII (RFC 3986: other characters are percent-encoded); an ACME JWS carries its URL
  // and account URL as JSON text, which must be UTF-8.
  if (std::any_of(tail.begin(), tail.end(), [](char c) { return static_cast<unsigned char>(c) >= 0x80; }))
    return make_error("URL " + log::quote(text) + ": a byte that is not ASCII in the path (percent-encode it)");
  if (port.empty()) {
    url.port = url.tls() ? "443" : "80";
  } else {
    unsigned value = 0;
    auto [p, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
    if (ec != std::errc{} || p != port.data() + port.size() || value == 0 || value > 65535)
      return make_error("URL " + log::quote(text) + ": bad port " + log::quote(port));
    url.port = std::string(port);
  }
  if (auto hash = tail.find('#'); hash != std::string_view::npos) tail = tail.substr(0, hash);
  url.target = tail.empty() ? "/" : std::string(tail);
  if (url.target.front() == '?') url.target.insert(url.target.begin(), '/');
  return url;
}

// ---- Response ------------------------------------------------------------------------------

std::string Response::header(std::string_view name) const {
  for (const auto& [k, v] : headers)
    if (iequals(k, name)) return v;
  return {};
}

std::vector<std::string> Response::header_values(std::string_view name) const {
  std::vector<std::string> out;
  for (const auto& [k, v] : headers)
    if (iequals(k, name)) out.push_back(v);
  return out;
}

std::optional<SystemTime> Response::date() const {
  const std::string v = header("date");
  if (v.empty()) return std::nullopt;
  return parse_http_date(v);
}

std::optional<std::chrono::seconds> Response::retry_after(SystemTime now) const {
  std::string v = header("Retry-After");
  if (v.empty()) return std::nullopt;
  return parse_retry_after(v, now);
}

std::optional<std::chrono::seconds> parse_retry_after(std::string_view value, SystemTime now) {
  while (!value.empty() && std::isspace(static_cast<unsigned char>(value.front()))) value.remove_prefix(1);
  while (!value.empty() && std::isspace(static_cast<unsigned char>(value.back()))) value.remove_suffix(1);
  if (value.empty()) return std::nullopt;
  if (std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    std::uint64_t seconds = 0;
    auto [p, ec] = std::from_chars(value.data(), value.data() + value.size(), seconds);
    if (ec == std::errc::result_out_of_range) seconds = std::numeric_limits<std::uint32_t>::max();
    else if (ec != std::errc{}) return std::nullopt;
    return std::chrono::seconds(std::min<std::uint64_t>(seconds, std::numeric_limits<std::uint32_t>::max()));
  }
  auto when = parse_http_date(value);
  if (!when) return std::nullopt;
  if (*when <= now) return std::chrono::seconds(0);
  // Round up: retrying a fraction of a second early would hit the limit again.
  return std::chrono::ceil<std::chrono::seconds>(*when - now);
}

// ---- Client::Impl --------------------------------------------------------------------------

class Client::Impl {
 public:
  Impl(asio::any_io_executor executor, ClientOptions options, std::shared_ptr<asio::ssl::context> tls,
       std::optional<FileStamp> stamp)
      : executor_(std::move(executor)), options_(std::move(options)), tls_context_(std::move(tls)),
        ca_stamp_(stamp), lock_(executor_, 1) {}

  awaitable<Result<Response>> send(Request request);
  void close() {
    if (tls_stream_) {
      error_code ec;
      beast::get_lowest_layer(*tls_stream_).socket().close(ec);
    }
    if (plain_stream_) {
      error_code ec;
      plain_stream_->socket().close(ec);
    }
    tls_stream_.reset();
    plain_stream_.reset();
    buffer_.clear();
    connected_origin_.clear();
  }
  ClientStats stats() const { return stats_; }

 private:
  struct Exchange {
    error_code ec;
    const char* step{""};
    bool got_some{false};  // any response byte: the request reached a live server
    Response response;
  };

  awaitable<Result<>> connect(const Url& url);
  awaitable<Result<>> refresh_trust();
  template <class Stream>
  awaitable<Exchange> exchange(Stream& stream, const Url& url, const Request& request);
  std::string describe(const Request& request, const Url& url, const char* step, const error_code& ec);
  Error tls_verify_error(std::string message, long verify, const Url& url) const;
  void remember_session(const Url& url);

  // Serializes requests on the one connection: a channel with room for one token.
  struct LockGuard {
    asio::experimental::channel<void(error_code)>& channel;
    ~LockGuard() { channel.try_receive([](error_code) {}); }
  };

  asio::any_io_executor executor_;
  ClientOptions options_;
  std::shared_ptr<asio::ssl::context> tls_context_;
  std::optional<FileStamp> ca_stamp_;
  asio::experimental::channel<void(error_code)> lock_;

  std::string connected_origin_;
  std::shared_ptr<asio::ssl::context> stream_context_;  // the context the live stream was made from
  std::unique_ptr<asio::ssl::stream<beast::tcp_stream>> tls_stream_;
  std::unique_ptr<beast::tcp_stream> plain_stream_;
  beast::flat_buffer buffer_;
  std::string session_origin_;
  SslSessionPtr session_;
  ClientStats stats_;
};

std::string Client::Impl::describe(const Request& request, const Url& url, const char* step,
                                   const error_code& ec) {
  std::string what;
  if (ec == beast::error::timeout) {
    what = "timed out after " + format_ms(options_.timeout);
  } else if (ec == bhttp::error::body_limit) {
    what = "response body larger than " + std::to_string(options_.body_limit) + " bytes";
  } else if (ec == bhttp::error::header_limit) {
    what = "response header too large";
  } else if (ec == bhttp::error::end_of_stream || ec == asio::error::eof) {
    what = "connection closed by the server";
  } else if (ec == asio::ssl::error::stream_truncated) {
    what = "TLS stream truncated";
  } else {
    what = ec.message();
  }
  if (tls_stream_ && ec.category() == asio::error::get_ssl_category()) {
    long verify = SSL_get_verify_result(tls_stream_->native_handle());
    if (verify != X509_V_OK)
      what += std::string(" (") + X509_verify_cert_error_string(verify) + ")";
  }
  return request.method + " " + url.origin() + url.target + ": " + step + ": " + what;
}

// A broker whose TLS certificate we cannot verify answers, but no retry will make us trust it:
// a configuration error naming what to change (the trust file, or the URL's host name).
Error Client::Impl::tls_verify_error(std::string message, long verify, const Url& url) const {
  if (verify == X509_V_ERR_HOSTNAME_MISMATCH || verify == X509_V_ERR_IP_ADDRESS_MISMATCH)
    return config_error(Cause::local_config, "tls_hostname",
                        message + ": the broker's TLS certificate is not issued for " + url.host +
                            ": set the broker's url to a name (or address) its certificate carries");
  const std::string trust = options_.ca_bundle.empty()
                                ? "the system trust store: set the broker's ca_bundle to a file holding the CA "
                                  "that issued the broker's TLS certificate"
                                : "ca_bundle " + options_.ca_bundle.string() +
                                      ": put the CA that issued the broker's TLS certificate in that file";
  return config_error(Cause::local_config, "tls_trust",
                      message + ": the broker's TLS certificate does not verify against " + trust);
}

awaitable<Result<>> Client::Impl::refresh_trust() {
  if (options_.ca_bundle.empty()) co_return Result<>{};
  auto stamp = stamp_of(options_.ca_bundle);
  if (stamp == ca_stamp_) co_return Result<>{};
  // The broker's CA rotated: trust what the file says now, and drop sessions made under the old trust.
  auto ctx = make_tls_context(options_.ca_bundle);
  if (!ctx) co_return ctx.error();
  log::get("http")->info("event=ca_bundle_reloaded path={}", log::quote(options_.ca_bundle.string()));
  tls_context_ = std::move(*ctx);
  ca_stamp_ = stamp;
  session_.reset();
  co_return Result<>{};
}

awaitable<Result<>> Client::Impl::connect(const Url& url) {
  Request dummy{"CONNECT", url.origin()};
  asio::ip::tcp::resolver resolver(executor_);
  asio::steady_timer timer(executor_);
  bool timed_out = false;
  timer.expires_after(options_.timeout);
  timer.async_wait([&resolver, &timed_out](error_code ec) {
    if (!ec) {
      timed_out = true;
      resolver.cancel();
    }
  });
  auto [rec, endpoints] = co_await resolver.async_resolve(url.host, url.port, kUseTuple);
  timer.cancel();
  if (rec) {
    if (timed_out) rec = beast::error::timeout;
    co_return unreachable(describe(dummy, url, "resolve", rec));
  }

  auto tcp = std::make_unique<beast::tcp_stream>(executor_);
  tcp->expires_after(options_.timeout);
  auto [cec, ep] = co_await tcp->async_connect(endpoints, kUseTuple);
  (void)ep;
  if (cec) co_return unreachable(describe(dummy, url, "connect", cec));
  tcp->socket().set_option(asio::ip::tcp::no_delay(true));
  ++stats_.connections;

  if (!url.tls()) {
    plain_stream_ = std::move(tcp);
    connected_origin_ = url.origin();
    co_return Result<>{};
  }

  if (auto r = co_await refresh_trust(); !r) co_return r.error();
  auto stream = std::make_unique<asio::ssl::stream<beast::tcp_stream>>(std::move(*tcp), *tls_context_);
  SSL* ssl = stream->native_handle();
  X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
  X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  if (is_ip_literal(url.host)) {
    if (X509_VERIFY_PARAM_set1_ip_asc(param, url.host.c_str()) != 1)
      co_return make_error("TLS to " + url.origin() + ": cannot verify against IP " + url.host);
  } else {
    if (SSL_set_tlsext_host_name(ssl, url.host.c_str()) != 1 ||
        X509_VERIFY_PARAM_set1_host(param, url.host.c_str(), url.host.size()) != 1)
      co_return make_error("TLS to " + url.origin() + ": cannot set the server name " + url.host);
  }
  if (session_ && session_origin_ == url.origin()) SSL_set_session(ssl, session_.get());

  beast::get_lowest_layer(*stream).expires_after(options_.timeout);
  tls_stream_ = std::move(stream);
  auto [hec] = co_await tls_stream_->async_handshake(asio::ssl::stream_base::client, kUseTuple);
  if (hec) {
    std::string message = describe(dummy, url, "TLS handshake", hec);
    const long verify = SSL_get_verify_result(tls_stream_->native_handle());
    close();
    if (hec.category() == asio::error::get_ssl_category() && verify != X509_V_OK)
      co_return tls_verify_error(std::move(message), verify, url);
    co_return unreachable(std::move(message));
  }
  if (SSL_session_reused(tls_stream_->native_handle())) ++stats_.resumed;
  stream_context_ = tls_context_;
  connected_origin_ = url.origin();
  co_return Result<>{};
}

template <class Stream>
awaitable<Client::Impl::Exchange> Client::Impl::exchange(Stream& stream, const Url& url,
                                                         const Request& request) {
  Exchange out;
  bhttp::verb verb = bhttp::string_to_verb(request.method);
  // Header fields may carry a bearer token (Lemur): their memory is wiped when released.
  bhttp::request<bhttp::string_body, bhttp::basic_fields<CleansingAllocator<char>>> req{verb, url.target, 11};
  bool default_port = (url.tls() && url.port == "443") || (!url.tls() && url.port == "80");
  std::string host = url.host.find(':') != std::string::npos ? "[" + url.host + "]" : url.host;
  req.set(bhttp::field::host, default_port ? host : host + ":" + url.port);
  req.set(bhttp::field::user_agent, options_.user_agent);
  for (const auto& [k, v] : request.headers) req.set(k, v);
  req.body() = request.body;
  req.keep_alive(true);
  req.prepare_payload();

  beast::get_lowest_layer(stream).expires_after(options_.timeout);
  auto [wec, written] = co_await bhttp::async_write(stream, req, kUseTuple);
  (void)written;
  if (wec) {
    out.ec = wec;
    out.step = "write";
    co_return out;
  }

  bhttp::response_parser<bhttp::string_body> parser;
  parser.body_limit(options_.body_limit);
  parser.header_limit(64 * 1024);
  if (verb == bhttp::verb::head) parser.skip(true);
  beast::get_lowest_layer(stream).expires_after(options_.timeout);
  auto [rec, read] = co_await bhttp::async_read(stream, buffer_, parser, kUseTuple);
  (void)read;
  out.got_some = parser.got_some();
  if (rec) {
    out.ec = rec;
    out.step = "read";
    co_return out;
  }
  auto& res = parser.get();
  out.response.status = res.result_int();
  // RFC 9110 15: a status's first digit is its class, 1 to 5; Beast takes any three digits
  // ("082" read as 82: found by fuzz_broker_answers). 6xx-9xx stay, as codes of no known class.
  if (out.response.status < 100) {
    out.ec = bhttp::error::bad_status;
    out.step = "read";
    co_return out;
  }
  for (const auto& field : res)
    out.response.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
  out.response.body = std::move(res.body());
  if (!parser.keep_alive()) out.ec = bhttp::error::end_of_stream;  // done, but do not reuse
  co_return out;
}

// Keeps a copy of the connection's session for the next handshake with this origin. A copy:
// OpenSSL marks the live session unresumable when that connection later dies with an error
// (a server dropping an idle connection), which would spoil the one we keep.
void Client::Impl::remember_session(const Url& url) {
  if (!tls_stream_) return;
  SSL_SESSION* live = SSL_get0_session(tls_stream_->native_handle());
  if (!live || !SSL_SESSION_is_resumable(live)) return;
  if (SSL_SESSION* copy = SSL_SESSION_dup(live)) {
    session_.reset(copy);
    session_origin_ = url.origin();
  }
}

awaitable<Result<Response>> Client::Impl::send(Request request) {
  // The caller's header values (a bearer token) are wiped however this returns.
  struct WipeHeaders {
    Headers& headers;
    ~WipeHeaders() {
      for (auto& [name, value] : headers) OPENSSL_cleanse(value.data(), value.size());
    }
  } wipe_headers{request.headers};
  auto url = parse_url(request.url);
  if (!url) co_return url.error();
  if (bhttp::string_to_verb(request.method) == bhttp::verb::unknown)
    co_return make_error("unsupported HTTP method " + log::quote(request.method));

  auto [lec] = co_await lock_.async_send(error_code{}, kUseTuple);
  if (lec) co_return make_error("HTTP client closed");
  LockGuard guard{lock_};

  for (int attempt = 0;; ++attempt) {
    bool reused = connected_origin_ == url->origin() && (tls_stream_ || plain_stream_);
    if (!reused) {
      close();
      if (auto r = co_await connect(*url); !r) {
        close();
        co_return r.error();
      }
    }
    ++stats_.requests;
    // (No co_await inside ?: — GCC 12 miscompiles that.)
    Exchange ex;
    if (tls_stream_) {
      ex = co_await exchange(*tls_stream_, *url, request);
    } else {
      ex = co_await exchange(*plain_stream_, *url, request);
    }
    if (!ex.ec || (ex.ec == bhttp::error::end_of_stream && ex.response.status != 0)) {
      remember_session(*url);
      if (ex.ec) close();  // the server said Connection: close
      co_return std::move(ex.response);
    }
    std::string message = describe(request, *url, ex.step, ex.ec);
    close();
    // A kept-alive connection the server closed while idle: the request never reached it.
    bool stale = ex.ec == bhttp::error::end_of_stream || ex.ec == asio::error::eof ||
                 ex.ec == asio::error::connection_reset || ex.ec == asio::error::broken_pipe ||
                 ex.ec == asio::ssl::error::stream_truncated;
    if (reused && stale && !ex.got_some && attempt == 0) {
      log::get("http")->debug("event=reconnect origin={} reason={}", url->origin(), log::quote(ex.ec.message()));
      continue;
    }
    co_return unreachable(std::move(message));
  }
}

// ---- Client --------------------------------------------------------------------------------

Result<std::unique_ptr<Client>> Client::create(asio::any_io_executor executor, ClientOptions options) {
  auto ctx = make_tls_context(options.ca_bundle);
  if (!ctx) return ctx.error();
  std::optional<FileStamp> stamp;
  if (!options.ca_bundle.empty()) stamp = stamp_of(options.ca_bundle);
  if (options.timeout <= std::chrono::milliseconds::zero()) options.timeout = std::chrono::seconds(30);
  auto impl = std::make_unique<Impl>(std::move(executor), std::move(options), std::move(*ctx), stamp);
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() {
  if (impl_) impl_->close();
}

awaitable<Result<Response>> Client::send(Request request) { return impl_->send(std::move(request)); }

awaitable<Result<Response>> Client::get(std::string url) {
  Request request;
  request.url = std::move(url);
  return impl_->send(std::move(request));
}

void Client::close() { impl_->close(); }
ClientStats Client::stats() const { return impl_->stats(); }

}  // namespace certagent::http
