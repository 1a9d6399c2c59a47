"""Harness for Sinkline's multi-process integration tests.

Starts the stamp sink, the broker and the edge as real processes on port 0
with temporary directories, waits until each serves, stops them by PID, and
prints their logs when a test fails.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

BIN_DIR = os.environ.get("SINKLINE_BIN_DIR", "")
# Python modules generated from proto/ (build/<preset>/python).
PYTHON_DIR = os.environ.get("SINKLINE_PYTHON_DIR", "")
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
if PYTHON_DIR and PYTHON_DIR not in sys.path:
    sys.path.insert(0, PYTHON_DIR)  # generated message modules
START_TIMEOUT_S = 15.0


RECEIVED = re.compile(rb"Received: [^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*")


def split_received(data, at=0):
    """Returns (data without the Received: header that starts at offset
    `at`, that header). The broker adds one trace header to every message
    at COMMIT; tests that compare bytes take it out first."""
    m = RECEIVED.match(data, at)
    if m is None:
        raise AssertionError(f"no Received: header at {at}: {data[:300]!r}")
    return data[:at] + data[m.end():], m.group(0)


def make_cert(workdir):
    """A self-signed certificate and key for mx.example.test (STARTTLS)."""
    cert = os.path.join(workdir, "cert.pem")
    key = os.path.join(workdir, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
         "-days", "2", "-subj", "/CN=mx.example.test",
         "-addext", "subjectAltName=DNS:mx.example.test",
         "-keyout", key, "-out", cert],
        check=True, capture_output=True, timeout=60)
    return cert, key


def binary(name):
    path = os.path.join(BIN_DIR, name)
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"{path} is not built (set SINKLINE_BIN_DIR)")
    return path


def spool_records(spool_dir):
    """The records in a broker's spool store (sink_broker/spool.h), read
    with `sinkline-broker --dump-spool` (read-only, also while a broker
    runs): key -> the QueueEntry as a dict for e/<id>, else the text."""
    out = subprocess.run(
        [binary("sinkline-broker"), "--dump-spool",
         f"--spool-dir={spool_dir}"], capture_output=True, check=True,
        timeout=60).stdout
    records = {}
    for line in out.decode().splitlines():
        r = json.loads(line)
        records[r["key"]] = r["entry"] if "entry" in r else r["value"]
    return records


def wait_for(predicate, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def tcp_ready(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Process:
    """One started service: its PID, log file and port."""

    def __init__(self, name, argv, workdir, env=None, preexec_fn=None):
        self.name = name
        self.env = env
        # Run in the child before exec (e.g. resource.setrlimit).
        self.preexec_fn = preexec_fn
        self.argv = argv
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.port_file = os.path.join(workdir, f"{name}.port")
        self.proc = None
        self.port = None

    def start(self):
        if os.path.exists(self.port_file):
            os.unlink(self.port_file)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv + [f"--port-file={self.port_file}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            preexec_fn=self.preexec_fn,
        )
        log.close()

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode}:\n"
                    + self.log()
                )
            try:
                with open(self.port_file) as f:
                    text = f.read().strip()
            except FileNotFoundError:
                return None
            return int(text) if text else None

        self.port = wait_for(ready, START_TIMEOUT_S, f"{self.name} port file")
        wait_for(lambda: tcp_ready(self.port), START_TIMEOUT_S,
                 f"{self.name} accepting")
        return self

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout_s=10.0):
        if not self.running():
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self):
        self.stop(signal.SIGKILL)

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""


class Stack:
    """A broker, an edge and sinks, each a real process on loopback."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.spool_dir = os.path.join(workdir, "spool")
        self.queue_dir = os.path.join(workdir, "queue")
        self.config_path = os.path.join(workdir, "bindings.yaml")
        os.makedirs(self.spool_dir, exist_ok=True)
        os.makedirs(self.queue_dir, exist_ok=True)
        self.processes = []
        self.sinks = {}
        self.broker = None
        self.edge = None

    def _add(self, process):
        self.processes.append(process)
        return process.start()

    def start_stamp_sink(self, name="stamp", header="X-Sinkline-Stamp"):
        p = Process(name, [binary("sinkline-sink-stamp"),
                           "--listen=127.0.0.1:0", f"--name={name}",
                           f"--header={header}"], self.workdir)
        self.sinks[name] = self._add(p)
        return p

    def start_sink(self, name, binary_name, args=()):
        """Any C++ sink built on the SDK (it takes --listen/--port-file)."""
        p = Process(name, [binary(binary_name), "--listen=127.0.0.1:0"]
                    + list(args), self.workdir)
        self.sinks[name] = self._add(p)
        return p

    def start_python_sink(self, name, script, args=()):
        """A sink written in Python (sinks/python/<script>), run with
        Debian's python3."""
        env = dict(os.environ, PYTHONPATH=PYTHON_DIR)
        p = Process(name, ["/usr/bin/python3",
                           os.path.join(ROOT, "sinks", "python", script),
                           "--listen=127.0.0.1:0"] + list(args),
                    self.workdir, env=env)
        self.sinks[name] = self._add(p)
        return p

    def write_config(self, bindings, targets=None):
        """bindings: list of dicts (YAML keys); sinks come from started ones,
        and from `targets` (sink name -> gRPC target) when given."""
        lines = ["sinks:"]
        for name, p in self.sinks.items():
            lines += [f"  - name: {name}", f"    target: 127.0.0.1:{p.port}"]
        for name, target in (targets or {}).items():
            lines += [f"  - name: {name}", f"    target: {target}"]
        lines.append("bindings:" if bindings else "bindings: []")
        for b in bindings:
            first = True
            for key, value in b.items():
                if isinstance(value, bool):
                    value = "true" if value else "false"
                prefix = "  - " if first else "    "
                lines.append(f"{prefix}{key}: {json.dumps(value)}"
                             if isinstance(value, str)
                             else f"{prefix}{key}: {value}")
                first = False
        with open(self.config_path, "w") as f:
            f.write("\n".join(lines) + "\n")

    def start_broker(self, listen="127.0.0.1:0", extra=(), queue_dir=True,
                     admin_loopback=True, session_loopback=True,
                     preexec_fn=None):
        """queue_dir=False: the caller names another backend in `extra`
        (e.g. --relay-host). admin_loopback: pass --admin-allow-loopback
        (the development stack's trust; tests call Admin from loopback).
        session_loopback: pass --session-allow-loopback (edges on loopback
        open session streams without a token)."""
        p = Process("broker", [binary("sinkline-broker"),
                               f"--listen={listen}",
                               f"--config={self.config_path}",
                               f"--spool-dir={self.spool_dir}"]
                    + ([f"--queue-dir={self.queue_dir}"] if queue_dir else [])
                    + (["--admin-allow-loopback"] if admin_loopback else [])
                    + (["--session-allow-loopback"] if session_loopback
                       else [])
                    + list(extra), self.workdir, preexec_fn=preexec_fn)
        self.broker = self._add(p)
        return p

    def start_edge(self, extra=(), admin_loopback=True):
        """The edge takes mail for example.test (like scripts/start.sh);
        other domains need AUTH or a trusted network."""
        p = Process("edge", [binary("sinkline-edge"), "--listen=127.0.0.1:0",
                             f"--broker=127.0.0.1:{self.broker.port}",
                             "--hostname=mx.example.test",
                             "--broker-connect-timeout-ms=2000",
                             "--accepted-domains=example.test"]
                    + (["--admin-allow-loopback"] if admin_loopback else [])
                    + list(extra), self.workdir)
        self.edge = self._add(p)
        return p

    def stop(self):
        for p in reversed(self.processes):
            p.stop()

    def logs(self):
        return "\n".join(f"===== {p.name} (pid {p.pid}) =====\n{p.log()}"
                         for p in self.processes)

    def sanitizer_reports(self):
        """Lines in which a sanitizer-built process (the asan preset)
        reported memory misuse, a leak or undefined behaviour."""
        found = []
        for path in sorted({p.log_path for p in self.processes}):
            try:
                with open(path, errors="replace") as f:
                    found += [f"{os.path.basename(path)}: {line.strip()}"
                              for line in f if SANITIZER_REPORT.search(line)]
            except FileNotFoundError:
                pass
        return found

    # The spool queue directory: <queue>/new/<queue id>, envelope JSON on the
    # first line, then the message bytes.
    def queued(self, queue_id, timeout_s=10.0):
        path = os.path.join(self.queue_dir, "new", queue_id)
        wait_for(lambda: os.path.exists(path), timeout_s,
                 f"queue file {path}")
        with open(path, "rb") as f:
            data = f.read()
        first, _, message = data.partition(b"\n")
        return json.loads(first), message

    def queue_ids(self):
        d = os.path.join(self.queue_dir, "new")
        return sorted(os.listdir(d)) if os.path.isdir(d) else []


