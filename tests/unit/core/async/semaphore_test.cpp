// AsyncSemaphore: the bound holds under contention, waiters are served in order, and the
// in-use count and its high-water mark (exported as the broker in-flight metrics) are exact.

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

}  // namespace
}  // namespace certagent
