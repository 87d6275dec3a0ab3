#include "agent/state_file.h"

#include "agent/audit_log.h"
#include "agent/fs_util.h"

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <algorithm>
#include <fstream>
#include <sstream>

namespace certagent {

boost::json::array describe_certificates(const CertificateStore& store, SystemTime now) {
  boost::json::array list;
  for (const auto& [name, e] : store.entries()) {
    boost::json::object o;
    o["name"] = name;
    o["broker"] = e.config.broker;
    o["state"] = to_string(e.state);
    if (e.material) {
      o["serial"] = e.material->serial_hex;
      o["not_before"] = format_rfc3339(e.material->not_before);
      o["not_after"] = format_rfc3339(e.material->not_after);
      o["expires_in_seconds"] =
          std::chrono::duration_cast<std::chrono::seconds>(e.material->not_after - now).count();
    }
    if (e.next_renewal) o["next_renewal"] = format_rfc3339(*e.next_renewal);
    o["renewing"] = e.renewing;
    o["consecutive_failures"] = e.consecutive_failures;
    if (!e.last_error.empty()) o["last_error"] = e.last_error;
    if (e.last_success) o["last_success"] = format_rfc3339(*e.last_success);
    o["reload_unverified"] = e.reload_unverified;
    if (e.config.files) o["dir"] = e.config.files->dir.string();
    list.push_back(std::move(o));
  }
  return list;
}

namespace {

std::string field(const boost::json::object& o, const char* key) {
  const auto* v = o.if_contains(key);
  if (!v) return "-";
  if (v->is_string()) return std::string(v->as_string());
  if (v->is_int64()) return std::to_string(v->as_int64());
  if (v->is_bool()) return v->as_bool() ? "yes" : "no";
  return "-";
}

std::string human_duration(std::int64_t seconds) {
  if (seconds < 0) return "expired";
  if (seconds < 120) return std::to_string(seconds) + "s";
  if (seconds < 7200) return std::to_string(seconds / 60) + "m";
  if (seconds < 172800) return std::to_string(seconds / 3600) + "h";
  return std::to_string(seconds / 86400) + "d";
}

}  // namespace

void print_status_table(const boost::json::array& list, std::ostream& out) {
  std::vector<std::vector<std::string>> rows{
      {"NAME", "STATE", "SERIAL", "NOT_AFTER", "EXPIRES_IN", "NEXT_RENEWAL", "FAILURES"}};
  for (const auto& item : list) {
    if (!item.is_object()) continue;
    const auto& o = item.as_object();
    std::string serial = field(o, "serial");
    if (serial.size() > 16) serial = serial.substr(0, 16) + "…";
    std::string expires = "-";
    if (const auto* e = o.if_contains("expires_in_seconds"); e && e->is_int64())
      expires = human_duration(e->as_int64());
    std::string failures = field(o, "consecutive_failures");
    if (const auto* err = o.if_contains("last_error"); err && err->is_string() && failures != "0")
      failures += " (" + std::string(err->as_string()).substr(0, 60) + ")";
    rows.push_back({field(o, "name"), field(o, "state"), serial, field(o, "not_after"), expires,
                    field(o, "next_renewal"), failures});
  }
  std::vector<std::size_t> width(rows[0].size(), 0);
  for (const auto& r : rows)
    for (std::size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
  for (const auto& r : rows) {
    for (std::size_t i = 0; i < r.size(); ++i) {
      out << r[i];
      if (i + 1 < r.size()) out << std::string(width[i] - r[i].size() + 2, ' ');
    }
    out << "\n";
  }
}

Result<> write_state_file(const std::filesystem::path& state_dir, const CertificateStore& store,
                          SystemTime now) {
  boost::json::object root;
  root["written_at"] = format_rfc3339(now);
  root["certificates"] = describe_certificates(store, now);
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
