"""The fault suite's stack: next hop, a pre-COMMIT sink, a post-COMMIT sink,
one or two brokers relaying to the next hop, and the edge, each a real
process on loopback. Every process can be killed, stopped, resumed and
restarted on its own port; the stack remembers which restarts were planned
and reports any process that died without one."""

import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from harness import (PYTHON_DIR, ROOT, SANITIZER_REPORT, Process,  # noqa
                     binary, wait_for)

PRE_DEADLINE_MS = 2000
LEASE_MS = 2000


def admin_messages(port):
    """Every message a broker holds: [(queue id, state)], or None when the
    broker does not answer."""
    import grpc
    from sinkline.v1 import admin_pb2
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        fn = ch.unary_unary(
            "/sinkline.v1.Admin/ListMessages",
            request_serializer=admin_pb2.ListMessagesRequest.SerializeToString,
            response_deserializer=admin_pb2.ListMessagesResponse.FromString)
        resp = fn(admin_pb2.ListMessagesRequest(), timeout=20)
        return [(m.queue_id, m.state) for m in resp.messages]
    except grpc.RpcError:
        return None
    finally:
        ch.close()


class Service:
    """One process of the stack; `argv(listen)` builds its command line."""

    def __init__(self, name, argv, workdir, env=None):
        self.name, self.argv, self.workdir, self.env = name, argv, workdir, env
        self.port = None
        self.proc = None
        self.planned_restarts = 0
        self.died = []  # exit codes of deaths nobody planned

    def start(self):
        listen = f"127.0.0.1:{self.port}" if self.port else "127.0.0.1:0"
        p = Process(self.name, self.argv(listen), self.workdir, env=self.env)
        deadline = time.monotonic() + 30
        while True:  # the old port may take a moment to be free again
            try:
                p.start()
                break
            except AssertionError:
                if p.running():
                    p.kill()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        self.proc = p
        self.port = p.port
        return self

    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.running()

    def check(self):
        """Records a death nobody planned (the process is gone)."""
        if self.proc is not None and not self.proc.running():
            self.died.append(self.proc.proc.returncode)
            self.proc = None

    def kill(self):
        self.proc.kill()

    def restart(self, down_s=0.0):
        """A planned SIGKILL and start on the same port."""
        self.check()
        if self.proc is not None:
            self.proc.kill()
        time.sleep(down_s)
        self.planned_restarts += 1
        return self.start()

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def stop(self):
        if self.proc is not None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.proc.stop()


