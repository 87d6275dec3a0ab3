// What the serving probe says before TLS (reloaders/starttls.h), against scripted peers that
// answer the way broken, refusing or foreign servers do. The working exchanges are tested
// against the real PostgreSQL, Postfix and Dovecot in tests/integration/reloaders/.

#include "reloaders/serving_probe.h"
#include "reloaders/starttls.h"
#include "tests/support/test_support.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <gtest/gtest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <mutex>
#include <thread>

namespace certagent::reloaders {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using config::VerifyProtocol;

// One step of a scripted peer: send `say` (kClose: close the connection instead), then, if
// `expect` is set, read a line and go on only if it starts with `expect`.
struct Step {
  std::string say;
  std::string expect;
  std::chrono::milliseconds pause{0};  // before saying it
};
const std::string kClose = "<close>";

// A peer on 127.0.0.1 that plays its steps on each connection it accepts, one connection at
// a time, then holds the connection until the client closes it (at most 10 s).
class ScriptedPeer {
 public:
  ScriptedPeer(std::initializer_list<Step> steps) : steps_(steps) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(listen_fd_, 4) != 0) {
      throw std::runtime_error("scripted peer: cannot listen");
    }
    socklen_t len = sizeof addr;
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] {
      for (;;) {
        int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd < 0) return;  // shut down by the destructor
        play(fd);
      }
    });
  }
  ~ScriptedPeer() {
    ::shutdown(listen_fd_, SHUT_RDWR);
    thread_.join();
    ::close(listen_fd_);
  }
  std::string connect() const { return "127.0.0.1:" + std::to_string(port_); }
  // What clients sent, a line per expected step.
  std::vector<std::string> heard() const {
    std::lock_guard lock(mutex_);
    return heard_;
  }

 private:
  void play(int fd) {
    timeval tv{10, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    for (const auto& step : steps_) {
      std::this_thread::sleep_for(step.pause);  // a slow server, not an assertion
      if (step.say == kClose) {
        ::close(fd);
        return;
      }
      if (!step.say.empty() && ::send(fd, step.say.data(), step.say.size(), MSG_NOSIGNAL) < 0) break;
      if (step.expect.empty()) continue;
      std::string line;
      char c;
      while (::recv(fd, &c, 1, 0) == 1) {
        line += c;
        if (c == '\n' || line.size() > 4096) break;
      }
      {
        std::lock_guard lock(mutex_);
        heard_.push_back(line);
      }
      if (line.rfind(step.expect, 0) != 0) break;
    }
    char sink[256];
    while (::recv(fd, sink, sizeof sink, 0) > 0) {
    }
    ::close(fd);
  }

  std::vector<Step> steps_;
  int listen_fd_{-1};
  int port_{0};
  std::thread thread_;
  mutable std::mutex mutex_;
  std::vector<std::string> heard_;
};

Result<std::string> probe_once(const std::string& connect, VerifyProtocol protocol,
                               std::chrono::milliseconds timeout = 3s) {
  asio::io_context ioc;
  std::optional<Result<std::string>> out;
  asio::co_spawn(ioc, fetch_served_serial(connect, "", timeout, protocol),
                 [&](std::exception_ptr e, Result<std::string> r) {
                   if (e) std::rethrow_exception(e);
                   out.emplace(std::move(r));
                 });
  ioc.run();
  return std::move(*out);
}

void expect_error(const Result<std::string>& r, const std::string& phrase) {
  ASSERT_FALSE(r) << "served serial " << *r;
  EXPECT_NE(r.error().message.find(phrase), std::string::npos) << r.error().message;
}

const std::string kSslRequest("\x00\x00\x00\x08\x04\xd2\x16\x2f", 8);

// ---- SMTP -----------------------------------------------------------------------------------

TEST(StartTls, SmtpSendsEhloWithAnAddressLiteralThenStartTls) {
  ScriptedPeer peer({{"220 mail.test ESMTP\r\n", "EHLO "},
                     {"250-mail.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n", "STARTTLS"},
                     {"454 4.7.0 TLS not available due to local problem\r\n", ""}});
  auto r = probe_once(peer.connect(), VerifyProtocol::smtp);
  expect_error(r, "STARTTLS refused: '454 4.7.0 TLS not available due to local problem'");
  auto heard = peer.heard();
  ASSERT_EQ(heard.size(), 2u);
  EXPECT_EQ(heard[0], "EHLO [127.0.0.1]\r\n");
  EXPECT_EQ(heard[1], "STARTTLS\r\n");
}

