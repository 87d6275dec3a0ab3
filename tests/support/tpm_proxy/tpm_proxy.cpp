#include "tests/support/tpm_proxy/tpm_proxy.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace certagent::test::tpm_proxy {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::size_t kHeaderSize = 10;
// TPM2 commands and responses are at most a few KiB (MAX_COMMAND_SIZE / MAX_RESPONSE_SIZE are
// 4096 on common TPMs); anything far bigger is not a TPM command.
constexpr std::uint32_t kMaxMessage = 64 * 1024;
constexpr std::uint32_t kRhNull = 0x40000007;
constexpr std::uint32_t kRcInitialize = 0x100;
constexpr std::uint32_t kCcMacStart = 0x107;

std::uint32_t be32(const std::string& b, std::size_t at) {
  if (b.size() < at + 4) return 0;
  return (std::uint32_t(std::uint8_t(b[at])) << 24) | (std::uint32_t(std::uint8_t(b[at + 1])) << 16) |
         (std::uint32_t(std::uint8_t(b[at + 2])) << 8) | std::uint32_t(std::uint8_t(b[at + 3]));
}

void put_be32(std::string& b, std::size_t at, std::uint32_t v) {
  b[at] = char(v >> 24);
  b[at + 1] = char(v >> 16);
  b[at + 2] = char(v >> 8);
  b[at + 3] = char(v);
}

// Reads exactly n bytes. Returns n, 0 on a clean end of stream before any byte, -1 otherwise.
ssize_t read_exact(int fd, char* buf, std::size_t n) {
  std::size_t got = 0;
  while (got < n) {
    ssize_t r = ::read(fd, buf + got, n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return got == 0 && r == 0 ? 0 : -1;
    got += static_cast<std::size_t>(r);
  }
  return static_cast<ssize_t>(n);
}

bool write_all(int fd, const char* buf, std::size_t n) {
  std::size_t done = 0;
  while (done < n) {
    ssize_t r = ::send(fd, buf + done, n - done, MSG_NOSIGNAL);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    done += static_cast<std::size_t>(r);
  }
  return true;
}

// One TPM message (command or response): header, then the rest by its size field.
bool read_message(int fd, std::string& out, bool* clean_eof = nullptr) {
  out.assign(kHeaderSize, '\0');
  ssize_t r = read_exact(fd, out.data(), kHeaderSize);
  if (clean_eof) *clean_eof = r == 0;
  if (r != static_cast<ssize_t>(kHeaderSize)) return false;
  const std::uint32_t size = be32(out, 2);
  if (size < kHeaderSize || size > kMaxMessage) return false;
  out.resize(size);
  return size == kHeaderSize || read_exact(fd, out.data() + kHeaderSize, size - kHeaderSize) ==
                                    static_cast<ssize_t>(size - kHeaderSize);
}

int listen_unix(const fs::path& path) {
  if (path.native().size() >= sizeof(sockaddr_un::sun_path))
    throw std::runtime_error("tpm proxy: socket path too long: " + path.string());
  std::error_code ec;
  fs::remove(path, ec);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error("tpm proxy: socket(): " + std::string(std::strerror(errno)));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd, 64) != 0) {
    const std::string err = std::strerror(errno);
    ::close(fd);
    throw std::runtime_error("tpm proxy: cannot listen on " + path.string() + ": " + err);
  }
  ::chmod(path.c_str(), 0600);
  return fd;
}

std::string warning_response(std::uint32_t rc) {
  std::string rsp(kHeaderSize, '\0');
  rsp[0] = char(0x80);
  rsp[1] = char(0x01);  // TPM_ST_NO_SESSIONS
  put_be32(rsp, 2, kHeaderSize);
  put_be32(rsp, 6, rc);
  return rsp;
}

bool creates_handle(std::uint32_t cc) {
  switch (cc) {
    case kCcCreatePrimary:
    case kCcLoad:
    case kCcLoadExternal:
    case kCcCreateLoaded:
    case kCcContextLoad:
    case kCcHmacStart:
    case kCcMacStart:
    case kCcHashSequenceStart:
    case kCcStartAuthSession:
      return true;
    default:
      return false;
  }
}

}  // namespace

