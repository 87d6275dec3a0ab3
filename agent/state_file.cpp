#include "agent/state_file.h"

#include "agent/audit_log.h"
#include "core/fs_util.h"

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <fstream>
#include <sstream>

namespace certagent {

namespace {

boost::json::value time_or_null(const std::optional<SystemTime>& t) {
  if (!t) return nullptr;
  return boost::json::string(format_rfc3339(*t));
}

boost::json::value tri_state(const std::optional<bool>& v) {
  if (!v) return nullptr;
  return *v;
}

}  // namespace

boost::json::array describe_certificates(const CertificateStore& store, SystemTime now) {
  boost::json::array list;
  for (const auto& [name, e] : store.entries()) {
    boost::json::object o;
    o["name"] = name;
    o["state"] = to_string(effective_state(e, now));
    o["broker"] = e.config.broker;
    if (e.material) {
      o["serial"] = e.material->serial_hex;
      o["not_before"] = format_rfc3339(e.material->not_before);
      o["not_after"] = format_rfc3339(e.material->not_after);
    } else {
      o["serial"] = nullptr;
      o["not_before"] = nullptr;
      o["not_after"] = nullptr;
    }
    o["next_renewal"] = time_or_null(e.next_renewal);
    o["renewing"] = e.renewing;
    o["consecutive_failures"] = e.consecutive_failures;
    o["last_error"] = e.last_error.empty() ? boost::json::value(nullptr) : boost::json::value(e.last_error);
    o["last_success"] = time_or_null(e.last_success);
    o["reload_unverified"] = e.reload_unverified;
    if (e.clock_skew)
      o["clock_skew_seconds"] = e.clock_skew->count();  // the broker's clock minus ours
    else
      o["clock_skew_seconds"] = nullptr;
    if (e.config.files) o["dir"] = e.config.files->dir.string();
    const BrokerStatus* b = store.broker(e.config.broker);
    o["broker_up"] = b ? tri_state(b->up) : boost::json::value(nullptr);
    o["broker_accepts"] = b ? tri_state(b->accepts) : boost::json::value(nullptr);
    list.push_back(std::move(o));
  }
  return list;
}

boost::json::array describe_brokers(const CertificateStore& store) {
  boost::json::array list;
  for (const auto& [name, b] : store.brokers()) {
    boost::json::object o;
    o["name"] = name;
    o["type"] = b.type;
    o["up"] = tri_state(b.up);
    o["accepts"] = tri_state(b.accepts);
    const bool refusing = b.accepts && !*b.accepts;
    o["cause"] = refusing ? boost::json::value(to_string(b.cause)) : boost::json::value(nullptr);
    o["reason"] = refusing ? boost::json::value(b.reason) : boost::json::value(nullptr);
    o["detail"] = refusing ? boost::json::value(b.detail) : boost::json::value(nullptr);
    o["down_detail"] = b.up && !*b.up ? boost::json::value(b.down_detail) : boost::json::value(nullptr);
    o["last_probe"] = time_or_null(b.last_probe);
    o["next_probe"] = time_or_null(b.next_probe);
    list.push_back(std::move(o));
  }
  return list;
}

Result<> write_state_file(const std::filesystem::path& state_dir, const CertificateStore& store,
                          SystemTime now) {
  boost::json::object root;
  root["written_at"] = format_rfc3339(now);
  root["certificates"] = describe_certificates(store, now);
  root["brokers"] = describe_brokers(store);
  return write_file_atomic(state_dir / kStateFileName, boost::json::serialize(root) + "\n", 0600);
}

Result<boost::json::value> read_state_file(const std::filesystem::path& state_dir) {
  const auto path = state_dir / kStateFileName;
  std::ifstream in(path);
  if (!in)
    return make_error("cannot read " + path.string() +
                      ": the daemon has not run with this state_dir yet, or this user may not read it");
  std::stringstream ss;
  ss << in.rdbuf();
  boost::system::error_code ec;
  auto value = boost::json::parse(ss.str(), ec);
  if (ec) return make_error(path.string() + " is not valid JSON: " + ec.message());
  return value;
}

}  // namespace certagent
