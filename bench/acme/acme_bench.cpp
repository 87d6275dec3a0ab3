// One ACME issuance against the same pebble (VA no-sleep, always-valid), side by side:
// certagent's AcmeRenewer in this process (the daemon's steady state: account and connection
// warm, JWS signed by the TPM identity on swtpm) and lego, uacme and certbot as child
// processes. Wall time and CPU per issuance (median / p90), max RSS of the peers, ratios
// peer / certagent. Not a test: a missing program is an error and a non-zero exit.
//
//   acme_bench [--certagent N] [--lego N] [--uacme N] [--certbot N] [--pebble-faults]
//
// N = 0 leaves a client out. --pebble-faults keeps pebble's default fault injection (5 %
// badNonce, 50 % authz reuse); by default both are off so every client does the same work.

#include "renewers/acme_renewer.h"
#include "tests/support/broker_test_util.h"
#include "tests/support/pebble.h"
#include "tests/support/test_identity.h"
#include "tests/support/test_support.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>

extern char** environ;

namespace certagent::bench {
namespace {

using namespace std::chrono_literals;
using std::filesystem::path;
namespace fs = std::filesystem;

const std::string kName = "bench.certagent.test";

double process_cpu_ms() {
  timespec ts{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
}

double since_ms(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

std::optional<path> find_program(const std::string& name) {
  const char* env = std::getenv("PATH");
  std::stringstream ss(std::string(env ? env : "") + ":/usr/sbin:/sbin:/usr/local/sbin");
  std::string dir;
  while (std::getline(ss, dir, ':')) {
    if (dir.empty()) continue;
    path candidate = path(dir) / name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return std::nullopt;
}

std::string read_text(const path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

// utime + stime of a process in clock ticks (/proc/<pid>/stat fields 14 and 15).
long proc_cpu_ticks(pid_t pid) {
  std::string stat = read_text("/proc/" + std::to_string(pid) + "/stat");
  auto paren = stat.rfind(')');
  if (paren == std::string::npos) return -1;
  std::stringstream ss(stat.substr(paren + 2));
  std::string field;
  long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && ss >> field; ++i) {
    if (i == 14) utime = std::stol(field);
    if (i == 15) stime = std::stol(field);
  }
  return utime + stime;
}

// The swtpm that TestIdentity started on `state_dir` (the fixture does not expose its PID).
pid_t find_swtpm_pid(const path& state_dir) {
  for (const auto& entry : fs::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || !std::all_of(name.begin(), name.end(), ::isdigit)) continue;
    std::string cmdline = read_text(entry.path() / "cmdline");
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    if (cmdline.find("swtpm") != std::string::npos && cmdline.find(state_dir.string()) != std::string::npos)
      return static_cast<pid_t>(std::stol(name));
  }
  return -1;
}

struct Sample {
  double wall_ms{0};
  double cpu_ms{0};
  long maxrss_kib{0};
};

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  if (p == 50 && v.size() % 2 == 0) return (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
  auto rank = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
  return v[std::clamp<std::size_t>(rank, 1, v.size()) - 1];
}

struct Row {
  std::string client;
  std::string mode;
  std::vector<Sample> samples;
  int failures{0};
  std::string note;
  double wall(double p) const {
    std::vector<double> v;
    for (const auto& s : samples) v.push_back(s.wall_ms);
    return percentile(v, p);
  }
  double cpu(double p) const {
    std::vector<double> v;
    for (const auto& s : samples) v.push_back(s.cpu_ms);
    return percentile(v, p);
  }
  long maxrss() const {
    long m = 0;
    for (const auto& s : samples) m = std::max(m, s.maxrss_kib);
    return m;
  }
};

// ---- peers: one child process per issuance ---------------------------------------------

struct ChildSpec {
  std::vector<std::string> argv;
  std::map<std::string, std::string> env;
  path log;
  path cwd;
  // When set: the child runs in a private mount namespace where this file is bind-mounted
  // over the system CA bundle (for uacme, whose libcurl/GnuTLS has no CA-file knob).
  std::optional<path> system_ca_bundle;
  // When set: this directory is bind-mounted over /etc/ssl/certs instead (a whole system store).
  std::optional<path> system_ca_dir;
  std::chrono::seconds timeout{60};
};

struct ChildResult {
  bool ok{false};
  std::string why;
  Sample sample;
};

ChildResult run_child(const ChildSpec& spec) {
  // Everything the child needs is prepared before fork: after it only syscalls run.
  std::map<std::string, std::string> env_map;
  for (char** e = environ; *e; ++e) {
    std::string kv = *e;
    auto eq = kv.find('=');
    if (eq != std::string::npos) env_map[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  for (const auto& [k, v] : spec.env) env_map[k] = v;
  std::vector<std::string> env_strings;
  for (const auto& [k, v] : env_map) env_strings.push_back(k + "=" + v);
  std::vector<char*> envp, argv;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = spec.argv;
  for (auto& s : args) argv.push_back(s.data());
  argv.push_back(nullptr);
  int log_fd = ::open(spec.log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  std::string bundle = spec.system_ca_bundle ? spec.system_ca_bundle->string() : std::string();
  std::string ca_dir = spec.system_ca_dir ? spec.system_ca_dir->string() : std::string();

  auto start = std::chrono::steady_clock::now();
  pid_t pid = ::fork();
  if (pid == 0) {
    ::setpgid(0, 0);
    if (!bundle.empty() || !ca_dir.empty()) {
      if (::unshare(CLONE_NEWNS) != 0) ::_exit(125);
      if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) ::_exit(125);
      if (!ca_dir.empty() && ::mount(ca_dir.c_str(), "/etc/ssl/certs", nullptr, MS_BIND, nullptr) != 0) ::_exit(125);
      if (!bundle.empty() &&
          ::mount(bundle.c_str(), "/etc/ssl/certs/ca-certificates.crt", nullptr, MS_BIND, nullptr) != 0)
        ::_exit(125);
    }
    ::dup2(null_fd, 0);
    ::dup2(log_fd, 1);
    ::dup2(log_fd, 2);
    if (::chdir(spec.cwd.c_str()) != 0) ::_exit(126);
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }
  ::close(log_fd);
  ::close(null_fd);
  ChildResult out;
  if (pid < 0) {
    out.why = std::string("fork: ") + std::strerror(errno);
    return out;
  }
  // A watchdog so a hung peer cannot hang the bench.
  std::mutex mu;
  std::condition_variable cv;
  bool done = false, killed = false;
  std::thread watchdog([&] {
    std::unique_lock lock(mu);
    if (!cv.wait_for(lock, spec.timeout, [&] { return done; })) {
      killed = true;
      ::kill(-pid, SIGKILL);
    }
  });
  int status = 0;
  rusage ru{};
  pid_t waited;
  do {
    waited = ::wait4(pid, &status, 0, &ru);
  } while (waited < 0 && errno == EINTR);
  out.sample.wall_ms = since_ms(start);
  {
    std::lock_guard lock(mu);
    done = true;
  }
  cv.notify_one();
  watchdog.join();
  // ru of wait4 covers the child and the descendants it reaped (uacme's hook, certbot's
  // nothing, lego's nothing): CPU in user + system, max RSS of the largest of them.
  out.sample.cpu_ms = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
                      static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
  out.sample.maxrss_kib = ru.ru_maxrss;
  if (killed) {
    out.why = "timed out after " + std::to_string(spec.timeout.count()) + " s";
  } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    out.why = WIFEXITED(status) ? "exit " + std::to_string(WEXITSTATUS(status))
                                : "signal " + std::to_string(WTERMSIG(status));
  } else {
    out.ok = true;
  }
  return out;
}

std::string log_tail(const path& log) {
  std::string text = read_text(log);
  if (text.size() > 1500) text = "..." + text.substr(text.size() - 1500);
  return text;
}

// A peer: an untimed warm-up issuance (creates the account), then `runs` timed issuances that
// reuse the account. `prepare` resets per-issuance state (fresh certificate key) and returns
// the argv; `issued` checks that the certificate really landed.
struct Peer {
  std::string name;
  std::string mode;
  std::function<ChildSpec(int run)> prepare;
  std::function<bool()> issued;
};

Row run_peer(const Peer& peer, int runs) {
  Row row{peer.name, peer.mode, {}, 0, {}};
  for (int i = -1; i < runs; ++i) {
    ChildSpec spec = peer.prepare(i);
    fs::remove(spec.log);
    auto r = run_child(spec);
    bool ok = r.ok && peer.issued();
    if (!ok) {
      std::cerr << peer.name << (i < 0 ? " warm-up" : " run " + std::to_string(i)) << " failed: "
                << (r.ok ? "no certificate written" : r.why) << "\n"
                << log_tail(spec.log) << "\n";
      if (i < 0) {
        row.failures = runs;
        row.note = "warm-up failed: " + (r.ok ? std::string("no certificate written") : r.why);
        return row;
      }
      ++row.failures;
      continue;
    }
    if (i >= 0) row.samples.push_back(r.sample);
    std::cerr << "  " << peer.name << (i < 0 ? " warm-up" : " run " + std::to_string(i)) << ": "
              << static_cast<long>(r.sample.wall_ms) << " ms wall, " << static_cast<long>(r.sample.cpu_ms)
              << " ms CPU\n";
  }
  return row;
}

// ---- certagent: in process ----------------------------------------------------------------

struct CertagentResult {
  Row row;
  double swtpm_cpu_ms_per_issuance{-1};
  double requests_per_issuance{0};
  double signed_per_issuance{0};
  std::uint64_t connections{0};
  long bench_maxrss_kib{0};
  // Where the daemon-side CPU goes, each part measured alone (mean of kParts repetitions).
  double keygen_csr_cpu_ms{0}, validate_cpu_ms{0}, sign_cpu_ms{0}, sign_wall_ms{0}, sign_swtpm_ms{-1};
};

constexpr int kParts = 20;

CertagentResult run_certagent(const test::Pebble& pebble, const path& dir, test::TestIdentity& identity,
                              pid_t swtpm, int runs, renewers::AcmeTuning tuning = {}) {
  CertagentResult out;
  out.row.client = "certagent";
  out.row.mode = "in-process renewer, warm account + connection, TPM (swtpm) JWS, + validate_issued (trust store parsed once, as the daemon does)";

  boost::asio::io_context ioc;
  const config::BrokerConfig broker = pebble.broker_config("127.0.0.1:" + std::to_string(test::free_tcp_port()));
  renewers::RenewerContext context{ioc.get_executor(), identity.get(), dir / "certagent-state", nullptr};
  fs::create_directories(dir / "certagent-state");
  auto created = renewers::AcmeRenewer::create(broker, context, tuning);
  if (!created) throw std::runtime_error("AcmeRenewer: " + created.error().message);
  auto& renewer = **created;
  const std::string roots = pebble.root_pem();
  crypto::SubjectNames names{.dns_names = {kName}};
  // Validation as the daemon does it: the trust store is parsed once (the daemon re-reads it
  // only when the bundle file changes), each issued chain is checked against it.
  auto store = crypto::trust_store_from_pem(roots);
  if (!store) throw std::runtime_error("pebble root: " + store.error().message);
  auto validate = [&](const test::Issued& issued) -> Result<Material> {
    if (!issued.result) return issued.result.error();
    ValidationInput input;
    input.chain_pem = issued.result->chain_pem;
    input.key = issued.key.get();
    input.requested = issued.names;
    input.trust = store->get();
    input.max_lifetime = std::chrono::hours(1);
    input.now = std::chrono::system_clock::now();
    input.broker = "pebble";
    return validate_issued(input);
  };

  std::string previous;
  test::Issued last;
  auto one = [&](Sample* sample, long* tpm_ticks) -> bool {
    long ticks0 = swtpm > 0 ? proc_cpu_ticks(swtpm) : 0;
    double cpu0 = process_cpu_ms();
    auto start = std::chrono::steady_clock::now();
    auto issued = test::issue_once(ioc, renewer, names, 5min, previous);
    auto material = validate(issued);
    last = std::move(issued);
    double wall = since_ms(start);
    double cpu = process_cpu_ms() - cpu0;
    long ticks1 = swtpm > 0 ? proc_cpu_ticks(swtpm) : 0;
    if (!material) {
      std::cerr << "certagent issuance failed: " << material.error().message << "\n";
      return false;
    }
    previous = material->cert_pem;
    if (sample) {
      sample->wall_ms = wall;
      sample->cpu_ms = cpu;
    }
    if (tpm_ticks) *tpm_ticks += ticks1 - ticks0;
    return true;
  };
  if (!one(nullptr, nullptr)) throw std::runtime_error("certagent warm-up issuance failed");
  std::cerr << "  certagent warm-up done (account " << renewer.stats().accounts_registered << ")\n";
  auto stats0 = renewer.stats();
  auto client0 = renewer.client().stats();
  long swtpm_ticks = 0;
  for (int i = 0; i < runs; ++i) {
    Sample s;
    if (!one(&s, &swtpm_ticks)) {
      ++out.row.failures;
      continue;
    }
    out.row.samples.push_back(s);
    std::cerr << "  certagent run " << i << ": " << s.wall_ms << " ms wall, " << s.cpu_ms << " ms CPU\n";
  }
  auto stats1 = renewer.stats();
  auto client1 = renewer.client().stats();
  double n = static_cast<double>(std::max<std::size_t>(out.row.samples.size(), 1));
  if (swtpm > 0) out.swtpm_cpu_ms_per_issuance = static_cast<double>(swtpm_ticks) * 1e3 / static_cast<double>(::sysconf(_SC_CLK_TCK)) / n;
  out.requests_per_issuance = static_cast<double>(client1.requests - client0.requests) / n;
  out.signed_per_issuance = static_cast<double>(stats1.signed_requests - stats0.signed_requests) / n;
  out.connections = client1.connections;
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  out.bench_maxrss_kib = ru.ru_maxrss;

  double cpu0 = process_cpu_ms();
  for (int i = 0; i < kParts; ++i) {
    auto key = crypto::generate_key(crypto::KeyType::ecdsa_p256);
    if (!key || !crypto::build_csr(key->get(), names)) throw std::runtime_error("key/CSR failed");
  }
  out.keygen_csr_cpu_ms = (process_cpu_ms() - cpu0) / kParts;
  cpu0 = process_cpu_ms();
  for (int i = 0; i < kParts; ++i)
    if (!validate(last)) throw std::runtime_error("validate_issued failed");
  out.validate_cpu_ms = (process_cpu_ms() - cpu0) / kParts;
  std::vector<std::uint8_t> digest(32, 0x5a);
  long ticks0 = swtpm > 0 ? proc_cpu_ticks(swtpm) : 0;
  cpu0 = process_cpu_ms();
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < kParts; ++i)
    if (!identity->sign_digest(digest)) throw std::runtime_error("TPM sign failed");
  out.sign_wall_ms = since_ms(start) / kParts;
  out.sign_cpu_ms = (process_cpu_ms() - cpu0) / kParts;
  if (swtpm > 0)
    out.sign_swtpm_ms = static_cast<double>(proc_cpu_ticks(swtpm) - ticks0) * 1e3 /
                        static_cast<double>(::sysconf(_SC_CLK_TCK)) / kParts;
  return out;
}

// ---- report ---------------------------------------------------------------------------------

std::string machine_line() {
  std::string model = "unknown CPU";
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) == 0) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  }
  std::ostringstream out;
  out << "machine: nproc=" << ::sysconf(_SC_NPROCESSORS_ONLN) << ", CPU " << model << ", load average "
      << first_line(read_text("/proc/loadavg")) << ", kernel " << first_line(read_text("/proc/sys/kernel/osrelease"));
  return out.str();
}

std::string fmt(double v, int precision = 1) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", precision, v);
  return buf;
}

