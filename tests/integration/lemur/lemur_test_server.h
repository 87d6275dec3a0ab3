#pragma once
// A Lemur 1.9 stand-in for tests (real Lemur needs PostgreSQL, Redis and Celery): HTTPS on
// 127.0.0.1 and a port of its own (tests/support/test_https_server), its own CAs, and the parts
// of the REST API a broker client uses, reproduced from Lemur's sources and answering like the
// real server in every row of TESTING.md "Netflix Lemur 1.9: how the real server answers":
//
//  auth (lemur/auth/service.py login_required): 401 {"message":"Missing authorization header"}
//    without the header; 403 "Token is invalid" (not a JWT, bad signature), "Token has expired"
//    (exp, or an API key past its ttl), "Token has been revoked", "User is not currently
//    active"; 500 for a deleted key (its row gone) or an unknown user. Tokens are real HS256
//    JWTs {"sub": user, "aid": key, "iat", ["exp"]} signed with the server's secret.
//  POST /api/1/certificates (certificates/views.py + schemas.py CertificateInputSchema): keys
//    camelCase -> snake_case; field errors as {"message":"Validation Error.","reasons":{field:
//    first message}}, schema-level errors as {"reasons":{"Schema":{"rule":[...]}}}; an unknown
//    id in replaces/destinations/notifications/roles: 400 {"replaces":{"_schema":"Unable to find
//    <class '...'> with id: N"}}; an unknown authority (name or id) or one sent as a string: 500;
//    no validity fields: 500 "`validity_start` is required ..."; a body that is not JSON: 400
//    "The browser (or proxy) sent a request ..."; then 403 "You are not authorized to create a
//    new certificate." (read-only user) and "You are not authorized to use the authority: X".
//  Issuance signs the CSR (its self-signature checked) for exactly the CSR's names, with the
//    requested validityStart/validityEnd, directly by the root, as the cryptography issuer
//    does: the leaf carries only the SAN extension and `chain` is the root itself. The answer
//    is the certificate object in camelCase (id, body, chain, csr echoed, description "" when
//    none, serial in decimal, serialHex, dateCreated, distinguishedName, extensions, user, and
//    replaces/replacedBy as full nested certificate objects).
//  Pending authorities answer with a pending certificate (no body, its own id space);
//    GET /api/1/pending_certificates/N resolves it after a set number of polls (resolved,
//    resolvedCertId); DELETE cancels it (204). GET /api/1/certificates/N.
//  GET /api/1/destinations|notifications?filter=label;X and /api/1/authorities?filter=name;X
//    (case-insensitive substring, as lemur/database.py filter), GET /api/1/authorities/N,
//    POST /api/1/keys ({"name","ttl","user":{"id","username","email"}} -> {"jwt"}),
//    GET /api/1/healthcheck ("ok", or "db check failed" with 200, and then every other
//    authenticated request answers 500). Unknown routes: 404 {"error": ...}; wrong method:
//    405 {"message": ...}; unhandled errors: 500 {"message":"Internal Server Error"}.
//  Faults: scripted answers (500, 429/503 with Retry-After, any status and body), delays.
//
// Deliberate limits: only issuance from a CSR (a request without csr is refused with 400,
// where real Lemur would generate the key itself); no pagination beyond `count`.

#include "tests/support/test_https_server.h"
#include "tests/support/test_pki.h"

#include <boost/json.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace certagent::test {

class LemurTestServer {
 public:
  struct Authority {
    std::int64_t id{0};
    std::string name;
    std::string owner;                 // an email; the role of that name may use the authority
    std::vector<std::string> roles;    // further roles that may use it
    bool active{true};
    int pending_polls{-1};             // >= 0: answers pending; resolved after that many polls
  };
  struct Issued {                      // one certificate Lemur created
    std::int64_t id{0};
    std::string owner;
    std::string authority;
    std::string description;
    bool notify{true};
    std::vector<std::int64_t> replaces;
    std::vector<std::int64_t> destinations;
    std::vector<std::int64_t> notifications;
    std::vector<std::string> roles;    // names, as sent
    std::string serial_hex;            // uppercase, as Lemur's Hex field
    std::string body;
    std::string chain;
    std::string csr;                   // echoed back, as Lemur does
    std::int64_t created{0};
    std::int64_t user_id{0};           // who created it
    std::string username;
    std::int64_t from_pending{0};      // pending certificate id it resolved, if any
  };
  struct Fault {                       // a scripted answer for the next matching requests
    std::string method;                // empty: any
    std::string path_prefix;           // e.g. "/api/1/certificates"
    TestHttpsServer::Reply reply;
    int count{1};
  };

  LemurTestServer();
  ~LemurTestServer();
  LemurTestServer(const LemurTestServer&) = delete;
  LemurTestServer& operator=(const LemurTestServer&) = delete;

  std::string url() const { return server_->url(); }
  int port() const { return server_->port(); }
  std::string tls_ca_pem() const { return tls_ca_.cert_pem(); }     // broker ca_bundle
  std::string issuer_root_pem() const { return root_.cert_pem(); }  // trust_bundle of issued certs
  std::string intermediate_pem() const { return intermediate_.cert_pem(); }

