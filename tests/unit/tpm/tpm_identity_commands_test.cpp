// The TPM identity's use of the TPM, counted and shaped by the TPM latency model
// (tests/support/tpm_proxy) in front of swtpm: one command per operation in the steady state,
// no primary key after open, retries of a busy TPM, the deadline-ordered queue, and async work
// outliving the identity.

#include "tpm/tpm_identity.h"

#include "tests/support/swtpm.h"
#include "tests/support/test_support.h"
#include "tests/support/tpm_proxy/tpm_proxy.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <vector>

namespace certagent::tpm {
namespace {

using namespace std::chrono_literals;
using certagent::test::TempDir;
using certagent::test::wait_until;
using test::Swtpm;
namespace tp = certagent::test::tpm_proxy;

struct Rig {
  TempDir dir{"certagent-tpmcmd"};
  Swtpm swtpm{dir / "swtpm"};
  tp::TpmProxy proxy{{swtpm.socket_path(), dir / "proxy.sock", tp::LatencyModel::none(), 3}};
  std::unique_ptr<TpmIdentity> id;

  Rig() {
    auto opened = TpmIdentity::open({dir / "identity", proxy.tcti(), "enroll"}, OpenMode::create_if_missing);
    if (!opened) throw std::runtime_error(opened.error().message);
    id = std::move(*opened);
  }
};

Bytes digest_of(int i) { return Bytes(32, static_cast<std::uint8_t>(i)); }
std::span<const std::uint8_t> bytes(std::string_view s) { return as_bytes(s); }

const Bytes kKey = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

Bytes openssl_hmac(std::span<const std::uint8_t> data) {
  Bytes out(32);
  unsigned int len = 0;
  HMAC(EVP_sha256(), kKey.data(), static_cast<int>(kKey.size()), data.data(), data.size(), out.data(), &len);
  return out;
}

TEST(TpmIdentityCommands, OnePrimaryAtOpenThenOneCommandPerOperation) {
  Rig r;
  EXPECT_EQ(r.proxy.stats().executed_count(tp::kCcCreatePrimary), 1u) << r.proxy.stats().summary();
  ASSERT_TRUE(r.id->import_hmac_key("pki.cfssl_auth", kKey));
  ASSERT_TRUE(r.id->seal("netflix.lemur_token", bytes("a-token")));

  // First use loads the HMAC key under the SRK from its saved context, and keeps it.
  auto before = r.proxy.stats();
  ASSERT_TRUE(r.id->hmac("pki.cfssl_auth", bytes("warm")));
  auto d = r.proxy.stats().since(before);
  EXPECT_EQ(d.completed_count(tp::kCcCreatePrimary), 0u) << d.summary();
  EXPECT_EQ(d.completed_count(tp::kCcContextLoad), 1u) << d.summary();

  for (int i = 0; i < 3; ++i) {
    before = r.proxy.stats();
    auto mac = r.id->hmac("pki.cfssl_auth", bytes("request " + std::to_string(i)));
    ASSERT_TRUE(mac) << mac.error().message;
    EXPECT_EQ(*mac, openssl_hmac(bytes("request " + std::to_string(i))));
    d = r.proxy.stats().since(before);
    EXPECT_EQ(d.completed_count(tp::kCcHmac), 1u) << d.summary();
    EXPECT_EQ(d.completed_total(), 1u) << d.summary();

    before = r.proxy.stats();
    ASSERT_TRUE(r.id->sign_digest(digest_of(i)));
    d = r.proxy.stats().since(before);
    EXPECT_EQ(d.completed_count(tp::kCcSign), 1u) << d.summary();
    EXPECT_EQ(d.completed_total(), 1u) << d.summary();
  }

  ASSERT_TRUE(r.id->unseal("netflix.lemur_token"));  // takes the kept slot from the HMAC key
  for (int i = 0; i < 3; ++i) {
    before = r.proxy.stats();
    auto token = r.id->unseal("netflix.lemur_token");
    ASSERT_TRUE(token) << token.error().message;
    EXPECT_EQ(token->view(), "a-token");
    d = r.proxy.stats().since(before);
    EXPECT_EQ(d.completed_count(tp::kCcUnseal), 1u) << d.summary();
    EXPECT_EQ(d.completed_total(), 1u) << d.summary();
  }
  EXPECT_EQ(r.id->primary_count(), 1u);
  // At rest: the identity and one kept object; a TPM without resource manager has one slot left.
  EXPECT_EQ(r.proxy.held_objects().size(), 2u);
}

TEST(TpmIdentityCommands, SwitchingObjectsReloadsFromTheSavedSrkContext) {
  Rig r;
  ASSERT_TRUE(r.id->import_hmac_key("a.cfssl_auth", kKey));
  ASSERT_TRUE(r.id->seal("b.lemur_token", bytes("token")));
  const auto primaries = r.id->primary_count();
  for (int i = 0; i < 3; ++i) {
    auto before = r.proxy.stats();
    ASSERT_TRUE(r.id->hmac("a.cfssl_auth", bytes("x")));
    auto d = r.proxy.stats().since(before);
    // Flush the other kept object, ContextLoad the SRK, Load, flush the SRK, HMAC.
    EXPECT_EQ(d.completed_count(tp::kCcCreatePrimary), 0u) << d.summary();
    EXPECT_EQ(d.completed_count(tp::kCcLoad), 1u) << d.summary();
    EXPECT_LE(d.completed_total(), 5u) << d.summary();
    ASSERT_TRUE(r.id->unseal("b.lemur_token"));
  }
  EXPECT_EQ(r.id->primary_count(), primaries);
  EXPECT_LE(r.proxy.held_objects().size(), 2u);
}

TEST(TpmIdentityCommands, LongHmacRunsASequenceBesideTheKeptObjects) {
  Rig r;
  ASSERT_TRUE(r.id->import_hmac_key("big.cfssl_auth", kKey));
  ASSERT_TRUE(r.id->hmac("big.cfssl_auth", bytes("warm")));
  const std::string data(3000, 'z');  // > TPM2_MAX_DIGEST_BUFFER: HMAC_Start + updates + complete
  auto mac = r.id->hmac("big.cfssl_auth", bytes(data));
  ASSERT_TRUE(mac) << mac.error().message;
  EXPECT_EQ(*mac, openssl_hmac(bytes(data)));
  EXPECT_EQ(r.proxy.held_objects().size(), 2u);  // the sequence is gone again
}

TEST(TpmIdentityCommands, KeptObjectsComeBackAfterATpmRestart) {
  Rig r;
  ASSERT_TRUE(r.id->import_hmac_key("pki.cfssl_auth", kKey));
  ASSERT_TRUE(r.id->hmac("pki.cfssl_auth", bytes("one")));
  r.swtpm.restart();
  auto mac = r.id->hmac("pki.cfssl_auth", bytes("two"));
  ASSERT_TRUE(mac) << mac.error().message;
  EXPECT_EQ(*mac, openssl_hmac(bytes("two")));
  EXPECT_GE(r.id->reload_count(), 1u);
  ASSERT_TRUE(r.id->sign_digest(digest_of(1)));
}

// RETRY / YIELDED / TESTING beyond ESAPI's five immediate resubmissions: sent again after a
// short backoff, and run once when the TPM takes it.
TEST(TpmIdentityCommands, RetriesABusyTpmWithBackoff) {
  Rig r;
  ASSERT_TRUE(r.id->import_hmac_key("pki.cfssl_auth", kKey));
  ASSERT_TRUE(r.id->hmac("pki.cfssl_auth", bytes("warm")));
  for (std::uint32_t rc : {tp::kRcRetry, tp::kRcYielded, tp::kRcTesting}) {
    SCOPED_TRACE(tp::rc_name(rc));
    const auto retries = r.id->busy_retry_count();
    auto before = r.proxy.stats();
    r.proxy.inject_next(rc, 14);
    ASSERT_TRUE(r.id->sign_digest(digest_of(2)));
    auto d = r.proxy.stats().since(before);
    EXPECT_EQ(d.injected_total, 14u) << d.summary();
    EXPECT_EQ(d.completed_total(), 1u) << d.summary();
    EXPECT_GE(r.id->busy_retry_count() - retries, 1u);

    before = r.proxy.stats();
    r.proxy.inject_next(rc, 9, tp::kCcHmac);
    auto mac = r.id->hmac("pki.cfssl_auth", bytes("busy"));
    ASSERT_TRUE(mac) << mac.error().message;
    EXPECT_EQ(*mac, openssl_hmac(bytes("busy")));
    d = r.proxy.stats().since(before);
    EXPECT_EQ(d.completed_count(tp::kCcHmac), 1u) << d.summary();
  }
  // Busy for a while (a self-test of a second): the call waits, then succeeds.
  r.proxy.busy_for(tp::kRcTesting, 1s);
  auto token = r.id->sign_digest(digest_of(3));
  EXPECT_TRUE(token) << token.error().message;
}

// The TPM thread runs the earliest deadline first. While the TPM is busy with one command (held
// by the proxy), work queued with later deadlines waits behind work due sooner, whatever the
// arrival order.
TEST(TpmIdentityCommands, QueueRunsTheEarliestDeadlineFirst) {
  Rig r;
  ASSERT_TRUE(r.id->sign_digest(digest_of(0)));
  std::mutex m;
  std::vector<std::string> order;
  std::atomic<int> done{0};
  auto record = [&](std::string name) {
    return [&, name](Result<Bytes> result) {
      EXPECT_TRUE(result) << name << ": " << result.error().message;
      std::lock_guard lock(m);
      order.push_back(name);
      ++done;
    };
  };
  const auto now = std::chrono::system_clock::now();
  // The first one occupies the TPM thread for a while: the TPM answers TESTING for 600 ms.
  r.proxy.busy_for(tp::kRcTesting, 600ms);
  r.id->async_sign_digest(digest_of(1), now + 48h, record("blocker"));
  ASSERT_TRUE(wait_until([&] { return r.proxy.stats().injected_total > 0; }, 5s));
  for (int i = 0; i < 5; ++i)
    r.id->async_sign_digest(digest_of(10 + i), now + 96h + std::chrono::minutes(i), record("storm" + std::to_string(i)));
  r.id->async_sign_digest(digest_of(20), now + 30s, record("expiring"));
  r.id->async_sign_digest(digest_of(21), now + 96h - 1min, record("storm-early"));
  ASSERT_TRUE(wait_until([&] { return done == 8; }, 20s));
  const std::vector<std::string> want = {"blocker", "expiring", "storm-early", "storm0", "storm1",
                                         "storm2",  "storm3",   "storm4"};
  std::lock_guard lock(m);
  EXPECT_EQ(order, want);
}

TEST(TpmIdentityCommands, AsyncFormsMatchTheBlockingOnes) {
  Rig r;
  ASSERT_TRUE(r.id->import_hmac_key("pki.cfssl_auth", kKey));
  ASSERT_TRUE(r.id->seal("n.lemur_token", bytes("secret-token")));
  std::atomic<int> done{0};
  Bytes mac;
  std::string unsealed;
  Bytes sig;
  const auto due = std::chrono::system_clock::now();
  r.id->async_hmac("pki.cfssl_auth", Bytes{'a', 'b'}, due, [&](Result<Bytes> m) {
    if (m) mac = *m;
    ++done;
  });
  r.id->async_unseal("n.lemur_token", due, [&](Result<Secret> s) {
    if (s) unsealed = std::string(s->view());
    ++done;
  });
  r.id->async_sign_digest(digest_of(5), due, [&](Result<Bytes> s) {
    if (s) sig = *s;
    ++done;
  });
  Bytes bad_digest(5, 0);
  std::atomic<bool> refused{false};
  r.id->async_sign_digest(bad_digest, due, [&](Result<Bytes> s) {
    refused = !s;
    ++done;
  });
  ASSERT_TRUE(wait_until([&] { return done == 4; }, 10s));
  EXPECT_EQ(mac, openssl_hmac(bytes("ab")));
  EXPECT_EQ(unsealed, "secret-token");
  EXPECT_FALSE(sig.empty());
  EXPECT_TRUE(refused);
}

// Work still queued when the identity is destroyed completes (with an error) exactly once,
// without touching the TPM or freed memory.
TEST(TpmIdentityCommands, QueuedWorkFailsCleanlyWhenTheIdentityCloses) {
  Rig r;
  std::atomic<int> calls{0};
  std::atomic<int> failed{0};
  r.proxy.busy_for(tp::kRcRetry, 400ms);
  const auto due = std::chrono::system_clock::now() + 1h;
  for (int i = 0; i < 4; ++i)
    r.id->async_sign_digest(digest_of(i), due, [&](Result<Bytes> s) {
      ++calls;
      if (!s) ++failed;
    });
  ASSERT_TRUE(wait_until([&] { return r.proxy.stats().injected_total > 0; }, 5s));
  r.id.reset();
  EXPECT_EQ(calls, 4);
  EXPECT_GE(failed, 3);  // the one in flight may still have succeeded
}

}  // namespace
}  // namespace certagent::tpm
