#include "agent/sidecar/sidecar_server.h"

#include "agent/sidecar/content.h"
#include "agent/socket_server.h"
#include "core/http/server.h"
#include "core/logging.h"

#include "envoy/service/discovery/v3/discovery.pb.h"
#include "spiffe/workload/workload.pb.h"

#include <google/protobuf/stubs/logging.h>

#include <nghttp2/nghttp2.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <sys/mman.h>
#include <sys/socket.h>
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
// Our HPACK decoder's table (the client's encoder keeps to it) and encoder's table: small, since
// gRPC's request headers are few and a table is held per connection.
constexpr std::uint32_t kHeaderTableBytes = 512;
// Read from a socket per wake-up before the other connections get their turn.
constexpr std::size_t kReadBudget = 256 * 1024;
// Frames nghttp2 serialises are gathered up to this much before one write(2).
constexpr std::size_t kWriteChunk = 64 * 1024;
// nghttp2's outbound frame buffer: one block for a 16 KiB frame and its header, allocated with
// the session.
constexpr std::size_t kFrameBufferMin = 16384 + 10;
constexpr std::size_t kFrameBufferMax = 16384 + 10 + 256;
constexpr std::size_t kFrameBufferHead = 64;  // never released: room for the frame prefix
// How long after a connection's last write its frame buffer's pages go back to the kernel, and
// after frames of what size (smaller ones touch a page or two: not worth a madvise and the page
// faults of the next push).
constexpr auto kTrimDelay = 200ms;
constexpr std::size_t kTrimAbove = 8 * 1024;
// A PING not answered within this (or the keep-alive interval, if shorter) is a dead peer.
constexpr auto kPingTimeout = 20s;

