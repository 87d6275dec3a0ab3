#include "agent/sidecar/sidecar_server.h"

#include "agent/sidecar/content.h"
#include "agent/socket_server.h"
#include "core/http/server.h"
#include "core/logging.h"

#include "envoy/service/secret/v3/sds.grpc.pb.h"
#include "spiffe/workload/workload.grpc.pb.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <absl/synchronization/mutex.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/server_posix.h>

#include <boost/asio/post.hpp>
#include <boost/asio/system_timer.hpp>

#include <algorithm>
#include <charconv>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <unordered_map>

namespace certagent::sidecar {

namespace asio = boost::asio;
using local = asio::local::stream_protocol;
using discovery::DiscoveryRequest;
using discovery::DiscoveryResponse;
using grpc::Status;
using grpc::StatusCode;
using namespace std::chrono_literals;

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

// ---- connections and their callers -------------------------------------------------------

// The caller of every connection handed to gRPC, by file descriptor, and the per-uid limits.
// Used from the io thread (accept) and gRPC's threads (call start and end).
class Callers {
 public:
  explicit Callers(const config::WorkloadApiConfig& c) : config_(c) {}

  // At accept, before gRPC sees the connection. Empty: admitted; otherwise the reason.
  std::string add_connection(int fd, const http::Peer& peer) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) return "fstat_failed";
    std::lock_guard lock(mu_);
    // Closed connections are forgotten only when a limit would refuse this one: pruning costs an
    // fstat per connection, and doing it at every accept made a storm of N connections O(N^2).
    auto refused = [&]() -> std::string {
      if (conns_.size() >= config_.max_connections) return "max_connections";
      const auto same_uid = static_cast<std::size_t>(std::count_if(
          conns_.begin(), conns_.end(), [&](const auto& c) { return c.second.peer.uid == peer.uid; }));
      if (same_uid >= config_.max_connections_per_uid) return "max_connections_per_uid";
      return {};
    };
    if (!refused().empty()) prune_locked();
    if (auto why = refused(); !why.empty()) return why;
    conns_[fd] = Conn{st.st_dev, st.st_ino, peer};
    return {};
  }

  // The caller behind a call's ServerContext::peer(): "fd:<n>" for connections we handed over.
  // The call holds its connection open, so the descriptor still names that socket; the inode
  // check makes a reused number harmless all the same.
  std::optional<http::Peer> caller_of(const std::string& grpc_peer) {
    constexpr std::string_view kPrefix = "fd:";
    if (grpc_peer.compare(0, kPrefix.size(), kPrefix) != 0) return std::nullopt;
    int fd = -1;
    const char* begin = grpc_peer.data() + kPrefix.size();
    const char* end = grpc_peer.data() + grpc_peer.size();
    if (std::from_chars(begin, end, fd).ptr != end || fd < 0) return std::nullopt;
    struct stat st {};
    if (::fstat(fd, &st) != 0) return std::nullopt;
    std::lock_guard lock(mu_);
    auto it = conns_.find(fd);
    if (it == conns_.end() || it->second.dev != st.st_dev || it->second.ino != st.st_ino) {
      return std::nullopt;
    }
    return it->second.peer;
  }

  // At call start: every caller's streams together, the uid's streams and its call rate (a
  // token bucket: calls_per_second, bursts of twice as many). Empty: admitted and counted.
  std::string admit_call(uid_t uid) {
    std::lock_guard lock(mu_);
    if (streams_ >= config_.max_streams) return "max_streams";
    const double rate = static_cast<double>(config_.calls_per_second);
    const double burst = 2 * rate;
    const auto now = std::chrono::steady_clock::now();
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
    ++streams_;
    return {};
  }

  void end_call(uid_t uid) {
    std::lock_guard lock(mu_);
    if (streams_ > 0) --streams_;
    auto it = buckets_.find(uid);
    if (it != buckets_.end() && it->second.streams > 0) --it->second.streams;
  }

  std::size_t connections() {
    std::lock_guard lock(mu_);
    prune_locked();
    return conns_.size();
  }

 private:
  struct Conn {
    dev_t dev;
    ino_t ino;
    http::Peer peer;
  };
  struct Bucket {
    double tokens{0};
    std::chrono::steady_clock::time_point last;
    std::size_t streams{0};
  };

  // Connections gRPC has closed: their descriptor is gone or names another file now.
  void prune_locked() {
    for (auto it = conns_.begin(); it != conns_.end();) {
      struct stat st {};
      if (::fstat(it->first, &st) != 0 || st.st_dev != it->second.dev ||
          st.st_ino != it->second.ino) {
        it = conns_.erase(it);
      } else {
        ++it;
      }
    }
  }

  const config::WorkloadApiConfig& config_;
  std::mutex mu_;
  std::unordered_map<int, Conn> conns_;
  std::unordered_map<uid_t, Bucket> buckets_;
  std::size_t streams_{0};
};

