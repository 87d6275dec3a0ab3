#include "tests/integration/lemur/lemur_test_server.h"

#include "core/crypto/csr.h"
#include "core/crypto/x509.h"

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cctype>
#include <ctime>
#include <stdexcept>

namespace certagent::test {

namespace json = boost::json;
using Clock = std::chrono::system_clock;

namespace {

constexpr std::string_view kApi = "/api/1";
constexpr const char* kMissingField = "Missing data for required field.";

std::int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(Clock::now().time_since_epoch()).count();
}

std::string b64url(std::string_view in) {
  std::string out(4 * ((in.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), reinterpret_cast<const unsigned char*>(in.data()),
                          static_cast<int>(in.size()));
  out.resize(static_cast<std::size_t>(n));
  while (!out.empty() && out.back() == '=') out.pop_back();
  for (auto& c : out) c = c == '+' ? '-' : c == '/' ? '_' : c;
  return out;
}

std::optional<std::string> b64url_decode(std::string_view in) {
  std::string s(in);
  for (auto& c : s) {
    if (c == '-') c = '+';
    else if (c == '_') c = '/';
    else if (!std::isalnum(static_cast<unsigned char>(c))) return std::nullopt;
  }
  while (s.size() % 4) s += '=';
  std::string out(s.size() / 4 * 3 + 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()), reinterpret_cast<const unsigned char*>(s.data()),
                          static_cast<int>(s.size()));
  if (n < 0) return std::nullopt;
  std::size_t pad = 0;
  for (std::size_t i = s.size(); i > 0 && s[i - 1] == '='; --i) ++pad;
  out.resize(static_cast<std::size_t>(n) - pad);
  return out;
}

std::string hmac_sha256(const std::string& key, std::string_view data) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(data.data()),
       data.size(), mac, &len);
  return std::string(reinterpret_cast<char*>(mac), len);
}

TestHttpsServer::Reply json_reply(unsigned status, const json::value& body) {
  return TestHttpsServer::Reply{
      .status = status, .headers = {{"Content-Type", "application/json"}}, .body = json::serialize(body) + "\n"};
}

TestHttpsServer::Reply message(unsigned status, const std::string& text) {
  return json_reply(status, json::object{{"message", text}});
}

// What Lemur 1.9 answers for a route or method it does not have, and for an unhandled
// exception: JSON, not Flask's HTML pages (its error handlers are flask-restful's).
TestHttpsServer::Reply flask_page(unsigned status) {
  if (status == 404)
    return json_reply(404, json::object{{"error", "404 Not Found: The requested URL was not found on the server. If "
                                                  "you entered the URL manually please check your spelling and try "
                                                  "again."}});
  if (status == 405) return message(405, "The method is not allowed for the requested URL.");
  return message(500, "Internal Server Error");
}

// inflection.underscore for the simple camelCase keys clients send.
std::string underscore(std::string_view key) {
  std::string out;
  for (char c : key) {
    if (std::isupper(static_cast<unsigned char>(c))) {
      if (!out.empty()) out += '_';
      out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    } else {
      out += c;
    }
  }
  return out;
}

std::string camelize(std::string_view key) {
  std::string out;
  bool up = false;
  for (std::size_t i = 0; i < key.size(); ++i) {
    char c = key[i];
    if (c == '_' && i > 0) {
      up = true;
      continue;
    }
    out += up ? static_cast<char>(std::toupper(static_cast<unsigned char>(c))) : c;
    up = false;
  }
  return out;
}

bool valid_email(const json::value& v) {
  if (!v.is_string()) return false;
  std::string_view s = v.get_string();
  auto at = s.find('@');
  if (at == std::string_view::npos || at == 0 || s.find('@', at + 1) != std::string_view::npos) return false;
  std::string_view domain = s.substr(at + 1);
  return domain.find('.') != std::string_view::npos && domain.front() != '.' && domain.back() != '.' &&
         s.find(' ') == std::string_view::npos;
}

// ISO-8601 as arrow.get reads it: date, optional time (T or space), fraction, Z or +hh:mm.
std::optional<std::int64_t> parse_iso8601(std::string_view s) {
  auto num = [&](std::size_t pos, std::size_t len, int& out) {
    if (pos + len > s.size()) return false;
    out = 0;
    for (std::size_t i = pos; i < pos + len; ++i) {
      if (!std::isdigit(static_cast<unsigned char>(s[i]))) return false;
      out = out * 10 + (s[i] - '0');
    }
    return true;
  };
  std::tm tm{};
  int y, mo, d, h = 0, mi = 0, se = 0;
  if (!num(0, 4, y) || s.size() < 10 || s[4] != '-' || !num(5, 2, mo) || s[7] != '-' || !num(8, 2, d)) return std::nullopt;
  std::size_t pos = 10;
  if (pos < s.size() && (s[pos] == 'T' || s[pos] == ' ')) {
    if (!num(pos + 1, 2, h) || pos + 3 >= s.size() || s[pos + 3] != ':' || !num(pos + 4, 2, mi)) return std::nullopt;
    pos += 6;
    if (pos < s.size() && s[pos] == ':') {
      if (!num(pos + 1, 2, se)) return std::nullopt;
      pos += 3;
    }
    if (pos < s.size() && s[pos] == '.') {
      ++pos;
      while (pos < s.size() && std::isdigit(static_cast<unsigned char>(s[pos]))) ++pos;
    }
  }
  std::int64_t offset = 0;
  if (pos < s.size()) {
    if (s[pos] == 'Z' && pos + 1 == s.size()) {
      ++pos;
    } else if ((s[pos] == '+' || s[pos] == '-') && pos + 6 == s.size() && s[pos + 3] == ':') {
      int oh, om;
      if (!num(pos + 1, 2, oh) || !num(pos + 4, 2, om)) return std::nullopt;
      offset = (oh * 3600 + om * 60) * (s[pos] == '+' ? 1 : -1);
      pos += 6;
    } else {
      return std::nullopt;
    }
  }
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || se > 60) return std::nullopt;
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  tm.tm_sec = se;
  return static_cast<std::int64_t>(timegm(&tm)) - offset;
}