// gRPC status codes (grpc/status.h), the ones this server sends.
enum class Code : int {
  ok = 0,
  cancelled = 1,
  invalid_argument = 3,
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

nghttp2_nv header(std::string_view name, std::string_view value, bool constant = true) {
  nghttp2_nv nv;
  nv.name = reinterpret_cast<uint8_t*>(const_cast<char*>(name.data()));
  nv.namelen = name.size();
  nv.value = reinterpret_cast<uint8_t*>(const_cast<char*>(value.data()));
  nv.valuelen = value.size();
  nv.flags = constant ? (NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE)
                      : NGHTTP2_NV_FLAG_NO_COPY_NAME;
  return nv;
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

// One message on its way out: the 5-byte gRPC prefix, bytes shared with other streams, and a
// per-stream tail (SDS: version_info and nonce, which protobuf merges into the message).
struct OutMessage {
  std::array<char, 5> prefix{};
  Bytes body;
  std::string tail;

  std::size_t size() const { return prefix.size() + body->size() + tail.size(); }
  // Copies bytes [from, from + n) of the framed message to dst.
  void copy(std::size_t from, std::size_t n, std::uint8_t* dst) const {
    auto take = [&](std::string_view part) {
      if (n == 0) return;
      if (from >= part.size()) {
        from -= part.size();
        return;
      }
      const std::size_t k = std::min(n, part.size() - from);
      std::memcpy(dst, part.data() + from, k);
      dst += k;
      n -= k;
      from = 0;
    };
    take(std::string_view(prefix.data(), prefix.size()));
    take(*body);
    take(tail);
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

// One gRPC call: an HTTP/2 stream of one connection. Lives while the stream is open in nghttp2
// (the connection owns it) and while the server's stream tables hold it; once closed, it ignores
// everything.
struct Call {
  std::uint64_t id{0};
  std::int32_t stream_id{0};
  Connection* conn{nullptr};  // null once closed
  Method method{Method::unknown};
  Api api{Api::connection};

  // Request headers, until the call starts.
  std::string path;
  std::string content_type;
  std::string encoding;
  bool spiffe_header{false};
  std::size_t header_bytes{0};
  bool started{false};   // headers complete and dispatched
  bool admitted{false};  // counted by the limits
  bool remote_closed{false};
  uid_t uid{0};          // the caller's, once admitted
  std::size_t messages_in{0};
  std::string inbuf;     // request bytes not yet a whole message

  // Response.
  bool response_started{false};
  bool finishing{false};
  bool deferred{false};  // nghttp2 waits for resume_data
  std::optional<OutMessage> current;
  std::size_t offset{0};  // into current
  std::optional<OutMessage> pending;
  std::optional<Status> trailers;
  std::string status_text;  // grpc-status value, alive while nghttp2 holds the trailers

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
  nghttp2_session_callbacks* callbacks() { return callbacks_; }
  nghttp2_option* options() { return options_; }
  std::uint8_t* read_buffer() { return read_buffer_.data(); }
  std::size_t read_buffer_size() const { return read_buffer_.size(); }
  std::string& write_buffer() { return write_buffer_; }
  // Headers complete: admit and dispatch, or end the call with a status.
  void start_call(const std::shared_ptr<Call>& call);
  void call_message(const std::shared_ptr<Call>& call, std::string_view bytes);
  void call_half_closed(const std::shared_ptr<Call>& call);
  void call_closed(Call& call);
  void connection_closed(Connection* conn, std::string_view reason, const std::string& detail);
  void refused(Api api, const http::Peer& peer, std::string_view reason, const std::string& detail);
  std::uint64_t next_id() { return ++next_id_; }
  // After a connection's writes: its idle frame buffer is given back a little later, once for
  // every connection written in that time (off the path of a push).
  void schedule_trim(std::shared_ptr<Connection> conn);
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
  void sds_push(SdsStream& s, bool always, std::map<std::string, Bytes>& shared);
  SvidContent svid_content(const http::Peer& peer);
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
  nghttp2_session_callbacks* callbacks_{nullptr};
  nghttp2_option* options_{nullptr};
  // One read buffer and one write buffer for every connection: the io thread serves one at a
  // time, so an idle connection holds neither.
  std::vector<std::uint8_t> read_buffer_;
  std::string write_buffer_;

  // Connections (owned here) and the limits.
  std::unordered_map<Connection*, std::shared_ptr<Connection>> conns_;
  std::unordered_map<uid_t, std::size_t> conns_per_uid_;
  std::unordered_map<uid_t, Bucket> buckets_;
  std::size_t calls_{0};
  std::vector<std::shared_ptr<Connection>> to_trim_;
  std::vector<std::shared_ptr<Connection>>* batch_{nullptr};
  std::optional<asio::steady_timer> trim_timer_;

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
  std::int64_t log_second_{0};
  int logged_{0};
  std::size_t pushes_sds_{0};
  std::size_t pushes_workload_{0};
};

using Impl = SidecarServer::Impl;

// ---- a connection: one nghttp2 server session on the daemon's io_context --------------------

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(Impl& impl, local::socket socket, http::Peer peer)
      : impl_(&impl), socket_(std::move(socket)), peer_(std::move(peer)),
        timer_(impl.io()) {}
  ~Connection() { release_session(); }

  const http::Peer& peer() const { return peer_; }

  bool open() {
    boost::system::error_code ec;
    socket_.non_blocking(true, ec);
    if (ec) return false;
    mem_ = nghttp2_mem{this, &Connection::mem_malloc, &Connection::mem_free, &Connection::mem_calloc,
                       &Connection::mem_realloc};
    creating_ = true;
    const int rv = nghttp2_session_server_new3(&session_, impl_->callbacks(), this, impl_->options(), &mem_);
    creating_ = false;
    if (rv != 0) return false;
    const auto& c = impl_->config();
    const nghttp2_settings_entry settings[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS,
         static_cast<std::uint32_t>(std::min<std::size_t>(c.max_streams_per_uid, 1 << 20))},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, kMaxHeaderListBytes},
        {NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, kHeaderTableBytes},
    };
    if (nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings, std::size(settings)) != 0) {
      return false;
    }
    const auto now = SteadyClock::now();
    idle_since_ = now;
    next_ping_ = now + c.keepalive;
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
    release_session();
    OPENSSL_cleanse(out_.data(), out_.size());
    out_.clear();
    out_.shrink_to_fit();
    socket_.close(ec);
    Impl* impl = impl_;
    impl_ = nullptr;
    impl->connection_closed(this, reason, detail);  // may free this
  }

