#pragma once
// The trust bundles the certificate loops validate against, re-read whenever their file
// changes (CA rotation without a restart). Used on the daemon's io_context only.

#include "core/crypto/ossl_ptr.h"
#include "core/result.h"

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>

namespace certagent {

// The trust bundle of one or more certificates.
class TrustBundle {
 public:
  explicit TrustBundle(std::filesystem::path path) : path_(std::move(path)) {}
  // The store for the file as it is now; reloads when mtime, size or inode changed.
  [[nodiscard]] Result<X509_STORE*> current();
  const std::string& pem() const { return pem_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  crypto::X509StorePtr store_;
  std::string pem_;
  std::int64_t mtime_ns_{-1};
  std::uintmax_t size_{0};
  std::uint64_t inode_{0};
};

// One TrustBundle per file for the loops of one configuration: parsed anchors cost kilobytes,
// and a thousand certificates usually share one or two bundles.
class TrustBundles {
 public:
  std::shared_ptr<TrustBundle> get(const std::filesystem::path& path);

 private:
  std::map<std::filesystem::path, std::weak_ptr<TrustBundle>> bundles_;
};

}  // namespace certagent
