#pragma once
// Shared by the harnesses that drive a broker client (acme, broker_answers): run one call on the
// harness's io_context; a call that throws, or sits with nothing to do for its limit, is a
// finding.

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
T run_within(boost::asio::io_context& io, boost::asio::awaitable<T> call) {
  std::optional<T> out;
  boost::asio::co_spawn(io, std::move(call), [&](std::exception_ptr e, T value) {
    FUZZ_REQUIRE(!e, "the call threw");
    out = std::move(value);
  });
  IdleLimit limit(std::chrono::milliseconds(100));
  while (!out) {
    const bool progress = io.run_one_for(std::chrono::milliseconds(100)) != 0;
    FUZZ_REQUIRE(limit.round(progress), "the call sat for 10 s with nothing to do");
  }
  return std::move(*out);
}

}  // namespace certagent::fuzz