  // stop(): every call has been told UNAVAILABLE; a GOAWAY, what the kernel takes, and close.
  void shutdown() {
    if (closed_) return;
    nghttp2_session_terminate_session(session_, NGHTTP2_NO_ERROR);
    flush_now();
    // Unread input would make the kernel reset the connection and drop what we just wrote.
    while (!closed_) {
      const auto n = ::recv(socket_.native_handle(), impl_->read_buffer(), impl_->read_buffer_size(),
                            MSG_DONTWAIT);
      if (n <= 0) break;
    }
    close("stopping");
  }

  // After the server gave nghttp2 something to send: one flush per connection per io turn.
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

  nghttp2_session* session() { return session_; }
  // Bytes nghttp2 holds for this connection now.
  std::size_t nghttp2_bytes() const { return mem_bytes_; }

  // The frame buffer's whole pages, apart from its head, back to the kernel (their content is
  // dead once nghttp2 has handed out every frame; the next frame faults in fresh zero pages).
  void trim() {
    trim_pending_ = false;
    large_frame_ = false;

    if (closed_ || !frame_buffer_ || !out_.empty() || nghttp2_session_want_write(session_)) return;
    const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    const auto start = reinterpret_cast<std::uintptr_t>(frame_buffer_);
    const std::uintptr_t begin = (start + kFrameBufferHead + page - 1) / page * page;
    const std::uintptr_t end = (start + frame_buffer_size_) / page * page;
    if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
  }

  // ---- nghttp2 callbacks ----
  int on_begin_headers(const nghttp2_frame* frame) {
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    auto call = std::make_shared<Call>();
    call->id = impl_->next_id();
    call->stream_id = frame->hd.stream_id;
    call->conn = this;
    calls_.emplace(call->stream_id, std::move(call));
    idle_since_.reset();
    return 0;
  }

  int on_header(const nghttp2_frame* frame, std::string_view name, std::string_view value) {
    auto* call = find(frame->hd.stream_id);
    if (!call || call->started) return 0;  // trailers from the client: nothing we use
    call->header_bytes += name.size() + value.size() + 32;
    if (call->header_bytes > kMaxHeaderListBytes) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (name == ":path") {
      call->path = value;
    } else if (name == "content-type") {
      call->content_type = value;
    } else if (name == "grpc-encoding") {
      call->encoding = value;
    } else if (name == "workload.spiffe.io") {
      call->spiffe_header = value == "true";
    }
    return 0;
  }

