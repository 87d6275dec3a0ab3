#include "tests/chaos/broker/broker_outage.h"

#include "core/crypto/x509.h"
#include "core/time_format.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <thread>

namespace certagent::test {

namespace {

using Clock = std::chrono::system_clock;

struct Failure {
  Clock::time_point at;
  std::int64_t attempt{0};
  std::chrono::milliseconds retry_in{0};
  std::string error;
};

std::vector<Failure> failures_since(const DaemonFixture& d, const std::string& name, Clock::time_point since) {
  std::vector<Failure> out;
  for (const auto& e : d.audit_events()) {
    const auto* ev = e.if_contains("event");
    const auto* nm = e.if_contains("name");
    if (!ev || !ev->is_string() || ev->as_string() != "renewal_failed" || !nm || !nm->is_string() ||
        nm->as_string() != name)
      continue;
    auto at = parse_rfc3339(e.at("time").as_string());
    if (!at || *at < since) continue;
    Failure f{*at, e.at("attempt").to_number<std::int64_t>(),
              std::chrono::milliseconds(e.at("retry_in_ms").to_number<std::int64_t>()),
              std::string(e.at("error").as_string())};
    out.push_back(std::move(f));
  }
  return out;
}

struct Held {
  std::string serial;
  Clock::time_point not_before, not_after;
};

Held held_certificate(const DaemonFixture& d, const std::string& name) {
  const auto pem = read_file(d.live_dir(name) / "cert.pem");
  auto chain = crypto::parse_chain(pem);
  if (!chain || chain->empty()) return {};
  auto info = crypto::describe(chain->front().get());
  return Held{d.current_serial(name), info.not_before, info.not_after};
}

}  // namespace

void run_broker_outage(DaemonFixture& d, const BrokerOutage& outage) {
  using namespace std::chrono_literals;
  const std::string& name = outage.certificate;
  const std::string cert_label = "name=\"" + name + "\"";
  const std::string broker_label = "broker=\"" + outage.broker + "\"";

  // 1. A certificate from the real broker, on disk and over the socket.
  d.start();
  auto first = d.wait_new_serial(name, {}, 60s);
  ASSERT_TRUE(first) << d.log();
  ASSERT_EQ(check_consistent(d.live_dir(name)), "");
  const Held held = held_certificate(d, name);
  ASSERT_EQ(held.serial, *first);
  ASSERT_GT(held.not_after, Clock::now()) << "the broker issued a certificate that is already expired";
  int status = 0;
  d.socket_get("/v1/certificates/" + name, &status);
  EXPECT_EQ(status, 200);
  EXPECT_EQ(d.metric("certagent_broker_up", broker_label).value_or(-1), 1);

  // 2. The broker goes away for longer than the certificate lives.
  const auto down_at = Clock::now();
  outage.kill();
  const auto lifetime = held.not_after - held.not_before;
  ASSERT_TRUE(wait_until([&] { return d.metric("certagent_certificate_expired", cert_label).value_or(0) == 1; },
                         std::chrono::duration_cast<std::chrono::milliseconds>(held.not_after - Clock::now()) + 15s))
      << d.log();
  // Expired means expired everywhere, and not a moment before not_after.
  EXPECT_GE(Clock::now(), held.not_after);
  std::string body = d.socket_get("/v1/certificates/" + name, &status);
  EXPECT_EQ(status, 503) << body;
  EXPECT_NE(body.find("expired"), std::string::npos) << body;
  EXPECT_EQ(body.find("PRIVATE KEY"), std::string::npos);
  d.http_get("/readyz", &status);
  EXPECT_EQ(status, 503);
  EXPECT_EQ(d.metric("certagent_broker_up", broker_label).value_or(-1), 0);
  EXPECT_GE(d.metric("certagent_consecutive_failures", cert_label).value_or(0), 1);
  auto st = run({certagent_binary().string(), "status", "--socket", d.socket_path().string()});
  EXPECT_NE(st.out.find("expired"), std::string::npos) << st.out << st.err;
  auto fetched = run({certagent_binary().string(), "fetch", name, "--socket", d.socket_path().string(), "--out",
                      (d.dir() / "fetched").string()});
  EXPECT_NE(fetched.exit_code, 0) << "fetch handed out an expired certificate";
  EXPECT_FALSE(fs::exists(d.dir() / "fetched" / "key.pem"));
  // Files stay as they were (remove_on_expiry is off), still a consistent pair.
  EXPECT_EQ(d.current_serial(name), held.serial);
  EXPECT_EQ(check_consistent(d.live_dir(name)), "");
  EXPECT_TRUE(d.running());

  // The outage lasts longer than the certificate's whole life (the scenario, not an assertion).
  std::this_thread::sleep_until(down_at + lifetime + 2s);
  ASSERT_TRUE(d.running()) << d.log();

  // Retries followed the contract: consecutive attempts, each waiting what it announced (full
  // jitter under min(1 s × 2^(n-1), cap), cap <= 30 s here), never sooner, never stalled.
  const auto failures = failures_since(d, name, down_at);
  ASSERT_GE(failures.size(), 3u) << d.log();
  for (std::size_t i = 0; i < failures.size(); ++i) {
    const auto& f = failures[i];
    SCOPED_TRACE("attempt " + std::to_string(f.attempt) + ": " + f.error);
    EXPECT_EQ(f.attempt, static_cast<std::int64_t>(i + 1));
    const auto exponential = std::chrono::milliseconds(1000LL << std::min<std::int64_t>(f.attempt - 1, 20));
    EXPECT_LE(f.retry_in, std::min<std::chrono::milliseconds>(exponential, 30s));
    if (i + 1 < failures.size()) {
      const auto gap = failures[i + 1].at - f.at;
      // The audit line is written a moment after the wait is computed: allow for a busy machine.
      EXPECT_GE(gap, f.retry_in - 250ms) << "retried sooner than announced";
      EXPECT_LE(gap, f.retry_in + 10s) << "a retry stalled";
    }
  }
  const auto outage_seconds = std::chrono::duration_cast<std::chrono::seconds>(Clock::now() - down_at).count();
  // Short certificates make the contract's cap small (10 % of the time left, >= 1 s), so about
  // one attempt a second is right here; a retry loop without backoff would make thousands.
  EXPECT_LE(static_cast<std::int64_t>(failures.size()), 3 * outage_seconds) << "the broker was hammered";

  // 3. The broker returns: recovery on its own, within one backoff step (<= 30 s once expired).
  const auto back_at = Clock::now();
  outage.revive();
  auto recovered = d.wait_new_serial(name, {held.serial}, 30s + 15s);
  ASSERT_TRUE(recovered) << d.log();
  const auto recovery = Clock::now() - back_at;
  std::printf("outage %llds, certificate lifetime %llds, %zu failed attempts, recovered %lld ms after the broker "
              "came back\n",
              static_cast<long long>(outage_seconds),
              static_cast<long long>(std::chrono::duration_cast<std::chrono::seconds>(lifetime).count()),
              failures.size(),
              static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(recovery).count()));
  EXPECT_EQ(check_consistent(d.live_dir(name)), "");
  EXPECT_GT(held_certificate(d, name).not_after, Clock::now());
  EXPECT_TRUE(wait_until([&] { return d.metric("certagent_certificate_expired", cert_label).value_or(1) == 0; }, 5s));
  EXPECT_EQ(d.metric("certagent_consecutive_failures", cert_label).value_or(-1), 0);
  EXPECT_EQ(d.metric("certagent_broker_up", broker_label).value_or(-1), 1);
  EXPECT_TRUE(wait_until([&] { d.http_get("/readyz", &status); return status == 200; }, 5s));
  body = d.socket_get("/v1/certificates/" + name, &status);
  EXPECT_EQ(status, 200);
  EXPECT_NE(body.find(*recovered), std::string::npos) << "the socket does not hand out the new certificate";
  EXPECT_EQ(d.pid() > 0 && d.running(), true) << "recovery needed a restart";
}

}  // namespace certagent::test
