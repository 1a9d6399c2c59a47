#!/usr/bin/python3
"""Sinkline's fault suite: for each fault, a fresh stack on loopback, a
steady load that records every message's reply and queue id, the fault
injected and undone, the stack drained, then one row of counts. Prints one
markdown table; exits 1 when a row lost an acknowledged message or a
process died that was not meant to.

  /usr/bin/python3 tests/faults/suite.py [--mode gentle|load|both] [--ci]
      [--only 1,5,8] [--out table.md]
"""

import argparse
import os
import platform
import random
import signal
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter

import faults as F
from load import Load
from stack import FaultStack

MODES = {
    # sessions, messages a second (0: as fast as it goes), warm-up acks,
    # acks wanted after the fault, seconds of traffic after it at most
    # seconds of traffic after it at most, a slow next hop (a backlog)
    "gentle": dict(sessions=2, rate=10.0, warm=30, after=60, after_s=40,
                   backlog=False),
    "load": dict(sessions=20, rate=0.0, warm=300, after=300, after_s=60,
                 backlog=True),
    # CI: few messages, but a backlog, so that a broker kill finds
    # committed messages not yet at the next hop
    "ci": dict(sessions=2, rate=10.0, warm=20, after=20, after_s=30,
               backlog=True),
}
DRAIN_S = 120


def failed(row):
    """A row fails when an acknowledged message was lost, a process died
    unplanned, or 250s never came back after the fault was undone."""
    return (row.get("lost", 1) > 0 or not row["healthy"]
            or row.get("recover") is None or row.get("wrong_full_answer"))


def mount_tmpfs(mb):
    d = tempfile.mkdtemp(prefix="sinkline-faults-spool-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", d],
                   check=True, capture_output=True, timeout=30)

    def undo():
        subprocess.run(["umount", "-l", d], capture_output=True, timeout=30)
        shutil.rmtree(d, ignore_errors=True)
    F.CLEANUPS.append(undo)
    return d, undo


def first_250_after(attempts, t):
    starts = [a.end for a in attempts if a.code == 250 and a.start >= t]
    return (min(starts) - t) if starts else None


def longest_gap(attempts, t0, t1):
    """The longest stretch without a 250 reply from the fault's start to
    the first 250 after it was undone."""
    ends = sorted(a.end for a in attempts if a.code == 250 and a.end >= t0)
    after = [e for e in ends if e >= t1]
    if not after:
        return None
    marks = [t0] + [e for e in ends if e <= after[0]]
    return max(b - a for a, b in zip(marks, marks[1:])) if len(marks) > 1 \
        else 0.0


def classify(code):
    if code == 250:
        return "250"
    if code == 0:
        return "error"
    return f"{code // 100}xx"