// Python's datetime.isoformat() of an aware UTC time, as marshmallow's DateTime writes it.
std::string iso(std::int64_t t) {
  std::time_t tt = static_cast<std::time_t>(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[40];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S+00:00", &tm);
  return buf;
}

std::string ymd(std::int64_t t) {
  std::time_t tt = static_cast<std::time_t>(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[16];
  std::strftime(buf, sizeof buf, "%Y%m%d", &tm);
  return buf;
}

std::int64_t day_of(std::int64_t t) { return t >= 0 ? t / 86400 : (t - 86399) / 86400; }

std::int64_t asn1_to_unix(const ASN1_TIME* t) {
  std::tm tm{};
  ASN1_TIME_to_tm(t, &tm);
  return static_cast<std::int64_t>(timegm(&tm));
}

std::string alnum_only(std::string_view s) {
  std::string out;
  for (char c : s)
    if (std::isalnum(static_cast<unsigned char>(c))) out += c;
  return out;
}

std::optional<std::int64_t> as_int(const json::value* v) {
  if (!v) return std::nullopt;
  if (v->is_int64()) return v->get_int64();
  if (v->is_uint64()) return static_cast<std::int64_t>(v->get_uint64());
  return std::nullopt;
}

std::string query_param(const std::string& query, const std::string& key) {
  std::size_t pos = 0;
  while (pos <= query.size()) {
    auto amp = query.find('&', pos);
    std::string part = query.substr(pos, amp == std::string::npos ? std::string::npos : amp - pos);
    if (part.rfind(key + "=", 0) == 0) {
      std::string raw = part.substr(key.size() + 1), out;
      for (std::size_t i = 0; i < raw.size(); ++i) {
        if (raw[i] == '%' && i + 2 < raw.size()) {
          out += static_cast<char>(std::stoi(raw.substr(i + 1, 2), nullptr, 16));
          i += 2;
        } else {
          out += raw[i] == '+' ? ' ' : raw[i];
        }
      }
      return out;
    }
    if (amp == std::string::npos) break;
    pos = amp + 1;
  }
  return {};
}

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Errors of one load, shaped by lemur/common/schema.py wrap_errors.
struct Errors {
  json::object fields;               // field -> first message (or a nested object)
  std::vector<std::string> schema;   // _schema

  bool empty() const { return fields.empty() && schema.empty(); }
  void field(const std::string& name, json::value message) {
    if (!fields.contains(camelize(name))) fields[camelize(name)] = std::move(message);
  }
  TestHttpsServer::Reply reply() const {
    json::object reasons;
    if (!schema.empty()) {
      json::array rule;
      for (const auto& s : schema) rule.emplace_back(s);
      reasons["Schema"] = json::object{{"rule", std::move(rule)}};
    } else {
      reasons = fields;
    }
    return json_reply(400, json::object{{"message", "Validation Error."}, {"reasons", std::move(reasons)}});
  }
};

}  // namespace

LemurTestServer::LemurTestServer() {
  tls_ca_ = make_cert(CertSpec{.common_name = "Lemur Test TLS CA", .is_ca = true,
                               .not_before_offset = std::chrono::hours(-24), .lifetime = std::chrono::hours(24 * 60)});
  tls_leaf_ = make_cert(CertSpec{.common_name = "lemur.test", .dns_names = {"localhost", "lemur.test"},
                                 .ip_addresses = {"127.0.0.1"}, .lifetime = std::chrono::hours(24 * 30)},
                        &tls_ca_);
  root_ = make_cert(CertSpec{.common_name = "Lemur Test Root", .is_ca = true,
                             .not_before_offset = std::chrono::hours(-24), .lifetime = std::chrono::hours(24 * 60)});
  intermediate_ = make_cert(CertSpec{.common_name = "Lemur Test Intermediate", .is_ca = true,
                                     .not_before_offset = std::chrono::hours(-24),
                                     .lifetime = std::chrono::hours(24 * 45)},
                            &root_);
  unsigned char secret[32];
  RAND_bytes(secret, sizeof secret);
  secret_.assign(reinterpret_cast<char*>(secret), sizeof secret);
  roles_ = {"admin", "read-only"};
  server_ = std::make_unique<TestHttpsServer>(tls_leaf_.cert_pem(), tls_leaf_.key_pem(),
                                              [this](const Request& r) { return handle(r); });
}

LemurTestServer::~LemurTestServer() { server_.reset(); }

// ---- set-up ---------------------------------------------------------------------------------

std::int64_t LemurTestServer::add_user(const std::string& username, std::vector<std::string> roles, bool active) {
  std::lock_guard lock(mutex_);
  std::int64_t id = static_cast<std::int64_t>(users_.size()) + 1;
  for (const auto& r : roles) roles_.insert(r);
  users_[id] = User{id, username, std::move(roles), active};
  return id;
}

void LemurTestServer::set_user_active(std::int64_t user, bool active) {
  std::lock_guard lock(mutex_);
  users_.at(user).active = active;
}

std::string LemurTestServer::sign_jwt(const json::object& payload, const std::string& secret) const {
  std::string input = b64url(R"({"typ":"JWT","alg":"HS256"})") + "." + b64url(json::serialize(payload));
  return input + "." + b64url(hmac_sha256(secret, input));
}

std::string LemurTestServer::create_api_key(std::int64_t user, int ttl_days,
                                            std::optional<Clock::time_point> issued_at) {
  std::lock_guard lock(mutex_);
  ApiKey key{next_key_id_++, user, ttl_days,
             issued_at ? std::chrono::duration_cast<std::chrono::seconds>(issued_at->time_since_epoch()).count()
                       : unix_now(),
             false};
  keys_[key.id] = key;
  // lemur/auth/service.py create_token(user, aid, ttl): no "exp" for ttl -1.
  json::object payload{{"iat", key.issued_at}, {"sub", user}, {"aid", key.id}};
  if (ttl_days != -1) payload["exp"] = key.issued_at + std::int64_t{ttl_days} * 86400;
  return sign_jwt(payload, secret_);
}

void LemurTestServer::revoke_api_key(const std::string& token) {
  auto dot = token.find('.');
  auto payload = json::parse(*b64url_decode(token.substr(dot + 1, token.rfind('.') - dot - 1))).as_object();
  std::lock_guard lock(mutex_);
  keys_.at(payload.at("aid").as_int64()).revoked = true;
}

std::string LemurTestServer::expired_login_token(std::int64_t user) {
  return sign_jwt(json::object{{"iat", unix_now() - 7200}, {"exp", unix_now() - 3600}, {"sub", user}}, secret_);
}

std::string LemurTestServer::foreign_token(std::int64_t user) {
  return sign_jwt(json::object{{"iat", unix_now()}, {"sub", user}, {"aid", 1}}, "another lemur's secret");
}

LemurTestServer::Authority& LemurTestServer::add_authority(const std::string& name, const std::string& owner,
                                                           std::vector<std::string> roles) {
  std::lock_guard lock(mutex_);
  roles_.insert(owner);
  for (const auto& r : roles) roles_.insert(r);
  Authority a{static_cast<std::int64_t>(authorities_.size()) + 1, name, owner, std::move(roles)};
  return authorities_[name] = std::move(a);
}

void LemurTestServer::set_pending(const std::string& authority, int polls) {
  std::lock_guard lock(mutex_);
  authorities_.at(authority).pending_polls = polls;
}

std::int64_t LemurTestServer::add_destination(const std::string& label) {
  std::lock_guard lock(mutex_);
  std::int64_t id = static_cast<std::int64_t>(destinations_.size()) + 11;
  destinations_[id] = label;
  return id;
}

std::int64_t LemurTestServer::add_notification(const std::string& label) {
  std::lock_guard lock(mutex_);
  std::int64_t id = static_cast<std::int64_t>(notifications_.size()) + 21;
  notifications_[id] = label;
  return id;
}

void LemurTestServer::add_role(const std::string& name) {
  std::lock_guard lock(mutex_);
  roles_.insert(name);
}

void LemurTestServer::add_fault(Fault fault) {
  std::lock_guard lock(mutex_);
  faults_.push_back(std::move(fault));
}

void LemurTestServer::set_delay(std::chrono::milliseconds delay) {
  std::lock_guard lock(mutex_);
  delay_ = delay;
}

void LemurTestServer::set_clock_ahead(std::chrono::seconds ahead) {
  std::lock_guard lock(mutex_);
  clock_ahead_ = ahead;
}

void LemurTestServer::set_db_down(bool down) {
  std::lock_guard lock(mutex_);
  db_down_ = down;
}

void LemurTestServer::on_issued(std::function<void(const Issued&)> callback) {
  std::lock_guard lock(mutex_);
  on_issued_ = std::move(callback);
}

// ---- records --------------------------------------------------------------------------------

std::vector<LemurTestServer::Issued> LemurTestServer::issued() const {
  std::lock_guard lock(mutex_);
  std::vector<Issued> out;
  for (const auto& [id, c] : certificates_) out.push_back(c);
  return out;
}

std::optional<LemurTestServer::Issued> LemurTestServer::certificate(std::int64_t id) const {
  std::lock_guard lock(mutex_);
  auto it = certificates_.find(id);
  if (it == certificates_.end()) return std::nullopt;
  return it->second;
}

std::optional<std::int64_t> LemurTestServer::replaced_by(std::int64_t id) const {
  std::lock_guard lock(mutex_);
  auto it = replaced_by_.find(id);
  if (it == replaced_by_.end()) return std::nullopt;
  return it->second;
}

std::vector<json::object> LemurTestServer::posted() const {
  std::lock_guard lock(mutex_);
  return posted_;
}

std::vector<std::string> LemurTestServer::requests() const {
  std::lock_guard lock(mutex_);
  return requests_;
}

std::vector<std::int64_t> LemurTestServer::cancelled_pending() const {
  std::lock_guard lock(mutex_);
  return cancelled_;
}

int LemurTestServer::pending_polls(std::int64_t pending_id) const {
  std::lock_guard lock(mutex_);
  auto it = pending_.find(pending_id);
  return it == pending_.end() ? -1 : it->second.polls;
}

std::string LemurTestServer::last_authorization() const {
  std::lock_guard lock(mutex_);
  return last_authorization_;
}

// ---- the API --------------------------------------------------------------------------------

TestHttpsServer::Reply LemurTestServer::handle(const Request& request) {
  std::lock_guard lock(mutex_);
  Reply reply = [&] {
    requests_.push_back(request.method + " " + request.target);
    if (auto it = request.headers.find("authorization"); it != request.headers.end())
      last_authorization_ = it->second;
    const auto q = request.target.find('?');
    const std::string path = request.target.substr(0, q);
    const std::string query = q == std::string::npos ? "" : request.target.substr(q + 1);
    for (auto it = faults_.begin(); it != faults_.end(); ++it) {
      if ((it->method.empty() || it->method == request.method) && path.rfind(it->path_prefix, 0) == 0) {
        Reply r = it->reply;
        if (--it->count <= 0) faults_.erase(it);
        return r;
      }
    }
    if (path == std::string(kApi) + "/healthcheck") {
      if (request.method != "GET" && request.method != "HEAD") return flask_page(405);
      return Reply{.headers = {{"Content-Type", "text/html; charset=utf-8"}}, .body = db_down_ ? "db check failed" : "ok"};
    }

    // Routes (Flask matches them before any authentication runs).
    enum class Route {
      none, certificates, certificate, pending, destinations, notifications, keys, authorities, authority
    } route = Route::none;
    std::int64_t id = 0;
    auto numeric_tail = [&](std::string_view prefix) {
      if (path.rfind(prefix, 0) != 0 || path.size() == prefix.size()) return false;
      std::string tail = path.substr(prefix.size());
      if (!std::all_of(tail.begin(), tail.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); }) ||
          tail.size() > 12)
        return false;
      id = std::stoll(tail);
      return true;
    };
    std::vector<std::string> methods;
    if (path == std::string(kApi) + "/certificates") {
      route = Route::certificates;
      methods = {"GET", "POST"};
    } else if (numeric_tail(std::string(kApi) + "/certificates/")) {
      route = Route::certificate;
      methods = {"GET", "PUT"};
    } else if (numeric_tail(std::string(kApi) + "/pending_certificates/")) {
      route = Route::pending;
      methods = {"GET", "PUT", "DELETE"};
    } else if (path == std::string(kApi) + "/destinations") {
      route = Route::destinations;
      methods = {"GET", "POST"};
    } else if (path == std::string(kApi) + "/notifications") {
      route = Route::notifications;
      methods = {"GET", "POST"};
    } else if (path == std::string(kApi) + "/keys") {
      route = Route::keys;
      methods = {"GET", "POST"};
    } else if (path == std::string(kApi) + "/authorities") {
      route = Route::authorities;
      methods = {"GET", "POST"};
    } else if (numeric_tail(std::string(kApi) + "/authorities/")) {
      route = Route::authority;
      methods = {"GET", "PUT"};
    }
    if (route == Route::none) return flask_page(404);
    if (std::find(methods.begin(), methods.end(), request.method) == methods.end()) return flask_page(405);

    Auth auth = authenticate(request);
    if (auth.error) return *auth.error;
    if (db_down_) return flask_page(500);  // every query fails while PostgreSQL is down
    switch (route) {
      case Route::keys:
        if (request.method == "POST") return create_key(request, *auth.user);
        break;
      case Route::authorities:
        if (request.method == "GET") return list_authorities(query);
        break;
      case Route::authority:
        if (request.method == "GET") return get_authority(id);
        break;
      case Route::certificates:
        if (request.method == "POST") return create_certificate(request, *auth.user);
        break;
      case Route::certificate:
        if (request.method == "GET") return get_certificate(id);
        break;
      case Route::pending:
        if (request.method == "GET") return get_pending(id);
        if (request.method == "DELETE") return cancel_pending(id);
        break;
      case Route::destinations:
      case Route::notifications:
        if (request.method == "GET") return list_labelled(query, route == Route::destinations);
        break;
      default:
        break;
    }
    return message(501, "not implemented by the test server");
  }();
  if (delay_ > reply.delay) reply.delay = delay_;
  if (!reply.raw) reply.headers.emplace_back("Date", http_date(std::chrono::system_clock::now() + clock_ahead_));
  return reply;
}

