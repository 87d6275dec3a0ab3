#!/usr/bin/env bash
# The shipped units as a machine would run them, without installing anything:
#  - certagent-enroll.service waits for the TPM device and, on a machine without one, fails on
#    an assertion naming /dev/tpmrm0 (systemd-analyze condition evaluates the unit's own
#    conditions and asserts here, where there is no TPM);
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
case " $(unit_values "$enroll" After) " in *" dev-tpmrm0.device "*) pass "enroll is ordered after dev-tpmrm0.device" ;;
  *) fail "enroll is not ordered after dev-tpmrm0.device" ;; esac
case " $(unit_values "$enroll" Wants) $(unit_values "$enroll" Requires) " in *" dev-tpmrm0.device "*) pass "enroll pulls in dev-tpmrm0.device" ;;
  *) fail "enroll does not pull in dev-tpmrm0.device (After= alone waits for nothing)" ;; esac

# Without a TPM (this machine, unless it has one) the enrolment must fail, naming the device.
out=$(cd "$tmp" && systemd-analyze condition --unit=certagent-enroll.service 2>&1); rc=$?
if [ -e /dev/tpmrm0 ]; then
  echo "note: this machine has /dev/tpmrm0; the no-TPM case is not exercised"
elif [ "$rc" -ne 0 ] && grep -q 'AssertPathExists=/dev/tpmrm0 failed' <<<"$out"; then
  pass "without a TPM the enrolment fails on AssertPathExists=/dev/tpmrm0"
else
  fail "without a TPM the enrolment would run (rc=$rc): $out"
fi

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
