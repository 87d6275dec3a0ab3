#include "agent/agent.h"

#include "core/async/semaphore.h"
#include "agent/audit_log.h"
#include "agent/broker_health.h"
#include "agent/builtin_plugins.h"
#include "agent/certificate_loop.h"
#include "agent/clock_watch.h"
#include "core/crypto/keys.h"
#include "core/fs_util.h"
#include "core/logging.h"
#include "agent/metrics.h"
#include "agent/sd_notify.h"
#include "agent/sidecar/loader.h"
#include "agent/socket_server.h"
#include "agent/state_file.h"
#include "agent/store.h"
#include "renewers/local_renewer.h"
#include "tpm/identity.h"

#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <iostream>
#include <map>
#include <memory>
#include <set>

namespace certagent {
namespace {

using namespace std::chrono_literals;

std::shared_ptr<spdlog::logger> logger() { return log::get("agent"); }

// How long start-up may take before systemd is told READY=1 anyway (some certificate still
// has nothing valid: the broker may be down, and the socket must still answer 503s).
constexpr auto kStartupReadyTimeout = 60s;
// How long a graceful stop waits for in-flight rotations before giving up on them.
constexpr auto kStopGrace = 5s;
// state.json is written at most this often.
constexpr auto kStateWriteDelay = 1s;

// The socket API, the sidecar API and the metrics listener, started and stopped together.
class ServerSet {
 public:
  ServerSet(asio::io_context& io, const config::Config& config, CertificateStore& store,
            Metrics& metrics, const Clock& clock, std::function<bool()> healthy)
      : io_(io), config_(config), store_(store), metrics_registry_(metrics), clock_(clock),
        socket_(io, config.socket, store, metrics, clock, healthy),
        metrics_(io, config.metrics.listen, store, metrics, clock, healthy) {}

  Result<> start() {
    if (auto r = socket_.start(); !r) return r;  // its message names the path
    // Without workload_api the sidecar module is not even loaded: no gRPC library mapped, no
    // gRPC thread, no memory.
    if (!config_.workload_api.path.empty()) {
      auto endpoint = sidecar::load_endpoint(io_, config_.workload_api, store_, metrics_registry_,
                                             clock_);
      if (!endpoint) return with_context("workload_api", endpoint.error());
      sidecar_ = std::move(*endpoint);
      if (auto r = sidecar_->start(); !r) return r;
    }
    if (auto r = metrics_.start(); !r) return with_context("metrics listener", r.error());
    return {};
  }
  void stop() {
    socket_.stop();
    if (sidecar_) sidecar_->stop();
    metrics_.stop();
  }

 private:
  asio::io_context& io_;
  const config::Config& config_;
  CertificateStore& store_;
  Metrics& metrics_registry_;
  const Clock& clock_;
  SocketServer socket_;
  std::unique_ptr<sidecar::Endpoint> sidecar_;
  MetricsListener metrics_;
};

bool needs_identity(const config::Config& c) {
  for (const auto& [name, b] : c.brokers)
    if (b.type != "local") return true;
  for (const auto& cert : c.certificates)
    if (cert.files && cert.files->pkcs12 && cert.files->pkcs12->sealed) return true;
  return false;
}

class Daemon {
 public:
  explicit Daemon(std::filesystem::path config_path)
      : config_path_(std::move(config_path)),
        workers_(2),
        signals_(io_, SIGTERM, SIGINT, SIGHUP),
        state_timer_(io_),
        watchdog_timer_(io_),
        ready_timer_(io_),
        clock_watch_(io_.get_executor(), clock_, [this](std::chrono::nanoseconds) {
          metrics_.add(metric::kClockJumps, {});
          for (auto& [name, loop] : loops_) loop->wake();
        }) {}

