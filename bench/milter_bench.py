"""The cost of the milter bridge against Postfix, with the same milter on
the same box: Debian's OpenDKIM (signing mode, an RSA-2048 key, on a UNIX
socket) behind

  - Postfix 3.7 (a private instance under a temporary directory, its own
    config and queue; OpenDKIM as smtpd_milters), relaying to smtp-sink;
  - Sinkline: edge + broker (relay backend to smtp-sink) with
    sinkline-sink-milter bound at EOD before COMMIT to the same OpenDKIM.

The client is Postfix's smtp-source (a new connection per message, several
sessions at once), the next hop Postfix's smtp-sink (it writes each message
to a file, so the bench checks every one was delivered and DKIM-signed).
Prints messages/s (until the last message reached the next hop) and CPU ms
per message of every server-side process, then the ratio. CPU is counted the
same way for both servers and as bench/compare.py counts it (benchlib's
Sampler): user + system time from /proc/<pid>/stat of the whole process tree
of each server (Postfix's master and every child, or edge, broker and
bridge) and of OpenDKIM, sampled every 200 ms, children that exited between
samples counted through their parent's reaped time; the client and the next
hop are left out. Both sides get the same OpenDKIM configuration and key
size, the same number of messages, sessions and message size; the runs
alternate (Postfix, Sinkline, Postfix, ...) and the median of
--repetitions is printed. Loopback only, bounded time.

    /usr/bin/python3 bench/milter_bench.py [--messages N] [--sessions S]
        [--repetitions R] [--breakdown] [--profile DIR] [--bin DIR]

--profile DIR records the Sinkline processes of the last repetition with
`perf record -g` into DIR/perf.data (with --strace: counts their system
calls with `strace -c -f` instead, one strace per process, into
DIR/strace-<process>.txt), for the whole run.
"""

import argparse
import glob
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
parser = argparse.ArgumentParser()
parser.add_argument("--bin", default=os.path.join(ROOT, "build", "dev", "bin"))
parser.add_argument("--messages", type=int, default=300)
parser.add_argument("--sessions", type=int, default=10)
parser.add_argument("--size", type=int, default=5120)
parser.add_argument("--timeout", type=float, default=300,
                    help="seconds each run may take")
parser.add_argument("--repetitions", type=int, default=1)
parser.add_argument("--breakdown", action="store_true",
                    help="CPU ms per message by process")
parser.add_argument("--profile", default="",
                    help="perf record of the Sinkline processes, here")
parser.add_argument("--strace", action="store_true",
                    help="with --profile: strace -c -f instead of perf")
parser.add_argument("--bare", action="store_true",
                    help="also Sinkline with nothing bound (no milter called), "
                    "to separate the bridge's cost from the stack's")
parser.add_argument("--bridge-arg", action="append", default=[],
                    help="one more flag for sinkline-sink-milter")
