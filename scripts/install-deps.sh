#!/usr/bin/env bash
# Installs what certagent needs from Debian's packages: `build` for building it, `test` for the
# real servers the tests start, `image` for the booted-image test (tests/image: a Debian 12 root
# filesystem from mmdebstrap, booted under qemu with a swtpm TPM), `demo` for the demo, `bench`
# for the peers of the side-by-side ACME benchmark (bench/acme), `fuzz` for the sanitizer and
# libFuzzer build (clang; libclang-rt-14-dev holds the ASan/UBSan/libFuzzer runtimes, llvm-14 the
# symbolizer for readable reports), `java` (optional, not in CI) for keytool in
# file_sink_pkcs12_test. Run as root; only installs what is missing.
set -euo pipefail

build_pkgs=(cmake ninja-build g++ pkg-config libboost1.81-dev libboost-json1.81-dev libssl-dev
  libtss2-dev libyaml-cpp-dev libspdlog-dev libgtest-dev
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc libnghttp2-dev)
test_pkgs=(swtpm swtpm-tools tpm2-tools pebble golang-cfssl nginx-light haproxy wrk openssl curl
  procps util-linux systemd dpkg-dev lintian man-db binutils prometheus
  python3-grpcio python3-protobuf postgresql-15 postfix dovecot-imapd
  golang-go golang-github-golang-protobuf-1-5-dev golang-google-grpc-dev golang-google-protobuf-dev
  protoc-gen-go protoc-gen-go-grpc)
# qemu-utils: qemu-img for the per-instance overlays; e2fsprogs: mkfs.ext4 -d and debugfs.
image_pkgs=(mmdebstrap qemu-system-x86 qemu-utils e2fsprogs swtpm swtpm-tools golang-cfssl)
demo_pkgs=(openssl)
bench_pkgs=(lego uacme certbot)
# Optional, not called by CI: Java's keytool reads keystore.p12 in file_sink_pkcs12_test (the test
# is registered only when CMake finds keytool). ~44 MB download, 189 MB installed, plus a JVM run
# by ca-certificates-java's trigger: too slow for every CI run.
java_pkgs=(openjdk-17-jre-headless)
fuzz_pkgs=(clang-14 libclang-rt-14-dev llvm-14)

want=("${build_pkgs[@]}")
for group in "$@"; do
  case "$group" in
    build) ;;
    test) want+=("${test_pkgs[@]}") ;;
    image) want+=("${image_pkgs[@]}") ;;
    demo) want+=("${demo_pkgs[@]}") ;;
    bench) want+=("${bench_pkgs[@]}") ;;
    java) want+=("${java_pkgs[@]}") ;;
    fuzz) want+=("${fuzz_pkgs[@]}") ;;
    *) echo "install-deps.sh: unknown group '$group' (build | test | image | demo | bench | java | fuzz)" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#want[@]} packages present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]} (run as root, or install them)" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