// ---- a call, between its reactor and the io thread ----------------------------------------

class LinkBase {
 public:
  virtual ~LinkBase() = default;
  // Ends the call with `status`; thread-safe, only the first end counts.
  virtual void finish(const Status& status) = 0;

  std::uint64_t id{0};
  Api api{};
  http::Peer peer;
  bool admitted{false};  // counted by Callers::admit_call
};

// What a reactor and the io thread share. Every call into the reactor is made under mu_. That
// cannot deadlock: gRPC never runs a reaction inline in StartWrite/StartRead/Finish (their tags
// are not inlineable, and OnDone is dispatched to its executor). And OnDone takes mu_ before the
// reactor is deleted, so it cannot overtake a call into the reactor in progress.
template <class Reactor>
class Link final : public LinkBase {
 public:
  using Response = typename Reactor::Response;

  explicit Link(Reactor* reactor) : reactor_(reactor) {}

  // Latest wins: a message that comes while another is being written replaces the one waiting
  // (every message is a complete state), so a client that does not read holds at most two.
  void send(std::shared_ptr<const Response> m) {
    std::lock_guard lock(mu_);
    if (!reactor_ || finishing_) return;
    if (writing_) {
      pending_ = std::move(m);
      return;
    }
    writing_ = true;
    in_flight_ = std::move(m);
    reactor_->StartWrite(in_flight_.get());
  }

  void finish(const Status& status) override {
    std::lock_guard lock(mu_);
    if (!reactor_ || finishing_) return;
    finishing_ = true;
    pending_.reset();
    if (writing_) {  // after the write in progress, so its message is not cut off
      final_ = status;
      finish_after_write_ = true;
      return;
    }
    reactor_->Finish(status);
  }

  // Bidirectional streams: wait for the client's next request.
  void read_next() {
    std::lock_guard lock(mu_);
    if (!reactor_ || finishing_) return;
    reactor_->StartRead(&reactor_->request);
  }

  // Unary calls: the response, then the end.
  void reply(const Response& m) {
    std::lock_guard lock(mu_);
    if (!reactor_ || finishing_) return;
    finishing_ = true;
    *reactor_->response = m;
    reactor_->Finish(Status::OK);
  }

  // From the reactor's OnWriteDone.
  void on_write_done() {
    std::lock_guard lock(mu_);
    writing_ = false;
    in_flight_.reset();
    if (!reactor_) return;
    if (finish_after_write_) {
      finish_after_write_ = false;
      reactor_->Finish(final_);
      return;
    }
    if (pending_ && !finishing_) {
      writing_ = true;
      in_flight_ = std::move(pending_);
      reactor_->StartWrite(in_flight_.get());
    }
  }

  // From the reactor's OnDone, before it is deleted.
  void on_done() {
    std::lock_guard lock(mu_);
    reactor_ = nullptr;
    in_flight_.reset();
    pending_.reset();
  }

 private:
  std::mutex mu_;
  Reactor* reactor_;
  bool writing_{false};
  bool finishing_{false};
  bool finish_after_write_{false};
  Status final_;
  std::shared_ptr<const Response> in_flight_;
  std::shared_ptr<const Response> pending_;
};

class SdsStreamReactor;
class SdsFetchReactor;
class SvidReactor;
class BundlesReactor;
using SdsLink = Link<SdsStreamReactor>;
using FetchLink = Link<SdsFetchReactor>;
using SvidLink = Link<SvidReactor>;
using BundlesLink = Link<BundlesReactor>;

}  // namespace

// ---- the server ---------------------------------------------------------------------------

class SidecarServer::Impl : public std::enable_shared_from_this<Impl> {
 public:
  Impl(asio::io_context& io, const config::WorkloadApiConfig& config, CertificateStore& store,
       Metrics& metrics, const Clock& clock);
  ~Impl() { stop(); }

  Result<> start();
  void stop();
  std::size_t streams() const { return sds_.size() + svid_.size() + bundles_.size(); }

