#include "tpm/tpm_device.h"

#include "core/logging.h"

#include <system_error>
#include <thread>

namespace certagent::tpm {

namespace fs = std::filesystem;

std::optional<fs::path> tcti_device_node(std::string_view tcti) {
  if (tcti == "device") return fs::path("/dev/tpmrm0");
  constexpr std::string_view prefix = "device:";
  if (!tcti.starts_with(prefix)) return std::nullopt;
  std::string_view path = tcti.substr(prefix.size());
  if (path.empty()) return fs::path("/dev/tpmrm0");
  return fs::path(std::string(path));
}

TpmFirmwareReport firmware_tpm_report(const fs::path& sysfs_root) {
  std::error_code ec;
  if (fs::exists(sysfs_root / "firmware/acpi/tables/TPM2", ec)) return {true, "ACPI TPM2 table"};
  for (const char* hid : {"MSFT0101:00", "MSFT0101:01"})
    if (fs::exists(sysfs_root / "bus/acpi/devices" / hid, ec)) return {true, std::string("ACPI device ") + hid};
  for (const auto& entry : fs::directory_iterator(sysfs_root / "class/tpm", ec))
    return {true, "kernel TPM device " + entry.path().filename().string()};
  return {false, {}};
}

Result<void> wait_for_tpm_device(std::string_view tcti, const TpmDeviceWait& how) {
  const auto node = tcti_device_node(tcti);
  std::error_code ec;
  if (!node || fs::exists(*node, ec)) return {};

  const TpmFirmwareReport firmware = firmware_tpm_report(how.sysfs_root);
  const std::string where = node->string() + " (identity.tcti \"" + std::string(tcti) + "\")";
  if (!firmware.announced)
    return make_error("no TPM: " + where + " does not exist and the firmware announces none (no ACPI TPM2 "
                      "table, no TPM driver bound): enable the TPM in the firmware or attach a vTPM, "
                      "or load its driver (modprobe tpm_crb / tpm_tis), then restart certagent");

  SystemClock system_clock;
  const Clock& clock = how.clock ? *how.clock : system_clock;
  const auto deadline = clock.steady_now() + how.max_wait;
  log::get("tpm")->info("event=tpm_device_wait device={} firmware={} max_wait_s={}", node->string(),
                        log::quote(firmware.evidence), how.max_wait.count() / 1000);
  while (clock.steady_now() < deadline) {
    if (how.sleep) how.sleep(how.poll_interval);
    else std::this_thread::sleep_for(how.poll_interval);
    if (fs::exists(*node, ec)) {
      log::get("tpm")->info("event=tpm_device_ready device={}", node->string());
      return {};
    }
  }
  return make_error("no TPM device: the firmware announces a TPM (" + firmware.evidence + ") but " + where +
                    " did not appear within " + std::to_string(how.max_wait.count() / 1000) +
                    " s: its kernel driver did not bind (check `dmesg | grep -i tpm`, load tpm_crb or "
                    "tpm_tis), then restart certagent");
}

}  // namespace certagent::tpm