TEST(StartTls, SmtpServerThatDoesNotOfferStartTls) {
  ScriptedPeer peer({{"220-mail.test ESMTP\r\n220 second greeting line\r\n", "EHLO"},
                     {"250-mail.test\r\n250-STARTTLSX\r\n250 8BITMIME\r\n", ""}});
  expect_error(probe_once(peer.connect(), VerifyProtocol::smtp),
               "does not offer STARTTLS (EHLO answered '250-mail.test | 250-STARTTLSX | 250 8BITMIME')");
}

TEST(StartTls, SmtpServerThatRefusesTheSession) {
  ScriptedPeer peer({{"554 5.3.2 no service for you\r\n", ""}});
  expect_error(probe_once(peer.connect(), VerifyProtocol::smtp),
               "the SMTP server does not accept the session: '554 5.3.2 no service for you'");
}

TEST(StartTls, GarbageInsteadOfAnSmtpGreetingIsQuoted) {
  ScriptedPeer peer({{std::string("HTTP/1.1 400 Bad\x01\xff\r\n"), ""}});
  expect_error(probe_once(peer.connect(), VerifyProtocol::smtp),
               "the SMTP greeting is not an SMTP reply: 'HTTP/1.1 400 Bad\\x01\\xff'");
}

TEST(StartTls, AnEndlessLineIsCutOff) {
  ScriptedPeer peer({{std::string(9000, '2'), ""}});
  expect_error(probe_once(peer.connect(), VerifyProtocol::smtp), "the SMTP greeting: a line longer than 8192 bytes");
}

TEST(StartTls, DataAfterTheYesToStartTlsIsRefused) {
  // Bytes that arrive with the 220 would be read as the TLS handshake (the injection bug).
  ScriptedPeer peer({{"220 ok\r\n", "EHLO"},
                     {"250-x\r\n250 STARTTLS\r\n", "STARTTLS"},
                     {"220 go ahead\r\n250 injected\r\n", ""}});
  expect_error(probe_once(peer.connect(), VerifyProtocol::smtp),
               "the server sent data after accepting STARTTLS ('250 injected\\x0d\\x0a')");
}

TEST(StartTls, ASilentServerTimesOutWithinTheHandshakeTimeout) {
  // E.g. an SMTP probe pointed at PostgreSQL, which waits for the client to speak first.
  ScriptedPeer peer{};
  const auto start = std::chrono::steady_clock::now();
  expect_error(probe_once(peer.connect(), VerifyProtocol::smtp, 300ms), "the SMTP greeting timed out");
  EXPECT_GE(std::chrono::steady_clock::now() - start, 300ms);
}

TEST(StartTls, AGreetingThatNeverEndsTimesOut) {
  ScriptedPeer peer({{"220-partial", ""}});
  expect_error(probe_once(peer.connect(), VerifyProtocol::smtp, 300ms), "the SMTP greeting timed out");
}

TEST(StartTls, ClosedBeforeTheGreetingEnded) {
  ScriptedPeer peer({{"220-partial", ""}, {kClose, ""}});
  expect_error(probe_once(peer.connect(), VerifyProtocol::smtp),
               "the server closed the connection before the SMTP greeting after '220-partial'");
}

// ---- IMAP -----------------------------------------------------------------------------------

TEST(StartTls, ImapStartTlsIsTaggedAndUntaggedDataIsSkipped) {
  ScriptedPeer peer({{"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n", "a STARTTLS"},
                     {"* CAPABILITY IMAP4rev1\r\na NO [UNAVAILABLE] TLS is broken here\r\n", ""}});
  expect_error(probe_once(peer.connect(), VerifyProtocol::imap),
               "STARTTLS refused: 'a NO [UNAVAILABLE] TLS is broken here'");
  ASSERT_EQ(peer.heard().size(), 1u);
  EXPECT_EQ(peer.heard()[0], "a STARTTLS\r\n");
}

TEST(StartTls, ImapRefusalsAndForeignGreetings) {
  {
    ScriptedPeer peer({{"* BYE too many connections\r\n", ""}});
    expect_error(probe_once(peer.connect(), VerifyProtocol::imap),
                 "the IMAP server does not accept the session: '* BYE too many connections'");
  }
  {
    ScriptedPeer peer({{"* PREAUTH logged in as you\r\n", ""}});
    expect_error(probe_once(peer.connect(), VerifyProtocol::imap), "greets with PREAUTH");
  }
  {
    ScriptedPeer peer({{"+OK POP3 ready\r\n", ""}});
    expect_error(probe_once(peer.connect(), VerifyProtocol::imap), "the IMAP greeting is not '* OK ...': '+OK POP3 ready'");
  }
  {
    ScriptedPeer peer({{"* OK ready\r\n", "a STARTTLS"}, {"a BAD unknown command\r\n", ""}});
    expect_error(probe_once(peer.connect(), VerifyProtocol::imap), "STARTTLS refused: 'a BAD unknown command'");
  }
}

