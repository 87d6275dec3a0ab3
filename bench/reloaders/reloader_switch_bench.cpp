// Switch latency, per terminator and method: from "commit" (the new generation is on disk and
// the reloader is called) to the first fresh handshake that shows the new serial, to the start
// of the final all-new run (every later handshake is new: nginx's old workers are gone), and to
// the reloader returning "verified" (that run has lasted `settle`). p50/p99 over N rotations on
// a private nginx (reload: `nginx -t` pre-check + `nginx -s reload`) and haproxy (runtime API).
// Figures, not a pass/fail test.
//
//   reloader_switch_bench [--rotations N] [--settle MS]

#include "agent/builtin_plugins.h"
#include "core/logging.h"
#include "reloaders/haproxy_config.h"
#include "reloaders/nginx_config.h"
#include "reloaders/reloader_base.h"
#include "tests/integration/reloaders/reloader_fixtures.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace {

using namespace certagent;
using namespace certagent::test;
using namespace certagent::test::reloaders;
namespace r = certagent::reloaders;
using Clock = std::chrono::steady_clock;

double ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  auto idx = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(idx, v.size() - 1)];
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

struct Series {
  std::vector<double> applied, first, stable, verified;
  int failures{0};
};

void print(const char* name, const Series& s) {
  std::printf("%-34s n=%zu failures=%d\n", name, s.verified.size(), s.failures);
  std::printf("  commit -> reloader action done       p50 %7.1f ms  p99 %7.1f ms\n", percentile(s.applied, .5),
              percentile(s.applied, .99));
  std::printf("  commit -> first new-serial handshake  p50 %7.1f ms  p99 %7.1f ms\n", percentile(s.first, .5),
              percentile(s.first, .99));
  std::printf("  commit -> new serial only (stable)    p50 %7.1f ms  p99 %7.1f ms\n", percentile(s.stable, .5),
              percentile(s.stable, .99));
  std::printf("  commit -> reloader says verified      p50 %7.1f ms  p99 %7.1f ms\n", percentile(s.verified, .5),
              percentile(s.verified, .99));
}

Series rotate(boost::asio::io_context& ioc, r::Reloader& reloader, Generations& gens, const TestCa& ca,
              std::uint64_t& serial, int rotations) {
  Series s;
  auto* base = dynamic_cast<r::ReloaderBase*>(&reloader);
  for (int i = 0; i < rotations; ++i) {
    auto m = ca.issue(serial++);
    gens.commit(m);
    const auto event = event_for("bench", m, gens.dir());
    const auto t0 = Clock::now();
    auto out = run_on(ioc, reloader.reload(event));
    const auto t1 = Clock::now();
    const auto& p = base->last_probe();
    if (out.result != r::ReloadResult::success || !p || !p->verified) {
      ++s.failures;
      std::printf("  rotation %d: %s: %s\n", i, std::string(r::to_string(out.result)).c_str(), out.detail.c_str());
      continue;
    }
    // The probe ran at the very end of reload(): it started `elapsed` before t1.
    const double probe_start = ms(t1 - t0) - static_cast<double>(p->elapsed.count());
    s.applied.push_back(probe_start);
    s.first.push_back(probe_start + static_cast<double>(p->first_new.count()));
    s.stable.push_back(probe_start + static_cast<double>(p->stable_since.count()));
    s.verified.push_back(ms(t1 - t0));
  }
  return s;
}

config::VerifyConfig verify_for(int port, std::chrono::milliseconds settle) {
  config::VerifyConfig v;
  v.connect = "127.0.0.1:" + std::to_string(port);
  v.server_name = "localhost";
  v.settle = settle;
  v.deadline = std::chrono::seconds(10);
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  int rotations = 20;
  std::chrono::milliseconds settle{150};
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--rotations") && i + 1 < argc) {
      rotations = std::atoi(argv[++i]);
    } else if (!std::strcmp(argv[i], "--settle") && i + 1 < argc) {
      settle = std::chrono::milliseconds(std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: reloader_switch_bench [--rotations N] [--settle MS]\n");
      return 2;
    }
  }
  log::init({"warn", "text"});
  std::printf("reloader switch latency: nproc=%ld cpu=\"%s\" rotations=%d settle=%lldms\n",
              sysconf(_SC_NPROCESSORS_ONLN), cpu_model().c_str(), rotations,
              static_cast<long long>(settle.count()));
  std::ifstream loadavg("/proc/loadavg");
  std::string load;
  std::getline(loadavg, load);
  std::printf("load average at start: %s\n", load.c_str());
  try {
    TempDir tmp("certagent-reload-bench");
    TestCa ca;
    boost::asio::io_context ioc;
    std::uint64_t serial = 0x7001;
    {
      Generations gens(tmp / "h-live");
      gens.commit(ca.issue(serial++));
      HaproxyServer server(tmp / "haproxy", free_tcp_port(), tmp / "h-live" / "bundle.pem");
      config::ReloaderConfig c;
      c.type = "haproxy";
      c.timeout = std::chrono::seconds(15);
      c.verify = verify_for(server.port(), settle);
      r::HaproxyReloaderConfig h;
      h.admin_socket = server.admin_socket();
      h.cert = (tmp / "h-live" / "bundle.pem").string();
      c.settings = h;
      auto reloader = certagent::agent::make_reloader(c, r::ReloaderContext{ioc.get_executor()});
      if (!reloader) throw std::runtime_error(reloader.error().message);
      print("haproxy 2.6, runtime API", rotate(ioc, **reloader, gens, ca, serial, rotations));
    }
    {
      Generations gens(tmp / "n-live");
      gens.commit(ca.issue(serial++));
      NginxServer server(tmp / "nginx", free_tcp_port(), tmp / "n-live" / "fullchain.pem",
                         tmp / "n-live" / "key.pem");
      config::ReloaderConfig c;
      c.type = "nginx";
      c.timeout = std::chrono::seconds(15);
      c.verify = verify_for(server.port(), settle);
      r::NginxReloaderConfig n;
      n.command = server.reload_command();
      n.error_log = server.error_log();
      c.settings = n;
      auto reloader = certagent::agent::make_reloader(c, r::ReloaderContext{ioc.get_executor()});
      if (!reloader) throw std::runtime_error(reloader.error().message);
      print("nginx 1.22, nginx -t + nginx -s reload", rotate(ioc, **reloader, gens, ca, serial, rotations));
      n.test_command = {"true"};
      c.settings = n;
      reloader = certagent::agent::make_reloader(c, r::ReloaderContext{ioc.get_executor()});
      if (!reloader) throw std::runtime_error(reloader.error().message);
      print("nginx 1.22, nginx -s reload only", rotate(ioc, **reloader, gens, ca, serial, rotations));
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "reloader_switch_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
