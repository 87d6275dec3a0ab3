// The certificate loop on a manual clock: whole loops (issue, validate, commit, schedule, back
// off, expire, supersede, clock steps) driven in milliseconds, without sleeping. The broker is
// tests/support/fake_renewer (signs at once with its own CA); everything else is the daemon's.

#include "agent/certificate_loop.h"
#include "agent/clock_watch.h"
#include "agent/renewal_policy.h"
#include "agent/state_file.h"
#include "core/crypto/validation.h"
#include "core/logging.h"
#include "tests/support/fake_renewer.h"
#include "tests/support/test_support.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <gtest/gtest.h>

#include <climits>
#include <set>
#include <thread>

namespace certagent {
namespace {

using namespace std::chrono_literals;
using test::FakeRenewer;

// An on_expiry hook (or reloader) that records what it was given.
class RecordingReloader final : public reloaders::Reloader {
 public:
  std::string_view type() const override { return "recording"; }
  boost::asio::awaitable<reloaders::ReloadOutcome> reload(const reloaders::ReloadEvent& event) override {
    events.push_back(event);
    co_return reloaders::ReloadOutcome{};
  }
  std::vector<reloaders::ReloadEvent> events;
};

SystemTime whole_seconds(SystemTime t) { return std::chrono::floor<std::chrono::seconds>(t); }

class CertificateLoopTest : public ::testing::Test {
 protected:
  CertificateLoopTest()
      : clock_(whole_seconds(std::chrono::system_clock::now())),
        timers_(clock_),
        audit_(dir_ / "audit.log"),
        workers_(1) {
    log::get("agent")->set_level(spdlog::level::off);  // the tests read the store, metrics and audit
    use_broker(4);
  }

  // A new fake broker allowing `max_in_flight` issuances at a time (before any loop starts).
  void use_broker(std::size_t max_in_flight) {
    auto renewer = std::make_unique<FakeRenewer>(clock_);
    broker_ = renewer.get();
    test::write_file(dir_ / "root.pem", broker_->root_pem());
    config::BrokerConfig bc;
    bc.name = "fake";
    bc.type = "fake";
    bc.max_in_flight = max_in_flight;
    handle_ = std::make_shared<BrokerHandle>(bc, std::move(renewer), io_.get_executor());
  }

  ~CertificateLoopTest() override {
    for (auto& l : loops_) l->stop();
    settle();
    workers_.join();
  }

  config::CertificateConfig cert(const std::string& name) const {
    config::CertificateConfig c;
    c.name = name;
    c.broker = "fake";
    c.common_name = name + ".test";
    c.dns_names = {name + ".test"};
    c.lifetime = 1h;
    c.max_lifetime = 2h;
    c.renew_at = 0.5;
    c.jitter = 0.1;
    c.trust_bundle = dir_ / "root.pem";
    return c;
  }

  LoopServices services(unsigned seed = 1) {
    LoopServices s;
    s.executor = io_.get_executor();
    s.workers = &workers_;
    s.clock = &clock_;
    s.store = &store_;
    s.metrics = &metrics_;
    s.audit = &audit_;
    s.state_dir = dir_.path();
    s.trust_bundles = bundles_;
    s.timers = timers_.factory();
    s.seed = seed * 2654435761u;  // spread: minstd_rand's first draws from small seeds are close
    return s;
  }

  // Configures the store with `certs` and starts one loop each (seeds 1, 2, ...).
  void start(std::vector<config::CertificateConfig> certs,
             std::vector<std::shared_ptr<reloaders::Reloader>> expiry_hooks = {}) {
    for (auto& c : certs) {  // one configuration entry per hook, as config loading makes them
      c.on_expiry.clear();
      for (const auto& hook : expiry_hooks) {
        config::ReloaderConfig rc;
        rc.type = std::string(hook->type());
        rc.timeout = 5s;
        c.on_expiry.push_back(rc);
      }
    }
    configs_ = certs;
    store_.configure(certs);
    unsigned seed = 1;
    for (const auto& c : certs) spawn(c, seed++, expiry_hooks);
    settle();
  }

  // One loop for `c`, which the store must already hold.
  void spawn(const config::CertificateConfig& c, unsigned seed,
             std::vector<std::shared_ptr<reloaders::Reloader>> expiry_hooks = {}) {
    auto loop = std::make_shared<CertificateLoop>(services(seed), c, handle_,
                                                  std::vector<std::shared_ptr<reloaders::Reloader>>{}, expiry_hooks);
    boost::asio::co_spawn(io_, loop->run(), boost::asio::detached);
    loops_.push_back(loop);
  }

