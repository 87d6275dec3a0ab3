#!/usr/bin/env bash
# The shipped units as a machine would run them, without installing anything:
#  - certagent-enroll.service runs after udev's coldplug and does not make a TPM-less boot wait
#    for dev-tpmrm0.device (certagent waits for the node itself when the firmware announces a
#    TPM: tests/unit/tpm/tpm_device_test);
#  - the README's bake-time `systemd-analyze verify` command runs as written in a minimal image
#    without `man` (the units' ExecStart pointed at /bin/true, since the binary is not
#    installed here).
set -uo pipefail
source_dir=${CERTAGENT_SOURCE_DIR:?}
failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }
command -v systemd-analyze >/dev/null || { echo "FAIL: missing systemd-analyze (scripts/install-deps.sh test)" >&2; exit 1; }

tmp=$(mktemp -d /tmp/certagent-units-test.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cp "$source_dir"/systemd/certagent.service "$source_dir"/systemd/certagent-enroll.service "$tmp/"

unit_values() {  # unit_values FILE KEY: every value of KEY= in the [Unit] section, space-separated
  awk -v key="$2" '/^\[/{unit=($0=="[Unit]")} unit && index($0, key"=")==1 {sub(/^[^=]*=/, ""); printf "%s ", $0}' "$1"
}
enroll="$tmp/certagent-enroll.service"
# certagent waits for the TPM device itself (tests/unit/tpm/tpm_device_test): a systemd
# dependency on dev-tpmrm0.device would hold a TPM-less boot for the 90 s device timeout.
case " $(unit_values "$enroll" Wants) $(unit_values "$enroll" Requires) $(unit_values "$enroll" BindsTo) " in
  *" dev-tpmrm0.device "*) fail "enroll pulls in dev-tpmrm0.device: a host without a TPM would wait 90 s" ;;
  *) pass "enroll does not make a TPM-less boot wait for dev-tpmrm0.device" ;; esac
case " $(unit_values "$enroll" After) " in *" systemd-udev-trigger.service "*) pass "enroll runs after udev's coldplug" ;;
  *) fail "enroll is not ordered after systemd-udev-trigger.service" ;; esac
if grep -q 'AssertPathExists=' "$enroll"; then fail "enroll asserts a path: it would fail without saying why in its own words"
else pass "no assertion: the enrolment itself says why it fails"; fi

# The README's verify command, as written, where `man` is not installed.
cmd=$(grep -o '^systemd-analyze verify[^#]*' "$source_dir/README.md" | head -1 | sed 's/ *$//')
if [ -z "$cmd" ]; then
  fail "no systemd-analyze verify command in README.md"
else
  sed -i 's#/usr/bin/certagent#/bin/true#' "$tmp"/*.service
  mkdir -p "$tmp/bin"
  ln -s "$(command -v systemd-analyze)" "$tmp/bin/systemd-analyze"
  out=$(cd "$tmp" && PATH="$tmp/bin" "$BASH" -c "$cmd" 2>&1); rc=$?
  if [ "$rc" -eq 0 ]; then pass "README: '$cmd' runs without man"; else fail "README: '$cmd' fails without man: $out"; fi
fi

[ "$failures" -eq 0 ] || { echo "$failures check(s) failed" >&2; exit 1; }
echo "all checks passed"
