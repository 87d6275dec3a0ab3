#!/usr/bin/env bash
# The .deb booted for real (issue 16): bake the package into a Debian 12 image with mmdebstrap,
# boot instances of it under qemu with a TPM 2.0 from swtpm, and check inside each guest what a
# platform team would check after first boot and after a power cycle.
#
#   1. cpack -G DEB from the build tree.
#   2. mmdebstrap bookworm: systemd, udev, the kernel, the .deb (apt pulls its Depends), and a
#      customize hook (bake.sh) that bakes the configuration in, runs the bake-time checks and
#      adds the test-only pieces: the broker (multirootca) as its own unit inside the guest, a
#      cloud-init stand-in that delivers the broker secret at first boot, and the test runner.
#      Nothing is started at bake time. The apt downloads are kept in <build>/tests/image/apt-cache
#      (reused by the retry and by later runs); a failed mmdebstrap is retried once.
#   3. mkfs.ext4 -d makes the root disk from the tree (no loop mounts); each instance boots a
#      qcow2 overlay of it. Direct kernel boot, serial console to a file, no network device at all.
#   4. Instances: a and b, each with a fresh swtpm state, each booted twice (qemu and swtpm
#      stopped and started again between the boots: a power cycle); n, without a TPM, once.
#      Two at a time (2 cores): a1 a2 in one lane, b1 n1 b2 in the other.
#   5. The runner unit inside the guest writes its checks to a second disk; the host reads it with
#      debugfs and compares across boots and instances. On a2 it ends with the clock checks
#      (test-image/clock.sh, issue 20): the guest steps its own clock (tiny steps, about +1 h
#      into the renewal window, back as much during a backoff) and suspends to RAM (qemu's S3,
#      woken by the RTC); the host's clock is never touched.
#
# KVM is used only when a short probe boot shows it works (a paravirtual nested /dev/kvm can hang
# a stock kernel); otherwise TCG. Every step has a hard timeout. Needs root (mmdebstrap's root
# mode, chroot). Under CI=true a missing tool is a failure; this test never skips.
#
# Environment (set by CTest): CERTAGENT_BUILD_DIR, CERTAGENT_SOURCE_DIR, CERTAGENT_VERSION,
# CERTAGENT_CPACK. Optional: CERTAGENT_IMAGE_MIRROR (default http://deb.debian.org/debian),
# CERTAGENT_IMAGE_SECURITY_MIRROR, CERTAGENT_IMAGE_ACCEL (auto | kvm | tcg),
# CERTAGENT_IMAGE_BOOT_TIMEOUT (seconds per boot, default 480), CERTAGENT_IMAGE_KEEP=1 (keep the
# root tree and disks for a look afterwards), CERTAGENT_IMAGE_REUSE=1 (boot the image a previous
# run made and kept with CERTAGENT_IMAGE_KEEP=1 again, without rebuilding it: for working on the
# runner; CI never sets it).
set -uo pipefail

