#include "agent/certificate_loop.h"

#include "agent/renewal_policy.h"
#include "renewers/identity_calls.h"
#include "core/crypto/csr.h"
#include "core/crypto/keys.h"
#include "core/crypto/validation.h"
#include "core/crypto/x509.h"
#include "core/logging.h"

#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/json/array.hpp>

#include <algorithm>

namespace certagent {

// boost::system::result calls this when value() is used on a failed stage.
[[noreturn]] void throw_exception_from_error(const RotationFailure& f, const boost::source_location& loc) {
  throw_exception_from_error(f.error, loc);
}

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

RotationFailure failure(FailureKind kind, Error error) { return RotationFailure{kind, std::move(error)}; }

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

// A freshly issued leaf's validity, when the chain parses. Only read when validation failed:
// a leaf that starts in our future, or has already ended, says the clocks disagree — said as
// such (fix time sync), not as a bad broker.
std::optional<std::pair<SystemTime, SystemTime>> leaf_validity(const std::string& chain_pem) {
  auto chain = crypto::parse_chain(chain_pem);
  if (!chain || chain->empty()) return std::nullopt;
  const auto info = crypto::describe(chain->front().get());
  return std::pair{info.not_before, info.not_after};
}

std::chrono::seconds whole_seconds_up(SystemTime::duration d) { return std::chrono::ceil<std::chrono::seconds>(d); }

asio::awaitable<void> delay(std::chrono::milliseconds d) {
  asio::steady_timer t(co_await asio::this_coro::executor, d);
  co_await t.async_wait(asio::as_tuple(use_awaitable));
}

}  // namespace

