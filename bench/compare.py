"""Sinkline against Postfix + OpenDKIM on the same machine, in one run.

Four setups, each relaying to Postfix's smtp-sink on loopback (which writes
every message to a file):

  ceiling  smtp-source -> smtp-sink directly;
  peer     a private Postfix 3.7 (own config and queue, relayhost the
           smtp-sink, mynetworks loopback, queue fsync as shipped) with
           Debian's OpenDKIM on a UNIX socket signing every message
           (RSA-2048) as smtpd_milters;
  bare     Sinkline edge + broker (relay backend), nothing bound;
  chain    Sinkline with recipient-policy (RCPT), dkim-sign (RSA-2048,
           EOD before COMMIT) and archive (EOD after COMMIT, fsync), each
           a remote process.

Client: Postfix's smtp-source (5,000-octet bodies, one recipient, a new
connection per message), 1 and 20 sessions, `--repetitions` runs of
`--messages` each, median. Per run: accepted msg/s (until smtp-source
ends), delivered msg/s (until the last message is at the next hop), CPU
per message of every server-side process from /proc (Postfix's master and
all its children, OpenDKIM; edge, broker, sinks), peak resident memory.
Then a latency pass (`--latency-messages`, this module's own client) times
end-of-data -> 250. Every delivered message is checked: the count matches,
and (peer, chain) it carries a DKIM signature that python3-dkim verifies.

    /usr/bin/python3 bench/compare.py [--bin DIR] [--messages N]
        [--repetitions R] [--sessions 1,20] [--latency-messages N]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
parser = argparse.ArgumentParser()
parser.add_argument("--bin", default=os.path.join(ROOT, "build", "release",
                                                  "bin"))
parser.add_argument("--messages", type=int, default=1000)
parser.add_argument("--repetitions", type=int, default=3)
parser.add_argument("--sessions", default="1,20")
parser.add_argument("--size", type=int, default=5000)
parser.add_argument("--latency-messages", type=int, default=300)
parser.add_argument("--setups", default="ceiling,peer,bare,chain")
parser.add_argument("--timeout", type=float, default=300,
                    help="seconds one run may take")
parser.add_argument("--breakdown", action="store_true",
                    help="also print CPU per message per process")
args = parser.parse_args()
os.environ["SINKLINE_BIN_DIR"] = args.bin
os.environ.setdefault("SINKLINE_PYTHON_DIR", os.path.join(
    os.path.dirname(args.bin), "python"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib as bl  # noqa: E402
from harness import Stack  # noqa: E402
from postfix import Postfix  # noqa: E402

NAMES = {
    "ceiling": "ceiling: smtp-source -> smtp-sink",
    "peer": "Postfix 3.7 + OpenDKIM (unix, RSA-2048), queue fsync",
    "bare": "Sinkline bare (nothing bound)",
    "chain": "Sinkline: recipient-policy + dkim-sign + archive",
}


class Setup:
    """One server under test: its listening port, the roots of its
    process tree, and a stop()."""

    def __init__(self, kind, workdir, sink, key):
        self.kind = kind
        self.stoppers = []
        self.roots = []
        self.archive = None
        if kind == "ceiling":
            self.port = sink.port
            self.roots = [sink.pid]
        elif kind == "peer":
            dkim = bl.start_opendkim(workdir, key)
            self.stoppers.append(dkim.stop)
            pf = Postfix(workdir, "postfix",
                         relayhost=f"[127.0.0.1]:{sink.port}",
                         main={"smtpd_milters": f"unix:{dkim.sock}",
                               "milter_protocol": "6",
                               "milter_default_action": "tempfail",
                               "smtpd_client_connection_rate_limit": "0",
                               "default_process_limit": "100",
                               "smtp_destination_concurrency_limit": "20"})
            pf.start()
            self.stoppers.append(pf.stop)
            self.port = pf.port
            self.roots = [pf.pid, dkim.pid]
        else:
            stack = Stack(workdir)
            self.stoppers.append(stack.stop)
            bindings = []
            if kind == "chain":
                recipients = os.path.join(workdir, "recipients")
                with open(recipients, "w") as f:
                    f.write("@example.test\n")
                self.archive = os.path.join(workdir, "archive")
                os.makedirs(self.archive)
                keys = os.path.join(workdir, "keys.yaml")
                with open(keys, "w") as f:
                    f.write(f"domains:\n  {key.domain}:\n"
                            f"    - selector: {key.selector}\n"
                            f"      algorithm: rsa-sha256\n"
                            f"      key: {key.path}\n")
                stack.start_sink("policy", "sinkline-sink-recipient-policy",
                                 [f"--recipients={recipients}",
                                  "--log-level=warn"])
                stack.start_sink("dkim", "sinkline-sink-dkim-sign",
                                 [f"--keys={keys}", "--log-level=warn"])
                stack.start_sink("archive", "sinkline-sink-archive",
                                 [f"--archive-dir={self.archive}",
                                  "--log-level=warn"])
                bindings = [
                    {"name": "policy-rcpt", "sink": "policy",
                     "event": "RCPT", "priority": 10000,
                     "failure_policy": "tempfail"},
                    {"name": "dkim-eod", "sink": "dkim", "event": "EOD",
                     "priority": 20000, "content_access": "read-write",
                     "failure_policy": "tempfail"},
                    {"name": "archive-eod", "sink": "archive",
                     "event": "EOD", "priority": 30000,
                     "content_access": "read", "failure_policy": "continue",
                     "deadline_ms": 30000}]
            stack.write_config(bindings)
            stack.start_broker(extra=["--log-level=warn",
                                      f"--relay-host=127.0.0.1:{sink.port}",
                                      "--relay-helo=broker.example.test"],
                               queue_dir=False)
            stack.start_edge(["--log-level=warn", "--idle-timeout-s=60"])
            self.port = stack.edge.port
            self.roots = [p.pid for p in stack.processes]

    def archived(self):
        return len(os.listdir(self.archive)) if self.archive else 0

    def stop(self):
        for stop in reversed(self.stoppers):
            stop()


def smtp_source(port, sessions, count):
    return subprocess.run(
        ["/usr/sbin/smtp-source", "-s", str(sessions), "-m", str(count),
         "-l", str(args.size), "-f", "bench@example.test",
         "-t", "rcpt@example.test", "-M", "client.example.net",
         f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        timeout=args.timeout)


def one_run(setup, sink, key, sessions):
    n = args.messages
    sink.clear()
    archived0 = setup.archived()
    sampler = bl.Sampler(setup.roots)
    t0 = time.monotonic()
    result = smtp_source(setup.port, sessions, n)
    accepted = time.monotonic() - t0
    if result.returncode != 0:
        raise RuntimeError(result.stdout.decode(errors="replace"))
    bl.wait_for(lambda: len(sink.files()) >= n,
                args.timeout - (time.monotonic() - t0),
                f"{n} messages at the next hop ({setup.kind})")
    delivered = time.monotonic() - t0
    if setup.archive:
        # The archive copies after COMMIT: its CPU belongs to the run.
        bl.wait_for(lambda: setup.archived() - archived0 >= n,
                    args.timeout, "every message archived")
    per, cpu, peak, peak_total = sampler.finish()
    files = sink.files()
    if len(files) != n:
        raise RuntimeError(f"{setup.kind}: {len(files)} delivered, sent {n}")
    verified = None
    if setup.kind in ("peer", "chain"):
        verified, _ = bl.verify_dumps(files, key)
        if verified != n:
            raise RuntimeError(f"{setup.kind}: {verified} of {n} delivered "
                               "messages carry a verifying DKIM signature")
    return {"accepted": n / accepted, "delivered": n / delivered,
            "cpu": cpu / n * 1000.0,
            "per": {k: v / n * 1000.0 for k, v in per.items()},
            "peak": peak_total / 1024.0, "peaks": peak,
            "verified": verified, "count": len(files)}


def latency(setup, sink, sessions):
    if args.latency_messages <= 0:
        return float("nan"), float("nan")
    sink.clear()
    archived0 = setup.archived()
    client = bl.LatencyClient(setup.port, args.size)
    samples = client.run(sessions, args.latency_messages)
    if client.errors:
        raise RuntimeError(f"{setup.kind}: latency pass: "
                           f"{len(client.errors)} errors, first "
                           f"{client.errors[0]}")
    bl.wait_for(lambda: len(sink.files()) >= args.latency_messages,
                args.timeout, "latency pass delivered")
    if setup.archive:
        # The next run counts archived messages from here.
        bl.wait_for(lambda: setup.archived() - archived0 >=
                    args.latency_messages, args.timeout,
                    "latency pass archived")
    return (bl.percentile(samples, 50) * 1000.0,
            bl.percentile(samples, 99) * 1000.0)


def median_run(runs):
    """The run with the median delivered rate, with every field's median."""
    out = dict(sorted(runs, key=lambda r: r["delivered"])[len(runs) // 2])
    for k in ("accepted", "delivered", "cpu", "peak"):
        out[k] = statistics.median(r[k] for r in runs)
    return out


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {cpu}, {mem:.0f} GiB"


def main():
    sessions_list = [int(s) for s in args.sessions.split(",")]
    kinds = args.setups.split(",")
    workdir = tempfile.mkdtemp(prefix="sinkline-compare-")
    os.chmod(workdir, 0o755)
    results = {}
    try:
        key = bl.DkimKey(workdir)
        for kind in kinds:
            sub = os.path.join(workdir, kind)
            os.makedirs(sub)
            os.chmod(sub, 0o755)
            sink = bl.SmtpSink(sub)
            setup = None
            try:
                setup = Setup(kind, sub, sink, key)
                for s in sessions_list:
                    runs = [one_run(setup, sink, key, s)
                            for _ in range(args.repetitions)]
                    r = median_run(runs)
                    r["p50"], r["p99"] = latency(setup, sink, s)
                    results[(kind, s)] = r
                    print(f"  {kind:8} {s:2} sessions: "
                          f"{r['delivered']:.0f} delivered/s", flush=True,
                          file=sys.stderr)
            finally:
                if setup:
                    setup.stop()
                sink.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(results, kinds, sessions_list)


def report(results, kinds, sessions_list):
    print(f"Machine: {machine()}; Sinkline from {args.bin}")
    print(f"smtp-source, {args.size}-octet bodies, one recipient, a new "
          f"connection per message; {args.messages} messages x "
          f"{args.repetitions} repetitions (median); latency pass "
          f"{args.latency_messages} messages")
    print()
    print("| setup | sessions | accepted msg/s | delivered msg/s | "
          "EOD→250 p50 ms | p99 ms | CPU ms/msg | peak RSS MB | "
          "delivered | verified |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind in kinds:
        for s in sessions_list:
            r = results[(kind, s)]
            v = "-" if r["verified"] is None else str(r["verified"])
            print(f"| {NAMES[kind]} | {s} | {r['accepted']:.0f} | "
                  f"{r['delivered']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
                  f"{r['cpu']:.2f} | {r['peak']:.0f} | {r['count']} | {v} |")
    if "peer" in kinds:
        print()
        print("| Sinkline / peer | sessions | delivered msg/s | "
              "CPU per msg | EOD→250 p99 |")
        print("|---|---:|---:|---:|---:|")
        for kind in ("bare", "chain"):
            if kind not in kinds:
                continue
            for s in sessions_list:
                r, p = results[(kind, s)], results[("peer", s)]
                print(f"| {kind} | {s} | {r['delivered'] / p['delivered']:.2f}"
                      f" | {r['cpu'] / p['cpu']:.2f} | "
                      f"{r['p99'] / p['p99']:.2f} |")
    if args.breakdown:
        print()
        print("CPU ms per message by process (median run):")
        for kind in kinds:
            for s in sessions_list:
                r = results[(kind, s)]
                parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(
                    r["per"].items(), key=lambda kv: -kv[1]) if v >= 0.005)
                peaks = ", ".join(f"{k} {v / 1024:.0f}" for k, v in sorted(
                    r["peaks"].items(), key=lambda kv: -kv[1]))
                print(f"- {kind}, {s} sessions: {parts}; "
                      f"peak RSS MB: {peaks}")


if __name__ == "__main__":
    main()
