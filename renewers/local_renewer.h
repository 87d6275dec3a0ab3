#pragma once
// The embedded development CA (broker type "local"). Never for production: it logs so at every
// start. Its root lives in <state_dir>/local-ca/ (key.pem 0600, root.pem 0644), is created on
// first use and reused afterwards; root.pem is the default trust bundle for its certificates.
// Signing is in-process and takes well under a millisecond, so issue() runs on the caller's
// thread.

#include "core/clock.h"
#include "core/crypto/ossl_ptr.h"
#include "core/result.h"
#include "renewers/renewer.h"

#include <filesystem>
#include <memory>
#include <string>

namespace certagent::renewers {

class LocalRenewer final : public Renewer {
 public:
  static constexpr std::string_view kRootCommonName = "certagent development CA (not for production)";

  // <state_dir>/local-ca and the root certificate in it.
  static std::filesystem::path ca_dir(const std::filesystem::path& state_dir);
  static std::filesystem::path root_path(const std::filesystem::path& state_dir);

  // Loads the CA from <state_dir>/local-ca, creating it when the directory is missing or
  // empty. A present but unreadable, corrupt, incomplete or mismatched CA is an error naming
  // the file: it is never replaced silently (that would break every certificate it issued).
  // `clock` may be null (system clock).
  [[nodiscard]] static Result<std::unique_ptr<LocalRenewer>> open(const std::filesystem::path& state_dir,
                                                                  const Clock* clock);
  [[nodiscard]] static Result<std::unique_ptr<LocalRenewer>> open(const RenewerContext& context);

  // Makes sure root.pem exists (creating the CA if needed) and returns its path: the daemon's
  // default trust bundle for certificates of a local broker.
  [[nodiscard]] static Result<std::filesystem::path> ensure_ca(const std::filesystem::path& state_dir,
                                                               const Clock* clock);

  std::string_view type() const override { return "local"; }

  boost::asio::awaitable<Result<IssueResult>> issue(IssueRequest request) override;

  // The same, synchronously (benchmarks, tests, and the coroutine above).
  //
  // The leaf gets exactly the requested names (which must match the CSR's), a random 128-bit
  // serial, EKU serverAuth+clientAuth, keyUsage digitalSignature (+keyEncipherment for RSA),
  // SKI/AKI. not_before is backdated by a tenth of the lifetime, at most one minute, so a peer
  // whose clock lags a little accepts the certificate at once while it still passes the
  // commit-time check (not_before <= now) with any clock; not_after = not_before + lifetime
  // exactly, so the issued lifetime never exceeds what was asked (nor max_lifetime).
  [[nodiscard]] Result<IssueResult> issue_now(const IssueRequest& request);

  const std::filesystem::path& root_file() const { return root_file_; }
  X509* root() const { return root_.get(); }

 private:
  LocalRenewer(crypto::EvpPkeyPtr key, crypto::X509Ptr root, std::filesystem::path root_file,
               const Clock* clock);

  crypto::EvpPkeyPtr key_;
  crypto::X509Ptr root_;
  SystemTime root_not_after_;
  std::filesystem::path root_file_;
  const Clock* clock_;
};

}  // namespace certagent::renewers
