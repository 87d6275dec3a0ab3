// One rotation per iteration, as the daemon does it: fresh key -> CSR -> local CA signs ->
// validate_issued -> key PEM -> FileSink::commit (new generation, every file and directory
// fsynced, ..data swapped). Reports p50/p99 wall and CPU time per rotation for each key type,
// plus the CPU split by step. Figures, not a pass/fail test.
//
//   rotation_bench [--key TYPE]... [--iterations N] [--dir DIR] [--no-commit]
//
// DIR (default: a fresh directory under the current one) should be on the disk the daemon
// writes to: fsync on tmpfs costs nothing and would flatter the commit figures.

#include "core/config/config.h"
#include "core/crypto/csr.h"
#include "core/crypto/keys.h"
#include "core/crypto/x509.h"
#include "agent/file_sink.h"
#include "core/logging.h"
#include "core/crypto/validation.h"
#include "renewers/local_renewer.h"

#include <sys/resource.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace {

using namespace certagent;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

double cpu_now_us() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) / 1e3;
}

double wall_now_us() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) / 1e3;
}

struct Usage {
  double user_us;
  double sys_us;
};

Usage rusage_now() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return {static_cast<double>(ru.ru_utime.tv_sec) * 1e6 + static_cast<double>(ru.ru_utime.tv_usec),
          static_cast<double>(ru.ru_stime.tv_sec) * 1e6 + static_cast<double>(ru.ru_stime.tv_usec)};
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto idx = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(idx, v.size() - 1)];
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto colon = line.find(':');
      return colon == std::string::npos ? line : line.substr(colon + 2);
    }
  }
  return "unknown";
}

std::string fs_type(const fs::path& p) {
  struct statfs st{};
  if (statfs(p.c_str(), &st) != 0) return "unknown";
  switch (st.f_type) {
    case 0xEF53: return "ext4";
    case 0x01021994: return "tmpfs";
    case 0x58465342: return "xfs";
    case 0x9123683E: return "btrfs";
    case 0x794C7630: return "overlayfs";
    default: {
      char buf[32];
      std::snprintf(buf, sizeof buf, "0x%lx", static_cast<unsigned long>(st.f_type));
      return buf;
    }
  }
}

struct Phase {
  const char* name;
  std::vector<double> cpu_us;
};

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "rotation_bench: %s\n", what.c_str());
  std::exit(1);
}

