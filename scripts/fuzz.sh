#!/usr/bin/env bash
# Fuzzes the SMTP parser and session state machine (tests/fuzz/) with
# libFuzzer for a bounded time: builds the `fuzz` preset (clang, address and
# undefined-behaviour sanitizers) and runs bin/session_fuzz from the seed
# corpus in tests/fuzz/corpus (read only; new inputs go to build/fuzz/work).
#   scripts/fuzz.sh [seconds]            default 60
#   scripts/fuzz.sh --no-build [seconds] use $SINKLINE_FUZZ_BIN as it is
# A failing input is written to build/fuzz/artifacts/; replay it with any
# build: build/dev/tests/fuzz/session_fuzz_replay <file>.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=1
if [[ "${1:-}" == --no-build ]]; then
  build=0
  shift
fi
seconds=${1:-60}
if [[ ! "$seconds" =~ ^[0-9]+$ ]]; then
  echo "usage: $0 [--no-build] [seconds]" >&2
  exit 2
fi
cd "$root"
if [[ $build == 1 ]]; then
  cmake --preset fuzz >/dev/null
  nice cmake --build --preset fuzz --target session_fuzz
fi
bin=${SINKLINE_FUZZ_BIN:-$root/build/fuzz/bin/session_fuzz}
work=${SINKLINE_FUZZ_WORK:-$root/build/fuzz/work}
artifacts=${SINKLINE_FUZZ_ARTIFACTS:-$root/build/fuzz/artifacts}
mkdir -p "$work" "$artifacts"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
exec "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
  -max_len=16384 -print_final_stats=1 -artifact_prefix="$artifacts/" \
  "$work" "$root/tests/fuzz/corpus"