  int run(config::Config config) {
    config_ = std::move(config);
    if (auto r = prepare_state_dir(config_.state_dir); !r) {
      logger()->error("event=start_failed error={}", log::quote(r.error().message));
      return 1;
    }
    audit_ = std::make_unique<AuditLog>(config_.state_dir / "audit.log");
    if (needs_identity(config_)) {
      auto identity = tpm::open_identity(config_);
      if (!identity) {
        logger()->error("event=start_failed error={}", log::quote(identity.error().message));
        return 1;
      }
      identity_ = std::move(*identity);
    }
    if (auto r = apply(config_); !r) {
      logger()->error("event=start_failed error={}", log::quote(r.error().message));
      return 1;
    }
    if (!config_.socket.path.empty() || !config_.workload_api.path.empty() ||
        !config_.metrics.listen.empty()) {
      servers_ = std::make_unique<ServerSet>(io_, config_, store_, metrics_, clock_,
                                             [this] { return !stopping_; });
      if (auto r = servers_->start(); !r) {
        logger()->error("event=start_failed error={}", log::quote(r.error().message));
        return 1;
      }
    }
    store_.set_renewal_handler([this](const std::string& name) {
      if (auto it = loops_.find(name); it != loops_.end()) it->second->request_renewal();
    });
    if (!clock_watch_.start())
      logger()->warn("event=clock_watch_unavailable effect=\"clock steps are noticed late\"");
    wait_signals();
    start_systemd_notifications();
    logger()->info("event=started version={} certificates={} brokers={} config={}",
                   CERTAGENT_VERSION, config_.certificates.size(), config_.brokers.size(),
                   log::quote(config_path_.string()));
    io_.run();
    workers_.join();
    logger()->info("event=stopped");
    return 0;
  }

 private:
  // Builds brokers and loops for `next`, keeping what did not change (material, loops).
  Result<> apply(const config::Config& next) {
    std::map<std::string, std::shared_ptr<BrokerHandle>> brokers;
    for (const auto& [name, bc] : next.brokers) {
      auto old = brokers_.find(name);
      if (old != brokers_.end() && old->second->config == bc) {
        brokers.emplace(name, old->second);
        continue;
      }
      renewers::RenewerContext context{io_.get_executor(), identity_.get(), next.state_dir, &clock_};
      auto renewer = agent::make_renewer(bc, context);
      if (!renewer) return with_context("broker '" + name + "'", renewer.error());
      auto handle = std::make_shared<BrokerHandle>(bc, std::move(*renewer), io_.get_executor());
      if (bc.type == "local") handle->default_trust_bundle = renewers::LocalRenewer::root_path(next.state_dir);
      brokers.emplace(name, std::move(handle));
    }

    // Loops whose certificate or broker changed are stopped; new ones started.
    std::map<std::string, std::shared_ptr<CertificateLoop>> loops;
    std::vector<const config::CertificateConfig*> to_start;
    for (const auto& c : next.certificates) {
      auto old = loops_.find(c.name);
      const config::CertificateConfig* old_cfg = nullptr;
      for (const auto& oc : config_.certificates)
        if (oc.name == c.name) old_cfg = &oc;
      if (old != loops_.end() && old_cfg && *old_cfg == c &&
          brokers.at(c.broker) == brokers_.at(c.broker) && !first_apply_) {
        loops.emplace(c.name, old->second);
      } else {
        to_start.push_back(&c);
      }
    }
    for (auto& [name, loop] : loops_)
      if (!loops.count(name)) loop->stop();

    // Reloaders are built before anything changes, so a bad one leaves the old config running.
    std::vector<std::tuple<const config::CertificateConfig*,
                           std::vector<std::shared_ptr<reloaders::Reloader>>,
                           std::vector<std::shared_ptr<reloaders::Reloader>>>>
        prepared;
    reloaders::ReloaderContext rctx{io_.get_executor()};
    for (const auto* c : to_start) {
      std::vector<std::shared_ptr<reloaders::Reloader>> reload, expiry;
      for (const auto& rc : c->reload) {
        auto r = agent::make_reloader(rc, rctx);
        if (!r) return with_context("certificate '" + c->name + "' reloader " + rc.type, r.error());
        reload.push_back(std::move(*r));
      }
      for (const auto& rc : c->on_expiry) {
        auto r = agent::make_reloader(rc, rctx);
        if (!r) return with_context("certificate '" + c->name + "' on_expiry " + rc.type, r.error());
        expiry.push_back(std::move(*r));
      }
      prepared.emplace_back(c, std::move(reload), std::move(expiry));
    }

    store_.configure(next.certificates);
    LoopServices services{io_.get_executor(), &workers_, &clock_, &store_, &metrics_, audit_.get(),
                          next.state_dir, [this] { schedule_state_write(); }, trust_bundles_,
                          [this](const std::string& broker, const Error* error) {
                            if (auto it = health_.find(broker); it != health_.end()) it->second->record_issue(error);
                          }};
    services.identity = identity_.get();
    for (auto& [c, reload, expiry] : prepared) {
      auto loop = std::make_shared<CertificateLoop>(services, *c, brokers.at(c->broker),
                                                    std::move(reload), std::move(expiry));
      loops.emplace(c->name, loop);
      asio::co_spawn(io_, loop->run(), asio::detached);
    }
    // Series of certificates that are gone must not linger in /metrics.
    for (const auto& [name, loop] : loops_)
      if (!loops.count(name)) forget_metrics(name);
    for (const auto& [name, handle] : brokers_) {
      const auto kept = brokers.find(name);
      if (kept != brokers.end() && kept->second == handle) continue;
      handle->retired = true;
      if (auto h = health_.find(name); h != health_.end()) {
        h->second->forget();  // a successor of the same name publishes its own
        health_.erase(h);
      }
      if (kept == brokers.end())
        for (const char* m : {metric::kBrokerInFlight, metric::kBrokerInFlightMax})
          metrics_.remove(m, {{"broker", name}});
    }
    loops_ = std::move(loops);
    brokers_ = std::move(brokers);
    // Health of new (or changed) brokers, from the brokers themselves (agent/broker_health.h).
    for (const auto& [name, handle] : brokers_) {
      if (health_.count(name)) continue;
      auto health = std::make_shared<BrokerHealth>(io_.get_executor(), clock_, metrics_, store_, name,
                                                   handle->config.type, *handle->renewer, handle,
                                                   [this] { schedule_state_write(); });
      health_.emplace(name, health);
      health->start();
    }
    first_apply_ = false;
    return {};
  }

