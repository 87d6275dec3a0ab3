#!/bin/bash
# The assertions of the image test, run inside the booted guest by certagent-image-test.service
# (tests/image only; the unit exists only in the test image). It starts once certagent.service
# has finished starting (READY=1, or failed), checks what a platform team would check on a fresh
# instance, and writes one line per check ("ok ..." / "FAIL ...") plus facts for the host's
# cross-boot and cross-instance comparisons to the results disk (/results/out). The unit powers
# the machine off afterwards, whatever the outcome.
#
# The host tells it what to expect in /results/seed: `role` (tpm | notpm) and `boot` (1 | 2), and
# with `clock` to run the clock checks (clock.sh) last.
# Every command that could block has a timeout; every wait is for a condition with a deadline.
set -uo pipefail
export LC_ALL=C.UTF-8 SYSTEMD_PAGER='' SYSTEMD_COLORS=0 PATH=/usr/sbin:/usr/bin:/sbin:/bin

out=/results/out
seed=/results/seed
mkdir -p "$out/facts"
exec >>"$out/runner.log" 2>&1
role=$(cat "$seed/role")
boot=$(cat "$seed/boot")
echo "runner: role=$role boot=$boot uptime=$(cut -d' ' -f1 /proc/uptime)"

checks=$out/checks
: >"$checks"
ok() { echo "ok $*" | tee -a "$checks"; }
fail() { echo "FAIL $*" | tee -a "$checks"; }
check() {  # check "description" command...
  local what=$1; shift
  if "$@"; then ok "$what"; else fail "$what"; fi
}
fact() { printf '%s\n' "$2" >"$out/facts/$1"; }
# wait_for SECONDS command...: true as soon as the command succeeds, false at the deadline.
wait_for() {
  local end=$((SECONDS + $1)); shift
  until "$@"; do
    [ "$SECONDS" -ge "$end" ] && return 1
    sleep 0.5
  done
}
prop() { timeout 20 systemctl show -p "$2" --value "$1"; }
journal() { timeout 30 journalctl -b --no-pager -o cat -u "$1"; }
at_most() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a != "" && a + 0 <= b + 0) }'; }
usec_diff_s() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (a - b) / 1e6 }'; }
# Lower-case hex without leading zeros, to compare openssl's and certagent's spelling of a serial.
norm_serial() { tr 'A-F' 'a-f' <<<"$1" | sed 's/^0*//'; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }

unit=certagent.service
enroll_unit=certagent-enroll.service
sock=/run/certagent/agent.sock
live=/etc/certagent/live/api
iddir=/var/lib/certagent/identity
n_certs=2

fact uptime_at_runner "$(uptime_s)"

# ---- the instance without a TPM: enrolment fails clearly and nothing waits for it ----------------
if [ "$role" = notpm ]; then
  check "no TPM device in this instance (/dev/tpm0, /dev/tpmrm0 absent)" test ! -e /dev/tpmrm0 -a ! -e /dev/tpm0
  check "the boot reached multi-user.target" wait_for 120 systemctl is-active -q multi-user.target
  fact multi_user_uptime "$(awk -v a="$(prop multi-user.target ActiveEnterTimestampMonotonic)" \
    'BEGIN { printf "%.1f", a / 1e6 }')"
  check "certagent-enroll.service ran and failed (Result=exit-code)" \
    test "$(prop $enroll_unit ConditionResult)/$(prop $enroll_unit Result)" = yes/exit-code
  journal $enroll_unit >"$out/enroll.log"
  message=$(grep -m1 'enroll failed' "$out/enroll.log")
  fact enroll_error "$message"
  check "enrolment says why, naming the TPM device: $message" grep -q '/dev/tpmrm0' <<<"$message"
  fact enroll_seconds "$(usec_diff_s "$(prop $enroll_unit ExecMainExitTimestampMonotonic)" \
    "$(prop $enroll_unit ExecMainStartTimestampMonotonic)")"
  check "certagent.service was not started (it requires the enrolment)" \
    test "$(prop $unit ActiveState)" != active -a "$(prop $unit MainPID)" = 0
  check "certagent.service's start failed on the dependency" \
    grep -q 'Dependency failed' <(timeout 30 journalctl -b --no-pager -o cat -u $unit)
  check "no identity was created" test ! -e $iddir/identity.pub
  check "the broker secret is kept for a later enrolment (nothing lost)" test -s /etc/certagent/secrets/cfssl.key
  check "no socket is served" test ! -e $sock
  # Nothing hangs: no job is left waiting (except this runner's own).
  jobs=$(timeout 20 systemctl list-jobs --no-legend --plain | grep -v certagent-image-test.service)
  check "no start job left waiting${jobs:+: $jobs}" test -z "$jobs"
  timeout 30 journalctl -b --no-pager -o short-monotonic >"$out/journal.txt"
  echo done >"$out/done"
  sync
  exit 0
