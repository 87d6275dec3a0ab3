// sd_notify without libsystemd, against a real AF_UNIX datagram socket standing in for pid 1.

#include "agent/sd_notify.h"
#include "tests/support/test_support.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace certagent::systemd {
namespace {

using namespace std::chrono_literals;

// The receiving end: what systemd binds for a Type=notify service, with SO_PASSCRED on so the
// kernel attaches the sender's pid (systemd uses it for NotifyAccess=main).
class Receiver {
 public:
  // `name` as it goes into NOTIFY_SOCKET: "/path" or "@abstract".
  explicit Receiver(const std::string& name) : name_(name) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    EXPECT_GE(fd_, 0);
    int on = 1;
    EXPECT_EQ(::setsockopt(fd_, SOL_SOCKET, SO_PASSCRED, &on, sizeof(on)), 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, name.data(), name.size());
    socklen_t len = offsetof(sockaddr_un, sun_path) + name.size();
    if (name[0] == '@') {
      addr.sun_path[0] = '\0';
    } else {
      len += 1;
    }
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), len), 0) << std::strerror(errno);
  }
  ~Receiver() { ::close(fd_); }
  Receiver(const Receiver&) = delete;
  Receiver& operator=(const Receiver&) = delete;

  struct Message {
    std::string text;
    std::optional<pid_t> pid;
  };

  // The next datagram, or nullopt if none arrives within `deadline`.
  std::optional<Message> receive(std::chrono::milliseconds deadline = 5s) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(deadline.count())) != 1) return std::nullopt;
    char buf[8192];
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(ucred))];
    iovec iov{buf, sizeof(buf)};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    ssize_t n = ::recvmsg(fd_, &msg, MSG_DONTWAIT);
    if (n < 0) return std::nullopt;
    Message m{std::string(buf, static_cast<std::size_t>(n)), std::nullopt};
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
        ucred cred{};
        std::memcpy(&cred, CMSG_DATA(c), sizeof(cred));
        m.pid = cred.pid;
      }
    }
    return m;
  }

  const std::string& name() const { return name_; }

 private:
  std::string name_;
  int fd_{-1};
};

std::string unique_abstract_name() {
  std::random_device rd;
  return "@certagent-test-notify-" + std::to_string(::getpid()) + "-" + std::to_string(rd());
}

class SdNotifyTest : public ::testing::Test {
 protected:
  void SetUp() override { clear(); }
  void TearDown() override { clear(); }
  static void clear() {
    ::unsetenv("NOTIFY_SOCKET");
    ::unsetenv("WATCHDOG_USEC");
    ::unsetenv("WATCHDOG_PID");
  }
};

TEST_F(SdNotifyTest, WithoutNotifySocketEverythingIsANoOp) {
  EXPECT_FALSE(notify_socket_set());
  EXPECT_FALSE(notify("READY=1"));
  EXPECT_FALSE(notify_status("starting"));
  EXPECT_FALSE(notify_reloading());
}

TEST_F(SdNotifyTest, SendsReadyToAFilesystemSocketFromThisProcess) {
  test::TempDir dir;
  Receiver receiver((dir / "notify.sock").string());
  ::setenv("NOTIFY_SOCKET", receiver.name().c_str(), 1);
  EXPECT_TRUE(notify_socket_set());

  ASSERT_TRUE(notify("READY=1"));
  auto m = receiver.receive();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->text, "READY=1");
  ASSERT_TRUE(m->pid);
  EXPECT_EQ(*m->pid, ::getpid());  // what NotifyAccess=main checks
}

TEST_F(SdNotifyTest, SendsToAnAbstractSocket) {
  Receiver receiver(unique_abstract_name());
  ::setenv("NOTIFY_SOCKET", receiver.name().c_str(), 1);

  ASSERT_TRUE(notify("WATCHDOG=1"));
  ASSERT_TRUE(notify("STOPPING=1"));
  auto first = receiver.receive();
  auto second = receiver.receive();
  ASSERT_TRUE(first && second);
  EXPECT_EQ(first->text, "WATCHDOG=1");
  EXPECT_EQ(second->text, "STOPPING=1");
}

TEST_F(SdNotifyTest, SeveralAssignmentsTravelInOneDatagram) {
  Receiver receiver(unique_abstract_name());
  ::setenv("NOTIFY_SOCKET", receiver.name().c_str(), 1);

  ASSERT_TRUE(notify("READY=1\nSTATUS=2 certificates valid"));
  auto m = receiver.receive();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->text, "READY=1\nSTATUS=2 certificates valid");
}

