#include "agent/sidecar/sidecar_server.h"

#include "agent/sidecar/content.h"
#include "agent/sidecar/h2_frames.h"
#include "agent/sidecar/hpack.h"
#include "agent/socket_server.h"
#include "core/http/server.h"
#include "core/logging.h"

#include "envoy/service/discovery/v3/discovery.pb.h"
#include "spiffe/workload/workload.pb.h"

#include <google/protobuf/stubs/logging.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/system_timer.hpp>

#include <algorithm>
#include <array>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <unordered_map>

namespace certagent::sidecar {

namespace asio = boost::asio;
using local = asio::local::stream_protocol;
using discovery::DiscoveryRequest;
using discovery::DiscoveryResponse;
using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

namespace {

spdlog::logger* logger() {
  static const auto l = log::get("sidecar");
  return l.get();
}

constexpr const char* kStreamsMetric = "certagent_sidecar_streams";
constexpr const char* kRejectedMetric = "certagent_sidecar_rejected_total";
constexpr const char* kPushesMetric = "certagent_sidecar_pushes_total";
constexpr const char* kNacksMetric = "certagent_sidecar_sds_nacks_total";

// Denials and refusals logged per second at most; the rest are counted (and in the metrics).
constexpr int kMaxRefusalLogs = 10;
constexpr std::size_t kMaxResourceNames = 64;
constexpr std::size_t kMaxResourceNameBytes = 256;
// Request headers of one call, HPACK-decoded (RFC 9113 SETTINGS_MAX_HEADER_LIST_SIZE counting).
constexpr std::uint32_t kMaxHeaderListBytes = 16 * 1024;
// Read from a socket per wake-up before the other connections get their turn.
constexpr std::size_t kReadBudget = 256 * 1024;
// Output gathered for one sendmsg(2), and its parts (IOV_MAX is 1024).
constexpr std::size_t kWriteChunk = 64 * 1024;
constexpr std::size_t kMaxSegments = 1000;
// Limits against floods, as nghttp2 sets them: CONTINUATION frames per header block, entries
// per SETTINGS frame, PING/SETTINGS answers queued unread, client resets (a burst, then a rate).
constexpr int kMaxContinuations = 8;
// A header block (HEADERS and its CONTINUATIONs) is gathered whole before it is decoded: beyond
// this it could not decode to a list within kMaxHeaderListBytes anyway, and a client holding
// blocks open on many connections must not make us hold 144 KiB for each.
constexpr std::size_t kMaxHeaderBlockBytes = 2 * kMaxHeaderListBytes;
constexpr std::size_t kMaxSettingsEntries = 32;
constexpr int kMaxQueuedAcks = 100;
constexpr double kResetBurst = 100;
constexpr double kResetRate = 10;  // per second
// grpc-message is cut here, so a status always fits one HEADERS frame.
constexpr std::size_t kMaxStatusMessage = 1024;
// A PING not answered within this (or the keep-alive interval, if shorter) is a dead peer.
constexpr auto kPingTimeout = 20s;

// gRPC status codes (grpc/status.h), the ones this server sends.
enum class Code : int {
  ok = 0,
  cancelled = 1,
  invalid_argument = 3,
  deadline_exceeded = 4,
  permission_denied = 7,
  resource_exhausted = 8,
  unimplemented = 12,
  internal = 13,
  unavailable = 14,
};

struct Status {
  Code code{Code::ok};
  std::string message;
};

// gRPC's grpc-timeout (PROTOCOL-HTTP2.md): 1 to 8 ASCII digits and a unit (H, M, S, m, u, n).
// nullopt: malformed. A timeout of more than a year is as good as none: duration::max().
std::optional<SteadyClock::duration> parse_grpc_timeout(std::string_view v) {
  if (v.size() < 2 || v.size() > 9) return std::nullopt;
  std::int64_t n = 0;
  for (const char ch : v.substr(0, v.size() - 1)) {
    if (ch < '0' || ch > '9') return std::nullopt;
    n = n * 10 + (ch - '0');
  }
  constexpr std::int64_t kYear = 365LL * 24 * 3600;
  std::int64_t seconds = 0;
  switch (v.back()) {
    case 'H': seconds = n * 3600; break;
    case 'M': seconds = n * 60; break;
    case 'S': seconds = n; break;
    case 'm': return std::chrono::milliseconds(n);  // 8 digits: at most 28 hours
    case 'u': return std::chrono::microseconds(n);
    case 'n': return std::chrono::nanoseconds(n);
    default: return std::nullopt;
  }
  if (seconds > kYear) return SteadyClock::duration::max();
  return std::chrono::seconds(seconds);
}

enum class Api { connection, sds, sds_fetch, x509_svid, x509_bundles };

std::string_view api_name(Api a) {
  switch (a) {
    case Api::connection: return "connection";
    case Api::sds: return "sds";
    case Api::sds_fetch: return "sds_fetch";
    case Api::x509_svid: return "x509_svid";
    case Api::x509_bundles: return "x509_bundles";
  }
  return "unknown";
}

std::string peer_text(const http::Peer& p) {
  if (!p.known) return "pid=unknown uid=unknown";
  return "pid=" + std::to_string(p.pid) + " uid=" + std::to_string(p.uid) +
         " gid=" + std::to_string(p.gid);
}

// Serialised bytes shared by every stream that sends them; they may hold a private key, so they
// are wiped when the last holder lets go.
using Bytes = std::shared_ptr<const std::string>;

Bytes wiped_bytes(std::string s) {
  return Bytes(new std::string(std::move(s)), [](const std::string* p) {
    auto* q = const_cast<std::string*>(p);
    OPENSSL_cleanse(q->data(), q->size());
    delete q;
  });
}

template <class M>
Bytes serialize(const M& m) {
  std::string s;
  m.SerializeToString(&s);
  return wiped_bytes(std::move(s));
}

// gRPC's grpc-message: percent-encoded, every byte outside printable ASCII and '%' itself.
std::string percent_encode(std::string_view text) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : text) {
    if (c >= 0x20 && c <= 0x7e && c != '%') {
      out.push_back(static_cast<char>(c));
    } else {
      out += {'%', kHex[c >> 4], kHex[c & 15]};
    }
  }
  return out;
}

// The gRPC methods, by :path.
enum class Method { unknown, unimplemented, sds_stream, sds_fetch, x509_svid, x509_bundles };

Method method_of(std::string_view path) {
  static const std::map<std::string_view, Method> kMethods = {
      {"/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets", Method::sds_stream},
      {"/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets", Method::sds_fetch},
      {"/envoy.service.secret.v3.SecretDiscoveryService/DeltaSecrets", Method::unimplemented},
      {"/SpiffeWorkloadAPI/FetchX509SVID", Method::x509_svid},
      {"/SpiffeWorkloadAPI/FetchX509Bundles", Method::x509_bundles},
      // The JWT-SVID profile: certagent issues no JWT-SVIDs.
      {"/SpiffeWorkloadAPI/FetchJWTSVID", Method::unimplemented},
      {"/SpiffeWorkloadAPI/FetchJWTBundles", Method::unimplemented},
      {"/SpiffeWorkloadAPI/ValidateJWTSVID", Method::unimplemented},
  };
  auto it = kMethods.find(path);
  return it == kMethods.end() ? Method::unknown : it->second;
}

Api api_of(Method m) {
  switch (m) {
    case Method::sds_stream: return Api::sds;
    case Method::sds_fetch: return Api::sds_fetch;
    case Method::x509_svid: return Api::x509_svid;
    case Method::x509_bundles: return Api::x509_bundles;
    default: return Api::connection;
  }
}

// Output gathered for one connection's sendmsg(2): frame headers, prefixes and the like copied
// into one buffer, message bodies referenced where every stream shares them (and kept alive
// until the write). One list serves every connection in turn.
class WriteList {
 public:
  std::size_t size() const { return total_; }
  bool full() const { return segments_.size() >= kMaxSegments; }
  // f appends to the buffer.
  template <class F>
  void append(F&& f) {
    const std::size_t before = bytes_.size();
    f(bytes_);
    const std::size_t len = bytes_.size() - before;
    if (len == 0) return;
    if (!segments_.empty() && !segments_.back().data &&
        segments_.back().offset + segments_.back().len == before) {
      segments_.back().len += len;
    } else {
      segments_.push_back({nullptr, before, len});
    }
    total_ += len;
  }
  void copy(std::string_view part) {
    append([&](std::string& b) { b.append(part); });
  }
  void reference(const Bytes& owner, std::string_view part) {
    if (part.size() < 256) return copy(part);  // a segment costs more than the copy
    if (keep_.empty() || keep_.back() != owner) keep_.push_back(owner);
    segments_.push_back({part.data(), 0, part.size()});
    total_ += part.size();
  }
  // One sendmsg(2); false on an error other than a full socket (errno tells).
  bool send(int fd, std::size_t& written) {
    iov_.clear();
    for (const auto& s : segments_) {
      const char* p = s.data ? s.data : bytes_.data() + s.offset;
      iov_.push_back({const_cast<char*>(p), s.len});
    }
    msghdr msg{};
    msg.msg_iov = iov_.data();
    msg.msg_iovlen = iov_.size();
    for (;;) {
      const auto n = ::sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n >= 0) {
        written = static_cast<std::size_t>(n);
        return true;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        written = 0;
        return true;
      }
      return false;
    }
  }
  // What the kernel did not take, appended to out.
  void rest(std::size_t written, std::string& out) const {
    for (const auto& s : segments_) {
      if (written >= s.len) {
        written -= s.len;
        continue;
      }
      const char* p = s.data ? s.data : bytes_.data() + s.offset;
      out.append(p + written, s.len - written);
      written = 0;
    }
  }
  void clear() {
    bytes_.clear();
    segments_.clear();
    keep_.clear();
    total_ = 0;
  }

 private:
  struct Segment {
    const char* data;  // null: bytes_[offset, offset + len)
    std::size_t offset;
    std::size_t len;
  };
  std::string bytes_;
  std::vector<Segment> segments_;
  std::vector<Bytes> keep_;
  std::vector<iovec> iov_;
  std::size_t total_{0};
};

// One message on its way out: the 5-byte gRPC prefix, bytes shared with other streams, and a
// per-stream tail (SDS: version_info and nonce, which protobuf merges into the message).
struct OutMessage {
  std::array<char, 5> prefix{};
  Bytes body;
  std::string tail;

  std::size_t size() const { return prefix.size() + body->size() + tail.size(); }
  // Bytes [from, from + n) of the framed message, into w.
  void gather(std::size_t from, std::size_t n, WriteList& w) const {
    auto take = [&](std::string_view part, const Bytes* owner) {
      if (n == 0) return;
      if (from >= part.size()) {
        from -= part.size();
        return;
      }
      const std::size_t k = std::min(n, part.size() - from);
      if (owner) {
        w.reference(*owner, part.substr(from, k));
      } else {
        w.copy(part.substr(from, k));
      }
      n -= k;
      from = 0;
    };
    take(std::string_view(prefix.data(), prefix.size()), nullptr);
    take(*body, &body);
    take(tail, nullptr);
  }
};

