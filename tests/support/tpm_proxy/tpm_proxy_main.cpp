// tpm_proxy: the TPM latency model as a program, for benchmarks and manual runs.
//
//   swtpm socket --tpm2 --server type=unixio,path=$D/tpm.sock --ctrl type=unixio,path=$D/tpm.sock.ctrl ...
//   tpm_proxy --upstream $D/tpm.sock --listen $D/slow.sock --model discrete [--inject random:0.02]
//   certagent ... with identity.tcti: "swtpm:path=$D/slow.sock"
//
// Prints the command counts on SIGUSR1 and at exit (SIGINT/SIGTERM).

#include "tests/support/tpm_proxy/tpm_proxy.h"

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

using namespace certagent::test::tpm_proxy;

namespace {

void usage() {
  std::fprintf(stderr,
               "usage: tpm_proxy --upstream SWTPM_SOCKET --listen SOCKET [--model SPEC] [--inject SPEC]\n"
               "                 [--seed N] [--stats-file FILE]\n"
               "  --model none | discrete | uniform:30ms, then optional ,Sign=70ms ,scale=2 ,kernel-rm\n"
               "  --inject random:P[:rc,rc...]   each command with probability P (default rcs: retry,yielded,testing)\n"
               "           every:N[:rc]          every N-th command\n"
               "           busy:DURATION[:rc]    everything for DURATION after start (default rc: testing)\n"
               "  The control socket is SOCKET.ctrl (the swtpm TCTI derives it).\n");
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (std::size_t i = 0; i <= s.size(); ++i)
    if (i == s.size() || s[i] == sep) {
      out.push_back(s.substr(start, i - start));
      start = i + 1;
    }
  return out;
}

bool parse_rcs(const std::string& list, std::vector<std::uint32_t>& out) {
  for (const auto& name : split(list, ',')) {
    auto rc = parse_rc(name);
    if (!rc) {
      std::fprintf(stderr, "tpm_proxy: unknown response code \"%s\" (retry, yielded, testing or 0x...)\n", name.c_str());
      return false;
    }
    out.push_back(*rc);
  }
  return true;
}

bool apply_injection(TpmProxy& proxy, const std::string& spec) {
  const auto parts = split(spec, ':');
  std::vector<std::uint32_t> rcs;
  if (parts[0] == "random" && (parts.size() == 2 || parts.size() == 3)) {
    const double p = std::atof(parts[1].c_str());
    if (!parse_rcs(parts.size() == 3 ? parts[2] : "retry,yielded,testing", rcs)) return false;
    proxy.inject_random(p, rcs);
    return true;
  }
  if (parts[0] == "every" && (parts.size() == 2 || parts.size() == 3)) {
    if (!parse_rcs(parts.size() == 3 ? parts[2] : "retry", rcs)) return false;
    proxy.inject_every(rcs[0], std::atoi(parts[1].c_str()));
    return true;
  }
  if (parts[0] == "busy" && (parts.size() == 2 || parts.size() == 3)) {
    auto d = parse_duration(parts[1]);
    if (!d || !parse_rcs(parts.size() == 3 ? parts[2] : "testing", rcs)) return false;
    proxy.busy_for(rcs[0], std::chrono::duration_cast<std::chrono::milliseconds>(*d));
    return true;
  }
  std::fprintf(stderr, "tpm_proxy: bad --inject \"%s\"\n", spec.c_str());
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  std::string upstream, listen, model_spec = "discrete", stats_file;
  std::vector<std::string> injections;
  std::uint64_t seed = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        usage();
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--upstream") upstream = value();
    else if (a == "--listen") listen = value();
    else if (a == "--model") model_spec = value();
    else if (a == "--inject") injections.push_back(value());
    else if (a == "--seed") seed = std::strtoull(value().c_str(), nullptr, 10);
    else if (a == "--stats-file") stats_file = value();
    else {
      usage();
      return 2;
    }
  }
  if (upstream.empty() || listen.empty()) {
    usage();
    return 2;
  }
  std::string error;
  auto model = LatencyModel::parse(model_spec, &error);
  if (!model) {
    std::fprintf(stderr, "tpm_proxy: %s\n", error.c_str());
    return 2;
  }

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // before any thread starts: all inherit it

  try {
    TpmProxy proxy({upstream, listen, *model, seed});
    for (const auto& spec : injections)
      if (!apply_injection(proxy, spec)) return 2;
    std::printf("event=tpm_proxy_started listen=%s upstream=%s model=\"%s\"\n", listen.c_str(), upstream.c_str(),
                model->describe().c_str());
    std::fflush(stdout);
    for (;;) {
      int sig = 0;
      sigwait(&signals, &sig);
      const std::string summary = proxy.stats().summary();
      std::printf("event=tpm_proxy_stats %s\n", summary.c_str());
      std::fflush(stdout);
      if (sig != SIGUSR1) {
        if (!stats_file.empty()) std::ofstream(stats_file) << summary << "\n";
        break;
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tpm_proxy: %s\n", e.what());
    return 1;
  }
  return 0;
}