LemurTestServer::Auth LemurTestServer::authenticate(const Request& request) {
  auto invalid = [] { return Auth{message(403, "Token is invalid"), nullptr}; };
  auto it = request.headers.find("authorization");
  if (it == request.headers.end() || it->second.empty()) {
    Reply r = message(401, "Missing authorization header");
    return Auth{r, nullptr};
  }
  // request.headers.get("Authorization").split()[1]
  std::vector<std::string> words;
  {
    std::string w;
    for (char c : it->second + " ") {
      if (std::isspace(static_cast<unsigned char>(c))) {
        if (!w.empty()) words.push_back(std::move(w));
        w.clear();
      } else {
        w += c;
      }
    }
  }
  if (words.size() < 2) return invalid();
  const std::string& token = words[1];
  auto last = token.rfind('.');
  auto first = token.find('.');
  if (first == std::string::npos || last == first) return invalid();  // "Not enough segments"
  const std::string signing_input = token.substr(0, last);
  auto header = b64url_decode(token.substr(0, first));
  auto payload_text = b64url_decode(token.substr(first + 1, last - first - 1));
  auto signature = b64url_decode(token.substr(last + 1));
  if (!header || !payload_text || !signature) return invalid();
  boost::system::error_code ec;
  json::value h = json::parse(*header, ec);
  if (ec || !h.is_object() || !h.as_object().contains("alg") || h.as_object().at("alg") != "HS256") return invalid();
  const std::string expected = hmac_sha256(secret_, signing_input);
  if (signature->size() != expected.size() || CRYPTO_memcmp(signature->data(), expected.data(), expected.size()) != 0)
    return invalid();  // jwt.InvalidSignatureError is a DecodeError
  json::value p = json::parse(*payload_text, ec);
  if (ec || !p.is_object()) return invalid();
  const auto& payload = p.as_object();
  if (auto exp = as_int(payload.if_contains("exp")); exp && *exp <= unix_now())
    return Auth{message(403, "Token has expired"), nullptr};
  if (auto aid = as_int(payload.if_contains("aid"))) {
    auto key = keys_.find(*aid);
    if (key == keys_.end()) return Auth{flask_page(500), nullptr};  // deleted key: an AttributeError
    if (key->second.revoked) return Auth{message(403, "Token has been revoked"), nullptr};
    if (key->second.ttl_days != -1 && unix_now() >= key->second.issued_at + std::int64_t{key->second.ttl_days} * 86400)
      return Auth{message(403, "Token has expired"), nullptr};
  }
  auto sub = as_int(payload.if_contains("sub"));
  if (!sub) return invalid();
  auto user = users_.find(*sub);
  if (user == users_.end()) return Auth{flask_page(500), nullptr};  // unknown user: an AttributeError
  if (!user->second.active) return Auth{message(403, "User is not currently active"), nullptr};
  return Auth{std::nullopt, &user->second};
}