fi

# ---- first thing after READY: is every certificate valid? ---------------------------------------
# This unit is ordered after certagent.service, so it starts as soon as that unit's start job
# completes, i.e. at READY=1.
status_at_ready=$(timeout 20 certagent status --json 2>&1)
fact status_at_ready "$status_at_ready"
fact status_text_at_ready "$(prop $unit StatusText)"
all_valid() {  # all_valid JSON
  jq -e --argjson n "$n_certs" '(if type == "object" then .certificates else . end) as $c
    | ($c | length) == $n and ($c | all(.state == "valid"))' <<<"$1" >/dev/null 2>&1
}
check "certagent.service active (running)" \
  test "$(prop $unit ActiveState)/$(prop $unit SubState)" = active/running
check "at READY every certificate is already valid (certagent status --json)" all_valid "$status_at_ready"
journal $unit >"$out/certagent-at-ready.log"
check "READY came from valid material, not from the start timeout (no event=ready_without_material)" \
  bash -c "! grep -q 'event=ready_without_material' '$out/certagent-at-ready.log'"
fact ready_seconds_after_start "$(usec_diff_s "$(prop $unit ActiveEnterTimestampMonotonic)" \
  "$(prop $unit ExecMainStartTimestampMonotonic)")"
fact ready_uptime "$(awk -v a="$(prop $unit ActiveEnterTimestampMonotonic)" 'BEGIN { printf "%.1f", a / 1e6 }')"
check "the broker (multirootca, in this guest) is running" systemctl is-active -q multirootca.service

# ---- systemctl status: the Status: line tells the truth ----------------------------------------
expected_status="$n_certs/$n_certs certificates valid, 0 expired, 0 retrying"
status_text_ok() { [ "$(prop $unit StatusText)" = "$expected_status" ]; }
wait_for 10 status_text_ok
status_text=$(prop $unit StatusText)
timeout 20 systemctl status $unit --no-pager --lines=0 >"$out/systemctl-status.txt" 2>&1
check "systemctl status: Status: \"$expected_status\" (is: \"$status_text\")" \
  grep -qF "Status: \"$expected_status\"" "$out/systemctl-status.txt"

# ---- the identity ----------------------------------------------------------------------------
journal $enroll_unit >"$out/enroll.log"
if [ "$boot" = 1 ]; then
  check "certagent-enroll.service ran and succeeded" \
    test "$(prop $enroll_unit ConditionResult)/$(prop $enroll_unit Result)/$(prop $enroll_unit ExecMainStatus)" = yes/success/0
  fact enroll_seconds "$(usec_diff_s "$(prop $enroll_unit ExecMainExitTimestampMonotonic)" \
    "$(prop $enroll_unit ExecMainStartTimestampMonotonic)")"
  check "enrolment logged the public key (PEM)" grep -q -- '-----BEGIN PUBLIC KEY-----' "$out/enroll.log"
  fp_logged=$(sed -n 's/^sha256:\([0-9a-f]\{64\}\)$/\1/p' "$out/enroll.log" | head -n1)
  fact fingerprint_enrolled "$fp_logged"
  check "enrolment logged the SHA-256 fingerprint (sha256:$fp_logged)" test -n "$fp_logged"
  fp_of_pem=$(sed -n '/-----BEGIN PUBLIC KEY-----/,/-----END PUBLIC KEY-----/p' "$out/enroll.log" |
    openssl pkey -pubin -outform DER 2>/dev/null | sha256sum | cut -c1-64)
  check "the logged fingerprint is the SHA-256 of the logged key" test "$fp_of_pem" = "$fp_logged"
  check "event=enrolled backend=tpm created=true" \
    grep -q "event=enrolled backend=tpm created=true fingerprint=sha256:$fp_logged" "$out/enroll.log"
  check "the cfssl auth key was sealed into the TPM" grep -qx 'sealed pki.cfssl_auth' "$out/enroll.log"
  check "the plaintext secret was deleted from /etc/certagent/secrets" \
    test -z "$(ls -A /etc/certagent/secrets)"
else
  check "boot 2: certagent-enroll.service skipped (identity present, no secrets waiting)" \
    test "$(prop $enroll_unit ConditionResult)" = no
  check "boot 2: no enrolment in this boot's journal" bash -c "! grep -q 'event=enrolled' '$out/enroll.log'"
