#pragma once
// The checked result type used across certagent: a value or an Error carrying a message for
// humans (and, from brokers, an optional retry hint). No exception crosses a module boundary.

#include <boost/system/result.hpp>

#include <chrono>
#include <optional>
#include <string>
#include <utility>

namespace certagent {

// What fixes a failure, which decides how it is retried and how it is reported (a broker's
// status code alone does not tell: Lemur answers 500 for an unknown authority).
enum class Cause : unsigned char {
  unspecified,   // a passing fault or not known: the ordinary backoff
  unreachable,   // the broker did not answer (refused, timeout, DNS, unhealthy): waiting helps
  refused,       // the broker answered and refuses us (credentials, account, authority, profile)
  local_config,  // our own configuration (ca_bundle, url, a secret not sealed): only an edit helps
};
std::string_view to_string(Cause c);

struct Error {
  std::string message;
  // A broker's hint (Retry-After, rate limit): do not retry before this much time has passed.
  std::optional<std::chrono::seconds> retry_after{};
  // Configuration-class failures (bad credentials, unknown authority): retried slowly, and the
  // message says what to fix.
  bool configuration{false};
  Cause cause{Cause::unspecified};
  // A short token for metrics and status ("credentials", "authority", "tls_trust", ...).
  std::string reason{};
};

// A configuration-class error: retried slowly; `message` must say what to change.
inline Error config_error(Cause cause, std::string reason, std::string message) {
  return Error{std::move(message), {}, true, cause, std::move(reason)};
}

// boost::system::result calls this (found by ADL) when value() is used on an error.
[[noreturn]] void throw_exception_from_error(const Error& e, const boost::source_location& loc);

template <class T = void>
using Result = boost::system::result<T, Error>;

inline Error make_error(std::string message) { return Error{std::move(message)}; }

// Prefixes context to an error message: "loading trust bundle: <inner>".
inline Error with_context(std::string_view context, Error e) {
  e.message = std::string(context) + ": " + e.message;
  return e;
}

}  // namespace certagent