class FaultStack:

    def __init__(self, workdir, backlog, brokers=1, post="stamp",
                 spool_root=None):
        self.workdir = workdir
        self.backlog = backlog
        self.config = os.path.join(workdir, "bindings.yaml")
        self.rules = os.path.join(workdir, "next-hop-rules.json")
        self.mode_file = os.path.join(workdir, "pre-mode")
        self.delivered_dir = os.path.join(workdir, "next-hop")
        self.spool_root = spool_root or workdir
        self.services = {}
        self.brokers = []
        self.set_next_hop_delay(200 if backlog else 0)
        self.set_pre_mode("ok")
        env = dict(os.environ, PYTHONPATH=PYTHON_DIR)

        def add(name, argv, env=None):
            s = Service(name, argv, workdir, env)
            self.services[name] = s
            return s

        self.next_hop = add("next-hop", lambda listen: [
            "/usr/bin/python3", os.path.join(os.path.dirname(
                os.path.abspath(__file__)), "next_hop.py"),
            f"--listen={listen}", f"--out={self.delivered_dir}",
            f"--rules={self.rules}"])
        self.pre = add("pre-sink", lambda listen: [
            binary("sinkline-test-fault-sink"), f"--listen={listen}",
            f"--mode-file={self.mode_file}", "--hang-ms=1"])
        if post == "reader":
            stats = os.path.join(workdir, "reader.json")
            self.post = add("post-sink", lambda listen: [
                "/usr/bin/python3", os.path.join(
                    ROOT, "tests", "integration", "slow_reader_sink.py"),
                f"--listen={listen}", "--delay-ms=100",
                f"--stats={stats}"], env)
        else:
            self.post = add("post-sink", lambda listen: [
                binary("sinkline-sink-stamp"), f"--listen={listen}",
                "--name=stamp"])
        self.post_kind = post
        for n in range(1, brokers + 1):
            spool = os.path.join(self.spool_root, f"spool{n}")
            os.makedirs(spool, exist_ok=True)
            self.brokers.append(add(f"broker{n}", self._broker_argv(n, spool)))
        self.edge = add("edge", self._edge_argv)

    def _broker_argv(self, n, spool):
        def argv(listen):
            return [binary("sinkline-broker"), f"--listen={listen}",
                    f"--config={self.config}", f"--spool-dir={spool}",
                    f"--relay-host=127.0.0.1:{self.next_hop.port}",
                    "--relay-connect-timeout-ms=2000",
                    "--relay-timeout-ms=20000",
                    "--relay-destination-concurrency="
                    + ("1" if self.backlog else "10"),
                    "--submit-retry-min-ms=500",
                    "--submit-retry-max-ms=4000",
                    f"--broker-id=broker-{n}", "--admin-allow-loopback",
                    "--session-allow-loopback",
                    # A small tmpfs for the full-spool row: keep 4 MiB
                    # free instead of the default 64 MiB.
                    "--spool-min-free-bytes="
                    + str(4 << 20 if self.spool_root != self.workdir
                          else 64 << 20)]
        return argv

    def _edge_argv(self, listen):
        target = "ipv4:" + ",".join(f"127.0.0.1:{b.port}"
                                    for b in self.brokers)
        return [binary("sinkline-edge"), f"--listen={listen}",
                f"--broker={target}", "--hostname=mx.example.test",
                "--broker-connect-timeout-ms=2000",
                "--broker-timeout-ms=20000",
                "--max-sessions=2000", "--max-sessions-per-client=2000",
                "--accepted-domains=example.test"]

    def set_next_hop_delay(self, ms):
        tmp = self.rules + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"delay_ms": ms}, f)
        os.rename(tmp, self.rules)

    def set_pre_mode(self, mode):
        tmp = self.mode_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(mode + "\n")
        os.rename(tmp, self.mode_file)

    def write_config(self):
        post = {"name": "post", "sink": "post", "event": "EOD",
                "priority": 30000, "failure_policy": "continue",
                "content_access": "read-write",
                "deadline_ms": LEASE_MS if self.post_kind == "reader"
                else 5000}
        bindings = [
            {"name": "pre", "sink": "pre", "event": "EOD", "priority": 20000,
             "deadline_ms": PRE_DEADLINE_MS, "failure_policy": "tempfail",
             "content_access": "read-write"}, post]
        lines = ["sinks:",
                 "  - name: pre", f"    target: 127.0.0.1:{self.pre.port}",
                 "  - name: post", f"    target: 127.0.0.1:{self.post.port}",
                 "bindings:"]
        for b in bindings:
            for i, (k, v) in enumerate(b.items()):
                lines.append(("  - " if i == 0 else "    ") + f"{k}: "
                             + (json.dumps(v) if isinstance(v, str)
                                else str(v)))
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")

    def start(self):
        self.next_hop.start()
        self.pre.start()
        self.post.start()
        self.write_config()
        for b in self.brokers:
            b.start()
        self.edge.start()
        return self

    def edge_port(self):
        return self.edge.port

    def check(self):
        for s in self.services.values():
            s.check()

    def health(self):
        """'ok' or what died unplanned, with the planned restarts."""
        self.check()
        died = [f"{s.name} died ({s.died})" for s in self.services.values()
                if s.died]
        for s in self.services.values():  # asan builds: a report is a death
            try:
                with open(os.path.join(self.workdir, f"{s.name}.log"),
                          errors="replace") as f:
                    if any(SANITIZER_REPORT.search(line) for line in f):
                        died.append(f"{s.name}: sanitizer report")
            except FileNotFoundError:
                pass
        planned = [f"{s.name} x{s.planned_restarts}"
                   for s in self.services.values() if s.planned_restarts]
        text = "; ".join(died) if died else "all alive"
        if planned:
            text += " (restarted: " + ", ".join(planned) + ")"
        return text, not died

    def held(self):
        """Queue ids the brokers still hold, by state, or None when a broker
        does not answer."""
        out = {}
        for b in self.brokers:
            msgs = admin_messages(b.port) if b.alive() else None
            if msgs is None:
                return None
            out.update(msgs)
        return out

    def delivered(self):
        path = os.path.join(self.delivered_dir, "delivered.log")
        counts = {}
        try:
            with open(path, "rb") as f:
                for line in f:
                    mid = line.strip().decode("utf-8", "replace")
                    counts[mid] = counts.get(mid, 0) + 1
        except FileNotFoundError:
            pass
        return counts

    def drain(self, timeout_s):
        """Waits until no broker holds a message still on its way (states
        RECEIVING, LEASED, RELEASING); True when that happened in time."""
        self.set_next_hop_delay(0)
        self.set_pre_mode("ok")
        on_the_way = {1, 2, 3}

        def idle():
            held = self.held()
            return held is not None and not any(
                st in on_the_way for st in held.values())
        try:
            wait_for(idle, timeout_s, "the brokers to drain")
            return True
        except AssertionError:
            return False

    def stop(self):
        for s in reversed(list(self.services.values())):
            s.stop()

    def logs(self):
        out = []
        for s in self.services.values():
            path = os.path.join(self.workdir, f"{s.name}.log")
            try:
                with open(path, errors="replace") as f:
                    out.append(f"===== {s.name} =====\n" + f.read()[-6000:])
            except FileNotFoundError:
                pass
        return "\n".join(out)


def run(cmd):
    return subprocess.run(cmd, check=True, capture_output=True, timeout=30)