// ---- PostgreSQL -----------------------------------------------------------------------------

TEST(StartTls, PostgresAnswersOtherThanS) {
  {
    // 'N': SSL is off on that server.
    ScriptedPeer off({{"N", ""}});
    expect_error(probe_once(off.connect(), VerifyProtocol::postgres), "does not accept SSL (answered 'N'");
  }
  {
    // 'E' is what a server too old for SSLRequest, or one in trouble, answers.
    ScriptedPeer old({{"E", ""}});
    expect_error(probe_once(old.connect(), VerifyProtocol::postgres), "unexpected answer to the SSLRequest: 'E'");
  }
  {
    ScriptedPeer nginx({{"HTTP/1.1 400 Bad Request\r\n", ""}});
    expect_error(probe_once(nginx.connect(), VerifyProtocol::postgres), "unexpected answer to the SSLRequest: 'H'");
  }
  {
    ScriptedPeer silent{};
    expect_error(probe_once(silent.connect(), VerifyProtocol::postgres, 300ms),
                 "the answer to the SSLRequest timed out");
  }
}

TEST(StartTls, PostgresSslRequestBytes) {
  // The peer reads one "line": the 8 request bytes hold no '\n', so it reads until the close.
  ScriptedPeer peer({{"", std::string(1, '\0')}});
  expect_error(probe_once(peer.connect(), VerifyProtocol::postgres, 300ms), "timed out");
  ASSERT_TRUE(test::wait_until([&] { return !peer.heard().empty(); }, 5s));
  EXPECT_EQ(peer.heard()[0], kSslRequest);
}

// ---- the probe loop and the quoting ---------------------------------------------------------

TEST(StartTls, ProbeReportCarriesTheProtocolError) {
  ScriptedPeer peer({{"554 go away\r\n", ""}});
  asio::io_context ioc;
  ProbeOptions o;
  o.connect = peer.connect();
  o.protocol = VerifyProtocol::smtp;
  o.deadline = 300ms;
  std::optional<ProbeReport> report;
  asio::co_spawn(ioc, probe_serving(o, "1", std::chrono::steady_clock::now() + 10s),
                 [&](std::exception_ptr, ProbeReport r) { report = std::move(r); });
  ioc.run();
  ASSERT_TRUE(report);
  EXPECT_FALSE(report->verified);
  EXPECT_NE(report->describe().find("does not accept the session: '554 go away'"), std::string::npos)
      << report->describe();
}

TEST(StartTls, AnAttemptCutByTheProbesDeadlineDoesNotHideTheLastAnswer) {
  // Every answer takes 120 ms: the attempt running when the 300 ms deadline passes is cut
  // short, and its "timed out" must not replace what the server really said.
  ScriptedPeer peer({{"554 busy\r\n", "", 120ms}});
  asio::io_context ioc;
  ProbeOptions o;
  o.connect = peer.connect();
  o.protocol = VerifyProtocol::smtp;
  o.deadline = 300ms;
  o.interval = 0ms;
  std::optional<ProbeReport> report;
  asio::co_spawn(ioc, probe_serving(o, "1", std::chrono::steady_clock::now() + 10s),
                 [&](std::exception_ptr, ProbeReport r) { report = std::move(r); });
  ioc.run();
  ASSERT_TRUE(report);
  EXPECT_FALSE(report->verified);
  EXPECT_GE(report->errors, 1);
  EXPECT_EQ(report->errors, report->handshakes);
  EXPECT_NE(report->last_error.find("'554 busy'"), std::string::npos) << report->describe();
}

TEST(StartTls, QuoteAnswer) {
  EXPECT_EQ(quote_answer("220 ok"), "'220 ok'");
  EXPECT_EQ(quote_answer(std::string("a\0b\\", 4)), "'a\\x00b\\x5c'");
  EXPECT_EQ(quote_answer(std::string(200, 'x')), "'" + std::string(120, 'x') + "...'");
  EXPECT_EQ(goodbye(VerifyProtocol::smtp), "QUIT\r\n");
  EXPECT_EQ(goodbye(VerifyProtocol::postgres), "");
}

}  // namespace
}  // namespace certagent::reloaders
