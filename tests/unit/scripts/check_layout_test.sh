#!/usr/bin/env bash
# scripts/check-layout.sh must fail on each kind of upward or sideways include and pass on a
# tree that only points down.
set -euo pipefail
check=${CERTAGENT_SOURCE_DIR:?}/scripts/check-layout.sh
t=$(mktemp -d); trap 'rm -rf "$t"' EXIT
mkdir -p "$t"/{core/crypto,tpm,renewers,reloaders,agent}
echo '#include "core/result.h"' > "$t/core/crypto/ok.h"
echo '#include "renewers/renewer.h"' > "$t/reloaders/ok.cpp"
echo '#include "tpm/identity.h"' > "$t/renewers/ok.cpp"
echo '#include "renewers/acme_renewer.h"' > "$t/agent/ok.cpp"
"$check" "$t" > /dev/null || { echo "FAIL: a clean tree was rejected"; exit 1; }

echo '#include "tpm/identity.h"' > "$t/core/crypto/up.h"
echo '#include "agent/store.h"' > "$t/renewers/up.cpp"
echo '  #  include "tpm/tpm_identity.h"' > "$t/reloaders/sideways.cpp"
if out=$("$check" "$t" 2>&1); then echo "FAIL: violations passed: $out"; exit 1; fi
for want in 'core/crypto/up.h:1: includes "tpm/identity.h"' 'renewers/up.cpp:1: includes "agent/store.h"' \
            'reloaders/sideways.cpp:1: includes "tpm/tpm_identity.h"'; do
  grep -qF "$want" <<<"$out" || { echo "FAIL: not reported: $want"; echo "$out"; exit 1; }
done
echo "check_layout_test: 1 passed, 0 failed"