fi
check "identity blobs present (identity.pub, identity.priv)" test -s $iddir/identity.pub -a -s $iddir/identity.priv
for f in "$iddir"/*; do
  check "identity blob $(basename "$f"): 0600 certagent:certagent" \
    test "$(stat -c '%a %U:%G' "$f")" = "600 certagent:certagent"
done
check "identity directory closed to group and others" \
  test "$(( 8#$(stat -c '%a' $iddir) & 8#077 ))" -eq 0 -a "$(stat -c %U $iddir)" = certagent
# The fingerprint from the blob itself (no TPM involved): the host compares it across boots and
# instances.
fp_blob=$(timeout 20 tpm2_print -t TPM2B_PUBLIC -f pem $iddir/identity.pub 2>/dev/null |
  openssl pkey -pubin -outform DER 2>/dev/null | sha256sum | cut -c1-64)
fact fingerprint_blob "$fp_blob"
fact identity_sha256 "$(cd $iddir && sha256sum identity.pub identity.priv)"
[ "$boot" = 1 ] && check "the identity blob's key is the enrolled key" test "$fp_blob" = "$fp_logged"
check "the daemon opened the TPM identity itself (event=identity_opened backend=tpm created=false)" \
  grep -q 'event=identity_opened backend=tpm created=false' "$out/certagent-at-ready.log"

# ---- certificates: where they came from ----------------------------------------------------------
if [ "$boot" = 1 ]; then
  check "api issued by the broker (event=certificate_issued name=api broker=pki)" \
    grep -q 'event=certificate_issued name=api broker=pki ' "$out/certagent-at-ready.log"
else
  check "boot 2: api's files reused (event=stored_certificate_reused name=api)" \
    grep -q 'event=stored_certificate_reused name=api ' "$out/certagent-at-ready.log"
  check "boot 2: api not issued again" \
    bash -c "! grep -q 'event=certificate_issued name=api ' '$out/certagent-at-ready.log'"
fi
# sidecar lives only in the daemon's memory: every boot issues it, authenticated by the sealed key.
check "sidecar issued by the broker with the TPM-sealed auth key (event=certificate_issued name=sidecar)" \
  grep -q 'event=certificate_issued name=sidecar broker=pki ' "$out/certagent-at-ready.log"

# ---- certagent status --json ------------------------------------------------------------------
status_json=$(timeout 20 certagent status --json 2>&1)
fact status "$status_json"
check "certagent status --json: $n_certs certificates, all valid" all_valid "$status_json"
check "certagent status (table) exits 0" bash -c 'timeout 20 certagent status >/dev/null'
status_serial=$(jq -r '(if type == "object" then .certificates else . end)[] | select(.name == "api") | .serial' \
  <<<"$status_json" 2>/dev/null)

# ---- files in the ..data layout ----------------------------------------------------------------
generation=$(readlink $live/..data)
fact api_generation "$generation"
check "api: ..data -> $generation (a generation directory ..<timestamp>.<serial>)" \
  test -L $live/..data -a -d "$live/$generation" -a "${generation#..}" != "$generation"
for f in cert.pem chain.pem fullchain.pem key.pem bundle.pem meta.json; do
  check "api: $f -> ..data/$f" test "$(readlink "$live/$f")" = "..data/$f" -a -f "$live/$f"
done
check "api: key.pem 0600 certagent" test "$(stat -L -c '%a %U' $live/key.pem)" = "600 certagent"
check "api: bundle.pem (holds the key) closed to group and others" \
  test "$(( 8#$(stat -L -c '%a' $live/bundle.pem) & 8#077 ))" -eq 0
key_pub=$(openssl pkey -in $live/key.pem -pubout 2>/dev/null | sha256sum)
cert_pub=$(openssl x509 -in $live/cert.pem -noout -pubkey 2>/dev/null | sha256sum)
check "api: key.pem matches cert.pem" test -n "$key_pub" -a "$key_pub" = "$cert_pub"
check "api: cert.pem verifies to the trust bundle" \
  openssl verify -CAfile /etc/certagent/issuer-roots.pem $live/cert.pem
file_serial=$(openssl x509 -in $live/cert.pem -noout -serial 2>/dev/null | cut -d= -f2)
fact api_serial "$(norm_serial "$file_serial")"
check "api: the files hold the serial the daemon reports ($status_serial)" \
  test -n "$file_serial" -a "$(norm_serial "$file_serial")" = "$(norm_serial "$status_serial")"

# ---- the socket API: answers root, refuses others -------------------------------------------------
scratch=$(mktemp -d /run/certagent-image-test.XXXXXX)  # tmpfs: a private key never reaches the results disk
code=$(timeout 20 curl -s -o "$scratch/sidecar.json" -w '%{http_code}' --max-time 10 \
  --unix-socket $sock http://localhost/v1/certificates/sidecar)
jq -r .private_key_pem "$scratch/sidecar.json" >"$scratch/key.pem" 2>/dev/null
jq -r .certificate_pem "$scratch/sidecar.json" >"$scratch/cert.pem" 2>/dev/null
check "socket: root gets sidecar's bundle (HTTP $code)" test "$code" = 200
check "socket: the bundle's key matches its certificate" test -n "$(openssl pkey -in "$scratch/key.pem" -pubout 2>/dev/null)" -a \
  "$(openssl pkey -in "$scratch/key.pem" -pubout 2>/dev/null | sha256sum)" = \
  "$(openssl x509 -in "$scratch/cert.pem" -noout -pubkey 2>/dev/null | sha256sum)"
check "socket: the bundle's certificate verifies to the trust bundle" \
  openssl verify -CAfile /etc/certagent/issuer-roots.pem "$scratch/cert.pem"
rm -rf "$scratch"
# nobody is not in the socket's group: the socket's mode (0660) keeps it out.
nobody_out=$(timeout 20 setpriv --reuid=nobody --regid=nogroup --clear-groups \
  curl -s -w ' HTTP %{http_code}' --max-time 10 --unix-socket $sock http://localhost/v1/certificates/sidecar 2>&1)
nobody_rc=$?
check "socket: nobody is refused (curl exit $nobody_rc, got:${nobody_out:0:40})" \
  test "$nobody_rc" -ne 0 -a "${nobody_out/PRIVATE/}" = "$nobody_out"
# app is in group certagent (socket.group): it may connect and list, but the daemon refuses it a
# key (not root, not in allow_uids/allow_gids).
app_list=$(timeout 20 setpriv --reuid=app --regid=app --init-groups \
  curl -s -o /dev/null -w '%{http_code}' --max-time 10 --unix-socket $sock http://localhost/v1/certificates)
app_key=$(timeout 20 setpriv --reuid=app --regid=app --init-groups \
  curl -s -o /dev/null -w '%{http_code}' --max-time 10 --unix-socket $sock http://localhost/v1/certificates/sidecar)
check "socket: a member of socket.group lists certificates (HTTP $app_list)" test "$app_list" = 200
check "socket: the daemon refuses that member a key (HTTP $app_key)" test "$app_key" = 403

# ---- metrics listener ----------------------------------------------------------------------------
readyz=$(timeout 20 curl -s -o /dev/null -w '%{http_code}' --max-time 10 http://127.0.0.1:9464/readyz)
check "/readyz on 127.0.0.1:9464 answers 200 (HTTP $readyz)" test "$readyz" = 200

# ---- hardening as systemd sees it on a real boot ----------------------------------------------------
for u in $unit $enroll_unit; do
  timeout 120 systemd-analyze security "$u" --no-pager >"$out/security-$u.txt" 2>&1
  score=$(sed -n "s/.*Overall exposure level for $u: \([0-9.]*\).*/\1/p" "$out/security-$u.txt")
  fact "exposure_$u" "$score"
  check "systemd-analyze security $u: ${score:-?} <= 2.0" at_most "$score" 2.0
