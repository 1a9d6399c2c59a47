#!/usr/bin/env bash
# Builds Sinkline and runs the whole test suite: unit tests and the
# multi-process integration tests with real SMTP clients.
#   PRESET=asan scripts/test.sh   runs the unit tests, and the integration
#   tests labelled "sanitized", with address+undefined sanitizers.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
preset=${PRESET:-dev}
"$root/scripts/install-deps.sh"
cd "$root"
cmake --preset "$preset" >/dev/null
if [[ "$preset" == asan ]]; then
  cmake --build --preset "$preset" --target sanitized_tests
else
  cmake --build --preset "$preset"
fi
ctest --preset "$preset" "$@"
