#include "agent/socket_server.h"

#include "agent/state_file.h"
#include "core/config/names.h"

#include "core/fs_util.h"
#include "core/locked_memory.h"
#include "core/logging.h"

#include <grp.h>
#include <openssl/crypto.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/system_timer.hpp>
#include <boost/json.hpp>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <vector>

namespace certagent {

namespace json = boost::json;
namespace bhttp = boost::beast::http;
using local = boost::asio::local::stream_protocol;

namespace {

spdlog::logger* logger() {
  static const auto l = log::get("socket");
  return l.get();
}

// Access denials logged per second at most; the rest are counted (and in the metrics).
constexpr int kMaxDeniedLogs = 10;

// ---- JSON without stray copies of the key --------------------------------------------------

// Memory for JSON values that hold a private key: locked, out of core dumps, wiped before it
// is given back.
class LockedResource final : public json::memory_resource {
  void* do_allocate(std::size_t n, std::size_t align) override {
    // Blocks are aligned to their (power-of-two) size, at least 32 bytes.
    return locked_memory::allocate(std::max(n, align));
  }
  void do_deallocate(void* p, std::size_t n, std::size_t align) override {
    locked_memory::deallocate(p, std::max(n, align));
  }
  bool do_is_equal(const json::memory_resource& other) const noexcept override {
    return this == &other;
  }
};

// Serializes a value that may hold key material straight into locked memory.
Secret serialize_secret(const json::value& value, std::size_t size_hint, bool newline) {
  Secret out;
  out.reserve(size_hint);
  json::serializer serializer;
  serializer.reset(&value);
  std::array<char, 4096> buffer;
  while (!serializer.done()) out.append(serializer.read(buffer.data(), buffer.size()));
  OPENSSL_cleanse(buffer.data(), buffer.size());
  if (newline) out.append("\n");
  return out;
}

// ---- what a certificate looks like on the socket -------------------------------------------

// Why nothing valid can be handed out: "expired", "not_yet_valid" or "not_issued".
std::string_view unavailable_reason(const CertEntry& entry, SystemTime now) {
  const CertState state = effective_state(entry, now);
  return to_string(state == CertState::valid ? CertState::not_issued : state);
}

// The bundle for one certificate, in locked memory. Every byte of it is wiped when freed.
Secret bundle_json(const CertEntry& entry, const Material& m, bool newline) {
  const auto storage = json_wiping_storage();
  json::object o(storage);
  o["name"] = entry.config.name;
  o["serial"] = m.serial_hex;
  o["not_before"] = format_rfc3339(m.not_before);
  o["not_after"] = format_rfc3339(m.not_after);
  o["sha256"] = m.sha256_hex;
  o["certificate_pem"] = m.cert_pem;
  o["chain_pem"] = m.chain_pem;
  o["private_key_pem"] = json::string_view(m.key_pem.data(), m.key_pem.size());
  o["trust_bundle_pem"] = entry.trust_bundle_pem;
  const std::size_t hint = m.cert_pem.size() + m.chain_pem.size() + m.key_pem.size() +
                           entry.trust_bundle_pem.size() + 1024;
  // PEM newlines become two bytes each in JSON: the hint leaves room for them.
  return serialize_secret(json::value(std::move(o), storage), hint + hint / 32, newline);
}

std::string error_json(std::string_view code, bool newline) {
  std::string out = json::serialize(json::object{{"error", code}});
  if (newline) out.push_back('\n');
  return out;
}

}  // namespace

bool may_read_key(const config::SocketAccess& access, const http::Peer& peer) {
  if (!peer.known) return false;
  if (peer.uid == 0) return true;
  if (std::find(access.allow_uids.begin(), access.allow_uids.end(), peer.uid) !=
      access.allow_uids.end()) {
    return true;
  }
  return std::any_of(access.allow_gids.begin(), access.allow_gids.end(),
                     [&](std::uint32_t g) { return peer.in_group(g); });
}

namespace {

std::string_view path_of(std::string_view target) {
  return target.substr(0, target.find('?'));
}

bool wants_watch(std::string_view target) {
  const auto q = target.find('?');
  if (q == std::string_view::npos) return false;
  std::string_view query = target.substr(q + 1);
  while (!query.empty()) {
    const auto amp = query.find('&');
    const std::string_view param = query.substr(0, amp);
    if (param == "watch" || param == "watch=1" || param == "watch=true") return true;
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return false;
}

http::Reply method_not_allowed(std::string_view allow) {
  auto reply = http::error_reply(bhttp::status::method_not_allowed, "method_not_allowed");
  reply.response.set(bhttp::field::allow, allow);
  return reply;
}

// /healthz, /readyz, /metrics: shared by the socket and the TCP listener. nullopt: not one of
// them.
std::optional<http::Reply> common_route(std::string_view path, const http::Request& request,
                                        const CertificateStore& store, Metrics& metrics,
                                        const Clock& clock,
                                        const std::function<bool()>& healthy) {
  if (path != "/healthz" && path != "/readyz" && path != "/metrics") return std::nullopt;
  if (request.method() != bhttp::verb::get) return method_not_allowed("GET");
  if (path == "/healthz") {
    const bool ok = !healthy || healthy();
    return http::json_reply(ok ? bhttp::status::ok : bhttp::status::service_unavailable,
                            ok ? R"({"status":"ok"})" : R"({"status":"unhealthy"})");
  }
  if (path == "/readyz") {
    std::vector<std::string> reasons;
    const bool ready = store.ready(clock.now(), &reasons);
    json::array why;
    for (auto& r : reasons) why.emplace_back(r);
    return http::json_reply(ready ? bhttp::status::ok : bhttp::status::service_unavailable,
                            json::serialize(json::object{{"ready", ready}, {"reasons", why}}));
  }
  return http::make_reply(bhttp::status::ok, "text/plain; version=0.0.4; charset=utf-8",
                          metrics.render());
}

// ---- the socket file -----------------------------------------------------------------------

Result<std::optional<gid_t>> lookup_group(const std::string& name, std::string_view key) {
  if (name.empty()) return std::optional<gid_t>{};
  group grp{};
  group* found = nullptr;
  std::vector<char> buffer(16384);
  int rc = 0;
  while ((rc = ::getgrnam_r(name.c_str(), &grp, buffer.data(), buffer.size(), &found)) == ERANGE &&
         buffer.size() < (1u << 20)) {
    buffer.resize(buffer.size() * 2);
  }
  if (rc != 0) return make_error(std::string(key) + " '" + name + "': " + std::strerror(rc));
  if (!found) {
    Error e = make_error(std::string(key) + " '" + name + "' does not exist: create the group or change " +
                         std::string(key));
    e.configuration = true;
    return e;
  }
  return std::optional<gid_t>(grp.gr_gid);
}

bool fits_sun_path(const std::filesystem::path& p) {
  return p.native().size() < sizeof(sockaddr_un{}.sun_path);
}

// An existing file at the socket path: a socket nobody answers on is stale and will be replaced
// (by the rename that publishes the new one); anything else is left alone and is an error.
Result<> check_existing(const std::filesystem::path& path, const std::string& key) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return {};
    return fs_util::errno_error(key + " " + path.string(), errno);
  }
  if (!S_ISSOCK(st.st_mode)) {
    return make_error(key + " " + path.string() +
                      " exists and is not a socket; refusing to replace it (remove it or choose "
                      "another path)");
  }
  fs_util::UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return fs_util::errno_error("socket()", errno);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.native().size());
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0 ||
      errno == EAGAIN || errno == EINPROGRESS) {
    return make_error(key + " " + path.string() +
                      " is in use by a running process (another certagent?)");
  }
  if (errno != ECONNREFUSED) {
    return fs_util::errno_error(key + " " + path.string() + ": probing the existing socket",
                                errno);
  }
  logger()->info("event=socket_stale_replaced path={}", log::quote(path.string()));
  return {};
}