done

# ---- systemctl reload keeps the process ------------------------------------------------------------
pid_before=$(prop $unit MainPID)
reloads_before=$(journal $unit | grep -c 'event=config_reloaded')
timeout 60 systemctl reload $unit
check "systemctl reload certagent exits 0" test $? -eq 0
reloaded() { [ "$(journal $unit | grep -c 'event=config_reloaded')" -gt "$reloads_before" ]; }
check "the reload was applied (event=config_reloaded)" wait_for 30 reloaded
check "the reload kept the process (MainPID $pid_before)" \
  test "$(prop $unit MainPID)" = "$pid_before" -a "$(prop $unit ActiveState)" = active -a "$pid_before" != 0
check "after the reload every certificate is still valid" all_valid "$(timeout 20 certagent status --json 2>&1)"

# ---- the machine as a whole --------------------------------------------------------------------
check "the boot reached multi-user.target" wait_for 120 systemctl is-active -q multi-user.target
failed=$(timeout 20 systemctl list-units --failed --no-legend --plain | awk '{print $1}' | xargs)
check "no failed units${failed:+: $failed}" test -z "$failed"
check "no secret left in /etc/certagent/secrets" test -z "$(ls -A /etc/certagent/secrets)"
# (systemd-analyze time would say the boot is not finished: this runner is part of it.)
fact multi_user_uptime "$(awk -v a="$(prop multi-user.target ActiveEnterTimestampMonotonic)" \
  'BEGIN { printf "%.1f", a / 1e6 }')"

# ---- the clock moves (issue 20): on the boot the host marks, after every other check -------------
# The guest steps its own clock and suspends; clock.sh puts the clock back where it was.
if [ -f "$seed/clock" ]; then
  # shellcheck source=clock.sh
  . /usr/local/libexec/certagent-image-test/clock.sh
  clock_checks
fi
timeout 30 journalctl -b --no-pager -o short-monotonic >"$out/journal.txt"
echo done >"$out/done"
sync
exit 0
