# The image test's clock checks (issue 20; tests/image only), sourced by runner.sh on the boot
# the host marks with seed/clock (the second boot of instance a), after every other check. The
# guest moves its own clock (the host's clock is never touched) in each way the README's "When
# the host's clock moves" covers, and checks what the daemon promises from outside: its log, its
# metrics, `certagent status`, the socket. Each check waits for a condition with a deadline on a
# clock the steps do not move; the figures come from the journal's monotonic timestamps.
#
#   1. Tiny steps: +0.5 ms every 100 ms for 8 s (80 clock sets, 40 ms in all): nothing logged, no
#      loop woken.
#   2. Forward into the renewal window: the clock jumps to 90 s before the first certificate's
#      not_after (about +58 min): one clock_jump, material valid throughout, both renewed at once.
#   3. Back during a backoff: the broker stopped and both certificates failing (retries pending),
#      the clock goes back by as much (about -58 min: the leaves just issued now start in the
#      future): not_yet_valid everywhere, and once the broker answers again, valid within the
#      pending retry (the old code waited the whole step). This also puts the clock back where it
#      was.
#   4. Suspend to RAM and resume by the RTC alarm (qemu's S3, `rtcwake -m mem`): one clock_jump
#      as long as the sleep, material valid, and a renewal right after it works (the TPM too).
#
# Uses runner.sh's ok/fail/check/fact/prop/all_valid/at_most and $unit, $sock, $out.
# shellcheck disable=SC2154  # unit, sock, out: set by runner.sh

