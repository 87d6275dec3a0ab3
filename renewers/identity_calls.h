#pragma once
// The host identity from the event loop. A discrete TPM takes tens of milliseconds per command
// (seconds while it runs a self-test), so renewers never call its blocking methods on the loop:
// they await the async_ forms, which queue the work on the identity's own thread and resume the
// coroutine on its executor. The socket, the file commits and the metrics keep running meanwhile.
//
// The TPM queue runs the earliest deadline first: an issuance's deadline is its certificate's
// expiry (see tpm_deadline), so a certificate close to expiry is not starved by a storm.

#include "core/clock.h"
#include "core/crypto/x509.h"
#include "core/result.h"
#include "core/secret.h"
#include "renewers/renewer.h"
#include "tpm/identity.h"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <functional>
#include <memory>
#include <string>
#include <utility>

namespace certagent::renewers {

// When an issuance's TPM work is due: the current leaf's notAfter (what lapses if the issuance
// waits), or, for a certificate that has none yet, now + the requested lifetime (nothing lapses
// yet: it goes after those that have something to lose).
inline tpm::Identity::Deadline tpm_deadline(const IssueRequest& request, SystemTime now) {
  if (!request.previous_cert_pem.empty()) {
    auto chain = crypto::parse_chain(request.previous_cert_pem);
    if (chain && !chain->empty()) return crypto::describe(chain->front().get()).not_after;
  }
  return now + request.lifetime;
}

// Awaits one async_ call of the identity: `start(done)` makes the call. The completion is
// posted to `ex`; the executor counts it as outstanding work until then, so an io_context does
// not run out of work while the TPM is busy.
template <class T>
boost::asio::awaitable<Result<T>> await_identity(boost::asio::any_io_executor ex,
                                                 std::function<void(tpm::Identity::Completion<T>)> start) {
  namespace asio = boost::asio;
  auto initiate = [ex](auto handler, std::function<void(tpm::Identity::Completion<T>)> begin) {
    auto work = asio::prefer(ex, asio::execution::outstanding_work.tracked);
    auto h = std::make_shared<decltype(handler)>(std::move(handler));
    begin([work, h](Result<T> r) {
      auto result = std::make_shared<Result<T>>(std::move(r));
      asio::post(work, [h, result] { (*h)(std::move(*result)); });
    });
  };
  return asio::async_initiate<const asio::use_awaitable_t<>, void(Result<T>)>(std::move(initiate), asio::use_awaitable,
                                                                        std::move(start));
}

inline boost::asio::awaitable<Result<tpm::Bytes>> identity_sign(tpm::Identity& identity,
                                                                 boost::asio::any_io_executor ex, tpm::Bytes digest,
                                                                 tpm::Identity::Deadline deadline) {
  std::function<void(tpm::Identity::Completion<tpm::Bytes>)> start =
      [&identity, digest = std::move(digest), deadline](tpm::Identity::Completion<tpm::Bytes> done) mutable {
        identity.async_sign_digest(std::move(digest), deadline, std::move(done));
      };
  return await_identity<tpm::Bytes>(std::move(ex), std::move(start));
}

inline boost::asio::awaitable<Result<tpm::Bytes>> identity_hmac(tpm::Identity& identity,
                                                                 boost::asio::any_io_executor ex, std::string name,
                                                                 tpm::Bytes data, tpm::Identity::Deadline deadline) {
  std::function<void(tpm::Identity::Completion<tpm::Bytes>)> start =
      [&identity, name = std::move(name), data = std::move(data),
       deadline](tpm::Identity::Completion<tpm::Bytes> done) mutable {
        identity.async_hmac(std::move(name), std::move(data), deadline, std::move(done));
      };
  return await_identity<tpm::Bytes>(std::move(ex), std::move(start));
}

inline boost::asio::awaitable<Result<Secret>> identity_unseal(tpm::Identity& identity,
                                                              boost::asio::any_io_executor ex, std::string name,
                                                              tpm::Identity::Deadline deadline) {
  std::function<void(tpm::Identity::Completion<Secret>)> start =
      [&identity, name = std::move(name), deadline](tpm::Identity::Completion<Secret> done) mutable {
        identity.async_unseal(std::move(name), deadline, std::move(done));
      };
  return await_identity<Secret>(std::move(ex), std::move(start));
}

}  // namespace certagent::renewers
