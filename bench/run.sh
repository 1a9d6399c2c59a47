#!/usr/bin/env bash
# Builds the release preset and runs Sinkline's benchmarks, printing tables.
#   bench/run.sh            all benchmarks
#   bench/run.sh broker     the broker's cost per event only
#   bench/run.sh stack      the whole stack with smtp-source only
#   bench/run.sh micro      micro-benchmarks (parser, session, rules, chain,
#                           commit, header edits)
#   bench/run.sh scale      the memory probes (bench/scale.py)
#   bench/run.sh profile    perf and strace of broker and edge under the
#                           comparison (bench/profile.sh; dev build)
#   bench/run.sh compare    Sinkline against Postfix + OpenDKIM (bench/compare.py;
#                           extra arguments go to it, e.g. --messages 300)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/install-deps.sh"
cd "$root"
which=${1:-all}
[[ $# -gt 0 ]] && shift
cmake --preset release >/dev/null
if [[ "$which" == profile ]]; then
  cmake --preset dev >/dev/null
  cmake --build --preset dev >/dev/null
  exec "$root/bench/profile.sh" "${1:-bare}" "$root/build/dev/bin" "${@:2}"
fi
if [[ "$which" == scale ]]; then
  cmake --build --preset release >/dev/null
  exec /usr/bin/python3 "$root/bench/scale.py" --bin build/release/bin "$@"
fi
if [[ "$which" == micro ]]; then
  cmake --build --preset release --target micro_bench >/dev/null
  out=$(mktemp)
  trap 'rm -f "$out"' EXIT
  build/release/bench/micro_bench --benchmark_format=json "$@" >"$out" \
    2>/dev/null
  /usr/bin/python3 - "$out" <<'PY'
import json, sys
runs = json.load(open(sys.argv[1]))["benchmarks"]
print("| benchmark | wall µs | CPU µs | iterations |")
print("|---|---:|---:|---:|")
for r in runs:
    scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3}[r["time_unit"]]
    print(f"| {r['name']} | {r['real_time'] * scale:.2f} | "
          f"{r['cpu_time'] * scale:.2f} | {r['iterations']} |")
PY
  exit 0
fi
if [[ "$which" == compare ]]; then
  cmake --build --preset release >/dev/null
  exec /usr/bin/python3 "$root/bench/compare.py" --bin build/release/bin "$@"
fi
if [[ "$which" == stack ]]; then
  cmake --build --preset release >/dev/null
  exec /usr/bin/python3 "$root/bench/stack_bench.py" --bin build/release/bin
fi
if [[ "$which" == all ]]; then
  cmake --build --preset release >/dev/null
else
  cmake --build --preset release --target broker_bench >/dev/null
fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
build/release/bench/broker_bench --benchmark_format=json >"$out" 2>/dev/null
/usr/bin/python3 - "$out" <<'PY'
import json, sys
runs = json.load(open(sys.argv[1]))["benchmarks"]
direct = next(r for r in runs if r["name"].startswith("BM_DirectSinkCall"))
sink_us = direct["real_time"] / 1000.0
print("Broker cost per event (MAIL event over the session stream, loopback,")
print("sinks answer CONTINUE at once; 'broker own' = total minus the sink calls)")
print()
print("| sinks | µs/event | events/s | sink calls µs | broker own µs |")
print("|---:|---:|---:|---:|---:|")
for r in runs:
    if not r["name"].startswith("BM_EventThroughBroker"):
        continue
    n = int(r["name"].split("sinks:")[1].split("/")[0])
    us = r["real_time"] / 1000.0
    print(f"| {n} | {us:.1f} | {r['events/s']:.0f} | {n * sink_us:.1f} | "
          f"{us - n * sink_us:.1f} |")
print()
print(f"One direct sink call (baseline): {sink_us:.1f} µs")
PY
if [[ "$which" == all ]]; then
  echo
  /usr/bin/python3 "$root/bench/stack_bench.py" --bin build/release/bin
fi