  // Runs everything that is ready; the clock does not move.
  void settle() {
    for (int idle = 0; idle < 3;) {
      io_.restart();
      idle = io_.poll() == 0 ? idle + 1 : 0;
    }
  }

  // settle() until `done` holds (loops that read their files on the worker thread first may
  // need more than one round); false after 10 s.
  template <class Pred>
  bool settle_until(Pred done) {
    const auto give_up = std::chrono::steady_clock::now() + 10s;
    while (!done()) {
      if (std::chrono::steady_clock::now() > give_up) return false;
      settle();
      std::this_thread::yield();
    }
    return true;
  }

  // Time passes by `d` (both clocks), firing every deadline on the way in order.
  void advance(std::chrono::system_clock::duration d) {
    const SteadyTime target = clock_.steady_now() + std::chrono::duration_cast<SteadyTime::duration>(d);
    while (true) {
      std::optional<SteadyTime> next = timers_.next_steady();
      if (auto wall = timers_.next_wall()) {
        const SteadyTime w = clock_.steady_now() + std::chrono::duration_cast<SteadyTime::duration>(*wall - clock_.now());
        next = next ? std::min(*next, w) : w;
      }
      if (!next || *next > target) break;
      if (*next > clock_.steady_now()) clock_.advance(*next - clock_.steady_now());
      timers_.fire_due();
      settle();
    }
    if (target > clock_.steady_now()) clock_.advance(target - clock_.steady_now());
    timers_.fire_due();
    settle();
  }

  // Someone set the wall clock by `d`; ClockWatch wakes the loops when it is >= 1 s.
  void step(std::chrono::system_clock::duration d) {
    clock_.step(d);
    for (auto& l : loops_) l->wake();
    settle();
  }

  const CertEntry& entry(const std::string& name = "web") const { return *store_.find(name); }

  // The pending backoff of the (only) loop, on the monotonic clock.
  std::chrono::milliseconds backoff_left() const {
    auto next = timers_.next_steady();
    EXPECT_TRUE(next.has_value());
    return next ? std::chrono::duration_cast<std::chrono::milliseconds>(*next - clock_.steady_now()) : 0ms;
  }

  void broker_down() {
    broker_->fail = [] { return std::optional<Error>(make_error("connection refused")); };
  }
  void broker_up() { broker_->fail = nullptr; }

  double renewals(const std::string& result, const std::string& name = "web") const {
    return metrics_.value(metric::kRenewals, {{"name", name}, {"result", result}});
  }