OutMessage frame_message(Bytes body, std::string tail = {}) {
  OutMessage m;
  const auto len = static_cast<std::uint32_t>(body->size() + tail.size());
  m.prefix = {0, static_cast<char>(len >> 24), static_cast<char>(len >> 16),
              static_cast<char>(len >> 8), static_cast<char>(len)};
  m.body = std::move(body);
  m.tail = std::move(tail);
  return m;
}

}  // namespace

// ---- the server ---------------------------------------------------------------------------

class Connection;

// One gRPC call: an HTTP/2 stream of one connection. Lives while the stream is open
// (the connection owns it) and while the server's stream tables hold it; once closed, it ignores
// everything.
struct Call {
  std::uint64_t id{0};
  std::uint32_t stream_id{0};
  Connection* conn{nullptr};  // null once closed
  Method method{Method::unknown};
  Api api{Api::connection};

  // Request headers, until the call starts.
  std::string path;
  std::string content_type;
  std::string encoding;
  bool spiffe_header{false};
  bool has_method{false};
  bool has_scheme{false};
  bool has_authority{false};
  bool saw_field{false};   // a regular field came (pseudo-headers must come before)
  bool bad_header{false};  // a malformed request (RFC 9113 8.1.1): reset
  bool bad_timeout{false};  // grpc-timeout malformed: INTERNAL, as grpc-go answers
  bool admitted{false};    // counted by the limits
  bool remote_closed{false};
  uid_t uid{0};            // the caller's, once admitted
  std::size_t messages_in{0};
  std::string inbuf;       // request bytes not yet a whole message
  std::optional<SteadyClock::time_point> deadline;  // from grpc-timeout

  // HTTP/2 flow control: what we may still send, and what came since our last WINDOW_UPDATE.
  std::int64_t send_window{h2::kDefaultWindow};
  std::int64_t received{0};

  // Response.
  bool response_started{false};
  bool headers_sent{false};
  bool finishing{false};
  std::string_view http_status;  // not gRPC: this HTTP status alone (a constant)
  std::optional<OutMessage> current;
  std::size_t offset{0};  // into current
  std::optional<OutMessage> pending;
  std::optional<Status> trailers;

  const http::Peer& peer() const;
  // Latest wins: a message that comes while another is being written replaces the one waiting
  // (every message is a complete state), so a client that does not read holds at most two.
  void send(OutMessage m);
  // Ends the call: trailers after the message being written, or Trailers-Only.
  void finish(Status status);
};

class SidecarServer::Impl : public std::enable_shared_from_this<Impl> {
 public:
  Impl(asio::io_context& io, const config::WorkloadApiConfig& config, CertificateStore& store,
       Metrics& metrics, const Clock& clock);
  ~Impl();

  Result<> start();
  void stop();
  std::size_t streams() const { return sds_.size() + svid_.size() + bundles_.size(); }
  std::size_t connections() const { return conns_.size(); }
  void serve(local::socket socket, http::Peer peer);

  // ---- from connections ----
  asio::io_context& io() { return io_; }
  const config::WorkloadApiConfig& config() const { return config_; }
  std::uint8_t* read_buffer() { return read_buffer_.data(); }
  std::size_t read_buffer_size() const { return read_buffer_.size(); }
  WriteList& write_list() { return write_list_; }
  // Headers complete: admit and dispatch, or end the call with a status.
  void start_call(const std::shared_ptr<Call>& call);
  void call_message(const std::shared_ptr<Call>& call, std::string_view bytes);
  void call_half_closed(const std::shared_ptr<Call>& call);
  void call_closed(Call& call);
  void connection_closed(Connection* conn, std::string_view reason, const std::string& detail);
  void refused(Api api, const http::Peer& peer, std::string_view reason, const std::string& detail);
  std::uint64_t next_id() { return ++next_id_; }
  // During a push to every stream: connections are flushed once each at its end (no post each).
  bool batch_flush(std::shared_ptr<Connection> conn) {
    if (!batch_) return false;
    batch_->push_back(std::move(conn));
    return true;
  }

 private:
  struct SdsStream {
    std::shared_ptr<Call> call;
    std::vector<std::string> names;
    bool requested{false};  // a first request has come
    bool sent{false};
    std::string version;    // of the last response sent
    std::string nonce;      // of the last response sent
    std::uint64_t nonces{0};
    std::string node;
  };
  struct SvidStream {
    std::shared_ptr<Call> call;
    std::string key;  // what was last sent
    bool ended{false};
  };
  struct BundlesStream {
    std::shared_ptr<Call> call;
    std::string key;
    bool ended{false};
  };
  struct SdsContent {
    std::vector<AnyPtr> resources;
    std::vector<std::pair<std::string, std::string>> ids;
  };
  struct SvidContent {
    std::vector<SvidPtr> svids;
    std::string key;
    bool entitled{false};  // some SPIFFE certificate this caller may have, valid or not
  };
  struct BundlesContent {
    std::vector<std::pair<std::string, std::string>> bundles;  // trust domain, DER
    std::string key;
  };
  struct PeerKey {
    bool known;
    uid_t uid;
    gid_t gid;
    std::vector<gid_t> groups;
    auto operator<=>(const PeerKey&) const = default;
  };
  struct Bucket {
    double tokens{0};
    SteadyClock::time_point last;
    std::size_t streams{0};
  };

  void accept();
  void on_accept(boost::system::error_code ec, local::socket socket);
  std::string admit_connection(const http::Peer& peer);
  std::string admit_call(uid_t uid);
  void end_call(uid_t uid);

  void open_sds(const std::shared_ptr<Call>& call);
  void sds_request(SdsStream& s, const DiscoveryRequest& request);
  void fetch(const std::shared_ptr<Call>& call, const DiscoveryRequest& request);
  void open_svid(const std::shared_ptr<Call>& call);
  void open_bundles(const std::shared_ptr<Call>& call);
  SdsContent sds_content(const http::Peer& peer, const std::vector<std::string>& names,
                         std::vector<std::string>* denied);
  // What a set of names gives a caller now: the content, its key and version. During a refresh,
  // one per (caller identity, names), shared by the streams that ask the same.
  struct SdsPlan;
  SdsPlan& sds_plan(const http::Peer& peer, const std::vector<std::string>& names,
                    std::map<std::string, Bytes>& shared, SdsPlan& scratch);
  void sds_push(SdsStream& s, bool always, std::map<std::string, Bytes>& shared);
  SvidContent svid_content(const http::Peer& peer);
  // During a refresh, one SvidContent per caller identity (uid, gid, groups), shared by its
  // streams: what a stream may have depends on nothing else.
  const SvidContent& svid_content_for(const http::Peer& peer, SvidContent& scratch);
  BundlesContent bundles_content(const http::Peer& peer);
  void svid_push(SvidStream& s, std::map<std::string, Bytes>& shared);
  void bundles_push(BundlesStream& s, std::map<std::string, Bytes>& shared);
  void schedule_refresh();
  void refresh_all();
  void arm_expiry();
  void set_streams_metric();
  // Pushes are counted here and added to the metrics once per round (a metric update takes a
  // lock and builds its label key: per message, that was a measurable part of a push).
  void publish_pushes();
  bool log_allowed();

  asio::io_context& io_;
  const config::WorkloadApiConfig config_;
  CertificateStore& store_;
  Metrics& metrics_;
  const Clock& clock_;
  std::optional<local::acceptor> acceptor_;
  std::optional<std::pair<dev_t, ino_t>> socket_file_;
  CertificateStore::Subscription subscription_;
  asio::system_timer expiry_;
  bool refresh_pending_{false};
  bool started_{false};
  std::uint64_t next_id_{0};
  // One read buffer and one write buffer for every connection: the io thread serves one at a
  // time, so an idle connection holds neither.
  std::vector<std::uint8_t> read_buffer_;
  WriteList write_list_;

  // Connections (owned here) and the limits.
  std::unordered_map<Connection*, std::shared_ptr<Connection>> conns_;
  std::unordered_map<uid_t, std::size_t> conns_per_uid_;
  std::unordered_map<uid_t, Bucket> buckets_;
  std::size_t calls_{0};
  std::vector<std::shared_ptr<Connection>>* batch_{nullptr};

  std::map<std::uint64_t, SdsStream> sds_;
  std::map<std::uint64_t, SvidStream> svid_;
  std::map<std::uint64_t, BundlesStream> bundles_;
  struct TlsCache {
    MaterialPtr material;
    AnyPtr any;
  };
  struct TrustCache {
    std::string pem;
    std::string id;
    AnyPtr any;
  };
  struct SvidCache {
    MaterialPtr material;
    std::string trust_pem;
    SvidPtr svid;  // null: the material cannot be an SVID (logged once)
    std::string key;  // this SVID's part of a stream's content key
  };
  std::map<std::string, TlsCache> tls_cache_;
  std::map<std::string, TrustCache> trust_cache_;
  std::map<std::string, SvidCache> svid_cache_;
  std::map<PeerKey, SvidContent>* svid_memo_{nullptr};  // during refresh_all
  struct SdsPlan {
    SdsContent content;
    std::string key;
    Bytes version;
  };
  std::map<std::pair<PeerKey, std::vector<std::string>>, SdsPlan>* sds_memo_{nullptr};
  std::int64_t log_second_{0};
  int logged_{0};
  std::size_t pushes_sds_{0};
  std::size_t pushes_workload_{0};
};

using Impl = SidecarServer::Impl;

