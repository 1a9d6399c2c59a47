#!/usr/bin/env bash
# Builds Sinkline and runs the whole test suite: unit tests and the
# multi-process integration tests with real SMTP clients.
#   PRESET=asan scripts/test.sh   runs the unit tests, and the integration
#   tests labelled "sanitized", with address+undefined sanitizers.
#   SINKLINE_UNITY_BUILD=ON       compiles each component in a few large
#                                 translation units (CMake's unity build):
#                                 a whole build in about half the CPU time,
#                                 slower to rebuild after a one-file change
#                                 (.ci/run sets it; default OFF).
#   CTEST_PARALLEL_LEVEL=N        tests run at once (default 2).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
preset=${PRESET:-dev}
"$root/scripts/install-deps.sh"
cd "$root"
cmake --preset "$preset" \
  -DCMAKE_UNITY_BUILD="${SINKLINE_UNITY_BUILD:-OFF}" >/dev/null
if [[ "$preset" == asan ]]; then
  cmake --build --preset "$preset" --target sanitized_tests
else
  cmake --build --preset "$preset"
fi
ctest --preset "$preset" -j "${CTEST_PARALLEL_LEVEL:-2}" "$@"
