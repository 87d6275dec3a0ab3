// TPM commands and wall time per issuance, per broker, with the TPM identity on swtpm behind
// the TPM latency model (tests/support/tpm_proxy): plain swtpm, issue 19's "+30 ms per
// command", the discrete-TPM model (SLB 9670 class), and that model with the Linux kernel
// resource manager's context swaps (/dev/tpmrm0). Then start-up storms of cfssl certificates
// (max_in_flight 4, as the daemon's default).
//
// Usage: tpm_broker_bench [issuances per broker and model (default 10)] [storm sizes...]
//        (default storms: 50 1000)

#include "tests/integration/tpm_brokers/tpm_broker_rig.h"

#include "renewers/acme_renewer.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

using namespace certagent;
using namespace certagent::test;
namespace tp = certagent::test::tpm_proxy;

namespace {

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

std::string load_average() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

double ms(std::chrono::microseconds us) { return static_cast<double>(us.count()) / 1000.0; }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// "TPM2_HMAC 1" / "TPM2_Sign 7": commands per issuance by code, averaged.
std::string per_issuance(const tp::ProxyStats& total, int n) {
  std::string out;
  for (const auto& [cc, count] : total.executed) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%s%s %.3g", out.empty() ? "" : ", ", tp::command_name(cc).c_str(),
                  static_cast<double>(count) / n);
    out += buf;
  }
  if (total.device_total() != total.executed_total) {
    char buf[96];
    std::snprintf(buf, sizeof buf, " (+ kernel RM: %.3g context commands)",
                  static_cast<double>(total.device_total() - total.executed_total) / n);
    out += buf;
  }
  return out.empty() ? "none" : out;
}

struct Model {
  const char* label;
  tp::LatencyModel model;
};

}  // namespace

int main(int argc, char** argv) {
  ::setenv("TSS2_LOG", "all+none", 1);
  const int n = argc > 1 ? std::max(3, std::atoi(argv[1])) : 10;
  std::vector<int> storms;
  for (int i = 2; i < argc; ++i) storms.push_back(std::atoi(argv[i]));
  if (argc <= 2) storms = {50, 1000};

  std::printf("nproc %u, CPU %s, load average %s; %d issuances per broker and model (after one warm-up)\n",
              std::thread::hardware_concurrency(), cpu_model().c_str(), load_average().c_str(), n);

  const std::vector<Model> models = {
      {"swtpm", tp::LatencyModel::none()},
      {"+30 ms/command", tp::LatencyModel::uniform(std::chrono::milliseconds(30))},
      {"discrete", tp::LatencyModel::discrete()},
      {"discrete + kernel RM", *tp::LatencyModel::parse("discrete,kernel-rm")},
  };
  // ACME twice: a new name each time (newOrder, authorization, challenge, authorization poll,
  // finalize, order poll, download) and the steady state, a renewal of one name whose
  // authorization the CA reuses (newOrder "ready", finalize, at most one poll, download).
  struct Row {
    Broker broker;
    const char* label;
    bool same_name;
  };
  const std::vector<Row> rows = {{Broker::local, "local", false},
                                 {Broker::cfssl, "cfssl", false},
                                 {Broker::lemur, "lemur", false},
                                 {Broker::acme, "acme, new name", false},
                                 {Broker::acme, "acme renewal, authorization reused", true}};

  TpmBrokerRig rig({Broker::local, Broker::cfssl, Broker::lemur, Broker::acme});
  std::printf("\n| broker | model | TPM commands per issuance | wall p50 (ms) |\n|---|---|---|---|\n");
  for (const Row& row : rows) {
    const Broker b = row.broker;
    auto warm = rig.issue(b, std::string("warm-") + broker_name(b));
    if (!warm.result) {
      std::fprintf(stderr, "%s warm-up failed: %s\n", broker_name(b), warm.result.error().message.c_str());
      return 1;
    }
    for (std::size_t mi = 0; mi < models.size(); ++mi) {
      const Model& m = models[mi];
      rig.proxy().set_model(m.model);
      std::vector<double> wall;
      tp::ProxyStats total;
      std::uint64_t jws = 0;
      for (int i = 0; i < n; ++i) {
        std::uint64_t jws_before = 0;
        if (b == Broker::acme) jws_before = static_cast<renewers::AcmeRenewer&>(rig.renewer(b)).stats().signed_requests;
        // A new name per model and issuance (an authorization is reused only for the same name).
        const std::string name = row.same_name ? std::string("warm-") + broker_name(b)
                                               : std::string(broker_name(b)) + "-m" + std::to_string(mi) + "-" +
                                                     std::to_string(i);
        auto issued = rig.issue(b, name);
        if (!issued.result) {
          std::fprintf(stderr, "%s issuance failed: %s\n", broker_name(b), issued.result.error().message.c_str());
          return 1;
        }
        if (b == Broker::acme) jws += static_cast<renewers::AcmeRenewer&>(rig.renewer(b)).stats().signed_requests - jws_before;
        wall.push_back(ms(issued.wall));
        for (const auto& [cc, c] : issued.tpm.executed) total.executed[cc] += c;
        total.executed_total += issued.tpm.executed_total;
        total.rm_context_loads += issued.tpm.rm_context_loads;
        total.rm_context_saves += issued.tpm.rm_context_saves;
        total.rm_flushes += issued.tpm.rm_flushes;
      }
      std::string commands = per_issuance(total, n);
      if (b == Broker::acme) {
        char buf[64];
        std::snprintf(buf, sizeof buf, " (JWS requests %.3g)", static_cast<double>(jws) / n);
        commands += buf;
      }
      std::printf("| %s | %s | %s | %.1f |\n", row.label, m.label, commands.c_str(), median(wall));
      std::fflush(stdout);
    }
  }

  std::printf("\nStart-up storms, cfssl, max_in_flight 4 (fresh P-256 key + CSR each, as the loops do)\n");
  std::printf("| certificates | model | wall (s) | TPM commands | issued | failed |\n|---|---|---|---|---|---|\n");
  for (int size : storms) {
    for (const auto& m : {models[1], models[2], models[3]}) {
      if (size > 100 && m.model.name != "discrete") continue;  // the big one with the model only
      rig.proxy().set_model(m.model);
      auto s = rig.storm(Broker::cfssl, size, 4);
      std::printf("| %d | %s | %.2f | %llu (%s) | %d | %d |\n", size, m.label, ms(s.wall) / 1000.0,
                  static_cast<unsigned long long>(s.tpm.executed_total), per_issuance(s.tpm, size).c_str(), s.issued,
                  s.failed);
      if (s.failed) std::printf("  first error: %s\n", s.first_error.c_str());
      std::fflush(stdout);
    }
  }
  std::printf("\nload average %s; identity: %llu TPM commands, %llu busy retries, %llu primaries, %llu reloads\n",
              load_average().c_str(), static_cast<unsigned long long>(rig.identity().command_count()),
              static_cast<unsigned long long>(rig.identity().busy_retry_count()),
              static_cast<unsigned long long>(rig.identity().primary_count()),
              static_cast<unsigned long long>(rig.identity().reload_count()));
  return 0;
}
