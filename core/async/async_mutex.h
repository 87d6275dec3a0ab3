#pragma once
// A mutex for coroutines: waiting suspends the coroutine (never the thread) and gives up at a
// deadline. Waiters are served in FIFO order. named_mutex() hands out one process-wide mutex
// per key, e.g. per nginx binary+config or per haproxy admin socket, so that reloaders of
// different certificates never drive the same terminator at the same time.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

namespace certagent {

class AsyncMutex {
 public:
  class Guard {
   public:
    Guard() = default;
    explicit Guard(AsyncMutex* m) : m_(m) {}
    Guard(Guard&& o) noexcept : m_(std::exchange(o.m_, nullptr)) {}
    Guard& operator=(Guard&& o) noexcept {
      if (this != &o) {
        release();
        m_ = std::exchange(o.m_, nullptr);
      }
      return *this;
    }
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;
    ~Guard() { release(); }
    bool owns() const { return m_ != nullptr; }
    void release() {
      if (m_) m_->unlock();
      m_ = nullptr;
    }

   private:
    AsyncMutex* m_{nullptr};
  };

  AsyncMutex() = default;
  AsyncMutex(const AsyncMutex&) = delete;
  AsyncMutex& operator=(const AsyncMutex&) = delete;

  // A guard that owns the mutex, or nullopt when `deadline` passed first.
  boost::asio::awaitable<std::optional<Guard>> lock_until(std::chrono::steady_clock::time_point deadline);
  bool try_lock();
  void unlock();
  bool locked() const;

 private:
  struct Waiter {
    explicit Waiter(boost::asio::any_io_executor ex) : timer(std::move(ex)) {}
    boost::asio::steady_timer timer;
    bool granted{false};
  };
  mutable std::mutex m_;
  bool locked_{false};
  std::deque<std::shared_ptr<Waiter>> waiters_;
};

// The process-wide mutex for `key`; it lives as long as someone holds the shared_ptr.
std::shared_ptr<AsyncMutex> named_mutex(const std::string& key);

}  // namespace certagent