std::string mode_string(std::uint32_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", mode & 07777);
  return buf;
}

}  // namespace

json::storage_ptr json_wiping_storage() {
  static LockedResource resource;
  return json::storage_ptr(&resource);
}

// ---- SocketServer --------------------------------------------------------------------------

struct SocketServer::WatchGroup {
  explicit WatchGroup(boost::asio::io_context& io) : expiry(io) {}
  std::string name;
  CertificateStore::Subscription subscription;
  std::map<std::size_t, std::shared_ptr<http::ResponseStream>> watchers;
  std::string last_key;  // what was last pushed: "serial:<hex>" or "error:<code>"
  boost::asio::system_timer expiry;  // at the pushed material's not_after
};

namespace {

http::Limits socket_limits(const config::SocketConfig& c) {
  http::Limits limits;
  limits.max_connections = c.max_connections;
  limits.max_header_bytes = c.max_header_bytes;
  limits.max_body_bytes = kSocketMaxBody;
  limits.request_timeout = c.request_timeout;
  return limits;
}

}  // namespace

SocketServer::SocketServer(boost::asio::io_context& io, const config::SocketConfig& config,
                           CertificateStore& store, Metrics& metrics, const Clock& clock,
                           std::function<bool()> healthy)
    : io_(io),
      config_(config),
      store_(store),
      metrics_(metrics),
      clock_(clock),
      healthy_(std::move(healthy)),
      server_(io, socket_limits(config),
              [this](const http::Request& request, const http::Peer& peer) {
                return handle(request, peer);
              },
              http::Hooks{
                  [&metrics](std::size_t open) {
                    metrics.set(metric::kSocketConnections, {}, static_cast<double>(open));
                  },
                  [&metrics](std::string_view reason) {
                    metrics.add(metric::kSocketRejected, {{"reason", std::string(reason)}});
                  }}) {
  // A new commit (or expiry) drops the old bundle, and the key in it, at once.
  cache_subscription_ = store_.subscribe("", [this](const CertEntry& entry, CertEvent) {
    bundles_.erase(entry.config.name);
  });
}