  int on_frame_recv(const nghttp2_frame* frame) {
    switch (frame->hd.type) {
      case NGHTTP2_HEADERS:
      case NGHTTP2_DATA: {
        auto call = shared(frame->hd.stream_id);
        if (!call) return 0;
        if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
          call->started = true;
          impl_->start_call(call);
        }
        if ((frame->hd.flags & NGHTTP2_FLAG_END_STREAM) && !call->remote_closed) {
          call->remote_closed = true;
          if (call->conn) impl_->call_half_closed(call);
        }
        return 0;
      }
      case NGHTTP2_PING:
        if ((frame->hd.flags & NGHTTP2_FLAG_ACK) &&
            std::memcmp(frame->ping.opaque_data, ping_data_.data(), ping_data_.size()) == 0) {
          ping_deadline_.reset();
        }
        return 0;
      default:
        return 0;
    }
  }

  int on_data_chunk(std::int32_t stream_id, const std::uint8_t* data, std::size_t len) {
    auto call = shared(stream_id);
    if (!call || call->finishing || !call->conn) return 0;  // ended early: the rest is dropped
    const std::size_t max = impl_->config().max_request_bytes;
    call->inbuf.append(reinterpret_cast<const char*>(data), len);
    // Every whole message in what has come: a message may span DATA frames, a frame may hold
    // several.
    std::size_t at = 0;
    while (call->inbuf.size() - at >= 5 && !call->finishing && call->conn) {
      const auto* p = reinterpret_cast<const unsigned char*>(call->inbuf.data() + at);
      const std::uint32_t n = (std::uint32_t{p[1]} << 24) | (std::uint32_t{p[2]} << 16) |
                              (std::uint32_t{p[3]} << 8) | std::uint32_t{p[4]};
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
      call->inbuf.clear();
      call->inbuf.shrink_to_fit();
    } else {
      call->inbuf.erase(0, at);
      if (call->inbuf.empty()) call->inbuf.shrink_to_fit();
    }
    return 0;
  }

  int on_stream_close(std::int32_t stream_id) {
    auto it = calls_.find(stream_id);
    if (it == calls_.end()) return 0;
    auto call = std::move(it->second);
    calls_.erase(it);
    call->conn = nullptr;
    impl_->call_closed(*call);
    if (calls_.empty()) idle_since_ = SteadyClock::now();
    return 0;
  }

  int on_frame_send(const nghttp2_frame* frame) {
    if (frame->hd.type == NGHTTP2_GOAWAY && frame->goaway.error_code != NGHTTP2_NO_ERROR) {
      drop_reason_ = "protocol_error";
      drop_detail_ = nghttp2_http2_strerror(frame->goaway.error_code);
    }
    // Our side of a call is done (trailers, or Trailers-Only): a client still sending is told to
    // stop, without error (RFC 9113 8.1), as gRPC servers do.
    if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
      auto* call = find(frame->hd.stream_id);
      if (call && !call->remote_closed) {
        nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_NO_ERROR);
      }
    }
    return 0;
  }

  ssize_t read_data(Call& call, std::uint8_t* buf, std::size_t length, std::uint32_t* flags) {
    std::size_t done = 0;
    while (done < length && call.current) {
      const std::size_t k = std::min(length - done, call.current->size() - call.offset);
      call.current->copy(call.offset, k, buf + done);
      done += k;
      call.offset += k;
      if (call.offset == call.current->size()) {
        call.current = std::move(call.pending);
        call.pending.reset();
        call.offset = 0;
      }
    }
    if (!call.current && call.trailers) {
      *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
      submit_trailers(call);
      return static_cast<ssize_t>(done);
    }
    if (done == 0) {
      call.deferred = true;
      return NGHTTP2_ERR_DEFERRED;
    }
    return static_cast<ssize_t>(done);
  }

  // HEADERS, then DATA from the call's messages.
  void start_response(Call& call) {
    call.response_started = true;
    const nghttp2_nv nva[] = {header(":status", "200"),
                              header("content-type", "application/grpc"),
                              header("grpc-accept-encoding", "identity")};
    nghttp2_data_provider provider{};
    provider.source.ptr = &call;
    provider.read_callback = [](nghttp2_session*, std::int32_t, std::uint8_t* buf, std::size_t length,
                                std::uint32_t* flags, nghttp2_data_source* source,
                                void* user) -> ssize_t {
      auto* self = static_cast<Connection*>(user);
      return self->read_data(*static_cast<Call*>(source->ptr), buf, length, flags);
    };
    if (nghttp2_submit_response(session_, call.stream_id, nva, std::size(nva), &provider) != 0) {
      nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, call.stream_id, NGHTTP2_INTERNAL_ERROR);
    }
    schedule_flush();
  }

  // The status: as trailers after the messages, or as Trailers-Only when nothing was sent.
  void submit_trailers(Call& call) {
    const auto& t = *call.trailers;
    call.status_text = std::to_string(static_cast<int>(t.code));
    const std::string message = percent_encode(t.message);
    std::vector<nghttp2_nv> nva;
    const bool trailers_only = !call.response_started;
    if (trailers_only) {
      call.response_started = true;
      nva.push_back(header(":status", "200"));
      nva.push_back(header("content-type", "application/grpc"));
    }
    nva.push_back(header("grpc-status", call.status_text, false));
    if (!message.empty()) nva.push_back(header("grpc-message", message, false));
    const int rv = trailers_only
                       ? nghttp2_submit_response(session_, call.stream_id, nva.data(), nva.size(), nullptr)
                       : nghttp2_submit_trailer(session_, call.stream_id, nva.data(), nva.size());
    if (rv != 0) {
      nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, call.stream_id, NGHTTP2_INTERNAL_ERROR);
    }
    schedule_flush();
  }

  // Not gRPC at all (content-type): HTTP 415, as the gRPC spec asks.
  void reject_http(Call& call, std::string_view status) {
    call.finishing = true;
    call.response_started = true;
    const nghttp2_nv nva[] = {header(":status", status)};
    nghttp2_submit_response(session_, call.stream_id, nva, std::size(nva), nullptr);
    schedule_flush();
  }

  void resume(Call& call) {
    if (call.deferred) {
      call.deferred = false;
      nghttp2_session_resume_data(session_, call.stream_id);
    }
    schedule_flush();
  }

 private:
  Call* find(std::int32_t stream_id) {
    auto it = calls_.find(stream_id);
    return it == calls_.end() ? nullptr : it->second.get();
  }
  std::shared_ptr<Call> shared(std::int32_t stream_id) {
    auto it = calls_.find(stream_id);
    return it == calls_.end() ? nullptr : it->second;
  }

  void release_session() {
    if (session_) {
      nghttp2_session_del(session_);
      session_ = nullptr;
    }
  }

  // nghttp2's memory: counted, and wiped when freed (frames held key bytes).
  struct alignas(16) MemHeader {
    std::size_t size;
  };
  static void* mem_malloc(std::size_t size, void* user) {
    auto* self = static_cast<Connection*>(user);
    auto* h = static_cast<MemHeader*>(std::malloc(sizeof(MemHeader) + size));
    if (!h) return nullptr;
    h->size = size;
    self->mem_bytes_ += size;

    void* p = h + 1;
    if (self->creating_ && size >= kFrameBufferMin && size <= kFrameBufferMax && !self->frame_buffer_) {
      self->frame_buffer_ = p;
      self->frame_buffer_size_ = size;
    }
    return p;
  }
  static void mem_free(void* ptr, void* user) {
    if (!ptr) return;
    auto* self = static_cast<Connection*>(user);
    auto* h = static_cast<MemHeader*>(ptr) - 1;
    if (ptr == self->frame_buffer_) self->frame_buffer_ = nullptr;
    self->mem_bytes_ -= h->size;
    OPENSSL_cleanse(ptr, h->size);
    std::free(h);
  }
  // calloc(3) itself: memory fresh from the kernel is not written, so untouched pages of a
  // zeroed table cost nothing.
  static void* mem_calloc(std::size_t n, std::size_t size, void* user) {
    if (size != 0 && n > (SIZE_MAX - sizeof(MemHeader)) / size) return nullptr;
    auto* self = static_cast<Connection*>(user);
    auto* h = static_cast<MemHeader*>(std::calloc(1, sizeof(MemHeader) + n * size));
    if (!h) return nullptr;
    h->size = n * size;
    self->mem_bytes_ += h->size;
    return h + 1;
  }
  static void* mem_realloc(void* ptr, std::size_t size, void* user) {
    if (!ptr) return mem_malloc(size, user);
    if (size == 0) {
      mem_free(ptr, user);
      return nullptr;
    }
    void* p = mem_malloc(size, user);
    if (!p) return nullptr;
    std::memcpy(p, ptr, std::min(size, (static_cast<MemHeader*>(ptr) - 1)->size));
    mem_free(ptr, user);
    return p;
  }

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
        close("peer_closed");
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
      const auto rv = nghttp2_session_mem_recv(session_, impl_->read_buffer(), static_cast<std::size_t>(n));
      in_callback_ = false;
      if (rv < 0) {
        const char* reason = rv == NGHTTP2_ERR_BAD_CLIENT_MAGIC ? "not_http2"
                             : rv == NGHTTP2_ERR_FLOODED        ? "flooded"
                                                                : "protocol_error";
        // What nghttp2 queued (a GOAWAY) goes out first, if the kernel takes it.
        flush_now();
        close(reason, nghttp2_strerror(static_cast<int>(rv)));
        return;
      }
    }
    if (closed_) return;
    flush_now();
    if (closed_) return;
    if (budget == 0) {
      // More may be waiting: after the others' turn.
      asio::post(impl_->io(), [self = shared_from_this()] {
        if (!self->closed_) self->on_readable();
      });
    } else {
      wait_read();
    }
  }

  // Gathers what nghttp2 has to send and writes it; what the kernel does not take stays in out_
  // (at most one chunk), and nothing more is taken from nghttp2 until it is written: a client
  // that does not read holds a bounded amount here, then fails its keep-alive.
  void flush_now() {
    if (closed_ || writing_blocked_) return;
    if (!out_.empty()) {
      if (!write_out()) return;
    }
    std::string& chunk = impl_->write_buffer();
    bool wrote = false;
    while (!closed_) {
      chunk.clear();
      while (chunk.size() < kWriteChunk) {
        const std::uint8_t* data = nullptr;
        in_callback_ = true;
        const auto n = nghttp2_session_mem_send(session_, &data);
        in_callback_ = false;
        if (n < 0) {
          close("internal_error", nghttp2_strerror(static_cast<int>(n)));
          return;
        }
        if (n == 0) break;
        if (static_cast<std::size_t>(n) > kTrimAbove) large_frame_ = true;
        chunk.append(reinterpret_cast<const char*>(data), static_cast<std::size_t>(n));
      }
      if (chunk.empty()) break;
      std::size_t written = 0;
      if (!write_some(chunk, written)) return;
      if (written < chunk.size()) {
        out_.assign(chunk, written);
        OPENSSL_cleanse(chunk.data(), chunk.size());
        wait_write();
        return;
      }
      OPENSSL_cleanse(chunk.data(), chunk.size());
      wrote = true;
    }
    if (closed_) return;
    if (!nghttp2_session_want_read(session_) && !nghttp2_session_want_write(session_)) {
      close(drop_reason_.empty() ? "goaway" : drop_reason_, drop_detail_);
      return;
    }
    if (wrote && large_frame_ && !trim_pending_) {
      trim_pending_ = true;
      impl_->schedule_trim(shared_from_this());
    }
  }

  // False: closed, or blocked (out_ keeps the rest).
  bool write_out() {
    std::size_t written = 0;
    if (!write_some(out_, written)) return false;
    OPENSSL_cleanse(out_.data(), written);
    out_.erase(0, written);
    if (!out_.empty()) {
      wait_write();
      return false;
    }
    out_.shrink_to_fit();
    return true;
  }

  bool write_some(const std::string& data, std::size_t& written) {
    while (written < data.size()) {
      const auto n = ::send(socket_.native_handle(), data.data() + written, data.size() - written,
                            MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
        close(errno == EPIPE || errno == ECONNRESET ? "peer_closed" : "write_failed",
              std::strerror(errno));
        return false;
      }
      written += static_cast<std::size_t>(n);
    }
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
                       });
  }

  // One timer per connection: keep-alive PINGs, their answer, and the idle limit.
  void arm_timer() {
    if (closed_) return;
    auto at = next_ping_;
    if (ping_deadline_) at = std::min(at, *ping_deadline_);
    if (idle_since_) at = std::min(at, *idle_since_ + impl_->config().idle_timeout);
    timer_.expires_at(at);
    timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
      if (ec || self->closed_) return;
      self->on_timer();
    });
  }

  void on_timer() {
    const auto now = SteadyClock::now();
    if (ping_deadline_ && now >= *ping_deadline_) {
      close("keepalive_timeout", "no PING answer; " + std::to_string(out_.size()) +
                                     " bytes not taken by the client");
      return;
    }
    if (idle_since_ && now >= *idle_since_ + impl_->config().idle_timeout) {
      nghttp2_session_terminate_session(session_, NGHTTP2_NO_ERROR);
      flush_now();
      close("idle");
      return;
    }
    if (now >= next_ping_) {
      const auto& keepalive = impl_->config().keepalive;
      next_ping_ = now + keepalive;
      if (!ping_deadline_) {
        RAND_bytes(ping_data_.data(), static_cast<int>(ping_data_.size()));
        nghttp2_submit_ping(session_, NGHTTP2_FLAG_NONE, ping_data_.data());
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
  nghttp2_session* session_{nullptr};
  std::map<std::int32_t, std::shared_ptr<Call>> calls_;
  std::string out_;  // written by nghttp2, not yet taken by the kernel
  asio::steady_timer timer_;
  SteadyClock::time_point next_ping_;
  std::optional<SteadyClock::time_point> ping_deadline_;
  std::optional<SteadyClock::time_point> idle_since_;
  std::array<std::uint8_t, 8> ping_data_{};
  std::string drop_reason_;
  std::string drop_detail_;
  nghttp2_mem mem_{};
  std::size_t mem_bytes_{0};
  void* frame_buffer_{nullptr};
  std::size_t frame_buffer_size_{0};
  bool creating_{false};
  bool trim_pending_{false};
  bool large_frame_{false};  // a frame that filled more than a page or two since the last trim
  bool closed_{false};
  bool in_callback_{false};
  bool flush_posted_{false};
  bool writing_blocked_{false};
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
  if (!response_started) {
    conn->submit_trailers(*this);  // Trailers-Only
  } else {
    conn->resume(*this);  // after the message being written, so it is not cut off
  }
}

namespace {

Connection* conn_of(void* user) { return static_cast<Connection*>(user); }

nghttp2_session_callbacks* make_callbacks() {
  nghttp2_session_callbacks* cb = nullptr;
  if (nghttp2_session_callbacks_new(&cb) != 0) return nullptr;
  nghttp2_session_callbacks_set_on_begin_headers_callback(
      cb, [](nghttp2_session*, const nghttp2_frame* frame, void* user) {
        return conn_of(user)->on_begin_headers(frame);
      });
  nghttp2_session_callbacks_set_on_header_callback(
      cb, [](nghttp2_session*, const nghttp2_frame* frame, const std::uint8_t* name, std::size_t namelen,
             const std::uint8_t* value, std::size_t valuelen, std::uint8_t, void* user) {
        return conn_of(user)->on_header(
            frame, std::string_view(reinterpret_cast<const char*>(name), namelen),
            std::string_view(reinterpret_cast<const char*>(value), valuelen));
      });
  nghttp2_session_callbacks_set_on_frame_recv_callback(
      cb, [](nghttp2_session*, const nghttp2_frame* frame, void* user) {
        return conn_of(user)->on_frame_recv(frame);
      });
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(
      cb, [](nghttp2_session*, std::uint8_t, std::int32_t stream_id, const std::uint8_t* data,
             std::size_t len, void* user) { return conn_of(user)->on_data_chunk(stream_id, data, len); });
  nghttp2_session_callbacks_set_on_stream_close_callback(
      cb, [](nghttp2_session*, std::int32_t stream_id, std::uint32_t, void* user) {
        return conn_of(user)->on_stream_close(stream_id);
      });
  nghttp2_session_callbacks_set_on_frame_send_callback(
      cb, [](nghttp2_session*, const nghttp2_frame* frame, void* user) {
        return conn_of(user)->on_frame_send(frame);
      });
  return cb;
}

}  // namespace

// ---- Impl: connections and calls ------------------------------------------------------------

Impl::Impl(asio::io_context& io, const config::WorkloadApiConfig& config, CertificateStore& store,
           Metrics& metrics, const Clock& clock)
    : io_(io), config_(config), store_(store), metrics_(metrics), clock_(clock), expiry_(io) {}

Impl::~Impl() {
  stop();
  if (callbacks_) nghttp2_session_callbacks_del(callbacks_);
  if (options_) nghttp2_option_del(options_);
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

void Impl::schedule_trim(std::shared_ptr<Connection> conn) {
  to_trim_.push_back(std::move(conn));
  if (!trim_timer_) trim_timer_.emplace(io_);
  if (to_trim_.size() > 1) return;  // armed
  trim_timer_->expires_after(kTrimDelay);
  trim_timer_->async_wait([weak = weak_from_this()](boost::system::error_code ec) {
    auto self = weak.lock();
    if (!self) return;
    auto conns = std::move(self->to_trim_);
    self->to_trim_.clear();
    if (ec) return;
    for (auto& c : conns) c->trim();
  });
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
  if (!callbacks_) callbacks_ = make_callbacks();
  if (!options_ && nghttp2_option_new(&options_) == 0) {
    // Our HPACK encoder's table: gRPC responses carry a handful of constant headers.
    nghttp2_option_set_max_deflate_dynamic_table_size(options_, kHeaderTableBytes);
    // Closed streams are not kept for priority bookkeeping (gRPC uses none).
    nghttp2_option_set_no_closed_streams(options_, 1);
    // Floods of frames that ask for an answer (PING, SETTINGS), and rapid resets.
    nghttp2_option_set_max_outbound_ack(options_, 100);
    nghttp2_option_set_max_settings(options_, 32);
    nghttp2_option_set_stream_reset_rate_limit(options_, 100, 10);
    nghttp2_option_set_max_continuations(options_, 8);
  }
  if (!callbacks_ || !options_) return make_error("workload_api: nghttp2 could not be set up");
  read_buffer_.resize(64 * 1024);
  write_buffer_.reserve(kWriteChunk + 32 * 1024);

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
  if (trim_timer_) trim_timer_->cancel();
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
void Impl::sds_push(SdsStream& s, bool always, std::map<std::string, Bytes>& shared) {
  auto content = sds_content(s.call->peer(), s.names, nullptr);
  if (!s.sent && content.resources.empty()) return;  // nothing to say yet
  // Streams with the same content share its version (a digest) and its bytes: keyed by the
  // (name, content id) pairs, which are sorted (the names are).
  std::string key = "sds:";
  for (const auto& [name, id] : content.ids) key.append(name).append("=").append(id).append(";");
  auto& body = shared[key];
  auto& version_of = shared["v:" + key];
  if (!version_of) version_of = std::make_shared<const std::string>(content_version(content.ids));
  const std::string& version = *version_of;
  if (!always && s.sent && version == s.version) return;
  s.version = version;
  s.nonce = std::to_string(++s.nonces);
  s.sent = true;
  if (!body) body = serialize(*discovery_response(content.resources, "", ""));
  DiscoveryResponse tail;
  tail.set_version_info(s.version);
  tail.set_nonce(s.nonce);
  s.call->send(frame_message(body, tail.SerializeAsString()));
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
void Impl::svid_push(SvidStream& s, std::map<std::string, Bytes>& shared) {
  if (s.ended) return;
  auto content = svid_content(s.call->peer());
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
  batch_ = &batch;
  for (auto& [id, s] : sds_) {
    if (s.requested) sds_push(s, false, shared);
  }
  for (auto& [id, s] : svid_) svid_push(s, shared);
  for (auto& [id, s] : bundles_) bundles_push(s, shared);
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
