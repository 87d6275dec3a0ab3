#pragma once
// Hitless certificate swap through HAProxy's runtime API (admin socket, `level admin`):
//   set ssl cert <name> <<\n<cert+chain+key, no blank lines>\n\n   -> "Transaction created/updated"
//   [set ssl cert <name>.issuer / <name>.ocsp in the same transaction]
//   commit ssl cert <name>                                           -> "Success!"
// and `abort ssl cert <name>` on any error, so no transaction is left open (HAProxy allows only
// one at a time). The update lives in memory only: the file sink must have written the bundle
// on disk first so that a later haproxy reload keeps the new certificate.

#include "core/secret.h"
#include "core/async/async_mutex.h"
#include "reloaders/reloader_base.h"
#include "reloaders/haproxy_config.h"

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace certagent::reloaders {

// A text with its blank lines removed (a blank line ends a payload on the admin socket).
Secret strip_blank_lines(std::string_view text);
// The `set ssl cert` payload: leaf, chain and key, no blank lines.
Secret haproxy_payload(const Material& material);
// The names `show ssl cert` lists (transaction markers '*' removed).
std::vector<std::string> parse_show_ssl_cert(std::string_view answer);

// One exchange on the admin socket: connect, send, read the answer until HAProxy closes.
[[nodiscard]] boost::asio::awaitable<Result<std::string>> haproxy_admin_command(
    const std::filesystem::path& socket, std::string_view command, Deadline deadline);

class HaproxyReloader final : public ReloaderBase {
 public:
  HaproxyReloader(const config::ReloaderConfig& config, const HaproxyReloaderConfig& haproxy,
                  const ReloaderContext& context);

 protected:
  boost::asio::awaitable<ReloadOutcome> run(const ReloadEvent& event, Deadline deadline) override;
  boost::asio::awaitable<ReloadOutcome> apply(const ReloadEvent& event, Deadline deadline) override;

 private:
  boost::asio::awaitable<ReloadOutcome> transaction(const ReloadEvent& event, Deadline deadline);
  boost::asio::awaitable<Result<std::string>> set_payload(const std::string& name, const Secret& payload,
                                                          Deadline deadline);
  boost::asio::awaitable<void> abort_transaction(Deadline deadline);
  boost::asio::awaitable<std::string> unknown_name_detail(Deadline deadline);

  HaproxyReloaderConfig haproxy_;
  AsyncMutex instance_mutex_;
  std::shared_ptr<AsyncMutex> socket_mutex_;  // one transaction at a time per HAProxy
};

}  // namespace certagent::reloaders
