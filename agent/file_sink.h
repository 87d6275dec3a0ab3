#pragma once
// Writes certificate generations to disk in the `..data` layout (DESIGN.md "Files on disk"):
//
//   <dir>/..data        -> ..<UTC timestamp>.<serial hex>   swapped by rename
//   <dir>/cert.pem      -> ..data/cert.pem      (chain.pem, fullchain.pem, key.pem, bundle.pem,
//                                                meta.json likewise; created once, never change)
//
// A reader that opens bundle.pem, or resolves ..data once and reads relative to that directory,
// always sees one consistent set, even if the writer is killed at any instruction.
//
// Generation names: `..2026-11-22T10-15-30.123456Z.<serial>` (UTC, microseconds). Each new name
// sorts after every existing generation (the timestamp is bumped past the newest one when the
// clock is behind), so name order is commit order.
//
// With `formats: [pkcs12]` each generation also holds keystore.p12 (key + chain, 0600) and
// truststore.p12 (the certificate's trust bundle), linked at the top level like the others.
//
// Foreign content in <dir> is left alone, except: a regular file (or other non-directory) at
// ..data or at one of the six link names is replaced atomically by our symlink, since it cannot
// be a valid generation; a directory there is an error. Generation directories that were never
// swapped in (newer than the current one, or any when ..data is missing) are leftovers of a
// crashed commit and are removed, as are our stale temp symlinks.

#include "core/config/config.h"
#include "core/fs_util.h"
#include "core/material.h"
#include "core/result.h"

#include <sys/types.h>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace certagent {

// What the PKCS#12 outputs need besides the material: the trust bundle, and the password when
// it is sealed (the caller unseals it); a password from a file is read by the sink at each write.
struct Pkcs12Inputs {
  std::string_view alias;       // the keystore entry's friendly name: the certificate's name
                                // (empty: the directory's name)
  std::string_view trust_pem;
  const Secret* password{nullptr};
};

class FileSink {
 public:
  explicit FileSink(config::FilesConfig files);

  // Writes `m` as a new generation and swaps it in. Checks first that the key matches the leaf.
  // On any error before the swap the partial generation is removed and the current one is
  // untouched. Returns the new generation's directory. Only one writer per <dir>: a second one
  // (another process) gets an error instead of interleaving.
  [[nodiscard]] Result<std::filesystem::path> commit(const Material& m, const Pkcs12Inputs& pkcs12 = {});

  // The current generation, read through one resolution of ..data. nullopt when there is none
  // (no ..data); an Error when it is corrupt, unreadable or the key does not match the leaf.
  [[nodiscard]] Result<std::optional<Material>> load_current() const;

  // The configured output files the current generation lacks (formats changed since it was
  // written); empty when there is no current generation.
  [[nodiscard]] std::vector<std::string> missing_outputs() const;

  // Removes ..data, our links and every generation (files.remove_on_expiry).
  [[nodiscard]] Result<> remove_all_generations();

  const config::FilesConfig& config() const { return files_; }

  // The six PEM-layout names in each generation and at the top level.
  static const std::vector<std::string>& file_names();
  // keystore.p12 and truststore.p12 (formats: [pkcs12]).
  static const std::vector<std::string>& pkcs12_file_names();
  // What this sink writes: file_names(), plus the PKCS#12 ones when configured.
  std::vector<std::string> output_names() const;
  // Whether `name` has the form of one of our generation directories.
  static bool is_generation_name(std::string_view name);

 private:
  config::FilesConfig files_;
};

}  // namespace certagent
