#include "agent/certificate_loop_timer.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>

namespace certagent {
namespace {

namespace asio = boost::asio;

class SystemLoopTimer final : public LoopTimer {
 public:
  SystemLoopTimer(const asio::any_io_executor& ex, const Clock& clock) : timer_(ex), clock_(clock) {}

  asio::awaitable<void> wait(std::optional<SystemTime> wall, std::optional<SteadyTime> steady) override {
    const auto steady_now = clock_.steady_now();
    std::optional<SteadyTime> at = steady;
    if (wall) {
      const SteadyTime from_wall = steady_now + std::chrono::duration_cast<SteadyTime::duration>(*wall - clock_.now());
      at = at ? std::min(*at, from_wall) : from_wall;
    }
    if (!at || *at <= steady_now) co_return;
    timer_.expires_at(*at);
    co_await timer_.async_wait(asio::as_tuple(asio::use_awaitable));
  }

  void cancel() override { timer_.cancel(); }

 private:
  asio::steady_timer timer_;
  const Clock& clock_;
};

}  // namespace

LoopTimerFactory system_loop_timers(const Clock& clock) {
  return [&clock](const asio::any_io_executor& ex) -> std::unique_ptr<LoopTimer> {
    return std::make_unique<SystemLoopTimer>(ex, clock);
  };
}

// One wait in progress: an asio timer that never expires by itself; fire_due() or cancel()
// cancels it.
struct ManualLoopTimers::Pending {
  explicit Pending(const asio::any_io_executor& ex) : timer(ex, asio::steady_timer::time_point::max()) {}
  asio::steady_timer timer;
  std::optional<SystemTime> wall;
  std::optional<SteadyTime> steady;
  bool active{false};
};

namespace {

class ManualLoopTimer final : public LoopTimer {
 public:
  ManualLoopTimer(const asio::any_io_executor& ex, const ManualClock& clock,
                  std::vector<std::weak_ptr<ManualLoopTimers::Pending>>& registry, std::size_t& started)
      : pending_(std::make_shared<ManualLoopTimers::Pending>(ex)), clock_(clock), started_(started) {
    registry.push_back(pending_);
  }

  asio::awaitable<void> wait(std::optional<SystemTime> wall, std::optional<SteadyTime> steady) override {
    ++started_;
    if ((!wall && !steady) || (wall && *wall <= clock_.now()) || (steady && *steady <= clock_.steady_now()))
      co_return;
    auto p = pending_;  // this timer may be destroyed while a wait is pending; the Pending lives on
    p->wall = wall;
    p->steady = steady;
    p->active = true;
    p->timer.expires_at(asio::steady_timer::time_point::max());
    co_await p->timer.async_wait(asio::as_tuple(asio::use_awaitable));
    p->active = false;
  }

  void cancel() override {
    pending_->active = false;
    pending_->timer.cancel();
  }

 private:
  std::shared_ptr<ManualLoopTimers::Pending> pending_;
  const ManualClock& clock_;
  std::size_t& started_;
};

}  // namespace

LoopTimerFactory ManualLoopTimers::factory() {
  return [this](const asio::any_io_executor& ex) -> std::unique_ptr<LoopTimer> {
    return std::make_unique<ManualLoopTimer>(ex, clock_, pending_, waits_started_);
  };
}

std::size_t ManualLoopTimers::fire_due() {
  std::erase_if(pending_, [](const auto& w) { return w.expired(); });
  std::size_t fired = 0;
  for (const auto& w : pending_) {
    auto p = w.lock();
    if (!p || !p->active) continue;
    if ((p->wall && *p->wall <= clock_.now()) || (p->steady && *p->steady <= clock_.steady_now())) {
      p->active = false;
      p->timer.cancel();
      ++fired;
    }
  }
  return fired;
}

std::size_t ManualLoopTimers::waiting() const {
  return static_cast<std::size_t>(std::count_if(pending_.begin(), pending_.end(), [](const auto& w) {
    auto p = w.lock();
    return p && p->active;
  }));
}

std::optional<SystemTime> ManualLoopTimers::next_wall() const {
  std::optional<SystemTime> out;
  for (const auto& w : pending_)
    if (auto p = w.lock(); p && p->active && p->wall) out = out ? std::min(*out, *p->wall) : *p->wall;
  return out;
}

std::optional<SteadyTime> ManualLoopTimers::next_steady() const {
  std::optional<SteadyTime> out;
  for (const auto& w : pending_)
    if (auto p = w.lock(); p && p->active && p->steady) out = out ? std::min(*out, *p->steady) : *p->steady;
  return out;
}

}  // namespace certagent
