#pragma once
// The Unix socket API (DESIGN.md "Unix socket API — contract") and the TCP metrics listener,
// both on the daemon's io_context and the same HTTP server code.
//
//   GET  /v1/certificates               list: name, state, serial, not_before, not_after,
//                                       next_renewal, ... — never keys; any peer
//   GET  /v1/certificates/{name}        the bundle with its private key, to allowed peers only
//   GET  /v1/certificates/{name}?watch=1  chunked, one JSON object per line: the current bundle
//                                       (or an error line), then one per rotation, and
//                                       {"error":"expired"} at expiry
//   POST /v1/certificates/{name}/renew  202; root or socket.admin_uids only
//   GET  /healthz /readyz /metrics      also on the TCP listener (metrics.listen)
//
// Who may read a key: root (uid 0, which can read the daemon's memory anyway), uids in the
// certificate's socket.allow_uids, and peers whose effective gid or one of whose supplementary
// groups (SO_PEERGROUPS) is in socket.allow_gids. Others get 403, logged with pid and uid.

#include "core/time_format.h"
#include "core/clock.h"
#include "core/config/config.h"
#include "core/http/server.h"
#include "agent/metrics.h"
#include "core/result.h"
#include "agent/store.h"

#include <sys/types.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/json/storage_ptr.hpp>

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace certagent {


// Who may read a certificate's key over a socket (the HTTP API and the sidecar API alike): root,
// uids in access.allow_uids, and peers whose gid or a supplementary group is in allow_gids.
bool may_read_key(const config::SocketAccess& access, const http::Peer& peer);

// A listening Unix socket at `path`, created the way SocketServer::start() describes; `what`
// ("socket", "workload_api") names the config keys in messages.
struct UnixSocketFile {
  boost::asio::local::stream_protocol::acceptor acceptor;
  dev_t dev;
  ino_t ino;
};
[[nodiscard]] Result<UnixSocketFile> create_unix_socket(boost::asio::io_context& io,
                                                        const std::filesystem::path& path,
                                                        std::uint32_t mode,
                                                        const std::string& group,
                                                        std::string_view what);
// Removes the socket at `path` if it is still the one created (dev, ino).
void remove_unix_socket(const std::filesystem::path& path, dev_t dev, ino_t ino);

// Storage for Boost.JSON values that hold key material: every block is wiped when freed.
boost::json::storage_ptr json_wiping_storage();

// Largest request body accepted on the socket (renew takes none).
inline constexpr std::size_t kSocketMaxBody = 64 * 1024;

class SocketServer {
 public:
  // `healthy` answers /healthz (the daemon's loop runs); null means always healthy. Everything
  // referenced must outlive the server.
  SocketServer(boost::asio::io_context& io, const config::SocketConfig& config,
               CertificateStore& store, Metrics& metrics, const Clock& clock,
               std::function<bool()> healthy);
  ~SocketServer();  // stop()
  SocketServer(const SocketServer&) = delete;
  SocketServer& operator=(const SocketServer&) = delete;

  // Creates socket.path (parent directory 0755 if missing; mode and group applied before the
  // socket becomes visible at its path) and starts serving. A stale socket nobody answers on is
  // replaced; a live one, or anything that is not a socket, is an error. An empty path: nothing
  // to serve, returns success.
  [[nodiscard]] Result<> start();
  // Closes every connection (watchers included) and removes the socket file if it is still ours.
  void stop();

  const std::filesystem::path& path() const { return config_.path; }
  std::size_t watchers() const { return watcher_count_; }
  std::size_t connections() const { return server_.connections(); }

 private:
  struct WatchGroup;
  // A certificate's bundle serialized once for every fetch and watcher until it changes.
  struct CachedBundle {
    MaterialPtr material;
    std::string trust_bundle_pem;
    http::Chunk line;  // the JSON and a newline; wiped when the last holder lets go
  };

  http::Reply handle(const http::Request& request, const http::Peer& peer);
  http::Reply list() const;
  http::Reply fetch(const std::string& name, const http::Peer& peer);
  http::Reply watch(const std::string& name, const http::Peer& peer);
  http::Reply renew(const std::string& name, const http::Peer& peer);
  http::Chunk bundle_line(const CertEntry& entry, const MaterialPtr& material);
  http::Chunk current_line(const CertEntry& entry, std::string* key);
  void add_watcher(const std::string& name, std::shared_ptr<http::ResponseStream> stream);
  void on_event(const std::shared_ptr<WatchGroup>& group, const CertEntry& entry, CertEvent event);
  void on_expiry_timer(const std::shared_ptr<WatchGroup>& group);
  void push(const std::shared_ptr<WatchGroup>& group, const CertEntry& entry);
  void arm_expiry(const std::shared_ptr<WatchGroup>& group, const CertEntry& entry);
  void remove_watcher(const std::shared_ptr<WatchGroup>& group, std::size_t id);
  void set_watchers_metric();
  void log_denied(std::string_view what, const std::string& name, const http::Peer& peer);

  boost::asio::io_context& io_;
  config::SocketConfig config_;
  CertificateStore& store_;
  Metrics& metrics_;
  const Clock& clock_;
  std::function<bool()> healthy_;
  http::Server server_;
  std::map<std::string, std::shared_ptr<WatchGroup>> groups_;
  std::map<std::string, CachedBundle> bundles_;
  CertificateStore::Subscription cache_subscription_;
  std::size_t watcher_count_{0};
  std::size_t next_watcher_id_{0};
  bool started_{false};
  std::optional<std::pair<dev_t, ino_t>> socket_file_;  // what we created, for removal
  // Denials logged in the current second (a hostile client must not flood the log).
  std::int64_t denied_second_{0};
  int denied_logged_{0};
};

// /metrics, /healthz and /readyz on metrics.listen ("host:port"), with the same code as the
// socket.
class MetricsListener {
 public:
  MetricsListener(boost::asio::io_context& io, std::string listen, const CertificateStore& store,
                  Metrics& metrics, const Clock& clock, std::function<bool()> healthy);
  ~MetricsListener();
  MetricsListener(const MetricsListener&) = delete;
  MetricsListener& operator=(const MetricsListener&) = delete;

  // Binds metrics.listen; an empty address serves nothing and succeeds.
  [[nodiscard]] Result<> start();
  void stop();
  // The bound address (the real port when listen asked for port 0).
  std::optional<boost::asio::ip::tcp::endpoint> endpoint() const { return endpoint_; }
  std::size_t connections() const { return server_.connections(); }

 private:
  boost::asio::io_context& io_;
  std::string listen_;
  http::Server server_;
  std::optional<boost::asio::ip::tcp::endpoint> endpoint_;
};

}  // namespace certagent
