#pragma once
// A broker in a box for the certificate loop's tests and the clock benchmark: implements
// renewers/renewer.h, signs each CSR at once with its own CA (core/crypto), on an injected clock
// plus an offset (a broker whose clock is ahead of ours). Failures and holds are programmable.
// Not a mock of a real broker: the real ones have their own tests against real servers.

#include "core/clock.h"
#include "renewers/renewer.h"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace certagent::test {

class FakeRenewer final : public renewers::Renewer {
 public:
  explicit FakeRenewer(const Clock& clock);
  ~FakeRenewer() override;

  std::string_view type() const override { return "fake"; }
  boost::asio::awaitable<Result<renewers::IssueResult>> issue(renewers::IssueRequest request) override;

  // The CA's certificate: the trust bundle of the certificates it issues.
  const std::string& root_pem() const { return root_pem_; }

  // The broker's clock minus ours (positive: the broker is ahead).
  std::chrono::seconds broker_ahead{0};
  // not_before = the broker's now - backdate; not_after = not_before + lifetime.
  std::chrono::seconds backdate{60};
  std::chrono::seconds lifetime{3600};
  std::optional<SystemTime> renew_hint;
  // Sends its clock with each answer (IssueResult::broker_time), as an HTTP Date header would.
  bool send_date{false};
  // When set and returning an error, the request fails with it (a broker that is down).
  std::function<std::optional<Error>()> fail;

  int calls{0};    // requests received
  std::vector<std::string> requests;  // their certificates' names, in the order they came
  int issued{0};   // certificates signed

  // Requests wait until release() while held (an attempt in flight during a reload).
  void hold(const boost::asio::any_io_executor& executor);
  void release();

 private:
  struct Ca;
  const Clock& clock_;
  std::unique_ptr<Ca> ca_;
  std::string root_pem_;
  std::shared_ptr<boost::asio::steady_timer> gate_;
};

}  // namespace certagent::test
