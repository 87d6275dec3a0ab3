// AsyncSemaphore: the bound holds under contention, waiters are served earliest deadline first
// (in arrival order when equal or not given), and the in-use count and its high-water mark
// (exported as the broker in-flight metrics) are exact.

#include "core/async/semaphore.h"

#include <gtest/gtest.h>

#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include <vector>

namespace certagent {
namespace {

// Holds a slot across `hops` trips through the io_context, like a broker request that
// suspends, and records how many slots were held at once as seen from inside.
asio::awaitable<void> worker(AsyncSemaphore& s, int id, int hops, std::vector<int>& order,
                             std::size_t& worst_seen) {
  co_await s.acquire();
  SemaphoreSlot slot(s);
  order.push_back(id);
  worst_seen = std::max(worst_seen, s.in_use());
  for (int i = 0; i < hops; ++i) co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
}

TEST(AsyncSemaphore, BoundHoldsAndHighWaterReachesIt) {
  asio::io_context ioc;
  AsyncSemaphore s(ioc.get_executor(), 3);
  std::vector<int> order;
  std::size_t worst_seen = 0;
  for (int i = 0; i < 20; ++i) asio::co_spawn(ioc, worker(s, i, 5, order, worst_seen), asio::detached);
  ioc.run();
  ASSERT_EQ(order.size(), 20u);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(order[i], i) << "FIFO";
  EXPECT_EQ(worst_seen, 3u);
  EXPECT_EQ(s.high_water(), 3u);
  EXPECT_EQ(s.in_use(), 0u);
  EXPECT_EQ(s.waiting(), 0u);
}

TEST(AsyncSemaphore, HighWaterCountsOnlyWhatOverlapped) {
  asio::io_context ioc;
  AsyncSemaphore s(ioc.get_executor(), 8);
  std::vector<int> order;
  std::size_t worst_seen = 0;
  // One after the other: never more than one held, however large the bound.
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        for (int i = 0; i < 5; ++i) co_await worker(s, i, 2, order, worst_seen);
      },
      asio::detached);
  ioc.run();
  EXPECT_EQ(order.size(), 5u);
  EXPECT_EQ(s.high_water(), 1u);
  EXPECT_EQ(s.in_use(), 0u);
}

TEST(AsyncSemaphore, WaitersGoEarliestDeadlineFirstThenInArrivalOrder) {
  asio::io_context ioc;
  AsyncSemaphore s(ioc.get_executor(), 1);
  using namespace std::chrono_literals;
  const AsyncSemaphore::Deadline t0{std::chrono::hours(500000)};
  std::vector<int> order;
  std::size_t worst_seen = 0;
  auto spawn = [&](int id, AsyncSemaphore::Deadline due) {
    asio::co_spawn(
        ioc,
        [&, id, due]() -> asio::awaitable<void> {
          co_await s.acquire(due);
          SemaphoreSlot slot(s);
          order.push_back(id);
          worst_seen = std::max(worst_seen, s.in_use());
          co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
        },
        asio::detached);
  };
  // A storm of 1,000 with time to spare (due in 1 h, in arrival order), one without a deadline,
  // then one due in 5 min and one already expired: those two go right after the holder.
  spawn(0, t0 + 1h);  // takes the free slot at once
  for (int i = 1; i <= 1000; ++i) spawn(i, t0 + 1h);
  spawn(1001, AsyncSemaphore::Deadline::max());
  spawn(1002, t0 + 5min);
  spawn(1003, t0 - 1min);
  ioc.run();
  ASSERT_EQ(order.size(), 1004u);
  EXPECT_EQ(order[0], 0);
  EXPECT_EQ(order[1], 1003) << "the expired one next";
  EXPECT_EQ(order[2], 1002) << "then the one due in 5 min, not after the storm";
  for (int i = 1; i <= 1000; ++i) EXPECT_EQ(order[2 + i], i) << "equal deadlines in arrival order";
  EXPECT_EQ(order[1003], 1001) << "no deadline goes last";
  EXPECT_EQ(worst_seen, 1u);
  EXPECT_EQ(s.waiting(), 0u);
}

}  // namespace
}  // namespace certagent
