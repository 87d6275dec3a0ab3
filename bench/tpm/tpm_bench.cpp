// TPM identity benchmark on swtpm (Unix socket, started here, stopped by PID):
//   - sign_digest latency (one TPM2_Sign through the TPM thread),
//   - a full TLS client-auth handshake (no resumption, in-process server over a BIO pair,
//     one application round trip) with the TPM key vs a software P-256 key,
//   - TPM commands per handshake.
// Usage: tpm_bench [iterations]   (default 300)

#include "tpm/tpm_identity.h"

#include "tests/support/test_support.h"
#include "tests/support/swtpm.h"
#include "tests/support/tls_test_util.h"

#include <openssl/pem.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using namespace certagent;
using Clock = std::chrono::steady_clock;

namespace {

struct Stats {
  double p50, p99, mean;
};

Stats stats(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  double sum = 0;
  for (double v : ms) sum += v;
  auto at = [&](double q) { return ms[std::min(ms.size() - 1, static_cast<std::size_t>(q * (ms.size() - 1) + 0.5))]; };
  return {at(0.50), at(0.99), sum / ms.size()};
}

double since_ms(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

std::string load_average() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

// CPU time (user + system) in ms: this process, and another process by PID.
double self_cpu_ms() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}
double process_cpu_ms(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(in, line);
  std::istringstream fields(line.substr(line.rfind(')') + 2));
  std::string f;
  double ticks = 0;
  for (int i = 3; fields >> f; ++i) {
    if (i == 14 || i == 15) ticks += std::stod(f);
    if (i == 15) break;
  }
  return ticks * 1e3 / static_cast<double>(sysconf(_SC_CLK_TCK));
}

crypto::EvpPkeyPtr read_public(const std::string& pem) {
  crypto::BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  return crypto::EvpPkeyPtr(PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr));
}

std::vector<double> handshakes(SSL_CTX* client, SSL_CTX* server, int n) {
  std::vector<double> ms;
  for (int i = 0; i < n; ++i) {
    auto t0 = Clock::now();
    auto r = tpm::test::handshake(client, server);
    ms.push_back(since_ms(t0));
    if (!r.ok) {
      std::fprintf(stderr, "handshake failed: %s\n", r.error.c_str());
      std::exit(1);
    }
  }
  return ms;
}

void print(const char* what, const Stats& s) {
  std::printf("%-44s p50 %7.3f ms   p99 %7.3f ms   mean %7.3f ms\n", what, s.p50, s.p99, s.mean);
}

}  // namespace

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::max(10, std::atoi(argv[1])) : 300;
  std::printf("nproc %u, CPU %s, load average %s, iterations %d\n", std::thread::hardware_concurrency(),
              cpu_model().c_str(), load_average().c_str(), n);

  test::TempDir dir("certagent-tpmbench");
  tpm::test::Swtpm swtpm(dir / "swtpm");
  auto opened = tpm::TpmIdentity::open({dir / "identity", swtpm.tcti(), "enroll"}, tpm::OpenMode::create_if_missing);
  if (!opened) {
    std::fprintf(stderr, "%s\n", opened.error().message.c_str());
    return 1;
  }
  tpm::TpmIdentity& id = **opened;

  // Sign latency.
  std::vector<std::uint8_t> digest(32, 0x5a);
  std::vector<double> sign_ms;
  const double sign_cpu0 = self_cpu_ms(), sign_tpm0 = process_cpu_ms(swtpm.pid());
  for (int i = 0; i < n; ++i) {
    digest[0] = static_cast<std::uint8_t>(i);
    auto t0 = Clock::now();
    auto sig = id.sign_digest(digest);
    sign_ms.push_back(since_ms(t0));
    if (!sig) {
      std::fprintf(stderr, "sign failed: %s\n", sig.error().message.c_str());
      return 1;
    }
  }
  print("sign_digest (TPM2_Sign via TPM thread)", stats(sign_ms));
  std::printf("  CPU per sign: certagent %.3f ms, swtpm %.3f ms\n", (self_cpu_ms() - sign_cpu0) / n,
              (process_cpu_ms(swtpm.pid()) - sign_tpm0) / n);

  auto key = id.private_key();
  tpm::test::TestCa ca = tpm::test::make_ca("bench ca");
  crypto::EvpPkeyPtr tpm_pub = read_public(id.public_key_pem());
  crypto::X509Ptr tpm_cert = tpm::test::issue(ca, tpm_pub.get(), "tpm-client");
  crypto::EvpPkeyPtr soft = tpm::test::make_p256_key();
  crypto::X509Ptr soft_cert = tpm::test::issue(ca, soft.get(), "soft-client");

  for (int version : {TLS1_3_VERSION, TLS1_2_VERSION}) {
    const char* v = version == TLS1_3_VERSION ? "TLS 1.3" : "TLS 1.2";
    auto server = tpm::test::make_server_ctx(ca, version);
    auto tpm_client = tpm::test::make_client_ctx(ca, tpm_cert.get(), key->get(), version);
    auto soft_client = tpm::test::make_client_ctx(ca, soft_cert.get(), soft.get(), version);
    handshakes(soft_client.get(), server.get(), 5);  // warm-up
    handshakes(tpm_client.get(), server.get(), 5);
    // Interleaved runs so both keys see the same machine noise.
    std::vector<double> tpm_ms, soft_ms;
    const auto commands = id.command_count();
    const auto signs = id.sign_count();
    double soft_cpu = 0, tpm_cpu = 0, tpm_side = 0;
    for (int round = 0; round < 10; ++round) {
      double c0 = self_cpu_ms();
      auto s = handshakes(soft_client.get(), server.get(), n / 10);
      soft_cpu += self_cpu_ms() - c0;
      soft_ms.insert(soft_ms.end(), s.begin(), s.end());
      c0 = self_cpu_ms();
      const double t0 = process_cpu_ms(swtpm.pid());
      auto t = handshakes(tpm_client.get(), server.get(), n / 10);
      tpm_cpu += self_cpu_ms() - c0;
      tpm_side += process_cpu_ms(swtpm.pid()) - t0;
      tpm_ms.insert(tpm_ms.end(), t.begin(), t.end());
    }
    const double per_handshake = double(id.command_count() - commands) / double(tpm_ms.size());
    const double signs_per = double(id.sign_count() - signs) / double(tpm_ms.size());
    Stats st = stats(tpm_ms), ss = stats(soft_ms);
    std::printf("\n%s full handshake, client auth (client + server in-process, BIO pair)\n", v);
    print("  software P-256 key", ss);
    print("  TPM identity key", st);
    std::printf("  TPM / software: p50 %.2fx, p99 %.2fx (target <= 2x)\n", st.p50 / ss.p50, st.p99 / ss.p99);
    std::printf("  TPM commands per handshake: %.2f (TPM2_Sign: %.2f; target 1)\n", per_handshake, signs_per);
    std::printf("  CPU per handshake (client+server, this process): software %.3f ms, TPM key %.3f ms"
                " (+ swtpm %.3f ms)\n",
                soft_cpu / soft_ms.size(), tpm_cpu / tpm_ms.size(), tpm_side / tpm_ms.size());
  }
  std::printf("\nload average %s; total TPM commands %llu, reloads %llu\n", load_average().c_str(), static_cast<unsigned long long>(id.command_count()),
              static_cast<unsigned long long>(id.reload_count()));
  return 0;
}