std::string ProxyStats::summary() const {
  std::string out;
  for (const auto& [cc, n] : executed) out += command_name(cc) + "=" + std::to_string(n) + " ";
  out += "total=" + std::to_string(executed_total);
  if (upstream_warnings_total) out += " (" + std::to_string(upstream_warnings_total) + " answered busy by swtpm)";
  if (injected_total) {
    out += " injected:";
    for (const auto& [cc, n] : injected) out += " " + command_name(cc) + "=" + std::to_string(n);
  }
  if (rm_context_loads || rm_context_saves || rm_flushes)
    out += " kernel_rm: ContextLoad=" + std::to_string(rm_context_loads) + " ContextSave=" +
           std::to_string(rm_context_saves) + " FlushContext=" + std::to_string(rm_flushes);
  return out;
}

ProxyStats ProxyStats::since(const ProxyStats& before) const {
  ProxyStats d;
  for (const auto& [cc, n] : executed)
    if (n > before.executed_count(cc)) d.executed[cc] = n - before.executed_count(cc);
  for (const auto& [cc, n] : injected)
    if (n > before.injected_count(cc)) d.injected[cc] = n - before.injected_count(cc);
  for (const auto& [cc, n] : upstream_warnings) {
    auto it = before.upstream_warnings.find(cc);
    const std::uint64_t was = it == before.upstream_warnings.end() ? 0 : it->second;
    if (n > was) d.upstream_warnings[cc] = n - was;
  }
  d.upstream_warnings_total = upstream_warnings_total - before.upstream_warnings_total;
  d.executed_total = executed_total - before.executed_total;
  d.injected_total = injected_total - before.injected_total;
  d.rm_context_loads = rm_context_loads - before.rm_context_loads;
  d.rm_context_saves = rm_context_saves - before.rm_context_saves;
  d.rm_flushes = rm_flushes - before.rm_flushes;
  d.busy = busy - before.busy;
  return d;
}

TpmProxy::TpmProxy(Options options) : options_(std::move(options)), rng_(options_.seed) {
  if (::pipe2(wake_, O_CLOEXEC) != 0) throw std::runtime_error("tpm proxy: pipe2 failed");
  try {
    data_listen_ = listen_unix(options_.listen);
    ctrl_listen_ = listen_unix(options_.listen.string() + ".ctrl");
  } catch (...) {
    if (data_listen_ >= 0) ::close(data_listen_);
    ::close(wake_[0]);
    ::close(wake_[1]);
    throw;
  }
  acceptor_ = std::thread([this] { accept_loop(); });
}

TpmProxy::~TpmProxy() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    for (int fd : fds_) ::shutdown(fd, SHUT_RDWR);
  }
  stop_cv_.notify_all();
  char b = 1;
  (void)!::write(wake_[1], &b, 1);
  acceptor_.join();
  std::list<std::thread> workers;
  {
    std::lock_guard lock(mutex_);
    workers.swap(workers_);
  }
  for (auto& t : workers) t.join();
  ::close(data_listen_);
  ::close(ctrl_listen_);
  ::close(wake_[0]);
  ::close(wake_[1]);
  std::error_code ec;
  fs::remove(options_.listen, ec);
  fs::remove(options_.listen.string() + ".ctrl", ec);
}

ProxyStats TpmProxy::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

void TpmProxy::reset_stats() {
  std::lock_guard lock(mutex_);
  stats_ = {};
}

void TpmProxy::set_model(LatencyModel model) {
  std::lock_guard lock(mutex_);
  options_.model = std::move(model);
}

LatencyModel TpmProxy::model() const {
  std::lock_guard lock(mutex_);
  return options_.model;
}

void TpmProxy::busy_for(std::uint32_t rc, std::chrono::milliseconds duration) {
  std::lock_guard lock(mutex_);
  busy_rc_ = rc;
  busy_until_ = Clock::now() + duration;
}

void TpmProxy::inject_next(std::uint32_t rc, int n, std::uint32_t only_cc) {
  std::lock_guard lock(mutex_);
  next_rc_ = rc;
  next_n_ = n;
  next_only_cc_ = only_cc;
}

void TpmProxy::inject_every(std::uint32_t rc, int every) {
  std::lock_guard lock(mutex_);
  every_rc_ = rc;
  every_ = every;
  seen_ = 0;
}

