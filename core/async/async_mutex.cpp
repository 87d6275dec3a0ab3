#include "core/async/async_mutex.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <map>

namespace certagent {
namespace asio = boost::asio;

bool AsyncMutex::try_lock() {
  std::lock_guard lock(m_);
  if (locked_) return false;
  locked_ = true;
  return true;
}

bool AsyncMutex::locked() const {
  std::lock_guard lock(m_);
  return locked_;
}

asio::awaitable<std::optional<AsyncMutex::Guard>> AsyncMutex::lock_until(
    std::chrono::steady_clock::time_point deadline) {
  if (try_lock()) co_return Guard(this);
  auto waiter = std::make_shared<Waiter>(co_await asio::this_coro::executor);
  waiter->timer.expires_at(deadline);
  {
    std::lock_guard lock(m_);
    if (!locked_) {  // released between try_lock and here (another thread)
      locked_ = true;
      co_return Guard(this);
    }
    waiters_.push_back(waiter);
  }
  co_await waiter->timer.async_wait(asio::as_tuple(asio::use_awaitable));
  std::lock_guard lock(m_);
  // `granted` decides, not the timer's error code: a grant racing the deadline still owns.
  if (waiter->granted) co_return Guard(this);
  waiters_.erase(std::remove(waiters_.begin(), waiters_.end(), waiter), waiters_.end());
  co_return std::nullopt;
}

void AsyncMutex::unlock() {
  std::lock_guard lock(m_);
  if (waiters_.empty()) {
    locked_ = false;
    return;
  }
  auto next = waiters_.front();
  waiters_.pop_front();
  next->granted = true;
  // Ownership passes directly to the next waiter; wake it on its own executor.
  asio::post(next->timer.get_executor(), [next] { next->timer.cancel(); });
}

std::shared_ptr<AsyncMutex> named_mutex(const std::string& key) {
  static std::mutex registry_mutex;
  static std::map<std::string, std::weak_ptr<AsyncMutex>> registry;
  std::lock_guard lock(registry_mutex);
  for (auto it = registry.begin(); it != registry.end();) {
    it = it->second.expired() ? registry.erase(it) : std::next(it);
  }
  auto& slot = registry[key];
  auto m = slot.lock();
  if (!m) {
    m = std::make_shared<AsyncMutex>();
    slot = m;
  }
  return m;
}

}  // namespace certagent
