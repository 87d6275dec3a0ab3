#pragma once
// The CLI's side of the Unix socket API: `certagent status`, `fetch` and `renew` talk to the
// running daemon. Synchronous calls, each exchange bounded by a timeout.
//
// Exit codes (DESIGN.md "CLI"): 0 success; 1 runtime failure (daemon unreachable, 403, 404,
// 503, write failed); 2 usage (an invalid certificate name).

#include <boost/json/array.hpp>
#include "core/result.h"

#include <chrono>
#include <filesystem>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>

namespace certagent::cli {

inline constexpr std::chrono::milliseconds kSocketTimeout{std::chrono::seconds(10)};

struct SocketResponse {
  unsigned status{0};
  std::string content_type;
  std::string body;  // wipe it if it may hold a key
};

// One HTTP/1.1 request over the Unix socket at `socket_path`.
[[nodiscard]] Result<SocketResponse> socket_request(const std::filesystem::path& socket_path,
                                                    std::string_view method,
                                                    std::string_view target,
                                                    std::chrono::milliseconds timeout =
                                                        kSocketTimeout);

// Table: NAME STATE SERIAL NOT_AFTER EXPIRES_IN NEXT_RENEWAL BROKER_UP BROKER_ACCEPTS, then
// a line per broker that is down or refuses us; `json` prints the answer as the daemon sends
// it ({"certificates": [...], "brokers": [...]}).
int cli_status(const std::filesystem::path& socket_path, bool json, std::ostream& out,
               std::ostream& err);

// The status table of a certificate list (and its brokers) as GET /v1/certificates and
// state.json hold them. BROKER_UP: up | down | -; BROKER_ACCEPTS: yes | no:<reason> (the
// broker refuses us) | config:<reason> (our own configuration for it is broken) | -.
void print_status_table(const boost::json::array& certs, std::ostream& out,
                        const boost::json::array* brokers = nullptr);

// Without `out_dir`: prints the bundle JSON (certificate_pem, chain_pem, private_key_pem, ...)
// to `out`. With it: writes the files in the file sink's atomic `..data` layout (key 0600) and
// prints where.
int cli_fetch(const std::filesystem::path& socket_path, const std::string& name,
              const std::optional<std::filesystem::path>& out_dir, std::ostream& out,
              std::ostream& err);

// Asks the daemon for an immediate rotation (root or socket.admin_uids).
int cli_renew(const std::filesystem::path& socket_path, const std::string& name,
              std::ostream& out, std::ostream& err);

}  // namespace certagent::cli
