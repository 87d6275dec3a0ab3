#include "tests/support/fake_renewer.h"

#include "core/crypto/csr.h"
#include "core/crypto/ossl_ptr.h"
#include "core/crypto/x509.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <stdexcept>

namespace certagent::test {
namespace {

void check(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string("fake renewer: ") + what);
}

void set_time(ASN1_TIME* field, SystemTime t) {
  check(ASN1_TIME_set(field, std::chrono::system_clock::to_time_t(t)) != nullptr, "ASN1_TIME_set");
}

void set_random_serial(X509* c) {
  unsigned char bytes[16];
  check(RAND_bytes(bytes, sizeof bytes) == 1, "RAND_bytes");
  bytes[0] &= 0x7f;
  crypto::BignumPtr bn(BN_bin2bn(bytes, sizeof bytes, nullptr));
  check(BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(c)) != nullptr, "serial");
}

}  // namespace

struct FakeRenewer::Ca {
  crypto::EvpPkeyPtr key;
  crypto::X509Ptr cert;
};

FakeRenewer::FakeRenewer(const Clock& clock) : clock_(clock), ca_(std::make_unique<Ca>()) {
  ca_->key.reset(EVP_EC_gen("P-256"));
  check(ca_->key != nullptr, "EVP_EC_gen");
  ca_->cert.reset(X509_new());
  X509* c = ca_->cert.get();
  check(X509_set_version(c, 2) == 1, "version");
  set_random_serial(c);
  // Valid for decades around the clock as it starts, so tests may step it far both ways.
  set_time(X509_getm_notBefore(c), clock.now() - std::chrono::hours(24 * 365 * 10));
  set_time(X509_getm_notAfter(c), clock.now() + std::chrono::hours(24 * 365 * 20));
  X509_NAME* name = X509_get_subject_name(c);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("fake broker CA"),
                             -1, -1, 0);
  check(X509_set_issuer_name(c, name) == 1, "issuer");
  check(X509_set_pubkey(c, ca_->key.get()) == 1, "pubkey");
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, c, c, nullptr, nullptr, 0);
  for (auto [nid, value] : {std::pair{NID_basic_constraints, "critical,CA:TRUE"},
                            std::pair{NID_key_usage, "critical,keyCertSign,cRLSign"},
                            std::pair{NID_subject_key_identifier, "hash"}}) {
    crypto::X509ExtPtr ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
    check(ext && X509_add_ext(c, ext.get(), -1) == 1, "CA extension");
  }
  check(X509_sign(c, ca_->key.get(), EVP_sha256()) > 0, "sign CA");
  root_pem_ = crypto::to_pem(c);
}

FakeRenewer::~FakeRenewer() = default;

void FakeRenewer::hold(const boost::asio::any_io_executor& executor) {
  gate_ = std::make_shared<boost::asio::steady_timer>(executor, boost::asio::steady_timer::time_point::max());
}

void FakeRenewer::release() {
  if (gate_) gate_->cancel();
  gate_.reset();
}

boost::asio::awaitable<Result<renewers::IssueResult>> FakeRenewer::issue(renewers::IssueRequest request) {
  ++calls;
  requests.push_back(request.cert_name);
  if (auto gate = gate_) co_await gate->async_wait(boost::asio::as_tuple(boost::asio::use_awaitable));
  if (fail) {
    if (auto error = fail()) co_return *error;
  }
  auto req = crypto::parse_csr(request.csr_pem);
  if (!req) co_return req.error();
  auto names = crypto::csr_names(req->get());
  if (!names) co_return names.error();
  crypto::X509Ptr leaf(X509_new());
  X509* c = leaf.get();
  check(X509_set_version(c, 2) == 1, "version");
  set_random_serial(c);
  const SystemTime not_before = clock_.now() + broker_ahead - backdate;
  set_time(X509_getm_notBefore(c), not_before);
  set_time(X509_getm_notAfter(c), not_before + lifetime);
  if (!names->common_name.empty())
    X509_NAME_add_entry_by_txt(X509_get_subject_name(c), "CN", MBSTRING_UTF8,
                               reinterpret_cast<const unsigned char*>(names->common_name.c_str()), -1, -1, 0);
  check(X509_set_issuer_name(c, X509_get_subject_name(ca_->cert.get())) == 1, "issuer");
  if (auto r = crypto::copy_public_key(req->get(), c); !r) co_return r.error();
  auto san = crypto::subject_alt_name_extension(*names, false);
  if (!san) co_return san.error();
  check(X509_add_ext(c, san->get(), -1) == 1, "SAN");
  check(X509_sign(c, ca_->key.get(), EVP_sha256()) > 0, "sign leaf");
  ++issued;
  renewers::IssueResult result;
  result.chain_pem = crypto::to_pem(c);
  result.renew_hint = renew_hint;
  if (send_date) result.broker_time = std::chrono::floor<std::chrono::seconds>(clock_.now() + broker_ahead);
  co_return result;
}

}  // namespace certagent::test
