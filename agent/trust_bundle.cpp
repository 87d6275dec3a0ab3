#include "agent/trust_bundle.h"

#include "core/crypto/x509.h"
#include "core/logging.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>

namespace certagent {

Result<X509_STORE*> TrustBundle::current() {
  auto logger = log::get("agent");
  struct stat st{};
  if (::stat(path_.c_str(), &st) != 0) {
    if (store_) {
      // Keep the last good anchors: a bundle being replaced non-atomically must not fail a
      // rotation, and an operator removing it by mistake must not stop renewals.
      logger->warn("event=trust_bundle_unreadable path={} action=keeping_previous",
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
      logger->warn("event=trust_bundle_invalid path={} error={} action=keeping_previous",
                   log::quote(path_.string()), log::quote(store.error().message));
      return store_.get();
    }
    return with_context("trust bundle " + path_.string(), store.error());
  }
  if (store_) logger->info("event=trust_bundle_reloaded path={}", log::quote(path_.string()));
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

}  // namespace certagent