  // ---- gRPC threads ----
  // Who is calling, and may they open this call now? A status: refused (the caller finishes
  // the call with it).
  std::optional<Status> admit(grpc::CallbackServerContext* ctx, const std::shared_ptr<LinkBase>& link);
  // At OnDone: the limits let go and the io thread forgets the call.
  void release(const LinkBase& link);
  // Runs f(*this) on the io thread, unless the server is gone by then.
  template <class F>
  void post(F f) {
    asio::post(io_, [weak = weak_from_this(), f = std::move(f)]() mutable {
      if (auto self = weak.lock()) f(*self);
    });
  }

  // ---- io thread ----
  void open_sds(std::shared_ptr<SdsLink> link);
  void sds_request(const std::shared_ptr<SdsLink>& link, const DiscoveryRequest& request);
  void fetch(const std::shared_ptr<FetchLink>& link, const DiscoveryRequest& request);
  void open_svid(std::shared_ptr<SvidLink> link);
  void open_bundles(std::shared_ptr<BundlesLink> link);
  void forget(std::uint64_t id);
  void refused(Api api, const http::Peer& peer, std::string_view reason, const std::string& detail);

  Metrics& metrics() { return metrics_; }
  std::uint64_t next_id() { return next_id_.fetch_add(1) + 1; }

 private:
  struct SdsStream {
    std::shared_ptr<SdsLink> link;
    std::vector<std::string> names;
    bool requested{false};  // a first request has come
    bool sent{false};
    std::string version;    // of the last response sent
    std::string nonce;      // of the last response sent
    std::uint64_t nonces{0};
    std::string node;
  };
  struct SvidStream {
    std::shared_ptr<SvidLink> link;
    std::string key;  // what was last sent
    bool ended{false};
  };
  struct BundlesStream {
    std::shared_ptr<BundlesLink> link;
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

  void accept();
  void on_accept(boost::system::error_code ec, local::socket socket);
  SdsContent sds_content(const http::Peer& peer, const std::vector<std::string>& names,
                         std::vector<std::string>* denied);
  void sds_push(SdsStream& s, bool always);
  SvidContent svid_content(const http::Peer& peer);
  BundlesContent bundles_content(const http::Peer& peer);
  void svid_push(SvidStream& s, std::map<std::string, SvidResponsePtr>& shared);
  void bundles_push(BundlesStream& s);
  void schedule_refresh();
  void refresh_all();
  void arm_expiry();
  void set_streams_metric();
  bool log_allowed();

  asio::io_context& io_;
  const config::WorkloadApiConfig config_;
  CertificateStore& store_;
  Metrics& metrics_;
  const Clock& clock_;
  Callers callers_;
  std::optional<local::acceptor> acceptor_;
  std::optional<std::pair<dev_t, ino_t>> socket_file_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<envoy::service::secret::v3::SecretDiscoveryService::CallbackService> sds_service_;
  std::unique_ptr<SpiffeWorkloadAPI::CallbackService> workload_service_;
  CertificateStore::Subscription subscription_;
  asio::system_timer expiry_;
  bool refresh_pending_{false};
  bool started_{false};
  std::atomic<std::uint64_t> next_id_{0};

  // Every call gRPC has given us and not yet finished with (gRPC threads add and remove).
  std::mutex live_mu_;
  bool stopping_{false};
  std::unordered_map<std::uint64_t, std::shared_ptr<LinkBase>> live_;

  // io thread
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
  };
  std::map<std::string, TlsCache> tls_cache_;
  std::map<std::string, TrustCache> trust_cache_;
  std::map<std::string, SvidCache> svid_cache_;
  std::int64_t log_second_{0};
  int logged_{0};
};

namespace {

// ---- reactors: gRPC's side of each call ---------------------------------------------------

using Impl = SidecarServer::Impl;

class SdsStreamReactor final : public grpc::ServerBidiReactor<DiscoveryRequest, DiscoveryResponse> {
 public:
  using Response = DiscoveryResponse;
  DiscoveryRequest request;

