#pragma once
// One loop per certificate (DESIGN.md "One rotation, as data flows"): wait for the renew point,
// rotate (fresh key, CSR, broker, validation, commit, reloaders), back off on failure, and fail
// closed at expiry. All of it runs on the daemon's io_context; blocking work goes to a pool.

#include "core/async/semaphore.h"
#include "agent/audit_log.h"
#include "core/clock.h"
#include "core/config/config.h"
#include "core/crypto/ossl_ptr.h"
#include "agent/file_sink.h"
#include "agent/metrics.h"
#include "agent/store.h"
#include "reloaders/reloader.h"
#include "renewers/renewer.h"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/system_timer.hpp>
#include <boost/asio/thread_pool.hpp>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace certagent {

// The trust bundle of one or more certificates, re-read whenever its file changes (CA rotation
// without a restart). Used on the daemon's io_context only.
class TrustBundle {
 public:
  explicit TrustBundle(std::filesystem::path path) : path_(std::move(path)) {}
  // The store for the file as it is now; reloads when mtime, size or inode changed.
  [[nodiscard]] Result<X509_STORE*> current();
  const std::string& pem() const { return pem_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  crypto::X509StorePtr store_;
  std::string pem_;
  std::int64_t mtime_ns_{-1};
  std::uintmax_t size_{0};
  std::uint64_t inode_{0};
};

// One TrustBundle per file for the loops of one configuration: parsed anchors cost kilobytes,
// and a thousand certificates usually share one or two bundles.
class TrustBundles {
 public:
  std::shared_ptr<TrustBundle> get(const std::filesystem::path& path);

 private:
  std::map<std::filesystem::path, std::weak_ptr<TrustBundle>> bundles_;
};

// What a loop shares with the rest of the daemon. Everything outlives the loops.
struct LoopServices {
  asio::any_io_executor executor;
  asio::thread_pool* workers{nullptr};   // keygen and fsync
  const Clock* clock{nullptr};
  CertificateStore* store{nullptr};
  Metrics* metrics{nullptr};
  AuditLog* audit{nullptr};
  std::filesystem::path state_dir;
  std::function<void()> state_changed;   // persist state.json (debounced by the agent)
  std::shared_ptr<TrustBundles> trust_bundles{std::make_shared<TrustBundles>()};
  // Each answer (or failure) of a broker to an issuance, null for a success: its health
  // (agent/broker_health) follows from the error's Cause.
  std::function<void(const std::string& broker, const Error* error)> broker_outcome;
};

// A broker as the loops see it: its client, its concurrency bound and its circuit state.
struct BrokerHandle {
  // After this many consecutive broker failures (any certificate) the circuit opens: requests
  // go one at a time, so a down broker is probed, not hammered by every certificate at once.
  static constexpr int kOpenAfter = 3;

  BrokerHandle(config::BrokerConfig c, std::unique_ptr<renewers::Renewer> r,
               const asio::any_io_executor& ex)
      : config(std::move(c)),
        renewer(std::move(r)),
        in_flight(ex, config.max_in_flight),
        probe(ex, 1) {}

  bool circuit_open() const { return consecutive_failures >= kOpenAfter; }

  config::BrokerConfig config;
  std::unique_ptr<renewers::Renewer> renewer;
  AsyncSemaphore in_flight;
  AsyncSemaphore probe;
  int consecutive_failures{0};
  std::filesystem::path default_trust_bundle;  // the local CA's root for `local`
  // Replaced or removed by a configuration reload: loops still finishing with it no longer
  // report on the broker's metric series (its successor, if any, owns them).
  bool retired{false};
};

class CertificateLoop : public std::enable_shared_from_this<CertificateLoop> {
 public:
  CertificateLoop(LoopServices services, config::CertificateConfig config,
                  std::shared_ptr<BrokerHandle> broker,
                  std::vector<std::shared_ptr<reloaders::Reloader>> reloaders,
                  std::vector<std::shared_ptr<reloaders::Reloader>> expiry_hooks);

  // Runs until stop(). Never throws.
  asio::awaitable<void> run();

  // Out-of-schedule renewal (socket POST .../renew).
  void request_renewal();
  // The wall clock jumped (or the host resumed): recompute deadlines now.
  void wake();
  void stop();
  bool stopped() const { return finished_; }

  const std::string& name() const { return config_.name; }

 private:
  asio::awaitable<void> load_initial();
  asio::awaitable<Result<MaterialPtr>> rotate();
  asio::awaitable<void> run_reloaders(MaterialPtr material, bool expiry);
  asio::awaitable<void> sleep_until(SystemTime t);
  void on_success(const MaterialPtr& material, std::optional<SystemTime> hint);
  void on_failure(const Error& error, bool rejected);
  void on_expiry(const MaterialPtr& material);
  // `arrived`: when a freshly issued leaf came in (see policy::renew_point_on_arrival); none for
  // material loaded from disk or kept across a reload, which follows the rule as it stands.
  void schedule_from(const Material& material, std::optional<SystemTime> hint,
                     std::optional<SystemTime> arrived = std::nullopt);
  void publish_schedule(std::optional<SystemTime> due);
  CertEntry& entry();
  // The store's entry while it still belongs to this loop's configuration, else null.
  CertEntry* own_entry();
  Metrics::Labels labels() const;
  void publish_in_flight();  // the broker's in-flight gauge and its high-water mark

  LoopServices services_;
  config::CertificateConfig config_;
  std::shared_ptr<BrokerHandle> broker_;
  std::vector<std::shared_ptr<reloaders::Reloader>> reloaders_;
  std::vector<std::shared_ptr<reloaders::Reloader>> expiry_hooks_;
  std::optional<FileSink> sink_;
  std::shared_ptr<TrustBundle> trust_;
  asio::system_timer timer_;
  AsyncSemaphore reload_serial_;        // one reload sequence at a time per certificate
  std::minstd_rand rng_;  // jitter only; mt19937_64 would be 2.5 KB per certificate

  std::optional<SystemTime> renew_at_;  // for the held material
  std::optional<SystemTime> retry_at_;  // after a failure
  bool force_renewal_{false};
  CertEntry orphan_;  // see entry()
  bool stopping_{false};
  bool finished_{false};
  bool expiry_handled_{false};
};

}  // namespace certagent
