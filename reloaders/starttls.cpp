#include "reloaders/starttls.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <array>
#include <cctype>
#include <cstdio>
#include <vector>

namespace certagent::reloaders {
namespace asio = boost::asio;
using asio::ip::tcp;
using config::VerifyProtocol;

namespace {

// RFC 5321 allows 512 bytes per reply line and RFC 9051 ~8000 per IMAP line; a greeting or a
// capability list is far below either. More than this is not the server the probe expects.
constexpr std::size_t kMaxLine = 8192;
constexpr int kMaxLines = 64;

bool iequals_prefix(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (std::size_t i = 0; i < prefix.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(s[i])) != std::tolower(static_cast<unsigned char>(prefix[i]))) {
      return false;
    }
  }
  return true;
}

class LineReader {
 public:
  LineReader(tcp::socket& socket, std::function<bool()> timed_out)
      : socket_(socket), timed_out_(std::move(timed_out)) {}

  // One line without its CR LF; `what` names the awaited answer for errors ("the SMTP greeting").
  asio::awaitable<Result<std::string>> line(std::string_view what) {
    if (++lines_ > kMaxLines) {
      co_return make_error(std::string(what) + ": more than " + std::to_string(kMaxLines) + " lines");
    }
    auto [ec, n] = co_await asio::async_read_until(socket_, asio::dynamic_buffer(buffer_, kMaxLine), '\n',
                                                   asio::as_tuple(asio::use_awaitable));
    if (ec) {
      if (timed_out_()) co_return make_error(std::string(what) + " timed out");
      if (ec == asio::error::eof) {
        std::string got = buffer_.empty() ? std::string() : " after " + quote_answer(buffer_);
        co_return make_error("the server closed the connection before " + std::string(what) + got);
      }
      if (ec == asio::error::not_found) {
        co_return make_error(std::string(what) + ": a line longer than " + std::to_string(kMaxLine) +
                             " bytes: " + quote_answer(buffer_));
      }
      co_return make_error(std::string(what) + ": " + ec.message());
    }
    std::string out = buffer_.substr(0, n - 1);
    buffer_.erase(0, n);
    if (!out.empty() && out.back() == '\r') out.pop_back();
    co_return Result<std::string>(boost::system::in_place_value, std::move(out));
  }

  asio::awaitable<Result<>> send(std::string_view bytes, std::string_view what) {
    auto [ec, n] = co_await asio::async_write(socket_, asio::buffer(bytes.data(), bytes.size()),
                                              asio::as_tuple(asio::use_awaitable));
    if (ec) {
      if (timed_out_()) co_return make_error("sending " + std::string(what) + " timed out");
      co_return make_error("sending " + std::string(what) + ": " + ec.message());
    }
    co_return Result<>();
  }

  // Bytes the server sent beyond the last answer: after its yes to TLS there must be none.
  Result<> nothing_more(std::string_view command) const {
    if (buffer_.empty()) return {};
    return make_error("the server sent data after accepting " + std::string(command) + " (" +
                      quote_answer(buffer_) + "); refused, it would be read as TLS");
  }

 private:
  tcp::socket& socket_;
  std::function<bool()> timed_out_;
  std::string buffer_;
  int lines_{0};
};

// ---- SMTP (RFC 3207) ---------------------------------------------------------------------------

struct SmtpReply {
  int code{0};
  std::vector<std::string> lines;  // whole lines, for messages
  std::vector<std::string> texts;  // the text after "250-" / "250 "
  std::string quoted() const {
    std::string joined;
    for (const auto& l : lines) joined += (joined.empty() ? "" : " | ") + l;
    return quote_answer(joined);
  }
};

// A reply: lines "NNN-text" ending with "NNN text" (or a bare "NNN"), all with the same code.
asio::awaitable<Result<SmtpReply>> smtp_reply(LineReader& reader, std::string_view what) {
  SmtpReply reply;
  for (;;) {
    auto line = co_await reader.line(what);
    if (!line) co_return line.error();
    const std::string& l = *line;
    bool shaped = l.size() >= 3 && std::isdigit(static_cast<unsigned char>(l[0])) &&
                  std::isdigit(static_cast<unsigned char>(l[1])) && std::isdigit(static_cast<unsigned char>(l[2])) &&
                  (l.size() == 3 || l[3] == ' ' || l[3] == '-');
    if (!shaped) {
      co_return make_error(std::string(what) + " is not an SMTP reply: " + quote_answer(l));
    }
    int code = std::stoi(l.substr(0, 3));
    if (reply.lines.empty()) {
      reply.code = code;
    } else if (code != reply.code) {
      co_return make_error(std::string(what) + " mixes reply codes: " + quote_answer(l));
    }
    reply.lines.push_back(l);
    reply.texts.push_back(l.size() > 4 ? l.substr(4) : std::string());
    if (l.size() == 3 || l[3] == ' ') co_return reply;
  }
}

// "[127.0.0.1]" / "[IPv6:::1]": an address literal of our end is always a valid EHLO argument.
std::string ehlo_name(const tcp::socket& socket) {
  boost::system::error_code ec;
  auto ep = socket.local_endpoint(ec);
  if (ec) return "localhost";
  if (ep.address().is_v6()) return "[IPv6:" + ep.address().to_string() + "]";
  return "[" + ep.address().to_string() + "]";
}