TestHttpsServer::Reply LemurTestServer::create_certificate(const Request& request, const User& user) {
  boost::system::error_code ec;
  json::value parsed = json::parse(request.body, ec);
  if (ec || !parsed.is_object())
    return message(400, "The browser (or proxy) sent a request that this server could not understand.");
  posted_.push_back(parsed.as_object());

  // LemurInputSchema.preprocess: camelCase keys -> snake_case (unknown keys are ignored).
  json::object in;
  for (const auto& [k, v] : parsed.as_object()) in[underscore(k)] = v;

  // pre_load (CertificateInputSchema.load_data): names and key type come from the CSR; a CSR
  // that does not parse stops the load here.
  Errors errors;
  crypto::X509ReqPtr csr;
  crypto::SubjectNames csr_names;
  const json::value* csr_field = in.if_contains("csr");
  if (csr_field && !csr_field->is_null()) {
    if (!csr_field->is_string()) return json_reply(400, json::object{{"message", "Validation Error."},
                                                                     {"reasons", {{"csr", "Not a valid string."}}}});
    auto req = crypto::parse_csr(csr_field->get_string());
    if (!req) {
      errors.schema.push_back("CSR presented is not valid.");
      return errors.reply();
    }
    csr = std::move(*req);
    crypto::EvpPkeyPtr pub(X509_REQ_get_pubkey(csr.get()));
    const int type = pub ? EVP_PKEY_get_base_id(pub.get()) : 0;
    if (type != EVP_PKEY_RSA && type != EVP_PKEY_EC)
      return flask_page(500);  // get_key_type_from_csr: Exception("Unsupported key type")
  }

  // Fields.
  const json::value* owner = in.if_contains("owner");
  if (!owner) errors.field("owner", kMissingField);
  else if (!valid_email(*owner)) errors.field("owner", "Not a valid email address.");
  if (const auto* d = in.if_contains("description"); d && !d->is_string() && !d->is_null())
    errors.field("description", "Not a valid string.");
  if (const auto* n = in.if_contains("notify"); n && !n->is_bool()) errors.field("notify", "Not a valid boolean.");

  bool crash = false;  // an unhandled exception in real Lemur: 500
  const Authority* authority = nullptr;
  if (const auto* a = in.if_contains("authority"); !a) {
    errors.field("authority", kMissingField);
  } else if (a->is_string()) {
    crash = true;  // real Lemur 1.9: a string authority ends in a TypeError, a 500
  } else if (!a->is_object()) {
    errors.field("authority", json::object{{"_schema", "Invalid input type."}});
  } else {
    auto aid = as_int(a->as_object().if_contains("id"));
    const json::value* aname = a->as_object().if_contains("name");
    if (aid && *aid != 0) {
      for (const auto& [n, auth] : authorities_)
        if (auth.id == *aid) authority = &auth;
      if (!authority) crash = true;  // real Lemur 1.9 answers 500 for an unknown authority
    } else if (aname && aname->is_string() && !aname->get_string().empty()) {
      auto it = authorities_.find(std::string(aname->get_string()));
      if (it != authorities_.end()) authority = &it->second;
      else crash = true;  // real Lemur 1.9 answers 500 for an unknown authority
    } else {
      errors.field("authority", json::object{{"_schema", "Associated object require a name or id."}});
    }
  }

  std::optional<std::int64_t> start, end;
  for (const char* key : {"validity_start", "validity_end"}) {
    const json::value* v = in.if_contains(key);
    if (!v || v->is_null()) continue;
    auto t = v->is_string() ? parse_iso8601(v->get_string()) : std::nullopt;
    if (!t) errors.field(key, "Not a valid datetime.");
    else (std::string(key) == "validity_start" ? start : end) = *t;
  }

  // Associated objects (lemur/schemas.py fetch_objects): all by id, or all by name. An unknown
  // id is a 400 whose whole body is the field's _schema error (as real Lemur 1.9 answers,
  // TESTING.md); destinations and notifications have no `name` column, so a lookup by name is
  // an AttributeError (a 500).
  std::vector<std::int64_t> replaces, destinations, notifications;
  std::vector<std::string> roles;
  json::object unknown_ids;  // field -> {"_schema": "Unable to find <class ...> with id: N"}
  auto associated = [&](const char* key, const std::function<bool(std::int64_t)>& has_id,
                        const std::function<bool(const std::string&)>* has_name, const std::string& model,
                        std::vector<std::int64_t>* ids_out, std::vector<std::string>* names_out) {
    const json::value* v = in.if_contains(key);
    if (!v || v->is_null()) return;
    if (!v->is_array()) {
      errors.field(key, "Invalid type.");
      return;
    }
    bool all_ids = true, all_names = true;
    for (const auto& e : v->as_array()) {
      const auto* o = e.if_object();
      if (!o || !as_int(o->if_contains("id"))) all_ids = false;
      if (!o || !o->contains("name") || !o->at("name").is_string()) all_names = false;
    }
    if (!all_ids && !all_names) {
      errors.field(key, json::object{{"_schema", "Associated object require a name or id."}});
      return;
    }
    if (all_ids) {
      for (const auto& e : v->as_array()) {
        std::int64_t id = *as_int(e.as_object().if_contains("id"));
        if (!has_id(id) && !unknown_ids.contains(key))
          unknown_ids[key] = json::object{{"_schema", "Unable to find <class '" + model + "'> with id: " +
                                                          std::to_string(id)}};
        if (ids_out) ids_out->push_back(id);
        if (names_out) names_out->push_back(std::to_string(id));
      }
      return;
    }
    if (!has_name) {
      crash = true;
      return;
    }
    std::vector<std::string> missing;
    for (const auto& e : v->as_array()) {
      std::string n(e.as_object().at("name").as_string());
      if (!(*has_name)(n)) missing.push_back(n);
      if (names_out) names_out->push_back(n);
    }
    if (!missing.empty()) {
      std::string list;
      for (const auto& m : missing) list += (list.empty() ? "" : ",") + m;
      errors.field(key, json::object{{"_schema", "Unable to locate <class '" + model + "'> with name " + list}});
    }
  };
  std::function<bool(const std::string&)> role_named = [&](const std::string& n) { return roles_.count(n) > 0; };
  associated("replaces", [&](std::int64_t id) { return certificates_.count(id) > 0; }, nullptr,
             "lemur.certificates.models.Certificate", &replaces, nullptr);
  associated("destinations", [&](std::int64_t id) { return destinations_.count(id) > 0; }, nullptr,
             "lemur.destinations.models.Destination", &destinations, nullptr);
  associated("notifications", [&](std::int64_t id) { return notifications_.count(id) > 0; }, nullptr,
             "lemur.notifications.models.Notification", &notifications, nullptr);
  associated("roles", [&](std::int64_t id) { return id >= 1 && id <= static_cast<std::int64_t>(roles_.size()); },
             &role_named, "lemur.roles.models.Role", nullptr, &roles);
  if (crash) return flask_page(500);
  // Real Lemur 1.9 answers an unknown id with exactly this 400 body (TESTING.md).
  if (!unknown_ids.empty()) return json_reply(400, unknown_ids);

  // Schema validators (they run even after field errors in marshmallow 2).
  if (!authority) errors.schema.push_back("Missing Authority.");
  else if (!authority->active) errors.field("authority", "The authority is inactive.");
  if (!start && end) errors.schema.push_back("If validity start is specified so must validity end.");
  if (!end && start) errors.schema.push_back("If validity end is specified so must validity start.");
  if (start && end) {
    if (*start >= *end) errors.schema.push_back("Validity start must be before validity end.");
    if (authority) {
      const auto ca_nb = asn1_to_unix(X509_get0_notBefore(root_.cert.get()));
      const auto ca_na = asn1_to_unix(X509_get0_notAfter(root_.cert.get()));
      if (day_of(*start) < day_of(ca_nb)) errors.schema.push_back("Validity start must not be before " + iso(ca_nb));
      if (day_of(*end) > day_of(ca_na)) errors.schema.push_back("Validity end must not be after " + iso(ca_na));
    }
  }
  if (!errors.empty()) return errors.reply();
  // The cryptography issuer has no default validity: it fails (a 500 with this message).
  if (!start && !end)
    return message(500, "`validity_start` is required but is missing or not configured.  Please provide and try again.");

  // post_load: a common name is needed unless the authority makes it optional. Real Lemur would
  // generate the key when there is no CSR; this server only signs CSRs.
  if (!csr) return json_reply(400, json::object{{"message", "Validation Error."},
                                                {"reasons", {{"csr", "this test server only issues from a CSR"}}}});
  auto names = crypto::csr_names(csr.get());
  if (!names) {
    errors.schema.push_back("Invalid Subject value in supplied CSR");
    return errors.reply();
  }
  if (names->common_name.empty()) {
    errors.schema.push_back("Missing common_name");
    return errors.reply();
  }

  // views.py: permissions.
  auto has_role = [&](const std::string& r) {
    return std::find(user.roles.begin(), user.roles.end(), r) != user.roles.end();
  };
  if (has_role("read-only")) return message(403, "You are not authorized to create a new certificate.");
  bool allowed = has_role("admin") || has_role(authority->owner);
  for (const auto& r : authority->roles) allowed = allowed || has_role(r);
  if (!allowed) return message(403, "You are not authorized to use the authority: " + authority->name);

  json::object validated = in;
  validated["validity_start"] = start ? json::value(*start) : json::value(nullptr);
  validated["validity_end"] = end ? json::value(*end) : json::value(nullptr);
  json::array rep;
  for (auto id : replaces) rep.push_back(id);
  validated["replaces_ids"] = std::move(rep);
  json::array dst, ntf, rls;
  for (auto id : destinations) dst.push_back(id);
  for (auto id : notifications) ntf.push_back(id);
  for (const auto& r : roles) rls.emplace_back(r);
  validated["destination_ids"] = std::move(dst);
  validated["notification_ids"] = std::move(ntf);
  validated["role_names"] = std::move(rls);
  validated["creator_id"] = user.id;
  validated["creator_name"] = user.username;

  const std::string csr_pem(csr_field->get_string());
  if (authority->pending_polls >= 0) {
    // An issuer that does not sign at once: a PendingCertificate, dumped by the certificate
    // output schema (it has no body, serial or dates, so those keys are absent).
    Pending p{next_pending_id_++, csr_pem, validated, authority->name, 0, authority->pending_polls};
    pending_[p.id] = p;
    json::array rep_out;
    for (auto id : replaces) rep_out.push_back(json::object{{"id", id}});
    return json_reply(200, json::object{{"id", p.id},
                                        {"owner", validated.at("owner")},
                                        {"cn", names->common_name},
                                        {"commonName", names->common_name},
                                        {"csr", csr_pem},
                                        {"chain", nullptr},
                                        {"externalId", nullptr},
                                        {"name", names->common_name + "-pending"},
                                        {"notify", validated.contains("notify") ? validated.at("notify") : true},
                                        {"active", validated.contains("notify") ? validated.at("notify") : true},
                                        {"resolved", false},
                                        {"resolvedCertId", nullptr},
                                        {"status", nullptr},
                                        {"replaces", std::move(rep_out)},
                                        {"authority", {{"id", authority->id}, {"name", authority->name}}}});
  }
  std::string error;
  auto out = issue(csr_pem, validated, *authority, 0, error);
  if (!out) return message(500, error);
  return json_reply(200, *out);
}

