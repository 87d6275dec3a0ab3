// TPM commands per issuance, counted by the TPM latency model (tests/support/tpm_proxy)
// between the identity and swtpm, with real brokers. In the steady state: cfssl one TPM2_HMAC,
// Lemur one TPM2_Unseal, ACME one TPM2_Sign per JWS request it sends and nothing else, the local
// CA none; never a primary key on the issuance path. A change that adds a load or a flush to an
// issuance fails here.
//
// Also: a TPM busy for seconds (answering TPM_RC_TESTING) delays an issuance without failing it,
// and the event loop runs on meanwhile.

#include "tests/integration/tpm_brokers/tpm_broker_rig.h"

#include "renewers/acme_renewer.h"
#include "renewers/lemur_renewer.h"
#include "tests/support/run_sync.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <gtest/gtest.h>

namespace certagent::test {
namespace {

using namespace std::chrono_literals;
using tpm_proxy::kCcCreatePrimary;
using tpm_proxy::kCcHmac;
using tpm_proxy::kCcSign;
using tpm_proxy::kCcUnseal;

TEST(TpmBrokerCommands, CfsslIsOneHmacPerIssuance) {
  TpmBrokerRig rig({Broker::cfssl});
  auto first = rig.issue(Broker::cfssl, "warm");  // loads the auth key (kept loaded after)
  ASSERT_TRUE(first.result) << first.result.error().message;
  EXPECT_EQ(first.tpm.completed_count(kCcCreatePrimary), 0u) << first.tpm.summary();
  for (int i = 0; i < 3; ++i) {
    auto issued = rig.issue(Broker::cfssl, "web" + std::to_string(i));
    ASSERT_TRUE(issued.result) << issued.result.error().message;
    EXPECT_EQ(issued.tpm.completed_count(kCcHmac), 1u) << issued.tpm.summary();
    EXPECT_EQ(issued.tpm.completed_total(), 1u) << issued.tpm.summary();
  }
}

TEST(TpmBrokerCommands, LemurIsOneUnsealPerIssuance) {
  TpmBrokerRig rig({Broker::lemur});
  auto first = rig.issue(Broker::lemur, "warm");
  ASSERT_TRUE(first.result) << first.result.error().message;
  EXPECT_EQ(first.tpm.completed_count(kCcCreatePrimary), 0u) << first.tpm.summary();
  for (int i = 0; i < 3; ++i) {
    auto issued = rig.issue(Broker::lemur, "web" + std::to_string(i));
    ASSERT_TRUE(issued.result) << issued.result.error().message;
    EXPECT_EQ(issued.tpm.completed_count(kCcUnseal), 1u) << issued.tpm.summary();
    EXPECT_EQ(issued.tpm.completed_total(), 1u) << issued.tpm.summary();
  }
}

TEST(TpmBrokerCommands, AcmeSignsEachJwsRequestOnceAndNothingElse) {
  TpmBrokerRig rig({Broker::acme});
  auto& acme = static_cast<renewers::AcmeRenewer&>(rig.renewer(Broker::acme));
  auto first = rig.issue(Broker::acme, "warm");  // registers the account
  ASSERT_TRUE(first.result) << first.result.error().message;
  for (int i = 0; i < 2; ++i) {
    const auto jws_before = acme.stats().signed_requests;
    auto issued = rig.issue(Broker::acme, "web" + std::to_string(i));
    ASSERT_TRUE(issued.result) << issued.result.error().message;
    const auto jws = acme.stats().signed_requests - jws_before;
    EXPECT_GT(jws, 0u);
    EXPECT_EQ(issued.tpm.completed_count(kCcSign), jws) << issued.tpm.summary();
    EXPECT_EQ(issued.tpm.completed_total(), jws) << issued.tpm.summary();
  }
}

// The steady state: a renewal of a name whose authorization the CA reuses (Let's Encrypt does
// for 30 days; pebble here always). newOrder answers "ready", so no authorization is fetched and
// no challenge answered; finalize; a poll only for each "not yet" answer (pebble finalizes
// asynchronously: one); the download. Every nonce comes from the previous answer. One TPM
// signature per JWS request and no other TPM command. A change that adds a request fails here.
TEST(TpmBrokerCommands, AcmeRenewalWithAReusedAuthorizationSendsOnlyTheRequestsItMust) {
  TpmBrokerRig rig({Broker::acme});
  auto& acme = static_cast<renewers::AcmeRenewer&>(rig.renewer(Broker::acme));
  auto first = rig.issue(Broker::acme, "web");  // the account, and the name validated once
  ASSERT_TRUE(first.result) << first.result.error().message;
  EXPECT_EQ(acme.stats().signed_by_step["challenge"], 1u);
  for (int i = 0; i < 3; ++i) {
    const auto before = acme.stats();
    auto renewed = rig.issue(Broker::acme, "web");
    ASSERT_TRUE(renewed.result) << renewed.result.error().message;
    auto after = acme.stats();
    auto sent = [&](const char* step) {
      auto b = before.signed_by_step.find(step);
      return after.signed_by_step[step] - (b == before.signed_by_step.end() ? 0 : b->second);
    };
    const auto jws = after.signed_requests - before.signed_requests;
    const auto not_yet = after.not_yet_answers - before.not_yet_answers;
    EXPECT_EQ(sent("newOrder"), 1u);
    EXPECT_EQ(sent("authorization"), 0u) << "an order already ready needs no authorization fetched";
    EXPECT_EQ(sent("challenge"), 0u);
    EXPECT_EQ(sent("authorization poll"), 0u);
    EXPECT_EQ(sent("finalize"), 1u);
    EXPECT_EQ(sent("order poll"), not_yet) << "a poll without a \"not yet\" answer before it";
    EXPECT_EQ(sent("certificate download"), 1u);
    EXPECT_EQ(jws, 3u + not_yet);
    EXPECT_EQ(after.nonce_fetches, before.nonce_fetches) << "a newNonce although the last answer had a nonce";
    EXPECT_EQ(after.bad_nonce_retries, before.bad_nonce_retries);
    EXPECT_EQ(renewed.tpm.completed_count(kCcSign), jws) << renewed.tpm.summary();
    EXPECT_EQ(renewed.tpm.completed_total(), jws) << renewed.tpm.summary();
  }
}

TEST(TpmBrokerCommands, LocalCaUsesNoTpm) {
  TpmBrokerRig rig({Broker::local});
  for (int i = 0; i < 2; ++i) {
    auto issued = rig.issue(Broker::local, "web" + std::to_string(i));
    ASSERT_TRUE(issued.result) << issued.result.error().message;
    EXPECT_EQ(issued.tpm.completed_total(), 0u) << issued.tpm.summary();
  }
}

TEST(TpmBrokerCommands, BothSecretsInTurnNeverCreateAPrimary) {
  TpmBrokerRig rig({Broker::cfssl, Broker::lemur});
  for (int i = 0; i < 2; ++i) {
    for (Broker b : {Broker::cfssl, Broker::lemur}) {
      auto issued = rig.issue(b, std::string(broker_name(b)) + std::to_string(i));
      ASSERT_TRUE(issued.result) << issued.result.error().message;
      // One object kept besides the identity: switching secrets reloads one from the saved SRK
      // context (flush, ContextLoad, Load, flush of the SRK) and runs the command.
      EXPECT_EQ(issued.tpm.completed_count(kCcCreatePrimary), 0u) << issued.tpm.summary();
      EXPECT_LE(issued.tpm.completed_total(), 5u) << issued.tpm.summary();
    }
  }
  EXPECT_EQ(rig.identity().primary_count(), 1u);  // the one at open
}

// A TPM in a self-test for longer than ESAPI's five immediate resubmissions: the identity backs
// off and sends again; the issuance waits and succeeds; the loop keeps running meanwhile.
TEST(TpmBrokerCommands, BusyTpmDelaysWithoutFailingOrStallingTheLoop) {
  TpmBrokerRig rig({Broker::cfssl});
  auto warm = rig.issue(Broker::cfssl, "warm");
  ASSERT_TRUE(warm.result) << warm.result.error().message;

  rig.proxy().busy_for(tpm_proxy::kRcTesting, 1500ms);
  const auto retries_before = rig.identity().busy_retry_count();
  // A timer on the same loop: it fires while the issuance waits for the TPM.
  bool timer_fired = false;
  bool issued_first = false;
  auto& ioc = rig.ioc();
  boost::asio::co_spawn(
      ioc,
      [&]() -> boost::asio::awaitable<void> {
        boost::asio::steady_timer t(ioc, 100ms);
        co_await t.async_wait(boost::asio::use_awaitable);
        timer_fired = true;
      },
      boost::asio::detached);
  renewers::Renewer& cfssl = rig.renewer(Broker::cfssl);
  auto request = rig.make_request("busy");
  const auto before = rig.proxy().stats();
  auto result = run_sync(ioc, [&]() -> boost::asio::awaitable<Result<renewers::IssueResult>> {
    auto r = co_await cfssl.issue(std::move(request));
    issued_first = !timer_fired;
    co_return r;
  }());
  ASSERT_TRUE(result) << result.error().message;
  EXPECT_TRUE(timer_fired);
  EXPECT_FALSE(issued_first) << "the issuance completed before a 100 ms timer: the TPM was not busy";
  const auto d = rig.proxy().stats().since(before);
  EXPECT_EQ(d.completed_count(kCcHmac), 1u) << d.summary();
  EXPECT_GT(d.injected_total, 5u) << d.summary();
  EXPECT_GT(rig.identity().busy_retry_count(), retries_before);
}

}  // namespace
}  // namespace certagent::test
