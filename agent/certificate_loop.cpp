#include "agent/certificate_loop.h"

#include "core/crypto/csr.h"
#include "core/crypto/keys.h"
#include "core/crypto/x509.h"
#include "core/logging.h"
#include "agent/renewal_policy.h"
#include "core/crypto/validation.h"

#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/json/array.hpp>

#include <sys/stat.h>

#include <algorithm>

namespace certagent {
namespace {

using namespace std::chrono_literals;
using boost::asio::use_awaitable;
using boost::asio::experimental::awaitable_operators::operator||;

std::shared_ptr<spdlog::logger> logger() { return log::get("agent"); }

crypto::SubjectNames requested_names(const config::CertificateConfig& c) {
  return crypto::SubjectNames{c.common_name, c.dns_names, c.ip_addresses, c.uris};
}

bool is_rsa(crypto::KeyType k) {
  return k == crypto::KeyType::rsa_2048 || k == crypto::KeyType::rsa_3072 ||
         k == crypto::KeyType::rsa_4096;
}

// Whether a certificate loaded at start still fits the configuration it now runs under.
std::string reuse_mismatch(const Material& m, const config::CertificateConfig& c) {
  if (m.broker != c.broker) return "issued by broker '" + m.broker + "', configured '" + c.broker + "'";
  auto chain = crypto::parse_chain(m.cert_pem);
  if (!chain || chain->empty()) return "the stored leaf does not parse";
  auto info = crypto::describe(chain->front().get());
  crypto::SubjectNames actual{info.subject_cn, info.dns_names, info.ip_addresses, info.uris};
  auto diffs = crypto::name_differences(requested_names(c), actual);
  if (!diffs.empty()) return "names changed: " + diffs.front();
  return {};
}

asio::awaitable<void> delay(std::chrono::milliseconds d) {
  asio::steady_timer t(co_await asio::this_coro::executor, d);
  co_await t.async_wait(asio::as_tuple(use_awaitable));
}

}  // namespace

// ---- TrustBundle ---------------------------------------------------------------------------

Result<X509_STORE*> TrustBundle::current() {
  struct stat st{};
  if (::stat(path_.c_str(), &st) != 0) {
    if (store_) {
      // Keep the last good anchors: a bundle being replaced non-atomically must not fail a
      // rotation, and an operator removing it by mistake must not stop renewals.
      logger()->warn("event=trust_bundle_unreadable path={} action=keeping_previous",
                     log::quote(path_.string()));
      return store_.get();
    }
    return make_error("trust bundle " + path_.string() + " cannot be read: " + std::strerror(errno));
  }
  const std::int64_t mtime = static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
  if (store_ && mtime == mtime_ns_ && static_cast<std::uintmax_t>(st.st_size) == size_ &&
      st.st_ino == inode_)
    return store_.get();
  auto pem = crypto::read_small_file(path_, 4 * 1024 * 1024);
  if (!pem) return with_context("trust bundle", pem.error());
  auto store = crypto::trust_store_from_pem(*pem);
  if (!store) {
    if (store_) {
      logger()->warn("event=trust_bundle_invalid path={} error={} action=keeping_previous",
                     log::quote(path_.string()), log::quote(store.error().message));
      return store_.get();
    }
    return with_context("trust bundle " + path_.string(), store.error());
  }
  if (store_) logger()->info("event=trust_bundle_reloaded path={}", log::quote(path_.string()));
  store_ = std::move(*store);
  pem_ = std::move(*pem);
  mtime_ns_ = mtime;
  size_ = static_cast<std::uintmax_t>(st.st_size);
  inode_ = st.st_ino;
  return store_.get();
}

std::shared_ptr<TrustBundle> TrustBundles::get(const std::filesystem::path& path) {
  std::erase_if(bundles_, [](const auto& entry) { return entry.second.expired(); });  // files no longer used
  auto& slot = bundles_[path];
  if (auto shared = slot.lock()) return shared;
  auto fresh = std::make_shared<TrustBundle>(path);
  slot = fresh;
  return fresh;
}

// ---- CertificateLoop -----------------------------------------------------------------------

CertificateLoop::CertificateLoop(LoopServices services, config::CertificateConfig config,
                                 std::shared_ptr<BrokerHandle> broker,
                                 std::vector<std::shared_ptr<reloaders::Reloader>> reloaders,
                                 std::vector<std::shared_ptr<reloaders::Reloader>> expiry_hooks)
    : services_(std::move(services)),
      config_(std::move(config)),
      broker_(std::move(broker)),
      reloaders_(std::move(reloaders)),
      expiry_hooks_(std::move(expiry_hooks)),
      trust_(services_.trust_bundles->get(config_.trust_bundle.empty() ? broker_->default_trust_bundle
                                                                        : config_.trust_bundle)),
      timer_(services_.executor),
      reload_serial_(services_.executor, 1),
      rng_(std::random_device{}()) {
  if (config_.files) sink_.emplace(*config_.files);
}

CertEntry* CertificateLoop::own_entry() {
  CertEntry* e = services_.store->find(config_.name);
  return e && e->config == config_ ? e : nullptr;
}

CertEntry& CertificateLoop::entry() {
  if (CertEntry* e = own_entry()) return *e;
  // A configuration reload removed or changed this certificate while the loop was suspended
  // (it has been told to stop): its remaining bookkeeping goes to a private entry.
  if (orphan_.config.name.empty()) orphan_.config = config_;
  return orphan_;
}

Metrics::Labels CertificateLoop::labels() const { return {{"name", config_.name}}; }

void CertificateLoop::publish_in_flight() {
  if (broker_->retired) return;
  const Metrics::Labels broker{{"broker", broker_->config.name}};
  services_.metrics->set(metric::kBrokerInFlight, broker, static_cast<double>(broker_->in_flight.in_use()));
  services_.metrics->set(metric::kBrokerInFlightMax, broker,
                         static_cast<double>(broker_->in_flight.high_water()));
}

void CertificateLoop::request_renewal() {
  force_renewal_ = true;
  timer_.cancel();
}

void CertificateLoop::wake() { timer_.cancel(); }

void CertificateLoop::stop() {
  stopping_ = true;
  timer_.cancel();
}

asio::awaitable<void> CertificateLoop::sleep_until(SystemTime t) {
  timer_.expires_at(t);
  co_await timer_.async_wait(asio::as_tuple(use_awaitable));
}

void CertificateLoop::publish_schedule(std::optional<SystemTime> due) {
  auto& e = entry();
  e.next_renewal = due;
  if (due)
    services_.metrics->set(metric::kNextRenewal, labels(), to_unix_seconds(*due));
  services_.store->touch(config_.name);
  if (services_.state_changed) services_.state_changed();
}

void CertificateLoop::schedule_from(const Material& m, std::optional<SystemTime> hint,
                                    std::optional<SystemTime> arrived) {
  std::uniform_real_distribution<double> u(-config_.jitter, config_.jitter);
  const double jitter_u = u(rng_);
  const auto own = arrived ? policy::renew_point_on_arrival(*arrived, m.not_before, m.not_after, config_.renew_at,
                                                            jitter_u)
                           : policy::renew_point(m.not_before, m.not_after, config_.renew_at, jitter_u);
  renew_at_ = policy::apply_hint(own, hint);
}

asio::awaitable<void> CertificateLoop::load_initial() {
  auto& e = entry();
  if (auto pem = trust_->current(); pem) e.trust_bundle_pem = trust_->pem();
  if (e.material) {  // kept across a configuration reload; arrived at its last success
    schedule_from(*e.material, std::nullopt, e.last_success);
    co_return;
  }
  if (!sink_) co_return;
  auto loaded = co_await run_on(services_.workers->get_executor(), [this] { return sink_->load_current(); });
  if (!loaded) {
    logger()->error("event=stored_certificate_unusable name={} dir={} error={} action=issuing_new",
                    config_.name, log::quote(sink_->config().dir.string()),
                    log::quote(loaded.error().message));
    co_return;
  }
  if (!*loaded) co_return;
  auto material = std::make_shared<Material>(std::move(**loaded));
  const auto now = services_.clock->now();
  const std::string mismatch = reuse_mismatch(*material, config_);
  services_.store->commit(config_.name, material, now);
  services_.metrics->set(metric::kNotAfter, labels(), to_unix_seconds(material->not_after));
  services_.metrics->set(metric::kExpired, labels(), material->valid_at(now) ? 0 : 1);
  if (!mismatch.empty()) {
    logger()->info("event=stored_certificate_outdated name={} serial={} reason={} action=renewing_now",
                   config_.name, material->serial_hex, log::quote(mismatch));
    force_renewal_ = true;
  } else if (material->valid_at(now)) {
    schedule_from(*material, std::nullopt);
    logger()->info("event=stored_certificate_reused name={} serial={} not_after={}", config_.name,
                   material->serial_hex, format_rfc3339(material->not_after));
  }
}

asio::awaitable<void> CertificateLoop::run() {
  auto self = shared_from_this();
  co_await load_initial();
  while (!stopping_) {
    const auto now = services_.clock->now();
    auto& e = entry();
    const MaterialPtr material = e.material;

    if (material && now >= material->not_after && !expiry_handled_) on_expiry(material);

    std::optional<SystemTime> due;
    if (force_renewal_) {
      due = now;
    } else if (retry_at_) {
      due = retry_at_;
    } else if (!material || !material->valid_at(now) || !renew_at_) {
      due = now;
    } else {
      due = renew_at_;
    }
    publish_schedule(due);

    if (*due > now) {
      SystemTime wake_at = *due;
      // Wake at expiry too, to fail closed on time while retries are spaced out.
      if (material && now < material->not_after) wake_at = std::min(wake_at, material->not_after);
      co_await sleep_until(wake_at);
      continue;
    }

    force_renewal_ = false;
    e.renewing = true;
    e.last_attempt = now;
    services_.store->touch(config_.name);
    auto rotated = co_await rotate();
    entry().renewing = false;
    if (stopping_) break;
    if (rotated) retry_at_.reset();
  }
  finished_ = true;
}

asio::awaitable<Result<MaterialPtr>> CertificateLoop::rotate() {
  auto log = logger();
  // The broker's slot is taken before the key is made: in a storm (1,000 certificates due at
  // once) only max_in_flight fresh keys and CSRs exist at a time, not one per waiting
  // certificate — less key material in memory, and no burst of allocations that fragments the
  // heap for good (measured: 3.4 MiB of RSS with 1,000 certificates).
  co_await broker_->in_flight.acquire();
  // release() frees the slot and updates the gauge on every path that goes on running; the
  // destructor only frees it: a frame destroyed at shutdown must not touch the metrics.
  struct InFlightSlot {
    CertificateLoop& loop;
    std::optional<SemaphoreSlot> slot;
    void release() {
      if (!slot) return;
      slot.reset();
      loop.publish_in_flight();
    }
  } slot{*this, std::nullopt};
  slot.slot.emplace(broker_->in_flight);
  if (stopping_) co_return make_error("stopping");  // stopped while queued: no key for nothing
  publish_in_flight();
  const auto started = std::chrono::steady_clock::now();

  // 1-3: fresh key and CSR. RSA generation takes long enough to keep it off the loop.
  // No co_await inside ?: — GCC 12 mishandles the temporaries of a conditional in a coroutine.
  Result<crypto::EvpPkeyPtr> key = make_error("not generated");
  if (is_rsa(config_.key))
    key = co_await run_on(services_.workers->get_executor(),
                          [k = config_.key] { return crypto::generate_key(k); });
  else
    key = crypto::generate_key(config_.key);
  if (!key) {
    slot.release();
    on_failure(with_context("generating the key", key.error()), false);
    co_return key.error();
  }
  auto csr = crypto::build_csr(key->get(), requested_names(config_));
  if (!csr) {
    slot.release();
    on_failure(with_context("building the CSR", csr.error()), false);
    co_return csr.error();
  }

  // 4: the broker, within its concurrency bound and an overall deadline.
  renewers::IssueRequest request;
  request.cert_name = config_.name;
  request.csr_pem = std::move(*csr);
  request.common_name = config_.common_name;
  request.dns_names = config_.dns_names;
  request.ip_addresses = config_.ip_addresses;
  request.uris = config_.uris;
  request.lifetime = config_.lifetime;
  if (const auto& current = entry().material) {
    request.previous_state = current->broker_state;
    request.previous_cert_pem = current->cert_pem;
  }
  Result<renewers::IssueResult> issued = make_error("not attempted");
  {
    std::optional<SemaphoreSlot> probe_slot;
    if (broker_->circuit_open()) {
      co_await broker_->probe.acquire();
      probe_slot.emplace(broker_->probe);
    }
    if (stopping_) {
      slot.release();
      co_return make_error("stopping");
    }
    asio::steady_timer deadline(services_.executor, broker_->config.timeout * 4);
    auto outcome = co_await (broker_->renewer->issue(std::move(request)) ||
                             deadline.async_wait(use_awaitable));
    if (outcome.index() == 0)
      issued = std::move(std::get<0>(outcome));
    else
      issued = make_error("the broker did not answer within " +
                          config::format_duration(broker_->config.timeout * 4));
  }
  slot.release();
  if (!own_entry() || broker_->retired) {
    // Removed or changed by a configuration reload meanwhile: its replacement loop issues
    // under the new configuration; nothing of this attempt is written or reported.
    logger()->info("event=renewal_superseded name={} reason=configuration_reload", config_.name);
    co_return make_error("superseded by a configuration reload");
  }
  if (!issued) {
    if (++broker_->consecutive_failures == BrokerHandle::kOpenAfter)
      logger()->warn("event=broker_circuit_open broker={} effect=\"one request at a time until it answers\"",
                     broker_->config.name);
    const Error failure = issued.error();
    if (services_.broker_outcome) services_.broker_outcome(broker_->config.name, &failure);
    on_failure(issued.error(), false);
    co_return issued.error();
  }
  if (broker_->circuit_open())
    logger()->info("event=broker_circuit_closed broker={}", broker_->config.name);
  broker_->consecutive_failures = 0;
  if (services_.broker_outcome) services_.broker_outcome(broker_->config.name, nullptr);

  // 5: validation, before anything is written.
  auto trust = trust_->current();
  if (!trust) {
    on_failure(trust.error(), true);
    co_return trust.error();
  }
  entry().trust_bundle_pem = trust_->pem();
  ValidationInput input;
  input.chain_pem = issued->chain_pem;
  input.key = key->get();
  input.requested = requested_names(config_);
  input.trust = *trust;
  input.max_lifetime = config_.max_lifetime;
  input.now = services_.clock->now();
  input.broker = broker_->config.name;
  auto validated = validate_issued(input);
  if (!validated) {
    on_failure(with_context("rejected the broker's certificate", validated.error()), true);
    co_return validated.error();
  }
  auto key_pem = crypto::private_key_pem(key->get());
  if (!key_pem) {
    on_failure(key_pem.error(), false);
    co_return key_pem.error();
  }
  validated->key_pem = std::move(*key_pem);
  validated->broker_state = std::move(issued->state);
  MaterialPtr material = std::make_shared<Material>(std::move(*validated));

  // 6: commit. Files first (fsyncs on the pool), then the in-memory bundle and watchers.
  if (sink_) {
    // Only trivially destructible captures in a lambda passed within a co_await expression:
    // GCC 12 destroys such temporaries twice (a shared_ptr capture freed the material early).
    const Material* to_write = material.get();
    auto committed = co_await run_on(services_.workers->get_executor(),
                                     [this, to_write] { return sink_->commit(*to_write); });
    if (!committed) {
      on_failure(with_context("writing " + sink_->config().dir.string(), committed.error()), false);
      co_return committed.error();
    }
  }
  services_.store->commit(config_.name, material, services_.clock->now());
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  services_.metrics->observe(metric::kRenewalDuration, labels(), seconds);
  on_success(material, issued->renew_hint);

  // 7: reloaders, in order, without holding up the loop.
  if (!reloaders_.empty())
    asio::co_spawn(services_.executor, run_reloaders(material, false), asio::detached);
  co_return material;
}

void CertificateLoop::on_success(const MaterialPtr& m, std::optional<SystemTime> hint) {
  auto& e = entry();
  const bool was_expired = expiry_handled_;
  e.consecutive_failures = 0;
  e.last_error.clear();
  e.last_success = services_.clock->now();
  expiry_handled_ = false;
  schedule_from(*m, hint, e.last_success);
  services_.metrics->add(metric::kRenewals, {{"name", config_.name}, {"result", "success"}});
  services_.metrics->set(metric::kConsecutiveFailures, labels(), 0);
  services_.metrics->set(metric::kNotAfter, labels(), to_unix_seconds(m->not_after));
  services_.metrics->set(metric::kExpired, labels(), 0);
  logger()->info("event=certificate_issued name={} broker={} serial={} not_after={} renew_at={}{}",
                 config_.name, broker_->config.name, m->serial_hex, format_rfc3339(m->not_after),
                 format_rfc3339(*renew_at_), was_expired ? " recovered_from=expired" : "");
  boost::json::object audit{{"name", config_.name},
                            {"broker", broker_->config.name},
                            {"serial", m->serial_hex},
                            {"not_before", format_rfc3339(m->not_before)},
                            {"not_after", format_rfc3339(m->not_after)},
                            {"sha256", m->sha256_hex}};
  if (sink_) audit["dir"] = sink_->config().dir.string();
  services_.audit->record("issued", std::move(audit));
}

void CertificateLoop::on_failure(const Error& error, bool rejected) {
  if (!own_entry()) return;  // superseded by a configuration reload: its metrics are not ours
  auto& e = entry();
  const auto now = services_.clock->now();
  e.consecutive_failures += 1;
  e.last_error = error.message;
  std::optional<SystemTime> not_after;
  if (e.material) not_after = e.material->not_after;
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::optional<policy::Duration> retry_after;
  if (error.retry_after) retry_after = std::chrono::duration_cast<policy::Duration>(*error.retry_after);
  const auto wait = policy::retry_delay(e.consecutive_failures, now, not_after, retry_after,
                                        error.configuration, unit(rng_));
  retry_at_ = now + wait;
  const char* result = rejected ? "rejected" : "failure";
  services_.metrics->add(metric::kRenewals, {{"name", config_.name}, {"result", result}});
  services_.metrics->set(metric::kConsecutiveFailures, labels(), e.consecutive_failures);
  const bool holding_valid = e.material && e.material->valid_at(now);
  auto level = holding_valid ? spdlog::level::warn : spdlog::level::err;
  logger()->log(level,
                "event=renewal_failed name={} broker={} result={} attempt={} retry_in={} "
                "holding_valid={} error={}{}",
                config_.name, broker_->config.name, result, e.consecutive_failures,
                config::format_duration(wait), holding_valid, log::quote(error.message),
                error.configuration ? " cause=" + std::string(to_string(error.cause)) : std::string());
  services_.audit->record("renewal_failed", {{"name", config_.name},
                                             {"broker", broker_->config.name},
                                             {"result", result},
                                             {"attempt", e.consecutive_failures},
                                             {"retry_in_ms", wait.count()},
                                             {"error", error.message}});
  services_.store->touch(config_.name);
}

void CertificateLoop::on_expiry(const MaterialPtr& material) {
  expiry_handled_ = true;
  services_.store->mark_expired(config_.name);
  services_.metrics->set(metric::kExpired, labels(), 1);
  logger()->error("event=certificate_expired name={} serial={} not_after={} action=serving_nothing "
                  "hint=\"the broker has not renewed it; check certagent_renewals_total and the "
                  "broker\"",
                  config_.name, material->serial_hex, format_rfc3339(material->not_after));
  services_.audit->record("expired", {{"name", config_.name},
                                      {"serial", material->serial_hex},
                                      {"not_after", format_rfc3339(material->not_after)}});
  if (sink_ && sink_->config().remove_on_expiry) {
    auto removed = sink_->remove_all_generations();
    if (!removed)
      logger()->error("event=expired_files_not_removed name={} error={}", config_.name,
                      log::quote(removed.error().message));
  }
  if (!expiry_hooks_.empty())
    asio::co_spawn(services_.executor, run_reloaders(material, true), asio::detached);
}

asio::awaitable<void> CertificateLoop::run_reloaders(MaterialPtr material, bool expiry) {
  auto self = shared_from_this();
  co_await reload_serial_.acquire();
  SemaphoreSlot slot(reload_serial_);
  reloaders::ReloadEvent event;
  event.cert_name = config_.name;
  event.material = material;
  if (sink_) event.files_dir = sink_->config().dir;
  event.expired = expiry;
  bool all_verified = true;
  const auto& list = expiry ? expiry_hooks_ : reloaders_;
  for (std::size_t i = 0; i < list.size(); ++i) {
    const auto& reloader = list[i];
    const auto& cfg = expiry ? config_.on_expiry[i] : config_.reload[i];
    reloaders::ReloadOutcome outcome;
    // A failed reload is retried while this material is still the current one: an old
    // certificate left in service becomes an outage at its expiry.
    for (int attempt = 1; attempt <= 4 && !stopping_; ++attempt) {
      asio::steady_timer guard(services_.executor, cfg.timeout + 5s);
      auto r = co_await (reloader->reload(event) || guard.async_wait(use_awaitable));
      outcome = r.index() == 0 ? std::get<0>(r)
                               : reloaders::ReloadOutcome{reloaders::ReloadResult::timeout,
                                                          "no answer within the timeout"};
      const auto result = reloaders::to_string(outcome.result);
      services_.metrics->add(metric::kReloads, {{"name", config_.name},
                                                {"reloader", std::string(reloader->type())},
                                                {"result", std::string(result)}});
      services_.audit->record(expiry ? "expiry_hook" : "reload",
                              {{"name", config_.name},
                               {"reloader", std::string(reloader->type())},
                               {"serial", material->serial_hex},
                               {"result", result},
                               {"attempt", attempt},
                               {"detail", outcome.detail}});
      // Each reloader logs its own outcome (reloader.<type>); the loop only decides on retries.
      if (outcome.result == reloaders::ReloadResult::success) break;
      const CertEntry* current = services_.store->find(config_.name);
      if (expiry || !current || current->material != material) break;  // superseded
      co_await delay(std::chrono::seconds(1 << (attempt - 1)));
    }
    if (outcome.result != reloaders::ReloadResult::success) all_verified = false;
  }
  CertEntry* current = services_.store->find(config_.name);
  if (!expiry && current && current->material == material) {
    current->reload_unverified = !all_verified;
    services_.store->touch(config_.name);
  }
}

}  // namespace certagent