std::optional<json::object> LemurTestServer::issue(const std::string& csr_pem, const json::object& input,
                                                   const Authority& authority, std::int64_t from_pending,
                                                   std::string& error) {
  auto req = crypto::parse_csr(csr_pem);
  if (!req || !crypto::verify_csr_signature(req->get())) {
    error = "CSR signature does not verify";
    return std::nullopt;
  }
  auto names = crypto::csr_names(req->get());
  crypto::EvpPkeyPtr pub(X509_REQ_get_pubkey(req->get()));
  const std::int64_t now = unix_now();
  std::int64_t nb = input.at("validity_start").is_int64() ? input.at("validity_start").as_int64() : now;
  std::int64_t na = input.at("validity_end").is_int64() ? input.at("validity_end").as_int64() : now + 3600;

  crypto::X509Ptr cert(X509_new());
  X509* c = cert.get();
  X509_set_version(c, 2);
  unsigned char serial[16];
  RAND_bytes(serial, sizeof serial);
  serial[0] &= 0x7f;  // x509.random_serial_number(): positive, up to 159 bits
  serial[0] |= 0x01;
  crypto::BignumPtr bn(BN_bin2bn(serial, sizeof serial, nullptr));
  BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(c));
  X509_set_issuer_name(c, X509_get_subject_name(root_.cert.get()));
  X509_set_subject_name(c, X509_REQ_get_subject_name(req->get()));
  ASN1_TIME_set(X509_getm_notBefore(c), static_cast<std::time_t>(nb));
  ASN1_TIME_set(X509_getm_notAfter(c), static_cast<std::time_t>(na));
  X509_set_pubkey(c, pub.get());
  // Lemur's cryptography issuer: the SAN extension only (no basicConstraints, keyUsage, EKU,
  // SKI or AKI), signed by the root itself.
  if (names->has_alt_names()) {
    auto san = crypto::subject_alt_name_extension(*names, names->common_name.empty());
    if (!san || X509_add_ext(c, san->get(), -1) != 1) {
      error = "subjectAltName";
      return std::nullopt;
    }
  }
  if (X509_sign(c, root_.key.get(), EVP_sha256()) <= 0) {
    error = "signing failed";
    return std::nullopt;
  }

  Issued rec;
  rec.id = next_id_++;
  rec.owner = std::string(input.at("owner").as_string());
  rec.created = now;
  if (auto uid = as_int(input.if_contains("creator_id"))) rec.user_id = *uid;
  if (const auto* un = input.if_contains("creator_name"); un && un->is_string()) rec.username = std::string(un->as_string());
  rec.authority = authority.name;
  if (const auto* d = input.if_contains("description"); d && d->is_string()) rec.description = std::string(d->as_string());
  rec.notify = !(input.contains("notify") && input.at("notify").is_bool() && !input.at("notify").as_bool());
  for (const auto& v : input.at("replaces_ids").as_array()) rec.replaces.push_back(v.as_int64());
  for (const auto& v : input.at("destination_ids").as_array()) rec.destinations.push_back(v.as_int64());
  for (const auto& v : input.at("notification_ids").as_array()) rec.notifications.push_back(v.as_int64());
  for (const auto& v : input.at("role_names").as_array()) rec.roles.emplace_back(v.as_string());
  char* hex = BN_bn2hex(bn.get());
  rec.serial_hex = hex;
  OPENSSL_free(hex);
  rec.serial_hex.erase(0, std::min(rec.serial_hex.find_first_not_of('0'), rec.serial_hex.size() - 1));
  rec.body = cert_pem(c);
  rec.chain = root_.cert_pem();  // the cryptography issuer's chain is the root itself
  rec.csr = csr_pem;
  rec.from_pending = from_pending;
  certificates_[rec.id] = rec;
  for (auto old : rec.replaces) replaced_by_[old] = rec.id;
  if (on_issued_) on_issued_(rec);
  return certificate_json(rec);
}

