"""Scale probes for Sinkline's memory targets, each against real processes
on loopback, printed as one table:

  idle      --idle N SMTP sessions open at once, each greeted and past
            EHLO, then idle: the edge's and the broker's resident memory
            (target: <= 200 MB edge, <= 100 MB broker for 10,000);
  leases    --leases N messages whose lease a slow sink holds at once
            (bound at EOD after COMMIT, it keeps every lease and reads
            nothing until the probe ends): the broker's resident memory
            (target: <= 100 MB for 1,000);
  large     one --large-mb MB message through the edge into the queue: how
            much the broker's peak resident memory grew (target: < 64 MB
            for 50 MB).

RSS is VmRSS when the load is in place (peak VmHWM for `large`), read
from /proc. The edge's session limits are raised for the idle probe
(--max-sessions, --max-sessions-per-client 0), the broker's per-edge
stream limit (--session-streams-per-edge 0) and the open-file limit to the
hard limit. --edge-flag and --broker-flag (repeatable) add flags to the
idle probe's edge and broker, to compare settings.

    /usr/bin/python3 bench/scale.py [--bin DIR] [--idle 10000]
        [--leases 1000] [--large-mb 50] [--probes idle,leases,large]
"""

import argparse
import json
import os
import resource
import selectors
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
parser = argparse.ArgumentParser()
parser.add_argument("--bin", default=os.path.join(ROOT, "build", "release",
                                                  "bin"))