asio::awaitable<Result<>> smtp_starttls(tcp::socket& socket, LineReader& reader) {
  auto greeting = co_await smtp_reply(reader, "the SMTP greeting");
  if (!greeting) co_return greeting.error();
  if (greeting->code != 220) {
    co_return make_error("the SMTP server does not accept the session: " + greeting->quoted());
  }
  const std::string ehlo_command = "EHLO " + ehlo_name(socket) + "\r\n";
  if (auto sent = co_await reader.send(ehlo_command, "EHLO"); !sent) co_return sent.error();
  auto ehlo = co_await smtp_reply(reader, "the answer to EHLO");
  if (!ehlo) co_return ehlo.error();
  if (ehlo->code != 250) co_return make_error("EHLO refused: " + ehlo->quoted());
  bool offered = false;
  for (std::size_t i = 1; i < ehlo->texts.size(); ++i) {
    const auto& t = ehlo->texts[i];
    if (iequals_prefix(t, "STARTTLS") && (t.size() == 8 || t[8] == ' ')) offered = true;
  }
  if (!offered) co_return make_error("the SMTP server does not offer STARTTLS (EHLO answered " + ehlo->quoted() + ")");
  if (auto sent = co_await reader.send("STARTTLS\r\n", "STARTTLS"); !sent) co_return sent.error();
  auto go = co_await smtp_reply(reader, "the answer to STARTTLS");
  if (!go) co_return go.error();
  if (go->code != 220) co_return make_error("STARTTLS refused: " + go->quoted());
  co_return reader.nothing_more("STARTTLS");
}

// ---- IMAP (RFC 9051 / 3501) --------------------------------------------------------------------

asio::awaitable<Result<>> imap_starttls(LineReader& reader) {
  auto greeting = co_await reader.line("the IMAP greeting");
  if (!greeting) co_return greeting.error();
  if (iequals_prefix(*greeting, "* BYE")) {
    co_return make_error("the IMAP server does not accept the session: " + quote_answer(*greeting));
  }
  if (iequals_prefix(*greeting, "* PREAUTH")) {
    co_return make_error("the IMAP server greets with PREAUTH, after which STARTTLS is not allowed: " +
                         quote_answer(*greeting));
  }
  if (!iequals_prefix(*greeting, "* OK")) {
    co_return make_error("the IMAP greeting is not '* OK ...': " + quote_answer(*greeting));
  }
  if (auto sent = co_await reader.send("a STARTTLS\r\n", "a STARTTLS"); !sent) co_return sent.error();
  for (;;) {
    auto line = co_await reader.line("the answer to STARTTLS");
    if (!line) co_return line.error();
    if (iequals_prefix(*line, "* ")) continue;  // untagged data (CAPABILITY) may come first
    if (iequals_prefix(*line, "a OK")) break;
    if (iequals_prefix(*line, "a NO") || iequals_prefix(*line, "a BAD")) {
      co_return make_error("STARTTLS refused: " + quote_answer(*line));
    }
    co_return make_error("unexpected answer to STARTTLS: " + quote_answer(*line));
  }
  co_return reader.nothing_more("STARTTLS");
}

// ---- PostgreSQL (protocol 3, "SSL Session Encryption") -----------------------------------------

asio::awaitable<Result<>> postgres_ssl_request(tcp::socket& socket, LineReader& reader,
                                               const std::function<bool()>& timed_out) {
  // Int32 length 8, Int32 80877103 (1234 << 16 | 5679).
  static constexpr std::array<unsigned char, 8> kSslRequest{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f};
  if (auto sent = co_await reader.send(std::string_view(reinterpret_cast<const char*>(kSslRequest.data()),
                                                        kSslRequest.size()),
                                       "the SSLRequest");
      !sent) {
    co_return sent.error();
  }
  char answer = 0;
  auto [ec, n] = co_await asio::async_read(socket, asio::buffer(&answer, 1), asio::as_tuple(asio::use_awaitable));
  if (ec) {
    if (timed_out()) co_return make_error("the answer to the SSLRequest timed out");
    if (ec == asio::error::eof) co_return make_error("the server closed the connection instead of answering the SSLRequest");
    co_return make_error("the answer to the SSLRequest: " + ec.message());
  }
  if (answer == 'N') {
    co_return make_error("the PostgreSQL server does not accept SSL (answered 'N' to the SSLRequest; is ssl = on?)");
  }
  if (answer != 'S') {
    co_return make_error("unexpected answer to the SSLRequest: " + quote_answer(std::string_view(&answer, 1)) +
                         " (not a PostgreSQL server?)");
  }
  // Anything already waiting is not from a TLS server that has just said yes.
  boost::system::error_code aec;
  if (socket.available(aec) > 0 && !aec) {
    co_return make_error("the server sent data after answering 'S' to the SSLRequest; refused, it would be read as TLS");
  }
  co_return Result<>();
}

}  // namespace

std::string quote_answer(std::string_view s) {
  constexpr std::size_t kMax = 120;
  std::string out = "'";
  std::size_t shown = 0;
  for (unsigned char c : s) {
    if (shown == kMax) {
      out += "...";
      break;
    }
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
    ++shown;
  }
  return out + "'";
}

std::string_view goodbye(VerifyProtocol protocol) {
  switch (protocol) {
    case VerifyProtocol::smtp: return "QUIT\r\n";
    case VerifyProtocol::imap: return "b LOGOUT\r\n";
    case VerifyProtocol::tls:
    case VerifyProtocol::postgres: return {};
  }
  return {};
}

asio::awaitable<Result<>> negotiate_tls(tcp::socket& socket, VerifyProtocol protocol, std::function<bool()> timed_out) {
  LineReader reader(socket, timed_out);
  switch (protocol) {
    case VerifyProtocol::tls: co_return Result<>();
    case VerifyProtocol::postgres: co_return co_await postgres_ssl_request(socket, reader, timed_out);
    case VerifyProtocol::smtp: co_return co_await smtp_starttls(socket, reader);
    case VerifyProtocol::imap: co_return co_await imap_starttls(reader);
  }
  co_return make_error("unknown verify protocol");
}

}  // namespace certagent::reloaders