void TpmProxy::inject_random(double probability, std::vector<std::uint32_t> rcs) {
  std::lock_guard lock(mutex_);
  probability_ = rcs.empty() ? 0 : probability;
  random_rcs_ = std::move(rcs);
}

void TpmProxy::clear_injections() {
  std::lock_guard lock(mutex_);
  busy_until_ = {};
  next_n_ = 0;
  every_ = 0;
  probability_ = 0;
}

std::set<std::uint32_t> TpmProxy::held_objects() const {
  std::lock_guard lock(mutex_);
  return objects_;
}

// mutex_ held by the caller.
std::optional<std::uint32_t> TpmProxy::pick_injection(std::uint32_t cc) {
  ++seen_;
  if (busy_rc_ && Clock::now() < busy_until_) return busy_rc_;
  if (next_n_ > 0 && (next_only_cc_ == 0 || next_only_cc_ == cc)) {
    --next_n_;
    return next_rc_;
  }
  if (every_ > 0 && seen_ % static_cast<std::uint64_t>(every_) == 0) return every_rc_;
  if (probability_ > 0 && std::uniform_real_distribution<double>(0, 1)(rng_) < probability_)
    return random_rcs_[std::uniform_int_distribution<std::size_t>(0, random_rcs_.size() - 1)(rng_)];
  return std::nullopt;
}

// mutex_ held by the caller. Follows the transient objects and sessions the client holds, from
// successful responses: what the kernel resource manager would swap around every command.
void TpmProxy::track_handles(const std::string& cmd, const std::string& rsp) {
  const std::uint32_t cc = be32(cmd, 6);
  const std::uint32_t rc = be32(rsp, 6);
  if (cc == kCcStartup && rc != kRcInitialize) {
    // A started TPM (TPM Reset / Restart) holds no transient objects or sessions.
    objects_.clear();
    sessions_.clear();
    return;
  }
  if (rc != 0) return;
  auto drop = [&](std::uint32_t h) {
    objects_.erase(h);
    sessions_.erase(h);
  };
  if (creates_handle(cc)) {
    const std::uint32_t h = be32(rsp, kHeaderSize);
    if ((h >> 24) == 0x80) objects_.insert(h);
    if ((h >> 24) == 0x02 || (h >> 24) == 0x03) sessions_.insert(h);
  } else if (cc == kCcFlushContext) {
    drop(be32(cmd, kHeaderSize));  // flushHandle is a parameter, right after the header
  } else if (cc == kCcSequenceComplete) {
    drop(be32(cmd, kHeaderSize));
  } else if (cc == kCcEventSequenceComplete) {
    drop(be32(cmd, kHeaderSize + 4));  // @pcrHandle, then @sequenceHandle
  }
}

bool TpmProxy::sleep_until(Clock::time_point t) {
  std::unique_lock lock(mutex_);
  return !stop_cv_.wait_until(lock, t, [&] { return stopping_; });
}

void TpmProxy::register_fd(int fd) {
  std::lock_guard lock(mutex_);
  fds_.insert(fd);
  if (stopping_) ::shutdown(fd, SHUT_RDWR);
}

void TpmProxy::unregister_fd(int fd) {
  std::lock_guard lock(mutex_);
  fds_.erase(fd);
}

int TpmProxy::connect_upstream(const fs::path& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  register_fd(fd);
  return fd;
}

