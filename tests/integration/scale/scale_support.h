#pragma once
// Helpers shared by the scale tests: a daemon with a generated configuration, its metrics read
// over HTTP, and /proc figures for memory and CPU.

#include "tests/support/test_support.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>

namespace certagent::test {

struct ScaleDaemon {
  TempDir dir{"certagent-scale"};
  int metrics_port{free_tcp_port()};
  std::optional<Process> process;

  fs::path log_path() const { return dir / "agent.log"; }

  // `brokers` and `defaults` are YAML bodies (indented by the caller); `certificates` entries
  // are generated: c0..c(n-1), the first `with_files` with a file sink.
  void write_config(const std::string& brokers, const std::string& defaults, int n, int with_files) {
    std::ostringstream c;
    c << "state_dir: " << (dir / "state").string() << "\n"
      << "log: { level: info, format: text }\n"
      << "identity: { backend: file }\n"
      << "socket: { path: " << (dir / "agent.sock").string() << ", mode: \"0660\" }\n"
      << "metrics: { listen: \"127.0.0.1:" << metrics_port << "\" }\n"
      << "brokers:\n" << brokers << "defaults: " << defaults << "\n"
      << "certificates:\n";
    for (int i = 0; i < n; ++i) {
      const std::string name = "c" + std::to_string(i);
      c << "  - { name: " << name << ", broker: " << "ca" << ", common_name: " << name << ".internal";
      if (i < with_files) c << ", files: { dir: " << (dir / "live" / name).string() << ", keep: 2 }";
      c << " }\n";
    }
    write_file(dir / "agent.yaml", c.str());
  }

  void start() {
    Process::Options options;
    options.stdout_file = log_path();
    options.stderr_file = log_path();
    process.emplace(std::vector<std::string>{certagent_binary().string(), "run", "--config",
                                             (dir / "agent.yaml").string()},
                    options);
  }

  std::string metrics() const {
    auto r = run({require_program("curl").string(), "-s", "-m", "10",
                  "http://127.0.0.1:" + std::to_string(metrics_port) + "/metrics"},
                 std::chrono::seconds(15));
    return r.exit_code == 0 ? r.out : std::string();
  }
};

// Values of one metric family by the `name` label, from an exposition text; `extra` must be in
// the label set too (e.g. result="success").
inline std::map<std::string, double> by_name(const std::string& text, const std::string& family,
                                             const std::string& extra = "") {
  std::map<std::string, double> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(family + "{", 0) != 0) continue;
    if (!extra.empty() && line.find(extra) == std::string::npos) continue;
    const auto at = line.find("name=\"");
    if (at == std::string::npos) continue;
    const auto end = line.find('"', at + 6);
    const auto space = line.rfind(' ');
    out[line.substr(at + 6, end - at - 6)] = std::atof(line.c_str() + space + 1);
  }
  return out;
}

// One series' value, e.g. series = "certagent_broker_requests_in_flight_max{broker=\"ca\"}";
// -1 when absent.
inline double series_value(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(series + " ", 0) == 0) return std::atof(line.c_str() + series.size() + 1);
  return -1;
}

inline int count_at_least(const std::map<std::string, double>& m, double v) {
  int n = 0;
  for (const auto& [k, x] : m) n += x >= v ? 1 : 0;
  return n;
}

// Waits until `want` certificates show at least `times` successful renewals; the counts by name
// are left in `issued` (for the failure message).
inline bool wait_for_renewals(const ScaleDaemon& d, int want, double times, std::chrono::milliseconds deadline,
                              std::map<std::string, double>& issued,
                              std::chrono::milliseconds poll = std::chrono::milliseconds(200)) {
  return wait_until(
      [&] {
        issued = by_name(d.metrics(), "certagent_renewals_total", "result=\"success\"");
        return count_at_least(issued, times) == want;
      },
      deadline, poll);
}

// kB fields of /proc/PID/status.
inline long status_kb(pid_t pid, const std::string& field) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(field + ":", 0) == 0) return std::atol(line.c_str() + field.size() + 1);
  return -1;
}

// utime + stime in seconds from /proc/PID/stat.
inline double cpu_seconds(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::istringstream rest(stat.substr(stat.rfind(')') + 2));
  std::string field;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14) utime = std::stoull(field);
    if (i == 15) stime = std::stoull(field);
  }
  return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// Occurrences of `needle` in a file (e.g. an event in the daemon's log).
inline int count_in_file(const fs::path& path, const std::string& needle) {
  const std::string text = read_file(path);
  int n = 0;
  for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

}  // namespace certagent::test