TEST_F(SdNotifyTest, StatusCannotInjectAnotherAssignment) {
  Receiver receiver(unique_abstract_name());
  ::setenv("NOTIFY_SOCKET", receiver.name().c_str(), 1);

  ASSERT_TRUE(notify_status("broker said: bad\nREADY=1\r\nMAINPID=1"));
  auto m = receiver.receive();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->text, "STATUS=broker said: bad READY=1  MAINPID=1");
  EXPECT_EQ(m->text.find('\n'), std::string::npos);
}

TEST_F(SdNotifyTest, StatusIsCapped) {
  Receiver receiver(unique_abstract_name());
  ::setenv("NOTIFY_SOCKET", receiver.name().c_str(), 1);

  ASSERT_TRUE(notify_status(std::string(10000, 'x')));
  auto m = receiver.receive();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->text, "STATUS=" + std::string(kMaxStatusBytes, 'x'));
}

TEST_F(SdNotifyTest, ReloadingCarriesTheMonotonicClock) {
  Receiver receiver(unique_abstract_name());
  ::setenv("NOTIFY_SOCKET", receiver.name().c_str(), 1);

  auto now_usec = [] {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000u +
           static_cast<std::uint64_t>(ts.tv_nsec) / 1'000u;
  };
  const auto before = now_usec();
  ASSERT_TRUE(notify_reloading());
  const auto after = now_usec();

  auto m = receiver.receive();
  ASSERT_TRUE(m);
  const std::string prefix = "RELOADING=1\nMONOTONIC_USEC=";
  ASSERT_EQ(m->text.rfind(prefix, 0), 0u) << m->text;
  const auto usec = std::stoull(m->text.substr(prefix.size()));
  EXPECT_GE(usec, before);
  EXPECT_LE(usec, after);
}

TEST_F(SdNotifyTest, UnusableSocketNamesFailCleanly) {
  test::TempDir dir;
  for (const std::string& name : std::vector<std::string>{"relative/notify.sock", "vsock:2:1234", "@", "/", (dir / "nobody-listens.sock").string(),
        "/" + std::string(200, 'a')}) {
    ::setenv("NOTIFY_SOCKET", name.c_str(), 1);
    EXPECT_FALSE(notify("READY=1")) << name;
  }
}

TEST_F(SdNotifyTest, OversizedDatagramIsRefused) {
  Receiver receiver(unique_abstract_name());
  ::setenv("NOTIFY_SOCKET", receiver.name().c_str(), 1);
  EXPECT_FALSE(notify("STATUS=" + std::string(5000, 'x')));
  EXPECT_FALSE(notify(""));
  EXPECT_FALSE(receiver.receive(50ms));
}

TEST_F(SdNotifyTest, AFullReceiverQueueDoesNotBlockForever) {
  // Nobody reads: the kernel queue fills (net.unix.max_dgram_qlen), then a send must give up
  // after its short timeout instead of stalling the daemon's event loop.
  Receiver receiver(unique_abstract_name());
  ::setenv("NOTIFY_SOCKET", receiver.name().c_str(), 1);
  const auto start = std::chrono::steady_clock::now();
  bool failed = false;
  for (int i = 0; i < 100000 && !failed; ++i) failed = !notify("WATCHDOG=1");
  EXPECT_TRUE(failed);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 20s);
}

TEST_F(SdNotifyTest, WatchdogIntervalFromEnvironment) {
  EXPECT_FALSE(watchdog_interval());

  ::setenv("WATCHDOG_USEC", "30000000", 1);
  ASSERT_TRUE(watchdog_interval());
  EXPECT_EQ(*watchdog_interval(), std::chrono::seconds(30));

  ::setenv("WATCHDOG_PID", std::to_string(::getpid()).c_str(), 1);
  ASSERT_TRUE(watchdog_interval());
  EXPECT_EQ(*watchdog_interval(), std::chrono::seconds(30));
}

TEST_F(SdNotifyTest, WatchdogMeantForAnotherProcessIsIgnored) {
  ::setenv("WATCHDOG_USEC", "30000000", 1);
  ::setenv("WATCHDOG_PID", std::to_string(::getpid() + 1).c_str(), 1);
  EXPECT_FALSE(watchdog_interval());
  ::setenv("WATCHDOG_PID", "not-a-pid", 1);
  EXPECT_FALSE(watchdog_interval());
}

TEST_F(SdNotifyTest, MalformedWatchdogUsecIsIgnored) {
  for (const char* value : {"", "0", "-5", "30s", "12abc", " 100", "99999999999999999999999"}) {
    ::setenv("WATCHDOG_USEC", value, 1);
    EXPECT_FALSE(watchdog_interval()) << value;
  }
}

}  // namespace
}  // namespace certagent::systemd