void TpmProxy::accept_loop() {
  for (;;) {
    pollfd p[3] = {{data_listen_, POLLIN, 0}, {ctrl_listen_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
    int r = ::poll(p, 3, -1);
    if (r < 0 && errno == EINTR) continue;
    std::lock_guard lock(mutex_);
    // Join the workers that have finished.
    for (auto it = workers_.begin(); it != workers_.end();) {
      auto done = std::find(finished_.begin(), finished_.end(), it->get_id());
      if (done != finished_.end()) {
        finished_.erase(done);
        it->join();
        it = workers_.erase(it);
      } else {
        ++it;
      }
    }
    if (stopping_ || r < 0) return;
    for (int i = 0; i < 2; ++i) {
      if (!(p[i].revents & POLLIN)) continue;
      int fd = ::accept4(p[i].fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      fds_.insert(fd);
      const bool data = i == 0;
      workers_.emplace_back([this, fd, data] {
        if (data)
          serve_data(fd);
        else
          serve_ctrl(fd);
        unregister_fd(fd);
        ::close(fd);
        std::lock_guard done(mutex_);
        finished_.push_back(std::this_thread::get_id());
      });
    }
  }
}

void TpmProxy::serve_data(int fd) {
  std::string cmd;
  std::string rsp;
  for (;;) {
    if (!read_message(fd, cmd)) return;  // the TCTI's connect-only probe ends here too
    const std::uint32_t cc = be32(cmd, 6);

    std::unique_lock tpm(tpm_);  // one command at a time, like the chip
    const auto start = Clock::now();
    LatencyModel model;
    std::optional<std::uint32_t> warning;
    std::size_t held_before = 0;
    std::size_t sessions_before = 0;
    {
      std::lock_guard lock(mutex_);
      if (stopping_) return;
      model = options_.model;
      warning = pick_injection(cc);
      held_before = objects_.size();
      sessions_before = sessions_.size();
    }

    Micros hold{0};
    if (warning) {
      rsp = warning_response(*warning);
      hold = Micros(static_cast<std::int64_t>(static_cast<double>(model.warning.count()) * model.scale));
    } else {
      int up = connect_upstream(options_.upstream);
      if (up < 0) return;  // swtpm is down: the client sees a broken connection, as with swtpm itself
      const bool ok = write_all(up, cmd.data(), cmd.size()) && read_message(up, rsp);
      unregister_fd(up);
      ::close(up);
      if (!ok) return;
      const bool salted = cc == kCcStartAuthSession && be32(cmd, kHeaderSize) != kRhNull;
      hold = model.latency(cc, salted);
    }

    std::size_t held_after = 0;
    std::size_t sessions_after = 0;
    {
      std::lock_guard lock(mutex_);
      if (warning) {
        ++stats_.injected[cc];
        ++stats_.injected_total;
      } else {
        ++stats_.executed[cc];
        ++stats_.executed_total;
        const std::uint32_t rc = be32(rsp, 6);
        if (rc == kRcRetry || rc == kRcYielded || rc == kRcTesting) {
          ++stats_.upstream_warnings[cc];
          ++stats_.upstream_warnings_total;
        }
        track_handles(cmd, rsp);
      }
      held_after = objects_.size();
      sessions_after = sessions_.size();
      if (model.kernel_rm) {
        // Before: ContextLoad of every object and session; after: ContextSave of each, and a
        // FlushContext of each object (sessions stay as saved contexts).
        const std::uint64_t loads = held_before + sessions_before;
        const std::uint64_t saves = held_after + sessions_after;
        stats_.rm_context_loads += loads;
        stats_.rm_context_saves += saves;
        stats_.rm_flushes += held_after;
        hold += model.latency(kCcContextLoad) * static_cast<std::int64_t>(loads) +
                model.latency(kCcContextSave) * static_cast<std::int64_t>(saves) +
                model.latency(kCcFlushContext) * static_cast<std::int64_t>(held_after);
      }
    }
    if (!sleep_until(start + hold)) return;
    {
      std::lock_guard lock(mutex_);
      stats_.busy += Clock::now() - start;
    }
    tpm.unlock();
    if (!write_all(fd, rsp.data(), rsp.size())) return;
  }
}

// The control channel (CMD_SET_LOCALITY at TCTI init, CMD_INIT, ...): passed through as bytes.
void TpmProxy::serve_ctrl(int fd) {
  int up = connect_upstream(options_.upstream.string() + ".ctrl");
  if (up < 0) return;
  char buf[4096];
  for (;;) {
    pollfd p[2] = {{fd, POLLIN, 0}, {up, POLLIN, 0}};
    int r = ::poll(p, 2, -1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) break;
    bool closed = false;
    for (int i = 0; i < 2 && !closed; ++i) {
      if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t n = ::read(p[i].fd, buf, sizeof buf);
      if (n <= 0 || !write_all(p[1 - i].fd, buf, static_cast<std::size_t>(n))) closed = true;
    }
    if (closed) break;
  }
  unregister_fd(up);
  ::close(up);
}

}  // namespace certagent::test::tpm_proxy
