#!/usr/bin/env bash
# Installs the Debian 12 packages that Sinkline's build, stack and tests need.
# Idempotent: when everything is present it only checks and returns.
set -euo pipefail

packages=(
  # build
  build-essential cmake ninja-build pkg-config clang-format
  protobuf-compiler protobuf-compiler-grpc libprotobuf-dev libgrpc++-dev
  libabsl-dev libboost-dev libboost-system-dev libssl-dev libyaml-cpp-dev
  libspdlog-dev libfmt-dev libgtest-dev libgmock-dev libbenchmark-dev
  libopendkim-dev
  # stack
  openssl ca-certificates procps
  # tests and first steps
  python3 python3-grpcio python3-protobuf python3-aiosmtpd swaks
  python3-dkim python3-nacl
  # Postfix as a client of the edge and as the relay's next hop (private
  # instances under each test's directory; the system one is not set up)
  postfix
)

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "install-deps: installing ${missing[*]}" >&2
sudo=""
[[ $(id -u) -ne 0 ]] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
if [[ " ${missing[*]} " == *" postfix "* ]]; then
  echo "postfix postfix/main_mailer_type select No configuration" |
    $sudo debconf-set-selections
fi
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
