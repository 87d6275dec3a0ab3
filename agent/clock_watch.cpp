#include "agent/clock_watch.h"

#include "core/logging.h"

#include <boost/asio/post.hpp>

#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>
#include <memory>

namespace certagent {

ClockWatch::ClockWatch(boost::asio::any_io_executor executor, const Clock& clock, OnJump on_jump)
    : executor_(executor), fd_(executor), clock_(clock), on_jump_(std::move(on_jump)), baseline_(offset()) {}

ClockWatch::~ClockWatch() { stop(); }

std::chrono::nanoseconds ClockWatch::offset() const {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(clock_.now().time_since_epoch()) -
         std::chrono::duration_cast<std::chrono::nanoseconds>(clock_.steady_now().time_since_epoch());
}

bool ClockWatch::start() {
  int fd = ::timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK | TFD_CLOEXEC);
  if (fd < 0) return false;
  fd_.assign(fd);
  baseline_ = offset();
  if (!arm()) return false;
  wait();
  return true;
}

void ClockWatch::stop() {
  boost::system::error_code ec;
  fd_.close(ec);
}

timespec ClockWatch::deadline_after(SystemTime now) {
  const auto at = std::chrono::duration_cast<std::chrono::seconds>((now + kArmAhead).time_since_epoch());
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(at.count());
  return ts;
}

bool ClockWatch::arm() {
  // An absolute deadline a year ahead: it practically never fires (when it does, it is re-armed
  // from the clock as it is then), but any change to CLOCK_REALTIME that is not a smooth
  // adjustment cancels it, which makes the fd readable with ECANCELED.
  itimerspec spec{};
  spec.it_value = deadline_after(std::chrono::system_clock::now());
  return ::timerfd_settime(fd_.native_handle(), TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, &spec,
                           nullptr) == 0;
}

void ClockWatch::wait() {
  fd_.async_wait(boost::asio::posix::stream_descriptor::wait_read,
                 [this](boost::system::error_code ec) {
                   if (ec) return;  // closed
                   std::uint64_t expirations = 0;
                   const ssize_t n = ::read(fd_.native_handle(), &expirations, sizeof expirations);
                   if (n < 0 && errno == ECANCELED) clock_was_set();
                   if (arm()) wait();
                 });
}

void ClockWatch::clock_was_set() {
  const auto now_offset = offset();
  const auto step = now_offset - baseline_;
  if (step < kMinStep && step > -kMinStep) {
    ++ignored_;
    return;
  }
  baseline_ = now_offset;
  ++jumps_;
  pending_step_ += step;
  log::get("agent")->info("event=clock_jump step_ms={} action=recomputing_deadlines",
                          std::chrono::duration_cast<std::chrono::milliseconds>(step).count());
  if (wake_posted_) return;  // one wake-up for changes that come together
  wake_posted_ = true;
  boost::asio::post(executor_, [this] {
    wake_posted_ = false;
    const auto total = pending_step_;
    pending_step_ = {};
    ++wakeups_;
    if (on_jump_) on_jump_(total);
  });
}

}  // namespace certagent