json::object LemurTestServer::certificate_json(const Issued& rec, bool nested) const {
  auto chain = parse_pem_chain(rec.body);
  X509* c = chain.front().get();
  auto info = crypto::describe(c);
  const std::int64_t nb = asn1_to_unix(X509_get0_notBefore(c));
  const std::int64_t na = asn1_to_unix(X509_get0_notAfter(c));
  crypto::BignumPtr bn(ASN1_INTEGER_to_BN(X509_get0_serialNumber(c), nullptr));
  char* dec = BN_bn2dec(bn.get());
  std::string serial = dec;
  OPENSSL_free(dec);
  const std::string issuer = alnum_only("Lemur Test Root");
  const bool san = !info.dns_names.empty() || !info.ip_addresses.empty() || !info.uris.empty();
  std::string cn = info.subject_cn;
  std::string name_cn = cn.rfind("*.", 0) == 0 ? "WILDCARD" + cn.substr(1) : cn;
  json::array domains, replaces, roles, destinations, notifications;
  std::int64_t domain_id = 1;
  for (const auto& d : info.dns_names) domains.push_back(json::object{{"id", domain_id++}, {"name", d}, {"sensitive", false}});
  // replaces/replacedBy: full certificate objects (without their own replaces/replacedBy).
  if (!nested)
    for (auto id : rec.replaces)
      if (auto it = certificates_.find(id); it != certificates_.end())
        replaces.push_back(certificate_json(it->second, true));
  for (const auto& r : rec.roles) roles.push_back(json::object{{"name", r}});
  roles.push_back(json::object{{"name", rec.owner}, {"description", "Auto generated role based on owner: " + rec.owner}});
  for (auto id : rec.destinations) destinations.push_back(json::object{{"id", id}, {"label", destinations_.at(id)}});
  for (auto id : rec.notifications) notifications.push_back(json::object{{"id", id}, {"label", notifications_.at(id)}});
  json::array replaced_by;
  if (auto it = replaced_by_.find(rec.id); !nested && it != replaced_by_.end())
    if (auto c2 = certificates_.find(it->second); c2 != certificates_.end())
      replaced_by.push_back(certificate_json(c2->second, true));
  const Authority& a = authorities_.at(rec.authority);
  json::object out{
      {"id", rec.id},
      {"externalId", nullptr},
      {"active", rec.notify},
      {"notify", rec.notify},
      {"rotation", false},
      {"bits", EVP_PKEY_get_bits(X509_get0_pubkey(c))},
      {"body", rec.body},
      {"chain", rec.chain},
      {"csr", rec.csr},
      {"deleted", false},
      {"description", rec.description},
      {"dateCreated", iso(rec.created)},
      {"distinguishedName", "CN=" + cn},
      {"dnsProvider", nullptr},
      {"dnsProviderId", nullptr},
      {"extensions", {{"subAltNames", {{"names", json::array{}}}}}},
      {"user", {{"id", rec.user_id}, {"username", rec.username}, {"email", rec.username}}},
      {"issuer", issuer},
      {"name", (san ? "SAN-" : "") + name_cn + "-" + issuer + "-" + ymd(nb) + "-" + ymd(na)},
      {"cn", cn},
      {"commonName", cn},
      {"notBefore", iso(nb)},
      {"notAfter", iso(na)},
      {"validityStart", iso(nb)},
      {"validityEnd", iso(na)},
      {"owner", rec.owner},
      {"san", san},
      {"serial", serial},
      {"serialHex", rec.serial_hex},
      {"signingAlgorithm", "sha256"},
      {"keyType", EVP_PKEY_get_base_id(X509_get0_pubkey(c)) == EVP_PKEY_RSA ? "RSA2048" : "ECCPRIME256V1"},
      {"status", nullptr},
      {"hasPrivateKey", false},
      {"domains", std::move(domains)},
      {"destinations", std::move(destinations)},
      {"notifications", std::move(notifications)},
      {"replaces", std::move(replaces)},
      {"replacedBy", std::move(replaced_by)},
      {"roles", std::move(roles)},
      {"endpoints", json::array{}},
      {"authority", {{"id", a.id}, {"name", a.name}, {"owner", a.owner}, {"active", a.active}}},
      {"rotationPolicy", {{"name", "default"}}},
  };
  if (nested) {
    out.erase("replaces");
    out.erase("replacedBy");
  }
  return out;
}