build_dir=${CERTAGENT_BUILD_DIR:?}
version=${CERTAGENT_VERSION:?}
cpack=${CERTAGENT_CPACK:-cpack}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mirror=${CERTAGENT_IMAGE_MIRROR:-http://deb.debian.org/debian}
security_mirror=${CERTAGENT_IMAGE_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
accel_wanted=${CERTAGENT_IMAGE_ACCEL:-auto}
boot_timeout=${CERTAGENT_IMAGE_BOOT_TIMEOUT:-480}
mmdebstrap_timeout=600

top=$build_dir/tests/image
cache=$top/apt-cache
run=$top/run
started=$SECONDS

failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }
die() { echo "FAIL: $*" >&2; exit 1; }
check() {  # check "description" command...
  local what=$1; shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}
timing() { printf '%-44s %5d s\n' "$1" "$2" | tee -a "$run/timings"; }

# Unmounts whatever a killed mmdebstrap left mounted under a tree, then removes the tree without
# leaving its file system (a leftover bind mount of /dev must never be descended into).
remove_tree() {
  local tree=$1
  [ -e "$tree" ] || return 0
  findmnt -rn -o TARGET | awk -v t="$tree" 'index($0, t "/") == 1' | sort -r |
    while read -r m; do umount -l "$m" || true; done
  rm -rf --one-file-system "$tree"
}

tmp=$(mktemp -d /tmp/certagent-image.XXXXXX)  # short paths for the swtpm sockets
cleanup() {
  local f pid
  for f in "$tmp"/*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f" 2>/dev/null)
    [ -n "$pid" ] && kill "$pid" 2>/dev/null
  done
  if [ "${CERTAGENT_IMAGE_KEEP:-0}" != 1 ]; then
    remove_tree "$run/rootfs"
    rm -f "$run"/base.img "$run"/*/disk.qcow2 "$run"/*/results-*.img
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- preconditions ---------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "this test builds a root file system with mmdebstrap: run it as root (CI does)"
for tool in "$cpack" mmdebstrap qemu-system-x86_64 qemu-img swtpm swtpm_setup mkfs.ext4 debugfs \
    cfssl cfssljson openssl timeout findmnt; do
  command -v "$tool" >/dev/null || die "missing program: $tool (scripts/install-deps.sh image)"
done
[ -f "$build_dir/CPackConfig.cmake" ] || die "no CPackConfig.cmake in $build_dir"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg)"
bake=$run/bake
rootfs=$run/rootfs
if [ "${CERTAGENT_IMAGE_REUSE:-0}" = 1 ] && [ -s "$run/base.img" ] && [ -d "$bake" ] && [ -s "$run/vmlinuz" ]; then
  echo "CERTAGENT_IMAGE_REUSE=1: booting the image kept in $run, with the runner and units from the checkout"
  rm -rf "$run"/a "$run"/b "$run"/n "$run"/timings "$run"/lane-*.log
  for f in usr/local/libexec/certagent-image-test/runner.sh usr/local/libexec/certagent-image-test/clock.sh \
      usr/local/libexec/certagent-image-test/clock-tool.pl etc/systemd/system/multirootca.service \
      etc/systemd/system/certagent-image-seed.service etc/systemd/system/certagent-image-test.service; do
    debugfs -w -R "rm /$f" "$run/base.img" >/dev/null 2>&1
    debugfs -w -R "write $here/test-image/$(basename "$f") /$f" "$run/base.img" >/dev/null 2>&1
    debugfs -w -R "set_inode_field /$f mode 0100$(stat -c %a "$here/test-image/$(basename "$f")")" "$run/base.img" >/dev/null 2>&1
  done
  image_ready=yes
else
  remove_tree "$run"
  image_ready=no
fi
mkdir -p "$run" "$cache"

build_image() {
# ---- 1. the package --------------------------------------------------------------------------
t=$SECONDS
(cd "$run" && "$cpack" --config "$build_dir/CPackConfig.cmake" -G DEB -B "$run/deb") >"$run/cpack.log" 2>&1 ||
  { cat "$run/cpack.log" >&2; die "cpack -G DEB failed"; }
deb=$(ls "$run"/deb/certagent_"$version"-*.deb 2>/dev/null | head -n1)
[ -n "$deb" ] || { cat "$run/cpack.log" >&2; die "cpack made no certagent_$version-*.deb"; }
pass "built $(basename "$deb")"
timing "cpack" $((SECONDS - t))

# ---- 2. what gets baked: trust bundles and the broker ------------------------------------------
# A fresh broker per run: its CA (which issues the leaves), its TLS certificate, and the HMAC key
# that every issuance needs. The key goes into the broker's config in the image and onto each
# instance's first-boot seed disk, never into the image's /etc/certagent.
mkdir -p "$bake/multirootca"
(
  set -e
  cd "$bake/multirootca"
  echo '{"CN":"certagent image test CA","key":{"algo":"ecdsa","size":256}}' >ca-csr.json
  cfssl genkey -initca ca-csr.json 2>/dev/null | cfssljson -bare ca
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=certagent image test broker TLS CA" -keyout broker-ca.key -out broker-ca.pem \
    -addext basicConstraints=critical,CA:true -addext keyUsage=critical,keyCertSign 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
    -keyout broker-tls.key -out broker-tls.csr 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:false\nextendedKeyUsage=serverAuth\n' >tls.ext
  openssl x509 -req -in broker-tls.csr -CA broker-ca.pem -CAkey broker-ca.key -CAcreateserial \
    -days 2 -extfile tls.ext -out broker-tls.pem 2>/dev/null
  key=$(openssl rand -hex 16)
  printf '%s\n' "$key" >"$bake/cfssl.key"
  usages='"usages":["digital signature","key encipherment","server auth","client auth"]'
  profile='{"expiry":"61m","backdate":"1m","auth_key":"agent",'"$usages"'}'
  printf '{"signing":{"default":%s,"profiles":{"server":%s}},"auth_keys":{"agent":{"type":"standard","key":"%s"}}}\n' \
    "$profile" "$profile" "$key" >config.json
  printf '[primary]\nprivate = file:///etc/multirootca/ca-key.pem\ncertificate = /etc/multirootca/ca.pem\nconfig = /etc/multirootca/config.json\n' >roots.conf
  cp ca.pem "$bake/issuer-roots.pem"
  cp broker-ca.pem "$bake/broker-ca.pem"
  cp "$here/agent.yaml" "$bake/agent.yaml"
) || die "making the broker's CA, TLS certificate and key failed"
chmod 0600 "$bake/cfssl.key"

# ---- 3. the root file system -----------------------------------------------------------------
# The cloud kernel: the TPM CRB/TIS drivers and ext4 built in, virtio as modules; a quarter of
# the generic kernel's size, so the image and its initramfs are built much faster.
packages=systemd,systemd-sysv,udev,linux-image-cloud-amd64,e2fsprogs
test_packages=golang-cfssl,curl,jq,openssl,tpm2-tools   # the broker and the runner's tools
mmdebstrap_args=(
  --mode=root --variant=apt --format=directory
  --include="$packages" --include="$test_packages" --include="$deb"
  --hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount
  --dpkgopt=force-unsafe-io
  --skip=essential/unlink
  --setup-hook='mkdir -p "$1"/var/cache/apt/archives/'
  --setup-hook="sync-in $cache /var/cache/apt/archives/"
  --customize-hook="sync-out /var/cache/apt/archives $cache"
  --customize-hook="$here/bake.sh \"\$1\" $bake"
  bookworm "$rootfs"
  "deb $mirror bookworm main" "deb $mirror bookworm-updates main"
  "deb $security_mirror bookworm-security main"
)
t=$SECONDS
built=no
for attempt in 1 2; do
  if timeout -k 30 "$mmdebstrap_timeout" mmdebstrap "${mmdebstrap_args[@]}" >"$run/mmdebstrap-$attempt.log" 2>&1; then
    built=yes
    break
  fi
  echo "mmdebstrap attempt $attempt failed; last lines:" >&2
  grep -v '^I: ' "$run/mmdebstrap-$attempt.log" | tail -n 15 | cut -c1-300 >&2
  # The retry is for the network; a failing bake hook fails the same way again.
  if grep -q 'command failed: .*bake\.sh' "$run/mmdebstrap-$attempt.log"; then
    [ "${CERTAGENT_IMAGE_KEEP:-0}" = 1 ] || remove_tree "$rootfs"
    die "the bake hook failed (bake.sh; log: $run/mmdebstrap-$attempt.log)"
  fi
  [ "$attempt" = 2 ] && [ "${CERTAGENT_IMAGE_KEEP:-0}" = 1 ] || remove_tree "$rootfs"
done
[ "$built" = yes ] || die "mmdebstrap failed twice (logs in $run)"
grep '^bake:' "$run/mmdebstrap-$attempt.log"
pass "root file system built (attempt $attempt; apt cache: $(ls "$cache" | wc -l) packages)"
timing "mmdebstrap (root tree, bake hook)" $((SECONDS - t))

t=$SECONDS
kernel=$(ls "$rootfs"/boot/vmlinuz-* 2>/dev/null | sort -V | tail -n1)
initrd=$(ls "$rootfs"/boot/initrd.img-* 2>/dev/null | sort -V | tail -n1)
[ -n "$kernel" ] && [ -n "$initrd" ] || die "no kernel or initrd in the root tree"
cp "$kernel" "$run/vmlinuz"
cp "$initrd" "$run/initrd.img"
size_mb=$(( $(du -sm "$rootfs" | cut -f1) * 3 / 2 + 512 ))
mkfs.ext4 -q -F -L certagent-root -d "$rootfs" "$run/base.img" "${size_mb}M" >"$run/mkfs.log" 2>&1 ||
  { cat "$run/mkfs.log" >&2; die "mkfs.ext4 -d failed"; }
[ "${CERTAGENT_IMAGE_KEEP:-0}" = 1 ] || remove_tree "$rootfs"
pass "root disk made (${size_mb} MiB, $(du -sm "$run/base.img" | cut -f1) MiB used)"
timing "mkfs.ext4 -d (root disk)" $((SECONDS - t))
}
[ "$image_ready" = yes ] || build_image

# ---- 4. accelerator ---------------------------------------------------------------------------
# A short probe: the kernel without an initrd panics at once (no root), and with panic=-1 and
# -no-reboot qemu exits. On a usable KVM that takes a second or two; on a nested KVM that hangs
# in the decompressor it does not finish at all.
accel=(-accel tcg,thread=single -cpu max)
accel_name=tcg
if [ "$accel_wanted" != tcg ]; then
  if [ -w /dev/kvm ] && timeout -k 5 30 qemu-system-x86_64 -accel kvm -cpu host -m 256 -nodefaults \
      -display none -no-reboot -nic none -serial "file:$run/kvm-probe.log" -kernel "$run/vmlinuz" \
      -append "console=ttyS0 panic=-1" >/dev/null 2>&1 && grep -q 'Kernel panic' "$run/kvm-probe.log"; then
    accel=(-accel kvm -cpu host)
    accel_name=kvm
  elif [ "$accel_wanted" = kvm ]; then
    die "CERTAGENT_IMAGE_ACCEL=kvm, but the KVM probe boot did not finish"
  fi
fi
echo "accelerator: $accel_name$([ -e /dev/kvm ] || echo ' (no /dev/kvm)')"

# ---- 5. instances ------------------------------------------------------------------------------
cmdline="root=/dev/vda rw console=ttyS0 fsck.mode=skip panic=-1"

new_instance() {  # new_instance NAME
  local dir=$run/$1
  mkdir -p "$dir"
  qemu-img create -q -f qcow2 -F raw -b "$run/base.img" "$dir/disk.qcow2" ||
    { echo "qemu-img create failed for $1" >&2; return 1; }
}

# boot NAME N ROLE [clock]: one power-on of an instance, until the guest powers itself off;
# with `clock`, the runner ends with the clock checks.
boot() {
  local name=$1 n=$2 role=$3 extra=${4:-} dir=$run/$1 t0=$SECONDS rc
  local seedroot=$dir/seed-$n results=$dir/results-$n.img
  local sock=$tmp/$name.swtpm.sock pidfile=$tmp/$name.swtpm.pid
  mkdir -p "$seedroot/seed"
  echo "$role" >"$seedroot/seed/role"
  echo "$n" >"$seedroot/seed/boot"
  [ "$extra" = clock ] && echo yes >"$seedroot/seed/clock"
  if [ "$n" = 1 ]; then  # cloud-init writes the secret once per instance: on its first boot
    mkdir -p "$seedroot/seed/secrets"
    install -m 0600 "$bake/cfssl.key" "$seedroot/seed/secrets/cfssl.key"
  fi
  mkfs.ext4 -q -F -L results -d "$seedroot" "$results" 64M || { echo "$name$n: mkfs of the results disk failed"; return 1; }
  local tpm_args=()
  if [ "$role" = tpm ]; then
    if [ ! -d "$dir/tpm" ]; then  # a fresh TPM per instance, kept across its power cycles
      mkdir -p "$dir/tpm"
      timeout 60 swtpm_setup --tpm2 --tpmstate "$dir/tpm" --createek --overwrite >"$dir/swtpm_setup.log" 2>&1 ||
        { cat "$dir/swtpm_setup.log"; echo "$name: swtpm_setup failed"; return 1; }
    fi
    rm -f "$sock"
    swtpm socket --tpm2 --tpmstate dir="$dir/tpm" --ctrl type=unixio,path="$sock" \
      --pid file="$pidfile" --log file="$dir/swtpm-$n.log" --terminate --daemon ||
      { echo "$name$n: swtpm did not start"; return 1; }
    local end=$((SECONDS + 10))
    until [ -S "$sock" ] && [ -s "$pidfile" ]; do
      [ "$SECONDS" -ge "$end" ] && { echo "$name$n: no swtpm socket after 10 s"; return 1; }
      sleep 0.1
    done
    tpm_args=(-chardev "socket,id=chrtpm,path=$sock" -tpmdev emulator,id=tpm0,chardev=chrtpm
      -device tpm-crb,tpmdev=tpm0)
  fi
  timeout -k 15 "$boot_timeout" qemu-system-x86_64 "${accel[@]}" -m 1024 -smp 1 \
    -nodefaults -display none -no-reboot -nic none -serial "file:$dir/serial-$n.log" \
    -kernel "$run/vmlinuz" -initrd "$run/initrd.img" -append "$cmdline" \
    -drive "file=$dir/disk.qcow2,if=virtio,format=qcow2,cache=unsafe" \
    -drive "file=$results,if=virtio,format=raw,cache=unsafe" \
    -object rng-random,id=rng0,filename=/dev/urandom -device virtio-rng-pci,rng=rng0 \
    -global PIIX4_PM.disable_s3=0 \
    "${tpm_args[@]}" >"$dir/qemu-$n.log" 2>&1 &
  local qemu_pid=$!
  echo "$qemu_pid" >"$tmp/$name.qemu.pid"
  wait "$qemu_pid"
  rc=$?
  rm -f "$tmp/$name.qemu.pid"
  echo "$((SECONDS - t0))" >"$dir/boot-$n.seconds"
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && echo "$name$n: qemu killed after $boot_timeout s"
  # Power off: swtpm ends by itself when qemu closes its socket (--terminate); make sure.
  if [ -s "$pidfile" ]; then
    local pid end
    pid=$(cat "$pidfile")
    end=$((SECONDS + 10))
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$end" ]; do sleep 0.1; done
    kill "$pid" 2>/dev/null
    rm -f "$pidfile"
  fi
  mkdir -p "$dir/boot-$n"
  debugfs -R "rdump /out $dir/boot-$n" "$results" >"$dir/debugfs-$n.log" 2>&1
  echo "$name$n: qemu exit $rc after $((SECONDS - t0)) s"
  return 0
}

# An instance's second boot only makes sense once its first one finished.
finished() { [ -f "$run/$1/boot-$2/out/done" ]; }
# a2 runs the clock checks too (~40 s): lane a is the shorter one.
lane_a() { boot a 1 tpm && finished a 1 && boot a 2 tpm clock; }
lane_b() { boot b 1 tpm; boot n 1 notpm; finished b 1 && boot b 2 tpm; }

for i in a b n; do new_instance "$i" || die "could not make the disk of instance $i"; done
t=$SECONDS
lane_a >"$run/lane-a.log" 2>&1 &
pid_a=$!
echo "$pid_a" >"$tmp/lane-a.pid"
lane_b >"$run/lane-b.log" 2>&1 &
pid_b=$!
echo "$pid_b" >"$tmp/lane-b.pid"
wait "$pid_a"
wait "$pid_b"
rm -f "$tmp"/lane-*.pid
cat "$run/lane-a.log" "$run/lane-b.log"
timing "boots (a1 a2 | b1 n1 b2, two at a time)" $((SECONDS - t))

# ---- 6. results ------------------------------------------------------------------------------
fact() { cat "$run/$1/boot-$2/out/facts/$3" 2>/dev/null; }
report_boot() {  # report_boot NAME N
  local name=$1 n=$2 dir=$run/$1 line
  if [ ! -f "$dir/boot-$n/out/checks" ]; then
    fail "$name$n: no results from the guest; serial console tail:"
    tail -n 40 "$dir/serial-$n.log" 2>/dev/null | sed 's/^/    /' >&2
    return
  fi
  while IFS= read -r line; do
    case "$line" in
      ok\ *) pass "$name$n: ${line#ok }" ;;
      FAIL\ *) fail "$name$n: ${line#FAIL }" ;;
    esac
  done <"$dir/boot-$n/out/checks"
  if [ ! -f "$dir/boot-$n/out/done" ]; then
    fail "$name$n: the runner did not finish (timed out inside the guest?); runner log tail:"
    tail -n 20 "$dir/boot-$n/out/runner.log" 2>/dev/null | sed 's/^/    /' >&2
  fi
}
for b in "a 1" "a 2" "b 1" "b 2" "n 1"; do
  # shellcheck disable=SC2086
  report_boot $b
done

same() {  # same NAME FACT: equal and not empty on both boots
  local one two
  one=$(fact "$1" 1 "$2"); two=$(fact "$1" 2 "$2")
  [ -n "$one" ] && [ "$one" = "$two" ]
}
for i in a b; do
  check "$i: same identity fingerprint after the power cycle ($(fact $i 2 fingerprint_blob | cut -c1-16)...)" \
    same "$i" fingerprint_blob
  check "$i: boot 2 fingerprint is the one logged at enrolment" \
    test -n "$(fact $i 1 fingerprint_enrolled)" -a "$(fact $i 1 fingerprint_enrolled)" = "$(fact $i 2 fingerprint_blob)"
  check "$i: identity blobs unchanged across the power cycle (not re-enrolled)" same "$i" identity_sha256
  check "$i: api's files reused after the power cycle: same serial $(fact $i 2 api_serial)" same "$i" api_serial
  check "$i: api's files reused after the power cycle: same generation $(fact $i 2 api_generation)" \
    same "$i" api_generation
done
fa=$(fact a 1 fingerprint_blob); fb=$(fact b 1 fingerprint_blob)
check "a and b: different identities (${fa:0:16}... vs ${fb:0:16}...)" test -n "$fa" -a -n "$fb" -a "$fa" != "$fb"
echo "n1: enrolment error: $(fact n 1 enroll_error)"

# ---- 7. figures ------------------------------------------------------------------------------
for b in "a 1" "a 2" "b 1" "b 2" "n 1"; do
  set -- $b
  printf '%s%s: qemu ran %s s; in the guest (uptime): multi-user.target %s s, runner %s s, certagent READY %s s (%s s after its start), enrolment took %s s\n' \
    "$1" "$2" "$(cat "$run/$1/boot-$2.seconds" 2>/dev/null || echo -)" "$(fact "$1" "$2" multi_user_uptime || echo -)" \
    "$(fact "$1" "$2" uptime_at_runner || echo -)" \
    "$(fact "$1" "$2" ready_uptime || echo -)" "$(fact "$1" "$2" ready_seconds_after_start || echo -)" \
    "$(fact "$1" "$2" enroll_seconds || echo -)"
done
check "a2: the clock checks ran to the end (facts clock_back, clock_suspend)" \
  test -n "$(fact a 2 clock_back)" -a -n "$(fact a 2 clock_suspend)"
echo "clock moves in a2 (the guest's own clock; tiny steps, forward, back during a backoff, suspend):"
for f in clock_tiny clock_forward clock_back clock_suspend; do
  printf '  %-13s %s\n' "$f" "$(fact a 2 "$f" || echo -)"
done
echo "exposure in the guest: certagent.service $(fact a 1 exposure_certagent.service), certagent-enroll.service $(fact a 1 exposure_certagent-enroll.service)"
timing "total (accelerator $accel_name)" $((SECONDS - started))
echo "logs, serial consoles and results: $run"

echo
if [ "$failures" -ne 0 ]; then
  echo "$failures check(s) failed" >&2
  exit 1
fi
echo "all image checks passed"
