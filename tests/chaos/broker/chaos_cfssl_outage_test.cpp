// Chaos, cfssl API: the real daemon, its identity in swtpm with the cfssl auth key sealed into
// it by `certagent enroll` (the plaintext file is gone), real multirootca. multirootca is killed
// for longer than the certificate lives and restarted with the same CA.

#include "tests/chaos/broker/broker_outage.h"
#include "tests/support/test_identity.h"
#include "tests/support/multirootca.h"

#include <gtest/gtest.h>

namespace certagent::test {
namespace {

TEST(ChaosCfssl, MultirootcaDownPastExpiryThenBack) {
  DaemonFixture d;
  Multirootca ca(d.dir() / "cfssl");
  Swtpm tpm(d.dir() / "tpm");
  const auto auth_key = d.dir() / "cfssl.key";
  write_file(auth_key, read_file(ca.auth_key_file()), fs::perms(0600));

  DaemonFixture::Header header;
  header.identity = "{ backend: tpm, tcti: \"" + tpm.tcti() + "\" }";
  header.extra_brokers = "  pki:\n"
                         "    type: cfssl\n"
                         "    url: " + ca.url() + "\n"
                         "    ca_bundle: " + ca.tls_ca_file().string() + "\n"
                         "    auth_key_file: " + auth_key.string() + "\n"
                         "    profile: brief\n"
                         "    label: primary\n"
                         "    timeout: 5s\n";
  // The "brief" profile leaves 20-80 s at issuance (cfssl rounds not_before to the minute and
  // backdates it); the renew point of a fresh leaf counts from its arrival, so it is held.
  d.write_config("defaults: { lifetime: 80s, max_lifetime: 1h, renew_at: 0.5, jitter: 0.1, trust_bundle: " +
                     ca.ca_file().string() + " }\n"
                     "certificates:\n"
                     "  - name: web\n"
                     "    broker: pki\n"
                     "    common_name: web.internal\n"
                     "    dns_names: [web.internal]\n"
                     "    ip_addresses: [127.0.0.1]\n"
                     "    files: { dir: " + d.live_dir("web").string() + ", keep: 3 }\n",
                 header);
  auto enrolled = d.cli({"enroll"});
  ASSERT_EQ(enrolled.exit_code, 0) << enrolled.out << enrolled.err;
  EXPECT_FALSE(fs::exists(auth_key)) << "enroll left the plaintext auth key behind";

  run_broker_outage(d, BrokerOutage{
                           .broker = "pki",
                           .kill = [&] { ca.stop(); },
                           .revive = [&] { ca.start(); },
                       });
}

}  // namespace
}  // namespace certagent::test