TestHttpsServer::Reply LemurTestServer::get_certificate(std::int64_t id) {
  auto it = certificates_.find(id);
  if (it == certificates_.end()) return message(404, "No data found");
  return json_reply(200, certificate_json(it->second));
}

TestHttpsServer::Reply LemurTestServer::get_pending(std::int64_t id) {
  auto it = pending_.find(id);
  if (it == pending_.end()) return message(404, "No data found");
  Pending& p = it->second;
  ++p.polls;
  // The celery task (fetch_acme_cert) resolves it in the background; here: after N polls.
  if (!p.resolved_cert && p.polls >= p.polls_needed) {
    std::string error;
    auto out = issue(p.csr, p.request, authorities_.at(p.authority), p.id, error);
    if (!out) return message(500, error);
    p.resolved_cert = out->at("id").as_int64();
  }
  return json_reply(200, json::object{{"id", p.id},
                                      {"owner", p.request.at("owner")},
                                      {"csr", p.csr},
                                      {"numberAttempts", p.polls},
                                      {"resolved", p.resolved_cert != 0},
                                      {"resolvedCertId", p.resolved_cert ? json::value(p.resolved_cert) : nullptr},
                                      {"status", nullptr},
                                      {"authority", {{"name", p.authority}}}});
}

TestHttpsServer::Reply LemurTestServer::cancel_pending(std::int64_t id) {
  auto it = pending_.find(id);
  if (it == pending_.end()) return message(404, "Cannot find specified pending certificate");
  cancelled_.push_back(id);
  pending_.erase(it);
  return Reply{.status = 204};
}

