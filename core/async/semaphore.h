#pragma once
// Small coroutine helpers for the daemon's single io_context.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <utility>

namespace certagent {

namespace asio = boost::asio;

// Bounds concurrent work (e.g. issuances in flight to one broker). Waiters are served earliest
// deadline first, equal deadlines in arrival order (FIFO when nobody gives one), so a storm of
// certificates with time to spare does not starve one close to expiry.
// Counts the slots held and their high-water mark, so the bound can be observed (metrics, tests).
class AsyncSemaphore {
 public:
  using Deadline = std::chrono::system_clock::time_point;

  AsyncSemaphore(asio::any_io_executor executor, std::size_t slots)
      : executor_(std::move(executor)), available_(slots) {}

  // `due`: when the waiter's work must be done (a certificate's expiry); the earliest goes first.
  asio::awaitable<void> acquire(Deadline due = Deadline::max()) {
    if (available_ > 0 && waiters_.empty()) {
      --available_;
      taken();
      co_return;
    }
    auto waiter = std::make_shared<asio::steady_timer>(executor_, asio::steady_timer::time_point::max());
    waiters_.emplace(Key{due, next_arrival_++}, waiter);
    // release() hands the slot over by cancelling the timer.
    co_await waiter->async_wait(asio::as_tuple(asio::use_awaitable));
    taken();
  }

  void release() {
    if (in_use_ > 0) --in_use_;
    while (!waiters_.empty()) {
      auto next = std::move(waiters_.begin()->second);
      waiters_.erase(waiters_.begin());
      if (next.use_count() > 1) {  // still awaited by someone
        next->cancel();
        return;
      }
    }
    ++available_;
  }

  std::size_t waiting() const { return waiters_.size(); }
  std::size_t in_use() const { return in_use_; }
  std::size_t high_water() const { return high_water_; }  // most slots held at once

 private:
  using Key = std::pair<Deadline, std::uint64_t>;  // (deadline, arrival)

  void taken() {
    ++in_use_;
    if (in_use_ > high_water_) high_water_ = in_use_;
  }

  asio::any_io_executor executor_;
  std::size_t available_;
  std::size_t in_use_{0};
  std::size_t high_water_{0};
  std::uint64_t next_arrival_{0};
  // A map, not a deque or a priority queue over a vector: an empty std::map allocates nothing,
  // and every certificate loop holds a semaphore that is almost always idle.
  std::map<Key, std::shared_ptr<asio::steady_timer>> waiters_;
};

// Holds a semaphore slot for a scope.
class SemaphoreSlot {
 public:
  explicit SemaphoreSlot(AsyncSemaphore& s) : s_(&s) {}
  SemaphoreSlot(const SemaphoreSlot&) = delete;
  SemaphoreSlot& operator=(const SemaphoreSlot&) = delete;
  ~SemaphoreSlot() {
    if (s_) s_->release();
  }

 private:
  AsyncSemaphore* s_;
};

// Runs `fn` on `pool` (blocking work: RSA keygen, fsync) and resumes on the caller's executor.
template <class Executor, class Fn>
auto run_on(Executor pool, Fn fn) -> asio::awaitable<decltype(fn())> {
  using T = decltype(fn());
  co_return co_await asio::co_spawn(
      pool, [fn = std::move(fn)]() mutable -> asio::awaitable<T> { co_return fn(); },
      asio::use_awaitable);
}

}  // namespace certagent