http::Chunk SocketServer::bundle_line(const CertEntry& entry, const MaterialPtr& material) {
  auto& cached = bundles_[entry.config.name];
  if (cached.material != material || !cached.line ||
      cached.trust_bundle_pem != entry.trust_bundle_pem) {
    cached.material = material;
    cached.trust_bundle_pem = entry.trust_bundle_pem;
    cached.line = std::make_shared<const Secret>(bundle_json(entry, *material, true));
  }
  return cached.line;
}

http::Chunk SocketServer::current_line(const CertEntry& entry, std::string* key) {
  const auto now = clock_.now();
  if (auto m = entry.valid_material(now)) {
    *key = "serial:" + m->serial_hex;
    return bundle_line(entry, m);
  }
  const auto reason = unavailable_reason(entry, now);
  *key = "error:" + std::string(reason);
  return std::make_shared<const Secret>(error_json(reason, true));
}

SocketServer::~SocketServer() { stop(); }

Result<UnixSocketFile> create_unix_socket(boost::asio::io_context& io,
                                          const std::filesystem::path& path, std::uint32_t mode,
                                          const std::string& group, std::string_view what) {
  const std::string key = std::string(what) + ".path";
  auto gid = lookup_group(group, std::string(what) + ".group");
  if (!gid) return gid.error();

  std::filesystem::path parent = path.parent_path();
  if (parent.empty()) parent = ".";
  if (auto r = fs_util::make_directories(parent, 0755); !r) {
    return with_context(key + " " + path.string(), r.error());
  }
  if (auto r = check_existing(path, key); !r) return r.error();

  // Bound in a private directory, given its mode and group there, then renamed into place:
  // the socket never shows at its path with the umask's permissions.
  std::string temp_dir = (parent / ".sock-XXXXXX").string();
  if (!::mkdtemp(temp_dir.data())) {
    return fs_util::errno_error(key + " " + path.string() + ": creating a temp directory in " +
                                    parent.string(),
                                errno);
  }
  const std::filesystem::path temp_path = std::filesystem::path(temp_dir) / "s";
  auto cleanup = [&] {
    ::unlink(temp_path.c_str());
    ::rmdir(temp_dir.c_str());
  };
  if (!fits_sun_path(path) || !fits_sun_path(temp_path)) {
    cleanup();
    return make_error(key + " " + path.string() + " is too long for a Unix socket (at most " +
                      std::to_string(sizeof(sockaddr_un{}.sun_path) - 16) + " bytes)");
  }
  local::acceptor acceptor(io);
  boost::system::error_code ec;
  acceptor.open(local(), ec);
  if (!ec) acceptor.bind(local::endpoint(temp_path.string()), ec);
  if (!ec) acceptor.listen(boost::asio::socket_base::max_listen_connections, ec);
  if (ec) {
    cleanup();
    return make_error(key + " " + path.string() + ": " + ec.message());
  }
  if (::chmod(temp_path.c_str(), mode & 07777) != 0) {
    const int err = errno;
    cleanup();
    return fs_util::errno_error(key + " " + path.string() + ": chmod", err);
  }
  if (*gid && ::chown(temp_path.c_str(), static_cast<uid_t>(-1), **gid) != 0) {
    const int err = errno;
    cleanup();
    return fs_util::errno_error(key + " " + path.string() + ": chown to group '" + group + "'",
                                err);
  }
  if (::rename(temp_path.c_str(), path.c_str()) != 0) {
    const int err = errno;
    cleanup();
    return fs_util::errno_error(key + " " + path.string() + ": rename into place", err);
  }
  ::rmdir(temp_dir.c_str());
  UnixSocketFile out{std::move(acceptor), 0, 0};
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    out.dev = st.st_dev;
    out.ino = st.st_ino;
  }
  return out;
}

