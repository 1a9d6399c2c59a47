#!/usr/bin/env bash
# The fault suite (docs/reliability.md): each fault injected under a steady
# load on a fresh stack on loopback, one markdown table of what the clients
# were told and what reached the next hop; exits non-zero when an
# acknowledged message was lost or a process died unplanned.
#   scripts/faults.sh                 both modes, every fault (about 20 min)
#   scripts/faults.sh --ci            the quick faults at a gentle rate
#   scripts/faults.sh --mode load --only 5,8 --out /tmp/table.md
#   scripts/faults.sh --memory        10,000 sessions x 4 rounds, RSS each
# Needs root (a tmpfs for the full spool, iptables on lo for the cut links).
# SINKLINE_BIN_DIR: use these binaries instead of building preset dev.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${SINKLINE_BIN_DIR:-}" ]]; then
  command -v iptables >/dev/null || scripts/install-deps.sh
  cmake --preset dev >/dev/null
  cmake --build --preset dev -j2 >/dev/null
  export SINKLINE_BIN_DIR="$PWD/build/dev/bin"
fi
export SINKLINE_PYTHON_DIR="${SINKLINE_PYTHON_DIR:-$(dirname "$SINKLINE_BIN_DIR")/python}"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [[ "${1:-}" == --memory ]]; then
  shift
  exec /usr/bin/python3 tests/faults/memory_churn.py "$@"
fi
exec /usr/bin/python3 tests/faults/suite.py "$@"
