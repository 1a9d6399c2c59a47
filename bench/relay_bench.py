"""Delivery to a next hop: the broker's SMTP relay backend against
Postfix's smtp-sink on loopback. smtp-source sends N messages (5 KB) into
the edge from 20 concurrent sessions; no sink is bound; the broker relays
every message to smtp-sink. Prints delivered messages per second (from the
first message sent to the last one smtp-sink received) and how many SMTP
connections the relay opened per 1,000 messages (smtp-sink's session
count), and the broker's threads (most seen during the run, from
/proc/<pid>/status) and CPU per message (user + system, from
/proc/<pid>/stat, over the run). `--bin` picks the binaries, so a build of another commit can be
measured the same way (e.g. --bin /path/to/main/build/dev/bin).

    /usr/bin/python3 bench/relay_bench.py [--messages N] [--bin DIR] [--label L]
        [--sink-delay-s S] [--broker-arg=--submit-workers=2]
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
parser = argparse.ArgumentParser()
parser.add_argument("--bin", default=os.path.join(ROOT, "build", "release",
                                                  "bin"))
parser.add_argument("--messages", type=int, default=2000)
parser.add_argument("--sessions", type=int, default=20)
parser.add_argument("--size", type=int, default=5120)
parser.add_argument("--label", default="")
parser.add_argument("--sink-delay-s", type=int, default=0,
                    help="smtp-sink waits this long before answering each "
                    "DATA (a slow next hop)")
parser.add_argument("--broker-arg", action="append", default=[],
                    help="extra broker flag (repeatable)")
args = parser.parse_args()
os.environ["SINKLINE_BIN_DIR"] = args.bin
os.environ.setdefault("SINKLINE_PYTHON_DIR", os.path.join(
    os.path.dirname(args.bin), "python"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

from harness import AdminClient, Stack, wait_for  # noqa: E402



TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def threads(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


class ThreadWatch:
    """The most threads a process had, sampled every 50 ms."""

    def __init__(self, pid):
        self.pid, self.most, self.done = pid, threads(pid), False
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        while not self.done:
            try:
                self.most = max(self.most, threads(self.pid))
            except OSError:
                return
            time.sleep(0.05)

    def stop(self):
        self.done = True
        self.thread.join(5)
        return self.most


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sink:
    """smtp-sink on a free loopback port."""

    def __init__(self, workdir, delay_s=0):
        self.port = free_port()
        self.out = open(os.path.join(workdir, "smtp-sink.out"), "wb")
        self.proc = subprocess.Popen(
            ["/usr/sbin/smtp-sink"]
            + (["-u", "nobody"] if os.geteuid() == 0 else [])
            + (["-w", str(delay_s)] if delay_s else [])
            + [f"127.0.0.1:{self.port}", "1000"],
            stdout=self.out, stderr=subprocess.STDOUT)
        wait_for(self.listening, 10, "smtp-sink listening")

    def listening(self):
        try:
            socket.create_connection(("127.0.0.1", self.port), 0.2).close()
            return True
        except OSError:
            return False

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.out.close()


def main():
    workdir = tempfile.mkdtemp(prefix="sinkline-relay-bench-")
    sink = Sink(workdir, args.sink_delay_s)
    stack = Stack(workdir)
    try:
        stack.write_config([])
        stack.start_broker(extra=[f"--relay-host=127.0.0.1:{sink.port}",
                                  "--relay-helo=bench.example.test",
                                  "--log-level=warn"] + args.broker_arg,
                           queue_dir=False)
        stack.start_edge(["--log-level=warn", "--idle-timeout-s=60"])
        broker_pid = stack.broker.pid
        watch = ThreadWatch(broker_pid)
        cpu0 = cpu_s(broker_pid)
        t0 = time.monotonic()
        result = subprocess.run(
            ["/usr/sbin/smtp-source", "-s", str(args.sessions),
             "-m", str(args.messages), "-l", str(args.size),
             "-f", "bench@example.test", "-t", "rcpt@example.test",
             "-M", "client.example.net", f"127.0.0.1:{stack.edge.port}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
        accepted = time.monotonic() - t0
        if result.returncode != 0:
            raise RuntimeError(result.stdout.decode(errors="replace"))
        admin = AdminClient(stack.broker.port)

        def counter(name):
            return admin.counters().get(name, 0)
        wait_for(lambda: counter('sinkline_broker_messages_total'
                                 '{what="submitted"}') >= args.messages,
                 900, "every message submitted to smtp-sink")
        delivered = time.monotonic() - t0
        cpu = cpu_s(broker_pid) - cpu0
        most_threads = watch.stop()
        # Builds before the connection cache open one connection per
        # message and have no connection metric.
        opened = counter('sinkline_broker_relay_connections_total'
                         '{how="opened"}') or args.messages
        sessions = opened
        print(f"| {args.label} | {args.messages} | {args.sessions} | "
              f"{args.messages / accepted:.0f} | "
              f"{args.messages / delivered:.0f} | "
              f"{sessions * 1000 / args.messages:.0f} | {most_threads} | "
              f"{cpu * 1e6 / args.messages:.0f} |")
    finally:
        stack.stop()
        sink.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