// ---- a connection: HTTP/2 server framing on the daemon's io_context --------------------------
//
// RFC 9113 as a gRPC server needs it: the client preface and SETTINGS, HEADERS/CONTINUATION with
// HPACK (hpack.h), DATA with flow control both ways, PING, RST_STREAM, GOAWAY, WINDOW_UPDATE;
// PRIORITY and unknown frames are ignored, PUSH_PROMISE from a client is an error. A connection
// holds only its state (no frame buffer, no encoder table): input is read into one buffer shared
// by every connection, and output is gathered for one sendmsg(2) whose message bodies point into
// the serialised bytes every stream shares. Only what the kernel does not take is copied.

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(Impl& impl, local::socket socket, http::Peer peer)
      : impl_(&impl), socket_(std::move(socket)), peer_(std::move(peer)), timer_(impl.io()) {}

  const http::Peer& peer() const { return peer_; }

  bool open() {
    boost::system::error_code ec;
    socket_.non_blocking(true, ec);
    if (ec) return false;
    // HEADER_TABLE_SIZE 0: a client empties its table once it has read this (the decoder still
    // takes the default 4096 bytes, which a client may use until then), so a long-lived
    // connection holds no header table.
    h2::append_settings(control_, {{h2::Setting::max_concurrent_streams, max_streams()},
                                   {h2::Setting::max_header_list_size, kMaxHeaderListBytes},
                                   {h2::Setting::header_table_size, 0},
                                   {h2::Setting::enable_push, 0}});
    const auto now = SteadyClock::now();
    idle_since_ = now;
    next_ping_ = now + impl_->config().keepalive;
    reset_tokens_ = kResetBurst;
    reset_refill_ = now;
    arm_timer();
    wait_read();
    flush_now();
    return !closed_;
  }

  // Closes at once: every call ends (the server forgets them), the socket is closed.
  void close(std::string_view reason, const std::string& detail = {}) {
    if (closed_) return;
    closed_ = true;
    boost::system::error_code ec;
    timer_.cancel();
    auto calls = std::move(calls_);
    calls_.clear();
    for (auto& [sid, call] : calls) {
      call->conn = nullptr;
      impl_->call_closed(*call);
    }
    OPENSSL_cleanse(out_.data(), out_.size());
    std::string().swap(out_);
    std::string().swap(in_);
    std::string().swap(block_);
    std::string().swap(control_);
    socket_.close(ec);
    Impl* impl = impl_;
    impl_ = nullptr;
    impl->connection_closed(this, reason, detail);  // may free this
  }

  // stop(): every call has been told UNAVAILABLE; a GOAWAY, what the kernel takes, and close.
  void shutdown() {
    if (closed_) return;
    goaway(h2::ErrorCode::no_error);
    flush_now();
    // Unread input would make the kernel reset the connection and drop what we just wrote.
    while (!closed_) {
      const auto n = ::recv(socket_.native_handle(), impl_->read_buffer(), impl_->read_buffer_size(),
                            MSG_DONTWAIT);
      if (n <= 0) break;
    }
    close("stopping");
  }

  // After the server gave a call something to send: one flush per connection per io turn.
  void schedule_flush() {
    if (closed_ || flush_posted_ || in_callback_) return;
    flush_posted_ = true;
    if (impl_->batch_flush(shared_from_this())) return;
    asio::post(impl_->io(), [self = shared_from_this()] { self->run_flush(); });
  }
  void run_flush() {
    flush_posted_ = false;
    flush_now();
  }

  // ---- from the gRPC layer (Call) ----
  void start_response(Call& call) {
    call.response_started = true;
    schedule_flush();
  }
  // Not gRPC at all (content-type): an HTTP status alone, as the gRPC spec asks (415).
  void reject_http(Call& call, std::string_view status) {
    call.finishing = true;
    call.response_started = true;
    call.http_status = status;
    schedule_flush();
  }
  // Something new to send (a message, trailers, or Trailers-Only): gathered at the next flush.
  void resume(Call&) { schedule_flush(); }
  // A call's grpc-timeout: when it passes, the call ends with DEADLINE_EXCEEDED, as gRPC's
  // servers end it (a client that set one may not be there to cancel it).
  void watch_deadline(SteadyClock::time_point at) {
    if (next_deadline_ && *next_deadline_ <= at) return;
    next_deadline_ = at;
    arm_timer();
  }

 private:
  // What the gRPC layer may keep open at once on one connection; more are refused by HTTP/2.
  std::uint32_t max_streams() const {
    return static_cast<std::uint32_t>(std::min<std::size_t>(impl_->config().max_streams_per_uid, 1 << 20));
  }

  Call* find(std::uint32_t stream_id) {
    auto it = calls_.find(stream_id);
    return it == calls_.end() ? nullptr : it->second.get();
  }

  // ---- input ----

  void wait_read() {
    socket_.async_wait(local::socket::wait_read,
                       [self = shared_from_this()](boost::system::error_code ec) {
                         if (self->closed_ || ec) return;
                         self->on_readable();
                       });
  }

  void on_readable() {
    std::size_t budget = kReadBudget;
    while (!closed_ && budget > 0) {
      const auto n = ::recv(socket_.native_handle(), impl_->read_buffer(), impl_->read_buffer_size(),
                            MSG_DONTWAIT);
      if (n == 0) {
        // The client is done sending: what its last frames asked for still goes out.
        flush_now();
        close(drop_reason_.empty() ? "peer_closed" : drop_reason_, drop_detail_);
        return;
      }
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        close("read_failed", std::strerror(errno));
        return;
      }
      budget -= std::min<std::size_t>(budget, static_cast<std::size_t>(n));
      in_callback_ = true;
      process(impl_->read_buffer(), static_cast<std::size_t>(n));
      in_callback_ = false;
      if (dying_) {
        // A connection error: the GOAWAY (and whatever is queued before it) goes out first, if
        // the kernel takes it.
        flush_now();
        close(drop_reason_, drop_detail_);
        return;
      }
    }
    if (closed_) return;
    flush_now();
    if (closed_) return;
    if (!out_.empty()) {
      // The client does not take what we send: read nothing more from it until it does (its
      // PINGs and SETTINGS would only queue more answers).
      read_paused_ = true;
      return;
    }
    if (budget == 0) {
      // More may be waiting: after the others' turn.
      asio::post(impl_->io(), [self = shared_from_this()] {
        if (!self->closed_) self->on_readable();
      });
    } else {
      wait_read();
    }
  }

  // Whole frames from what came; a frame cut by the read waits in in_.
  void process(const std::uint8_t* data, std::size_t n) {
    std::string_view input(reinterpret_cast<const char*>(data), n);
    if (!in_.empty()) {
      in_.append(input);
      input = in_;
    }
    std::size_t at = 0;
    if (preface_seen_ < h2::kPreface.size()) {
      const std::size_t k = std::min(h2::kPreface.size() - preface_seen_, input.size());
      if (input.substr(0, k) != h2::kPreface.substr(preface_seen_, k)) {
        drop("not_http2", "no HTTP/2 client preface");
        return;
      }
      preface_seen_ += k;
      at = k;
    }
    while (!dying_ && input.size() - at >= h2::kFrameHeaderBytes) {
      const auto* p = reinterpret_cast<const std::uint8_t*>(input.data() + at);
      const h2::FrameHeader h = h2::parse_frame_header(p);
      if (h.length > h2::kDefaultMaxFrame) {
        connection_error(h2::ErrorCode::frame_size_error,
                         "a frame of " + std::to_string(h.length) + " bytes");
        return;
      }
      if (input.size() - at - h2::kFrameHeaderBytes < h.length) break;
      const std::string_view payload = input.substr(at + h2::kFrameHeaderBytes, h.length);
      at += h2::kFrameHeaderBytes + h.length;
      on_frame(h, payload);
    }
    if (dying_ || closed_) return;
    if (!in_.empty()) {
      in_.erase(0, at);
    } else {
      in_.assign(input.substr(at));
    }
    if (in_.empty()) std::string().swap(in_);  // a connection between frames holds no buffer
  }

  void on_frame(const h2::FrameHeader& h, std::string_view payload) {
    using h2::ErrorCode;
    using h2::Type;
    if (!settings_seen_ && (h.type != Type::settings || (h.flags & h2::flag::ack))) {
      return connection_error(ErrorCode::protocol_error, "the first frame is not SETTINGS");
    }
    if (block_stream_ != 0 && (h.type != Type::continuation || h.stream_id != block_stream_)) {
      return connection_error(ErrorCode::protocol_error, "a header block is cut by another frame");
    }
    switch (h.type) {
      case Type::data: return on_data(h, payload);
      case Type::headers: return on_headers(h, payload);
      case Type::continuation: return on_continuation(h, payload);
      case Type::priority:
        if (h.stream_id == 0) return connection_error(ErrorCode::protocol_error, "PRIORITY on stream 0");
        if (payload.size() != 5) return connection_error(ErrorCode::frame_size_error, "PRIORITY size");
        return;  // gRPC has no use for priorities
      case Type::rst_stream: return on_rst_stream(h, payload);
      case Type::settings: return on_settings(h, payload);
      case Type::push_promise:
        return connection_error(ErrorCode::protocol_error, "PUSH_PROMISE from a client");
      case Type::ping: return on_ping(h, payload);
      case Type::goaway:
        if (h.stream_id != 0) return connection_error(ErrorCode::protocol_error, "GOAWAY on a stream");
        if (payload.size() < 8) return connection_error(ErrorCode::frame_size_error, "GOAWAY size");
        goaway_received_ = true;
        return;
      case Type::window_update: return on_window_update(h, payload);
    }
    // Unknown frame types are ignored (RFC 9113 4.1).
  }

  void on_data(const h2::FrameHeader& h, std::string_view payload) {
    using h2::ErrorCode;
    if (h.stream_id == 0) return connection_error(ErrorCode::protocol_error, "DATA on stream 0");
    std::string_view data = payload;
    if (h.flags & h2::flag::padded) {
      if (data.empty()) return connection_error(ErrorCode::frame_size_error, "padded DATA without its length");
      const std::size_t pad = static_cast<std::uint8_t>(data[0]);
      if (pad >= data.size()) return connection_error(ErrorCode::protocol_error, "DATA padding too long");
      data = data.substr(1, data.size() - 1 - pad);
    }
    // The whole frame counts against the windows, padding included (RFC 9113 6.9).
    conn_received_ += h.length;
    if (conn_received_ > h2::kDefaultWindow) {
      return connection_error(ErrorCode::flow_control_error, "DATA beyond the connection's window");
    }
    if (conn_received_ >= h2::kDefaultWindow / 2) {
      h2::append_window_update(control_, 0, static_cast<std::uint32_t>(conn_received_));
      conn_received_ = 0;
    }
    Call* call = find(h.stream_id);
    if (!call) {
      if (h.stream_id > last_stream_id_) {
        return connection_error(ErrorCode::protocol_error, "DATA on an idle stream");
      }
      return;  // a stream we closed: what was in flight is dropped
    }
    if (call->remote_closed) return reset(*call, ErrorCode::stream_closed);
    call->received += h.length;
    if (call->received > h2::kDefaultWindow) return reset(*call, ErrorCode::flow_control_error);
    const bool end = h.flags & h2::flag::end_stream;
    auto keep = calls_.at(h.stream_id);
    if (!data.empty()) on_data_chunk(keep, data);
    if (keep->conn == nullptr || dying_) return;
    if (!end && keep->received >= h2::kDefaultWindow / 2) {
      h2::append_window_update(control_, h.stream_id, static_cast<std::uint32_t>(keep->received));
      keep->received = 0;
    }
    if (end) half_closed(keep);
  }

  void on_headers(const h2::FrameHeader& h, std::string_view payload) {
    using h2::ErrorCode;
    if (h.stream_id == 0) return connection_error(ErrorCode::protocol_error, "HEADERS on stream 0");
    std::size_t pos = 0;
    std::size_t pad = 0;
    if (h.flags & h2::flag::padded) {
      if (payload.empty()) return connection_error(ErrorCode::frame_size_error, "padded HEADERS without its length");
      pad = static_cast<std::uint8_t>(payload[0]);
      pos = 1;
    }
    if (h.flags & h2::flag::priority) {
      if (payload.size() < pos + 5) return connection_error(ErrorCode::frame_size_error, "HEADERS priority");
      const auto dep = h2::read_u32(reinterpret_cast<const std::uint8_t*>(payload.data() + pos)) & 0x7fffffffu;
      if (dep == h.stream_id) return connection_error(ErrorCode::protocol_error, "a stream depends on itself");
      pos += 5;
    }
    if (pad > payload.size() - pos) return connection_error(ErrorCode::protocol_error, "HEADERS padding too long");
    if (payload.size() - pos - pad > kMaxHeaderBlockBytes) return flood("a header block over 32 KiB");
    block_.assign(payload.substr(pos, payload.size() - pos - pad));
    block_flags_ = h.flags;
    continuations_ = 0;
    if (h.flags & h2::flag::end_headers) {
      end_of_block(h.stream_id);
    } else {
      block_stream_ = h.stream_id;
    }
  }

  void on_continuation(const h2::FrameHeader& h, std::string_view payload) {
    if (block_stream_ == 0) {
      return connection_error(h2::ErrorCode::protocol_error, "CONTINUATION without HEADERS");
    }
    if (++continuations_ > kMaxContinuations) {
      return flood("more than " + std::to_string(kMaxContinuations) + " CONTINUATION frames");
    }
    if (block_.size() + payload.size() > kMaxHeaderBlockBytes) return flood("a header block over 32 KiB");
    block_.append(payload);
    if (h.flags & h2::flag::end_headers) {
      const auto sid = block_stream_;
      block_stream_ = 0;
      end_of_block(sid);
    }
  }

  // A whole header block: a new call, the client's trailers, or one for a stream already gone
  // (decoded all the same: the HPACK table must stay in step).
  void end_of_block(std::uint32_t sid) {
    using h2::ErrorCode;
    const bool end_stream = block_flags_ & h2::flag::end_stream;
    std::shared_ptr<Call> call;
    hpack::Error error = hpack::Error::none;
    auto ignore = [](std::string_view, std::string_view) {};
    if (auto it = calls_.find(sid); it != calls_.end()) {
      // Trailers from the client: they must end the stream; their content is of no use.
      error = decoder_.decode(block_, kMaxHeaderListBytes, ignore);
      call = it->second;
      if (error == hpack::Error::compression) return compression_error();
      if (!end_stream) return reset(*call, ErrorCode::protocol_error);
      if (!call->remote_closed) half_closed(call);
    } else if (sid <= last_stream_id_ || goaway_sent_) {
      error = decoder_.decode(block_, kMaxHeaderListBytes, ignore);
      if (error == hpack::Error::compression) return compression_error();
    } else if (sid % 2 == 0) {
      return connection_error(ErrorCode::protocol_error, "a client opened an even stream");
    } else {
      last_stream_id_ = sid;
      if (calls_.size() >= max_streams()) {
        error = decoder_.decode(block_, kMaxHeaderListBytes, ignore);
        if (error == hpack::Error::compression) return compression_error();
        h2::append_rst_stream(control_, sid, ErrorCode::refused_stream);
      } else {
        call = std::make_shared<Call>();
        call->id = impl_->next_id();
        call->stream_id = sid;
        call->conn = this;
        call->send_window = peer_initial_window_;
        calls_.emplace(sid, call);
        idle_since_.reset();
        error = decoder_.decode(block_, kMaxHeaderListBytes,
                                [&](std::string_view name, std::string_view value) {
                                  on_header(*call, name, value);
                                });
        if (error == hpack::Error::compression) return compression_error();
        if (error == hpack::Error::too_large) {
          reset(*call, ErrorCode::enhance_your_calm);
        } else if (call->bad_header || !call->has_method || !call->has_scheme || call->path.empty()) {
          reset(*call, ErrorCode::protocol_error);
        } else {
          impl_->start_call(call);
          if (end_stream && call->conn && !call->remote_closed) half_closed(call);
        }
      }
    }
    if (block_.capacity() > 256) {
      std::string().swap(block_);
    } else {
      block_.clear();
    }
  }

  // RFC 9113 8.2 and 8.3: what makes a request malformed (a stream error), then the fields the
  // gRPC layer reads.
  static void on_header(Call& call, std::string_view name, std::string_view value) {
    const bool bad_name = name.empty() || std::any_of(name.begin() + (name[0] == ':' ? 1 : 0), name.end(), [](char ch) {
                            const auto c = static_cast<unsigned char>(ch);
                            return c <= 0x20 || (c >= 'A' && c <= 'Z') || c >= 0x7f || c == ':';
                          });
    const bool bad_value = value.find_first_of(std::string_view("\0\r\n", 3)) != std::string_view::npos;
    if (bad_name || bad_value) {
      call.bad_header = true;
      return;
    }
    if (name[0] == ':') {
      bool* seen = name == ":method"      ? &call.has_method
                   : name == ":scheme"    ? &call.has_scheme
                   : name == ":authority" ? &call.has_authority
                                          : nullptr;
      if (name == ":path") {
        if (!call.path.empty() || value.empty()) call.bad_header = true;
        call.path = value;
        if (call.saw_field) call.bad_header = true;
        return;
      }
      if (!seen || *seen || call.saw_field) {
        call.bad_header = true;
        return;
      }
      *seen = true;
      return;
    }
    call.saw_field = true;
    if (name == "connection" || name == "keep-alive" || name == "proxy-connection" ||
        name == "transfer-encoding" || name == "upgrade" || (name == "te" && value != "trailers")) {
      call.bad_header = true;
    } else if (name == "content-type") {
      call.content_type = value;
    } else if (name == "grpc-encoding") {
      call.encoding = value;
    } else if (name == "workload.spiffe.io") {
      call.spiffe_header = value == "true";
    } else if (name == "grpc-timeout") {
      const auto timeout = parse_grpc_timeout(value);
      if (!timeout) {
        call.bad_timeout = true;
      } else if (*timeout != SteadyClock::duration::max()) {
        call.deadline = SteadyClock::now() + *timeout;
      }
    }
  }

  void on_rst_stream(const h2::FrameHeader& h, std::string_view payload) {
    using h2::ErrorCode;
    if (h.stream_id == 0) return connection_error(ErrorCode::protocol_error, "RST_STREAM on stream 0");
    if (payload.size() != 4) return connection_error(ErrorCode::frame_size_error, "RST_STREAM size");
    if (h.stream_id > last_stream_id_) {
      return connection_error(ErrorCode::protocol_error, "RST_STREAM on an idle stream");
    }
    // Rapid reset (CVE-2023-44487): a client opening and cancelling streams in a loop.
    const auto now = SteadyClock::now();
    reset_tokens_ = std::min(kResetBurst, reset_tokens_ + std::chrono::duration<double>(now - reset_refill_).count() * kResetRate);
    reset_refill_ = now;
    if (reset_tokens_ < 1) return flood("streams reset faster than " + std::to_string(static_cast<int>(kResetRate)) + "/s");
    reset_tokens_ -= 1;
    if (find(h.stream_id)) close_stream(h.stream_id);
  }

  void on_settings(const h2::FrameHeader& h, std::string_view payload) {
    using h2::ErrorCode;
    using h2::Setting;
    if (h.stream_id != 0) return connection_error(ErrorCode::protocol_error, "SETTINGS on a stream");
    if (h.flags & h2::flag::ack) {
      if (!payload.empty()) return connection_error(ErrorCode::frame_size_error, "SETTINGS ack with a payload");
      return;
    }
    if (payload.size() % 6 != 0) return connection_error(ErrorCode::frame_size_error, "SETTINGS size");
    if (payload.size() / 6 > kMaxSettingsEntries) {
      return flood("more than " + std::to_string(kMaxSettingsEntries) + " entries in a SETTINGS frame");
    }
    for (std::size_t i = 0; i < payload.size(); i += 6) {
      const auto* p = reinterpret_cast<const std::uint8_t*>(payload.data() + i);
      const auto id = static_cast<Setting>((p[0] << 8) | p[1]);
      const std::uint32_t value = h2::read_u32(p + 2);
      switch (id) {
        case Setting::enable_push:
          if (value > 1) return connection_error(ErrorCode::protocol_error, "ENABLE_PUSH neither 0 nor 1");
          break;
        case Setting::initial_window_size: {
          if (value > h2::kMaxWindow) return connection_error(ErrorCode::flow_control_error, "INITIAL_WINDOW_SIZE too large");
          const std::int64_t delta = static_cast<std::int64_t>(value) - peer_initial_window_;
          for (auto& [sid, call] : calls_) {
            call->send_window += delta;
            if (call->send_window > h2::kMaxWindow) {
              return connection_error(ErrorCode::flow_control_error, "a stream window past 2^31-1");
            }
          }
          peer_initial_window_ = value;
          break;
        }
        case Setting::max_frame_size:
          if (value < h2::kDefaultMaxFrame || value > 0xffffff) {
            return connection_error(ErrorCode::protocol_error, "MAX_FRAME_SIZE out of range");
          }
          peer_max_frame_ = value;
          break;
        default:
          break;  // header table size (we index nothing), limits on streams we never open, ...
      }
    }
    settings_seen_ = true;
    h2::append_settings_ack(control_);
    count_ack();
  }

  void on_ping(const h2::FrameHeader& h, std::string_view payload) {
    if (h.stream_id != 0) return connection_error(h2::ErrorCode::protocol_error, "PING on a stream");
    if (payload.size() != 8) return connection_error(h2::ErrorCode::frame_size_error, "PING size");
    const auto* opaque = reinterpret_cast<const std::uint8_t*>(payload.data());
    if (h.flags & h2::flag::ack) {
      if (ping_deadline_ && std::memcmp(opaque, ping_data_.data(), ping_data_.size()) == 0) {
        ping_deadline_.reset();
      }
      return;
    }
    h2::append_ping(control_, true, opaque);
    count_ack();
  }

  void on_window_update(const h2::FrameHeader& h, std::string_view payload) {
    using h2::ErrorCode;
    if (payload.size() != 4) return connection_error(ErrorCode::frame_size_error, "WINDOW_UPDATE size");
    const std::int64_t increment =
        h2::read_u32(reinterpret_cast<const std::uint8_t*>(payload.data())) & 0x7fffffffu;
    if (h.stream_id == 0) {
      if (increment == 0) return connection_error(ErrorCode::protocol_error, "WINDOW_UPDATE of 0");
      conn_send_window_ += increment;
      if (conn_send_window_ > h2::kMaxWindow) {
        return connection_error(ErrorCode::flow_control_error, "the connection window past 2^31-1");
      }
      return;
    }
    Call* call = find(h.stream_id);
    if (!call) {
      if (h.stream_id > last_stream_id_) {
        return connection_error(ErrorCode::protocol_error, "WINDOW_UPDATE on an idle stream");
      }
      return;
    }
    if (increment == 0) return reset(*call, ErrorCode::protocol_error);
    call->send_window += increment;
    if (call->send_window > h2::kMaxWindow) return reset(*call, ErrorCode::flow_control_error);
  }

  // SETTINGS and PING answers the client has not read: more than a few is a flood (a client
  // that writes them and never reads would otherwise make us queue without end).
  void count_ack() {
    if (++acks_queued_ > kMaxQueuedAcks) flood("more than " + std::to_string(kMaxQueuedAcks) + " PING/SETTINGS answers unread");
  }

  // gRPC messages in a call's DATA: a message may span DATA frames, a frame may hold several.
  void on_data_chunk(const std::shared_ptr<Call>& call, std::string_view data) {
    if (call->finishing || !call->conn) return;  // ended early: the rest is dropped
    const std::size_t max = impl_->config().max_request_bytes;
    call->inbuf.append(data);
    std::size_t at = 0;
    while (call->inbuf.size() - at >= 5 && !call->finishing && call->conn) {
      const auto* p = reinterpret_cast<const unsigned char*>(call->inbuf.data() + at);
      const std::uint32_t n = h2::read_u32(p + 1);
      if (p[0] & 1) {
        // Compressed, while we named no grpc-encoding we accept (only identity): the gRPC
        // spec's answer to a compressed message without a matching encoding.
        call->finish({Code::internal, "compressed messages are not supported (grpc-encoding identity only)"});
        break;
      }
      if (n > max) {
        call->finish({Code::resource_exhausted, "request message larger than " +
                                                    std::to_string(max) + " bytes"});
        break;
      }
      if (call->inbuf.size() - at - 5 < n) break;
      const std::string_view message(call->inbuf.data() + at + 5, n);
      at += 5 + n;
      ++call->messages_in;
      impl_->call_message(call, message);
    }
    if (call->finishing || !call->conn) {
      std::string().swap(call->inbuf);
    } else {
      call->inbuf.erase(0, at);
      if (call->inbuf.empty()) std::string().swap(call->inbuf);
    }
  }

  void half_closed(const std::shared_ptr<Call>& call) {
    call->remote_closed = true;
    if (call->conn) impl_->call_half_closed(call);
  }

  // ---- errors ----

  // A stream error: RST_STREAM, and the call is gone.
  void reset(Call& call, h2::ErrorCode code) {
    h2::append_rst_stream(control_, call.stream_id, code);
    close_stream(call.stream_id);
  }

  void close_stream(std::uint32_t stream_id) {
    auto it = calls_.find(stream_id);
    if (it == calls_.end()) return;
    auto call = std::move(it->second);
    calls_.erase(it);
    call->conn = nullptr;
    impl_->call_closed(*call);
    if (calls_.empty()) idle_since_ = SteadyClock::now();
  }

  void goaway(h2::ErrorCode code) {
    if (goaway_sent_) return;
    goaway_sent_ = true;
    h2::append_goaway(control_, last_stream_id_, code);
  }

  // A connection error: GOAWAY with the code, then the connection ends (after this input).
  void connection_error(h2::ErrorCode code, std::string detail) {
    goaway(code);
    drop(code == h2::ErrorCode::enhance_your_calm ? "flooded" : "protocol_error",
         std::string(h2::error_name(code)) + ": " + detail);
  }
  void flood(std::string detail) { connection_error(h2::ErrorCode::enhance_your_calm, std::move(detail)); }
  void compression_error() {
    connection_error(h2::ErrorCode::compression_error, "a header block that does not decode");
  }
  void drop(std::string_view reason, std::string detail) {
    if (dying_) return;
    dying_ = true;
    drop_reason_ = reason;
    drop_detail_ = std::move(detail);
    if (!in_callback_) {
      flush_now();
      close(drop_reason_, drop_detail_);
    }
  }

  // ---- output ----

  bool has_output(const Call& c) const {
    if (!c.http_status.empty()) return !c.headers_sent;
    return (c.response_started && !c.headers_sent) || c.current || c.trailers;
  }

  // Gathers what can go now: control frames first, then each call's HEADERS, DATA (within the
  // flow-control windows) and trailers, up to about kWriteChunk bytes.
  void gather(WriteList& w) {
    if (!control_.empty()) {
      w.copy(control_);
      if (control_.capacity() > 64) {
        std::string().swap(control_);
      } else {
        control_.clear();
      }
      acks_queued_ = 0;
    }
    std::vector<std::uint32_t> ended;  // allocates only when a stream ends
    for (auto& [sid, call] : calls_) {
      if (w.size() >= kWriteChunk || w.full()) break;
      if (has_output(*call)) gather_call(*call, w, ended);
    }
    for (auto sid : ended) close_stream(sid);
  }

  void gather_call(Call& c, WriteList& w, std::vector<std::uint32_t>& ended) {
    const auto sid = c.stream_id;
    if (!c.http_status.empty()) {
      c.headers_sent = true;
      w.append([&](std::string& b) {
        h2::append_headers(b, sid, h2::HeaderBlock().status(c.http_status), true);
        if (!c.remote_closed) h2::append_rst_stream(b, sid, h2::ErrorCode::no_error);
      });
      ended.push_back(sid);
      return;
    }
    if (c.response_started && !c.headers_sent) {
      c.headers_sent = true;
      w.append([&](std::string& b) {
        h2::append_headers(b, sid,
                           h2::HeaderBlock()
                               .status("200")
                               .field("content-type", "application/grpc")
                               .field("grpc-accept-encoding", "identity"),
                           false);
      });
    }
    while (c.current && w.size() < kWriteChunk && !w.full()) {
      const std::int64_t window = std::min(conn_send_window_, c.send_window);
      if (window <= 0) return;  // a WINDOW_UPDATE will let the rest go
      const std::size_t n = std::min({c.current->size() - c.offset, static_cast<std::size_t>(window),
                                      static_cast<std::size_t>(peer_max_frame_)});
      w.append([&](std::string& b) {
        h2::append_frame_header(b, static_cast<std::uint32_t>(n), h2::Type::data, 0, sid);
      });
      c.current->gather(c.offset, n, w);
      conn_send_window_ -= static_cast<std::int64_t>(n);
      c.send_window -= static_cast<std::int64_t>(n);
      c.offset += n;
      if (c.offset == c.current->size()) {
        c.current = std::move(c.pending);
        c.pending.reset();
        c.offset = 0;
      }
    }
    if (c.current || !c.trailers) return;
    // The status: as trailers after the messages, or as Trailers-Only when nothing was sent.
    const auto& t = *c.trailers;
    std::string message = percent_encode(t.message);
    if (message.size() > kMaxStatusMessage) message.resize(kMaxStatusMessage);
    h2::HeaderBlock block;
    if (!c.response_started) block.status("200").field("content-type", "application/grpc");
    block.field("grpc-status", std::to_string(static_cast<int>(t.code)));
    if (!message.empty()) block.field("grpc-message", message);
    w.append([&](std::string& b) {
      h2::append_headers(b, sid, block, true);
      // Our side is done: a client still sending is told to stop, without error (RFC 9113
      // 8.1), as gRPC servers do.
      if (!c.remote_closed) h2::append_rst_stream(b, sid, h2::ErrorCode::no_error);
    });
    c.response_started = true;
    c.trailers.reset();
    ended.push_back(sid);
  }

  // Writes what there is to write; what the kernel does not take stays in out_ (at most one
  // gathering), and nothing more is gathered until it is written: a client that does not read
  // holds a bounded amount here, then fails its keep-alive.
  void flush_now() {
    if (closed_ || writing_blocked_) return;
    if (!out_.empty() && !write_out()) return;
    WriteList& w = impl_->write_list();
    while (!closed_) {
      w.clear();
      gather(w);
      if (w.size() == 0) break;
      std::size_t written = 0;
      const bool ok = w.send(socket_.native_handle(), written);
      if (!ok) {
        const int err = errno;
        w.clear();
        close(err == EPIPE || err == ECONNRESET ? "peer_closed" : "write_failed", std::strerror(err));
        return;
      }
      if (written < w.size()) {
        w.rest(written, out_);
        w.clear();
        wait_write();
        return;
      }
    }
    w.clear();
    if (closed_) return;
    if (goaway_received_ && calls_.empty() && !dying_) close("goaway");
  }

  // False: closed, or blocked (out_ keeps the rest).
  bool write_out() {
    std::size_t written = 0;
    while (written < out_.size()) {
      const auto n = ::send(socket_.native_handle(), out_.data() + written, out_.size() - written,
                            MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        close(errno == EPIPE || errno == ECONNRESET ? "peer_closed" : "write_failed",
              std::strerror(errno));
        return false;
      }
      written += static_cast<std::size_t>(n);
    }
    OPENSSL_cleanse(out_.data(), written);
    out_.erase(0, written);
    if (!out_.empty()) {
      wait_write();
      return false;
    }
    std::string().swap(out_);
    return true;
  }

  void wait_write() {
    if (writing_blocked_) return;
    writing_blocked_ = true;
    socket_.async_wait(local::socket::wait_write,
                       [self = shared_from_this()](boost::system::error_code ec) {
                         self->writing_blocked_ = false;
                         if (self->closed_ || ec) return;
                         self->flush_now();
                         if (!self->closed_ && self->out_.empty() && self->read_paused_) {
                           self->read_paused_ = false;
                           self->wait_read();
                         }
                       });
  }

  // One timer per connection: keep-alive PINGs, their answer, the idle limit and the calls'
  // deadlines.
  void arm_timer() {
    if (closed_) return;
    auto at = next_ping_;
    if (ping_deadline_) at = std::min(at, *ping_deadline_);
    if (next_deadline_) at = std::min(at, *next_deadline_);
    if (idle_since_) at = std::min(at, *idle_since_ + impl_->config().idle_timeout);
    timer_.expires_at(at);
    timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
      if (ec || self->closed_) return;
      self->on_timer();
    });
  }

  void on_timer() {
    const auto now = SteadyClock::now();
    if (next_deadline_ && now >= *next_deadline_) {
      next_deadline_.reset();
      std::vector<std::shared_ptr<Call>> late;  // finishing may close streams: not while walking
      for (const auto& [sid, call] : calls_) {
        if (!call->deadline || call->finishing) continue;
        if (*call->deadline <= now) {
          late.push_back(call);
        } else if (!next_deadline_ || *call->deadline < *next_deadline_) {
          next_deadline_ = call->deadline;
        }
      }
      for (const auto& call : late) {
        call->deadline.reset();
        call->finish({Code::deadline_exceeded, "deadline exceeded"});
        if (closed_) return;
      }
    }
    if (ping_deadline_ && now >= *ping_deadline_) {
      close("keepalive_timeout", "no PING answer; " + std::to_string(out_.size()) +
                                     " bytes not taken by the client");
      return;
    }
    if (idle_since_ && now >= *idle_since_ + impl_->config().idle_timeout) {
      goaway(h2::ErrorCode::no_error);
      flush_now();
      close("idle");
      return;
    }
    if (now >= next_ping_) {
      const auto& keepalive = impl_->config().keepalive;
      next_ping_ = now + keepalive;
      if (!ping_deadline_) {
        RAND_bytes(ping_data_.data(), static_cast<int>(ping_data_.size()));
        h2::append_ping(control_, false, ping_data_.data());
        ping_deadline_ = now + std::min<SteadyClock::duration>(kPingTimeout, keepalive);
        flush_now();
        if (closed_) return;
      }
    }
    arm_timer();
  }

  Impl* impl_;
  local::socket socket_;
  http::Peer peer_;
  hpack::Decoder decoder_;
  std::map<std::uint32_t, std::shared_ptr<Call>> calls_;
  std::string in_;       // a frame cut by the last read
  std::string block_;    // a header block waiting for its CONTINUATION frames
  std::string control_;  // frames of our own to send (SETTINGS, answers, WINDOW_UPDATE, RST, GOAWAY)
  std::string out_;      // gathered, not yet taken by the kernel
  asio::steady_timer timer_;
  SteadyClock::time_point next_ping_;
  std::optional<SteadyClock::time_point> ping_deadline_;
  std::optional<SteadyClock::time_point> next_deadline_;  // the earliest call deadline, or later
  std::optional<SteadyClock::time_point> idle_since_;
  SteadyClock::time_point reset_refill_;
  double reset_tokens_{0};
  std::array<std::uint8_t, 8> ping_data_{};
  std::string drop_reason_;
  std::string drop_detail_;
  std::int64_t conn_send_window_{h2::kDefaultWindow};
  std::int64_t peer_initial_window_{h2::kDefaultWindow};
  std::int64_t conn_received_{0};  // DATA bytes since our last connection WINDOW_UPDATE
  std::uint32_t peer_max_frame_{h2::kDefaultMaxFrame};
  std::uint32_t last_stream_id_{0};
  std::uint32_t block_stream_{0};  // non-zero: CONTINUATION frames of this stream expected
  std::uint8_t block_flags_{0};
  std::uint8_t continuations_{0};
  std::uint16_t acks_queued_{0};
  std::uint8_t preface_seen_{0};
  bool settings_seen_{false};
  bool goaway_sent_{false};
  bool goaway_received_{false};
  bool dying_{false};  // a connection error: the rest of the input is not read
  bool closed_{false};
  bool in_callback_{false};
  bool flush_posted_{false};
  bool writing_blocked_{false};
  bool read_paused_{false};
};