  // Users, roles and API keys (POST /api/1/keys in real Lemur).
  std::int64_t add_user(const std::string& username, std::vector<std::string> roles, bool active = true);
  void set_user_active(std::int64_t user, bool active);
  // ttl_days -1: no expiry. issued_at defaults to now.
  std::string create_api_key(std::int64_t user, int ttl_days = -1,
                             std::optional<std::chrono::system_clock::time_point> issued_at = std::nullopt);
  void revoke_api_key(const std::string& token);
  // The key's row deleted (Lemur then answers 500 for it), or its user's.
  void delete_api_key(const std::string& token);
  void delete_user(std::int64_t user);
  // A token with an "exp" in the past (a user login token that expired).
  std::string expired_login_token(std::int64_t user);
  // A well-formed JWT signed with another secret.
  std::string foreign_token(std::int64_t user);

  Authority& add_authority(const std::string& name, const std::string& owner, std::vector<std::string> roles = {});
  // >= 0: the authority answers with pending certificates, resolved after that many polls.
  void set_pending(const std::string& authority, int polls);
  std::int64_t add_destination(const std::string& label);
  std::int64_t add_notification(const std::string& label);
  void add_role(const std::string& name);

  void add_fault(Fault fault);
  void set_delay(std::chrono::milliseconds delay);  // before every answer
  // Every answer carries a Date header, as Lemur's web server sends; this moves its clock.
  void set_clock_ahead(std::chrono::seconds ahead);
  void set_db_down(bool down);
  // Called (on the server thread) after each certificate is created.
  void on_issued(std::function<void(const Issued&)> callback);

  // Records, for assertions.
  std::vector<Issued> issued() const;
  std::optional<Issued> certificate(std::int64_t id) const;
  std::optional<std::int64_t> replaced_by(std::int64_t id) const;
  std::vector<boost::json::object> posted() const;                   // raw POST bodies, in order
  std::vector<std::string> requests() const;                         // "METHOD target", in order
  std::vector<std::int64_t> cancelled_pending() const;
  int pending_polls(std::int64_t pending_id) const;
  std::string last_authorization() const;

 private:
  using Reply = TestHttpsServer::Reply;
  using Request = TestHttpsServer::Request;
  struct User {
    std::int64_t id{0};
    std::string username;
    std::vector<std::string> roles;
    bool active{true};
  };
  struct ApiKey {
    std::int64_t id{0};
    std::int64_t user{0};
    int ttl_days{-1};
    std::int64_t issued_at{0};
    bool revoked{false};
  };
  struct Pending {
    std::int64_t id{0};
    std::string csr;
    boost::json::object request;       // the validated input
    std::string authority;
    int polls{0};
    int polls_needed{0};
    std::int64_t resolved_cert{0};
    bool cancelled{false};
  };
  struct Auth {
    std::optional<Reply> error;
    const User* user{nullptr};
  };

  Reply handle(const Request& request);
  Auth authenticate(const Request& request);
  Reply create_certificate(const Request& request, const User& user);
  Reply get_pending(std::int64_t id);
  Reply cancel_pending(std::int64_t id);
  Reply get_certificate(std::int64_t id);
  Reply list_labelled(const std::string& query, bool destinations);
  Reply create_key(const Request& request, const User& caller);
  Reply list_authorities(const std::string& query);
  Reply get_authority(std::int64_t id);
  boost::json::object authority_json(const Authority& a) const;
  // Signs and records a certificate; returns its output object or an error message.
  std::optional<boost::json::object> issue(const std::string& csr_pem, const boost::json::object& input,
                                           const Authority& authority, std::int64_t from_pending, std::string& error);
  // nested: as inside replaces/replacedBy (without those two).
  boost::json::object certificate_json(const Issued& cert, bool nested = false) const;
  std::string sign_jwt(const boost::json::object& payload, const std::string& secret) const;

  TestCert tls_ca_, tls_leaf_, root_, intermediate_;
  std::string secret_;
  mutable std::mutex mutex_;
  std::map<std::int64_t, User> users_;
  std::map<std::int64_t, ApiKey> keys_;
  std::map<std::string, Authority> authorities_;
  std::map<std::int64_t, std::string> destinations_, notifications_;
  std::set<std::string> roles_;
  std::map<std::int64_t, Issued> certificates_;
  std::map<std::int64_t, std::int64_t> replaced_by_;
  std::map<std::int64_t, Pending> pending_;
  std::vector<std::int64_t> cancelled_;
  std::vector<Fault> faults_;
  std::vector<boost::json::object> posted_;
  std::vector<std::string> requests_;
  std::string last_authorization_;
  std::chrono::milliseconds delay_{0};
  std::chrono::seconds clock_ahead_{0};
  bool db_down_{false};
  std::function<void(const Issued&)> on_issued_;
  std::int64_t next_id_{100};
  std::int64_t next_pending_id_{5000};
  std::int64_t next_key_id_{1};
  std::unique_ptr<TestHttpsServer> server_;  // last: stopped first
};

}  // namespace certagent::test