// POST /api/1/keys (lemur/api_keys/schemas.py ApiKeyInputSchema): name, ttl and a nested user
// with id, username and email; a user given by id alone fails its UserNestedOutputSchema load.
TestHttpsServer::Reply LemurTestServer::create_key(const Request& request, const User& caller) {
  boost::system::error_code ec;
  json::value parsed = json::parse(request.body, ec);
  if (ec || !parsed.is_object())
    return message(400, "The browser (or proxy) sent a request that this server could not understand.");
  const auto& in = parsed.as_object();
  Errors errors;
  if (!in.contains("name") || !in.at("name").is_string()) errors.field("name", kMissingField);
  if (!in.contains("ttl") || !as_int(in.if_contains("ttl"))) errors.field("ttl", kMissingField);
  const json::object* u = in.contains("user") ? in.at("user").if_object() : nullptr;
  if (!u) {
    errors.field("user", kMissingField);
  } else {
    json::object sub;
    for (const char* k : {"id", "username", "email"})
      if (!u->contains(k)) sub[k] = kMissingField;
    if (!sub.empty()) errors.field("user", std::move(sub));
  }
  if (!errors.empty()) return errors.reply();
  const auto uid = *as_int(u->if_contains("id"));
  if (!users_.count(uid)) return message(400, "Unable to find user with id: " + std::to_string(uid));
  const bool admin = std::find(caller.roles.begin(), caller.roles.end(), "admin") != caller.roles.end();
  if (!admin && caller.id != uid) return message(403, "You are not authorized to create a key for this user.");
  const int ttl = static_cast<int>(*as_int(in.if_contains("ttl")));
  ApiKey key{next_key_id_++, uid, ttl, unix_now(), false};
  keys_[key.id] = key;
  json::object payload{{"iat", key.issued_at}, {"sub", uid}, {"aid", key.id}};
  if (ttl != -1) payload["exp"] = key.issued_at + std::int64_t{ttl} * 86400;
  return json_reply(200, json::object{{"jwt", sign_jwt(payload, secret_)}});
}

json::object LemurTestServer::authority_json(const Authority& a) const {
  return json::object{{"id", a.id},          {"name", a.name},          {"owner", a.owner},
                      {"active", a.active},  {"description", ""},       {"plugin", {{"slug", "cryptography-issuer"}}}};
}

// GET /api/1/authorities?filter=name;X: Lemur's filter is a case-insensitive substring match.
TestHttpsServer::Reply LemurTestServer::list_authorities(const std::string& query) {
  std::string filter = query_param(query, "filter");
  std::string field, term;
  if (auto semi = filter.find(';'); semi != std::string::npos) {
    field = filter.substr(0, semi);
    term = filter.substr(semi + 1);
  }
  if (!filter.empty() && field != "name" && field != "id") return flask_page(500);
  json::array items;
  for (const auto& [name, a] : authorities_) {
    if (field == "name" && lower(name).find(lower(term)) == std::string::npos) continue;
    if (field == "id" && std::to_string(a.id).find(term) == std::string::npos) continue;
    items.push_back(authority_json(a));
  }
  const auto total = static_cast<std::int64_t>(items.size());
  return json_reply(200, json::object{{"items", std::move(items)}, {"total", total}});
}

TestHttpsServer::Reply LemurTestServer::get_authority(std::int64_t id) {
  for (const auto& [name, a] : authorities_)
    if (a.id == id) return json_reply(200, authority_json(a));
  return message(404, "No data found");
}

void LemurTestServer::delete_api_key(const std::string& token) {
  auto dot = token.find('.');
  auto payload = json::parse(*b64url_decode(token.substr(dot + 1, token.rfind('.') - dot - 1))).as_object();
  std::lock_guard lock(mutex_);
  keys_.erase(payload.at("aid").as_int64());
}

void LemurTestServer::delete_user(std::int64_t user) {
  std::lock_guard lock(mutex_);
  users_.erase(user);
}

TestHttpsServer::Reply LemurTestServer::list_labelled(const std::string& query, bool destinations) {
  const auto& table = destinations ? destinations_ : notifications_;
  std::string filter = query_param(query, "filter");
  std::string field, term;
  if (auto semi = filter.find(';'); semi != std::string::npos) {
    field = filter.substr(0, semi);
    term = filter.substr(semi + 1);
  }
  if (!filter.empty() && field != "label" && field != "id")
    return flask_page(500);  // AttrNotFound
  std::size_t count = 10;
  if (std::string c = query_param(query, "count"); !c.empty()) count = std::stoul(c);
  json::array items;
  for (const auto& [id, label] : table) {
    if (field == "label" && lower(label).find(lower(term)) == std::string::npos) continue;
    if (field == "id" && std::to_string(id).find(term) == std::string::npos) continue;
    if (items.size() < count) items.push_back(json::object{{"id", id}, {"label", label}, {"active", true}});
  }
  const auto total = static_cast<std::int64_t>(items.size());
  return json_reply(200, json::object{{"items", std::move(items)}, {"total", total}});
}

}  // namespace certagent::test
