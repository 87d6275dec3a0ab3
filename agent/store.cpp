#include "agent/store.h"

#include <algorithm>

namespace certagent {

std::string_view to_string(CertState s) {
  switch (s) {
    case CertState::not_issued: return "not_issued";
    case CertState::not_yet_valid: return "not_yet_valid";
    case CertState::valid: return "valid";
    case CertState::expired: return "expired";
  }
  return "unknown";
}

CertState state_at(const MaterialPtr& material, SystemTime now) {
  if (!material) return CertState::not_issued;
  if (now < material->not_before) return CertState::not_yet_valid;
  return now < material->not_after ? CertState::valid : CertState::expired;
}

CertState effective_state(const CertEntry& e, SystemTime now) {
  if (!e.material) return e.state;  // not_issued, or expired after a failure streak
  return state_at(e.material, now);
}

void CertificateStore::Subscription::reset() {
  if (store_) store_->listeners_.erase(it_);
  store_ = nullptr;
}

void CertificateStore::configure(const std::vector<config::CertificateConfig>& certs) {
  // Tell listeners (socket watchers) before the entry goes, so they can end their streams.
  for (const auto& [name, entry] : entries_) {
    const bool kept = std::any_of(certs.begin(), certs.end(),
                                  [&name = name](const config::CertificateConfig& c) { return c.name == name; });
    if (!kept) notify(entry, CertEvent::removed);
  }
  std::map<std::string, CertEntry> next;
  for (const auto& c : certs) {
    CertEntry entry;
    if (auto it = entries_.find(c.name); it != entries_.end()) entry = std::move(it->second);
    entry.config = c;
    next.emplace(c.name, std::move(entry));
  }
  entries_ = std::move(next);
}

CertEntry* CertificateStore::find(const std::string& name) {
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : &it->second;
}

const CertEntry* CertificateStore::find(const std::string& name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : &it->second;
}

void CertificateStore::commit(const std::string& name, MaterialPtr material, SystemTime now) {
  CertEntry* e = find(name);
  if (!e) return;
  e->material = std::move(material);
  e->state = state_at(e->material, now);
  notify(*e, CertEvent::committed);
}

void CertificateStore::refresh_state(const std::string& name, SystemTime now) {
  CertEntry* e = find(name);
  if (!e || !e->material) return;
  const CertState next = state_at(e->material, now);
  if (next == e->state || next == CertState::expired) return;
  e->state = next;
  notify(*e, CertEvent::state_changed);
}

void CertificateStore::mark_expired(const std::string& name) {
  CertEntry* e = find(name);
  if (!e || e->state == CertState::expired) return;
  e->state = CertState::expired;
  notify(*e, CertEvent::expired);
}

void CertificateStore::touch(const std::string& name) {
  if (const CertEntry* e = find(name)) notify(*e, CertEvent::state_changed);
}

void CertificateStore::set_broker(BrokerStatus status) {
  const std::string name = status.name;
  brokers_[name] = std::move(status);
}

void CertificateStore::remove_broker(const std::string& name) { brokers_.erase(name); }

const BrokerStatus* CertificateStore::broker(const std::string& name) const {
  auto it = brokers_.find(name);
  return it == brokers_.end() ? nullptr : &it->second;
}

CertificateStore::Subscription CertificateStore::subscribe(const std::string& name,
                                                           Listener listener) {
  listeners_.emplace_back(name, std::move(listener));
  return Subscription(this, std::prev(listeners_.end()));
}

void CertificateStore::notify(const CertEntry& entry, CertEvent event) {
  // A listener may unsubscribe itself (or others) while being called: walk a snapshot of
  // iterators and skip ones that vanished is not possible with std::list, so copy the
  // matching callbacks first.
  std::vector<Listener> targets;
  for (const auto& [name, l] : listeners_)
    if (name.empty() || name == entry.config.name) targets.push_back(l);
  for (const auto& l : targets) l(entry, event);
}

bool CertificateStore::ready(SystemTime now, std::vector<std::string>* reasons) const {
  bool ok = true;
  for (const auto& [name, e] : entries_) {
    std::string why;
    if (!e.material) {
      why = name + ": not issued yet";
    } else if (!e.material->valid_at(now)) {
      why = name + (now >= e.material->not_after ? ": expired" : ": not yet valid");
    } else if (e.material->not_after - now <= e.config.ready_min_ttl) {
      why = name + ": expires within ready_min_ttl";
    }
    if (!why.empty()) {
      ok = false;
      if (reasons) reasons->push_back(std::move(why));
    }
  }
  return ok;
}

bool CertificateStore::request_renewal(const std::string& name) {
  if (!find(name)) return false;
  if (renewal_handler_) renewal_handler_(name);
  return true;
}

}  // namespace certagent