const http::Peer& Call::peer() const {
  static const http::Peer kNobody;
  return conn ? conn->peer() : kNobody;
}

void Call::send(OutMessage m) {
  if (!conn || finishing) return;
  if (!current) {
    current = std::move(m);
    offset = 0;
  } else if (offset == 0) {
    current = std::move(m);  // not started yet: replaced
  } else {
    pending = std::move(m);
  }
  if (!response_started) {
    conn->start_response(*this);
  } else {
    conn->resume(*this);
  }
}

void Call::finish(Status status) {
  if (!conn || finishing) return;
  finishing = true;
  pending.reset();  // the message being written (or about to be) still goes out
  trailers = std::move(status);
  // The flush sends Trailers-Only if no response started, else trailers after the message
  // being written, so it is not cut off.
  conn->resume(*this);
}

// ---- Impl: connections and calls ------------------------------------------------------------

Impl::Impl(asio::io_context& io, const config::WorkloadApiConfig& config, CertificateStore& store,
           Metrics& metrics, const Clock& clock)
    : io_(io), config_(config), store_(store), metrics_(metrics), clock_(clock), expiry_(io) {}

Impl::~Impl() {
  stop();
}

std::string Impl::admit_connection(const http::Peer& peer) {
  if (conns_.size() >= config_.max_connections) return "max_connections";
  auto it = conns_per_uid_.find(peer.uid);
  if (it != conns_per_uid_.end() && it->second >= config_.max_connections_per_uid) {
    return "max_connections_per_uid";
  }
  return {};
}

