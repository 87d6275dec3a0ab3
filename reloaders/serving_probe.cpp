#include "reloaders/serving_probe.h"

#include "core/crypto/ossl_ptr.h"
#include "core/async/watchdog.h"
#include "reloaders/starttls.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <memory>

namespace certagent::reloaders {
namespace asio = boost::asio;
using asio::ip::tcp;
using std::chrono::milliseconds;
using std::chrono::steady_clock;

namespace {

using TlsStream = asio::ssl::stream<tcp::socket>;

// How long a STARTTLS-style session may take to end after the certificate was seen.
constexpr milliseconds kCloseLimit{500};

milliseconds ms_between(steady_clock::time_point a, steady_clock::time_point b) {
  return std::chrono::duration_cast<milliseconds>(b - a);
}

std::string serial_of(X509* cert) {
  const ASN1_INTEGER* serial = X509_get0_serialNumber(cert);
  crypto::BignumPtr bn(ASN1_INTEGER_to_BN(serial, nullptr));
  if (!bn) return {};
  char* hex = BN_bn2hex(bn.get());
  if (!hex) return {};
  std::string out = normalize_serial(hex);
  OPENSSL_free(hex);
  return out;
}

asio::awaitable<Result<tcp::resolver::results_type>> resolve(const std::string& connect,
                                                            steady_clock::time_point deadline) {
  auto hp = split_host_port(connect);
  if (!hp) co_return hp.error();
  auto ex = co_await asio::this_coro::executor;
  boost::system::error_code ec;
  auto addr = asio::ip::make_address(hp->first, ec);
  if (!ec) {
    auto port = static_cast<unsigned short>(std::stoul(hp->second));
    co_return tcp::resolver::results_type::create(tcp::endpoint(addr, port), hp->first, hp->second);
  }
  auto resolver = std::make_shared<tcp::resolver>(ex);
  Watchdog watchdog(ex, deadline, [resolver] { resolver->cancel(); });
  auto [rec, results] = co_await resolver->async_resolve(hp->first, hp->second,
                                                         asio::as_tuple(asio::use_awaitable));
  if (rec) co_return make_error("resolving " + connect + ": " + rec.message());
  co_return results;
}

// Ends a STARTTLS-style session the way the server expects, so that probing every few
// milliseconds leaves no error lines in its log: the protocol's goodbye, then for SMTP/IMAP
// the server's own close is awaited; PostgreSQL gets a close_notify (closing without one while
// its session tickets sit unread resets the connection, and it logs "could not receive data").
// Bounded by `limit`; whatever happens here, the serial is already read.
asio::awaitable<void> close_politely(std::shared_ptr<TlsStream> stream, config::VerifyProtocol protocol,
                                     steady_clock::time_point limit) {
  auto ex = co_await asio::this_coro::executor;
  Watchdog watchdog(ex, limit, [stream] {
    boost::system::error_code ignored;
    stream->lowest_layer().close(ignored);
  });
  const std::string_view bye = goodbye(protocol);
  if (bye.empty()) {
    auto [sec] = co_await stream->async_shutdown(asio::as_tuple(asio::use_awaitable));
    (void)sec;
  } else {
    auto [wec, written] = co_await asio::async_write(*stream, asio::buffer(bye.data(), bye.size()),
                                                     asio::as_tuple(asio::use_awaitable));
    // The answer (221 / * BYE) and the server's close; at most a few KiB are read.
    std::array<char, 1024> sink;
    for (int i = 0; !wec && i < 8; ++i) {
      auto [rec, n] = co_await stream->async_read_some(asio::buffer(sink), asio::as_tuple(asio::use_awaitable));
      if (rec) break;
    }
  }
  ERR_clear_error();
  boost::system::error_code ignored;
  stream->lowest_layer().close(ignored);
}

asio::awaitable<Result<std::string>> handshake_serial(asio::ssl::context& ctx,
                                                      const tcp::resolver::results_type& endpoints,
                                                      const std::string& server_name,
                                                      config::VerifyProtocol protocol,
                                                      steady_clock::time_point deadline) {
  auto ex = co_await asio::this_coro::executor;
  auto stream = std::make_shared<TlsStream>(ex, ctx);
  Watchdog watchdog(ex, deadline, [stream] {
    boost::system::error_code ignored;
    stream->lowest_layer().close(ignored);
  });
  auto [cec, ep] = co_await asio::async_connect(stream->lowest_layer(), endpoints,
                                                asio::as_tuple(asio::use_awaitable));
  if (cec) co_return make_error(watchdog.fired() ? "connect timed out" : "connect: " + cec.message());
  if (protocol != config::VerifyProtocol::tls) {
    std::function<bool()> timed_out = [&watchdog] { return watchdog.fired(); };
    auto agreed = co_await negotiate_tls(stream->next_layer(), protocol, timed_out);
    if (!agreed) co_return agreed.error();
  }
  if (!server_name.empty() && !SSL_set_tlsext_host_name(stream->native_handle(), server_name.c_str())) {
    co_return make_error("cannot set SNI " + server_name);
  }
  auto [hec] = co_await stream->async_handshake(asio::ssl::stream_base::client,
                                                asio::as_tuple(asio::use_awaitable));
  if (hec) {
    ERR_clear_error();
    co_return make_error(watchdog.fired() ? "TLS handshake timed out" : "TLS handshake: " + hec.message());
  }
  crypto::X509Ptr leaf(SSL_get1_peer_certificate(stream->native_handle()));
  if (protocol == config::VerifyProtocol::tls) {
    boost::system::error_code ignored;
    stream->lowest_layer().close(ignored);
  } else {
    co_await close_politely(stream, protocol, std::min(deadline, steady_clock::now() + kCloseLimit));
  }
  if (!leaf) co_return make_error("the server sent no certificate");
  auto serial = serial_of(leaf.get());
  if (serial.empty()) co_return make_error("cannot read the served certificate's serial");
  co_return Result<std::string>(boost::system::in_place_value, std::move(serial));
}

}  // namespace

Result<std::shared_ptr<asio::ssl::context>> make_probe_context() {
  try {
    auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_client);
    ctx->set_verify_mode(asio::ssl::verify_none);
    SSL_CTX_set_session_cache_mode(ctx->native_handle(), SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx->native_handle(), SSL_OP_NO_TICKET);
    return ctx;
  } catch (const std::exception& e) {
    return make_error(std::string("TLS client context: ") + e.what());
  }
}