  SdsStreamReactor(Impl& impl, grpc::CallbackServerContext* ctx)
      : impl_(impl), link_(std::make_shared<SdsLink>(this)) {
    link_->api = Api::sds;
    if (auto refused = impl_.admit(ctx, link_)) {
      link_->finish(*refused);
      return;
    }
    impl_.post([link = link_](Impl& s) { s.open_sds(link); });
    link_->read_next();
  }
  void OnReadDone(bool ok) override {
    if (!ok) {  // the client closed its side (or is gone): end ours too
      link_->finish(Status::OK);
      return;
    }
    auto copy = std::make_shared<DiscoveryRequest>(std::move(request));
    request.Clear();
    impl_.post([link = link_, copy](Impl& s) { s.sds_request(link, *copy); });
  }
  void OnWriteDone(bool) override { link_->on_write_done(); }
  void OnCancel() override { link_->finish(Status::CANCELLED); }
  void OnDone() override {
    link_->on_done();
    impl_.release(*link_);
    delete this;
  }

 private:
  Impl& impl_;
  std::shared_ptr<SdsLink> link_;
};

class SdsFetchReactor final : public grpc::ServerUnaryReactor {
 public:
  using Response = DiscoveryResponse;
  DiscoveryResponse* response;

  SdsFetchReactor(Impl& impl, grpc::CallbackServerContext* ctx, const DiscoveryRequest* request,
                  DiscoveryResponse* out)
      : response(out), impl_(impl), link_(std::make_shared<FetchLink>(this)) {
    link_->api = Api::sds_fetch;
    if (auto refused = impl_.admit(ctx, link_)) {
      link_->finish(*refused);
      return;
    }
    impl_.post([link = link_, copy = *request](Impl& s) { s.fetch(link, copy); });
  }
  void OnCancel() override { link_->finish(Status::CANCELLED); }
  void OnDone() override {
    link_->on_done();
    impl_.release(*link_);
    delete this;
  }

 private:
  Impl& impl_;
  std::shared_ptr<FetchLink> link_;
};

template <class Msg, Api kApi, class Self>
class WorkloadReactor : public grpc::ServerWriteReactor<Msg> {
 public:
  using Response = Msg;

  void OnWriteDone(bool) override { link_->on_write_done(); }
  void OnCancel() override { link_->finish(Status::CANCELLED); }
  void OnDone() override {
    link_->on_done();
    impl_.release(*link_);
    delete static_cast<Self*>(this);
  }

 protected:
  explicit WorkloadReactor(Impl& impl) : impl_(impl) {}

  // Called from Self's constructor: `self` is then a Self (in the base's constructor it is not
  // one yet, and the downcast is undefined, UBSan's vptr check).
  void start(Self* self, grpc::CallbackServerContext* ctx) {
    link_ = std::make_shared<Link<Self>>(self);
    link_->api = kApi;
    if (auto refused = impl_.admit(ctx, link_)) {
      link_->finish(*refused);
      return;
    }
    if constexpr (kApi == Api::x509_svid) {
      impl_.post([link = link_](Impl& s) { s.open_svid(link); });
    } else {
      impl_.post([link = link_](Impl& s) { s.open_bundles(link); });
    }
  }

 private:
  Impl& impl_;
  std::shared_ptr<Link<Self>> link_;
};

class SvidReactor final : public WorkloadReactor<X509SVIDResponse, Api::x509_svid, SvidReactor> {
 public:
  SvidReactor(Impl& impl, grpc::CallbackServerContext* ctx) : WorkloadReactor(impl) { start(this, ctx); }
};
class BundlesReactor final
    : public WorkloadReactor<X509BundlesResponse, Api::x509_bundles, BundlesReactor> {
 public:
  BundlesReactor(Impl& impl, grpc::CallbackServerContext* ctx) : WorkloadReactor(impl) { start(this, ctx); }
};

class SdsService final : public envoy::service::secret::v3::SecretDiscoveryService::CallbackService {
 public:
  explicit SdsService(Impl& impl) : impl_(impl) {}
  grpc::ServerBidiReactor<DiscoveryRequest, DiscoveryResponse>* StreamSecrets(
      grpc::CallbackServerContext* ctx) override {
    return new SdsStreamReactor(impl_, ctx);
  }
  grpc::ServerUnaryReactor* FetchSecrets(grpc::CallbackServerContext* ctx,
                                         const DiscoveryRequest* request,
                                         DiscoveryResponse* response) override {
    return new SdsFetchReactor(impl_, ctx, request, response);
  }
  // DeltaSecrets: the generated default answers UNIMPLEMENTED.