std::string_view to_string(FailureKind k) {
  switch (k) {
    case FailureKind::local: return "failure";
    case FailureKind::broker: return "failure";
    case FailureKind::rejected: return "rejected";
    case FailureKind::clock_skew: return "clock_skew";
    case FailureKind::superseded: return "superseded";
    case FailureKind::stopping: return "stopping";
  }
  return "failure";
}

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
      timer_(services_.timers ? services_.timers(services_.executor)
                              : system_loop_timers(*services_.clock)(services_.executor)),
      reload_serial_(services_.executor, 1),
      rng_(services_.seed ? *services_.seed : std::random_device{}()) {
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

void CertificateLoop::report_to_broker_health(const Error* error) {
  if (services_.broker_outcome) {
    services_.broker_outcome(broker_->config.name, error);
    return;
  }
  // No broker health in this process (unit tests): the issuance alone says whether it answers.
  services_.metrics->set(metric::kBrokerUp, {{"broker", broker_->config.name}}, error ? 0 : 1);
}

void CertificateLoop::request_renewal() {
  force_renewal_ = true;
  timer_->cancel();
}

void CertificateLoop::wake() {
  if (last_failure_ == FailureKind::clock_skew) retry_at_.reset();
  timer_->cancel();
}

void CertificateLoop::stop() {
  stopping_ = true;
  timer_->cancel();
}

void CertificateLoop::publish_schedule(std::optional<SystemTime> due) {
  auto& e = entry();
  e.next_renewal = due;
  if (due)
    services_.metrics->set(metric::kNextRenewal, labels(), to_unix_seconds(*due));
  services_.store->touch(config_.name);
  if (services_.state_changed) services_.state_changed();
}

void CertificateLoop::publish_clock_skew(std::optional<std::chrono::seconds> skew) {
  // Under a second is what a Date header's resolution and the request's latency make of agreeing clocks.
  if (skew && *skew > -std::chrono::seconds(2) && *skew < std::chrono::seconds(2)) skew.reset();
  if (CertEntry* e = own_entry()) e->clock_skew = skew;
  if (!broker_->retired)
    services_.metrics->set(metric::kClockSkew, {{"broker", broker_->config.name}},
                           skew ? static_cast<double>(skew->count()) : 0.0);
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
  services_.metrics->set(metric::kExpired, labels(), now >= material->not_after ? 1 : 0);
  services_.metrics->set(metric::kNotYetValid, labels(), now < material->not_before ? 1 : 0);
  std::string why = mismatch;
  if (why.empty()) {
    // formats changed since the generation was written (keystore.p12 added): write it now.
    const auto missing = sink_->missing_outputs();
    if (!missing.empty()) why = "the stored generation has no " + missing.front();
  }
  if (!why.empty()) {
    logger()->info("event=stored_certificate_outdated name={} serial={} reason={} action=renewing_now",
                   config_.name, material->serial_hex, log::quote(why));
    force_renewal_ = true;
  } else if (material->valid_at(now)) {
    schedule_from(*material, std::nullopt);
    logger()->info("event=stored_certificate_reused name={} serial={} not_after={}", config_.name,
                   material->serial_hex, format_rfc3339(material->not_after));
  } else {
    const bool early = now < material->not_before;
    logger()->info("event=stored_certificate_not_usable name={} serial={} state={} action=renewing_now",
                   config_.name, material->serial_hex, early ? "not_yet_valid" : "expired");
  }
}

void CertificateLoop::follow_clock(const MaterialPtr& material, SystemTime now) {
  if (!material) return;
  if (now >= material->not_after) {
    if (!expiry_handled_) on_expiry(material);
    return;
  }
  services_.store->refresh_state(config_.name, now);
  if (own_entry()) services_.metrics->set(metric::kNotYetValid, labels(), now < material->not_before ? 1 : 0);
}

CertificateLoop::Plan CertificateLoop::plan(const MaterialPtr& m, SystemTime now, SteadyTime steady) const {
  Plan p;
  const auto rotate_now = [&] {
    p.rotate_now = true;
    p.due = now;
    return p;
  };
  if (force_renewal_) return rotate_now();
  // The next moment the held material changes state: it becomes valid, or it expires (fail
  // closed on time while retries are spaced out).
  std::optional<SystemTime> boundary;
  if (m && now < m->not_after) boundary = now < m->not_before ? m->not_before : m->not_after;
  if (retry_at_) {
    if (*retry_at_ <= steady) return rotate_now();
    p.due = now + std::chrono::duration_cast<SystemTime::duration>(*retry_at_ - steady);
    p.wake_steady = retry_at_;
    p.wake_wall = boundary;
    return p;
  }
  if (!m || now >= m->not_after || !renew_at_) return rotate_now();
  // Not valid yet by more than validation tolerates on arrival: our clock stepped back since it
  // came. Ask the broker now: if its clock agrees with ours, the new leaf is valid at once; if
  // not, the rotation fails on clock skew and says so.
  if (m->not_before - now > kDefaultClockSkew) return rotate_now();
  if (*renew_at_ <= now) return rotate_now();
  p.due = renew_at_;
  p.wake_wall = boundary ? std::min(*renew_at_, *boundary) : *renew_at_;
  return p;
}

asio::awaitable<void> CertificateLoop::run() {
  auto self = shared_from_this();
  co_await load_initial();
  while (!stopping_) {
    const auto now = services_.clock->now();
    const auto steady = services_.clock->steady_now();
    const MaterialPtr material = entry().material;
    follow_clock(material, now);
    const Plan next = plan(material, now, steady);
    publish_schedule(next.due);
    if (!next.rotate_now) {
      co_await timer_->wait(next.wake_wall, next.wake_steady);
      continue;
    }
    force_renewal_ = false;
    auto& e = entry();
    e.renewing = true;
    e.last_attempt = now;
    services_.store->touch(config_.name);
    const bool rotated = co_await rotate();
    entry().renewing = false;
    if (stopping_) break;
    if (rotated) {
      retry_at_.reset();
      last_failure_.reset();
    }
  }
  finished_ = true;
}

asio::awaitable<bool> CertificateLoop::rotate() {
  const auto started = services_.clock->steady_now();
  Stage<Rotated> rotated = co_await attempt();
  if (!rotated) {
    fail(rotated.error());
    co_return false;
  }
  const double seconds = std::chrono::duration<double>(services_.clock->steady_now() - started).count();
  services_.metrics->observe(metric::kRenewalDuration, labels(), seconds);
  announce(rotated->material, rotated->hint);
  co_return true;
}

asio::awaitable<Stage<CertificateLoop::Rotated>> CertificateLoop::attempt() {
  Stage<Issued> issued = co_await issue();
  if (!issued) co_return issued.error();
  Stage<MaterialPtr> material = validate(*issued);
  if (!material) co_return material.error();
  Stage<> committed = co_await commit(*material);
  if (!committed) co_return committed.error();
  co_return Rotated{*material, issued->result.renew_hint};
}

asio::awaitable<Stage<CertificateLoop::Issued>> CertificateLoop::issue() {
  // The broker's slot is taken before the key is made: in a storm (1,000 certificates due at
  // once) only max_in_flight fresh keys and CSRs exist at a time, not one per waiting
  // certificate — less key material in memory, and no burst of allocations that fragments the
  // heap for good (measured: 3.4 MiB of RSS with 1,000 certificates).
  // Waiters go earliest deadline first: the held leaf's expiry (what lapses while it waits; in
  // the past once expired), else now + the lifetime (nothing lapses yet). The identity's TPM
  // queue orders by the same rule (renewers/identity_calls.h, tpm_deadline).
  const auto& held = entry().material;
  const SystemTime due = held ? held->not_after : services_.clock->now() + config_.lifetime;
  co_await broker_->in_flight.acquire(due);
  // Freed with the gauge updated when the stage ends; a frame destroyed at shutdown only frees
  // the slot: it must not touch the metrics.
  std::optional<SemaphoreSlot> slot;
  slot.emplace(broker_->in_flight);
  if (stopping_) co_return failure(FailureKind::stopping, make_error("stopping"));  // no key for nothing
  publish_in_flight();
  Stage<Issued> issued = co_await issue_in_slot();
  slot.reset();
  publish_in_flight();
  if (!issued && issued.error().kind == FailureKind::stopping) co_return issued;
  // Removed or changed by a configuration reload meanwhile: whatever the broker said is not
  // this loop's to report (nor its broker's circuit to count).
  if (!own_entry() || broker_->retired)
    co_return failure(FailureKind::superseded, make_error("superseded by a configuration reload"));
  if (!issued) co_return issued;
  // The broker answered: whatever validation finds, the broker is up.
  if (broker_->circuit_open()) logger()->info("event=broker_circuit_closed broker={}", broker_->config.name);
  broker_->consecutive_failures = 0;
  report_to_broker_health(nullptr);
  co_return issued;
}

asio::awaitable<Stage<CertificateLoop::Issued>> CertificateLoop::issue_in_slot() {
  // 1-3: fresh key and CSR. RSA generation takes long enough to keep it off the loop.
  // No co_await inside ?: — GCC 12 mishandles the temporaries of a conditional in a coroutine.
  Result<crypto::EvpPkeyPtr> key = make_error("not generated");
  if (is_rsa(config_.key))
    key = co_await run_on(services_.workers->get_executor(),
                          [k = config_.key] { return crypto::generate_key(k); });
  else
    key = crypto::generate_key(config_.key);
  if (!key) co_return failure(FailureKind::local, with_context("generating the key", key.error()));
  auto csr = crypto::build_csr(key->get(), requested_names(config_));
  if (!csr) co_return failure(FailureKind::local, with_context("building the CSR", csr.error()));

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
  std::optional<SemaphoreSlot> probe_slot;
  if (broker_->circuit_open()) {
    co_await broker_->probe.acquire();
    probe_slot.emplace(broker_->probe);
  }
  if (stopping_) co_return failure(FailureKind::stopping, make_error("stopping"));
  asio::steady_timer deadline(services_.executor, broker_->config.timeout * 4);
  auto outcome = co_await (broker_->renewer->issue(std::move(request)) || deadline.async_wait(use_awaitable));
  if (outcome.index() != 0)
    co_return failure(FailureKind::broker, make_error("the broker did not answer within " +
                                                      config::format_duration(broker_->config.timeout * 4)));
  auto& issued = std::get<0>(outcome);
  if (!issued) co_return failure(FailureKind::broker, issued.error());
  co_return Issued{std::move(*key), std::move(*issued)};
}

Stage<MaterialPtr> CertificateLoop::validate(Issued& issued) {
  // 5: validation, before anything is written.
  auto trust = trust_->current();
  if (!trust) return failure(FailureKind::local, trust.error());
  entry().trust_bundle_pem = trust_->pem();
  ValidationInput input;
  input.chain_pem = issued.result.chain_pem;
  input.key = issued.key.get();
  input.requested = requested_names(config_);
  input.trust = *trust;
  input.max_lifetime = config_.max_lifetime;
  input.now = services_.clock->now();
  input.broker = broker_->config.name;
  const SystemTime now = input.now;
  // The broker's clock minus ours, from its Date header (to the second) when the renewer saw one.
  std::optional<std::chrono::seconds> skew;
  if (issued.result.broker_time) skew = std::chrono::round<std::chrono::seconds>(*issued.result.broker_time - now);
  const auto skew_text = [&](std::chrono::seconds d) {
    return config::format_duration(d < std::chrono::seconds(0) ? -d : d);
  };
  auto validated = validate_issued(input);
  if (!validated) {
    const auto validity = leaf_validity(issued.result.chain_pem);
    if (validity && validity->first > now + input.clock_skew) {
      // The leaf starts in our future: the broker's clock is at least that far ahead.
      const auto behind = std::max(skew.value_or(std::chrono::seconds(0)), whole_seconds_up(validity->first - now));
      publish_clock_skew(behind);
      return failure(FailureKind::clock_skew,
                     make_error("this host's clock is " + skew_text(behind) + " behind the broker '" +
                                broker_->config.name + "' (its certificate is valid from " +
                                format_rfc3339(validity->first) + ", this host's clock says " + format_rfc3339(now) +
                                ") — fix time sync (timedatectl, chronyc tracking); nothing is handed out "
                                "until the clocks agree"));
    }
    if (validity && validity->second <= now &&
        (!skew || *skew <= -std::chrono::duration_cast<std::chrono::seconds>(input.clock_skew))) {
      // A fresh leaf that has already ended: our clock is ahead of the broker's (its Date agrees,
      // or there was none to ask).
      const auto ahead = skew ? -*skew : whole_seconds_up(now - validity->second);
      publish_clock_skew(-ahead);
      return failure(FailureKind::clock_skew,
                     make_error("this host's clock is " + std::string(skew ? "" : "at least ") + skew_text(ahead) +
                                " ahead of the broker '" + broker_->config.name + "' (its certificate ended " +
                                format_rfc3339(validity->second) + ", this host's clock says " + format_rfc3339(now) +
                                ") — fix time sync (timedatectl, chronyc tracking)"));
    }
    publish_clock_skew(skew);
    return failure(FailureKind::rejected, with_context("rejected the broker's certificate", validated.error()));
  }
  // Accepted. A leaf that starts a little ahead (within the tolerance) still shows the skew.
  if (!skew && validated->not_before > now) skew = whole_seconds_up(validated->not_before - now);
  publish_clock_skew(skew);
  auto key_pem = crypto::private_key_pem(issued.key.get());
  if (!key_pem) return failure(FailureKind::local, key_pem.error());
  validated->key_pem = std::move(*key_pem);
  validated->broker_state = std::move(issued.result.state);
  return MaterialPtr(std::make_shared<Material>(std::move(*validated)));
}

asio::awaitable<Stage<>> CertificateLoop::commit(const MaterialPtr& material) {
  // 6: commit. Files first (fsyncs on the pool), then the in-memory bundle and watchers.
  if (sink_) {
    // A sealed keystore password is unsealed for this write only and wiped after it.
    std::optional<Secret> password;
    const auto& files = *config_.files;
    if (files.pkcs12 && files.pkcs12->sealed) {
      if (!services_.identity)
        co_return failure(FailureKind::local, config_error(Cause::local_config, "pkcs12_password",
                                                           "files.pkcs12.sealed needs the host identity"));
      auto unsealed = co_await renewers::identity_unseal(*services_.identity, services_.executor,
                                                         config::pkcs12_password_secret(config_.name),
                                                         material->not_after);
      if (!unsealed) {
        Error e = with_context("unsealing " + config::pkcs12_password_secret(config_.name) +
                                   " (files.pkcs12.sealed: run `certagent enroll` with the password file in place)",
                               unsealed.error());
        e.cause = Cause::local_config;
        e.reason = "pkcs12_password";
        co_return failure(FailureKind::local, std::move(e));
      }
      password = std::move(*unsealed);
    }
    const std::string trust_pem = files.pkcs12 ? trust_->pem() : std::string();
    const Pkcs12Inputs inputs{config_.name, trust_pem, password ? &*password : nullptr};
    // Only trivially destructible captures in a lambda passed within a co_await expression:
    // GCC 12 destroys such temporaries twice (a shared_ptr capture freed the material early).
    const Material* to_write = material.get();
    const Pkcs12Inputs* extra = &inputs;
    auto committed = co_await run_on(services_.workers->get_executor(),
                                     [this, to_write, extra] { return sink_->commit(*to_write, *extra); });
    if (!committed)
      co_return failure(FailureKind::local, with_context("writing " + sink_->config().dir.string(), committed.error()));
  }
  services_.store->commit(config_.name, material, services_.clock->now());
  co_return Stage<>();
}

void CertificateLoop::announce(const MaterialPtr& m, std::optional<SystemTime> hint) {
  auto& e = entry();
  const bool was_expired = expiry_handled_;
  const auto now = services_.clock->now();
  e.consecutive_failures = 0;
  e.last_error.clear();
  e.last_success = now;
  expiry_handled_ = false;
  schedule_from(*m, hint, e.last_success);
  services_.metrics->add(metric::kRenewals, {{"name", config_.name}, {"result", "success"}});
  services_.metrics->set(metric::kConsecutiveFailures, labels(), 0);
  services_.metrics->set(metric::kNotAfter, labels(), to_unix_seconds(m->not_after));
  services_.metrics->set(metric::kExpired, labels(), 0);
  services_.metrics->set(metric::kNotYetValid, labels(), now < m->not_before ? 1 : 0);
  logger()->info("event=certificate_issued name={} broker={} serial={} not_before={} not_after={} renew_at={}{}{}",
                 config_.name, broker_->config.name, m->serial_hex, format_rfc3339(m->not_before),
                 format_rfc3339(m->not_after), format_rfc3339(*renew_at_),
                 now < m->not_before ? " state=not_yet_valid" : "",
                 was_expired ? " recovered_from=expired" : "");
  boost::json::object audit{{"name", config_.name},
                            {"broker", broker_->config.name},
                            {"serial", m->serial_hex},
                            {"state", to_string(state_at(m, now))},
                            {"not_before", format_rfc3339(m->not_before)},
                            {"not_after", format_rfc3339(m->not_after)},
                            {"sha256", m->sha256_hex}};
  if (sink_) audit["dir"] = sink_->config().dir.string();
  services_.audit->record("issued", std::move(audit));

  // 7: reloaders, in order, without holding up the loop.
  if (!reloaders_.empty())
    asio::co_spawn(services_.executor, run_reloaders(m, false), asio::detached);
}

// The one failure path. Classification happens in the stages (FailureKind); this decides what
// each kind means for the broker's circuit, the certificate's backoff, metrics and logs.
void CertificateLoop::fail(const RotationFailure& f) {
  if (f.kind == FailureKind::stopping) return;
  if (f.kind == FailureKind::superseded) {
    // Removed or changed by a configuration reload meanwhile: its replacement loop issues
    // under the new configuration; nothing of this attempt is written or reported.
    logger()->info("event=renewal_superseded name={} reason=configuration_reload", config_.name);
    return;
  }
  if (f.kind == FailureKind::broker && !broker_->retired) {
    if (++broker_->consecutive_failures == BrokerHandle::kOpenAfter)
      logger()->warn("event=broker_circuit_open broker={} effect=\"one request at a time until it answers\"",
                     broker_->config.name);
    report_to_broker_health(&f.error);
  }
  if (!own_entry()) return;  // superseded by a configuration reload: its metrics are not ours
  const Error& error = f.error;
  auto& e = entry();
  const auto now = services_.clock->now();
  last_failure_ = f.kind;
  e.consecutive_failures += 1;
  e.last_error = error.message;
  std::optional<SystemTime> not_after;
  if (e.material) not_after = e.material->not_after;
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::optional<policy::Duration> retry_after;
  if (error.retry_after) retry_after = std::chrono::duration_cast<policy::Duration>(*error.retry_after);
  const auto wait = policy::retry_delay(e.consecutive_failures, now, not_after, retry_after,
                                        error.configuration, unit(rng_));
  retry_at_ = services_.clock->steady_now() + wait;
  const auto result = std::string(to_string(f.kind));
  services_.metrics->add(metric::kRenewals, {{"name", config_.name}, {"result", result}});
  services_.metrics->set(metric::kConsecutiveFailures, labels(), e.consecutive_failures);
  const bool holding_valid = e.material && e.material->valid_at(now);
  auto level = holding_valid ? spdlog::level::warn : spdlog::level::err;
  std::string hint;
  if (f.kind == FailureKind::clock_skew) {
    hint = " hint=\"fix this host's time sync; the broker is not at fault\"";
  } else if (error.configuration && error.cause != Cause::unspecified) {
    // The message says what to change (core/result.h Cause); the cause says whose side it is.
    hint = " cause=" + std::string(to_string(error.cause));
    if (!error.reason.empty()) hint += " reason=" + error.reason;
  } else if (error.configuration) {
    hint = " hint=\"check the broker configuration and credentials\"";
  }
  logger()->log(level,
                "event=renewal_failed name={} broker={} result={} attempt={} retry_in={} "
                "holding_valid={} error={}{}",
                config_.name, broker_->config.name, result, e.consecutive_failures,
                config::format_duration(wait), holding_valid, log::quote(error.message), hint);
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
