#include "reloaders/haproxy_reloader.h"

#include "core/logging.h"
#include "core/async/watchdog.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <openssl/evp.h>
#include <sys/un.h>

#include <fstream>
#include <sstream>

namespace certagent::reloaders {
namespace asio = boost::asio;
using asio::local::stream_protocol;
using std::chrono::milliseconds;
using std::chrono::steady_clock;

namespace {

constexpr std::size_t kMaxAnswerBytes = 256 * 1024;
constexpr std::size_t kMaxSideFileBytes = 1024 * 1024;  // .issuer / .ocsp
// An abort must still go out when the reload's own budget is spent (an open transaction
// would block every later `set ssl cert` on this HAProxy): it gets at least this long, the
// only time a reload may overrun its timeout.
constexpr milliseconds kAbortGrace{250};

bool contains(std::string_view text, std::string_view what) { return text.find(what) != std::string_view::npos; }

// An answer for a log line: one line, bounded. HAProxy's answers never echo the payload.
std::string summarize(std::string_view answer) {
  std::string out;
  bool space = false;
  for (char c : answer) {
    if (c == '\n' || c == '\r' || c == '\t' || c == ' ') {
      space = !out.empty();
      continue;
    }
    if (space) out += ' ';
    space = false;
    out += static_cast<unsigned char>(c) < 0x20 ? '?' : c;
  }
  if (out.size() > 300) out = out.substr(0, 297) + "...";
  return out.empty() ? "(empty answer)" : out;
}

Result<std::string> read_side_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error("cannot read " + path.string());
  std::string data;
  data.resize(kMaxSideFileBytes + 1);
  in.read(data.data(), static_cast<std::streamsize>(data.size()));
  data.resize(static_cast<std::size_t>(in.gcount()));
  if (data.size() > kMaxSideFileBytes) return make_error(path.string() + " is larger than 1 MiB");
  if (data.empty()) return make_error(path.string() + " is empty");
  return Result<std::string>(boost::system::in_place_value, std::move(data));
}

std::string base64(std::string_view der) {
  std::string out(4 * ((der.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(der.data()), static_cast<int>(der.size()));
  out.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  return out;
}

bool transaction_answer_ok(std::string_view answer) {
  return contains(answer, "Transaction created") || contains(answer, "Transaction updated");
}

}  // namespace

Secret strip_blank_lines(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t nl = text.find('\n', pos);
    std::string_view line = text.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
    pos = nl == std::string_view::npos ? text.size() : nl + 1;
    std::string_view trimmed = line;
    while (!trimmed.empty() && (trimmed.back() == '\r' || trimmed.back() == ' ' || trimmed.back() == '\t')) {
      trimmed.remove_suffix(1);
    }
    if (trimmed.empty()) continue;
    out.append(trimmed);
    out += '\n';
  }
  if (!out.empty()) out.pop_back();  // the command adds the line ends around the payload
  return Secret(std::move(out));
}

Secret haproxy_payload(const Material& material) {
  std::string joined;
  joined.reserve(material.cert_pem.size() + material.chain_pem.size() + material.key_pem.size() + 2);
  joined += material.cert_pem;
  joined += '\n';
  joined += material.chain_pem;
  joined += '\n';
  joined.append(material.key_pem.view());
  Secret wiped(std::move(joined));  // wipes the joined copy when it goes
  return strip_blank_lines(wiped.view());
}

std::vector<std::string> parse_show_ssl_cert(std::string_view answer) {
  std::vector<std::string> names;
  std::istringstream in{std::string(answer)};
  std::string line;
  while (std::getline(in, line)) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    if (line[0] == '*') line.erase(0, 1);
    if (line.empty()) continue;  // a lone '*' (found by fuzz_formats)
    names.push_back(line);
  }
  return names;
}

asio::awaitable<Result<std::string>> haproxy_admin_command(const std::filesystem::path& socket,
                                                           std::string_view command, Deadline deadline) {
  if (socket.native().size() >= sizeof(sockaddr_un::sun_path)) {
    co_return make_error("admin socket path is too long: " + socket.string());
  }
  auto ex = co_await asio::this_coro::executor;
  auto sock = std::make_shared<stream_protocol::socket>(ex);
  Watchdog watchdog(ex, deadline, [sock] {
    boost::system::error_code ignored;
    sock->close(ignored);
  });
  auto [cec] = co_await sock->async_connect(stream_protocol::endpoint(socket.native()),
                                            asio::as_tuple(asio::use_awaitable));
  if (cec) {
    co_return make_error(watchdog.fired() ? "connecting to " + socket.string() + " timed out"
                                          : "cannot connect to admin socket " + socket.string() + ": " +
                                                cec.message());
  }
  auto [wec, written] = co_await asio::async_write(*sock, asio::buffer(command.data(), command.size()),
                                                   asio::as_tuple(asio::use_awaitable));
  if (wec) {
    co_return make_error(watchdog.fired() ? "admin socket timed out" : "writing to admin socket: " + wec.message());
  }
  std::string answer;
  auto [rec, n] = co_await asio::async_read(*sock, asio::dynamic_buffer(answer, kMaxAnswerBytes),
                                            asio::as_tuple(asio::use_awaitable));
  if (rec && rec != asio::error::eof) {
    co_return make_error(watchdog.fired() ? "admin socket timed out waiting for the answer"
                                          : "reading from admin socket: " + rec.message());
  }
  co_return Result<std::string>(boost::system::in_place_value, std::move(answer));
}

HaproxyReloader::HaproxyReloader(const config::ReloaderConfig& config, const HaproxyReloaderConfig& haproxy,
                                 const ReloaderContext& context)
    : ReloaderBase("haproxy", config, context),
      haproxy_(haproxy),
      socket_mutex_(named_mutex("haproxy:" + std::filesystem::absolute(haproxy.admin_socket).lexically_normal().string())) {}