 private:
  Impl& impl_;
};

class WorkloadService final : public SpiffeWorkloadAPI::CallbackService {
 public:
  explicit WorkloadService(Impl& impl) : impl_(impl) {}
  grpc::ServerWriteReactor<X509SVIDResponse>* FetchX509SVID(grpc::CallbackServerContext* ctx,
                                                            const X509SVIDRequest*) override {
    return new SvidReactor(impl_, ctx);
  }
  grpc::ServerWriteReactor<X509BundlesResponse>* FetchX509Bundles(
      grpc::CallbackServerContext* ctx, const X509BundlesRequest*) override {
    return new BundlesReactor(impl_, ctx);
  }
  // The JWT-SVID profile (FetchJWTSVID, FetchJWTBundles, ValidateJWTSVID): the generated
  // defaults answer UNIMPLEMENTED; certagent issues no JWT-SVIDs.

 private:
  Impl& impl_;
};

}  // namespace

// ---- Impl: gRPC threads ---------------------------------------------------------------------

SidecarServer::Impl::Impl(asio::io_context& io, const config::WorkloadApiConfig& config,
                          CertificateStore& store, Metrics& metrics, const Clock& clock)
    : io_(io), config_(config), store_(store), metrics_(metrics), clock_(clock), callers_(config_),
      expiry_(io) {}

std::optional<Status> SidecarServer::Impl::admit(grpc::CallbackServerContext* ctx,
                                                  const std::shared_ptr<LinkBase>& link) {
  link->id = next_id();
  {
    std::lock_guard lock(live_mu_);
    if (stopping_) return Status(StatusCode::UNAVAILABLE, "certagent is stopping");
    live_.emplace(link->id, link);
  }
  auto refuse = [&](StatusCode code, std::string_view reason, std::string message) {
    post([api = link->api, peer = link->peer, reason = std::string(reason), message](Impl& s) {
      s.refused(api, peer, reason, message);
    });
    return Status(code, message);
  };
  auto caller = callers_.caller_of(ctx->peer());
  if (!caller || !caller->known) {
    return refuse(StatusCode::PERMISSION_DENIED, "unknown_caller",
                  "the caller's credentials are unknown");
  }
  link->peer = *caller;
  if (link->api == Api::x509_svid || link->api == Api::x509_bundles) {
    // SPIFFE Workload Endpoint: every request carries workload.spiffe.io: true (against SSRF);
    // without it, InvalidArgument.
    const auto& md = ctx->client_metadata();
    auto it = md.find("workload.spiffe.io");
    if (it == md.end() || it->second != "true") {
      return refuse(StatusCode::INVALID_ARGUMENT, "missing_security_header",
                    "the workload.spiffe.io: true metadata is missing");
    }
  }
  if (auto why = callers_.admit_call(caller->uid); !why.empty()) {
    return refuse(StatusCode::UNAVAILABLE, why,
                  "too many calls (" + why + "); retry with a backoff");
  }
  link->admitted = true;
  return std::nullopt;
}

void SidecarServer::Impl::release(const LinkBase& link) {
  if (link.admitted) callers_.end_call(link.peer.uid);
  {
    std::lock_guard lock(live_mu_);
    live_.erase(link.id);
  }
  post([id = link.id](Impl& s) { s.forget(id); });
}

// ---- Impl: io thread ----------------------------------------------------------------------

Result<> SidecarServer::Impl::start() {
  if (config_.path.empty()) return {};
  if (started_) return make_error("sidecar API already started");
  metrics_.declare(kStreamsMetric, Metrics::Type::gauge,
                   "Open sidecar API streams (api: sds, workload).");
  metrics_.declare(kRejectedMetric, Metrics::Type::counter,
                   "Sidecar API connections and calls refused, by reason.");
  metrics_.declare(kPushesMetric, Metrics::Type::counter,
                   "Messages sent on sidecar API streams (api: sds, workload).");
  metrics_.declare(kNacksMetric, Metrics::Type::counter,
                   "SDS responses a client rejected (NACK).");

  auto file = create_unix_socket(io_, config_.path, config_.mode, config_.group, "workload_api");
  if (!file) return file.error();
  socket_file_ = std::make_pair(file->dev, file->ino);
  acceptor_.emplace(std::move(file->acceptor));

  // Debian's Abseil is built without NDEBUG, so every absl::Mutex (gRPC's locks) tracks lock
  // order in one process-wide graph under a global lock: measured as the largest user-space cost
  // of a push to 1,000 streams. That checker is a debugging aid; off, before gRPC starts.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  sds_service_ = std::make_unique<SdsService>(*this);
  workload_service_ = std::make_unique<WorkloadService>(*this);
  grpc::ServerBuilder builder;
  builder.RegisterService(sds_service_.get());
  builder.RegisterService(workload_service_.get());
  builder.SetMaxReceiveMessageSize(static_cast<int>(config_.max_request_bytes));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(config_.keepalive.count()));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20'000);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS,
                             static_cast<int>(config_.idle_timeout.count()));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                             static_cast<int>(std::min<std::size_t>(config_.max_streams_per_uid, 1 << 20)));
  builder.AddChannelArgument(GRPC_ARG_MAX_METADATA_SIZE, 16 * 1024);
  server_ = builder.BuildAndStart();
  if (!server_) {
    remove_unix_socket(config_.path, file->dev, file->ino);
    return make_error("workload_api: gRPC did not start");
  }
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