  void forget_metrics(const std::string& name) {
    for (const char* m : {metric::kNotAfter, metric::kExpired, metric::kNextRenewal,
                          metric::kConsecutiveFailures})
      metrics_.remove(m, {{"name", name}});
  }

  void wait_signals() {
    signals_.async_wait([this](boost::system::error_code ec, int sig) {
      if (ec) return;
      if (sig == SIGHUP) {
        reload_config();
        wait_signals();
        return;
      }
      stop(sig);
    });
  }

  void reload_config() {
    systemd::notify_reloading();
    auto next = config::load_config(config_path_, agent::builtin_catalog());
    if (!next) {
      logger()->error("event=config_reload_failed action=keeping_current error={}",
                      log::quote(next.error().message));
      systemd::notify("READY=1");
      return;
    }
    if (next->state_dir != config_.state_dir || next->identity.backend != config_.identity.backend ||
        next->identity.tcti != config_.identity.tcti || !(next->socket == config_.socket) ||
        !(next->workload_api == config_.workload_api) ||
        next->metrics.listen != config_.metrics.listen)
      logger()->warn("event=config_reload_partial effect=\"state_dir, identity, socket, "
                     "workload_api and metrics changes take effect at the next restart\"");
    if (needs_identity(*next) && !identity_) {
      logger()->error("event=config_reload_failed action=keeping_current error=\"the new config "
                      "needs the host identity, which needs a restart to open\"");
      systemd::notify("READY=1");
      return;
    }
    log::init({next->log.level, next->log.format});
    if (auto r = apply(*next); !r) {
      logger()->error("event=config_reload_failed action=keeping_current error={}",
                      log::quote(r.error().message));
    } else {
      const auto keep_state = config_.state_dir;
      const auto keep_identity = config_.identity;
      const auto keep_socket = config_.socket;
      const auto keep_workload_api = config_.workload_api;
      const auto keep_metrics = config_.metrics;
      config_ = std::move(*next);
      config_.state_dir = keep_state;
      config_.identity = keep_identity;
      config_.socket = keep_socket;
      config_.workload_api = keep_workload_api;
      config_.metrics = keep_metrics;
      logger()->info("event=config_reloaded certificates={}", config_.certificates.size());
    }
    systemd::notify("READY=1");
  }

