// The TPM latency model (tests/support/tpm_proxy) against a real swtpm: counting by command
// code, the delay table, one command at a time, injected warnings as ESAPI sees them, the
// kernel resource manager's context commands, and swtpm restarts behind the proxy.

#include "tests/support/tpm_proxy/tpm_proxy.h"

#include "tests/support/test_support.h"
#include "tests/support/swtpm.h"

#include <tss2/tss2_esys.h>
#include <tss2/tss2_rc.h>

#include <gtest/gtest.h>

#include <thread>

namespace certagent::test::tpm_proxy {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using tpm::test::EsysClient;
using tpm::test::Swtpm;

struct Fixture {
  TempDir dir{"certagent-tpmproxy"};
  Swtpm swtpm{dir / "swtpm"};
  TpmProxy proxy{{swtpm.socket_path(), dir / "proxy.sock", LatencyModel::none(), 7}};
};

TSS2_RC get_capability(EsysClient& c) {
  TPMS_CAPABILITY_DATA* data = nullptr;
  TPMI_YES_NO more = TPM2_NO;
  TSS2_RC rc = Esys_GetCapability(c.get(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CAP_TPM_PROPERTIES,
                                  TPM2_PT_MANUFACTURER, 1, &more, &data);
  Esys_Free(data);
  return rc;
}

std::uint32_t base(TSS2_RC rc) { return rc & ~TSS2_RC_LAYER_MASK; }

TEST(LatencyModel, DiscreteDefaultsAndOverrides) {
  LatencyModel d = LatencyModel::discrete();
  EXPECT_EQ(d.latency(kCcSign), 69ms);
  EXPECT_EQ(d.latency(kCcCreatePrimary), 240ms);
  EXPECT_EQ(d.latency(kCcStartAuthSession, true), 232ms);  // salted: an ECDH inside
  EXPECT_EQ(d.latency(0x199), d.other);                     // not in the table

  std::string error;
  auto m = LatencyModel::parse("discrete,Sign=10ms,TPM2_Load=2ms,0x165=500us,scale=2,kernel-rm", &error);
  ASSERT_TRUE(m) << error;
  EXPECT_EQ(m->latency(kCcSign), 20ms);
  EXPECT_EQ(m->latency(kCcLoad), 4ms);
  EXPECT_EQ(m->latency(kCcFlushContext), 1ms);
  EXPECT_TRUE(m->kernel_rm);

  auto u = LatencyModel::parse("uniform:30ms");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->latency(kCcSign), 30ms);
  EXPECT_EQ(u->latency(kCcFlushContext), 30ms);

  EXPECT_FALSE(LatencyModel::parse("fast", &error));
  EXPECT_NE(error.find("none, discrete or uniform"), std::string::npos) << error;
  EXPECT_FALSE(LatencyModel::parse("discrete,Frobnicate=3ms", &error));
  EXPECT_NE(error.find("Frobnicate"), std::string::npos) << error;
  EXPECT_FALSE(LatencyModel::parse("discrete,Sign=soon", &error));
  EXPECT_FALSE(LatencyModel::parse("uniform:", &error));

  EXPECT_EQ(command_name(kCcSign), "TPM2_Sign");
  EXPECT_EQ(parse_command("sign"), kCcSign);
  EXPECT_EQ(parse_rc("TPM_RC_YIELDED"), kRcYielded);
  EXPECT_EQ(parse_rc("testing"), kRcTesting);
}

TEST(TpmProxy, CountsCommandsByCode) {
  Fixture f;
  EsysClient client(f.proxy.tcti());
  const ProxyStats before = f.proxy.stats();
  ASSERT_EQ(get_capability(client), TSS2_RC_SUCCESS);
  ESYS_TR primary = client.occupy_slot();
  client.flush(primary);
  ASSERT_EQ(get_capability(client), TSS2_RC_SUCCESS);

  const ProxyStats d = f.proxy.stats().since(before);
  EXPECT_EQ(d.executed_count(kCcGetCapability), 2u) << d.summary();
  EXPECT_EQ(d.executed_count(kCcCreatePrimary), 1u) << d.summary();
  EXPECT_EQ(d.executed_count(kCcFlushContext), 1u) << d.summary();
  EXPECT_EQ(d.executed_total, 4u) << d.summary();
  EXPECT_EQ(d.injected_total, 0u);
  EXPECT_TRUE(f.proxy.held_objects().empty());
}

TEST(TpmProxy, HoldsEachCommandForItsModelledTime) {
  Fixture f;
  EsysClient client(f.proxy.tcti());
  auto model = LatencyModel::none();
  model.per_command[kCcGetCapability] = 80ms;
  f.proxy.set_model(model);
  const ProxyStats before = f.proxy.stats();
  const auto t0 = Clock::now();
  ASSERT_EQ(get_capability(client), TSS2_RC_SUCCESS);
  EXPECT_GE(Clock::now() - t0, 80ms);
  EXPECT_GE(f.proxy.stats().since(before).busy, 80ms);

  // Other commands keep their own figure (none here).
  ESYS_TR primary = client.occupy_slot();
  client.flush(primary);
  EXPECT_EQ(f.proxy.stats().since(before).executed_total, 3u);
}

TEST(TpmProxy, RunsOneCommandAtATime) {
  Fixture f;
  f.proxy.set_model(LatencyModel::uniform(60ms));
  EsysClient a(f.proxy.tcti());
  EsysClient b(f.proxy.tcti());
  const auto t0 = Clock::now();
  TSS2_RC ra = 0, rb = 0;
  std::thread other([&] {
    ra = get_capability(a);
    if (ra == TSS2_RC_SUCCESS) ra = get_capability(a);
  });
  rb = get_capability(b);
  if (rb == TSS2_RC_SUCCESS) rb = get_capability(b);
  other.join();
  EXPECT_EQ(ra, TSS2_RC_SUCCESS);
  EXPECT_EQ(rb, TSS2_RC_SUCCESS);
  // Four commands of 60 ms on one modelled TPM: never overlapped.
  EXPECT_GE(Clock::now() - t0, 240ms);
  EXPECT_GE(f.proxy.stats().busy, 240ms);
}

// ESAPI itself resubmits RETRY / YIELDED / TESTING at once, up to its limit (_ESYS_MAX_SUBMISSIONS,
// 5 in tpm2-tss 3.2), and hands the warning to the caller after that: the caller needs its own
// backoff for a TPM busy for longer than five immediate attempts.
TEST(TpmProxy, InjectedWarningsAsEsapiSeesThem) {
  Fixture f;
  EsysClient client(f.proxy.tcti());
  for (std::uint32_t rc : {kRcRetry, kRcYielded, kRcTesting}) {
    SCOPED_TRACE(rc_name(rc));
    ProxyStats before = f.proxy.stats();
    f.proxy.inject_next(rc, 2);
    ASSERT_EQ(get_capability(client), TSS2_RC_SUCCESS);
    ProxyStats d = f.proxy.stats().since(before);
    EXPECT_EQ(d.injected_count(kCcGetCapability), 2u) << d.summary();
    EXPECT_EQ(d.executed_count(kCcGetCapability), 1u) << d.summary();

    before = f.proxy.stats();
    f.proxy.inject_next(rc, 100);
    TSS2_RC r = get_capability(client);
    EXPECT_EQ(base(r), rc) << Tss2_RC_Decode(r);
    d = f.proxy.stats().since(before);
    EXPECT_EQ(d.executed_total, 0u) << d.summary();
    EXPECT_GE(d.injected_total, 2u) << d.summary();
    EXPECT_LE(d.injected_total, 10u) << d.summary();
    f.proxy.clear_injections();
    ASSERT_EQ(get_capability(client), TSS2_RC_SUCCESS);
  }
}

TEST(TpmProxy, InjectsOnlyTheNamedCommand) {
  Fixture f;
  EsysClient client(f.proxy.tcti());
  f.proxy.inject_next(kRcRetry, 1, kCcCreatePrimary);
  ASSERT_EQ(get_capability(client), TSS2_RC_SUCCESS);
  EXPECT_EQ(f.proxy.stats().injected_total, 0u);
  ESYS_TR primary = client.occupy_slot();  // ESAPI resubmits once
  client.flush(primary);
  const ProxyStats s = f.proxy.stats();
  EXPECT_EQ(s.injected_count(kCcCreatePrimary), 1u) << s.summary();
  EXPECT_EQ(s.executed_count(kCcCreatePrimary), 1u) << s.summary();
}

TEST(TpmProxy, BusyForAWhileThenServes) {
  Fixture f;
  EsysClient client(f.proxy.tcti());
  f.proxy.busy_for(kRcTesting, 300ms);
  const auto t0 = Clock::now();
  TSS2_RC r = get_capability(client);
  if (Clock::now() - t0 < 300ms) {
    EXPECT_EQ(base(r), kRcTesting) << Tss2_RC_Decode(r);
  }
  ASSERT_TRUE(wait_until([&] { return get_capability(client) == TSS2_RC_SUCCESS; }, 5s, 20ms));
  EXPECT_GE(Clock::now() - t0, 300ms);
}

TEST(TpmProxy, RandomAndPeriodicInjection) {
  Fixture f;
  EsysClient client(f.proxy.tcti());
  f.proxy.inject_every(kRcYielded, 3);
  for (int i = 0; i < 4; ++i) ASSERT_EQ(get_capability(client), TSS2_RC_SUCCESS);
  // Arrivals: ok, ok, YIELDED (resubmitted by ESAPI), ok, ok.
  ProxyStats s = f.proxy.stats();
  EXPECT_EQ(s.executed_total, 4u) << s.summary();
  EXPECT_EQ(s.injected_total, 1u) << s.summary();

  f.proxy.clear_injections();
  f.proxy.reset_stats();
  f.proxy.inject_random(0.3, {kRcRetry, kRcTesting});
  for (int i = 0; i < 30; ++i) ASSERT_EQ(get_capability(client), TSS2_RC_SUCCESS);
  s = f.proxy.stats();
  EXPECT_EQ(s.executed_total, 30u);
  EXPECT_GT(s.injected_total, 0u) << s.summary();  // seeded: the same draws every run
}

TEST(TpmProxy, KernelResourceManagerSwapsHeldObjectsAroundEveryCommand) {
  Fixture f;
  auto model = LatencyModel::none();
  model.kernel_rm = true;
  f.proxy.set_model(model);
  EsysClient client(f.proxy.tcti());
  ASSERT_EQ(get_capability(client), TSS2_RC_SUCCESS);
  EXPECT_EQ(f.proxy.stats().rm_context_loads, 0u);

  ESYS_TR primary = client.occupy_slot();  // held from now: saved + flushed after it
  EXPECT_EQ(f.proxy.held_objects().size(), 1u);
  ProxyStats before = f.proxy.stats();
  EXPECT_EQ(before.rm_context_saves, 1u);
  EXPECT_EQ(before.rm_flushes, 1u);

  ASSERT_EQ(get_capability(client), TSS2_RC_SUCCESS);
  ProxyStats d = f.proxy.stats().since(before);
  EXPECT_EQ(d.rm_context_loads, 1u) << d.summary();
  EXPECT_EQ(d.rm_context_saves, 1u) << d.summary();
  EXPECT_EQ(d.rm_flushes, 1u) << d.summary();
  EXPECT_EQ(d.device_total(), 4u) << d.summary();

  client.flush(primary);  // loaded for the flush, then nothing left to save
  EXPECT_TRUE(f.proxy.held_objects().empty());
  before = f.proxy.stats();
  ASSERT_EQ(get_capability(client), TSS2_RC_SUCCESS);
  EXPECT_EQ(f.proxy.stats().since(before).device_total(), 1u);
}

TEST(TpmProxy, SurvivesAnSwtpmRestartBehindIt) {
  Fixture f;
  EsysClient client(f.proxy.tcti());
  ASSERT_EQ(get_capability(client), TSS2_RC_SUCCESS);
  f.swtpm.stop();
  EXPECT_NE(get_capability(client), TSS2_RC_SUCCESS);  // a broken connection, as without the proxy
  f.swtpm.start();
  EsysClient again(f.proxy.tcti());
  EXPECT_EQ(get_capability(again), TSS2_RC_SUCCESS);
}

TEST(TpmProxy, StopsWhileACommandIsHeld) {
  auto f = std::make_unique<Fixture>();
  // Far longer than the test's timeout: only an interrupted hold lets the test finish.
  f->proxy.set_model(LatencyModel::uniform(600s));
  EsysClient client(f->proxy.tcti());
  TSS2_RC r = TSS2_RC_SUCCESS;
  std::thread t([&] { r = get_capability(client); });
  ASSERT_TRUE(wait_until([&] { return f->proxy.stats().executed_total == 1; }, 5s));
  f.reset();  // proxy (and swtpm) stopped: the held client sees a broken connection
  t.join();
  EXPECT_NE(r, TSS2_RC_SUCCESS);
}

}  // namespace
}  // namespace certagent::test::tpm_proxy
