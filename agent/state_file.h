#pragma once
// <state_dir>/state.json: what `certagent status --config` shows when the socket is not
// configured or the daemon is down. Written atomically by the daemon (debounced), never with
// key material.

#include "core/clock.h"
#include "core/result.h"
#include "agent/store.h"

#include <boost/json/value.hpp>

#include <filesystem>

namespace certagent {

inline constexpr const char* kStateFileName = "state.json";

// The list GET /v1/certificates serves and state.json keeps, one object per certificate: name,
// broker, state, serial, not_before, not_after, next_renewal, renewing, consecutive_failures,
// last_error, last_success, reload_unverified, dir — never keys.
// Each also carries its broker's broker_up and broker_accepts (true, false or null: not known).
boost::json::array describe_certificates(const CertificateStore& store, SystemTime now);

// One object per broker (served next to the certificates, kept in state.json): name, type, up,
// accepts, cause ("refused": the broker says no; "local_config": our configuration is broken),
// reason, detail (what to change), down_detail, last_probe, next_probe.
boost::json::array describe_brokers(const CertificateStore& store);

[[nodiscard]] Result<> write_state_file(const std::filesystem::path& state_dir,
                                        const CertificateStore& store, SystemTime now);
[[nodiscard]] Result<boost::json::value> read_state_file(const std::filesystem::path& state_dir);

}  // namespace certagent
