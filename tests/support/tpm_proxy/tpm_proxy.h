#pragma once
// A TPM latency model between the swtpm TCTI and swtpm: it listens where the TCTI connects
// ("swtpm:path=<listen>", and <listen>.ctrl for the control channel), forwards each command to
// swtpm, counts it by command code, holds the answer for the time a discrete TPM would take
// (latency_model.h), and answers TPM_RC_RETRY / YIELDED / TESTING instead when told to.
//
// Like a real TPM it runs one command at a time: commands from several connections queue.
// The swtpm TCTI (tpm2-tss 3.2) opens one connection per command; the proxy opens one to swtpm
// per command too, so an idle client never holds swtpm (which serves one connection at a time).
//
// Test code only: threads and blocking sockets, no Asio.

#include "tests/support/tpm_proxy/latency_model.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>

namespace certagent::test::tpm_proxy {

namespace fs = std::filesystem;

struct ProxyStats {
  std::map<std::uint32_t, std::uint64_t> executed;  // forwarded to swtpm, by command code
  std::map<std::uint32_t, std::uint64_t> injected;  // answered with a warning instead, by command code
  // Forwarded commands that swtpm itself answered with RETRY / YIELDED / TESTING (libtpms does
  // for an ECDSA signature now and then): ESAPI sends those again.
  std::map<std::uint32_t, std::uint64_t> upstream_warnings;
  std::uint64_t executed_total{0};
  std::uint64_t injected_total{0};
  std::uint64_t upstream_warnings_total{0};
  // Kernel resource manager emulation: commands the kernel would have added (not sent).
  std::uint64_t rm_context_loads{0};
  std::uint64_t rm_context_saves{0};
  std::uint64_t rm_flushes{0};
  std::chrono::nanoseconds busy{0};  // time the modelled TPM was busy (sum of held times)

  std::uint64_t executed_count(std::uint32_t cc) const {
    auto it = executed.find(cc);
    return it == executed.end() ? 0 : it->second;
  }
  // Commands the TPM ran to an answer other than a busy warning: what an issuance costs.
  std::uint64_t completed_count(std::uint32_t cc) const {
    auto it = upstream_warnings.find(cc);
    return executed_count(cc) - (it == upstream_warnings.end() ? 0 : it->second);
  }
  std::uint64_t completed_total() const { return executed_total - upstream_warnings_total; }
  std::uint64_t injected_count(std::uint32_t cc) const {
    auto it = injected.find(cc);
    return it == injected.end() ? 0 : it->second;
  }
  // What a real TPM would have run: executed + the resource manager's context commands.
  std::uint64_t device_total() const { return executed_total + rm_context_loads + rm_context_saves + rm_flushes; }
  // "TPM2_Sign=3 TPM2_Load=1 ..." (executed), then injected and resource-manager counts.
  std::string summary() const;
  // Differences, for "commands per issuance": this - before.
  ProxyStats since(const ProxyStats& before) const;
};

class TpmProxy {
 public:
  struct Options {
    fs::path upstream;  // swtpm's server socket (type=unixio); its control socket is <upstream>.ctrl
    fs::path listen;    // ours; the control socket is <listen>.ctrl
    LatencyModel model = LatencyModel::none();
    std::uint64_t seed{1};  // for random injection
  };

  // Listens at once (the sockets exist when the constructor returns); throws std::runtime_error
  // if it cannot.
  explicit TpmProxy(Options options);
  ~TpmProxy();  // stops: closes the sockets, wakes and joins every thread
  TpmProxy(const TpmProxy&) = delete;
  TpmProxy& operator=(const TpmProxy&) = delete;

  std::string tcti() const { return "swtpm:path=" + options_.listen.string(); }
  const fs::path& socket_path() const { return options_.listen; }

  ProxyStats stats() const;
  void reset_stats();

  void set_model(LatencyModel model);
  LatencyModel model() const;

  // ---- warnings instead of execution. Checked in this order per command. ----
  // Everything is answered with `rc` until `duration` has passed (a TPM in a long self-test).
  void busy_for(std::uint32_t rc, std::chrono::milliseconds duration);
  // The next `n` commands (only those with command code `only_cc` when it is non-zero).
  void inject_next(std::uint32_t rc, int n, std::uint32_t only_cc = 0);
  // Every `every`-th command (1-based: every=10 hits the 10th, 20th, ...).
  void inject_every(std::uint32_t rc, int every);
  // Each command with `probability`, the code drawn from `rcs` (seeded: reproducible).
  void inject_random(double probability, std::vector<std::uint32_t> rcs);
  void clear_injections();

  // Transient objects the client holds in the TPM now, as the proxy tracked them (handles).
  std::set<std::uint32_t> held_objects() const;

 private:
  struct Conn;
  void accept_loop();
  void serve_data(int fd);
  void serve_ctrl(int fd);
  std::optional<std::uint32_t> pick_injection(std::uint32_t cc);
  void track_handles(const std::string& cmd, const std::string& rsp);
  bool sleep_until(std::chrono::steady_clock::time_point t);
  int connect_upstream(const fs::path& path);
  void register_fd(int fd);
  void unregister_fd(int fd);

  Options options_;
  int data_listen_{-1};
  int ctrl_listen_{-1};
  int wake_[2]{-1, -1};

  mutable std::mutex mutex_;  // stats, model, injections, fds, threads
  std::condition_variable stop_cv_;
  bool stopping_{false};
  ProxyStats stats_;
  std::set<std::uint32_t> objects_;   // transient objects held (kernel RM emulation)
  std::set<std::uint32_t> sessions_;  // sessions held
  std::set<int> fds_;
  std::list<std::thread> workers_;
  std::list<std::thread::id> finished_;

  // injections
  std::chrono::steady_clock::time_point busy_until_{};
  std::uint32_t busy_rc_{0};
  int next_n_{0};
  std::uint32_t next_rc_{0};
  std::uint32_t next_only_cc_{0};
  int every_{0};
  std::uint32_t every_rc_{0};
  std::uint64_t seen_{0};
  double probability_{0};
  std::vector<std::uint32_t> random_rcs_;
  std::mt19937_64 rng_;

  std::mutex tpm_;  // held while the modelled TPM runs a command: one at a time
  std::thread acceptor_;
};

}  // namespace certagent::test::tpm_proxy