// Every caller's streams together, the uid's streams and its call rate (a token bucket:
// calls_per_second, bursts of twice as many). Empty: admitted and counted.
std::string Impl::admit_call(uid_t uid) {
  if (calls_ >= config_.max_streams) return "max_streams";
  const double rate = static_cast<double>(config_.calls_per_second);
  const double burst = 2 * rate;
  const auto now = SteadyClock::now();
  auto [it, fresh] = buckets_.try_emplace(uid);
  Bucket& b = it->second;
  if (fresh) {
    b.tokens = burst;
  } else {
    const double elapsed = std::chrono::duration<double>(now - b.last).count();
    b.tokens = std::min(burst, b.tokens + elapsed * rate);
  }
  b.last = now;
  if (b.streams >= config_.max_streams_per_uid) return "max_streams_per_uid";
  if (b.tokens < 1) return "rate_limit";
  b.tokens -= 1;
  ++b.streams;
  ++calls_;
  return {};
}

void Impl::end_call(uid_t uid) {
  if (calls_ > 0) --calls_;
  auto it = buckets_.find(uid);
  if (it != buckets_.end() && it->second.streams > 0) --it->second.streams;
}

void Impl::start_call(const std::shared_ptr<Call>& call) {
  Call& c = *call;
  c.method = method_of(c.path);
  c.api = api_of(c.method);
  const bool grpc = c.content_type == "application/grpc" ||
                    c.content_type.starts_with("application/grpc+") ||
                    c.content_type.starts_with("application/grpc;");
  c.path.clear();
  c.path.shrink_to_fit();
  c.content_type.clear();
  c.content_type.shrink_to_fit();
  if (!grpc) {
    c.conn->reject_http(c, "415");
    return;
  }
  if (c.method == Method::unknown) {
    c.finish({Code::unimplemented, "unknown method"});
    return;
  }
  if (c.method == Method::unimplemented) {
    c.finish({Code::unimplemented, "not implemented by certagent"});
    return;
  }
  if (!c.encoding.empty() && c.encoding != "identity") {
    c.finish({Code::unimplemented, "grpc-encoding " + c.encoding + " is not supported (identity only)"});
    return;
  }
  if (c.bad_timeout) {
    c.finish({Code::internal, "malformed grpc-timeout"});
    return;
  }
  auto refuse = [&](Code code, std::string_view reason, std::string message) {
    refused(c.api, c.peer(), reason, message);
    c.finish({code, std::move(message)});
  };
  if (!started_) return refuse(Code::unavailable, "stopping", "certagent is stopping");
  if (!c.peer().known) {
    return refuse(Code::permission_denied, "unknown_caller", "the caller's credentials are unknown");
  }
  if (c.api == Api::x509_svid || c.api == Api::x509_bundles) {
    // SPIFFE Workload Endpoint: every request carries workload.spiffe.io: true (against SSRF);
    // without it, InvalidArgument.
    if (!c.spiffe_header) {
      return refuse(Code::invalid_argument, "missing_security_header",
                    "the workload.spiffe.io: true metadata is missing");
    }
  }
  if (auto why = admit_call(c.peer().uid); !why.empty()) {
    return refuse(Code::unavailable, why, "too many calls (" + why + "); retry with a backoff");
  }
  c.admitted = true;
  c.uid = c.peer().uid;
  if (c.deadline) c.conn->watch_deadline(*c.deadline);
  if (c.api == Api::sds) open_sds(call);
}

