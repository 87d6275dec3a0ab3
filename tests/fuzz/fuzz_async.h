#pragma once
// Shared by the harnesses that drive a broker client (acme, broker_answers): run one call on the
// harness's io_context; a call that throws or does not end within its limit is a finding.

#include "tests/fuzz/fuzz_util.h"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <chrono>
#include <exception>
#include <optional>
#include <utility>

namespace certagent::fuzz {

template <class T>
T run_within(boost::asio::io_context& io, boost::asio::awaitable<T> call,
             std::chrono::seconds limit = std::chrono::seconds(10)) {
  std::optional<T> out;
  boost::asio::co_spawn(io, std::move(call), [&](std::exception_ptr e, T value) {
    FUZZ_REQUIRE(!e, "the call threw");
    out = std::move(value);
  });
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!out) {
    io.run_one_for(std::chrono::milliseconds(100));
    FUZZ_REQUIRE(std::chrono::steady_clock::now() < deadline, "the call did not end within its limit");
  }
  return std::move(*out);
}

}  // namespace certagent::fuzz
