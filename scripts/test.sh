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

stage_start=$SECONDS
stage() {
  echo "test.sh: $1 took $((SECONDS - stage_start)) s"
  stage_start=$SECONDS
}

sanitize=${SANITIZE:-1}
groups=(build test image)
[ "$sanitize" = 0 ] || groups+=(fuzz)
scripts/install-deps.sh "${groups[@]}"
stage "install"

build_dir=${BUILD_DIR:-build}
cmake -G Ninja -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCERTAGENT_WERROR=ON
cmake --build "$build_dir" -j "$(nproc)"
stage "build"
ctest --test-dir "$build_dir" --output-on-failure -j "$(nproc)" --timeout 900 "$@"
stage "tests"

if [ "$sanitize" = 0 ]; then exit 0; fi

# One clang build serves both: libraries with ASan+UBSan and libFuzzer's coverage hooks, the
# harnesses linked with libFuzzer, the tests with the sanitizer runtimes only. Hardening is off
# (_FORTIFY_SOURCE hides overflows from ASan); benchmarks are not built. Warnings are errors in
# the g++ build above; clang's own extra warnings do not fail this one.
san_dir=${SAN_BUILD_DIR:-build-san}
cmake -G Ninja -S . -B "$san_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCERTAGENT_WERROR=OFF \
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