void remove_unix_socket(const std::filesystem::path& path, dev_t dev, ino_t ino) {
  struct stat st {};
  // Only our own socket: another daemon may have replaced it meanwhile.
  if (::lstat(path.c_str(), &st) == 0 && st.st_dev == dev && st.st_ino == ino) {
    ::unlink(path.c_str());
  }
}

Result<> SocketServer::start() {
  if (config_.path.empty()) return {};
  if (started_) return make_error("socket server already started");
  auto file = create_unix_socket(io_, config_.path, config_.mode, config_.group, "socket");
  if (!file) return file.error();
  socket_file_ = std::make_pair(file->dev, file->ino);
  server_.serve(std::move(file->acceptor));
  started_ = true;
  set_watchers_metric();
  logger()->info("event=socket_listening path={} mode={} group={}", log::quote(config_.path.string()),
                 mode_string(config_.mode), log::quote(config_.group));
  return {};
}

void SocketServer::stop() {
  server_.stop();  // watchers' on_close callbacks run now and empty the groups
  groups_.clear();
  bundles_.clear();
  watcher_count_ = 0;
  if (socket_file_) {
    remove_unix_socket(config_.path, socket_file_->first, socket_file_->second);
    socket_file_.reset();
    logger()->info("event=socket_closed path={}", log::quote(config_.path.string()));
  }
  if (started_) set_watchers_metric();
}