void Impl::call_message(const std::shared_ptr<Call>& call, std::string_view bytes) {
  Call& c = *call;
  if (!c.admitted || c.finishing) return;
  switch (c.api) {
    case Api::sds: {
      auto it = sds_.find(c.id);
      if (it == sds_.end()) return;
      DiscoveryRequest request;
      if (!request.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
        c.finish({Code::invalid_argument, "the request is not a DiscoveryRequest"});
        return;
      }
      sds_request(it->second, request);
      return;
    }
    case Api::sds_fetch: {
      if (c.messages_in > 1) return;  // a unary call's one request; the rest is ignored
      DiscoveryRequest request;
      if (!request.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
        c.finish({Code::invalid_argument, "the request is not a DiscoveryRequest"});
        return;
      }
      fetch(call, request);
      return;
    }
    case Api::x509_svid:
    case Api::x509_bundles: {
      if (c.messages_in > 1) return;
      // X509SVIDRequest and X509BundlesRequest have no fields: any valid message will do.
      X509SVIDRequest request;
      if (!request.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
        c.finish({Code::invalid_argument, "the request is not a valid message"});
        return;
      }
      if (c.api == Api::x509_svid) {
        open_svid(call);
      } else {
        open_bundles(call);
      }
      return;
    }
    case Api::connection: return;
  }
}

// The client closed its side: a bidirectional SDS stream ends with OK (as gRPC's server did);
// a unary or server-streaming call without its request message is malformed.
void Impl::call_half_closed(const std::shared_ptr<Call>& call) {
  Call& c = *call;
  if (c.finishing) return;
  if (c.api == Api::sds) {
    c.finish({Code::ok, {}});
    return;
  }
  if (c.messages_in == 0) c.finish({Code::internal, "the call carried no request message"});
}

// The stream is gone (ended, reset by the client, or its connection closed).
void Impl::call_closed(Call& call) {
  call.conn = nullptr;
  if (call.admitted) {
    call.admitted = false;
    end_call(call.uid);
  }
  const bool known = sds_.erase(call.id) + svid_.erase(call.id) + bundles_.erase(call.id) > 0;
  if (known) set_streams_metric();
}

void Impl::connection_closed(Connection* conn, std::string_view reason, const std::string& detail) {
  auto it = conns_.find(conn);
  if (it == conns_.end()) return;
  auto keep = std::move(it->second);  // freed after this returns
  conns_.erase(it);
  const auto& peer = keep->peer();
  auto u = conns_per_uid_.find(peer.uid);
  if (u != conns_per_uid_.end() && --u->second == 0) conns_per_uid_.erase(u);
  static const std::set<std::string_view> kQuiet = {"peer_closed", "goaway", "idle", "stopping"};
  if (!kQuiet.contains(reason)) {
    metrics_.add(kRejectedMetric, {{"reason", std::string(reason)}});
    if (log_allowed()) {
      logger()->warn("event=sidecar_connection_dropped reason={} {} detail={}", reason,
                     peer_text(peer), log::quote(detail));
    }
  } else if (reason == "idle") {
    logger()->debug("event=sidecar_connection_idle {}", peer_text(peer));
  }
  asio::post(io_, [keep = std::move(keep)] {});  // not freed inside its own call stack
}

Result<> Impl::start() {
  if (config_.path.empty()) return {};
  if (started_) return make_error("sidecar API already started");
  metrics_.declare(kStreamsMetric, Metrics::Type::gauge,
                   "Open sidecar API streams (api: sds, workload).");
  metrics_.declare(kRejectedMetric, Metrics::Type::counter,
                   "Sidecar API connections and calls refused or dropped, by reason.");
  metrics_.declare(kPushesMetric, Metrics::Type::counter,
                   "Messages sent on sidecar API streams (api: sds, workload).");
  metrics_.declare(kNacksMetric, Metrics::Type::counter,
                   "SDS responses a client rejected (NACK).");

  // protobuf logs a request with invalid UTF-8 in a string field to stderr, once per message:
  // a client could fill the journal that way. The request is refused (INVALID_ARGUMENT) and
  // counted like any other; protobuf's own line is dropped.
  google::protobuf::SetLogHandler([](google::protobuf::LogLevel level, const char*, int,
                                     const std::string& message) {
    if (level >= google::protobuf::LOGLEVEL_FATAL) logger()->critical("event=protobuf_fatal error={}", log::quote(message));
  });
  read_buffer_.resize(64 * 1024);

  auto file = create_unix_socket(io_, config_.path, config_.mode, config_.group, "workload_api");
  if (!file) return file.error();
  socket_file_ = std::make_pair(file->dev, file->ino);
  acceptor_.emplace(std::move(file->acceptor));
  subscription_ = store_.subscribe("", [this](const CertEntry& entry, CertEvent) {
    // A new commit, an expiry or a removal drops the serialized key at once.
    tls_cache_.erase(entry.config.name);
    svid_cache_.erase(entry.config.name);
    trust_cache_.erase(entry.config.name + std::string(kTrustSuffix));
    schedule_refresh();
  });
  started_ = true;
  set_streams_metric();
  accept();
  arm_expiry();
  logger()->info("event=sidecar_listening path={} mode={:04o} group={} apis=\"sds workload\"",
                 log::quote(config_.path.string()), config_.mode, log::quote(config_.group));
  return {};
}

