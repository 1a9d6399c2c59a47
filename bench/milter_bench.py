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
per message of every server-side process (from /proc/<pid>/stat: utime +
stime, plus cutime + cstime for children already reaped; the client and
the next hop are left out), then the ratio. Loopback only, bounded time.

    /usr/bin/python3 bench/milter_bench.py [--messages N] [--sessions S]
        [--bin DIR]
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
args = parser.parse_args()
os.environ["SINKLINE_BIN_DIR"] = args.bin
os.environ.setdefault("SINKLINE_PYTHON_DIR", os.path.join(
    os.path.dirname(args.bin), "python"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

from harness import Stack, wait_for  # noqa: E402
from milter_tools import External  # noqa: E402
from postfix import Postfix, free_port  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import stat_of, tree  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(roots):
    total = 0
    for pid in tree(roots):
        try:
            f = stat_of(pid)
        except OSError:
            continue
        # utime, stime, cutime, cstime: fields 14-17 of the whole line.
        total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total / TICKS


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


def start_sinkline(workdir, milter_sock, hop_port):
    stack = Stack(workdir)
    stack.start_sink("milter", "sinkline-sink-milter",
                     [f"--milter=unix:{milter_sock}", "--log-level=warn"])
    stack.write_config([
        {"name": "opendkim", "sink": "milter", "event": "EOD",
         "priority": 20000, "content_access": "read-write",
         "deadline_ms": 10000, "failure_policy": "tempfail"}])
    stack.start_broker(extra=["--log-level=warn",
                              f"--relay-host=127.0.0.1:{hop_port}",
                              "--relay-helo=broker.example.test"],
                       queue_dir=False)
    stack.start_edge(["--log-level=warn", "--idle-timeout-s=60",
                      "--accepted-domains=example.test,example.net"])
    return stack, [p.pid for p in stack.processes], stack.edge.port


def run(kind):
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
            stack, roots, port = start_sinkline(workdir, dkim.sock, hop_port)
            stoppers.append(stack.stop)
        roots = roots + [dkim.pid]
        cpu0 = cpu_seconds(roots)
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
        cpu = cpu_seconds(roots) - cpu0
        return (args.messages / elapsed, cpu / args.messages * 1000.0,
                len(delivered(dump)), signed(dump))
    finally:
        for stop in reversed(stoppers):
            stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main():
    print(f"OpenDKIM (signing, RSA-2048) behind Postfix and behind Sinkline; "
          f"{args.messages} messages of {args.size} octets, "
          f"{args.sessions} sessions, a connection per message "
          f"(smtp-source -> server -> smtp-sink)")
    print()
    print("| server | messages/s | CPU ms/message | delivered | signed |")
    print("|---|---:|---:|---:|---:|")
    results = {}
    for kind, name in (("postfix", "Postfix 3.7 + OpenDKIM (smtpd_milters)"),
                       ("sinkline", "Sinkline edge + broker + "
                                    "sinkline-sink-milter + OpenDKIM")):
        rate, cpu_ms, n, s = run(kind)
        results[kind] = (rate, cpu_ms)
        print(f"| {name} | {rate:.0f} | {cpu_ms:.2f} | {n} | {s} |",
              flush=True)
    print(f"| Sinkline / Postfix | "
          f"{results['sinkline'][0] / results['postfix'][0]:.2f} | "
          f"{results['sinkline'][1] / results['postfix'][1]:.2f} | | |")
    print()
    print("CPU = user + system time of every server-side process over the "
          "run (Postfix's master and all its children, or edge, broker and "
          "bridge; OpenDKIM in both), until the last message reached the "
          "next hop.")


if __name__ == "__main__":
    main()