http::Reply SocketServer::handle(const http::Request& request, const http::Peer& peer) {
  const std::string_view target = request.target();
  const std::string_view path = path_of(target);
  if (logger()->should_log(spdlog::level::debug)) {
    logger()->debug("event=socket_request method={} path={} pid={} uid={}",
                    std::string_view(request.method_string()), log::quote(path), peer.pid,
                    peer.uid);
  }
  if (auto reply = common_route(path, request, store_, metrics_, clock_, healthy_)) {
    return std::move(*reply);
  }
  constexpr std::string_view kPrefix = "/v1/certificates";
  if (path == kPrefix) {
    if (request.method() != bhttp::verb::get) return method_not_allowed("GET");
    return list();
  }
  if (path.size() > kPrefix.size() + 1 && path.substr(0, kPrefix.size() + 1) == "/v1/certificates/") {
    std::string_view rest = path.substr(kPrefix.size() + 1);
    bool renew_path = false;
    if (const auto slash = rest.find('/'); slash != std::string_view::npos) {
      if (rest.substr(slash) != "/renew") {
        return http::error_reply(bhttp::status::not_found, "not_found");
      }
      rest = rest.substr(0, slash);
      renew_path = true;
    }
    if (!config::valid_name(rest)) return http::error_reply(bhttp::status::not_found, "not_found");
    const std::string name(rest);
    if (renew_path) {
      if (request.method() != bhttp::verb::post) return method_not_allowed("POST");
      return renew(name, peer);
    }
    if (request.method() != bhttp::verb::get) return method_not_allowed("GET");
    return wants_watch(target) ? watch(name, peer) : fetch(name, peer);
  }
  return http::error_reply(bhttp::status::not_found, "not_found");
}

http::Reply SocketServer::list() const {
  return http::json_reply(bhttp::status::ok,
                          json::serialize(json::object{
                              {"certificates", describe_certificates(store_, clock_.now())},
                              {"brokers", describe_brokers(store_)}}));
}

http::Reply SocketServer::fetch(const std::string& name, const http::Peer& peer) {
  const CertEntry* entry = store_.find(name);
  if (!entry) return http::error_reply(bhttp::status::not_found, "not_found");
  if (!may_read_key(entry->config.socket, peer)) {
    log_denied("fetch", name, peer);
    metrics_.add(metric::kSocketRejected, {{"reason", "forbidden"}});
    return http::error_reply(bhttp::status::forbidden, "forbidden");
  }
  const auto now = clock_.now();
  auto material = entry->valid_material(now);
  if (!material) {
    return http::error_reply(bhttp::status::service_unavailable, unavailable_reason(*entry, now));
  }
  // The watchers' line without its newline, sent from locked memory: no copy of the key.
  http::Reply reply = http::json_reply(bhttp::status::ok, {});
  reply.secret_body = bundle_line(*entry, material);
  reply.secret_body_size = reply.secret_body->size() - 1;
  reply.response.set(bhttp::field::cache_control, "no-store");
  return reply;
}

http::Reply SocketServer::watch(const std::string& name, const http::Peer& peer) {
  const CertEntry* entry = store_.find(name);
  if (!entry) return http::error_reply(bhttp::status::not_found, "not_found");
  if (!may_read_key(entry->config.socket, peer)) {
    log_denied("watch", name, peer);
    metrics_.add(metric::kSocketRejected, {{"reason", "forbidden"}});
    return http::error_reply(bhttp::status::forbidden, "forbidden");
  }
  if (watcher_count_ >= config_.max_watchers) {
    metrics_.add(metric::kSocketRejected, {{"reason", "max_watchers"}});
    return http::error_reply(bhttp::status::service_unavailable, "too_many_watchers");
  }
  http::Reply reply = http::make_reply(bhttp::status::ok, "application/x-ndjson", {});
  reply.response.set(bhttp::field::cache_control, "no-store");
  reply.stream = [this, name](std::shared_ptr<http::ResponseStream> stream) {
    add_watcher(name, std::move(stream));
  };
  return reply;
}

