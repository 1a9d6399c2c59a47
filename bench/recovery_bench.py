#!/usr/bin/python3
"""Restart with a large spool while sessions send.

Lays out --messages committed messages in a fresh spool (as COMMIT writes
them: content, then the binary QueueEntry record), starts the broker on it
and, from the same moment, --sessions SMTP sessions that send through the
edge: they get 4xx while the broker recovers (the edge retries nothing; the
client here tries again after 50 ms). Checks that every acknowledged message
is queued exactly once, that no 250 came before the broker logged the end
of its recovery, that every left-over message is queued once; prints the
recovery time and how long the queue took to drain.

  /usr/bin/python3 bench/recovery_bench.py --bin build/dev/bin \\
      --messages 100000 --sessions 20
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

QUEUED = re.compile(rb"queued as (\S+)")
RECOVERED = re.compile(r"spool recovered in (\d+) ms: (\d+) committed")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="build/dev/bin")
    ap.add_argument("--python", default="")
    ap.add_argument("--messages", type=int, default=100000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--per-session", type=int, default=20)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    bin_dir = os.path.abspath(args.bin)
    sys.path.insert(0, args.python or os.path.join(
        os.path.dirname(bin_dir), "python"))
    from sinkline.v1 import types_pb2

    work = tempfile.mkdtemp(prefix="sinkline-recovery-bench-")
    spool, queue = os.path.join(work, "spool"), os.path.join(work, "queue")
    committed = os.path.join(spool, "committed")
    os.makedirs(committed)
    os.makedirs(queue)
    config = os.path.join(work, "bindings.yaml")
    with open(config, "w") as f:
        f.write("sinks: []\nbindings: []\n")
    t0 = time.monotonic()
    left = set()
    for i in range(args.messages):
        qid = f"0REC{i:012d}"
        body = f"Subject: left {i}\r\n\r\nleft over {i}\r\n".encode()
        entry = types_pb2.QueueEntry(queue_id=qid, transaction_id="T1",
                                     broker_id="broker-1", size=len(body))
        entry.envelope.mail_from = "alice@example.net"
        entry.envelope.recipients.add().address = "bob@example.test"
        with open(os.path.join(committed, qid + ".msg"), "wb") as f:
            f.write(body)
        with open(os.path.join(committed, qid + ".env"), "wb") as f:
            f.write(entry.SerializeToString())
        left.add(qid)
    print(f"laid out {args.messages} committed messages in "
          f"{time.monotonic() - t0:.1f} s")

    bport, eport = free_port(), free_port()
    blog = open(os.path.join(work, "broker.log"), "wb")
    elog = open(os.path.join(work, "edge.log"), "wb")
    edge = subprocess.Popen([
        os.path.join(bin_dir, "sinkline-edge"), f"--listen=127.0.0.1:{eport}",
        f"--broker=127.0.0.1:{bport}", "--hostname=mx.example.test",
        "--broker-connect-timeout-ms=2000", "--accepted-domains=example.test"],
        stdout=elog, stderr=subprocess.STDOUT)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", eport), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)

    def broker_log():
        with open(os.path.join(work, "broker.log"), errors="replace") as f:
            return f.read()

    acked, early, codes = {}, [], {}
    lock = threading.Lock()
    stop = threading.Event()

    def sender(n):
        i = 0
        deadline = time.monotonic() + 900
        while i < args.per_session and time.monotonic() < deadline:
            body = f"Subject: new {n}.{i}\r\n\r\nnew {n}.{i}\r\n".encode()
            try:
                with smtplib.SMTP("127.0.0.1", eport, timeout=60) as s:
                    s.ehlo("client.example.net")
                    code, resp = s.mail("alice@example.net")
                    if code == 250:
                        code, resp = s.rcpt("bob@example.test")
                    if code == 250:
                        code, resp = s.data(body)
            except smtplib.SMTPResponseException as e:
                code, resp = e.smtp_code, e.smtp_error
            except (smtplib.SMTPException, OSError):
                code, resp = 0, b""
            with lock:
                codes[code] = codes.get(code, 0) + 1
            if code == 250:
                recovered = "spool recovered in" in broker_log()
                with lock:
                    acked[QUEUED.search(resp).group(1).decode()] = body
                    if not recovered:
                        early.append(resp)
                i += 1
            else:
                time.sleep(0.05)

    threads = [threading.Thread(target=sender, args=(n,))
               for n in range(args.sessions)]
    for t in threads:
        t.start()
    t_start = time.monotonic()
    broker = subprocess.Popen([
        os.path.join(bin_dir, "sinkline-broker"),
        f"--listen=127.0.0.1:{bport}", f"--config={config}",
        f"--spool-dir={spool}", f"--queue-dir={queue}",
        "--spool-scan-interval-ms=0", "--session-allow-loopback"],
        stdout=blog, stderr=subprocess.STDOUT)
    try:
        for t in threads:
            t.join()
        served_after = time.monotonic() - t_start
        new_dir = os.path.join(queue, "new")
        total = args.messages + len(acked)
        last = -1
        while True:
            n = len(os.listdir(new_dir)) if os.path.isdir(new_dir) else 0
            if n >= total or time.monotonic() - t_start > 3600:
                break
            if n == last:
                time.sleep(1.0)
            last = n
            time.sleep(0.5)
        drained = time.monotonic() - t_start
        queued = set(os.listdir(new_dir))
        log = broker_log()
        m = RECOVERED.search(log)
        problems = []
        if early:
            problems.append(f"{len(early)} 250s before recovery ended")
        if len(acked) != args.sessions * args.per_session:
            problems.append(f"only {len(acked)} acknowledged")
        lost = [q for q in acked if q not in queued]
        lost_left = [q for q in left if q not in queued]
        extra = queued - left - set(acked)
        if lost or lost_left or extra:
            problems.append(f"lost {len(lost)} acked, {len(lost_left)} left "
                            f"over; {len(extra)} unexpected in the queue")
        rec = re.findall(r"recovered committed queue_id=(\w+)", log)
        if len(rec) != len(set(rec)) or set(rec) != left:
            problems.append(f"recovered {len(rec)} ({len(set(rec))} "
                            f"distinct) of {len(left)}")
        print(f"recovery: {m.group(1) if m else '?'} ms for "
              f"{m.group(2) if m else '?'} messages (broker log)")
        print(f"sessions: {args.sessions} x {args.per_session} sent; replies "
              f"{dict(sorted(codes.items()))}; all acknowledged "
              f"{served_after:.1f} s after the broker started")
        print(f"queue: {len(queued)} of {total} after {drained:.1f} s")
        print("result:", "OK" if not problems else "; ".join(problems))
        return 0 if not problems else 1
    finally:
        stop.set()
        for p in (broker, edge):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print("kept", work)


if __name__ == "__main__":
    sys.exit(main())