void Impl::stop() {
  if (!started_) return;
  started_ = false;
  boost::system::error_code ec;
  if (acceptor_) acceptor_->close(ec);
  expiry_.cancel();
  subscription_.reset();
  // Every stream is told UNAVAILABLE, then each connection gets a GOAWAY and is closed.
  std::vector<std::shared_ptr<Call>> calls;
  for (auto& [id, s] : sds_) calls.push_back(s.call);
  for (auto& [id, s] : svid_) calls.push_back(s.call);
  for (auto& [id, s] : bundles_) calls.push_back(s.call);
  for (auto& call : calls) call->finish({Code::unavailable, "certagent is stopping"});
  std::vector<std::shared_ptr<Connection>> conns;
  for (auto& [p, conn] : conns_) conns.push_back(conn);
  for (auto& conn : conns) conn->shutdown();
  sds_.clear();
  svid_.clear();
  bundles_.clear();
  tls_cache_.clear();
  trust_cache_.clear();
  svid_cache_.clear();
  if (socket_file_) {
    remove_unix_socket(config_.path, socket_file_->first, socket_file_->second);
    socket_file_.reset();
  }
  set_streams_metric();
  logger()->info("event=sidecar_closed path={}", log::quote(config_.path.string()));
}

void Impl::accept() {
  acceptor_->async_accept([weak = weak_from_this()](boost::system::error_code ec, local::socket socket) {
    if (auto self = weak.lock()) self->on_accept(ec, std::move(socket));
  });
}

void Impl::on_accept(boost::system::error_code ec, local::socket socket) {
  if (!started_ || ec == asio::error::operation_aborted) return;
  if (ec) {
    // EMFILE and the like: try again a little later rather than spin.
    logger()->warn("event=sidecar_accept_failed error={}", log::quote(ec.message()));
    auto timer = std::make_shared<asio::steady_timer>(io_, 100ms);
    timer->async_wait([weak = weak_from_this(), timer](boost::system::error_code) {
      if (auto self = weak.lock(); self && self->started_) self->accept();
    });
    return;
  }
  // The caller, from the kernel, before a byte is read: it stays with the connection.
  http::Peer peer = http::peer_of_fd(socket.native_handle());
  serve(std::move(socket), std::move(peer));
  accept();
}

void Impl::serve(local::socket socket, http::Peer peer) {
  if (!started_) return;
  if (auto why = admit_connection(peer); !why.empty()) {
    refused(Api::connection, peer, why, "connection refused");
    boost::system::error_code ec;
    socket.close(ec);
    return;
  }
  const uid_t uid = peer.uid;
  auto conn = std::make_shared<Connection>(*this, std::move(socket), std::move(peer));
  Connection* raw = conn.get();
  conns_.emplace(raw, conn);
  ++conns_per_uid_[uid];
  if (!conn->open()) raw->close("setup_failed");
}

void Impl::refused(Api api, const http::Peer& peer, std::string_view reason,
                   const std::string& detail) {
  metrics_.add(kRejectedMetric, {{"reason", std::string(reason)}});
  if (log_allowed()) {
    logger()->warn("event=sidecar_refused api={} reason={} {} detail={}", api_name(api), reason,
                   peer_text(peer), log::quote(detail));
  }
}

bool Impl::log_allowed() {
  const auto second =
      std::chrono::duration_cast<std::chrono::seconds>(SteadyClock::now().time_since_epoch()).count();
  if (second != log_second_) {
    if (logged_ > kMaxRefusalLogs) {
      logger()->warn("event=sidecar_refusals_not_logged count={}", logged_ - kMaxRefusalLogs);
    }
    log_second_ = second;
    logged_ = 0;
  }
  return ++logged_ <= kMaxRefusalLogs;
}

void Impl::publish_pushes() {
  if (pushes_sds_) metrics_.add(kPushesMetric, {{"api", "sds"}}, static_cast<double>(pushes_sds_));
  if (pushes_workload_) {
    metrics_.add(kPushesMetric, {{"api", "workload"}}, static_cast<double>(pushes_workload_));
  }
  pushes_sds_ = pushes_workload_ = 0;
}

void Impl::set_streams_metric() {
  metrics_.set(kStreamsMetric, {{"api", "sds"}}, static_cast<double>(sds_.size()));
  metrics_.set(kStreamsMetric, {{"api", "workload"}},
               static_cast<double>(svid_.size() + bundles_.size()));
}

// ---- SDS -------------------------------------------------------------------------------------

Impl::SdsContent Impl::sds_content(const http::Peer& peer, const std::vector<std::string>& names,
                                   std::vector<std::string>* denied) {
  SdsContent out;
  const auto now = clock_.now();
  for (const auto& name : names) {
    const bool trust = name.size() > kTrustSuffix.size() &&
                       name.compare(name.size() - kTrustSuffix.size(), kTrustSuffix.size(),
                                    kTrustSuffix) == 0;
    const std::string cert_name = trust ? name.substr(0, name.size() - kTrustSuffix.size()) : name;
    const CertEntry* entry = store_.find(cert_name);
    if (!entry) continue;  // unknown names are not sent, as xDS wants
    if (!may_read_key(entry->config.socket, peer)) {
      if (denied) denied->push_back(name);
      continue;
    }
    if (trust) {
      if (entry->trust_bundle_pem.empty()) continue;
      auto& cached = trust_cache_[name];
      if (!cached.any || cached.pem != entry->trust_bundle_pem) {
        cached.pem = entry->trust_bundle_pem;
        cached.id = "trust:" + content_version({{"", cached.pem}});
        cached.any = trust_secret(name, cached.pem);
      }
      out.resources.push_back(cached.any);
      out.ids.emplace_back(name, cached.id);
      continue;
    }
    // Fail-closed: nothing expired or not yet valid is ever sent.
    const auto material = entry->valid_material(now);
    if (!material) continue;
    auto& cached = tls_cache_[name];
    if (cached.material != material || !cached.any) {
      cached.material = material;
      cached.any = tls_secret(name, *material);
    }
    out.resources.push_back(cached.any);
    out.ids.emplace_back(name, "serial:" + material->serial_hex);
  }
  return out;
}

void Impl::open_sds(const std::shared_ptr<Call>& call) {
  SdsStream s;
  s.call = call;
  sds_.emplace(call->id, std::move(s));
  set_streams_metric();
}

void Impl::sds_request(SdsStream& s, const DiscoveryRequest& request) {
  Call& call = *s.call;
  if (!request.type_url().empty() && request.type_url() != kSecretTypeUrl) {
    call.finish({Code::invalid_argument, "this stream serves " + std::string(kSecretTypeUrl) +
                                             ", not " + log::excerpt(request.type_url(), 100)});
    return;
  }
  if (request.resource_names_size() > static_cast<int>(kMaxResourceNames)) {
    call.finish({Code::invalid_argument,
                 "at most " + std::to_string(kMaxResourceNames) + " resource names"});
    return;
  }
  for (const auto& name : request.resource_names()) {
    if (name.empty() || name.size() > kMaxResourceNameBytes) {
      call.finish({Code::invalid_argument, "a resource name is empty or too long"});
      return;
    }
  }
  if (!s.requested && request.has_node()) s.node = request.node().id();
  // xDS: a request whose nonce is not the last one sent answers an older response; the client
  // will answer the newer one too, so this one is ignored.
  if (!s.nonce.empty() && request.response_nonce() != s.nonce) {
    if (logger()->should_log(spdlog::level::debug)) {
      logger()->debug("event=sds_stale_request nonce={} current={} {}",
                      log::quote(request.response_nonce()), log::quote(s.nonce), peer_text(call.peer()));
    }
    return;
  }
  if (!request.response_nonce().empty()) {
    if (request.has_error_detail()) {
      metrics_.add(kNacksMetric, {});
      logger()->warn("event=sds_nack node={} version={} rejected_nonce={} code={} error={} {}",
                     log::quote(s.node), log::quote(request.version_info()),
                     log::quote(request.response_nonce()), request.error_detail().code(),
                     log::quote(log::excerpt(request.error_detail().message(), 300)),
                     peer_text(call.peer()));
    } else if (logger()->should_log(spdlog::level::debug)) {
      logger()->debug("event=sds_ack node={} version={} {}", log::quote(s.node),
                      log::quote(request.version_info()), peer_text(call.peer()));
    }
  }
  std::vector<std::string> names(request.resource_names().begin(), request.resource_names().end());
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  const bool first = !s.requested;
  const bool changed = first || names != s.names;
  s.requested = true;
  if (changed) {
    s.names = std::move(names);
    std::vector<std::string> denied;
    (void)sds_content(call.peer(), s.names, &denied);
    for (const auto& name : denied) {
      metrics_.add(kRejectedMetric, {{"reason", "forbidden"}});
      if (log_allowed()) {
        logger()->warn("event=sidecar_denied api=sds resource={} node={} {}", log::quote(name),
                       log::quote(s.node), peer_text(call.peer()));
      }
    }
    std::map<std::string, Bytes> shared;
    sds_push(s, first, shared);
    publish_pushes();
  }
}

// Sends the stream what it should hold now, when that differs from what it was last sent (or
// always, for a first request with something to send). A certificate that expired or left the
// config is left out of the next response (SotW SDS has no removal; an empty response says
// "nothing valid" and Envoy NACKs it, keeping the last secret, whose leaf every peer rejects).
//
// The response is serialised once per distinct content (version) and shared by every stream
// that gets it; only version_info and the stream's nonce are per stream, serialised after it
// (protobuf merges fields in any order).
Impl::SdsPlan& Impl::sds_plan(const http::Peer& peer, const std::vector<std::string>& names,
                               std::map<std::string, Bytes>& shared, SdsPlan& scratch) {
  SdsPlan* plan = &scratch;
  if (sds_memo_) {
    auto [it, fresh] = sds_memo_->try_emplace(
        std::make_pair(PeerKey{peer.known, peer.uid, peer.gid, peer.groups}, names));
    if (!fresh) return it->second;
    plan = &it->second;
  }
  plan->content = sds_content(peer, names, nullptr);
  // Streams with the same content share its version (a digest) and its bytes: keyed by the
  // (name, content id) pairs, which are sorted (the names are).
  plan->key = "sds:";
  for (const auto& [name, id] : plan->content.ids) {
    plan->key.append(name).append("=").append(id).append(";");
  }
  auto& version_of = shared["v:" + plan->key];
  if (!version_of) version_of = std::make_shared<const std::string>(content_version(plan->content.ids));
  plan->version = version_of;
  return *plan;
}