args = parser.parse_args()
os.environ["SINKLINE_BIN_DIR"] = args.bin
os.environ.setdefault("SINKLINE_PYTHON_DIR", os.path.join(
    os.path.dirname(args.bin), "python"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

from harness import Stack, wait_for  # noqa: E402
from milter_tools import External  # noqa: E402
from postfix import Postfix, free_port  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import Sampler  # noqa: E402


def start_opendkim(workdir):
    key = os.path.join(workdir, "dkim.pem")
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                    "rsa_keygen_bits:2048", "-out", key], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.chmod(key, 0o600)
    sock = os.path.join(workdir, "opendkim.sock")
    conf = os.path.join(workdir, "opendkim.conf")
    with open(conf, "w") as f:
        f.write(f"""Mode s
Domain example.test
Selector bench
KeyFile {key}
Socket local:{sock}
UMask 000
Canonicalization relaxed/simple
SignatureAlgorithm rsa-sha256
InternalHosts 127.0.0.1
RequireSafeKeys false
Background no
Syslog no
PidFile {os.path.join(workdir, "opendkim.pid")}
""")
    return External("opendkim", ["/usr/sbin/opendkim", "-f", "-x", conf],
                    workdir, sock).start()


def start_sink(workdir):
    port = free_port()
    dump = os.path.join(workdir, "delivered")
    os.makedirs(dump)
    os.chmod(dump, 0o777)
    log = open(os.path.join(workdir, "smtp-sink.log"), "ab")
    proc = subprocess.Popen(["/usr/sbin/smtp-sink", "-u", "postfix", "-d",
                             os.path.join(dump, "%M."),
                             f"127.0.0.1:{port}", "256"],
                            stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    log.close()

    def ready():
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0
    wait_for(ready, 10, "smtp-sink")
    return proc, port, dump


def delivered(dump):
    return glob.glob(os.path.join(dump, "*"))


def signed(dump):
    n = 0
    for path in delivered(dump):
        with open(path, "rb") as f:
            data = f.read()
        if re.search(rb"(?m)^DKIM-Signature: v=1; a=rsa-sha256", data):
            n += 1
        elif os.environ.get("BENCH_DEBUG"):
            print(data[:600].decode(errors="replace"), file=sys.stderr)
    return n


def start_postfix(workdir, milter_sock, hop_port):
    pf = Postfix(workdir, "postfix", relayhost=f"[127.0.0.1]:{hop_port}",
                 main={"smtpd_milters": f"unix:{milter_sock}",
                       "milter_protocol": "6",
                       "milter_default_action": "tempfail",
                       "smtpd_client_connection_rate_limit": "0",
                       "default_process_limit": "100",
                       "smtp_destination_concurrency_limit": "20"})
    pf.start()
    return pf, [pf.pid]


def start_sinkline(workdir, milter_sock, hop_port, bound=True):
    stack = Stack(workdir)
    stack.start_sink("milter", "sinkline-sink-milter",
                     [f"--milter=unix:{milter_sock}", "--log-level=warn"] +
                     args.bridge_arg)
    stack.write_config([
        {"name": "opendkim", "sink": "milter", "event": "EOD",
         "priority": 20000, "content_access": "read-write",
         "deadline_ms": 10000, "failure_policy": "tempfail"}]
        if bound else [])
    stack.start_broker(extra=["--log-level=warn",
                              f"--relay-host=127.0.0.1:{hop_port}",
                              "--relay-helo=broker.example.test"],
                       queue_dir=False)
    stack.start_edge(["--log-level=warn", "--idle-timeout-s=60",
                      "--accepted-domains=example.test,example.net"])
    return stack, [p.pid for p in stack.processes], stack.edge.port


def start_profile(pids, out):
    """perf record -g of `pids` and one strace -c -f each; returns stop."""
    os.makedirs(out, exist_ok=True)
    procs = []
    for pid in pids if args.strace else []:
        name = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
        procs.append(subprocess.Popen(
            ["strace", "-qq", "-c", "-f", "-p", str(pid),
             "-o", os.path.join(out, f"strace-{name}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    if not args.strace:
        procs.append(subprocess.Popen(
            ["perf", "record", "-g", "-o", os.path.join(out, "perf.data"),
             "-p", ",".join(str(p) for p in pids)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1)

    def stop():
        for p in procs:
            p.send_signal(2)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return stop


def run(kind, profile=""):
    workdir = tempfile.mkdtemp(prefix="sinkline-milter-bench-")
    os.chmod(workdir, 0o755)
    stoppers = []
    try:
        dkim = start_opendkim(workdir)
        stoppers.append(dkim.stop)
        hop, hop_port, dump = start_sink(workdir)
        stoppers.append(lambda: (hop.terminate(), hop.wait()))
        if kind == "postfix":
            pf, roots = start_postfix(workdir, dkim.sock, hop_port)
            stoppers.append(pf.stop)
            port = pf.port
        else:
            stack, roots, port = start_sinkline(workdir, dkim.sock, hop_port,
                                                kind == "sinkline")
            stoppers.append(stack.stop)
        roots = roots + [dkim.pid]
        stop_profile = start_profile(roots, profile) if profile else None
        sampler = Sampler(roots)
        t0 = time.monotonic()
        result = subprocess.run(
            ["/usr/sbin/smtp-source", "-s", str(args.sessions),
             "-m", str(args.messages), "-l", str(args.size),
             "-f", "bench@example.test", "-t", "rcpt@example.net",
             "-M", "client.example.net", f"127.0.0.1:{port}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            timeout=args.timeout)
        if result.returncode != 0:
            raise RuntimeError(result.stdout.decode(errors="replace"))
        wait_for(lambda: len(delivered(dump)) >= args.messages,
                 args.timeout - (time.monotonic() - t0),
                 "every message at the next hop")
        elapsed = time.monotonic() - t0
        per, cpu, _, _ = sampler.finish()
        if stop_profile:
            stop_profile()
        per = {k: v / args.messages * 1000.0 for k, v in per.items()}
        return (args.messages / elapsed, cpu / args.messages * 1000.0,
                len(delivered(dump)), signed(dump), per)
    finally:
        for stop in reversed(stoppers):
            stop()
        shutil.rmtree(workdir, ignore_errors=True)


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def main():
    print(f"OpenDKIM (signing, RSA-2048) behind Postfix and behind Sinkline; "
          f"{args.messages} messages of {args.size} octets, "
          f"{args.sessions} sessions, a connection per message "
          f"(smtp-source -> server -> smtp-sink), median of "
          f"{args.repetitions}")
    print()
    names = {"postfix": "Postfix 3.7 + OpenDKIM (smtpd_milters)",
             "sinkline": "Sinkline edge + broker + sinkline-sink-milter + "
                         "OpenDKIM"}
    names["bare"] = "(Sinkline edge + broker, nothing bound: not signed)"
    kinds = ("postfix", "sinkline") + (("bare",) if args.bare else ())
    runs = {k: [] for k in kinds}
    for r in range(args.repetitions):
        for kind in kinds:
            last = r == args.repetitions - 1
            runs[kind].append(run(kind, args.profile if last and
                                  kind == "sinkline" else ""))
    print("| server | messages/s | CPU ms/message | delivered | signed |")
    print("|---|---:|---:|---:|---:|")
    results = {}
    for kind in kinds:
        rs = runs[kind]
        rate = median([x[0] for x in rs])
        mid = sorted(rs, key=lambda x: x[1])[len(rs) // 2]
        results[kind] = (rate, mid[1], mid[4])
    for kind in kinds:
        rate, cpu_ms = results[kind][:2]
        print(f"| {names[kind]} | {rate:.0f} | {cpu_ms:.2f} | "
              f"{min(x[2] for x in runs[kind])} | "
              f"{min(x[3] for x in runs[kind])} |")
        if kind == "sinkline":
            print(f"| Sinkline / Postfix | "
                  f"{results['sinkline'][0] / results['postfix'][0]:.2f} | "
                  f"{results['sinkline'][1] / results['postfix'][1]:.2f} "
                  f"| | |")
    print()
    print("CPU = user + system time of every server-side process over the "
          "run (Postfix's master and all its children, or edge, broker and "
          "bridge; OpenDKIM in both), until the last message reached the "
          "next hop; delivered and signed: the fewest of the repetitions.")
    if args.breakdown:
        print()
        print("CPU ms per message by process (the median run):")
        for kind in kinds:
            parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(
                results[kind][2].items(), key=lambda kv: -kv[1])
                if v >= 0.005)
            print(f"- {kind}: {parts}")
        print()
        print("CPU ms per message of each repetition: " + "; ".join(
            f"{kind} " + ", ".join(f"{x[1]:.2f}" for x in runs[kind])
            for kind in kinds))


if __name__ == "__main__":
    main()
