#pragma once
// The daemon's view of every certificate: current material, state, schedule and failures.
// Written by the certificate loops, read by the socket server, metrics and status. Lives on
// the io_context thread: no locking, callbacks run inline.

#include "core/clock.h"
#include "core/config/config.h"
#include "core/material.h"
#include "core/result.h"

#include <functional>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace certagent {

enum class CertState {
  not_issued,     // nothing held yet
  not_yet_valid,  // material held whose not_before is still ahead (a broker clock ahead of
                  // ours, or our clock stepped back): never handed out until it is valid
  valid,          // valid material held
  expired,        // material held but past not_after (or nothing, after a failure streak)
};
std::string_view to_string(CertState s);

struct CertEntry {
  config::CertificateConfig config;
  CertState state{CertState::not_issued};
  MaterialPtr material;                    // null until issued; never handed out if expired
  std::string trust_bundle_pem;            // as configured, for socket consumers
  std::optional<SystemTime> next_renewal;
  bool renewing{false};
  int consecutive_failures{0};
  std::string last_error;
  std::optional<SystemTime> last_success;
  std::optional<SystemTime> last_attempt;
  bool reload_unverified{false};           // a reloader could not confirm the new serial
  // The broker's clock minus ours, as its last answer showed it (HTTP Date, or a leaf that
  // starts in our future): positive when this host's clock is behind. Unset when they agree.
  std::optional<std::chrono::seconds> clock_skew;

  // Valid material at `now`, or null: the only accessor that hands material out.
  MaterialPtr valid_material(SystemTime now) const {
    return material && material->valid_at(now) ? material : nullptr;
  }
};

// What the daemon knows of one broker (agent/broker_health): for `certagent status`,
// GET /v1/certificates and state.json.
struct BrokerStatus {
  std::string name;
  std::string type;
  std::optional<bool> up;            // it answers (probe or issuance); nullopt: not known yet
  std::optional<bool> accepts;       // it accepted our last request; nullopt: not known yet
  Cause cause{Cause::unspecified};   // when !accepts: refused (its side) or local_config (ours)
  std::string reason;                // when !accepts: "credentials", "authority", "tls_trust", ...
  std::string detail;                // when !accepts: the error, saying what to change
  std::string down_detail;           // when !up: why the probe failed
  std::optional<SystemTime> last_probe;
  std::optional<SystemTime> next_probe;
};

// The state of `material` at `now` (null material: not_issued).
CertState state_at(const MaterialPtr& material, SystemTime now);
// The stored state, corrected by the clock: fail-closed views (status, socket, metrics) never
// lag behind a loop that has not yet marked its material expired or valid.
CertState effective_state(const CertEntry& entry, SystemTime now);

// removed: a config reload dropped the certificate; sent while the entry still exists.
enum class CertEvent { committed, expired, state_changed, removed };

class CertificateStore {
 public:
  using Listener = std::function<void(const CertEntry&, CertEvent)>;

  class Subscription {
   public:
    Subscription() = default;
    Subscription(CertificateStore* store, std::list<std::pair<std::string, Listener>>::iterator it)
        : store_(store), it_(it) {}
    Subscription(Subscription&& o) noexcept : store_(o.store_), it_(o.it_) { o.store_ = nullptr; }
    Subscription& operator=(Subscription&& o) noexcept {
      reset();
      store_ = o.store_;
      it_ = o.it_;
      o.store_ = nullptr;
      return *this;
    }
    ~Subscription() { reset(); }
    void reset();

   private:
    CertificateStore* store_{nullptr};
    std::list<std::pair<std::string, Listener>>::iterator it_;
  };

  // Replaces the set of certificates (start and config reload); keeps material of names
  // that remain.
  void configure(const std::vector<config::CertificateConfig>& certs);

  CertEntry* find(const std::string& name);
  const CertEntry* find(const std::string& name) const;
  const std::map<std::string, CertEntry>& entries() const { return entries_; }

  // Swaps in new material and tells listeners (watchers get the new bundle).
  void commit(const std::string& name, MaterialPtr material, SystemTime now);
  // The held material has passed not_after: state expired, listeners told.
  void mark_expired(const std::string& name);
  // The clock moved past not_before (or back before it): the state follows, listeners told
  // when it changed. Expiry goes through mark_expired().
  void refresh_state(const std::string& name, SystemTime now);
  // Any other change (schedule, failure count): listeners may refresh views.
  void touch(const std::string& name);

  // Broker views (agent/broker_health). Listeners are not told: they follow certificates.
  void set_broker(BrokerStatus status);
  void remove_broker(const std::string& name);
  const std::map<std::string, BrokerStatus>& brokers() const { return brokers_; }
  const BrokerStatus* broker(const std::string& name) const;

  // Listen to one certificate ("" = all).
  [[nodiscard]] Subscription subscribe(const std::string& name, Listener listener);

  // Readiness: every certificate holds valid material with more than its ready_min_ttl left.
  bool ready(SystemTime now, std::vector<std::string>* reasons = nullptr) const;

  // An out-of-schedule renewal (socket POST .../renew, CLI). Returns false for unknown names.
  bool request_renewal(const std::string& name);
  void set_renewal_handler(std::function<void(const std::string&)> handler) {
    renewal_handler_ = std::move(handler);
  }

 private:
  void notify(const CertEntry& entry, CertEvent event);

  std::map<std::string, CertEntry> entries_;
  std::map<std::string, BrokerStatus> brokers_;
  std::list<std::pair<std::string, Listener>> listeners_;
  std::function<void(const std::string&)> renewal_handler_;
};

}  // namespace certagent