  test::TempDir dir_;
  boost::asio::io_context io_;
  ManualClock clock_;
  ManualLoopTimers timers_;
  CertificateStore store_;
  Metrics metrics_;
  AuditLog audit_;
  boost::asio::thread_pool workers_;
  std::shared_ptr<TrustBundles> bundles_{std::make_shared<TrustBundles>()};
  FakeRenewer* broker_{nullptr};
  std::shared_ptr<BrokerHandle> handle_;
  std::vector<config::CertificateConfig> configs_;
  std::vector<std::shared_ptr<CertificateLoop>> loops_;
};

// ---- the renewal timing contract -------------------------------------------------------------

TEST_F(CertificateLoopTest, IssuesAtStartThenRenewsAtTheRenewPointWithinTheJitter) {
  const SystemTime t0 = clock_.now();
  start({cert("web")});
  ASSERT_EQ(broker_->issued, 1);
  EXPECT_EQ(entry().state, CertState::valid);
  ASSERT_TRUE(entry().material);
  // Counted from the arrival (the leaf is backdated 60 s): t0 + 1h × 0.5 × (1 ± 0.1).
  ASSERT_TRUE(entry().next_renewal);
  const SystemTime due = *entry().next_renewal;
  const auto left = entry().material->not_after - t0;  // 59 min: lifetime counted from the arrival
  EXPECT_GE(due, t0 + left * 45 / 100);
  EXPECT_LE(due, t0 + left * 55 / 100);
  EXPECT_EQ(metrics_.value(metric::kNextRenewal, {{"name", "web"}}), to_unix_seconds(due));
  EXPECT_EQ(metrics_.value(metric::kNotAfter, {{"name", "web"}}), to_unix_seconds(entry().material->not_after));

  advance(due - clock_.now() - 1s);
  EXPECT_EQ(broker_->calls, 1) << "renewed before its renew point";
  advance(1s);
  EXPECT_EQ(broker_->issued, 2);
  EXPECT_EQ(renewals("success"), 2);
  // The loop slept once per renewal: no polling.
  EXPECT_LE(timers_.waits_started(), 3u);
}

TEST_F(CertificateLoopTest, JitterSpreadsRenewPointsWithinItsBounds) {
  const SystemTime t0 = clock_.now();
  std::vector<config::CertificateConfig> certs;
  for (int i = 0; i < 40; ++i) certs.push_back(cert("c" + std::to_string(i)));
  start(certs);
  std::set<SystemTime> points;
  for (const auto& c : certs) {
    const auto due = *store_.find(c.name)->next_renewal;
    const auto left = store_.find(c.name)->material->not_after - t0;
    EXPECT_GE(due, t0 + left * 45 / 100) << c.name;
    EXPECT_LE(due, t0 + left * 55 / 100) << c.name;
    points.insert(due);
  }
  EXPECT_GT(points.size(), 30u) << "the fleet renews at one moment";
}

TEST_F(CertificateLoopTest, BrokerHintWinsOnlyWhenEarlier) {
  broker_->renew_hint = clock_.now() + 5min;
  start({cert("web")});
  EXPECT_EQ(*entry().next_renewal, clock_.now() + 5min);

  broker_->renew_hint = clock_.now() + 5min + 50min;  // later than our own point: ignored
  advance(5min);
  ASSERT_EQ(broker_->issued, 2);
  EXPECT_LT(*entry().next_renewal, clock_.now() + 34min);
}

TEST_F(CertificateLoopTest, MaterialKeptAcrossAReloadIsReusedNotReissued) {
  start({cert("web")});
  ASSERT_EQ(broker_->issued, 1);
  const auto serial = entry().material->serial_hex;
  const auto due = *entry().next_renewal;
  // A reload that changes another certificate keeps this one's material; a new loop for it
  // (its configuration object is rebuilt) must reuse it, not ask the broker again.
  loops_.front()->stop();
  settle();
  loops_.clear();
  advance(1min);
  start({cert("web")});
  EXPECT_EQ(broker_->calls, 1);
  EXPECT_EQ(entry().material->serial_hex, serial);
  // Same rule, counted from the last success: within the same jitter window.
  EXPECT_GE(*entry().next_renewal, due - 3min - 1s);
  EXPECT_LE(*entry().next_renewal, due + 3min + 1s);
}

// ---- backoff ---------------------------------------------------------------------------------

TEST_F(CertificateLoopTest, BackoffDoublesWithFullJitterCappedAt30sWhileNothingIsHeld) {
  broker_down();
  start({cert("web")});
  ASSERT_EQ(broker_->calls, 1);
  for (int n = 1; n <= 8; ++n) {
    const auto wait = backoff_left();
    const auto ceiling = std::min<std::chrono::milliseconds>(30s, std::chrono::seconds(1 << (n - 1)));
    EXPECT_LE(wait, ceiling) << "failure " << n;
    EXPECT_GE(wait, 0ms);
    EXPECT_EQ(entry().consecutive_failures, n);
    advance(wait);
    EXPECT_EQ(broker_->calls, n + 1) << "retry " << n << " not made when due";
  }
  EXPECT_EQ(renewals("failure"), 9);
  EXPECT_EQ(entry().state, CertState::not_issued);
}

TEST_F(CertificateLoopTest, BackoffCapIsTenPercentOfTimeLeftBetween1sAnd5min) {
  start({cert("web")});
  const auto not_after = entry().material->not_after;
  broker_down();
  advance(*entry().next_renewal - clock_.now());
  ASSERT_EQ(broker_->calls, 2);
  // About 30 min left: the cap is 10 % of it (3 min), under the 5-minute ceiling.
  for (int n = 0; n < 6; ++n) advance(backoff_left());
  EXPECT_LE(backoff_left(), policy::backoff_cap(clock_.now(), not_after));
  EXPECT_LE(backoff_left(), 5min);
  // 20 s left: 10 % is 2 s. (A renewal asked for now fails, and its retry is that close.)
  advance(not_after - 20s - clock_.now());
  loops_.front()->request_renewal();
  settle();
  EXPECT_LE(policy::backoff_cap(clock_.now(), not_after), 2s);
  EXPECT_LE(backoff_left(), 2s);
  EXPECT_EQ(entry().state, CertState::valid);
  EXPECT_EQ(broker_->issued, 1);
}

TEST_F(CertificateLoopTest, BackoffWaitsOnTheMonotonicClockWhenTheWallClockStepsBack) {
  broker_down();
  start({cert("web")});
  ASSERT_EQ(broker_->calls, 1);
  advance(backoff_left());
  advance(backoff_left());
  ASSERT_EQ(broker_->calls, 3);
  const int calls = broker_->calls;
  broker_up();
  // An NTP step back by an hour during the outage: the pending retry stays a few seconds away
  // (it was an hour away when retry times were wall-clock instants).
  step(-1h);
  advance(30s);
  EXPECT_GT(broker_->calls, calls);
  EXPECT_EQ(entry().state, CertState::valid);
}

// ---- circuit ---------------------------------------------------------------------------------

TEST_F(CertificateLoopTest, CircuitOpensAfterKOpenAfterBrokerFailuresAndClosesOnAnAnswer) {
  broker_down();
  start({cert("a"), cert("b"), cert("c"), cert("d")});
  EXPECT_GE(handle_->consecutive_failures, BrokerHandle::kOpenAfter);
  EXPECT_TRUE(handle_->circuit_open());
  EXPECT_EQ(metrics_.value(metric::kBrokerUp, {{"broker", "fake"}}), 0);
  broker_up();
  advance(30s);
  EXPECT_FALSE(handle_->circuit_open());
  EXPECT_EQ(handle_->consecutive_failures, 0);
  EXPECT_EQ(metrics_.value(metric::kBrokerUp, {{"broker", "fake"}}), 1);
  for (const char* n : {"a", "b", "c", "d"}) EXPECT_EQ(store_.find(n)->state, CertState::valid) << n;
}

TEST_F(CertificateLoopTest, WhileTheCircuitIsOpenRequestsGoOneAtATime) {
  broker_down();
  start({cert("a"), cert("b"), cert("c")});
  ASSERT_TRUE(handle_->circuit_open());
  broker_->hold(io_.get_executor());
  const int before = broker_->calls;
  // Every loop is due within 30 s; with the broker hanging, only one request is let through.
  advance(30s);
  EXPECT_EQ(broker_->calls, before + 1);
  broker_up();
  broker_->release();
  settle();
  EXPECT_FALSE(handle_->circuit_open());
}

TEST_F(CertificateLoopTest, ACertificateCloseToExpiryIsNotStarvedByAStormForTheBrokersSlots) {
  use_broker(1);
  std::vector<config::CertificateConfig> certs{cert("urgent")};
  for (int i = 0; i < 300; ++i) certs.push_back(cert("storm" + std::to_string(i)));
  configs_ = certs;
  store_.configure(certs);
  const SystemTime t0 = clock_.now();
  spawn(certs[0], 1);
  settle();
  ASSERT_EQ(entry("urgent").state, CertState::valid);
  const SystemTime urgent_due = *entry("urgent").next_renewal;
  const SystemTime urgent_expiry = entry("urgent").material->not_after;
  ASSERT_LT(urgent_due, t0 + 34min);

  // 20 minutes later 300 new certificates start at once; the broker hangs on the first one, the
  // other 299 queue for its only slot. Then "urgent" reaches its renew point and queues too.
  advance(20min);
  broker_->hold(io_.get_executor());
  for (int i = 1; i <= 300; ++i) spawn(certs[static_cast<std::size_t>(i)], static_cast<unsigned>(i + 1));
  ASSERT_TRUE(settle_until([&] { return handle_->in_flight.waiting() == 299u; })) << handle_->in_flight.waiting();
  advance(urgent_due - clock_.now());
  ASSERT_EQ(handle_->in_flight.waiting(), 300u);
  ASSERT_LT(urgent_expiry, clock_.now() + configs_[1].lifetime) << "the storm's deadlines are later";

  broker_->release();
  ASSERT_TRUE(settle_until([&] { return broker_->requests.size() == 302u; })) << broker_->requests.size();
  // The one whose leaf lapses first is served next, not after the 299 that arrived before it.
  EXPECT_EQ(broker_->requests[0], "urgent");
  EXPECT_EQ(broker_->requests[1], "storm0");
  EXPECT_EQ(broker_->requests[2], "urgent");
  for (std::size_t i = 3; i < broker_->requests.size(); ++i)  // the storm in arrival order
    EXPECT_EQ(broker_->requests[i], "storm" + std::to_string(i - 2));
  EXPECT_EQ(entry("urgent").state, CertState::valid);
  EXPECT_EQ(handle_->in_flight.high_water(), 1u);
}

// ---- fail-closed expiry ----------------------------------------------------------------------

TEST_F(CertificateLoopTest, AtExpiryTheStoreMetricsAndHooksFailClosedOnTime) {
  auto hook = std::make_shared<RecordingReloader>();
  start({cert("web")}, {hook});
  const auto material = entry().material;
  broker_down();
  advance(material->not_after - clock_.now() - 1s);
  EXPECT_EQ(entry().state, CertState::valid);
  EXPECT_TRUE(hook->events.empty());
  advance(1s);
  EXPECT_EQ(entry().state, CertState::expired);
  EXPECT_EQ(entry().valid_material(clock_.now()), nullptr);
  EXPECT_EQ(metrics_.value(metric::kExpired, {{"name", "web"}}), 1);
  ASSERT_EQ(hook->events.size(), 1u);
  EXPECT_TRUE(hook->events.front().expired);
  EXPECT_EQ(hook->events.front().material, material);
  EXPECT_NE(test::read_file(dir_ / "audit.log").find("\"event\":\"expired\""), std::string::npos);
  // Expired: retries come at least every 30 s, and the first success ends it.
  broker_up();
  advance(30s);
  EXPECT_EQ(entry().state, CertState::valid);
  EXPECT_EQ(metrics_.value(metric::kExpired, {{"name", "web"}}), 0);
  EXPECT_EQ(hook->events.size(), 1u);
}

// ---- configuration reload --------------------------------------------------------------------

TEST_F(CertificateLoopTest, AReloadSupersedesAnAttemptInFlight) {
  broker_->hold(io_.get_executor());
  start({cert("web")});
  ASSERT_EQ(broker_->calls, 1);
  ASSERT_TRUE(entry().renewing);
  // The reload changes the certificate's names: the old loop is stopped, its answer unwanted.
  auto changed = cert("web");
  changed.dns_names.push_back("www.web.test");
  store_.configure({changed});
  loops_.front()->stop();
  broker_->release();
  settle();
  EXPECT_TRUE(loops_.front()->stopped());
  EXPECT_EQ(entry().material, nullptr) << "a superseded attempt committed";
  EXPECT_EQ(renewals("success"), 0);
  EXPECT_EQ(renewals("failure"), 0);
  EXPECT_EQ(handle_->consecutive_failures, 0);
  EXPECT_EQ(entry().consecutive_failures, 0);
}

// ---- clock movements (issue 20) --------------------------------------------------------------

TEST_F(CertificateLoopTest, ALeafThatStartsAheadIsNotYetValidUntilItsNotBefore) {
  broker_->broker_ahead = 3min;  // within validation's 5-minute tolerance
  broker_->backdate = 0s;
  start({cert("web")});
  ASSERT_EQ(broker_->issued, 1);
  EXPECT_EQ(entry().state, CertState::not_yet_valid);
  EXPECT_EQ(effective_state(entry(), clock_.now()), CertState::not_yet_valid);
  EXPECT_EQ(describe_certificates(store_, clock_.now()).at(0).as_object().at("state").as_string(), "not_yet_valid");
  EXPECT_EQ(metrics_.value(metric::kNotYetValid, {{"name", "web"}}), 1);
  EXPECT_EQ(metrics_.value(metric::kClockSkew, {{"broker", "fake"}}), 180);
  EXPECT_NE(test::read_file(dir_ / "audit.log").find("\"state\":\"not_yet_valid\""), std::string::npos);
  EXPECT_EQ(entry().valid_material(clock_.now()), nullptr);
  // The loop waits for not_before instead of asking the broker again and again.
  advance(3min - 1s);
  EXPECT_EQ(broker_->calls, 1);
  EXPECT_EQ(entry().state, CertState::not_yet_valid);
  advance(1s);
  EXPECT_EQ(entry().state, CertState::valid);
  EXPECT_EQ(metrics_.value(metric::kNotYetValid, {{"name", "web"}}), 0);
  EXPECT_EQ(broker_->calls, 1);
}

TEST_F(CertificateLoopTest, ABrokerClockAheadFailsClosedAsClockSkewNotAsABrokerFailure) {
  broker_->broker_ahead = 1h;
  start({cert("web")});
  ASSERT_EQ(broker_->calls, 1);
  EXPECT_EQ(entry().state, CertState::not_issued);
  EXPECT_NE(entry().last_error.find("host's clock is 59m behind the broker 'fake'"), std::string::npos)
      << entry().last_error;
  EXPECT_NE(entry().last_error.find("fix time sync"), std::string::npos);
  ASSERT_TRUE(entry().clock_skew);
  EXPECT_EQ(*entry().clock_skew, 59min) << "without a Date header, the leaf's not_before is the lower bound";
  EXPECT_EQ(describe_certificates(store_, clock_.now()).at(0).as_object().at("clock_skew_seconds").as_int64(), 3540);
  EXPECT_EQ(metrics_.value(metric::kClockSkew, {{"broker", "fake"}}), 3540);
  EXPECT_EQ(renewals("clock_skew"), 1);
  EXPECT_EQ(renewals("failure"), 0);
  EXPECT_EQ(renewals("rejected"), 0);
  EXPECT_EQ(handle_->consecutive_failures, 0);
  EXPECT_EQ(metrics_.value(metric::kBrokerUp, {{"broker", "fake"}}), 1);
  // Time sync fixes our clock (a step forward to the broker's time): the loop retries at once.
  broker_->broker_ahead = 0s;
  step(1h);
  EXPECT_EQ(broker_->calls, 2);
  EXPECT_EQ(entry().state, CertState::valid);
  EXPECT_FALSE(entry().clock_skew);
  EXPECT_EQ(metrics_.value(metric::kClockSkew, {{"broker", "fake"}}), 0);
}

TEST_F(CertificateLoopTest, TheBrokersDateHeaderMeasuresTheSkewBothWays) {
  broker_->send_date = true;
  broker_->broker_ahead = 1h;
  start({cert("web")});
  EXPECT_EQ(*entry().clock_skew, 1h);
  EXPECT_NE(entry().last_error.find("host's clock is 1h behind the broker"), std::string::npos) << entry().last_error;
  // This host's clock ahead of the broker's by longer than a leaf lives: the leaf arrives ended.
  broker_->broker_ahead = -2h;
  loops_.front()->request_renewal();
  settle();
  EXPECT_EQ(renewals("clock_skew"), 2);
  EXPECT_EQ(*entry().clock_skew, -2h);
  EXPECT_EQ(metrics_.value(metric::kClockSkew, {{"broker", "fake"}}), -7200);
  EXPECT_NE(entry().last_error.find("host's clock is 2h ahead of the broker 'fake'"), std::string::npos)
      << entry().last_error;
  EXPECT_EQ(handle_->consecutive_failures, 0);
  // Clocks that agree (to the Date header's second): no skew reported.
  broker_->broker_ahead = 0s;
  loops_.front()->request_renewal();
  settle();
  EXPECT_EQ(entry().state, CertState::valid);
  EXPECT_FALSE(entry().clock_skew);
  EXPECT_EQ(metrics_.value(metric::kClockSkew, {{"broker", "fake"}}), 0);
}

TEST_F(CertificateLoopTest, AStepForwardPastExpiryFailsClosedAtOnce) {
  auto hook = std::make_shared<RecordingReloader>();
  start({cert("web")}, {hook});
  broker_down();
  step(2h);
  EXPECT_EQ(entry().state, CertState::expired);
  EXPECT_EQ(hook->events.size(), 1u);
  EXPECT_EQ(broker_->calls, 2) << "an expired certificate is renewed at once";
}

TEST_F(CertificateLoopTest, AStepForwardIntoTheRenewalWindowRenewsAtOnce) {
  start({cert("web")});
  step(40min);
  EXPECT_EQ(broker_->issued, 2);
  EXPECT_EQ(entry().state, CertState::valid);
}

TEST_F(CertificateLoopTest, AStepBackWithValidMaterialKeepsItAndMovesNothingButTheWallDeadline) {
  broker_->backdate = 2h;  // a leaf valid since long before: a step back of 1h leaves it valid
  broker_->lifetime = 4h;
  auto c = cert("web");
  c.max_lifetime = 5h;
  start({c});
  ASSERT_EQ(broker_->issued, 1);
  const auto due = *entry().next_renewal;
  step(-1h);
  EXPECT_EQ(entry().state, CertState::valid);
  EXPECT_EQ(broker_->calls, 1);
  EXPECT_EQ(*entry().next_renewal, due) << "renew points are wall-clock instants";
}

TEST_F(CertificateLoopTest, AStepBackBeforeNotBeforeAsksTheBrokerAtOnce) {
  start({cert("web")});
  ASSERT_EQ(broker_->issued, 1);
  // Our clock steps back an hour; the broker's does not (it is elsewhere): its new leaf starts an
  // hour ahead of us. Nothing is handed out, and the reason is the clock.
  broker_->broker_ahead = 1h;
  step(-1h);
  EXPECT_EQ(entry().state, CertState::not_yet_valid);
  EXPECT_EQ(broker_->calls, 2);
  EXPECT_EQ(renewals("clock_skew"), 1);
  EXPECT_EQ(entry().valid_material(clock_.now()), nullptr);
}

TEST_F(CertificateLoopTest, TinyStepsDoNotWakeTheLoops) {
  std::vector<config::CertificateConfig> certs;
  for (int i = 0; i < 50; ++i) certs.push_back(cert("c" + std::to_string(i)));
  start(certs);
  ClockWatch watch(io_.get_executor(), clock_, [this](std::chrono::nanoseconds) {
    for (auto& l : loops_) l->wake();
  });
  const auto waits = timers_.waits_started();
  // +0.5 ms every 100 ms for 8 s: 80 steps (the VM trial logged 80 clock_jump lines).
  for (int i = 0; i < 80; ++i) {
    clock_.advance(100ms);
    clock_.step(500us);
    watch.clock_was_set();
    timers_.fire_due();
    settle();
  }
  EXPECT_EQ(watch.jumps(), 0u);
  EXPECT_EQ(watch.wakeups(), 0u);
  EXPECT_EQ(timers_.waits_started(), waits) << "loops woke up for sub-second steps";
  // They add up: 2,000 such steps are a second, acted on once.
  for (int i = 0; i < 1920; ++i) {
    clock_.step(500us);
    watch.clock_was_set();
  }
  settle();
  EXPECT_EQ(watch.jumps(), 1u);
  EXPECT_EQ(watch.wakeups(), 1u);
  EXPECT_EQ(timers_.waits_started(), waits + certs.size());
}

TEST_F(CertificateLoopTest, StepsThatComeTogetherWakeTheLoopsOnce) {
  start({cert("web")});
  int wakeups = 0;
  ClockWatch watch(io_.get_executor(), clock_, [&](std::chrono::nanoseconds step) {
    ++wakeups;
    EXPECT_EQ(step, std::chrono::nanoseconds(3h));
  });
  for (int i = 0; i < 3; ++i) {
    clock_.step(1h);
    watch.clock_was_set();
  }
  settle();
  EXPECT_EQ(watch.jumps(), 3u);
  EXPECT_EQ(wakeups, 1);
}

TEST(ClockWatchTest, TheTimerfdDeadlineIsAlwaysInTheFuture) {
  using std::chrono::system_clock;
  for (const std::time_t t : {std::time_t{1'700'000'000}, std::time_t{INT32_MAX} - 1, std::time_t{INT32_MAX},
                              std::time_t{INT32_MAX} + 1, std::time_t{2'208'988'800} /* 2040 */,
                              std::time_t{7'258'118'400} /* 2200 */}) {
    const auto deadline = ClockWatch::deadline_after(system_clock::from_time_t(t));
    EXPECT_GT(deadline.tv_sec, t) << "re-arming at " << t << " would fire at once, forever";
  }
}

TEST(ClockWatchTest, WatchesTheRealClockWithoutWakingWhenItDoesNotMove) {
  boost::asio::io_context io;
  SystemClock clock;
  int wakeups = 0;
  ClockWatch watch(io.get_executor(), clock, [&](std::chrono::nanoseconds) { ++wakeups; });
  ASSERT_TRUE(watch.start());
  io.run_for(50ms);
  EXPECT_EQ(wakeups, 0);
  watch.stop();
}

}  // namespace
}  // namespace certagent