std::string normalize_serial(std::string_view hex) {
  std::string out;
  for (char c : hex) {
    if (c == ':' || c == ' ') continue;  // tolerate "0A:1B" forms
    out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  auto nz = out.find_first_not_of('0');
  if (nz == std::string::npos) return out.empty() ? out : "0";
  return out.substr(nz);
}

Result<std::pair<std::string, std::string>> split_host_port(std::string_view s) {
  std::string host;
  std::string port;
  if (!s.empty() && s.front() == '[') {
    auto close = s.find(']');
    if (close == std::string_view::npos || close + 1 >= s.size() || s[close + 1] != ':') {
      return make_error("expected [ipv6]:port, got '" + std::string(s) + "'");
    }
    host = std::string(s.substr(1, close - 1));
    port = std::string(s.substr(close + 2));
  } else {
    auto colon = s.rfind(':');
    if (colon == std::string_view::npos || s.find(':') != colon) {
      return make_error("expected host:port, got '" + std::string(s) + "'");
    }
    host = std::string(s.substr(0, colon));
    port = std::string(s.substr(colon + 1));
  }
  if (host.empty()) return make_error("no host in '" + std::string(s) + "'");
  if (port.empty() || port.size() > 5 || !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
      std::stoul(port) == 0 || std::stoul(port) > 65535) {
    return make_error("bad port in '" + std::string(s) + "'");
  }
  return std::make_pair(host, port);
}

std::string ProbeReport::describe() const {
  std::string counts = std::to_string(handshakes) + " handshakes, " + std::to_string(old_served) +
                       " old, " + std::to_string(errors) + " failed";
  if (verified) {
    return "serial " + last_serial + " served stably from " + std::to_string(stable_since.count()) +
           "ms (first at " + std::to_string(first_new.count()) + "ms, " + counts + ")";
  }
  std::string why = aborted ? "probe stopped: " + *aborted
                            : "new serial not served stably within " + std::to_string(elapsed.count()) + "ms";
  if (!last_serial.empty()) why += "; last served serial " + last_serial;
  if (!last_error.empty()) why += "; last error: " + last_error;
  return why + " (" + counts + ")";
}

asio::awaitable<Result<std::string>> fetch_served_serial(const std::string& connect,
                                                         const std::string& server_name,
                                                         milliseconds timeout,
                                                         config::VerifyProtocol protocol) {
  const auto deadline = steady_clock::now() + timeout;
  auto ctx = make_probe_context();
  if (!ctx) co_return ctx.error();
  auto endpoints = co_await resolve(connect, deadline);
  if (!endpoints) co_return endpoints.error();
  co_return co_await handshake_serial(**ctx, *endpoints, server_name, protocol, deadline);
}

asio::awaitable<ProbeReport> probe_serving(const ProbeOptions& options, std::string expected_serial,
                                           steady_clock::time_point hard_deadline,
                                           std::function<std::optional<std::string>()> abort_check) {
  ProbeReport report;
  const auto start = steady_clock::now();
  const auto end = std::min(start + options.deadline, hard_deadline);
  const std::string expected = normalize_serial(expected_serial);
  auto finish = [&] {
    report.elapsed = ms_between(start, steady_clock::now());
    return report;
  };

  auto ctx = options.context ? Result<std::shared_ptr<asio::ssl::context>>(options.context) : make_probe_context();
  if (!ctx) {
    report.last_error = ctx.error().message;
    co_return finish();
  }
  auto endpoints = co_await resolve(options.connect, end);
  if (!endpoints) {
    report.last_error = endpoints.error().message;
    co_return finish();
  }

  asio::steady_timer pause(co_await asio::this_coro::executor);
  std::optional<steady_clock::time_point> run_start;
  for (;;) {
    if (abort_check) {
      if (auto reason = abort_check()) {
        report.aborted = std::move(reason);
        break;
      }
    }
    const auto now = steady_clock::now();
    if (now >= end) break;
    const auto attempt_end = std::min(end, now + options.handshake_timeout);
    auto served = co_await handshake_serial(**ctx, *endpoints, options.server_name, options.protocol, attempt_end);
    const auto done = steady_clock::now();
    // An attempt cut short by the probe's own deadline tells nothing about the server (its
    // "timed out" would hide the last real answer), unless it is the only one.
    if (!served && attempt_end == end && done >= end && report.handshakes > 0) break;
    ++report.handshakes;
    if (served && *served == expected) {
      report.last_serial = *served;
      if (report.first_new.count() < 0) report.first_new = ms_between(start, done);
      if (!run_start) run_start = done;
      if (done - *run_start >= options.settle) {
        report.verified = true;
        report.stable_since = ms_between(start, *run_start);
        break;
      }
    } else {
      run_start.reset();
      if (served) {
        ++report.old_served;
        report.last_serial = *served;
      } else {
        ++report.errors;
        report.last_error = served.error().message;
      }
    }
    if (options.interval.count() > 0) {
      pause.expires_at(std::min(end, steady_clock::now() + options.interval));
      co_await pause.async_wait(asio::as_tuple(asio::use_awaitable));
    }
  }
  co_return finish();
}

}  // namespace certagent::reloaders