  void stop(int sig) {
    if (stopping_) return;
    stopping_ = true;
    logger()->info("event=stopping signal={}", sig);
    systemd::notify("STOPPING=1");
    signals_.cancel();
    clock_watch_.stop();
    watchdog_timer_.cancel();
    ready_timer_.cancel();
    if (servers_) servers_->stop();
    for (auto& [name, health] : health_) health->stop();
    for (auto& [name, loop] : loops_) loop->stop();
    write_state_now();
    // Loops in the middle of a broker request finish or are abandoned after the grace period.
    auto grace = std::make_shared<asio::steady_timer>(io_, kStopGrace);
    grace->async_wait([this, grace](boost::system::error_code) {
      state_timer_.cancel();
      io_.stop();
    });
    asio::co_spawn(io_, wait_for_loops(grace), asio::detached);
  }

  asio::awaitable<void> wait_for_loops(std::shared_ptr<asio::steady_timer> grace) {
    asio::steady_timer poll(io_);
    while (true) {
      bool all = true;
      for (auto& [name, loop] : loops_) all = all && loop->stopped();
      if (all) break;
      poll.expires_after(20ms);
      co_await poll.async_wait(asio::as_tuple(asio::use_awaitable));
    }
    // A rotation that was committing when the stop came has announced its material since the
    // first write: state.json must say so (`certagent status` reads it while the daemon is down).
    write_state_now();
    grace->cancel();
  }

  // Every state change: the STATUS= line follows at once (it was only sent when a debounced
  // write was first scheduled, so later changes in that window left `systemctl status` stale),
  // state.json within kStateWriteDelay.
  void schedule_state_write() {
    update_systemd_status();
    if (state_write_pending_ || stopping_) return;
    state_write_pending_ = true;
    state_timer_.expires_after(kStateWriteDelay);
    state_timer_.async_wait([this](boost::system::error_code ec) {
      state_write_pending_ = false;
      if (!ec) write_state_now();
    });
  }

  void write_state_now() {
    if (auto r = write_state_file(config_.state_dir, store_, clock_.now()); !r)
      logger()->warn("event=state_write_failed error={}", log::quote(r.error().message));
  }

  void start_systemd_notifications() {
    if (!systemd::notify_socket_set()) return;
    if (auto interval = systemd::watchdog_interval()) {
      watchdog_period_ = std::chrono::duration_cast<std::chrono::milliseconds>(*interval / 2);
      ping_watchdog();
    }
    ready_timer_.expires_after(kStartupReadyTimeout);
    ready_timer_.async_wait([this](boost::system::error_code ec) {
      if (ec || ready_sent_) return;
      ready_sent_ = true;
      systemd::notify("READY=1");
      logger()->warn("event=ready_without_material timeout={}s", kStartupReadyTimeout.count());
    });
    ready_subscription_ = store_.subscribe("", [this](const CertEntry&, CertEvent) {
      update_systemd_status();  // commits and expiries, not only what schedules a state write
      if (!ready_sent_ && store_.ready(clock_.now())) {
        ready_sent_ = true;
        ready_timer_.cancel();
        systemd::notify("READY=1");
      }
    });
  }

  void ping_watchdog() {
    systemd::notify("WATCHDOG=1");
    watchdog_timer_.expires_after(watchdog_period_);
    watchdog_timer_.async_wait([this](boost::system::error_code ec) {
      if (!ec) ping_watchdog();
    });
  }

  void update_systemd_status() {
    if (!systemd::notify_socket_set()) return;
    std::size_t valid = 0, expired = 0, failing = 0;
    for (const auto& [name, e] : store_.entries()) {
      if (e.state == CertState::valid) ++valid;
      if (e.state == CertState::expired) ++expired;
      if (e.consecutive_failures > 0) ++failing;
    }
    std::string text = std::to_string(valid) + "/" + std::to_string(store_.entries().size()) +
                       " certificates valid, " + std::to_string(expired) + " expired, " +
                       std::to_string(failing) + " retrying";
    std::size_t down = 0, refusing = 0;
    for (const auto& [name, b] : store_.brokers()) {
      if (b.up == false) ++down;
      if (b.accepts == false) ++refusing;
    }
    if (down) text += ", " + std::to_string(down) + " broker(s) down";
    if (refusing) text += ", " + std::to_string(refusing) + " broker(s) refusing us";
    if (text == systemd_status_) return;
    systemd_status_ = text;
    systemd::notify_status(text);
  }

