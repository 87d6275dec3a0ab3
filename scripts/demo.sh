#!/usr/bin/env bash
# The README's demo: installs what is missing, builds, and runs the daemon against the
# embedded development CA with one-minute certificates. Ctrl-C stops it.
#   DEMO_SECONDS=N scripts/demo.sh   stops by itself after N seconds
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh build demo
build_dir=${BUILD_DIR:-build}
cmake -G Ninja -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCERTAGENT_TESTS=OFF \
  -DCERTAGENT_BENCH=OFF >/dev/null
cmake --build "$build_dir" --target certagent -j "$(nproc)"
bin="$build_dir/agent/certagent"

mkdir -p /tmp/certagent-demo
"$bin" check-config --config examples/dev.yaml >/dev/null

cat <<MSG

== certagent demo ==========================================================================
Certificates live 1 minute and rotate about every 30 s. While it runs, in another terminal:
  ls -l /tmp/certagent-demo/live/web/            # ..data swaps to a new generation each time
  openssl x509 -noout -serial -enddate -in /tmp/certagent-demo/live/web/cert.pem
  $bin status --socket /tmp/certagent-demo/agent.sock
  curl -s --unix-socket /tmp/certagent-demo/agent.sock http://localhost/v1/certificates
  curl -s http://127.0.0.1:9464/metrics | grep ^certagent_
  tail -f /tmp/certagent-demo/state/audit.log
Stop with Ctrl-C.
=============================================================================================

MSG
if [ -n "${DEMO_SECONDS:-}" ]; then
  exec timeout --signal=TERM --preserve-status "$DEMO_SECONDS" "$bin" run --config examples/dev.yaml
fi
exec "$bin" run --config examples/dev.yaml
