#!/usr/bin/env bash
# The .deb end to end: build it with CPack, inspect its contents and control data, lint it,
# rate the units' hardening, install it on this machine, run the installed binary, verify the
# installed units, then remove and purge it and check what each leaves behind.
#
# Needs root (dpkg -i). It never leaves the package installed: an EXIT trap purges it. It
# refuses to touch a certagent package it did not install itself (a developer's real install,
# with a real identity), unless a previous run of this test left it behind (marker file).
#
# Environment (set by CTest): CERTAGENT_BUILD_DIR, CERTAGENT_SOURCE_DIR, CERTAGENT_VERSION,
# CERTAGENT_CPACK.
set -uo pipefail

build_dir=${CERTAGENT_BUILD_DIR:?}
source_dir=${CERTAGENT_SOURCE_DIR:?}
version=${CERTAGENT_VERSION:?}
cpack=${CERTAGENT_CPACK:-cpack}
max_exposure=2.0
marker=/var/lib/certagent-package-test.marker

failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }
die() { echo "FAIL: $*" >&2; exit 1; }
check() {  # check "description" command...
  local what=$1; shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}

# True while dpkg holds anything of certagent (installed, or removed with its conffiles left).
installed() { dpkg-query -W -f='${Status}' certagent 2>/dev/null | grep -q ' installed$\| config-files$'; }
export -f installed

tmp=$(mktemp -d /tmp/certagent-package-test.XXXXXX)
cleanup() {
  if [ -e "$marker" ] && installed; then
    echo "cleanup: purging the test's certagent package"
    dpkg -P certagent >/dev/null 2>&1 || true
  fi
  rm -f "$marker"
  rm -rf "$tmp"
}
trap cleanup EXIT

# ---- preconditions ---------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "this test installs a package: run it as root (CI runs as root)"
for tool in "$cpack" dpkg dpkg-deb dpkg-query lintian systemd-analyze systemd-sysusers \
    systemd-tmpfiles readelf man runuser getent stat; do
  command -v "$tool" >/dev/null || die "missing program: $tool (scripts/install-deps.sh test)"
done
if installed; then
  if [ -e "$marker" ]; then
    echo "a previous run left certagent installed: purging it"
    dpkg -P certagent >/dev/null || die "could not purge the leftover test package"
  else
    die "certagent is already installed on this machine and not by this test; purge it first"
  fi
fi

# ---- build -----------------------------------------------------------------------------------
[ -f "$build_dir/CPackConfig.cmake" ] || die "no CPackConfig.cmake in $build_dir"
if ! (cd "$tmp" && "$cpack" --config "$build_dir/CPackConfig.cmake" -G DEB -B "$tmp/out") \
    >"$tmp/cpack.log" 2>&1; then
  cat "$tmp/cpack.log" >&2
  die "cpack -G DEB failed"
fi
deb=$(ls "$tmp"/out/certagent_*.deb 2>/dev/null | head -n1)
[ -n "$deb" ] || { cat "$tmp/cpack.log" >&2; die "cpack made no certagent_*.deb"; }
pass "built $(basename "$deb") ($(stat -c %s "$deb") bytes)"
check "file name carries version $version-1" \
  test "$(basename "$deb")" = "certagent_${version}-1_$(dpkg --print-architecture).deb"