asio::awaitable<ReloadOutcome> HaproxyReloader::run(const ReloadEvent& event, Deadline deadline) {
  // Held through verification: a second swap of this name would make the first check fail.
  auto mine = co_await instance_mutex_.lock_until(deadline);
  if (!mine) co_return ReloadOutcome{ReloadResult::timeout, "the previous reload of this reloader is still running"};
  co_return co_await ReloaderBase::run(event, deadline);
}

asio::awaitable<ReloadOutcome> HaproxyReloader::apply(const ReloadEvent& event, Deadline deadline) {
  // Only the transaction itself is exclusive per HAProxy (it allows one at a time).
  auto shared = co_await socket_mutex_->lock_until(deadline);
  if (!shared) {
    co_return ReloadOutcome{ReloadResult::timeout,
                            "another certificate transaction on " + haproxy_.admin_socket.string() +
                                " is still running"};
  }
  co_return co_await transaction(event, deadline);
}

asio::awaitable<Result<std::string>> HaproxyReloader::set_payload(const std::string& name, const Secret& payload,
                                                                  Deadline deadline) {
  std::string command;
  command.reserve(payload.size() + name.size() + 32);
  command += "set ssl cert ";
  command += name;
  command += " <<\n";
  command.append(payload.view());
  command += "\n\n";
  Secret wiped(std::move(command));
  co_return co_await haproxy_admin_command(haproxy_.admin_socket, wiped.view(), deadline);
}

asio::awaitable<void> HaproxyReloader::abort_transaction(Deadline deadline) {
  auto r = co_await haproxy_admin_command(haproxy_.admin_socket, "abort ssl cert " + haproxy_.cert + "\n",
                                          std::max(deadline, steady_clock::now() + kAbortGrace));
  if (r) {
    logger_->debug("event=haproxy_transaction_aborted name={} answer={}", haproxy_.cert,
                   certagent::log::quote(summarize(*r)));
  } else {
    logger_->warn("event=haproxy_abort_failed name={} error={}", haproxy_.cert,
                  certagent::log::quote(r.error().message));
  }
}

asio::awaitable<std::string> HaproxyReloader::unknown_name_detail(Deadline deadline) {
  std::string detail = "haproxy has no certificate named '" + haproxy_.cert +
                       "': `cert` must be the path exactly as haproxy's config writes it";
  auto list = co_await haproxy_admin_command(haproxy_.admin_socket, "show ssl cert\n",
                                             std::max(deadline, steady_clock::now() + kAbortGrace));
  if (list) {
    auto names = parse_show_ssl_cert(*list);
    std::string joined;
    for (const auto& n : names) joined += (joined.empty() ? "" : ", ") + n;
    detail += " (show ssl cert lists: " + (joined.empty() ? std::string("nothing") : joined) + ")";
  }
  co_return detail;
}

asio::awaitable<ReloadOutcome> HaproxyReloader::transaction(const ReloadEvent& event, Deadline deadline) {
  const auto start = steady_clock::now();
  const std::string& name = haproxy_.cert;
  auto failed = [&](std::string detail) -> ReloadOutcome {
    return {steady_clock::now() >= deadline ? ReloadResult::timeout : ReloadResult::failure, std::move(detail)};
  };

  auto set = co_await set_payload(name, haproxy_payload(*event.material), deadline);
  if (!set) {
    co_await abort_transaction(deadline);
    co_return failed("set ssl cert " + name + ": " + set.error().message);
  }
  if (!transaction_answer_ok(*set)) {
    const bool unknown = contains(*set, "not referenced");
    co_await abort_transaction(deadline);
    if (unknown) co_return failed(co_await unknown_name_detail(deadline));
    co_return failed("set ssl cert " + name + " refused: " + summarize(*set));
  }

  std::string extras;
  struct Side {
    const std::filesystem::path& path;
    const char* suffix;
    bool binary;
  };
  for (const Side& side : {Side{haproxy_.issuer_file, ".issuer", false}, Side{haproxy_.ocsp_file, ".ocsp", true}}) {
    if (side.path.empty()) continue;
    auto data = read_side_file(side.path);
    if (!data) {
      // Stapling is lost for this certificate until the file is there; the rotation itself
      // must not fail for it (the certificate is what keeps clients working).
      logger_->warn("event=side_file_skipped name={}{} error={}", name, side.suffix,
                    certagent::log::quote(data.error().message));
      extras += std::string("; ") + side.suffix + " not carried (" + data.error().message + ")";
      continue;
    }
    Secret payload = side.binary ? Secret(base64(*data)) : strip_blank_lines(*data);
    auto r = co_await set_payload(name + side.suffix, payload, deadline);
    if (!r || !transaction_answer_ok(*r)) {
      co_await abort_transaction(deadline);
      co_return failed("set ssl cert " + name + side.suffix + " " +
                       (r ? "refused: " + summarize(*r) : r.error().message));
    }
    extras += std::string("; with ") + side.suffix;
  }

  auto commit = co_await haproxy_admin_command(haproxy_.admin_socket, "commit ssl cert " + name + "\n", deadline);
  if (!commit || !contains(*commit, "Success!")) {
    co_await abort_transaction(deadline);
    co_return failed("commit ssl cert " + name + " " +
                     (commit ? "refused: " + summarize(*commit) : commit.error().message));
  }
  const auto took = std::chrono::duration_cast<milliseconds>(steady_clock::now() - start);
  co_return ReloadOutcome{ReloadResult::success,
                          "committed " + name + " via the runtime API in " + std::to_string(took.count()) + "ms" + extras};
}

}  // namespace certagent::reloaders
