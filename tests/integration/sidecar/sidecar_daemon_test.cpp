// The sidecar API in the real daemon: the binary links no gRPC and loads the module
// (certagent-sidecar.so) only when workload_api.path is set. Without it: no gRPC thread and no
// gRPC library in the process (thread names from /proc/<pid>/task, mappings from
// /proc/<pid>/maps). With it: the module serves an independent client (python3-grpcio) on the
// daemon's own thread (its own HTTP/2, protobuf, no gRPC C++ library, no extra thread). A
// missing module: a clear start-up error naming the file.

#include "tests/support/daemon_fixture.h"

#include <gtest/gtest.h>

#include <sys/wait.h>

#include <fstream>
#include <map>
#include <set>

namespace certagent::test {
namespace {

constexpr auto kWait = 30s;

std::string certificates() {
  return "certificates:\n"
         "  - name: web\n"
         "    broker: dev\n"
         "    common_name: web.internal\n"
         "    uris: [\"spiffe://example.org/web\"]\n"
         "    socket: { allow_uids: [0] }\n";
}

std::string workload_api(const fs::path& socket) {
  return "workload_api: { path: " + socket.string() + ", mode: \"0666\" }\n";
}

// Thread names of a process ("comm" of each task), counted.
std::map<std::string, int> thread_names(pid_t pid) {
  std::map<std::string, int> out;
  std::error_code ec;
  for (const auto& t : fs::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec)) {
    std::ifstream in(t.path() / "comm");
    std::string name;
    std::getline(in, name);
    ++out[name];
  }
  return out;
}

// Files mapped into a process whose name contains one of `needles`.
std::set<std::string> mapped(pid_t pid, const std::vector<std::string>& needles) {
  std::set<std::string> out;
  std::ifstream in("/proc/" + std::to_string(pid) + "/maps");
  std::string line;
  while (std::getline(in, line)) {
    const auto slash = line.find('/');
    if (slash == std::string::npos) continue;
    const std::string file = line.substr(slash);
    for (const auto& n : needles)
      if (file.find(n) != std::string::npos) out.insert(file);
  }
  return out;
}

const std::vector<std::string> kGrpcLibraries = {"libgrpc", "libprotobuf", "libabsl", "libupb",
                                                 "certagent-sidecar"};

bool ready(const DaemonFixture& d) {
  return wait_until([&] {
    int status = 0;
    d.socket_get("/readyz", &status);
    return status == 200;
  }, kWait);
}

std::string describe(const std::map<std::string, int>& names) {
  std::string s;
  for (const auto& [n, k] : names) s += n + " x" + std::to_string(k) + " ";
  return s;
}

TEST(SidecarDaemon, WithoutWorkloadApiNoGrpcThreadAndNoGrpcLibrary) {
  DaemonFixture d;
  d.write_config(certificates());
  d.start();
  ASSERT_TRUE(ready(d)) << d.log();
  // Every thread is one of the daemon's own (they all carry its name); gRPC names its threads
  // (event_engine, timer_manager, grpc_global_timer, default-executor, resolver-executor ...).
  const auto names = thread_names(d.pid());
  ASSERT_FALSE(names.empty());
  EXPECT_EQ(names.size(), 1u) << describe(names);
  EXPECT_EQ(names.begin()->first, "certagent") << describe(names);
  // Nothing of gRPC is even mapped: the module was not loaded and the binary does not need it.
  const auto libs = mapped(d.pid(), kGrpcLibraries);
  EXPECT_TRUE(libs.empty()) << *libs.begin();
  EXPECT_EQ(d.log().find("event=sidecar_listening"), std::string::npos) << d.log();
  const int status = d.stop();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

TEST(SidecarDaemon, WithWorkloadApiTheModuleServesAnIndependentClient) {
  DaemonFixture d;
  const fs::path socket = d.dir() / "workload.sock";
  d.write_config(workload_api(socket) + certificates());
  d.start();
  ASSERT_TRUE(ready(d)) << d.log();
  ASSERT_TRUE(wait_until([&] { return fs::exists(socket); }, kWait)) << d.log();
  // The module is loaded (with protobuf; HTTP/2 is its own) and serves on the daemon's own
  // io_context thread: it starts no thread, and no gRPC C++ library, nor nghttp2, is mapped.
  const auto libs = mapped(d.pid(), {"certagent-sidecar.so"});
  EXPECT_EQ(libs.size(), 1u) << d.log();
  EXPECT_EQ(mapped(d.pid(), {"libprotobuf"}).size(), 1u) << d.log();
  EXPECT_TRUE(mapped(d.pid(), {"libnghttp2"}).empty()) << d.log();
  const auto grpc = mapped(d.pid(), {"libgrpc", "libabsl", "libupb"});
  EXPECT_TRUE(grpc.empty()) << *grpc.begin();

  // python3-grpcio, as root (root may have every certificate): FetchSecrets gives web's
  // certificate and key.
  auto r = run({"/usr/bin/python3", CERTAGENT_SIDECAR_CLIENT, socket.string(), "fetch", "web"},
               kWait, {{"PYTHONPATH", CERTAGENT_SIDECAR_PY}});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err << d.log();
  EXPECT_NE(r.out.find("\"kind\": \"tls\""), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"end\": \"OK\""), std::string::npos) << r.out;
  EXPECT_NE(d.log().find("event=sidecar_listening"), std::string::npos) << d.log();
  // Still only the daemon's own threads, after serving a call.
  const auto names = thread_names(d.pid());
  EXPECT_EQ(names.size(), 1u) << describe(names);
  EXPECT_EQ(names.begin()->first, "certagent") << describe(names);

  const int status = d.stop();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status << d.log();
  EXPECT_FALSE(fs::exists(socket));  // removed on exit
}

TEST(SidecarDaemon, AMissingModuleIsAClearStartupError) {
  // The binary alone, in a directory with no lib/certagent/ beside it: the module cannot be
  // found, as on a host where it was deleted.
  TempDir tmp("sidecar-no-module");
  const fs::path bin = fs::canonical(tmp.path());
  fs::create_directories(bin / "bin");
  const fs::path copy = bin / "bin" / "certagent";
  std::error_code ec;
  fs::create_hard_link(certagent_binary(), copy, ec);
  if (ec) fs::copy_file(certagent_binary(), copy);

  DaemonFixture d;
  d.write_config(workload_api(d.dir() / "workload.sock") + certificates());
  auto r = run({copy.string(), "run", "--config", d.config_path().string()}, kWait);
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  const std::string out = r.out + r.err;
  EXPECT_NE(out.find("event=start_failed"), std::string::npos) << out;
  EXPECT_NE(out.find("workload_api: the sidecar API module " +
                     (bin / "lib" / "certagent" / "certagent-sidecar.so").string() +
                     " is not installed"),
            std::string::npos)
      << out;
}

}  // namespace
}  // namespace certagent::test