void SidecarServer::Impl::stop() {
  if (!started_) return;
  started_ = false;
  boost::system::error_code ec;
  if (acceptor_) acceptor_->close(ec);
  expiry_.cancel();
  subscription_.reset();
  std::vector<std::shared_ptr<LinkBase>> links;
  {
    std::lock_guard lock(live_mu_);
    stopping_ = true;
    for (const auto& [id, link] : live_) links.push_back(link);
  }
  for (const auto& link : links) link->finish(Status(StatusCode::UNAVAILABLE, "certagent is stopping"));
  // Every call is finished: gRPC lets go of them (OnDone) and closes the connections.
  server_->Shutdown(std::chrono::system_clock::now() + 2s);
  server_.reset();
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

void SidecarServer::Impl::accept() {
  acceptor_->async_accept([weak = weak_from_this()](boost::system::error_code ec, local::socket socket) {
    if (auto self = weak.lock()) self->on_accept(ec, std::move(socket));
  });
}

void SidecarServer::Impl::on_accept(boost::system::error_code ec, local::socket socket) {
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
  const http::Peer peer = http::peer_of_fd(socket.native_handle());
  if (auto why = callers_.add_connection(socket.native_handle(), peer); !why.empty()) {
    refused(Api::connection, peer, why, "connection refused");
    socket.close(ec);
  } else {
    const int fd = socket.release(ec);
    if (!ec) {
      // gRPC's transport needs a non-blocking descriptor; it closes it when the connection ends.
      ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
      ::fcntl(fd, F_SETFD, FD_CLOEXEC);
      grpc::AddInsecureChannelFromFd(server_.get(), fd);
    }
  }
  accept();
}

void SidecarServer::Impl::refused(Api api, const http::Peer& peer, std::string_view reason,
                                  const std::string& detail) {
  metrics_.add(kRejectedMetric, {{"reason", std::string(reason)}});
  if (log_allowed()) {
    logger()->warn("event=sidecar_refused api={} reason={} {} detail={}", api_name(api), reason,
                   peer_text(peer), log::quote(detail));
  }
}

bool SidecarServer::Impl::log_allowed() {
  const auto second = std::chrono::duration_cast<std::chrono::seconds>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count();
  if (second != log_second_) {
    if (logged_ > kMaxRefusalLogs) {
      logger()->warn("event=sidecar_refusals_not_logged count={}", logged_ - kMaxRefusalLogs);
    }
    log_second_ = second;
    logged_ = 0;
  }
  return ++logged_ <= kMaxRefusalLogs;
}

void SidecarServer::Impl::forget(std::uint64_t id) {
  const bool known = sds_.erase(id) + svid_.erase(id) + bundles_.erase(id) > 0;
  if (known) set_streams_metric();
}

void SidecarServer::Impl::set_streams_metric() {
  metrics_.set(kStreamsMetric, {{"api", "sds"}}, static_cast<double>(sds_.size()));
  metrics_.set(kStreamsMetric, {{"api", "workload"}},
               static_cast<double>(svid_.size() + bundles_.size()));
}

// ---- SDS -------------------------------------------------------------------------------------

SidecarServer::Impl::SdsContent SidecarServer::Impl::sds_content(
    const http::Peer& peer, const std::vector<std::string>& names, std::vector<std::string>* denied) {
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

void SidecarServer::Impl::open_sds(std::shared_ptr<SdsLink> link) {
  const auto id = link->id;
  SdsStream s;
  s.link = std::move(link);
  sds_.emplace(id, std::move(s));
  set_streams_metric();
}

void SidecarServer::Impl::sds_request(const std::shared_ptr<SdsLink>& link,
                                      const DiscoveryRequest& request) {
  auto it = sds_.find(link->id);
  if (it == sds_.end()) return;  // ended meanwhile
  SdsStream& s = it->second;
  if (!request.type_url().empty() && request.type_url() != kSecretTypeUrl) {
    link->finish(Status(StatusCode::INVALID_ARGUMENT,
                        "this stream serves " + std::string(kSecretTypeUrl) + ", not " +
                            request.type_url()));
    return;
  }
  if (request.resource_names_size() > static_cast<int>(kMaxResourceNames)) {
    link->finish(Status(StatusCode::INVALID_ARGUMENT,
                        "at most " + std::to_string(kMaxResourceNames) + " resource names"));
    return;
  }
  for (const auto& name : request.resource_names()) {
    if (name.empty() || name.size() > kMaxResourceNameBytes) {
      link->finish(Status(StatusCode::INVALID_ARGUMENT, "a resource name is empty or too long"));
      return;
    }
  }
  if (!s.requested && request.has_node()) s.node = request.node().id();
  // xDS: a request whose nonce is not the last one sent answers an older response; the client
  // will answer the newer one too, so this one is ignored.
  if (!s.nonce.empty() && request.response_nonce() != s.nonce) {
    logger()->debug("event=sds_stale_request nonce={} current={} {}",
                    log::quote(request.response_nonce()), log::quote(s.nonce), peer_text(link->peer));
    link->read_next();
    return;
  }
  if (!request.response_nonce().empty()) {
    if (request.has_error_detail()) {
      metrics_.add(kNacksMetric, {});
      logger()->warn("event=sds_nack node={} version={} rejected_nonce={} code={} error={} {}",
                     log::quote(s.node), log::quote(request.version_info()),
                     log::quote(request.response_nonce()), request.error_detail().code(),
                     log::quote(log::excerpt(request.error_detail().message(), 300)),
                     peer_text(link->peer));
    } else {
      logger()->debug("event=sds_ack node={} version={} {}", log::quote(s.node),
                      log::quote(request.version_info()), peer_text(link->peer));
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
    (void)sds_content(link->peer, s.names, &denied);
    for (const auto& name : denied) {
      metrics_.add(kRejectedMetric, {{"reason", "forbidden"}});
      if (log_allowed()) {
        logger()->warn("event=sidecar_denied api=sds resource={} node={} {}", log::quote(name),
                       log::quote(s.node), peer_text(link->peer));
      }
    }
    sds_push(s, first);
  }
  link->read_next();
}

// Sends the stream what it should hold now, when that differs from what it was last sent (or
// always, for a first request with something to send). A certificate that expired or left the
// config is left out of the next response (SotW SDS has no removal; an empty response says
// "nothing valid" and Envoy NACKs it, keeping the last secret, whose leaf every peer rejects).
void SidecarServer::Impl::sds_push(SdsStream& s, bool always) {
  auto content = sds_content(s.link->peer, s.names, nullptr);
  const std::string version = content_version(content.ids);
  if (!s.sent && content.resources.empty()) return;  // nothing to say yet
  if (!always && s.sent && version == s.version) return;
  s.version = version;
  s.nonce = std::to_string(++s.nonces);
  s.sent = true;
  s.link->send(discovery_response(content.resources, s.version, s.nonce));
  metrics_.add(kPushesMetric, {{"api", "sds"}});
}

void SidecarServer::Impl::fetch(const std::shared_ptr<FetchLink>& link,
                                const DiscoveryRequest& request) {
  if (!request.type_url().empty() && request.type_url() != kSecretTypeUrl) {
    link->finish(Status(StatusCode::INVALID_ARGUMENT, "FetchSecrets serves " +
                                                          std::string(kSecretTypeUrl) + ", not " +
                                                          request.type_url()));
    return;
  }
  if (request.resource_names_size() > static_cast<int>(kMaxResourceNames)) {
    link->finish(Status(StatusCode::INVALID_ARGUMENT,
                        "at most " + std::to_string(kMaxResourceNames) + " resource names"));
    return;
  }
  std::vector<std::string> names(request.resource_names().begin(), request.resource_names().end());
  std::vector<std::string> denied;
  auto content = sds_content(link->peer, names, &denied);
  for (const auto& name : denied) {
    metrics_.add(kRejectedMetric, {{"reason", "forbidden"}});
    if (log_allowed()) {
      logger()->warn("event=sidecar_denied api=sds_fetch resource={} {}", log::quote(name),
                     peer_text(link->peer));
    }
  }
  auto response = discovery_response(content.resources, content_version(content.ids), "");
  link->reply(*response);
}

// ---- the SPIFFE Workload API --------------------------------------------------------------

SidecarServer::Impl::SvidContent SidecarServer::Impl::svid_content(const http::Peer& peer) {
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
      if (!svid) {
        logger()->error("event=svid_unavailable certificate={} error={}", name,
                        log::quote(svid.error().message));
      }
    }
    if (!cached.svid) continue;
    out.svids.push_back(cached.svid);
    out.key += name + "=" + material->serial_hex + ":" +
               content_version({{"", entry.trust_bundle_pem}}) + ";";
  }
  return out;
}

SidecarServer::Impl::BundlesContent SidecarServer::Impl::bundles_content(const http::Peer& peer) {
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

void SidecarServer::Impl::open_svid(std::shared_ptr<SvidLink> link) {
  const auto id = link->id;
  SvidStream s;
  s.link = std::move(link);
  auto [it, inserted] = svid_.emplace(id, std::move(s));
  set_streams_metric();
  std::map<std::string, SvidResponsePtr> shared;
  svid_push(it->second, shared);
}

// The standard: every message is the full set the caller may have; none at all (no identity,
// or every SVID expired or removed) is PERMISSION_DENIED, which ends the stream.
void SidecarServer::Impl::svid_push(SvidStream& s, std::map<std::string, SvidResponsePtr>& shared) {
  if (s.ended) return;
  auto content = svid_content(s.link->peer);
  if (content.svids.empty()) {
    s.ended = true;
    const std::string why = content.entitled
                                ? "no valid X.509-SVID for this caller now (expired, removed or "
                                  "not issued yet); retry with a backoff"
                                : "no identity for this caller (uid " +
                                      std::to_string(s.link->peer.uid) + ")";
    if (log_allowed()) {
      logger()->info("event=svid_stream_ended reason={} {}",
                     content.entitled ? "no_valid_svid" : "no_identity", peer_text(s.link->peer));
    }
    metrics_.add(kRejectedMetric, {{"reason", content.entitled ? "no_valid_svid" : "no_identity"}});
    s.link->finish(Status(StatusCode::PERMISSION_DENIED, why));
    return;
  }
  if (content.key == s.key) return;
  s.key = content.key;
  auto& message = shared[content.key];
  if (!message) message = svid_response(content.svids);
  s.link->send(message);
  metrics_.add(kPushesMetric, {{"api", "workload"}});
}

void SidecarServer::Impl::open_bundles(std::shared_ptr<BundlesLink> link) {
  const auto id = link->id;
  BundlesStream s;
  s.link = std::move(link);
  auto [it, inserted] = bundles_.emplace(id, std::move(s));
  set_streams_metric();
  bundles_push(it->second);
}

void SidecarServer::Impl::bundles_push(BundlesStream& s) {
  if (s.ended) return;
  auto content = bundles_content(s.link->peer);
  if (content.bundles.empty()) {
    s.ended = true;
    metrics_.add(kRejectedMetric, {{"reason", "no_bundle"}});
    s.link->finish(Status(StatusCode::PERMISSION_DENIED,
                          "no X.509 bundle for this caller (uid " +
                              std::to_string(s.link->peer.uid) + ")"));
    return;
  }
  if (content.key == s.key) return;
  s.key = content.key;
  s.link->send(bundles_response(content.bundles));
  metrics_.add(kPushesMetric, {{"api", "workload"}});
}

// ---- pushes ---------------------------------------------------------------------------------

// Store events come in bursts (a commit, then a state change; a reload touches many): one
// refresh after the burst.
void SidecarServer::Impl::schedule_refresh() {
  if (refresh_pending_ || !started_) return;
  refresh_pending_ = true;
  post([](Impl& s) { s.refresh_all(); });
}

void SidecarServer::Impl::refresh_all() {
  refresh_pending_ = false;
  if (!started_) return;
  for (auto& [id, s] : sds_) {
    if (s.requested) sds_push(s, false);
  }
  std::map<std::string, SvidResponsePtr> shared;  // one message for streams with the same SVIDs
  for (auto& [id, s] : svid_) svid_push(s, shared);
  for (auto& [id, s] : bundles_) bundles_push(s);
  arm_expiry();
}

// Belt and braces: the certificate loop marks expiry in the store, but a stream must hear of
// it even if that comes late. One timer, at the earliest not_after of what is held.
void SidecarServer::Impl::arm_expiry() {
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

}  // namespace certagent::sidecar
