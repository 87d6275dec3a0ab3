#!/usr/bin/env bash
# The README's test command: installs what is missing, builds, and runs every test. With
# SANITIZE=1 it then builds once more with clang under AddressSanitizer + UndefinedBehaviorSanitizer (LeakSanitizer on)
# with the libFuzzer harnesses, runs the suite there (each harness over its seed corpus included)
# and fuzzes each harness for FUZZ_SECONDS (default 20). Any crash, leak, UB report or broken
# invariant fails the run. Each stage prints its wall time.
# The second build is opt-in (SANITIZE=1) until it has been run end to end on a clean machine:
# the daemon, the gRPC sidecar and most tests have not yet been built with clang here, and CI
# must stay green (see the README's "Reliability" section).
set -euo pipefail
cd "$(dirname "$0")/.."

stage_start=$SECONDS
stage() {
  echo "test.sh: $1 took $((SECONDS - stage_start)) s"
  stage_start=$SECONDS
}

sanitize=${SANITIZE:-0}
groups=(build test image)
[ "$sanitize" = 1 ] && groups+=(fuzz)
scripts/install-deps.sh "${groups[@]}"
stage "install"

build_dir=${BUILD_DIR:-build}
cmake -G Ninja -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCERTAGENT_WERROR=ON
cmake --build "$build_dir" -j "$(nproc)"
stage "build"
ctest --test-dir "$build_dir" --output-on-failure -j "$(nproc)" --timeout 900 "$@"
stage "tests"

[ "$sanitize" = 1 ] || exit 0

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
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
GTEST_FILTER=${GTEST_FILTER:--*MemoryStaysBounded*} ctest --test-dir "$san_dir" --output-on-failure -j "$(nproc)" --timeout 900 \
  -LE '^(image|packaging|scale|chaos|load|no_sanitizer)$'
stage "sanitizer tests"
scripts/fuzz.sh "$san_dir" "${FUZZ_SECONDS:-20}"
stage "fuzzing"
