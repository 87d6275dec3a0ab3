#pragma once
// Runs an action (close a socket, cancel a resolver) if a deadline passes before the watchdog
// is destroyed. The action's captures are kept alive by the timer's handler, so firing late
// never touches a destroyed object. Used for timeouts on composed operations (TLS handshakes,
// admin socket exchanges) where closing the I/O object is the reliable way to stop them.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <functional>
#include <memory>

namespace certagent {

class Watchdog {
 public:
  Watchdog(boost::asio::any_io_executor ex, std::chrono::steady_clock::time_point at,
           std::function<void()> action)
      : timer_(std::make_shared<boost::asio::steady_timer>(ex)), fired_(std::make_shared<bool>(false)) {
    timer_->expires_at(at);
    timer_->async_wait([timer = timer_, fired = fired_, action = std::move(action)](
                           const boost::system::error_code& ec) {
      if (ec) return;
      *fired = true;
      action();
    });
  }
  ~Watchdog() { timer_->cancel(); }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;
  bool fired() const { return *fired_; }

 private:
  std::shared_ptr<boost::asio::steady_timer> timer_;
  std::shared_ptr<bool> fired_;
};

}  // namespace certagent
