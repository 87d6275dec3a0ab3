#pragma once
// One loop per certificate (DESIGN.md "One rotation, as data flows"): wait for the renew point,
// rotate (issue -> validate -> commit -> announce), back off on failure, and fail closed at
// expiry. All of it runs on the daemon's io_context; blocking work goes to a pool. The clock and
// the timer are injected (LoopServices), so a unit test drives whole loops on a ManualClock.

#include "agent/audit_log.h"
#include "agent/broker_handle.h"
#include "agent/certificate_loop_timer.h"
#include "agent/file_sink.h"
#include "agent/metrics.h"
#include "agent/store.h"
#include "agent/trust_bundle.h"
#include "core/async/semaphore.h"
#include "core/clock.h"
#include "core/config/config.h"
#include "core/crypto/ossl_ptr.h"
#include "reloaders/reloader.h"
#include "renewers/renewer.h"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/system/result.hpp>

#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace certagent {

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
  LoopTimerFactory timers;               // empty: system_loop_timers(*clock)
  std::optional<unsigned> seed;          // jitter and backoff randomness; empty: random_device
  tpm::Identity* identity{nullptr};      // unseals sealed keystore passwords; null without one
};

// Why a rotation stopped. The one failure path (CertificateLoop::fail) turns each kind into
// logs, metrics, audit and the next retry.
enum class FailureKind {
  local,       // key, CSR, trust bundle, files: ours
  broker,      // no certificate from the broker (down, refused, timed out): counts for its circuit
  rejected,    // the broker's certificate failed validation
  clock_skew,  // the broker's certificate starts later than our clock allows: fix time sync
  superseded,  // a configuration reload replaced this loop meanwhile
  stopping,    // the daemon is stopping
};
std::string_view to_string(FailureKind k);

struct RotationFailure {
  FailureKind kind{FailureKind::local};
  Error error;
};

template <class T = void>
using Stage = boost::system::result<T, RotationFailure>;

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
  // The wall clock moved by a second or more (or the host resumed): recompute deadlines now.
  // A renewal that failed on clock skew is retried at once: the step may have fixed it.
  void wake();
  void stop();
  bool stopped() const { return finished_; }

  const std::string& name() const { return config_.name; }

 private:
  struct Issued {
    crypto::EvpPkeyPtr key;
    renewers::IssueResult result;
  };
  struct Rotated {
    MaterialPtr material;
    std::optional<SystemTime> hint;
  };
  // What the loop does next: rotate now, or sleep until one of the deadlines.
  struct Plan {
    bool rotate_now{false};
    std::optional<SystemTime> due;          // as published (next_renewal)
    std::optional<SystemTime> wake_wall;    // renew point, not_before or expiry
    std::optional<SteadyTime> wake_steady;  // end of a backoff
  };

  asio::awaitable<void> load_initial();
  Plan plan(const MaterialPtr& material, SystemTime now, SteadyTime steady) const;
  // The held material as the clock now sees it: expiry (fail closed), not yet valid, valid.
  void follow_clock(const MaterialPtr& material, SystemTime now);

  // One rotation: the stages in order; the first failure goes to fail().
  asio::awaitable<bool> rotate();
  asio::awaitable<Stage<Rotated>> attempt();
  asio::awaitable<Stage<Issued>> issue();         // slot, key, CSR, broker
  asio::awaitable<Stage<Issued>> issue_in_slot();
  Stage<MaterialPtr> validate(Issued& issued);    // trust, validate_issued, clock skew
  asio::awaitable<Stage<>> commit(const MaterialPtr& material);  // files, then the store
  void announce(const MaterialPtr& material, std::optional<SystemTime> hint);  // success, reloaders
  void fail(const RotationFailure& failure);      // the one failure path

  asio::awaitable<void> run_reloaders(MaterialPtr material, bool expiry);
  void on_expiry(const MaterialPtr& material);
  // `arrived`: when a freshly issued leaf came in (see policy::renew_point_on_arrival); none for
  // material loaded from disk or kept across a reload, which follows the rule as it stands.
  void schedule_from(const Material& material, std::optional<SystemTime> hint,
                     std::optional<SystemTime> arrived = std::nullopt);
  void publish_schedule(std::optional<SystemTime> due);
  void publish_clock_skew(std::optional<std::chrono::seconds> skew);  // broker minus ours
  CertEntry& entry();
  // The store's entry while it still belongs to this loop's configuration, else null.
  CertEntry* own_entry();
  Metrics::Labels labels() const;
  void publish_in_flight();  // the broker's in-flight gauge and its high-water mark
  // An issuance's outcome to the broker's health (LoopServices::broker_outcome); null: success.
  void report_to_broker_health(const Error* error);

  LoopServices services_;
  config::CertificateConfig config_;
  std::shared_ptr<BrokerHandle> broker_;
  std::vector<std::shared_ptr<reloaders::Reloader>> reloaders_;
  std::vector<std::shared_ptr<reloaders::Reloader>> expiry_hooks_;
  std::optional<FileSink> sink_;
  std::shared_ptr<TrustBundle> trust_;
  std::unique_ptr<LoopTimer> timer_;
  AsyncSemaphore reload_serial_;        // one reload sequence at a time per certificate
  std::minstd_rand rng_;  // jitter only; mt19937_64 would be 2.5 KB per certificate

  std::optional<SystemTime> renew_at_;  // for the held material: a wall-clock instant
  // After a failure: a duration, so on the monotonic clock (a clock step must not stretch it).
  std::optional<SteadyTime> retry_at_;
  std::optional<FailureKind> last_failure_;
  bool force_renewal_{false};
  CertEntry orphan_;  // see entry()
  bool stopping_{false};
  bool finished_{false};
  bool expiry_handled_{false};
};

}  // namespace certagent
