"""End-to-end throughput of the whole stack, measured with Postfix's
smtp-source: 5 KB messages, a new connection per message, from one session
and from twenty; first with no sink bound, then with the chain an operator
runs in production (recipient-policy at RCPT, dkim-sign before COMMIT,
archive after COMMIT with fsync), each sink a remote process. Prints
messages per second and the CPU time the Sinkline processes spent per
message (edge + broker + sinks, from /proc; the client's own CPU is left
out).

    /usr/bin/python3 bench/stack_bench.py [--messages N] [--bin DIR]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
parser = argparse.ArgumentParser()
parser.add_argument("--bin", default=os.path.join(ROOT, "build", "release",
                                                  "bin"))
parser.add_argument("--messages", type=int, default=2000)
parser.add_argument("--size", type=int, default=5120)
args = parser.parse_args()
os.environ["SINKLINE_BIN_DIR"] = args.bin
os.environ.setdefault("SINKLINE_PYTHON_DIR", os.path.join(
    os.path.dirname(args.bin), "python"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

from harness import Stack, wait_for  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            # utime and stime, fields 14 and 15 (1-based) of the whole line.
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / TICKS


def make_keys(directory):
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                    "rsa_keygen_bits:2048", "-out",
                    os.path.join(directory, "rsa.pem")], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out",
                    os.path.join(directory, "ed.pem")], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = os.path.join(directory, "keys.yaml")
    with open(path, "w") as f:
        f.write("domains:\n  example.test:\n"
                "    - selector: rsa\n      algorithm: rsa-sha256\n"
                "      key: rsa.pem\n"
                "    - selector: ed\n      algorithm: ed25519-sha256\n"
                "      key: ed.pem\n")
    return path


def start(workdir, chain):
    stack = Stack(workdir)
    bindings = []
    if chain:
        recipients = os.path.join(workdir, "recipients")
        with open(recipients, "w") as f:
            f.write("@example.test\n")
        archive = os.path.join(workdir, "archive")
        os.makedirs(archive)
        stack.start_sink("policy", "sinkline-sink-recipient-policy",
                         [f"--recipients={recipients}"])
        stack.start_sink("dkim", "sinkline-sink-dkim-sign",
                         [f"--keys={make_keys(workdir)}"])
        stack.start_sink("archive", "sinkline-sink-archive",
                         [f"--archive-dir={archive}"])
        bindings = [
            {"name": "policy-rcpt", "sink": "policy", "event": "RCPT",
             "priority": 10000, "failure_policy": "tempfail"},
            {"name": "dkim-eod", "sink": "dkim", "event": "EOD",
             "priority": 20000, "content_access": "read-write",
             "failure_policy": "tempfail"},
            {"name": "archive-eod", "sink": "archive", "event": "EOD",
             "priority": 30000, "content_access": "read",
             "failure_policy": "continue", "deadline_ms": 30000}]
    stack.write_config(bindings)
    stack.start_broker(extra=["--log-level=warn"])
    stack.start_edge(["--log-level=warn", "--idle-timeout-s=60"])
    return stack


def run(chain, sessions, count):
    workdir = tempfile.mkdtemp(prefix="sinkline-bench-")
    stack = start(workdir, chain)
    try:
        pids = [p.pid for p in stack.processes]
        cpu0 = cpu_seconds(pids)
        t0 = time.monotonic()
        result = subprocess.run(
            ["/usr/sbin/smtp-source", "-s", str(sessions), "-m", str(count),
             "-l", str(args.size), "-f", "bench@example.test",
             "-t", "rcpt@example.test", "-M", "client.example.net",
             f"127.0.0.1:{stack.edge.port}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
        elapsed = time.monotonic() - t0
        if result.returncode != 0:
            raise RuntimeError(result.stdout.decode(errors="replace"))
        # Everything accepted reaches the queue (the archive after COMMIT
        # may still be copying when the last 250 went out).
        wait_for(lambda: len(stack.queue_ids()) >= count, 120,
                 "every message in the queue")
        cpu = cpu_seconds(pids) - cpu0
        queued = len(stack.queue_ids())
        return count / elapsed, cpu / count * 1000.0, queued
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main():
    print(f"Whole stack, {args.size}-octet messages, a new connection per "
          f"message, {args.messages} messages per run (smtp-source)")
    print()
    print("| sinks | sessions | messages/s | CPU ms/message | queued |")
    print("|---|---:|---:|---:|---:|")
    for chain in (False, True):
        for sessions in (1, 20):
            rate, cpu_ms, queued = run(chain, sessions, args.messages)
            name = ("recipient-policy + dkim-sign + archive" if chain
                    else "none")
            print(f"| {name} | {sessions} | {rate:.0f} | {cpu_ms:.2f} | "
                  f"{queued} |", flush=True)
    print()
    print("CPU = user + system time of edge, broker and sinks over the run.")


if __name__ == "__main__":
    main()
