#include "agent/store.h"

#include <gtest/gtest.h>

namespace certagent {
namespace {

using namespace std::chrono_literals;
const SystemTime kNow = SystemTime{} + 1'800'000'000s;

config::CertificateConfig cert(const std::string& name, std::chrono::milliseconds min_ttl = 0ms) {
  config::CertificateConfig c;
  c.name = name;
  c.broker = "dev";
  c.ready_min_ttl = min_ttl;
  return c;
}

MaterialPtr material(SystemTime nb, SystemTime na, std::string serial = "01") {
  auto m = std::make_shared<Material>();
  m->not_before = nb;
  m->not_after = na;
  m->serial_hex = std::move(serial);
  return m;
}

TEST(Store, NotReadyUntilEveryCertificateHoldsValidMaterial) {
  CertificateStore s;
  s.configure({cert("a"), cert("b")});
  std::vector<std::string> reasons;
  EXPECT_FALSE(s.ready(kNow, &reasons));
  EXPECT_EQ(reasons.size(), 2u);
  s.commit("a", material(kNow - 1s, kNow + 1h), kNow);
  reasons.clear();
  EXPECT_FALSE(s.ready(kNow, &reasons));
  ASSERT_EQ(reasons.size(), 1u);
  EXPECT_EQ(reasons[0], "b: not issued yet");
  s.commit("b", material(kNow - 1s, kNow + 1h), kNow);
  EXPECT_TRUE(s.ready(kNow));
  EXPECT_FALSE(s.ready(kNow + 2h));  // both expired by then
}

TEST(Store, ReadyMinTtlCounts) {
  CertificateStore s;
  s.configure({cert("a", 10min)});
  s.commit("a", material(kNow - 1s, kNow + 5min), kNow);
  std::vector<std::string> reasons;
  EXPECT_FALSE(s.ready(kNow, &reasons));
  EXPECT_EQ(reasons.at(0), "a: expires within ready_min_ttl");
}

TEST(Store, ValidMaterialIsNeverExpiredOrNotYetValid) {
  CertificateStore s;
  s.configure({cert("a")});
  s.commit("a", material(kNow - 1h, kNow - 1s), kNow);
  EXPECT_EQ(s.find("a")->state, CertState::expired);
  EXPECT_EQ(s.find("a")->valid_material(kNow), nullptr);
  s.commit("a", material(kNow + 1h, kNow + 2h), kNow);
  EXPECT_EQ(s.find("a")->valid_material(kNow), nullptr);
  s.commit("a", material(kNow - 1s, kNow + 1h), kNow);
  EXPECT_NE(s.find("a")->valid_material(kNow), nullptr);
}

TEST(Store, ListenersSeeCommitsAndExpiryAndCanUnsubscribe) {
  CertificateStore s;
  s.configure({cert("a"), cert("b")});
  std::vector<std::pair<std::string, CertEvent>> seen;
  auto sub = s.subscribe("a", [&](const CertEntry& e, CertEvent ev) { seen.emplace_back(e.config.name, ev); });
  s.commit("b", material(kNow, kNow + 1h), kNow);
  s.commit("a", material(kNow, kNow + 1h), kNow);
  s.mark_expired("a");
  s.mark_expired("a");  // only once
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].second, CertEvent::committed);
  EXPECT_EQ(seen[1].second, CertEvent::expired);
  sub.reset();
  s.commit("a", material(kNow, kNow + 1h), kNow);
  EXPECT_EQ(seen.size(), 2u);
}

TEST(Store, AReconfigureThatDropsACertificateTellsItsListenersFirst) {
  CertificateStore s;
  s.configure({cert("a"), cert("b")});
  s.commit("a", material(kNow, kNow + 1h), kNow);
  std::vector<std::pair<std::string, CertEvent>> seen;
  bool had_material = false;
  auto sub = s.subscribe("", [&](const CertEntry& e, CertEvent ev) {
    seen.emplace_back(e.config.name, ev);
    had_material = e.material != nullptr;
  });
  s.configure({cert("b"), cert("c")});
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0], std::make_pair(std::string("a"), CertEvent::removed));
  EXPECT_TRUE(had_material);  // told while the entry still existed
  EXPECT_EQ(s.find("a"), nullptr);
}

TEST(Store, ListenerMayUnsubscribeItselfWhileNotified) {
  CertificateStore s;
  s.configure({cert("a")});
  int calls = 0;
  CertificateStore::Subscription sub;
  sub = s.subscribe("", [&](const CertEntry&, CertEvent) {
    ++calls;
    sub.reset();
  });
  s.commit("a", material(kNow, kNow + 1h), kNow);
  s.commit("a", material(kNow, kNow + 1h), kNow);
  EXPECT_EQ(calls, 1);
}

TEST(Store, ReconfigureKeepsMaterialOfRemainingNames) {
  CertificateStore s;
  s.configure({cert("a"), cert("b")});
  s.commit("a", material(kNow, kNow + 1h, "aa"), kNow);
  s.configure({cert("a"), cert("c")});
  ASSERT_NE(s.find("a"), nullptr);
  EXPECT_EQ(s.find("a")->material->serial_hex, "aa");
  EXPECT_EQ(s.find("b"), nullptr);
  EXPECT_EQ(s.find("c")->material, nullptr);
}

TEST(Store, RenewalRequestsReachTheHandlerForKnownNamesOnly) {
  CertificateStore s;
  s.configure({cert("a")});
  std::string asked;
  s.set_renewal_handler([&](const std::string& n) { asked = n; });
  EXPECT_TRUE(s.request_renewal("a"));
  EXPECT_EQ(asked, "a");
  EXPECT_FALSE(s.request_renewal("nope"));
}

TEST(Store, ALeafWhoseNotBeforeIsAheadIsNotYetValidUntilTheClockGetsThere) {
  CertificateStore s;
  s.configure({cert("a")});
  int changes = 0;
  auto sub = s.subscribe("a", [&](const CertEntry&, CertEvent e) { changes += e == CertEvent::state_changed; });
  s.commit("a", material(kNow + 2min, kNow + 1h), kNow);
  EXPECT_EQ(s.find("a")->state, CertState::not_yet_valid);
  EXPECT_EQ(to_string(s.find("a")->state), "not_yet_valid");
  EXPECT_EQ(effective_state(*s.find("a"), kNow), CertState::not_yet_valid);
  EXPECT_EQ(effective_state(*s.find("a"), kNow + 2min), CertState::valid);
  s.refresh_state("a", kNow + 1min);
  EXPECT_EQ(changes, 0);
  s.refresh_state("a", kNow + 2min);
  EXPECT_EQ(s.find("a")->state, CertState::valid);
  EXPECT_EQ(changes, 1);
  // The clock steps back before not_before: not valid again.
  s.refresh_state("a", kNow);
  EXPECT_EQ(s.find("a")->state, CertState::not_yet_valid);
  EXPECT_EQ(changes, 2);
  std::vector<std::string> reasons;
  EXPECT_FALSE(s.ready(kNow, &reasons));
  EXPECT_EQ(reasons.at(0), "a: not yet valid");
}

}  // namespace
}  // namespace certagent
