// Waiting for the TPM's device node at boot: a bounded wait when the firmware announces a TPM
// whose driver has not bound yet, an immediate clear error when there is none. A fake sysfs and
// device directory in a temp dir, and a manual clock that the injected sleep advances.

#include "tpm/tpm_device.h"

#include "tests/support/test_support.h"

#include <fstream>

#include <gtest/gtest.h>

namespace certagent::tpm {
namespace {

using certagent::test::TempDir;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

void touch(const fs::path& p) {
  fs::create_directories(p.parent_path());
  std::ofstream(p).put('x');
}

struct FakeHost {
  TempDir dir{"certagent-tpmdev"};
  fs::path sysfs() const { return dir / "sys"; }
  fs::path node() const { return dir / "dev" / "tpmrm0"; }
  std::string tcti() const { return "device:" + node().string(); }
  ManualClock clock{SystemTime{} + 1000h};
  int sleeps{0};
  int appear_after_sleeps{-1};  // the node appears after this many polls (-1: never)

  TpmDeviceWait how() {
    fs::create_directories(sysfs());
    TpmDeviceWait w;
    w.sysfs_root = sysfs();
    w.max_wait = 60s;
    w.poll_interval = 200ms;
    w.clock = &clock;
    w.sleep = [this](Millis d) {
      clock.advance(d);
      if (++sleeps == appear_after_sleeps) touch(node());
    };
    return w;
  }
};

TEST(TctiDeviceNode, NamesTheNodeOfDeviceTctisOnly) {
  EXPECT_EQ(tcti_device_node("device:/dev/tpmrm0"), fs::path("/dev/tpmrm0"));
  EXPECT_EQ(tcti_device_node("device:/dev/tpm0"), fs::path("/dev/tpm0"));
  EXPECT_EQ(tcti_device_node("device"), fs::path("/dev/tpmrm0"));
  EXPECT_EQ(tcti_device_node("device:"), fs::path("/dev/tpmrm0"));
  EXPECT_FALSE(tcti_device_node("swtpm:path=/run/swtpm.sock"));
  EXPECT_FALSE(tcti_device_node("mssim:host=localhost,port=2321"));
  EXPECT_FALSE(tcti_device_node("tabrmd"));
}

TEST(TpmDeviceWait, ANodeThatExistsIsUsedAtOnce) {
  FakeHost host;
  touch(host.node());
  auto how = host.how();
  EXPECT_TRUE(wait_for_tpm_device(host.tcti(), how));
  EXPECT_EQ(host.sleeps, 0);
}

TEST(TpmDeviceWait, ATctiWithoutANodeIsNotWaitedFor) {
  FakeHost host;
  auto how = host.how();
  EXPECT_TRUE(wait_for_tpm_device("swtpm:path=/nonexistent", how));
  EXPECT_EQ(host.sleeps, 0);
}

TEST(TpmDeviceWait, WithoutAFirmwareTpmFailsAtOnceSayingSo) {
  FakeHost host;
  auto how = host.how();
  auto r = wait_for_tpm_device(host.tcti(), how);
  ASSERT_FALSE(r);
  EXPECT_EQ(host.sleeps, 0) << "a host without a TPM must not wait";
  EXPECT_NE(r.error().message.find("no TPM"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find(host.node().string()), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("firmware announces none"), std::string::npos) << r.error().message;
}

TEST(TpmDeviceWait, WaitsForADriverThatBindsLate) {
  for (const char* evidence : {"firmware/acpi/tables/TPM2", "bus/acpi/devices/MSFT0101:00", "class/tpm/tpm0"}) {
    FakeHost host;
    auto how = host.how();
    touch(host.sysfs() / evidence);
    host.appear_after_sleeps = 25;  // 5 s after start
    auto r = wait_for_tpm_device(host.tcti(), how);
    EXPECT_TRUE(r) << evidence << ": " << (r ? "" : r.error().message);
    EXPECT_EQ(host.sleeps, 25) << evidence << ": returns as soon as the node exists";
  }
}

TEST(TpmDeviceWait, GivesUpAtTheDeadlineNamingTheDriver) {
  FakeHost host;
  auto how = host.how();
  touch(host.sysfs() / "firmware/acpi/tables/TPM2");
  const SteadyTime start = host.clock.steady_now();
  auto r = wait_for_tpm_device(host.tcti(), how);
  ASSERT_FALSE(r);
  EXPECT_EQ(host.clock.steady_now() - start, 60s) << "bounded by max_wait, no more";
  EXPECT_NE(r.error().message.find("ACPI TPM2 table"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("did not appear within 60 s"), std::string::npos) << r.error().message;
}

}  // namespace
}  // namespace certagent::tpm