  std::filesystem::path config_path_;
  config::Config config_;
  asio::io_context io_;
  asio::thread_pool workers_;
  asio::signal_set signals_;
  asio::steady_timer state_timer_;
  asio::steady_timer watchdog_timer_;
  asio::steady_timer ready_timer_;
  std::chrono::milliseconds watchdog_period_{15000};
  SystemClock clock_;
  Metrics metrics_;
  CertificateStore store_;
  CertificateStore::Subscription ready_subscription_;
  std::unique_ptr<AuditLog> audit_;
  std::unique_ptr<tpm::Identity> identity_;
  std::map<std::string, std::shared_ptr<BrokerHandle>> brokers_;
  std::map<std::string, std::shared_ptr<BrokerHealth>> health_;
  // One parsed store per trust bundle file, shared by loops across configuration reloads.
  std::shared_ptr<TrustBundles> trust_bundles_{std::make_shared<TrustBundles>()};
  std::map<std::string, std::shared_ptr<CertificateLoop>> loops_;
  std::unique_ptr<ServerSet> servers_;
  ClockWatch clock_watch_;
  bool stopping_{false};
  bool first_apply_{true};
  bool state_write_pending_{false};
  bool ready_sent_{false};
  std::string systemd_status_;  // last STATUS= sent
};

}  // namespace

Result<> prepare_state_dir(const std::filesystem::path& dir) {
  struct stat st{};
  if (::stat(dir.c_str(), &st) != 0) {
    if (errno != ENOENT) return fs_util::errno_error("state_dir " + dir.string(), errno);
    if (auto r = fs_util::make_directories(dir, 0700); !r) return r;
    return {};
  }
  if (!S_ISDIR(st.st_mode)) return make_error("state_dir " + dir.string() + " is not a directory");
  if (st.st_mode & (S_IWGRP | S_IWOTH))
    return make_error("state_dir " + dir.string() +
                      " is writable by group or others; it holds the identity and the local CA: "
                      "chmod 0700 it");
  if (::access(dir.c_str(), W_OK | X_OK) != 0)
    return make_error("state_dir " + dir.string() + " is not writable by this user (uid " +
                      std::to_string(::getuid()) + "): fix its owner or run as its owner");
  return {};
}

int run_agent(const std::filesystem::path& config_path) {
  auto config = config::load_config(config_path, agent::builtin_catalog());
  if (!config) {
    std::cerr << config.error().message << "\n";
    return 2;
  }
  log::init({config->log.level, config->log.format});
  // Before the first key: the identity's, the local CA's and every issued one go there.
  std::map<std::string, crypto::InFlightKeys> in_flight;  // per broker
  for (const auto& c : config->certificates) {
    auto& keys = in_flight[c.broker];
    ++keys.count;
    if (crypto::secure_heap_bytes_per_key(c.key) > crypto::secure_heap_bytes_per_key(keys.largest))
      keys.largest = c.key;
  }
  std::vector<crypto::InFlightKeys> brokers;
  for (auto& [name, keys] : in_flight) {
    if (const auto* b = config->broker(name)) keys.count = std::min(keys.count, b->max_in_flight);
    brokers.push_back(keys);
  }
  const auto heap = crypto::init_secure_heap(crypto::secure_heap_size(brokers));
  logger()->info("event=secure_heap bytes={} locked={}", heap.bytes, heap.locked);
  for (const auto& [name, b] : config->brokers)
    if (b.type == "local")
      logger()->warn("event=development_ca broker={} effect=\"certificates from the embedded "
                     "development CA; never use it in production\"",
                     name);
  Daemon daemon(config_path);
  return daemon.run(std::move(*config));
}

}  // namespace certagent
