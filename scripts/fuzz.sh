#!/usr/bin/env bash
# Fuzzes every libFuzzer harness of a fuzz build (CERTAGENT_FUZZ=ON, see scripts/test.sh) for a
# fixed time each, FUZZ_JOBS at a time, starting from its committed seed corpus
# (tests/fuzz/corpus/<name>/) with its dictionary (tests/fuzz/<name>.dict) if it has one. New inputs go to a scratch directory, never into the repository.
# Any crash, leak, UB report, timeout or broken invariant fails the run; the input that caused
# it is kept under $FUZZ_ARTIFACTS (default <build>/fuzz-artifacts) and its report printed.
#
#   scripts/fuzz.sh BUILD_DIR [SECONDS_EACH] [NAME ...]     (default 20 s, every harness)
#
# FUZZ_JOBS: harnesses run at once (default: the number of cores; each fuzzer uses one).
#
# Prints one line per harness: executions, coverage (edges), CPU seconds and the outcome.
# FUZZ_WORK_DIR keeps the inputs found (one directory per harness) for a later run to go on from.
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir=${1:?usage: scripts/fuzz.sh BUILD_DIR [SECONDS_EACH] [NAME ...]}
seconds=${2:-20}
shift $(($# >= 2 ? 2 : $#))
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for c in tests/fuzz/corpus/*/; do names+=("$(basename "$c")"); done
fi

artifacts=${FUZZ_ARTIFACTS:-$build_dir/fuzz-artifacts}
mkdir -p "$artifacts"
if [ -n "${FUZZ_WORK_DIR:-}" ]; then
  scratch=$FUZZ_WORK_DIR
  mkdir -p "$scratch"
else
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
fi

# Leaks are findings; UB already aborts (-fno-sanitize-recover=all).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

for name in "${names[@]}"; do
  if [ ! -x "$build_dir/tests/fuzz/fuzz_$name" ]; then
    echo "fuzz: $build_dir/tests/fuzz/fuzz_$name is missing (configure with -DCERTAGENT_FUZZ=ON and build it)" >&2
    exit 2
  fi
done

# Fuzzes one harness; its outcome line goes to $scratch/$name.out, "failed" to $scratch/$name.failed.
fuzz_one() {
  local name=$1
  local bin=$build_dir/tests/fuzz/fuzz_$name corpus=tests/fuzz/corpus/$name
  local log=$scratch/$name.log out=$scratch/$name.out
  mkdir -p "$scratch/$name"
  local dict=()
  [ -f "tests/fuzz/$name.dict" ] && dict=(-dict="tests/fuzz/$name.dict")
  local start rc=0
  start=$(date +%s)
  # -timeout: one input taking 10 s is a finding (a hang); -rss_limit_mb: so is 2 GiB.
  TIMEFORMAT='%U %S'
  { time "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$artifacts/$name-" "${dict[@]}" "$scratch/$name" "$corpus" >"$log" 2>&1; } \
    2>"$scratch/$name.cpu" || rc=$?
  local wall cpu execs edges
  wall=$(($(date +%s) - start))
  cpu=$(awk '{ printf "%.0f", $1 + $2 }' "$scratch/$name.cpu" 2>/dev/null || echo "?")
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1 || true)
  edges=$( (grep -o 'cov: [0-9]*' "$log" || true) | tail -1 | cut -d' ' -f2)
  if [ "$rc" -eq 0 ]; then
    echo "fuzz: $name ok: ${execs:-?} executions in ${wall} s (${cpu} CPU s), ${edges:-?} edges" >"$out"
  else
    {
      echo "fuzz: $name FAILED (exit $rc) after ${execs:-?} executions in ${wall} s; report:"
      grep -v '^#[0-9]' "$log" | tail -60
      ls -1 "$artifacts" | grep "^$name-" | sed 's/^/fuzz:   input kept: /' || true
    } >"$out"
    touch "$scratch/$name.failed"
  fi
}

# FUZZ_JOBS harnesses at a time (default: one per core; each fuzzer uses one core), so the CI
# pass takes SECONDS_EACH x harnesses / cores. Outcomes are printed in the order of the names.
jobs=${FUZZ_JOBS:-$(nproc)}
for name in "${names[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
  fuzz_one "$name" &
done
wait
failed=()
for name in "${names[@]}"; do
  if [ -f "$scratch/$name.failed" ]; then
    cat "$scratch/$name.out" >&2
    failed+=("$name")
  else
    cat "$scratch/$name.out"
  fi
done

if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzz: findings in: ${failed[*]}" >&2
  exit 1
fi
