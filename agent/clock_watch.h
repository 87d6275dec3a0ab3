#pragma once
// Tells the daemon when the wall clock jumps (settimeofday, NTP step) or the host resumes
// from suspend, so that deadlines computed against the old clock are recomputed at once.
// Linux timerfd with TFD_TIMER_CANCEL_ON_SET: no polling, no periodic wake-ups.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>

#include <functional>

namespace certagent {

class ClockWatch {
 public:
  ClockWatch(boost::asio::any_io_executor executor, std::function<void()> on_jump);
  ~ClockWatch();
  // False when the kernel refused the timerfd (then deadlines are only as good as the timers).
  bool start();
  void stop();

 private:
  bool arm();
  void wait();

  boost::asio::posix::stream_descriptor fd_;
  std::function<void()> on_jump_;
};

}  // namespace certagent
