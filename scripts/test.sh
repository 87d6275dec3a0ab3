#!/usr/bin/env bash
# The README's test command (and CI's): installs what is missing, builds, and runs every test.
# Then (unless SANITIZE=0) it builds once more with clang under AddressSanitizer +
# UndefinedBehaviorSanitizer (LeakSanitizer on) with the libFuzzer harnesses, runs the suite
# there (each harness over its seed corpus included) and fuzzes each harness for FUZZ_SECONDS
# (default 20). Any crash, leak, UB report or broken invariant fails the run, in a test's own
# process or in one it starts (the daemon, the CLI). Each stage prints its wall time; what each
# costs is in the README's "Reliability" section.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each stage prints its wall time and the disk it leaves: CI's disk is finite, and a full run
# (two build trees, the booted image's disks, the tests' temporary servers) needs room.
free_gib() { df -Pk "${1:-.}" | awk 'NR == 2 { printf "%.1f", $4 / 1048576 }'; }
used_gib() { du -sk "$@" 2>/dev/null | awk '{ s += $1 } END { printf "%.1f", s / 1048576 }'; }
stage_start=$SECONDS
stage() {
  echo "test.sh: $1 took $((SECONDS - stage_start)) s; disk: $(free_gib) GiB free," \
    "build trees $(used_gib "$build_dir" "$san_dir") GiB, /tmp $(free_gib /tmp) GiB free"
  stage_start=$SECONDS
}

build_dir=${BUILD_DIR:-build}
san_dir=${SAN_BUILD_DIR:-build-san}
sanitize=${SANITIZE:-1}
# Measured on a clean clone: trees of 1.1 and 1.9 GiB, and the image test's disks (up to ~1.2 GiB
# while it runs); see the README's Reliability section.
if [ "$(free_gib | cut -d. -f1)" -lt 4 ]; then
  echo "test.sh: warning: only $(free_gib) GiB free here; a full run needs about 4" >&2
fi
groups=(build test image)
[ "$sanitize" = 0 ] || groups+=(fuzz)
scripts/install-deps.sh "${groups[@]}"
stage "install"

# Line tables only (CERTAGENT_DEBUG_INFO=lines): backtraces and sanitizer reports keep file:line,
# and a tree takes about a third of the disk that full debug information would.
cmake -G Ninja -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCERTAGENT_WERROR=ON \
  -DCERTAGENT_DEBUG_INFO=lines
cmake --build "$build_dir" -j "$(nproc)"
stage "build"
ctest --test-dir "$build_dir" --output-on-failure -j "$(nproc)" --timeout 900 "$@"
stage "tests"

if [ "$sanitize" = 0 ]; then exit 0; fi

# One clang build serves both: libraries with ASan+UBSan and libFuzzer's coverage hooks, the
# harnesses linked with libFuzzer, the tests with the sanitizer runtimes only. Hardening is off
# (_FORTIFY_SOURCE hides overflows from ASan); benchmarks are not built. Warnings are errors in
# the g++ build above; clang's own extra warnings do not fail this one.
cmake -G Ninja -S . -B "$san_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCERTAGENT_WERROR=OFF \
  -DCERTAGENT_DEBUG_INFO=lines \
  -DCMAKE_CXX_COMPILER=clang++-14 -DCERTAGENT_SANITIZE=address,undefined -DCERTAGENT_FUZZ=ON \
  -DCERTAGENT_HARDENING=OFF -DCERTAGENT_BENCH=OFF
cmake --build "$san_dir" -j "$(nproc)"
stage "sanitizer build"
# The whole-system tests (booted image, packaging, scale, chaos, reloads under load) run in the
# normal build only: they test the system rather than memory safety, and would double CI's time.
# no_sanitizer: tests that cannot work under ASan (core_dump_test: ASan turns core dumps off).
# *MemoryStaysBounded*: RSS bounds mean nothing under ASan (shadow memory, quarantine).
# Every sanitizer report goes to a file in $reports, so that one from a process a test started
# (the daemon stopped with SIGTERM, a CLI run) fails the stage even when that test does not look
# at the exit status. No suppressions: the run has none to hide (gRPC, OpenSSL, tpm2-tss, yaml-cpp
# included); an artefact of a Debian library would get a narrow one here, with why.
reports=$(cd "$san_dir" && pwd)/sanitizer-reports
rm -rf "$reports" && mkdir -p "$reports"
san_rc=0
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:log_path=$reports/report} \
  UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1:log_path=$reports/report} \
  GTEST_FILTER=${GTEST_FILTER:--*MemoryStaysBounded*} \
  ctest --test-dir "$san_dir" --output-on-failure -j "$(nproc)" --timeout 900 \
  -LE '^(image|packaging|scale|chaos|load|no_sanitizer)$' || san_rc=$?
if compgen -G "$reports/*" >/dev/null; then
  for r in "$reports"/*; do
    echo "test.sh: sanitizer report $r:"
    head -c 20000 "$r"
  done
  echo "test.sh: $(ls "$reports" | wc -l) sanitizer report(s) above" >&2
  san_rc=1
fi
stage "sanitizer tests"
[ "$san_rc" = 0 ] || exit "$san_rc"
scripts/fuzz.sh "$san_dir" "${FUZZ_SECONDS:-20}"
stage "fuzzing"
