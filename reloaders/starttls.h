#pragma once
// What the serving probe says on a fresh TCP connection before its TLS handshake, per
// `verify.protocol`: nothing (tls); PostgreSQL's SSLRequest, answered 'S'; the SMTP greeting
// (220), EHLO, STARTTLS (220); the IMAP greeting (* OK), `a STARTTLS` (a OK). Answers are read
// a line at a time with bounds on line length and count; anything the protocol does not allow
// there is an error that quotes it (printable, cut short). A server that sends more after
// agreeing to TLS is refused: those bytes would be read as TLS (the STARTTLS injection bug).

#include "core/config/config.h"
#include "core/result.h"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <functional>
#include <string>
#include <string_view>

namespace certagent::reloaders {

// Runs the exchange on a connected socket. The caller bounds it by closing the socket from a
// watchdog; `timed_out` says whether that happened, so the error can say "timed out".
[[nodiscard]] boost::asio::awaitable<Result<>> negotiate_tls(boost::asio::ip::tcp::socket& socket,
                                                             config::VerifyProtocol protocol,
                                                             std::function<bool()> timed_out);

// What the probe sends inside TLS before closing, so that the server ends the session quietly
// ("QUIT", "LOGOUT"); empty for tls and postgres (a close_notify is enough for PostgreSQL).
std::string_view goodbye(config::VerifyProtocol protocol);

// "'220 mail.example ESMTP'": at most 120 characters, control and non-ASCII bytes as \xNN.
std::string quote_answer(std::string_view s);

}  // namespace certagent::reloaders