def run_row(number, name, inject, opts, mode, rng, keep):
    p = MODES[mode]
    workdir = tempfile.mkdtemp(prefix=f"sinkline-faults-{number}-")
    spool_root, unmount = None, None
    if opts.get("tmpfs_mb"):
        spool_root, unmount = mount_tmpfs(opts["tmpfs_mb"])
    stack = FaultStack(workdir, backlog=p["backlog"],
                       brokers=opts.get("brokers", 1),
                       post=opts.get("post", "stamp"), spool_root=spool_root)
    load = Load(stack.edge_port, p["sessions"], p["rate"],
                tag=f"{mode}{number}.{os.getpid()}")
    row = {"n": number, "fault": name, "mode": mode}
    try:
        stack.start()
        load.start()
        deadline = time.monotonic() + 60
        while (load.acked_since(0) < p["warm"]
               and time.monotonic() < deadline):
            time.sleep(0.1)
        t0 = time.monotonic()
        row["note"] = inject(stack, rng)
        t1 = time.monotonic()
        deadline = t1 + p["after_s"]
        while (load.acked_since(t1) < p["after"]
               and time.monotonic() < deadline):
            time.sleep(0.1)
        load.stop()
        held = stack.held()
        row["backlog"] = (None if held is None else
                          sum(1 for st in held.values() if st in (1, 2, 3)))
        row["drained"] = stack.drain(DRAIN_S)
        held = stack.held() or {}
        delivered = stack.delivered()  # after `held`: nothing slips between
        attempts = load.snapshot()
        count(row, attempts, held, delivered, t0, t1)
        if opts.get("tmpfs_mb"):
            check_full_answers(row, attempts, t0, t1)
        row["health"], row["healthy"] = stack.health()
    except Exception:
        row.setdefault("note", "")
        row["note"] += " SUITE ERROR: " + traceback.format_exc(limit=3)
        row["healthy"] = False
        row.setdefault("health", "suite error")
        load.stop()
    finally:
        stack.stop()
        if unmount:
            unmount()
            F.CLEANUPS.remove(unmount)
    bad = failed(row)
    if bad:
        print(f"--- row {number} ({mode}) failed; logs ---\n{stack.logs()}",
              file=sys.stderr)
    if bad and keep:
        print(f"kept {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return row


def count(row, attempts, held, delivered, t0, t1):
    classes = Counter(classify(a.code) for a in attempts)
    acked = {a.mid: a.qid for a in attempts if a.code == 250}
    not_acked = {a.mid for a in attempts if a.code != 250}
    lost = [m for m, q in acked.items()
            if m not in delivered and q not in held]
    in_queue = {m for m in delivered} | {m for m, q in acked.items()
                                         if q in held}
    dups = {m: n for m, n in delivered.items() if n > 1}
    window = Counter(f"{a.code} {a.text[:40]}".strip() for a in attempts
                     if a.code != 250 and t0 <= a.start <= t1 + 2)
    row.update(
        attempts=len(attempts), ok=classes["250"], t4=classes["4xx"],
        t5=classes["5xx"], errors=classes["error"],
        queued=len(in_queue & (set(acked) | not_acked)),
        stuck=sum(1 for q in acked.values() if held.get(q) in (1, 2, 3)),
        dup_acked=sum(1 for m in dups if m in acked),
        dup_unacked=sum(1 for m in dups if m not in acked),
        extra=sum(1 for m in delivered if m in not_acked),
        lost=len(lost), lost_ids=lost[:5],
        recover=first_250_after(attempts, t1),
        gap=longest_gap(attempts, t0, t1),
        answers=", ".join(f"{k} x{v}" for k, v in window.most_common(3)))


def check_full_answers(row, attempts, t0, t1):
    """A full spool is answered 452 4.3.1 (RFC 3463: insufficient system
    storage), not with a generic 451 4.3.0."""
    during = [a for a in attempts
              if a.code not in (250, 0, None) and t0 <= a.start <= t1]
    full = [a for a in during if a.code == 452 and "4.3.1" in a.text[:12]]
    generic = [a for a in during if a.code == 451 and "4.3.0" in a.text[:12]]
    if not full or generic:
        row["wrong_full_answer"] = True
        row["note"] = (row.get("note", "") + f"; {len(full)} x 452 4.3.1, "
                       f"{len(generic)} x 451 4.3.0 while full")


def fmt(seconds):
    return "never" if seconds is None else f"{seconds:.1f}"


def table(rows):
    head = ("| # | fault | mode | attempts | 250 | 4xx | 5xx | client errors "
            "| queued | dup (had 250 / no 250) | lost | longest s without 250 "
            "| s to 250 after undo | processes | answers during the fault |")
    out = [head, "|" + "---|" * 15]
    for r in rows:
        rec = r.get("recover")
        out.append(
            f"| {r['n']} | {r['fault']} ({r.get('note', '')}) | {r['mode']} "
            f"| {r.get('attempts', '-')} | {r.get('ok', '-')} "
            f"| {r.get('t4', '-')} | {r.get('t5', '-')} "
            f"| {r.get('errors', '-')} | {r.get('queued', '-')}"
            + (f" (backlog {r['backlog']})" if r.get("backlog") else "")
            + (f" ({r['stuck']} stuck)" if r.get("stuck") else "")
            + ("" if r.get("drained", True) else " not drained")
            + f" | {r.get('dup_acked', '-')} / {r.get('dup_unacked', '-')} "
            f"| **{r.get('lost', '-')}**"
            + (f" {r['lost_ids']}" if r.get("lost") else "")
            + f" | {fmt(r.get('gap'))} | {fmt(rec)} "
            f"| {r.get('health', '-')} | {r.get('answers', '') or '-'} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", default="both",
                    choices=["gentle", "load", "both"])
    ap.add_argument("--ci", action="store_true",
                    help="the quick faults at a gentle rate, few messages")
    ap.add_argument("--only", default="", help="fault numbers, e.g. 1,5,8")
    ap.add_argument("--out", default="", help="also write the table here")
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--keep", action="store_true",
                    help="keep the directory of a failed row")
    args = ap.parse_args()
    # SIGTERM too runs the cleanups (firewall rules, mounts) in `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rng = random.Random(args.seed)
    only = {int(x) for x in args.only.split(",") if x}
    modes = (["ci"] if args.ci else
             ["gentle", "load"] if args.mode == "both" else [args.mode])
    rows = []
    started = time.time()
    try:
        for mode in modes:
            for number, name, fn, opts, quick in F.FAULTS:
                if only and number not in only:
                    continue
                if args.ci and not quick:
                    continue
                t = time.monotonic()
                row = run_row(number, name, fn, opts, mode, rng, args.keep)
                rows.append(row)
                print(f"[{time.monotonic() - t:5.1f} s] {mode} #{number} "
                      f"{name}: lost {row.get('lost')}, "
                      f"{row.get('health')}", flush=True)
    finally:
        for undo in list(F.CLEANUPS):
            undo()
    text = table(rows)
    header = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
              f"on {platform.node()} ({os.cpu_count()} cores, "
              f"{platform.platform()}), seed {args.seed}, "
              f"{time.time() - started:.0f} s")
    print("\n" + header + "\n\n" + text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(header + "\n\n" + text + "\n")
    bad = [r for r in rows if failed(r)]
    print(f"\nfaults: {len(rows) - len(bad)} passed, {len(bad)} failed")
    return 1 if bad or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