http::Reply SocketServer::renew(const std::string& name, const http::Peer& peer) {
  const bool admin =
      peer.known && (peer.uid == 0 || std::find(config_.admin_uids.begin(), config_.admin_uids.end(),
                                                peer.uid) != config_.admin_uids.end());
  if (!admin) {
    log_denied("renew", name, peer);
    metrics_.add(metric::kSocketRejected, {{"reason", "forbidden"}});
    return http::error_reply(bhttp::status::forbidden, "forbidden");
  }
  if (!store_.request_renewal(name)) {
    return http::error_reply(bhttp::status::not_found, "not_found");
  }
  logger()->info("event=renewal_requested certificate={} pid={} uid={}", name, peer.pid, peer.uid);
  return http::json_reply(bhttp::status::accepted, R"({"renewal":"requested"})");
}

void SocketServer::add_watcher(const std::string& name,
                               std::shared_ptr<http::ResponseStream> stream) {
  const CertEntry* entry = store_.find(name);
  if (stream->closed()) return;
  if (!entry) {  // removed by a config reload meanwhile
    stream->write(std::make_shared<const Secret>(error_json("not_found", true)));
    stream->finish();
    return;
  }
  if (watcher_count_ >= config_.max_watchers) {
    stream->write(std::make_shared<const Secret>(error_json("too_many_watchers", true)));
    stream->finish();
    return;
  }
  auto& slot = groups_[name];
  if (!slot) {
    slot = std::make_shared<WatchGroup>(io_);
    slot->name = name;
    std::weak_ptr<WatchGroup> weak = slot;
    slot->subscription = store_.subscribe(name, [this, weak](const CertEntry& e, CertEvent event) {
      if (auto group = weak.lock()) on_event(group, e, event);
    });
  }
  auto group = slot;
  const std::size_t id = next_watcher_id_++;
  group->watchers.emplace(id, stream);
  ++watcher_count_;
  set_watchers_metric();
  logger()->debug("event=watch_started certificate={} pid={} uid={} watchers={}", name,
                  stream->peer().pid, stream->peer().uid, watcher_count_);

  std::string key;
  stream->write(current_line(*entry, &key));
  if (group->watchers.size() == 1) {
    group->last_key = key;
    arm_expiry(group, *entry);
  }
  std::weak_ptr<WatchGroup> weak = group;
  stream->on_close([this, weak, id] {
    if (auto g = weak.lock()) remove_watcher(g, id);
  });
}

void SocketServer::remove_watcher(const std::shared_ptr<WatchGroup>& group, std::size_t id) {
  if (group->watchers.erase(id) == 0) return;
  --watcher_count_;
  set_watchers_metric();
  if (group->watchers.empty()) {
    auto it = groups_.find(group->name);
    if (it != groups_.end() && it->second == group) groups_.erase(it);
  }
}

void SocketServer::on_event(const std::shared_ptr<WatchGroup>& group, const CertEntry& entry,
                            CertEvent event) {
  if (event != CertEvent::removed) {
    push(group, entry);
    return;
  }
  // The certificate left the config: say so and end the streams, rather than leave watchers
  // waiting for a rotation that will never come.
  group->expiry.cancel();
  std::vector<std::shared_ptr<http::ResponseStream>> streams;
  for (const auto& [id, s] : group->watchers) streams.push_back(s);
  for (const auto& stream : streams) {
    stream->write(std::make_shared<const Secret>(error_json("removed", true)));
    stream->finish();
  }
  logger()->info("event=watch_ended certificate={} reason=removed_from_config watchers={}", group->name,
                 streams.size());
  // Each finished stream leaves through its on_close (remove_watcher), which drops the group.
}

// Sends watchers what they should hold now, when that differs from what they were last sent
// (a new serial, or the error that replaces the bundle).
void SocketServer::push(const std::shared_ptr<WatchGroup>& group, const CertEntry& entry) {
  std::string key;
  const auto line = current_line(entry, &key);
  if (key == group->last_key) return;
  group->last_key = key;
  arm_expiry(group, entry);
  // Snapshot: a watcher that cannot keep up is closed by write() and leaves the map.
  std::vector<std::shared_ptr<http::ResponseStream>> streams;
  streams.reserve(group->watchers.size());
  for (const auto& [id, s] : group->watchers) streams.push_back(s);
  for (const auto& stream : streams) {
    if (!may_read_key(entry.config.socket, stream->peer())) {  // access narrowed by a reload
      stream->write(std::make_shared<const Secret>(error_json("forbidden", true)));
      stream->finish();
      continue;
    }
    stream->write(line);
  }
}