void Impl::sds_push(SdsStream& s, bool always, std::map<std::string, Bytes>& shared) {
  SdsPlan scratch;
  SdsPlan& plan = sds_plan(s.call->peer(), s.names, shared, scratch);
  if (!s.sent && plan.content.resources.empty()) return;  // nothing to say yet
  const std::string& version = *plan.version;
  if (!always && s.sent && version == s.version) return;
  s.version = version;
  s.nonce = std::to_string(++s.nonces);
  s.sent = true;
  auto& body = shared[plan.key];
  if (!body) body = serialize(*discovery_response(plan.content.resources, "", ""));
  // DiscoveryResponse's version_info (1) and nonce (5), which protobuf merges into the shared
  // message: encoded here, a protobuf object per stream cost more than the rest of the push.
  std::string tail;
  auto field = [&tail](char tag, const std::string& value) {
    tail.push_back(tag);
    for (std::size_t n = value.size(); ; n >>= 7) {
      if (n < 0x80) {
        tail.push_back(static_cast<char>(n));
        break;
      }
      tail.push_back(static_cast<char>((n & 0x7f) | 0x80));
    }
    tail += value;
  };
  field('\x0a', s.version);
  field('\x2a', s.nonce);
  s.call->send(frame_message(body, std::move(tail)));
  ++pushes_sds_;
}

void Impl::fetch(const std::shared_ptr<Call>& call, const DiscoveryRequest& request) {
  if (!request.type_url().empty() && request.type_url() != kSecretTypeUrl) {
    call->finish({Code::invalid_argument, "FetchSecrets serves " + std::string(kSecretTypeUrl) +
                                              ", not " + log::excerpt(request.type_url(), 100)});
    return;
  }
  if (request.resource_names_size() > static_cast<int>(kMaxResourceNames)) {
    call->finish({Code::invalid_argument,
                  "at most " + std::to_string(kMaxResourceNames) + " resource names"});
    return;
  }
  std::vector<std::string> names(request.resource_names().begin(), request.resource_names().end());
  std::vector<std::string> denied;
  auto content = sds_content(call->peer(), names, &denied);
  for (const auto& name : denied) {
    metrics_.add(kRejectedMetric, {{"reason", "forbidden"}});
    if (log_allowed()) {
      logger()->warn("event=sidecar_denied api=sds_fetch resource={} {}", log::quote(name),
                     peer_text(call->peer()));
    }
  }
  auto response = discovery_response(content.resources, content_version(content.ids), "");
  call->send(frame_message(serialize(*response)));
  call->finish({Code::ok, {}});
}

// ---- the SPIFFE Workload API --------------------------------------------------------------

Impl::SvidContent Impl::svid_content(const http::Peer& peer) {
  SvidContent out;
  const auto now = clock_.now();
  for (const auto& [name, entry] : store_.entries()) {
    const std::string id = spiffe_id_of(entry.config);
    if (id.empty() || !may_read_key(entry.config.socket, peer)) continue;
    out.entitled = true;
    const auto material = entry.valid_material(now);  // fail-closed
    if (!material) continue;
    auto& cached = svid_cache_[name];
    if (cached.material != material || cached.trust_pem != entry.trust_bundle_pem) {
      cached.material = material;
      cached.trust_pem = entry.trust_bundle_pem;
      auto svid = make_svid(name, id, *material, entry.trust_bundle_pem);
      cached.svid = svid ? *svid : nullptr;
      cached.key = name + "=" + material->serial_hex + ":" +
                   content_version({{"", entry.trust_bundle_pem}}) + ";";
      if (!svid) {
        logger()->error("event=svid_unavailable certificate={} error={}", name,
                        log::quote(svid.error().message));
      }
    }
    if (!cached.svid) continue;
    out.svids.push_back(cached.svid);
    out.key += cached.key;
  }
  return out;
}

Impl::BundlesContent Impl::bundles_content(const http::Peer& peer) {
  std::map<std::string, std::set<std::string>> pems;  // trust domain -> bundle PEMs
  for (const auto& [name, entry] : store_.entries()) {
    const std::string id = spiffe_id_of(entry.config);
    if (id.empty() || entry.trust_bundle_pem.empty()) continue;
    if (!may_read_key(entry.config.socket, peer)) continue;
    pems[trust_domain_of(id)].insert(entry.trust_bundle_pem);
  }
  BundlesContent out;
  for (const auto& [domain, set] : pems) {
    std::string der;
    for (const auto& pem : set) {
      auto d = pem_certs_to_der(pem);
      if (!d) {
        logger()->error("event=bundle_unavailable trust_domain={} error={}", domain,
                        log::quote(d.error().message));
        continue;
      }
      der += *d;
      out.key += domain + ":" + content_version({{"", pem}}) + ";";
    }
    if (!der.empty()) out.bundles.emplace_back(domain, std::move(der));
  }
  return out;
}

void Impl::open_svid(const std::shared_ptr<Call>& call) {
  SvidStream s;
  s.call = call;
  auto [it, inserted] = svid_.emplace(call->id, std::move(s));
  set_streams_metric();
  std::map<std::string, Bytes> shared;
  svid_push(it->second, shared);
  publish_pushes();
}

// The standard: every message is the full set the caller may have; none at all (no identity,
// or every SVID expired or removed) is PERMISSION_DENIED, which ends the stream.
const Impl::SvidContent& Impl::svid_content_for(const http::Peer& peer, SvidContent& scratch) {
  if (!svid_memo_) {
    scratch = svid_content(peer);
    return scratch;
  }
  auto [it, fresh] = svid_memo_->try_emplace(PeerKey{peer.known, peer.uid, peer.gid, peer.groups});
  if (fresh) it->second = svid_content(peer);
  return it->second;
}

void Impl::svid_push(SvidStream& s, std::map<std::string, Bytes>& shared) {
  if (s.ended) return;
  SvidContent scratch;
  const SvidContent& content = svid_content_for(s.call->peer(), scratch);
  if (content.svids.empty()) {
    s.ended = true;
    const std::string why = content.entitled
                                ? "no valid X.509-SVID for this caller now (expired, removed or "
                                  "not issued yet); retry with a backoff"
                                : "no identity for this caller (uid " +
                                      std::to_string(s.call->uid) + ")";
    if (log_allowed()) {
      logger()->info("event=svid_stream_ended reason={} {}",
                     content.entitled ? "no_valid_svid" : "no_identity", peer_text(s.call->peer()));
    }
    metrics_.add(kRejectedMetric, {{"reason", content.entitled ? "no_valid_svid" : "no_identity"}});
    s.call->finish({Code::permission_denied, why});
    return;
  }
  if (content.key == s.key) return;
  s.key = content.key;
  auto& message = shared[content.key];
  if (!message) message = serialize(*svid_response(content.svids));
  s.call->send(frame_message(message));
  ++pushes_workload_;
}

void Impl::open_bundles(const std::shared_ptr<Call>& call) {
  BundlesStream s;
  s.call = call;
  auto [it, inserted] = bundles_.emplace(call->id, std::move(s));
  set_streams_metric();
  std::map<std::string, Bytes> shared;
  bundles_push(it->second, shared);
  publish_pushes();
}

void Impl::bundles_push(BundlesStream& s, std::map<std::string, Bytes>& shared) {
  if (s.ended) return;
  auto content = bundles_content(s.call->peer());
  if (content.bundles.empty()) {
    s.ended = true;
    metrics_.add(kRejectedMetric, {{"reason", "no_bundle"}});
    s.call->finish({Code::permission_denied,
                    "no X.509 bundle for this caller (uid " + std::to_string(s.call->uid) + ")"});
    return;
  }
  if (content.key == s.key) return;
  s.key = content.key;
  auto& message = shared["b:" + content.key];
  if (!message) message = serialize(*bundles_response(content.bundles));
  s.call->send(frame_message(message));
  ++pushes_workload_;
}

// ---- pushes ---------------------------------------------------------------------------------

// Store events come in bursts (a commit, then a state change; a reload touches many): one
// refresh after the burst.
void Impl::schedule_refresh() {
  if (refresh_pending_ || !started_) return;
  refresh_pending_ = true;
  asio::post(io_, [weak = weak_from_this()] {
    if (auto self = weak.lock()) self->refresh_all();
  });
}

void Impl::refresh_all() {
  refresh_pending_ = false;
  if (!started_) return;
  // One serialisation per distinct content, shared by the streams that get it. A stream may end
  // (PERMISSION_DENIED) while we go: its entry stays until its HTTP/2 stream closes.
  std::map<std::string, Bytes> shared;
  std::vector<std::shared_ptr<Connection>> batch;
  std::map<PeerKey, SvidContent> svid_memo;
  std::map<std::pair<PeerKey, std::vector<std::string>>, SdsPlan> sds_memo;
  batch_ = &batch;
  svid_memo_ = &svid_memo;
  sds_memo_ = &sds_memo;
  for (auto& [id, s] : sds_) {
    if (s.requested) sds_push(s, false, shared);
  }
  for (auto& [id, s] : svid_) svid_push(s, shared);
  for (auto& [id, s] : bundles_) bundles_push(s, shared);
  svid_memo_ = nullptr;
  sds_memo_ = nullptr;
  batch_ = nullptr;
  for (auto& conn : batch) conn->run_flush();
  publish_pushes();
  arm_expiry();
}

// Belt and braces: the certificate loop marks expiry in the store, but a stream must hear of
// it even if that comes late. One timer, at the earliest not_after of what is held.
void Impl::arm_expiry() {
  expiry_.cancel();
  const auto now = clock_.now();
  std::optional<SystemTime> earliest;
  for (const auto& [name, entry] : store_.entries()) {
    if (auto m = entry.valid_material(now); m && (!earliest || m->not_after < *earliest)) {
      earliest = m->not_after;
    }
  }
  if (!earliest) return;
  // Relative to the injected clock, and never zero, so a clock that disagrees with the timer's
  // cannot make it spin.
  expiry_.expires_after(std::max<SystemTime::duration>(*earliest - now, 10ms));
  expiry_.async_wait([weak = weak_from_this()](boost::system::error_code ec) {
    if (ec) return;
    if (auto self = weak.lock()) self->refresh_all();
  });
}

// ---- SidecarServer ---------------------------------------------------------------------------

SidecarServer::SidecarServer(asio::io_context& io, const config::WorkloadApiConfig& config,
                             CertificateStore& store, Metrics& metrics, const Clock& clock)
    : impl_(std::make_shared<Impl>(io, config, store, metrics, clock)) {}

SidecarServer::~SidecarServer() { stop(); }

Result<> SidecarServer::start() { return impl_->start(); }

void SidecarServer::stop() { impl_->stop(); }

std::size_t SidecarServer::streams() const { return impl_->streams(); }

std::size_t SidecarServer::connections() const { return impl_->connections(); }

void SidecarServer::serve(boost::asio::local::stream_protocol::socket socket, http::Peer peer) {
  impl_->serve(std::move(socket), std::move(peer));
}

}  // namespace certagent::sidecar
