#!/usr/bin/env bash
# mmdebstrap customize hook of the image test: `bake.sh ROOT BAKE_DIR`. ROOT is the root tree
# mmdebstrap built (the .deb already installed, nothing started); BAKE_DIR holds what the host
# made for this run (trust bundles, the broker's CA, TLS and config).
#
# Part 1 is what a platform team bakes into its image (README "Baking certagent into machine
# images"): the configuration and trust bundles, then the bake-time checks. Part 2 adds what
# exists only in the test image: the broker running inside the guest, the cloud-init stand-in
# that delivers the broker secret at first boot, and the test runner.
set -euo pipefail
root=${1:?root tree}
bake=${2:?bake dir}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 "$@"; }

# ---- 1. what a platform team bakes ---------------------------------------------------------------
install -m 0644 "$bake/agent.yaml" "$root/etc/certagent/agent.yaml"
install -m 0644 "$bake/issuer-roots.pem" "$root/etc/certagent/issuer-roots.pem"
install -m 0644 "$bake/broker-ca.pem" "$root/etc/certagent/broker-ca.pem"

# Bake-time checks: a broken configuration fails the image build, not every instance.
echo "bake: certagent check-config"
in_root certagent check-config --config /etc/certagent/agent.yaml >/dev/null
echo "bake: systemd-analyze verify"
if ! verify=$(in_root systemd-analyze verify --man=no certagent.service certagent-enroll.service 2>&1) ||
    [ -n "$verify" ]; then
  echo "$verify" >&2
  echo "bake: systemd-analyze verify failed" >&2
  exit 1
fi
[ "$(systemctl --root="$root" is-enabled certagent.service)" = enabled ] ||
  { echo "bake: certagent.service is not enabled" >&2; exit 1; }
# Nothing ran at bake time: no identity, no issued material, no secret.
[ ! -e "$root/var/lib/certagent/identity" ] || { echo "bake: an identity exists in the image" >&2; exit 1; }
[ -z "$(ls -A "$root/etc/certagent/live")" ] || { echo "bake: issued material in the image" >&2; exit 1; }
[ -z "$(ls -A "$root/etc/certagent/secrets")" ] || { echo "bake: a secret in the image" >&2; exit 1; }
echo "bake: certagent baked and checked"

# ---- 2. only in the test image ----------------------------------------------------------------
echo certagent-image >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tcertagent-image\n' >"$root/etc/hosts"

# The broker, inside the guest: multirootca as its own user, its key readable by it only.
install -m 0644 "$here/test-image/multirootca.sysusers" "$root/usr/lib/sysusers.d/multirootca-image-test.conf"
in_root systemd-sysusers multirootca-image-test.conf
install -d -m 0750 -o root -g "$(in_root getent group multirootca | cut -d: -f3)" "$root/etc/multirootca"
for f in ca.pem ca-key.pem broker-tls.pem broker-tls.key config.json roots.conf; do
  install -m 0640 -o root -g "$(in_root getent group multirootca | cut -d: -f3)" "$bake/multirootca/$f" \
    "$root/etc/multirootca/$f"
done

# A socket client that is in certagent's socket group but not allowed any key.
in_root useradd --system --user-group --groups certagent --no-create-home --shell /usr/sbin/nologin app

# The results disk (the host's seed in, the runner's results out) and the test's units.
install -d "$root/results"
echo '/dev/vdb /results ext4 rw,nofail,x-systemd.device-timeout=60s 0 0' >>"$root/etc/fstab"
for f in runner.sh clock.sh clock-tool.pl; do
  install -D -m 0755 "$here/test-image/$f" "$root/usr/local/libexec/certagent-image-test/$f"
done
for u in multirootca.service certagent-image-seed.service certagent-image-test.service; do
  install -m 0644 "$here/test-image/$u" "$root/etc/systemd/system/$u"
done
systemctl --root="$root" enable multirootca.service certagent-image-seed.service certagent-image-test.service
echo "bake: test image additions done"
