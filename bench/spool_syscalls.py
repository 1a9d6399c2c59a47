#!/usr/bin/python3
"""fsyncs, creates, renames and unlinks per message in the broker, from
`strace -c -f` on it: --messages of 5 KB through the edge from --sessions
concurrent SMTP sessions, no sink bound, the spool queue directory as the
backend (its file fsync, rename and directory fsync are counted too).

  /usr/bin/python3 bench/spool_syscalls.py --bin build/dev/bin \\
      --messages 400 --sessions 20
"""

import argparse
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time

CALLS = ["fsync", "fdatasync", "openat", "rename", "renameat", "renameat2",
         "unlink", "unlinkat"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port):
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="build/dev/bin")
    ap.add_argument("--messages", type=int, default=400)
    ap.add_argument("--sessions", type=int, default=1)
    args = ap.parse_args()
    bin_dir = os.path.abspath(args.bin)
    work = tempfile.mkdtemp(prefix="sinkline-syscalls-")
    config = os.path.join(work, "bindings.yaml")
    with open(config, "w") as f:
        f.write("sinks: []\nbindings: []\n")
    bport, eport = free_port(), free_port()
    summary = os.path.join(work, "strace.txt")
    broker = subprocess.Popen(
        ["strace", "-f", "-c", "-o", summary, "-e",
         "trace=" + ",".join(CALLS), os.path.join(bin_dir, "sinkline-broker"),
         f"--listen=127.0.0.1:{bport}", f"--config={config}",
         f"--spool-dir={work}/spool", f"--queue-dir={work}/queue",
         "--spool-scan-interval-ms=0", "--config-poll-ms=0",
         "--session-allow-loopback"],
        stdout=open(os.path.join(work, "broker.log"), "wb"),
        stderr=subprocess.STDOUT)
    wait_port(bport)
    edge = subprocess.Popen([
        os.path.join(bin_dir, "sinkline-edge"), f"--listen=127.0.0.1:{eport}",
        f"--broker=127.0.0.1:{bport}", "--hostname=mx.example.test",
        "--accepted-domains=example.test"],
        stdout=open(os.path.join(work, "edge.log"), "wb"),
        stderr=subprocess.STDOUT)
    wait_port(eport)
    # Warm-up message (the first connection, the first directories).
    body = ("Subject: x\r\n\r\n" + ("y" * 70 + "\r\n") * 70).encode()
    with smtplib.SMTP("127.0.0.1", eport, timeout=30) as s:
        s.sendmail("a@example.test", ["b@example.test"], body)
    acked = []
    lock = threading.Lock()

    def sender(count):
        with smtplib.SMTP("127.0.0.1", eport, timeout=60) as s:
            for _ in range(count):
                s.sendmail("a@example.test", ["b@example.test"], body)
                with lock:
                    acked.append(1)

    per = args.messages // args.sessions
    threads = [threading.Thread(target=sender, args=(per,))
               for _ in range(args.sessions)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - t0
    new = os.path.join(work, "queue", "new")
    total = len(acked) + 1
    for _ in range(600):
        if len(os.listdir(new)) >= total:
            break
        time.sleep(0.1)
    time.sleep(0.5)
    edge.send_signal(signal.SIGTERM)
    edge.wait(timeout=30)
    # SIGTERM to the broker itself (strace ends with it and writes its
    # summary).
    with open(f"/proc/{broker.pid}/task/{broker.pid}/children") as f:
        traced = int(f.read().split()[0])
    os.kill(traced, signal.SIGTERM)
    broker.wait(timeout=60)
    counts = {}
    with open(summary) as f:
        for line in f:
            m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$",
                         line)
            if m:
                counts[m.group(2)] = int(m.group(1))
    renames = sum(counts.get(c, 0) for c in ("rename", "renameat",
                                              "renameat2"))
    unlinks = counts.get("unlink", 0) + counts.get("unlinkat", 0)
    fsyncs = counts.get("fsync", 0) + counts.get("fdatasync", 0)
    print(f"{args.sessions} sessions, {total} messages in {took:.1f} s "
          f"({len(acked) / took:.0f}/s): per message fsync "
          f"{fsyncs / total:.2f}, openat {counts.get('openat', 0) / total:.2f}"
          f", rename {renames / total:.2f}, unlink {unlinks / total:.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
