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

interfaces='^(tpm/identity\.h|renewers/renewer\.h|reloaders/reloader\.h)$'
violations=0

check_folder() {  # folder, extended regex of allowed include paths, description[, interfaces ok]
  local folder=$1 allowed=$2 interfaces_ok=${4:-yes} file line inc
  while IFS= read -r hit; do
    file=${hit%%:*}; rest=${hit#*:}; line=${rest%%:*}
    inc=$(sed -E 's/.*#[[:space:]]*include[[:space:]]*"([^"]+)".*/\1/' <<<"$rest")
    grep -qE "$allowed" <<<"$inc" && continue
    [ "$interfaces_ok" = yes ] && grep -qE "$interfaces" <<<"$inc" && continue
    echo "$file:$line: includes \"$inc\" ($folder/ may include: $3)"
    violations=$((violations + 1))
  done < <(grep -rnE '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "$folder" --include='*.h' --include='*.cpp' --include='*.cc' || true)
}

check_folder core '^core/' 'core/ only' no
for plugin in tpm renewers reloaders; do
  check_folder "$plugin" "^(core|$plugin)/" "core/, $plugin/ and the plug-in interface headers"
done
# Generated headers (protobuf) live in the build tree and are included by bare name from agent/.
check_folder agent '^(core|agent|tpm|renewers|reloaders)/|\.pb\.h$' 'anything below it'

if [ "$violations" -gt 0 ]; then
  echo "check-layout: $violations include(s) point up or sideways" >&2
  exit 1
fi
echo "check-layout: every include points down"