int default_iterations(crypto::KeyType k) {
  switch (k) {
    case crypto::KeyType::rsa_4096: return 8;
    case crypto::KeyType::rsa_3072: return 15;
    case crypto::KeyType::rsa_2048: return 40;
    default: return 400;
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<crypto::KeyType> keys;
  std::optional<int> iterations;
  fs::path base = fs::current_path();
  bool commit = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) die(a + " needs a value");
      return argv[++i];
    };
    if (a == "--key") {
      auto k = crypto::parse_key_type(next());
      if (!k) die("unknown key type");
      keys.push_back(*k);
    } else if (a == "--iterations") {
      iterations = std::stoi(next());
    } else if (a == "--dir") {
      base = next();
    } else if (a == "--no-commit") {
      commit = false;
    } else {
      die("usage: rotation_bench [--key TYPE]... [--iterations N] [--dir DIR] [--no-commit]");
    }
  }
  if (keys.empty()) {
    keys = {crypto::KeyType::ecdsa_p256, crypto::KeyType::ecdsa_p384, crypto::KeyType::ed25519,
            crypto::KeyType::rsa_2048,   crypto::KeyType::rsa_3072,   crypto::KeyType::rsa_4096};
  }
  log::init({"warn", "text"});

  char tmpl[] = "rotation-bench-XXXXXX";
  const fs::path work = base / tmpl;
  std::string work_s = work.string();
  if (!mkdtemp(work_s.data())) die("mkdtemp in " + base.string() + ": " + std::strerror(errno));
  const fs::path dir = work_s;

  double load[3] = {};
  getloadavg(load, 3);
  std::printf("nproc: %ld\ncpu: %s\nload average at start: %.2f %.2f %.2f\n", sysconf(_SC_NPROCESSORS_ONLN),
              cpu_model().c_str(), load[0], load[1], load[2]);
  std::printf("commit: %s (dir %s, filesystem %s)\n\n",
              commit ? "FileSink::commit with fsyncs" : "off (--no-commit)", dir.c_str(),
              fs_type(dir).c_str());

  const SystemClock clock;
  auto renewer = renewers::LocalRenewer::open(dir / "state", &clock);
  if (!renewer) die(renewer.error().message);
  auto trust = crypto::load_trust_store((*renewer)->root_file());  // cached by the daemon too
  if (!trust) die(trust.error().message);

  const Names names{"web.internal", {"web.internal", "localhost"}, {"127.0.0.1"}, {"spiffe://example.org/web"}};
  config::FilesConfig files;
  files.dir = dir / "live";
  files.keep = 3;
  FileSink sink(files);

  std::printf("%-11s %5s | %9s %9s | %9s %9s | %s\n", "key", "n", "wall p50", "wall p99", "cpu p50",
              "cpu p99", "cpu p50 by step (us): keygen csr sign validate keypem commit");
  for (crypto::KeyType type : keys) {
    const int n = iterations.value_or(default_iterations(type));
    const int warmup = std::max(1, n / 20);
    std::vector<double> wall, cpu;
    std::vector<Phase> phases = {{"keygen", {}}, {"csr", {}},    {"sign", {}},
                                 {"validate", {}}, {"keypem", {}}, {"commit", {}}};
    const Usage ru_start = rusage_now();
    for (int i = 0; i < warmup + n; ++i) {
      const double w0 = wall_now_us();
      const double c0 = cpu_now_us();
      double mark = c0;
      auto step = [&](std::size_t idx) {
        const double t = cpu_now_us();
        if (i >= warmup) phases[idx].cpu_us.push_back(t - mark);
        mark = t;
      };

      auto key = crypto::generate_key(type);
      if (!key) die(key.error().message);
      step(0);
      auto csr = crypto::build_csr(key->get(), names);
      if (!csr) die(csr.error().message);
      step(1);
      renewers::IssueRequest req;
      req.cert_name = "web";
      req.csr_pem = std::move(*csr);
      req.common_name = names.common_name;
      req.dns_names = names.dns_names;
      req.ip_addresses = names.ip_addresses;
      req.uris = names.uris;
      req.lifetime = 96h;
      auto issued = (*renewer)->issue_now(req);
      if (!issued) die(issued.error().message);
      step(2);
      ValidationInput in;
      in.chain_pem = std::move(issued->chain_pem);
      in.key = key->get();
      in.requested = names;
      in.trust = trust->get();
      in.max_lifetime = 168h;
      in.now = clock.now();
      in.broker = "dev";
      auto material = validate_issued(in);
      if (!material) die(material.error().message);
      step(3);
      auto key_pem = crypto::private_key_pem(key->get());
      if (!key_pem) die(key_pem.error().message);
      material->key_pem = std::move(*key_pem);
      step(4);
      if (commit) {
        auto gen = sink.commit(*material);
        if (!gen) die(gen.error().message);
      }
      step(5);
      const double c1 = cpu_now_us();
      const double w1 = wall_now_us();
      if (i >= warmup) {
        wall.push_back(w1 - w0);
        cpu.push_back(c1 - c0);
      }
    }
    const Usage ru_end = rusage_now();
    // Only the sum is meaningful: without precise accounting the kernel splits it by sampling.
    const double user_per = (ru_end.user_us - ru_start.user_us) / (warmup + n);
    const double sys_per = (ru_end.sys_us - ru_start.sys_us) / (warmup + n);
    std::printf("%-11s %5d | %7.0fus %7.0fus | %7.0fus %7.0fus | %.0f %.0f %.0f %.0f %.0f %.0f  "
                "(getrusage mean %.0fus)\n",
                std::string(crypto::to_string(type)).c_str(), n, percentile(wall, 0.5), percentile(wall, 0.99),
                percentile(cpu, 0.5), percentile(cpu, 0.99), percentile(phases[0].cpu_us, 0.5),
                percentile(phases[1].cpu_us, 0.5), percentile(phases[2].cpu_us, 0.5),
                percentile(phases[3].cpu_us, 0.5), percentile(phases[4].cpu_us, 0.5),
                percentile(phases[5].cpu_us, 0.5), user_per + sys_per);
    std::fflush(stdout);
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
  return 0;
}
