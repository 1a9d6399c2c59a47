#!/usr/bin/env bash
# Runs every fuzz target (tests/fuzz/, docs/testing.md "Fuzzing") with
# libFuzzer for a bounded time: builds the `fuzz` preset (clang, address and
# undefined-behaviour sanitizers), then runs each bin/<target> from its seed
# corpus tests/fuzz/corpus/<name>/ (read only; new inputs go to
# build/fuzz/work/<name>/), one after the other.
#   scripts/fuzz.sh [seconds] [target...]   default 60 seconds in all, shared
#                                           evenly (at least 5 each); default
#                                           every target
#   scripts/fuzz.sh --no-build ...          use the binaries in
#                                           $SINKLINE_FUZZ_BIN_DIR as they are
#   SINKLINE_UNITY_BUILD=ON                 build as scripts/test.sh does
# A failing input is written to build/fuzz/artifacts/<name>/; replay it with
# any build: build/dev/tests/fuzz/<target>_replay <file>. Exits non-zero
# when any target found something.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
all=(session_fuzz proxy_fuzz config_fuzz verdict_fuzz content_fuzz
     session_stream_fuzz)
build=1
if [[ "${1:-}" == --no-build ]]; then
  build=0
  shift
fi
seconds=${1:-60}
if [[ ! "$seconds" =~ ^[0-9]+$ ]]; then
  echo "usage: $0 [--no-build] [seconds] [target...]" >&2
  exit 2
fi
shift || true
targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=("${all[@]}")
for t in "${targets[@]}"; do
  if [[ ! " ${all[*]} " == *" $t "* ]]; then
    echo "unknown target $t (targets: ${all[*]})" >&2
    exit 2
  fi
done
each=$((seconds / ${#targets[@]}))
((each < 5)) && each=5
cd "$root"
if [[ $build == 1 ]]; then
  cmake --preset fuzz -DCMAKE_UNITY_BUILD="${SINKLINE_UNITY_BUILD:-OFF}" \
    >/dev/null
  nice cmake --build --preset fuzz --target "${targets[@]}"
fi
bin_dir=${SINKLINE_FUZZ_BIN_DIR:-$root/build/fuzz/bin}
work=${SINKLINE_FUZZ_WORK:-$root/build/fuzz/work}
artifacts=${SINKLINE_FUZZ_ARTIFACTS:-$root/build/fuzz/artifacts}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
failed=()
for t in "${targets[@]}"; do
  name=${t%_fuzz}
  mkdir -p "$work/$name" "$artifacts/$name"
  echo "== $t: ${each}s"
  if ! "$bin_dir/$t" -max_total_time="$each" -timeout=30 -rss_limit_mb=2048 \
      -max_len=16384 -print_final_stats=1 \
      -artifact_prefix="$artifacts/$name/" \
      "$work/$name" "$root/tests/fuzz/corpus/$name"; then
    failed+=("$t")
  fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzz: findings in ${failed[*]} (inputs in $artifacts/)" >&2
  exit 1
fi
echo "fuzz: ${targets[*]}: no finding"