std::string fmt_ms(double ms) { return ms >= 1000 ? fmt(ms / 1000, 2) + " s" : fmt(ms, ms < 10 ? 2 : 1) + " ms"; }

int usage() {
  std::cerr << "usage: acme_bench [--certagent N] [--lego N] [--uacme N] [--certbot N] [--pebble-faults]\n";
  return 2;
}

int run(int argc, char** argv) {
  std::map<std::string, int> runs{{"certagent", 20}, {"lego", 10}, {"uacme", 10}, {"certbot", 5}};
  bool faults = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--pebble-faults") {
      faults = true;
    } else if (a.rfind("--", 0) == 0 && runs.count(a.substr(2)) && i + 1 < argc) {
      runs[a.substr(2)] = std::atoi(argv[++i]);
    } else {
      return usage();
    }
  }
  if (runs["certagent"] <= 0) {
    std::cerr << "acme_bench: certagent is the reference, it needs at least one run\n";
    return 2;
  }

  std::map<std::string, path> programs;
  std::vector<std::string> needed{"pebble", "swtpm"};
  for (const char* peer : {"lego", "uacme", "certbot"})
    if (runs[peer] > 0) needed.push_back(peer);
  bool missing = false;
  for (const auto& p : needed) {
    if (auto found = find_program(p)) {
      programs[p] = *found;
    } else {
      std::cerr << "acme_bench: required program '" << p << "' is not installed "
                << "(scripts/install-deps.sh test bench)\n";
      missing = true;
    }
  }
  if (missing) return 1;
  if (runs["uacme"] > 0 && ::geteuid() != 0) {
    // uacme's trust store is given to it by a bind mount in a private mount namespace.
    std::cerr << "acme_bench: uacme's runs need root (a private mount namespace); run as root or pass --uacme 0\n";
    return 1;
  }

  std::cout << "# ACME issuance, side by side (pebble, PEBBLE_VA_ALWAYS_VALID=1, PEBBLE_VA_NOSLEEP=1, fault injection "
            << (faults ? "on (pebble defaults)" : "off") << ")\n\n";
  std::cout << machine_line() << "\n\n";

  test::TempDir dir("acme-bench");
  test::PebbleOptions options{.always_valid = true, .no_sleep = true};
  if (!faults) options.env = {{"PEBBLE_WFE_NONCEREJECT", "0"}, {"PEBBLE_AUTHZREUSE", "0"}};
  test::Pebble pebble(dir.path(), options);
  const std::string url = pebble.directory_url();
  const path tls_ca = pebble.tls_ca_file();

  std::cerr << "certagent: " << runs["certagent"] << " runs\n";
  test::TestIdentity identity(test::IdentityKind::tpm, dir / "tpm-identity");
  const pid_t swtpm = find_swtpm_pid(dir / "tpm-identity" / "tpm");
  auto ca = run_certagent(pebble, dir.path(), identity, swtpm, runs["certagent"]);
  std::vector<Row> rows{ca.row};
  // Profile only, not the daemon's setting: how much of the wall time is the renewer's own
  // polling (first poll 10 ms, doubling), measured with a 1 ms first poll.
  std::cerr << "certagent, first poll 1 ms (profile): " << runs["certagent"] << " runs\n";
  auto fast_poll = run_certagent(pebble, dir.path(), identity, swtpm, runs["certagent"],
                                 renewers::AcmeTuning{.first_poll = std::chrono::milliseconds(1)});

  if (runs["lego"] > 0) {
    path home = dir / "lego";
    fs::create_directories(home);
    Peer lego{"lego", "", nullptr, nullptr};
    lego.mode = "child process; account reused (--path), fresh ec256 key per run";
    lego.prepare = [&, home](int) {
      fs::remove_all(home / "certificates");
      return ChildSpec{{programs["lego"].string(), "--server", url, "--accept-tos", "--email", "bench@example.com",
                        "--domains", kName, "--key-type", "ec256", "--http", "--http.port",
                        "127.0.0.1:" + std::to_string(test::free_tcp_port()), "--path", home.string(), "run"},
                       {{"LEGO_CA_CERTIFICATES", tls_ca.string()}},
                       dir / "lego.log",
                       home};
    };
    lego.issued = [home] {
      path p = home / "certificates" / (kName + ".crt");
      return fs::exists(p) && fs::file_size(p) > 0;
    };
    std::cerr << "lego: " << runs["lego"] << " runs\n";
    rows.push_back(run_peer(lego, runs["lego"]));
  }

  std::string uacme_check;
  if (runs["uacme"] > 0) {
    path home = dir / "uacme";
    fs::create_directories(home);
    path hook = dir / "uacme-hook.sh";
    // With always-valid nothing has to be published: the hook accepts the challenge.
    test::write_file(hook, "#!/bin/sh\nexit 0\n", fs::perms(0755));
    // uacme (libcurl-gnutls) only trusts the system store: system bundle + pebble's TLS CA,
    // bind-mounted over it in the child's private mount namespace.
    path bundle = dir / "uacme-ca-bundle.pem";
    test::write_file(bundle, read_text("/etc/ssl/certs/ca-certificates.crt") + read_text(tls_ca));
    Peer uacme{"uacme (system store + pebble CA)", "", nullptr, nullptr};
    uacme.mode = "child process; account reused (-c), fresh EC P-256 key per run, hook = sh exit 0; "
                 "trust: Debian's system store with pebble's TLS CA appended (bind-mounted)";
    uacme.prepare = [&, home, hook, bundle](int run) {
      if (run < 0) {
        // The account: `new` once, untimed (part of the warm-up).
        ChildSpec spec{{programs["uacme"].string(), "-y", "-t", "EC", "-b", "256", "-c", home.string(), "-a", url, "new"},
                       {}, dir / "uacme-new.log", home, bundle};
        auto r = run_child(spec);
        if (!r.ok) std::cerr << "uacme new failed: " << r.why << "\n" << log_tail(spec.log) << "\n";
      }
      fs::remove_all(home / "private" / kName);
      fs::remove_all(home / kName);
      return ChildSpec{{programs["uacme"].string(), "-t", "EC", "-b", "256", "-c", home.string(), "-a", url, "-h",
                        hook.string(), "-f", "issue", kName},
                       {},
                       dir / "uacme.log",
                       home,
                       bundle};
    };
    uacme.issued = [home] { return fs::exists(home / kName / "cert.pem") && fs::file_size(home / kName / "cert.pem") > 0; };
    std::cerr << "uacme: " << runs["uacme"] << " runs\n";
    rows.push_back(run_peer(uacme, runs["uacme"]));
    // uacme verifies TLS: without pebble's CA in the (bind-mounted) system bundle it must fail.
    ChildSpec unbundled = uacme.prepare(0);
    unbundled.system_ca_bundle.reset();
    unbundled.log = dir / "uacme-unbundled.log";
    unbundled.timeout = std::chrono::seconds(3);  // it retries every 5 s
    auto r = run_child(unbundled);
    uacme_check = r.ok ? "uacme ALSO succeeded without pebble's CA: its TLS is not verified"
                       : "uacme without pebble's CA in the system bundle fails (\"" +
                             first_line(read_text(unbundled.log)) + "\"): it does verify TLS";
    // The same with a system store holding only pebble's CA: isolates what uacme spends
    // re-reading the store (bundle file and the /etc/ssl/certs directory) for each request.
    // Not a realistic trust configuration.
    path lone_store = dir / "uacme-lone-store";
    fs::create_directories(lone_store);
    fs::copy_file(tls_ca, lone_store / "ca-certificates.crt");
    Peer alone = uacme;
    alone.name = "uacme (store = pebble CA only)";
    alone.mode = "as above, but /etc/ssl/certs replaced by a directory holding only pebble's TLS CA "
                 "(what lego, certbot and certagent are given: one CA file)";
    alone.prepare = [prepare = uacme.prepare, lone_store](int run) {
      ChildSpec spec = prepare(run < 0 ? 0 : run);  // the account exists already
      spec.system_ca_bundle.reset();
      spec.system_ca_dir = lone_store;
      return spec;
    };
    std::cerr << alone.name << ": " << runs["uacme"] << " runs\n";
    rows.push_back(run_peer(alone, runs["uacme"]));
  }

  if (runs["certbot"] > 0) {
    path home = dir / "certbot";
    fs::create_directories(home);
    Peer certbot{"certbot", "", nullptr, nullptr};
    certbot.mode = "child process; account reused (--config-dir), --force-renewal, fresh ECDSA P-256 key per run";
    certbot.prepare = [&, home](int) {
      return ChildSpec{{programs["certbot"].string(), "certonly", "--standalone", "--http-01-address", "127.0.0.1",
                        "--http-01-port", std::to_string(test::free_tcp_port()), "--server", url, "-d", kName,
                        "--config-dir", (home / "config").string(), "--work-dir", (home / "work").string(),
                        "--logs-dir", (home / "logs").string(), "--register-unsafely-without-email", "--agree-tos",
                        "--non-interactive", "--force-renewal", "--key-type", "ecdsa", "--elliptic-curve",
                        "secp256r1", "--max-log-backups", "0"},
                       {{"REQUESTS_CA_BUNDLE", tls_ca.string()}},
                       dir / "certbot.log",
                       home,
                       std::nullopt,
                       std::nullopt,
                       std::chrono::seconds(120)};
    };
    certbot.issued = [home] {
      path p = home / "config" / "live" / kName / "fullchain.pem";
      return fs::exists(p) && fs::file_size(p) > 0;
    };
    std::cerr << "certbot: " << runs["certbot"] << " runs\n";
    rows.push_back(run_peer(certbot, runs["certbot"]));
  }

  const double ref_wall = ca.row.wall(50), ref_cpu = ca.row.cpu(50);
  const double ref_cpu_tpm = ref_cpu + std::max(ca.swtpm_cpu_ms_per_issuance, 0.0);
  std::cout << "| client | runs (failed) | wall median | wall p90 | CPU median | CPU p90 | max RSS | wall ratio | CPU ratio | CPU ratio vs certagent+swtpm |\n"
            << "|---|---|---|---|---|---|---|---|---|---|\n";
  for (const auto& r : rows) {
    bool reference = r.client == "certagent";
    std::cout << "| " << r.client << " | " << r.samples.size() << " (" << r.failures << ") | ";
    if (r.samples.empty()) {
      std::cout << "— | — | — | — | — | — | — | — |\n";
      continue;
    }
    std::cout << fmt_ms(r.wall(50)) << " | " << fmt_ms(r.wall(90)) << " | " << fmt_ms(r.cpu(50)) << " | "
              << fmt_ms(r.cpu(90)) << " | "
              << (reference ? std::string("(in process, n/a)") : fmt(static_cast<double>(r.maxrss()) / 1024, 1) + " MiB")
              << " | " << (reference ? "1" : fmt(r.wall(50) / ref_wall, 1) + "×") << " | "
              << (reference ? "1" : fmt(r.cpu(50) / ref_cpu, 1) + "×") << " | "
              << (reference ? "1" : fmt(r.cpu(50) / ref_cpu_tpm, 1) + "×") << " |\n";
  }
  std::cout << "\n";
  for (const auto& r : rows) std::cout << "- " << r.client << ": " << r.mode << (r.note.empty() ? "" : " — " + r.note) << "\n";
  std::cout << "- certagent: swtpm CPU per issuance (mean, /proc ticks) "
            << (ca.swtpm_cpu_ms_per_issuance < 0 ? std::string("unknown (swtpm PID not found)")
                                                 : fmt(ca.swtpm_cpu_ms_per_issuance, 1) + " ms")
            << "; HTTP requests per issuance " << fmt(ca.requests_per_issuance, 1) << " (" << fmt(ca.signed_per_issuance, 1)
            << " JWS-signed), TLS connections in total " << ca.connections << "; bench process max RSS "
            << fmt(static_cast<double>(ca.bench_maxrss_kib) / 1024, 1) << " MiB (includes the bench itself)\n";
  if (!uacme_check.empty()) std::cout << "- " << uacme_check << "\n";
  std::cout << "- certagent's daemon-side CPU per issuance, parts measured alone: key + CSR " << fmt_ms(ca.keygen_csr_cpu_ms)
            << ", validate_issued " << fmt_ms(ca.validate_cpu_ms) << ", " << fmt(ca.signed_per_issuance, 1)
            << " TPM signatures × " << fmt_ms(ca.sign_cpu_ms) << " (TSS client side; each " << fmt_ms(ca.sign_wall_ms)
            << " wall, swtpm " << (ca.sign_swtpm_ms < 0 ? std::string("?") : fmt_ms(ca.sign_swtpm_ms))
            << "), the rest (inside the renewer: JWS and JSON, HTTP, TLS records, PEM/DER handling) "
            << fmt_ms(ref_cpu - ca.keygen_csr_cpu_ms - ca.validate_cpu_ms - ca.signed_per_issuance * ca.sign_cpu_ms)
            << "\n";
  std::cout << "- profile (not the daemon's setting): with a 1 ms first poll instead of 10 ms, certagent's wall median is "
            << fmt_ms(fast_poll.row.wall(50)) << " (p90 " << fmt_ms(fast_poll.row.wall(90)) << "), CPU median "
            << fmt_ms(fast_poll.row.cpu(50)) << ", HTTP requests per issuance " << fmt(fast_poll.requests_per_issuance, 1)
            << ": the rest of the default's wall time is the two 10 ms poll waits (after the challenge, after finalize)\n";
  const Row* fastest = nullptr;
  for (const auto& r : rows)
    if (r.client != "certagent" && !r.samples.empty() && (!fastest || r.wall(50) < fastest->wall(50))) fastest = &r;
  if (fastest)
    std::cout << "- fastest peer by wall median: " << fastest->client << " at " << fmt_ms(fastest->wall(50))
              << ": certagent is " << fmt(fastest->wall(50) / ref_wall, 1) << "× faster (issue 4 asks ≥ 10×: "
              << (fastest->wall(50) / ref_wall >= 10 ? "met" : "MISSED") << ")\n";
  std::cout << "- target (issue 4): certagent wall median ≤ 50 ms: " << (ref_wall <= 50 ? "met" : "MISSED") << " ("
            << fmt_ms(ref_wall) << "); CPU median ≤ 10 ms: " << (ref_cpu <= 10 ? "met" : "MISSED") << " ("
            << fmt_ms(ref_cpu) << ")\n";
  std::cout << "- load average after the run: " << first_line(read_text("/proc/loadavg")) << "\n";
  bool any_failed = false;
  for (const auto& r : rows) any_failed = any_failed || r.failures > 0;
  return any_failed ? 1 : 0;
}

}  // namespace
}  // namespace certagent::bench

int main(int argc, char** argv) {
  try {
    return certagent::bench::run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "acme_bench: " << e.what() << "\n";
    return 1;
  }
}