parser.add_argument("--idle", type=int, default=10000)
parser.add_argument("--leases", type=int, default=1000)
parser.add_argument("--large-mb", type=int, default=50)
parser.add_argument("--probes", default="idle,leases,large")
parser.add_argument("--timeout", type=float, default=300)
# Extra flags for the idle probe's processes (repeatable), to compare
# settings: --edge-flag=--broker-stream-lookahead-bytes=16384
parser.add_argument("--edge-flag", action="append", default=[])
parser.add_argument("--settle-s", type=float, default=1.0)
parser.add_argument("--broker-flag", action="append", default=[])
args = parser.parse_args()
os.environ["SINKLINE_BIN_DIR"] = args.bin
os.environ.setdefault("SINKLINE_PYTHON_DIR", os.path.join(
    os.path.dirname(args.bin), "python"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib as bl  # noqa: E402
from harness import PYTHON_DIR, Process, Stack  # noqa: E402

MB = 1024.0


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def idle_probe(workdir):
    """Opens the sessions without blocking on each one: connect, read the
    greeting, send EHLO, read its reply; all from loopback addresses
    127.0.0.2..."""
    n = args.idle
    stack = Stack(workdir)
    try:
        stack.write_config([])
        # One edge holds every session's stream: the broker's per-edge
        # limit (--session-streams-per-edge, 2000) is lifted too.
        stack.start_broker(extra=["--log-level=warn",
                                  "--session-streams-per-edge=0"]
                           + args.broker_flag)
        stack.start_edge(["--log-level=warn", "--idle-timeout-s=600",
                          "--max-sessions=0", "--max-sessions-per-client=0"]
                         + args.edge_flag)
        edge, broker = stack.edge.pid, stack.broker.pid
        base = (bl.rss_kb(edge), bl.rss_kb(broker))
        sel = selectors.DefaultSelector()
        socks = []
        state = {}
        done = 0
        deadline = time.monotonic() + args.timeout
        opened = 0
        while done < n and time.monotonic() < deadline:
            # Keep a bounded number of handshakes in flight.
            while opened < n and opened - done < 200:
                s = socket.socket()
                # Spread the sessions over source addresses: 10,000 from
                # one address would crowd its ephemeral ports.
                s.bind((f"127.0.{1 + opened // 250 % 250}."
                        f"{2 + opened % 250}", 0))
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", stack.edge.port))
                socks.append(s)
                state[s] = [0, b""]
                sel.register(s, selectors.EVENT_READ)
                opened += 1
            for key, _ in sel.select(timeout=1):
                s = key.fileobj
                try:
                    data = s.recv(4096)
                except BlockingIOError:
                    continue
                if not data:
                    raise RuntimeError("the edge closed an idle session")
                st = state[s]
                st[1] += data
                if not st[1].endswith(b"\r\n") or st[1].split(
                        b"\r\n")[-2][3:4] == b"-":
                    continue
                st[1] = b""
                if st[0] == 0:
                    s.send(b"EHLO client.example.net\r\n")
                    st[0] = 1
                else:
                    st[0] = 2
                    sel.unregister(s)
                    done += 1
        if done < n:
            raise RuntimeError(f"only {done} of {n} sessions opened")
        # Let the edge and broker settle after the burst (and idle streams
        # close, with --broker-stream-idle-ms below --settle-s).
        time.sleep(args.settle_s)
        edge_kb, broker_kb = bl.rss_kb(edge), bl.rss_kb(broker)
        for s in socks:
            s.close()
        return [("idle", f"{n} idle sessions (past EHLO)", "edge",
                 base[0], edge_kb, 200 * 1024),
                ("idle", f"{n} idle sessions (past EHLO)", "broker",
                 base[1], broker_kb, 100 * 1024)]
    finally:
        stack.stop()


def leases_probe(workdir):
    n = args.leases
    stack = Stack(workdir)
    try:
        stats = os.path.join(workdir, "slow-reader.json")
        p = Process("slow-reader",
                    ["/usr/bin/python3",
                     os.path.join(ROOT, "tests", "integration",
                                  "slow_reader_sink.py"),
                     "--listen=127.0.0.1:0", f"--delay-ms={3600 * 1000}",
                     f"--stats={stats}", "--workers=8", "--log-level=warn"],
                    workdir, env=dict(os.environ, PYTHONPATH=PYTHON_DIR))
        stack.processes.append(p)
        stack.sinks["slow-reader"] = p.start()
        stack.write_config([{
            "name": "slow-reader", "sink": "slow-reader", "event": "EOD",
            "priority": 30000, "content_access": "read-write",
            "deadline_ms": 600000, "failure_policy": "continue"}])
        stack.start_broker(extra=["--log-level=warn"])
        stack.start_edge(["--log-level=warn", "--idle-timeout-s=60"])
        broker = stack.broker.pid
        base = bl.rss_kb(broker)
        result = subprocess.run(
            ["/usr/sbin/smtp-source", "-s", "20", "-m", str(n), "-l", "5000",
             "-f", "bench@example.test", "-t", "rcpt@example.test",
             "-M", "client.example.net", f"127.0.0.1:{stack.edge.port}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            timeout=args.timeout)
        if result.returncode != 0:
            raise RuntimeError(result.stdout.decode(errors="replace"))

        def held():
            try:
                with open(stats) as f:
                    return json.load(f)["held"] >= n
            except (OSError, ValueError):
                return False
        bl.wait_for(held, args.timeout, f"{n} leases held")
        time.sleep(1)
        return [("leases", f"{n} leases held by a slow sink", "broker",
                 base, bl.rss_kb(broker), 100 * 1024)]
    finally:
        stack.stop()


def large_probe(workdir):
    size = args.large_mb * 1024 * 1024
    stack = Stack(workdir)
    try:
        stack.write_config([])
        stack.start_broker(extra=["--log-level=warn"])
        stack.start_edge(["--log-level=warn", "--idle-timeout-s=60",
                          f"--max-message-size={size + (1 << 20)}"])
        broker, edge = stack.broker.pid, stack.edge.pid
        base_b, base_e = bl.rss_kb(broker), bl.rss_kb(edge)
        line = b"y" * 998 + b"\r\n"
        body = (b"From: <bench@example.test>\r\nTo: <rcpt@example.test>\r\n"
                b"Subject: large\r\n\r\n" + line * (size // len(line)))
        with smtplib.SMTP("127.0.0.1", stack.edge.port,
                          timeout=args.timeout) as c:
            c.sendmail("bench@example.test", ["rcpt@example.test"], body)
        bl.wait_for(lambda: len(stack.queue_ids()) >= 1, args.timeout,
                    "the large message queued")
        what = f"one {args.large_mb} MB message (peak growth)"
        return [("large", what, "broker", base_b, bl.hwm_kb(broker),
                 64 * 1024),
                ("large", what, "edge", base_e, bl.hwm_kb(edge), None)]
    finally:
        stack.stop()


def main():
    raise_nofile()
    rows = []
    workdir = tempfile.mkdtemp(prefix="sinkline-scale-")
    try:
        for probe in args.probes.split(","):
            sub = os.path.join(workdir, probe)
            os.makedirs(sub)
            rows += {"idle": idle_probe, "leases": leases_probe,
                     "large": large_probe}[probe](sub)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"Scale probes, Sinkline from {args.bin}")
    print()
    print("| probe | process | RSS before MB | RSS under load MB | growth MB |"
          " target MB | met |")
    print("|---|---|---:|---:|---:|---:|---|")
    for kind, what, proc, before, after, target in rows:
        growth = (after - before) / MB
        measured = growth if kind == "large" else after / MB
        met = "-" if target is None else (
            "yes" if measured <= target / MB else
            f"no (+{measured - target / MB:.0f} MB)")
        tgt = "-" if target is None else (
            f"{'growth ' if kind == 'large' else ''}{target / MB:.0f}")
        print(f"| {what} | {proc} | {before / MB:.0f} | {after / MB:.0f} | "
              f"{growth:.0f} | {tgt} | {met} |")


if __name__ == "__main__":
    main()