# ---- contents --------------------------------------------------------------------------------
dpkg-deb -c "$deb" >"$tmp/contents" || die "dpkg-deb -c failed"
# "mode owner/group size date time ./path" -> "path mode owner"
awk '{ sub(/^\./, "", $6); print $6, $1, $2 }' "$tmp/contents" >"$tmp/files"
has() {  # has path mode
  local line
  line=$(awk -v p="$1" '$1 == p' "$tmp/files")
  [ -n "$line" ] || { echo "  $1 missing from the package" >&2; return 1; }
  [ "$(echo "$line" | awk '{print $2}')" = "$2" ] ||
    { echo "  $1: mode $(echo "$line" | awk '{print $2}'), expected $2" >&2; return 1; }
}
for entry in \
    "/usr/bin/certagent -rwxr-xr-x" \
    "/usr/lib/certagent/certagent-sidecar.so -rw-r--r--" \
    "/etc/certagent/agent.yaml -rw-r--r--" \
    "/usr/lib/systemd/system/certagent.service -rw-r--r--" \
    "/usr/lib/systemd/system/certagent-enroll.service -rw-r--r--" \
    "/usr/lib/sysusers.d/certagent.conf -rw-r--r--" \
    "/usr/lib/tmpfiles.d/certagent.conf -rw-r--r--" \
    "/usr/share/man/man8/certagent.8.gz -rw-r--r--" \
    "/usr/share/bash-completion/completions/certagent -rw-r--r--" \
    "/usr/share/doc/certagent/copyright -rw-r--r--" \
    "/usr/share/doc/certagent/changelog.Debian.gz -rw-r--r--" \
    "/usr/share/doc/certagent/examples/prometheus-alerts.yaml -rw-r--r--" \
    "/usr/share/doc/certagent/examples/systemd/nginx-reload.conf -rw-r--r--" \
    "/usr/share/doc/certagent/examples/systemd/file-owner.conf -rw-r--r--" \
    "/usr/share/doc/certagent/examples/systemd/acme-http01.conf -rw-r--r--" \
    "/usr/share/doc/certagent/examples/systemd/certagent-systemctl.rules -rw-r--r--"; do
  # shellcheck disable=SC2086
  check "package has ${entry% *} (${entry##* })" has $entry
