#!/usr/bin/env bash
# Profiles the broker and the edge under the comparison harness: runs
# bench/compare.py for one setup (bare or chain, 20 sessions) and, once its
# Sinkline processes are up and mail flows, records them with
# `perf record -g` and counts their system calls with `strace -c -f`, each
# for a bounded time. Prints the top of each report; the raw files stay in
# the output directory.
#   bench/profile.sh [bare|chain] [build/dev/bin] [out dir]
# Needs Debian's linux-perf and strace (installed here when missing).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
setup=${1:-bare}
bin=${2:-$root/build/dev/bin}
out=${3:-$(mktemp -d /tmp/sinkline-profile-XXXXXX)}
seconds=${PROFILE_SECONDS:-10}
command -v perf >/dev/null && command -v strace >/dev/null ||
  apt-get install -y linux-perf strace >/dev/null
mkdir -p "$out"
/usr/bin/python3 "$root/bench/compare.py" --bin "$bin" --setups "$setup" \
  --sessions 20 --repetitions 1 --messages 3000 --latency-messages 0 \
  >"$out/compare.txt" 2>&1 &
bench=$!
# An early exit interrupts the bench, which then stops what it started.
trap 'kill -INT "$bench" 2>/dev/null || true' EXIT
# The broker and edge started by this run: children of the bench process.
pids=()
for _ in $(seq 1 300); do
  mapfile -t pids < <(pgrep -P "$bench" -f 'sinkline-(broker|edge) ' || true)
  [[ ${#pids[@]} -ge 2 ]] && break
  sleep 0.1
done
if [[ ${#pids[@]} -lt 2 ]]; then
  echo "the bench's broker and edge did not start" >&2
  exit 1
fi
sleep 3  # past start-up, into the first repetition
list=$(IFS=,; echo "${pids[*]}")
tracers=()
for pid in "${pids[@]}"; do
  name=$(basename "$(tr '\0' ' ' </proc/"$pid"/cmdline | cut -d' ' -f1)")
  timeout -s INT "$seconds" strace -qq -c -f -p "$pid" \
    -o "$out/strace-$name.txt" &
  tracers+=($!)
done
timeout -s INT $((seconds + 2)) perf record -g -o "$out/perf.data" \
  -p "$list" -- sleep "$seconds" >/dev/null 2>&1 || true
wait "${tracers[@]}" || true
wait "$bench" || echo "the bench failed: see $out/compare.txt" >&2
trap - EXIT
for f in "$out"/strace-*.txt; do
  echo "== $(basename "$f")"
  head -20 "$f"
done
echo "== perf: by process and library"
perf report -i "$out/perf.data" --no-children --sort comm,dso -g none \
  --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -20
echo "== perf: hottest symbols"
perf report -i "$out/perf.data" --no-children --sort sym -g none \
  --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -30
echo "(raw files in $out)"