clock_tool() { timeout 60 perl /usr/local/libexec/certagent-image-test/clock-tool.pl "$@"; }
# Uptime (CLOCK_BOOTTIME, 10 ms): not moved by clock steps; counts a suspend.
uptime_now() { local up _; read -r up _ </proc/uptime; echo "$up"; }
# within SECONDS command...: true as soon as the command succeeds, false at the deadline. Like
# wait_for, but on the uptime: bash's $SECONDS follows the wall clock, which this file steps.
within() {
  local end
  end=$(awk -v u="$(uptime_now)" -v s="$1" 'BEGIN { print u + s }'); shift
  until "$@"; do
    at_most "$end" "$(uptime_now)" && return 1
    sleep 0.2
  done
}
# certagent's journal from a cursor on. The cursor is the unit's own last line: journalctl 252
# skips the first matching line after a cursor that its -u filter does not match.
journal_cursor() { timeout 20 journalctl -u "$unit" -n 1 -o json --no-pager | jq -r .__CURSOR; }
# snapshot CURSOR: certagent's lines after the cursor, "MONOTONIC_SECONDS MESSAGE", into $snap
# (one journalctl per phase: under TCG each call costs a second or more).
snap=/run/certagent-image-clock.journal
snapshot() {
  timeout 30 journalctl -u "$unit" --after-cursor="$1" -o json --no-pager |
    jq -r '"\(.__MONOTONIC_TIMESTAMP | tonumber / 1e6) \(.MESSAGE)"' >"$snap"
}
count_in() { grep -c -- "$1" "$snap"; }
first_at() { grep -- "$1" "$snap" | head -n1 | cut -d' ' -f1; }   # monotonic time of the first match
last_at() { grep -- "$1" "$snap" | tail -n1 | cut -d' ' -f1; }
jump_ms() { sed -n 's/.*event=clock_jump step_ms=\(-\?[0-9]*\).*/\1/p' "$snap" | head -n1; }
# one_jump MS TOLERANCE_MS: exactly one clock_jump in the snapshot, its step within tolerance.
one_jump() { [ "$(count_in 'event=clock_jump')" = 1 ] && near "$(jump_ms)" "$1" "$2"; }
minus() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "") print "-"; else printf "%.2f", a - b }'; }
near() { awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { d = a - b; exit !(a != "" && d <= t && -d <= t) }'; }
status_now() { timeout 20 certagent status --json 2>/dev/null; }
cert_field() {  # cert_field JSON NAME FIELD
  jq -r --arg n "$2" --arg f "$3" '(if type == "object" then .certificates else . end)[]
    | select(.name == $n) | .[$f] // empty' <<<"$1" 2>/dev/null
}
# "api=valid sidecar=valid"; in_state JSON STATE: every certificate in that state.
states() { jq -r '[(if type == "object" then .certificates else . end)[] | "\(.name)=\(.state)"] | join(" ")' <<<"$1" 2>/dev/null; }
in_state() {
  jq -e --arg s "$2" '(if type == "object" then .certificates else . end) as $c
    | ($c | length) > 0 and ($c | all(.state == $s))' <<<"$1" >/dev/null 2>&1
}
metric() {
  timeout 20 curl -s --max-time 10 http://127.0.0.1:9464/metrics |
    awk -v m="$1" '$1 == m { print $2 + 0; f = 1 } END { if (!f) print 0 }'
}
jumps_now() { metric certagent_clock_jumps_total; }
jumps_reach() { [ "$(jumps_now)" -ge "$1" ]; }
# "1m2s500ms" (the log's retry_in) in seconds.
duration_s() {
  awk -v d="$1" 'BEGIN { t = 0
    while (match(d, /^[0-9]+(ms|h|m|s)/)) {
      tok = substr(d, 1, RLENGTH); d = substr(d, RLENGTH + 1); n = tok + 0; u = tok; sub(/^[0-9]+/, "", u)
      t += n * (u == "h" ? 3600 : u == "m" ? 60 : u == "s" ? 1 : 0.001)
    }
    print t }'
}
cpu_ms() { awk '{ print ($14 + $15) * 10 }' "/proc/$1/stat"; }  # utime + stime, USER_HZ 100
wakeups() { cat /proc/"$1"/task/*/status | awk '/^voluntary_ctxt_switches/ { n += $2 } END { print n }'; }
state_written_at() { jq -r .written_at /var/lib/certagent/state.json 2>/dev/null; }
# state.json is rewritten within 1 s of every loop wake-up; quiet = its last write 2 s ago.
state_quiet() {
  local w
  w=$(date -d "$(state_written_at)" +%s 2>/dev/null) && [ $(($(date +%s) - w)) -ge 2 ]
}
broker_listening() { timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/8888' 2>/dev/null; }
all_valid_now() { all_valid "$(status_now)"; }
# renewed_from API SIDECAR: both valid, each with a serial other than the one given ("" = any).
renewed_from() {
  local s
  s=$(status_now)
  all_valid "$s" && [ "$(cert_field "$s" api serial)" != "$1" ] && [ "$(cert_field "$s" sidecar serial)" != "$2" ]
}
failing_both() {
  local s
  s=$(status_now)
  [ "$(cert_field "$s" api consecutive_failures)" -ge 1 ] 2>/dev/null &&
    [ "$(cert_field "$s" sidecar consecutive_failures)" -ge 1 ] 2>/dev/null
}

clock_checks() {
  echo "clock checks: start, wall clock $(date -u +%FT%T.%NZ), uptime $(uptime_now)"
  # Calendar timers would fire on a jump across their time and compete with the daemon for the
  # one emulated CPU; they have nothing to do in this guest.
  timeout 30 systemctl stop apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
    e2scrub_all.timer fstrim.timer 2>/dev/null
  local pid cursor s0 s1 api0 sidecar0 api1 sidecar1 t_step jumps
  pid=$(prop "$unit" MainPID)
  s0=$(status_now)
  api0=$(cert_field "$s0" api serial); sidecar0=$(cert_field "$s0" sidecar serial)
  check "clock: before the steps, every certificate valid (api $api0, sidecar $sidecar0)" all_valid "$s0"

  # ---- 1. many tiny steps --------------------------------------------------------------------------
  within 15 state_quiet
  local written cpu0 wake0 tiny cpu woke
  written=$(state_written_at)
  jumps=$(jumps_now)
  cursor=$(journal_cursor)
  cpu0=$(cpu_ms "$pid"); wake0=$(wakeups "$pid")
  tiny=$(clock_tool tiny 80 500 100)
  cpu=$(($(cpu_ms "$pid") - cpu0)); woke=$(($(wakeups "$pid") - wake0))
  snapshot "$cursor"
  fact clock_tiny "${tiny%% *} steps of +0.5 ms in ${tiny#* } s: $(count_in 'event=clock_jump') clock_jump lines, $(wc -l <"$snap") log lines in all, no loop woken; daemon CPU ${cpu} ms, ${woke} thread wake-ups (the clock watch's timerfd, one per step)"
  check "clock, tiny steps (${tiny%% *} x +0.5 ms every 100 ms, ${tiny#* } s): no event=clock_jump" \
    test "$(count_in 'event=clock_jump')" = 0
  check "clock, tiny steps: certagent_clock_jumps_total unchanged ($jumps)" test "$(jumps_now)" = "$jumps"
  # Every loop wake-up republishes its schedule, which rewrites state.json within 1 s.
  check "clock, tiny steps: no certificate loop woke (state.json still written at $written)" \
    test -n "$written" -a "$(state_written_at)" = "$written"
  s1=$(status_now)
  check "clock, tiny steps: every certificate valid, nothing re-issued" \
    test "$(states "$s1")/$(cert_field "$s1" api serial)/$(cert_field "$s1" sidecar serial)" = "api=valid sidecar=valid/$api0/$sidecar0"

  # ---- 2. forward into the renewal window ---------------------------------------------------------
  local first_expiry forward
  first_expiry=$(jq -r '[(if type == "object" then .certificates else . end)[] | .not_after] | min' <<<"$s1")
  forward=$(($(date -d "$first_expiry" +%s) - 90 - $(date +%s)))
  jumps=$(jumps_now)
  cursor=$(journal_cursor)
  t_step=$(uptime_now)
  date -s "+$forward seconds" >/dev/null
  echo "clock: stepped +$forward s to $(date -u +%FT%TZ) (first not_after $first_expiry)"
  check "clock, step +${forward}s (to 90 s before not_after $first_expiry): noticed (certagent_clock_jumps_total +1)" \
    within 30 jumps_reach $((jumps + 1))
  s1=$(status_now)
  check "clock, step +${forward}s: the material stays valid (states: $(states "$s1"))" all_valid "$s1"
  check "clock, step +${forward}s: both certificates renewed at once (in the renewal window)" \
    within 90 renewed_from "$api0" "$sidecar0"
  snapshot "$cursor"
  check "clock, step +${forward}s: one event=clock_jump (logged: $(count_in 'event=clock_jump')), step_ms=$(jump_ms) ~ ${forward}000" \
    one_jump "${forward}000" 1000
  check "clock, step +${forward}s: nothing expired" test "$(count_in 'event=certificate_expired')" = 0
  s1=$(status_now)
  api1=$(cert_field "$s1" api serial); sidecar1=$(cert_field "$s1" sidecar serial)
  fact clock_forward "+$forward s (into the renewal window, 90 s before not_after): clock_jump logged $(minus "$(first_at 'event=clock_jump')" "$t_step") s after the step, both renewed $(minus "$(last_at 'event=certificate_issued')" "$t_step") s after it; valid throughout"

  # ---- 3. back during a backoff ---------------------------------------------------------------------
  local cursor_down t_broker retry_max deadline t_valid code
  cursor_down=$(journal_cursor)
  timeout 60 systemctl stop multirootca.service
  timeout 20 certagent renew api >/dev/null
  timeout 20 certagent renew sidecar >/dev/null
  check "clock, broker stopped: both certificates failing, retries pending" within 60 failing_both
  jumps=$(jumps_now)
  t_step=$(uptime_now)
  date -s "-$forward seconds" >/dev/null
  echo "clock: stepped -$forward s to $(date -u +%FT%TZ)"
  check "clock, step -${forward}s during the backoff: noticed (certagent_clock_jumps_total +1)" \
    within 30 jumps_reach $((jumps + 1))
  s1=$(status_now)
  check "clock, step -${forward}s: the leaves now start in the future: not_yet_valid (states: $(states "$s1"))" \
    in_state "$s1" not_yet_valid
  code=$(timeout 20 curl -s -o "$out/clock-socket.json" -w '%{http_code}' --max-time 10 \
    --unix-socket "$sock" http://localhost/v1/certificates/sidecar)
  check "clock, step -${forward}s: the socket hands out nothing (HTTP $code, error $(jq -r .error "$out/clock-socket.json" 2>/dev/null))" \
    test "$code" = 503 -a "$(jq -r .error "$out/clock-socket.json" 2>/dev/null)" = not_yet_valid
  timeout 60 systemctl start multirootca.service
  check "clock: the broker is back (127.0.0.1:8888 answers)" within 60 broker_listening
  t_broker=$(uptime_now)
  # The retries pending now were set on the monotonic clock before the broker came back; the
  # longest of them bounds the recovery. The old code put them the whole step later.
  snapshot "$cursor_down"
  retry_max=$(sed -n 's/.*event=renewal_failed .* retry_in=\([0-9a-z]*\) .*/\1/p' "$snap" |
    while read -r r; do duration_s "$r"; done | sort -g | tail -n1)
  retry_max=${retry_max:-0}
  deadline=$(awk -v r="$retry_max" 'BEGIN { printf "%d", r + 60 }')
  check "clock, step -${forward}s: valid again within the longest pending retry (${retry_max} s) + 60 s of the broker's return, not ${forward} s later" \
    within "$deadline" renewed_from "$api1" "$sidecar1"
  t_valid=$(uptime_now)
  snapshot "$cursor_down"
  check "clock, step -${forward}s: one event=clock_jump (logged: $(count_in 'event=clock_jump')), step_ms=$(jump_ms) ~ -${forward}000" \
    one_jump "-${forward}000" 1000
  fact clock_back "-$forward s during a backoff ($(count_in 'event=renewal_failed') failures, longest pending retry ${retry_max} s): clock_jump logged $(minus "$(first_at 'event=clock_jump')" "$t_step") s after the step, not_yet_valid until the broker answered; valid $(minus "$(last_at 'event=certificate_issued')" "$t_broker") s after it answered (status saw it $(minus "$t_valid" "$t_broker") s after)"

  # ---- 4. suspend to RAM and resume -------------------------------------------------------------------
  local mem_sleep before after slept rc sidecar2 resumed
  mem_sleep=$(cat /sys/power/mem_sleep 2>/dev/null)
  if ! grep -q 'deep' <<<"$mem_sleep"; then
    fail "clock: this guest cannot suspend to RAM (/sys/power/mem_sleep: ${mem_sleep:-absent}; qemu's S3 disabled?)"
    return
  fi
  echo enabled >/sys/class/rtc/rtc0/device/power/wakeup 2>/dev/null
  jumps=$(jumps_now)
  cursor=$(journal_cursor)
  sync
  before=$(clock_tool clocks)
  timeout 300 rtcwake -m mem -s 5 >"$out/rtcwake.log" 2>&1
  rc=$?
  after=$(clock_tool clocks)
  # CLOCK_BOOTTIME counts the sleep, CLOCK_MONOTONIC does not.
  slept=$(awk -v b="$before" -v a="$after" 'BEGIN { split(b, x, " "); split(a, y, " ");
    printf "%.2f", (y[2] - x[2]) - (y[1] - x[1]) }')
  check "clock: suspend to RAM ($mem_sleep), woken by the RTC (rtcwake -m mem -s 5: exit $rc, slept $slept s)" \
    awk -v rc="$rc" -v s="$slept" 'BEGIN { exit !(rc == 0 && s >= 3) }'
  check "clock, resume: noticed (certagent_clock_jumps_total +1)" within 30 jumps_reach $((jumps + 1))
  check "clock, resume: every certificate valid" within 30 all_valid_now
  sidecar2=$(cert_field "$(status_now)" sidecar serial)
  timeout 20 certagent renew sidecar >/dev/null
  check "clock, resume: a renewal right after it works (the TPM's HMAC after S3)" within 60 renewed_from "" "$sidecar2"
  snapshot "$cursor"
  check "clock, resume: one event=clock_jump (logged: $(count_in 'event=clock_jump')), step_ms=$(jump_ms) ~ the sleep (${slept} s)" \
    one_jump "$(awk -v s="$slept" 'BEGIN { print s * 1000 }')" 1500
  # The kernel's "PM: suspend exit" is the resume; its own timestamp, not journald's reading of it.
  resumed=$(timeout 30 journalctl -k -b -o json --no-pager | jq -r 'select(.MESSAGE | tostring | startswith("PM: suspend exit"))
    | (._SOURCE_MONOTONIC_TIMESTAMP // .__MONOTONIC_TIMESTAMP) | tonumber / 1e6' | tail -n1)
  fact clock_suspend "suspend to RAM (S3) for $slept s: one clock_jump step_ms=$(jump_ms), logged $(minus "$(first_at 'event=clock_jump')" "$resumed") s after the kernel's resume; material valid; a renewal right after took $(minus "$(first_at 'event=certificate_issued name=sidecar ')" "$(first_at 'event=renewal_requested')") s"
  echo "clock checks: end, wall clock $(date -u +%FT%T.%NZ), uptime $(uptime_now)"
}
