#!/usr/bin/python3
"""Memory under churn: an edge and a broker on loopback; each round opens
--sessions SMTP sessions at once, reads every greeting, sends EHLO, reads
its reply, holds them all open, then closes them all and waits until the
edge counts none open. Prints the resident memory of edge and broker at
the peak and after each round, and whether round 4 ended within --within
(a fraction) of round 1; exits 1 when not.

  scripts/faults.sh --memory [--sessions 10000] [--rounds 4]
"""

import argparse
import asyncio
import os
import re
import resource
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from harness import Stack, wait_for  # noqa: E402


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


async def one(port, sem, opened, release, failures):
    async with sem:
        try:
            r, w = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), 60)
            greeting = await asyncio.wait_for(r.readline(), 60)
            if not greeting.startswith(b"220"):
                raise ConnectionError(greeting)
            w.write(b"EHLO churn.example.test\r\n")
            while True:
                line = await asyncio.wait_for(r.readline(), 60)
                if not line or line[3:4] == b" ":
                    break
            if not line.startswith(b"250"):
                raise ConnectionError(line)
        except (OSError, asyncio.TimeoutError, ConnectionError) as e:
            failures.append(repr(e)[:80])
            return
    opened.append(1)
    await release.wait()
    w.close()
    try:
        await w.wait_closed()
    except OSError:
        pass


async def round_(port, sessions):
    sem = asyncio.Semaphore(256)  # connections being set up at once
    opened, failures = [], []
    release = asyncio.Event()
    tasks = [asyncio.create_task(one(port, sem, opened, release, failures))
             for _ in range(sessions)]
    while len(opened) + len(failures) < sessions:
        await asyncio.sleep(0.1)
    return tasks, release, opened, failures


def settle(edge, broker, timeout_s=30.0, quiet_s=7.0):
    """Resident memory of both once it stopped falling: no sample lower
    than 1% under the others for quiet_s (longer than the trimmer's 5 s
    period), or after timeout_s."""
    samples = []
    deadline = time.monotonic() + timeout_s
    while True:
        samples.append((time.monotonic(), rss_mb(edge), rss_mb(broker)))
        recent = [x for x in samples if x[0] >= samples[-1][0] - quiet_s]
        if (samples[-1][0] - samples[0][0] >= quiet_s and all(
                min(x[i] for x in recent) >= max(x[i] for x in recent) * 0.99
                for i in (1, 2))) or time.monotonic() > deadline:
            return samples[-1][1], samples[-1][2]
        time.sleep(0.5)


def open_sessions(stack):
    """The edge's open sessions gauge, from its metrics page."""
    import urllib.request
    text = urllib.request.urlopen(
        f"http://127.0.0.1:{stack.metrics_port}/metrics", timeout=10).read()
    for line in text.decode().splitlines():
        if line.startswith("sinkline_edge_sessions "):
            return float(line.split()[-1])
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--within", type=float, default=0.05)
    ap.add_argument("--edge-args", default="")
    ap.add_argument("--broker-args", default="")
    args = ap.parse_args()
    # This client and the edge (which inherits the limit) each hold one
    # descriptor per session.
    need = args.sessions + 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            sys.exit(f"{args.sessions} sessions need {need} descriptors; the "
                     f"hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    workdir = tempfile.mkdtemp(prefix="sinkline-churn-")
    stack = Stack(workdir)
    stack.write_config([])
    try:
        stack.start_broker(extra=args.broker_args.split())
        stack.start_edge([f"--max-sessions={args.sessions + 100}",
                          f"--max-sessions-per-client={args.sessions + 100}",
                          "--metrics-listen=127.0.0.1:0"]
                         + args.edge_args.split())
        stack.metrics_port = int(wait_for(
            lambda: (re.search(r"metrics on port (\d+)", stack.edge.log())
                     or [0, 0])[1], 15, "the edge's metrics port in its log"))
        edge, broker = stack.edge.pid, stack.broker.pid
        print(f"start: edge {rss_mb(edge):.0f} MB, broker "
              f"{rss_mb(broker):.0f} MB", flush=True)
        ends = []
        for n in range(1, args.rounds + 1):
            t = time.monotonic()

            async def go():
                tasks, release, opened, failures = await round_(
                    stack.edge.port, args.sessions)
                peak = (rss_mb(edge), rss_mb(broker))
                release.set()
                await asyncio.gather(*tasks)
                return len(opened), failures, peak
            opened, failures, peak = asyncio.run(go())
            wait_for(lambda: open_sessions(stack) == 0, 120,
                     "the edge to count no open session")
            end = settle(edge, broker)
            ends.append(end)
            print(f"round {n}: {opened} sessions greeted and EHLO'd "
                  f"({len(failures)} failed{': ' + failures[0] if failures else ''}) "
                  f"in {time.monotonic() - t:.1f} s; peak edge "
                  f"{peak[0]:.0f} MB broker {peak[1]:.0f} MB; after close "
                  f"edge {end[0]:.0f} MB broker {end[1]:.0f} MB", flush=True)
            if not stack.edge.running() or not stack.broker.running():
                print("a process died", flush=True)
                return 1
        ok = all(ends[-1][i] <= ends[0][i] * (1 + args.within)
                 for i in (0, 1))
        print(f"round {args.rounds} vs round 1: edge "
              f"{ends[-1][0] / ends[0][0] - 1:+.1%}, broker "
              f"{ends[-1][1] / ends[0][1] - 1:+.1%} "
              f"({'within' if ok else 'NOT within'} {args.within:.0%})")
        return 0 if ok else 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