class AdminClient:
    """The broker's sinkline.v1.Admin service, called with Debian's grpcio."""

    def __init__(self, port):
        import grpc  # noqa: E402  (Debian's python3-grpcio)
        self.grpc = grpc
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")

    def call(self, method, request, response_type):
        fn = self.channel.unary_unary(
            f"/sinkline.v1.Admin/{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString)
        return fn(request, timeout=10)

    def messages(self, state=0):
        from sinkline.v1 import admin_pb2
        return list(self.call("ListMessages",
                              admin_pb2.ListMessagesRequest(state=state),
                              admin_pb2.ListMessagesResponse).messages)

    def message(self, queue_id):
        from sinkline.v1 import admin_pb2
        return self.call("GetMessage",
                         admin_pb2.GetMessageRequest(queue_id=queue_id),
                         admin_pb2.MessageInfo)

    def release(self, queue_id):
        from sinkline.v1 import admin_pb2
        return self.call("ReleaseMessage",
                         admin_pb2.ReleaseMessageRequest(queue_id=queue_id),
                         admin_pb2.MessageInfo)

    def counters(self):
        from sinkline.v1 import admin_pb2
        return {c.name: c.value for c in self.call(
            "GetCounters", admin_pb2.GetCountersRequest(),
            admin_pb2.GetCountersResponse).counters}

    def close(self):
        self.channel.close()


# What the address, leak and undefined-behaviour sanitizers print.
SANITIZER_REPORT = re.compile(
    r"ERROR: (Address|Leak)Sanitizer|runtime error: ")


def has_failed(case):
    """For tearDown: did this test fail? (Inside tearDown, Python 3.11's
    case._outcome.success describes the tearDown itself; the test's own
    failure is in the result.)"""
    result = case._outcome.result
    return any(test is case for test, _ in result.failures + result.errors)


class StackTestCase(unittest.TestCase):
    """Gives each test a fresh temporary directory and stack, stops every
    process by PID afterwards, and prints all logs when the test failed."""

    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="sinkline-test-")
        self.stack = Stack(self.workdir)

    def tearDown(self):
        self.stack.stop()
        reports = self.stack.sanitizer_reports()
        failed = has_failed(self) or bool(reports)
        if failed:
            print(f"\n--- logs of {self.id()} ---\n{self.stack.logs()}")
        if failed and os.environ.get("SINKLINE_KEEP_TMP"):
            print(f"kept {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.assertEqual(reports, [], "sanitizer reports in process logs")

    def start_default_stack(self):
        """Stamp sink bound to EOD after COMMIT, broker, edge."""
        self.stack.start_stamp_sink()
        self.stack.write_config([{
            "name": "stamp-eod", "sink": "stamp", "event": "EOD",
            "priority": 30000, "deadline_ms": 5000,
            "failure_policy": "continue", "content_access": "read-write",
        }])
        self.stack.start_broker()
        self.stack.start_edge()


class RawSmtp:
    """A minimal SMTP client over a raw socket, to see every reply exactly."""

    def __init__(self, port, timeout_s=30.0):
        self.sock = socket.create_connection(("127.0.0.1", port),
                                             timeout=timeout_s)
        self.buf = b""

    def reply(self):
        """Reads one (possibly multi-line) reply: (code, [lines])."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(
                        f"connection closed; partial reply {self.buf!r}")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode("utf-8", "replace"))
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3]), lines

    def send(self, data):
        self.sock.sendall(data)

    def cmd(self, line):
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def closed_by_peer(self, timeout_s=5.0):
        self.sock.settimeout(timeout_s)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()