void SocketServer::arm_expiry(const std::shared_ptr<WatchGroup>& group, const CertEntry& entry) {
  // Belt and braces: the certificate loop marks expiry in the store, but a watcher must hear of
  // it even if that comes late.
  group->expiry.cancel();
  const auto now = clock_.now();
  const auto material = entry.valid_material(now);
  if (!material) return;
  // Relative to the injected clock, and never zero, so a clock that disagrees with the timer's
  // cannot make it spin.
  group->expiry.expires_after(std::max<SystemTime::duration>(material->not_after - now,
                                                             std::chrono::milliseconds(10)));
  std::weak_ptr<WatchGroup> weak = group;
  group->expiry.async_wait([this, weak](boost::system::error_code ec) {
    if (ec) return;
    if (auto g = weak.lock()) on_expiry_timer(g);
  });
}

void SocketServer::on_expiry_timer(const std::shared_ptr<WatchGroup>& group) {
  const CertEntry* entry = store_.find(group->name);
  if (!entry) return;
  const auto now = clock_.now();
  if (entry->valid_material(now)) {
    arm_expiry(group, *entry);  // the injected clock disagrees with the timer's: check later
    return;
  }
  push(group, *entry);
}

void SocketServer::set_watchers_metric() {
  metrics_.set(metric::kSocketWatchers, {}, static_cast<double>(watcher_count_));
}

void SocketServer::log_denied(std::string_view what, const std::string& name,
                              const http::Peer& peer) {
  const auto second = std::chrono::duration_cast<std::chrono::seconds>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count();
  if (second != denied_second_) {
    if (denied_logged_ > kMaxDeniedLogs) {
      logger()->warn("event=socket_access_denied_unlogged count={}",
                     denied_logged_ - kMaxDeniedLogs);
    }
    denied_second_ = second;
    denied_logged_ = 0;
  }
  if (++denied_logged_ > kMaxDeniedLogs) return;
  logger()->warn("event=socket_access_denied request={} certificate={} pid={} uid={} gid={}", what,
                 name, peer.known ? std::to_string(peer.pid) : "unknown",
                 peer.known ? std::to_string(peer.uid) : "unknown",
                 peer.known ? std::to_string(peer.gid) : "unknown");
}

// ---- MetricsListener -----------------------------------------------------------------------

MetricsListener::MetricsListener(boost::asio::io_context& io, std::string listen,
                                 const CertificateStore& store, Metrics& metrics,
                                 const Clock& clock, std::function<bool()> healthy)
    : io_(io),
      listen_(std::move(listen)),
      server_(io, http::Limits{},
              [&store, &metrics, &clock, healthy = std::move(healthy)](
                  const http::Request& request, const http::Peer&) {
                const std::string_view path = path_of(request.target());
                if (auto reply = common_route(path, request, store, metrics, clock, healthy)) {
                  return std::move(*reply);
                }
                return http::error_reply(bhttp::status::not_found, "not_found");
              }) {}

MetricsListener::~MetricsListener() { stop(); }

Result<> MetricsListener::start() {
  if (listen_.empty()) return {};
  auto acceptor = http::listen_tcp(io_, listen_);
  if (!acceptor) return with_context("metrics.listen", acceptor.error());
  boost::system::error_code ec;
  endpoint_ = acceptor->local_endpoint(ec);
  server_.serve(std::move(*acceptor));
  logger()->info("event=metrics_listening address={}", log::quote(listen_));
  return {};
}

void MetricsListener::stop() { server_.stop(); }

}  // namespace certagent
