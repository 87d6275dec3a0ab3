#!/usr/bin/env bash
# Includes only point down: core/ <- tpm/ renewers/ reloaders/ (plug-ins) <- agent/.
#  - core/ includes nothing outside core/;
#  - a plug-in folder includes core/, its own files, and the three plug-in interface headers
#    (tpm/identity.h, renewers/renewer.h, reloaders/reloader.h), never agent/ or another
#    plug-in's implementation;
#  - only agent/ includes implementation headers of plug-ins.
# Prints every violation as file:line: include, exits 1 if there is any. Run by CTest (layout_test).
set -euo pipefail
cd "${1:-$(dirname "$0")/..}"

folders=()
for f in core tpm renewers reloaders agent; do [ -d "$f" ] && folders+=("$f"); done
[ ${#folders[@]} -gt 0 ] || { echo "check-layout: no source folders here" >&2; exit 2; }

grep -rnE '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "${folders[@]}" \
    --include='*.h' --include='*.cpp' --include='*.cc' |
awk '
  {
    split($0, parts, ":"); file = parts[1]; line = parts[2]
    folder = file; sub(/\/.*/, "", folder)
    inc = $0; sub(/^[^"]*"/, "", inc); sub(/".*$/, "", inc)
    interface = (inc ~ /^(tpm\/identity\.h|renewers\/renewer\.h|reloaders\/reloader\.h)$/)
    if (folder == "core") {
      ok = (inc ~ /^core\//); allowed = "core/ only"
    } else if (folder == "agent") {
      # Generated headers (protobuf) live in the build tree and are included by bare name.
      ok = (inc ~ /^(core|agent|tpm|renewers|reloaders)\// || inc ~ /\.pb\.h$/)
      allowed = "anything below it"
    } else {
      ok = (inc ~ ("^(core|" folder ")/") || interface)
      allowed = "core/, " folder "/ and the plug-in interface headers"
    }
    if (!ok) { printf "%s:%s: includes \"%s\" (%s/ may include: %s)\n", file, line, inc, folder, allowed; bad++ }
  }
  END {
    if (bad) { printf "check-layout: %d include(s) point up or sideways\n", bad > "/dev/stderr"; exit 1 }
    print "check-layout: every include points down"
  }'
