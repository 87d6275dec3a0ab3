#pragma once
// Verifies that a TLS server serves a given certificate: fresh full handshakes (new TCP
// connection, then PostgreSQL's SSLRequest or SMTP/IMAP STARTTLS when configured, new SSL
// object, no session cache, no tickets, no client certificate) until the
// leaf's serial equals the expected one and every handshake for `settle` has shown it. The
// chain is not verified: the serial comparison is the point. nginx's old workers keep answering
// for ~100 ms after a reload, so a check that stopped at the first new handshake would lie.

#include "core/config/config.h"
#include "core/result.h"

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>

namespace boost::asio::ssl {
class context;
}

namespace certagent::reloaders {

// A client context for probing: no session cache, no tickets (every handshake is a full one
// and shows the certificate), no chain verification, no client certificate. Creating one costs
// milliseconds with OpenSSL 3, so a reloader makes it once and reuses it.
[[nodiscard]] Result<std::shared_ptr<boost::asio::ssl::context>> make_probe_context();

struct ProbeOptions {
  std::string connect;                         // "127.0.0.1:443", "[::1]:443", "host:443"
  std::string server_name;                     // SNI; empty: none sent
  config::VerifyProtocol protocol{config::VerifyProtocol::tls};  // what comes before TLS (starttls.h)
  std::chrono::milliseconds settle{150};
  std::chrono::milliseconds deadline{10000};   // from the start of the probe
  std::chrono::milliseconds interval{5};       // pause between handshakes
  std::chrono::milliseconds handshake_timeout{2000};
  std::shared_ptr<boost::asio::ssl::context> context;  // from make_probe_context(); null: made here
};

struct ProbeReport {
  bool verified{false};
  std::optional<std::string> aborted;          // why a caller's check stopped the probe
  std::chrono::milliseconds first_new{-1};     // first handshake showing the new serial
  std::chrono::milliseconds stable_since{-1};  // start of the final all-new run
  std::chrono::milliseconds elapsed{0};
  int handshakes{0};
  int old_served{0};                           // handshakes that showed another serial
  int errors{0};                               // failed connects/handshakes
  std::string last_serial;                     // normalized hex of the last served leaf
  std::string last_error;
  // "serial 1a2b served stably after 118ms (first at 17ms, 40 handshakes, 12 old)" or why not.
  std::string describe() const;
};

// Lowercase hex without leading zeros ("0A1b" -> "a1b"; "0" stays "0").
std::string normalize_serial(std::string_view hex);

// "127.0.0.1:443" -> {"127.0.0.1", "443"}; "[::1]:8443" -> {"::1", "8443"}.
[[nodiscard]] Result<std::pair<std::string, std::string>> split_host_port(std::string_view s);

// One fresh full handshake (after the protocol's SSLRequest / STARTTLS); the served leaf's
// serial (normalized) or why it failed.
[[nodiscard]] boost::asio::awaitable<Result<std::string>> fetch_served_serial(
    const std::string& connect, const std::string& server_name, std::chrono::milliseconds timeout,
    config::VerifyProtocol protocol = config::VerifyProtocol::tls);

// Probes until verified, the deadline passes, or `abort_check` (called between handshakes)
// returns a reason. `hard_deadline` (the reloader's whole budget) caps options.deadline.
// `expected_serial` is taken by value: the coroutine first runs after the caller's full
// expression, when a temporary passed by reference would already be gone.
boost::asio::awaitable<ProbeReport> probe_serving(
    const ProbeOptions& options, std::string expected_serial,
    std::chrono::steady_clock::time_point hard_deadline,
    std::function<std::optional<std::string>()> abort_check = {});

}  // namespace certagent::reloaders