done
for example in "$source_dir"/examples/*.yaml; do
  name=$(basename "$example")
  check "package has example $name" \
    grep -qx "/usr/share/doc/certagent/examples/$name .*" "$tmp/files"
done
check "every file is owned by root/root" \
  test -z "$(awk '$3 != "root/root"' "$tmp/files")"
check "no state, identity or issued material in the package" \
  test -z "$(awk '$1 ~ "^/(var|run)/" || $1 ~ "^/etc/certagent/(live|secrets)/."' "$tmp/files")"

# ---- control data ----------------------------------------------------------------------------
mkdir -p "$tmp/control" "$tmp/root"
dpkg-deb -e "$deb" "$tmp/control" || die "dpkg-deb -e failed"
dpkg-deb -x "$deb" "$tmp/root" || die "dpkg-deb -x failed"
field() { dpkg-deb -f "$deb" "$1"; }
echo "Depends: $(field Depends)"
check "Package: certagent" test "$(field Package)" = certagent
check "Version: $version-1" test "$(field Version)" = "$version-1"
check "Section: admin" test "$(field Section)" = admin
check "Priority: optional" test "$(field Priority)" = optional
check "Maintainer set" test -n "$(field Maintainer)"
for dep in libc6 libssl3 libtss2-esys systemd init-system-helpers procps; do
  check "Depends names $dep" grep -q "$dep" <<<"$(field Depends)"
done
check "/etc/certagent/agent.yaml is a conffile" grep -qx /etc/certagent/agent.yaml "$tmp/control/conffiles"
for script in postinst prerm postrm; do
  check "$script is executable" test -x "$tmp/control/$script"
done
check "md5sums present" test -s "$tmp/control/md5sums"
check "binary is stripped" bash -c "! readelf -S '$tmp/root/usr/bin/certagent' | grep -q '\.symtab\|\.debug_info'"

# ---- lintian ---------------------------------------------------------------------------------
# Errors fail the test; warnings and infos are printed (each one left is justified in
# packaging/lintian-overrides or in packaging/CMakeLists.txt).
lintian --info --display-info --fail-on error "$deb" >"$tmp/lintian.log" 2>&1
lintian_rc=$?
echo "---- lintian ($(grep -c '^E:' "$tmp/lintian.log") errors, $(grep -c '^W:' "$tmp/lintian.log") warnings, $(grep -c '^I:' "$tmp/lintian.log") infos)"
grep -v '^N:' "$tmp/lintian.log"
echo "----"
check "lintian reports no error" test "$lintian_rc" -eq 0

# ---- hardening (offline, from the package's own unit files) -----------------------------------
exposure() {  # exposure unit-file [SYSTEMD_UNIT_PATH]
  local out
  out=$(SYSTEMD_UNIT_PATH=${2:-} systemd-analyze security --offline=yes "$1" 2>&1)
  sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$out"
}
at_most() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a != "" && a + 0 <= b + 0) }'; }
for unit in certagent.service certagent-enroll.service; do
  score=$(exposure "$tmp/root/usr/lib/systemd/system/$unit")
  echo "exposure $unit: ${score:-?}"
  check "$unit exposure ${score:-?} <= $max_exposure" at_most "$score" "$max_exposure"
done

# ---- install ---------------------------------------------------------------------------------
touch "$marker"
dpkg -i "$deb" >"$tmp/dpkg-i.log" 2>&1 || { cat "$tmp/dpkg-i.log" >&2; die "dpkg -i failed"; }
pass "dpkg -i"
check "dpkg says installed" test "$(dpkg-query -W -f='${Status}' certagent)" = "install ok installed"

check "user certagent exists" getent passwd certagent
check "certagent's home is /var/lib/certagent, shell nologin" \
  test "$(getent passwd certagent | cut -d: -f6,7)" = "/var/lib/certagent:/usr/sbin/nologin"
check "certagent is in group tss" grep -qw tss <<<"$(id -nG certagent)"
owner_mode() { stat -c '%U:%G %a' "$1" 2>/dev/null; }
check "/var/lib/certagent certagent:certagent 700" test "$(owner_mode /var/lib/certagent)" = "certagent:certagent 700"
check "/run/certagent certagent:certagent 755" test "$(owner_mode /run/certagent)" = "certagent:certagent 755"
check "/etc/certagent/live certagent:certagent 755" test "$(owner_mode /etc/certagent/live)" = "certagent:certagent 755"
check "/etc/certagent/secrets certagent:certagent 700" test "$(owner_mode /etc/certagent/secrets)" = "certagent:certagent 700"
check "/etc/certagent/agent.yaml root:root 644" test "$(owner_mode /etc/certagent/agent.yaml)" = "root:root 644"
check "certagent.service enabled" test -L /etc/systemd/system/multi-user.target.wants/certagent.service
check "no identity created by installing" test ! -e /var/lib/certagent/identity

# The installed binary, from its installed path.
out=$(/usr/bin/certagent version 2>&1); rc=$?
echo "certagent version: $out"
check "certagent version exits 0" test "$rc" -eq 0
check "certagent version prints $version" grep -qF "$version" <<<"$out"
/usr/bin/certagent --help >"$tmp/help" 2>&1; rc=$?
check "certagent --help exits 0" test "$rc" -eq 0
out=$(/usr/bin/certagent check-config --config /etc/certagent/agent.yaml 2>&1); rc=$?
check "check-config of the shipped config exits 0" test "$rc" -eq 0
[ "$rc" -eq 0 ] || echo "$out" | head -20 >&2
out=$(runuser -u certagent -- /usr/bin/certagent check-config --config /etc/certagent/agent.yaml 2>&1); rc=$?
check "check-config as user certagent exits 0" test "$rc" -eq 0
[ "$rc" -eq 0 ] || echo "$out" | head -20 >&2
printf 'state_dir: /var/lib/certagent\nno_such_key: 1\n' >"$tmp/bad.yaml"
/usr/bin/certagent check-config --config "$tmp/bad.yaml" >"$tmp/bad.out" 2>&1; rc=$?
check "check-config of a bad config exits 2 (got $rc)" test "$rc" -eq 2

# Man page: found by man, renders without groff warnings.
check "man -w certagent finds the page" test "$(man -w certagent 2>/dev/null)" = /usr/share/man/man8/certagent.8.gz
warnings=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l /usr/share/man/man8/certagent.8.gz 2>&1 >/dev/null)
check "man page renders without warnings" test -z "$warnings"
[ -z "$warnings" ] || echo "$warnings" >&2

# Bash completion, with bash-completion's two helpers stubbed.
complete_words() {  # complete_words "certagent sta"
  bash -c '
    _init_completion() { cur=${COMP_WORDS[COMP_CWORD]}; prev=${COMP_WORDS[COMP_CWORD-1]};
                         words=("${COMP_WORDS[@]}"); cword=$COMP_CWORD; }
    _filedir() { COMPREPLY=(FILES); }
    source /usr/share/bash-completion/completions/certagent
    read -ra COMP_WORDS <<<"$1"; [[ "$1" == *" " ]] && COMP_WORDS+=("")
    COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
    _certagent; echo "${COMPREPLY[*]}"' _ "$1"
}
check "completion: certagent che -> check-config" test "$(complete_words 'certagent che')" = check-config
check "completion: status options" test "$(complete_words 'certagent status --')" = "--config --socket --json --help"
check "completion: --config completes files" test "$(complete_words 'certagent run --config ')" = FILES
check "completion: enroll options" test "$(complete_words 'certagent enroll --config x.yaml --')" = "--config --csr-out --csr-subject --help"

# Units as installed (the binary and man page now exist, so verify has nothing to excuse).
out=$(systemd-analyze verify /usr/lib/systemd/system/certagent.service \
  /usr/lib/systemd/system/certagent-enroll.service 2>&1); rc=$?
check "systemd-analyze verify the installed units" test "$rc" -eq 0 -a -z "$out"
[ -z "$out" ] || echo "$out" >&2
for unit in certagent.service certagent-enroll.service; do
  score=$(exposure "/usr/lib/systemd/system/$unit")
  check "installed $unit exposure ${score:-?} <= $max_exposure" at_most "$score" "$max_exposure"
done
# Each example drop-in loads and verifies; their exposure is printed for the docs.
for dropin in /usr/share/doc/certagent/examples/systemd/*.conf; do
  unitdir="$tmp/units-$(basename "$dropin" .conf)"
  mkdir -p "$unitdir/certagent.service.d"
  cp /usr/lib/systemd/system/certagent.service /usr/lib/systemd/system/certagent-enroll.service "$unitdir/"
  cp "$dropin" "$unitdir/certagent.service.d/"
  out=$(SYSTEMD_UNIT_PATH="$unitdir:" systemd-analyze verify "$unitdir/certagent.service" 2>&1); rc=$?
  check "drop-in $(basename "$dropin") verifies" test "$rc" -eq 0 -a -z "$out"
  [ -z "$out" ] || echo "$out" >&2
  echo "exposure with $(basename "$dropin"): $(exposure certagent.service "$unitdir:")"
done

# ---- remove: binary gone; configuration, state and identity kept -----------------------------
mkdir -p /var/lib/certagent/identity
echo "test identity" >/var/lib/certagent/identity/identity.pub
dpkg -r certagent >"$tmp/dpkg-r.log" 2>&1 || { cat "$tmp/dpkg-r.log" >&2; die "dpkg -r failed"; }
pass "dpkg -r"
check "dpkg says config-files after remove" test "$(dpkg-query -W -f='${Status}' certagent)" = "deinstall ok config-files"
check "binary removed" test ! -e /usr/bin/certagent
check "units removed" test ! -e /usr/lib/systemd/system/certagent.service
check "conffile kept on remove" test -f /etc/certagent/agent.yaml
check "identity kept on remove" test -f /var/lib/certagent/identity/identity.pub

# ---- purge: everything the package made goes, identity included (documented) -----------------
dpkg -P certagent >"$tmp/dpkg-p.log" 2>&1 || { cat "$tmp/dpkg-p.log" >&2; die "dpkg -P failed"; }
pass "dpkg -P"
check "dpkg no longer knows certagent" bash -c '! installed' 
check "/etc/certagent removed on purge" test ! -e /etc/certagent
check "/var/lib/certagent (identity) removed on purge" test ! -e /var/lib/certagent
check "/run/certagent removed on purge" test ! -e /run/certagent
leftovers=$(find /etc/systemd/system /usr/lib/systemd/system /usr/lib/tmpfiles.d /usr/lib/sysusers.d \
  /usr/share/doc/certagent /usr/share/man/man8 -name '*certagent*' 2>/dev/null)
check "no unit, enablement link or doc left behind" test -z "$leftovers"
[ -z "$leftovers" ] || echo "$leftovers" >&2
rm -f "$marker"

echo
if [ "$failures" -ne 0 ]; then
  echo "$failures check(s) failed" >&2
  exit 1
fi
echo "all packaging checks passed"
