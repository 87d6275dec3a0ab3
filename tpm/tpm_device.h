#pragma once
// Waiting for the TPM's device node at boot. The kernel creates /dev/tpmrm0 when its TPM driver
// binds, which can be after certagent starts (a driver built as a module, loaded by udev). A
// host whose firmware announces a TPM therefore gets a bounded wait for the node; a host without
// one fails at once with an error saying so (a systemd Wants= on dev-tpmrm0.device would instead
// hold every TPM-less boot for the 90 s device timeout).

#include "core/clock.h"
#include "core/result.h"

#include <filesystem>
#include <functional>
#include <optional>
#include <string_view>

namespace certagent::tpm {

// The device node a "device:<path>" TCTI (or "device" alone, tpm2-tss's /dev/tpmrm0) opens;
// nullopt for other TCTIs (swtpm, mssim, tabrmd), which have no node to wait for.
[[nodiscard]] std::optional<std::filesystem::path> tcti_device_node(std::string_view tcti);

// What the firmware and the kernel say about a TPM, read under sysfs_root (/sys on a host).
struct TpmFirmwareReport {
  bool announced{false};    // an ACPI TPM2 table or TPM 2.0 device (MSFT0101), or a bound driver
  std::string evidence;     // which of them, for the log
};
[[nodiscard]] TpmFirmwareReport firmware_tpm_report(const std::filesystem::path& sysfs_root);

struct TpmDeviceWait {
  std::filesystem::path sysfs_root{"/sys"};
  Millis max_wait{std::chrono::seconds(60)};
  Millis poll_interval{200};
  const Clock* clock{nullptr};                   // steady_now() bounds the wait; the system clock if null
  std::function<void(Millis)> sleep;             // std::this_thread::sleep_for if empty
};

// Ok when the TCTI has no device node or the node exists (at once or within max_wait while the
// firmware announces a TPM). Otherwise an error naming the node, what the firmware said and how
// to recover.
[[nodiscard]] Result<void> wait_for_tpm_device(std::string_view tcti, const TpmDeviceWait& how = {});

}  // namespace certagent::tpm
