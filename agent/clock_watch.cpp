#include "agent/clock_watch.h"

#include "core/logging.h"

#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <limits>
#include <ctime>

namespace certagent {

ClockWatch::ClockWatch(boost::asio::any_io_executor executor, std::function<void()> on_jump)
    : fd_(executor), on_jump_(std::move(on_jump)) {}

ClockWatch::~ClockWatch() { stop(); }

bool ClockWatch::start() {
  int fd = ::timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK | TFD_CLOEXEC);
  if (fd < 0) return false;
  fd_.assign(fd);
  if (!arm()) return false;
  wait();
  return true;
}

void ClockWatch::stop() {
  boost::system::error_code ec;
  fd_.close(ec);
}

bool ClockWatch::arm() {
  // An absolute deadline far in the future: it never fires, but any change to CLOCK_REALTIME
  // that is not a smooth adjustment cancels it, which makes the fd readable with ECANCELED.
  itimerspec spec{};
  spec.it_value.tv_sec = std::numeric_limits<std::int32_t>::max();
  return ::timerfd_settime(fd_.native_handle(), TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, &spec,
                           nullptr) == 0;
}

void ClockWatch::wait() {
  fd_.async_wait(boost::asio::posix::stream_descriptor::wait_read,
                 [this](boost::system::error_code ec) {
                   if (ec) return;  // closed
                   std::uint64_t expirations = 0;
                   const ssize_t n = ::read(fd_.native_handle(), &expirations, sizeof expirations);
                   if (n < 0 && errno == ECANCELED) {
                     log::get("agent")->info("event=clock_jump action=recomputing_deadlines");
                     if (on_jump_) on_jump_();
                   }
                   if (arm()) wait();
                 });
}

}  // namespace certagent
