// Chaos, ACME: the real daemon, its identity in swtpm (enrolled with `certagent enroll`), real
// pebble with its fault injection on and real http-01 validation against the daemon's own
// responder. Pebble is killed for longer than the certificate lives and restarted: it comes back
// with no accounts and a new issuing root, which the test appends to the trust bundle file, as
// an operator would. The daemon must re-create its account and re-read the bundle on its own.

#include "tests/chaos/broker/broker_outage.h"
#include "tests/support/pebble.h"
#include "tests/support/test_identity.h"

#include <gtest/gtest.h>

namespace certagent::test {
namespace {

TEST(ChaosAcme, PebbleDownPastExpiryThenBackWithNewStateAndRoot) {
  DaemonFixture d;
  ChallTestSrv dns(d.dir().path());
  fs::create_directories(d.dir() / "pebble");
  Pebble pebble(d.dir() / "pebble", PebbleOptions{.dns_server = dns.dns_address()});
  Swtpm tpm(d.dir() / "tpm");
  const auto bundle = d.dir() / "issuer-roots.pem";
  write_file(bundle, pebble.root_pem());

  DaemonFixture::Header header;
  header.identity = "{ backend: tpm, tcti: \"" + tpm.tcti() + "\" }";
  header.extra_brokers = "  pebble:\n"
                         "    type: acme\n"
                         "    directory: " + pebble.directory_url() + "\n"
                         "    ca_bundle: " + pebble.tls_ca_file().string() + "\n"
                         "    challenge: { type: http-01, listen: \"127.0.0.1:" + std::to_string(pebble.http_port()) +
                         "\" }\n"
                         "    timeout: 5s\n";
  d.write_config("defaults: { lifetime: 20s, max_lifetime: 1h, renew_at: 0.5, jitter: 0.1, trust_bundle: " +
                     bundle.string() + " }\n"
                     "certificates:\n"
                     "  - name: web\n"
                     "    broker: pebble\n"
                     "    common_name: web.certagent.test\n"
                     "    dns_names: [web.certagent.test]\n"
                     "    files: { dir: " + d.live_dir("web").string() + ", keep: 3 }\n",
                 header);
  auto enrolled = d.cli({"enroll"});
  ASSERT_EQ(enrolled.exit_code, 0) << enrolled.out << enrolled.err;

  run_broker_outage(d, BrokerOutage{
                           .broker = "pebble",
                           .kill = [&] { pebble.stop(); },
                           .revive =
                               [&] {
                                 pebble.start();
                                 // As an operator would: the new file renamed into place.
                                 const auto next = d.dir() / "issuer-roots.pem.new";
                                 write_file(next, read_file(bundle) + pebble.root_pem());
                                 fs::rename(next, bundle);
                               },
                       });
  // Pebble forgot the account: the daemon made a new one by itself (same TPM key).
  EXPECT_NE(d.log().find("event=acme_account_recreate"), std::string::npos) << d.log();
}

}  // namespace
}  // namespace certagent::test
