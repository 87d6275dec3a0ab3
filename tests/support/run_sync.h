#pragma once
// Runs one coroutine to completion on an io_context (tests only). Other work on the context
// (servers, timers) runs meanwhile and stays queued for the next call.

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include <exception>
#include <future>
#include <optional>
#include <utility>

namespace certagent::test {

template <class T>
T run_sync(boost::asio::io_context& ioc, boost::asio::awaitable<T> task) {
  std::optional<T> out;
  std::exception_ptr error;
  boost::asio::co_spawn(
      ioc,
      [&]() -> boost::asio::awaitable<void> {
        try {
          out.emplace(co_await std::move(task));
        } catch (...) {
          error = std::current_exception();
        }
        ioc.stop();  // other work (a listening responder) may keep the context busy forever
      },
      boost::asio::detached);
  ioc.restart();
  ioc.run();
  if (error) std::rethrow_exception(error);
  return std::move(*out);
}

// Runs `f` on the thread that runs `ioc` (a server under test) and waits for its result.
template <class F>
auto run_on_io(boost::asio::io_context& ioc, F f) -> decltype(f()) {
  std::packaged_task<decltype(f())()> task(std::move(f));
  auto result = task.get_future();
  boost::asio::post(ioc, [&] { task(); });
  return result.get();
}

}  // namespace certagent::test
