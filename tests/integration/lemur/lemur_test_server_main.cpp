// The Lemur test server as a process, for end-to-end tests of the daemon:
//   lemur_test_server DIR
// writes DIR/tls-ca.pem (broker ca_bundle), DIR/issuer-root.pem (trust_bundle), DIR/lemur.jwt
// (an API key of a user allowed to use authority "InternalCA", owner role
// pki@example.com), appends one JSON line per issued certificate to DIR/issued.jsonl
// ({"id": N, "replaces": [...], "serialHex": "..."}), and writes DIR/url last (atomically), so
// a test waits for that file. Runs until SIGTERM or SIGINT.

#include "tests/integration/lemur/lemur_test_server.h"

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>

namespace {

void write(const std::filesystem::path& path, const std::string& text) {
  const auto tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
  }
  std::filesystem::rename(tmp, path);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: lemur_test_server DIR\n";
    return 2;
  }
  const std::filesystem::path dir = argv[1];
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);  // before the server thread starts: it inherits the mask

  certagent::test::LemurTestServer server;
  server.add_authority("InternalCA", "pki@example.com");
  const auto user = server.add_user("host-agent", {"pki@example.com"});
  const std::string token = server.create_api_key(user);
  const auto log_path = dir / "issued.jsonl";
  server.on_issued([log_path](const certagent::test::LemurTestServer::Issued& c) {
    boost::json::array replaces;
    for (auto id : c.replaces) replaces.push_back(id);
    std::ofstream out(log_path, std::ios::app);
    out << boost::json::serialize(boost::json::object{{"id", c.id}, {"replaces", replaces}, {"serialHex", c.serial_hex}})
        << "\n";
  });
  write(dir / "tls-ca.pem", server.tls_ca_pem());
  write(dir / "issuer-root.pem", server.issuer_root_pem());
  write(dir / "lemur.jwt", token + "\n");
  std::filesystem::permissions(dir / "lemur.jwt", std::filesystem::perms(0600));
  write(dir / "url", server.url());

  int sig = 0;
  sigwait(&set, &sig);
  return 0;
}
