#include "renewers/broker_keys.h"

#include "core/encoding.h"
#include "core/logging.h"
#include "renewers/identity_calls.h"
#include "tpm/identity.h"

#include <openssl/crypto.h>

#include <fstream>
#include <sstream>

namespace certagent::renewers {

Result<std::vector<std::uint8_t>> broker_hmac(tpm::Identity& identity, const std::string& name,
                                              const std::filesystem::path& key_file, const KeyFileParser& parse,
                                              std::span<const std::uint8_t> data) {
  auto mac = identity.hmac(name, data);
  if (mac) return mac;
  std::error_code ec;
  if (key_file.empty() || !std::filesystem::exists(key_file, ec))
    return with_context("HMAC key " + name + " is not in the identity (run `certagent enroll`)", mac.error());
  std::string text;
  {
    std::ifstream in(key_file, std::ios::binary);
    if (!in)
      return config_error(Cause::local_config, "secret",
                          "cannot read key file " + key_file.string() +
                              ": seal it with `certagent enroll`, or make it readable by the daemon's user");
    std::ostringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }
  auto key = parse(text);
  OPENSSL_cleanse(text.data(), text.size());
  if (!key)
    return with_context("key file " + key_file.string(),
                        config_error(Cause::local_config, "secret", key.error().message + ": fix the key file"));
  auto imported = identity.import_hmac_key(name, *key);
  OPENSSL_cleanse(key->data(), key->size());
  if (!imported) return with_context("importing HMAC key " + name, imported.error());
  log::get("renewer")->warn("event=hmac_key_imported name={} file={} hint={}", name, log::quote(key_file.string()),
                            log::quote("run `certagent enroll` to seal it and delete the file"));
  return identity.hmac(name, data);
}

boost::asio::awaitable<Result<std::vector<std::uint8_t>>> broker_hmac_async(
    tpm::Identity& identity, boost::asio::any_io_executor ex, std::string name, std::filesystem::path key_file,
    KeyFileParser parse, std::vector<std::uint8_t> data, tpm::Identity::Deadline deadline) {
  auto mac = co_await identity_hmac(identity, ex, name, data, deadline);
  if (mac) co_return mac;
  // Not in the identity yet (no enroll): import it from the file, once, as broker_hmac does.
  co_return broker_hmac(identity, name, key_file, parse, data);
}

Result<std::vector<std::uint8_t>> parse_hex_key_text(std::string_view text) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front()))) text.remove_prefix(1);
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.remove_suffix(1);
  if (text.empty() || text.size() % 2 != 0) return make_error("expected an even number of hex digits");
  auto key = hex_decode(text);
  if (!key) return make_error("expected hex digits only");
  const auto* bytes = reinterpret_cast<const std::uint8_t*>(key->data());
  return std::vector<std::uint8_t>(bytes, bytes + key->size());
}

}  // namespace certagent::renewers
