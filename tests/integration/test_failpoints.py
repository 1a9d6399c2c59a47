"""The broker killed (SIGKILL) at every failpoint of its durable path, then
restarted on the same spool: whatever the point, every message a client got
250 for is queued exactly once (a message queued without a 250 is allowed
only when its client saw no 250), no message a sink refused is submitted,
no lease's writes are applied in part, and no sink runs twice except as a
marked redelivery.

The points come from the one table of them (and a few later hits of the
shared ones, <point>:<N>), kFailpoints in
common/sinkline/common/failpoint.cc (a build with SINKLINE_FAILPOINTS, as
the dev and asan presets are). For each point: a fresh spool, the broker
armed with SINKLINE_FAILPOINT=<point>, messages sent one at a time until it
dies there, a restart without the failpoint, the spool drained, the checks.
Prints a table: point, fired, outcome."""

import json
import os
import re
import smtplib
import time
import unittest

from harness import (BIN_DIR, ROOT, AdminClient, Process, StackTestCase,
                     binary, wait_for)

HERE = os.path.dirname(os.path.abspath(__file__))
TABLE = os.path.join(ROOT, "common", "sinkline", "common", "failpoint.cc")
QUEUED = re.compile(rb"queued as (\S+)")
MESSAGE_ID = re.compile(rb"Message-ID: <([^>]+)>")
# What each message of a round is; the refused ones come early so that the
# points on their paths are reached.
KINDS = ["plain", "virus", "reject", "plain", "plain", "plain"]
AUDIT = "audit@example.test"
# Held, quarantined, failed (sinkline.v1.MessageState).
WAITING = (5, 6, 7)
# Later hits of the shared points: the 3rd directory fsync and store write
# (past the first COMMIT: a finished binding, a lease's envelope, a hold,
# the queue).
LATER_HITS = ["dirsync.before:3", "dirsync.after:4",
              "store.before_write:3", "store.after_write:4"]


def failpoints():
    with open(TABLE) as f:
        return re.findall(r'^\s*\{"([a-z_.]+)",', f.read(), re.M)


def failpoints_compiled_in():
    cache = os.path.join(os.path.dirname(BIN_DIR), "CMakeCache.txt")
    with open(cache) as f:
        return "SINKLINE_FAILPOINTS:BOOL=ON" in f.read()


class FailpointTest(StackTestCase):

    def setUp(self):
        super().setUp()
        self.calls_path = os.path.join(self.workdir, "post-calls.jsonl")
        env = dict(os.environ, PYTHONPATH=os.environ.get(
            "SINKLINE_PYTHON_DIR", ""))
        for phase in ("pre", "post"):
            p = Process(f"policy-{phase}",
                        ["/usr/bin/python3",
                         os.path.join(HERE, "policy_sink.py"),
                         "--listen=127.0.0.1:0", f"--phase={phase}",
                         f"--out={self.calls_path}"], self.workdir, env=env)
            self.stack.sinks[f"policy-{phase}"] = self.stack._add(p)
        self.stack.write_config([
            {"name": "policy-pre", "sink": "policy-pre", "event": "EOD",
             "priority": 100, "deadline_ms": 5000,
             "failure_policy": "tempfail", "content_access": "read"},
            {"name": "policy-post", "sink": "policy-post", "event": "EOD",
             "priority": 30000, "deadline_ms": 5000,
             "failure_policy": "continue", "content_access": "read-write"},
        ])
        self.port = 0
        self.seq = 0

    def start_broker(self, point, run, failpoint=None):
        env = dict(os.environ)
        env.pop("SINKLINE_FAILPOINT", None)
        if failpoint:
            env["SINKLINE_FAILPOINT"] = failpoint
        d = os.path.join(self.workdir, point.replace(":", "-"))
        p = Process(f"broker-{point.replace(':', '-')}-{run}",
                    [binary("sinkline-broker"),
                     f"--listen=127.0.0.1:{self.port}",
                     f"--config={self.stack.config_path}",
                     f"--spool-dir={d}/spool", f"--queue-dir={d}/queue",
                     "--admin-allow-loopback", "--session-allow-loopback",
                     "--submit-retry-min-ms=100",
                     "--spool-scan-interval-ms=0", "--shutdown-grace-s=2"], self.workdir, env=env)
        self.stack._add(p)
        self.stack.broker = p
        self.port = p.port
        return p

    def send(self, kind):
        self.seq += 1
        mid = f"{self.seq}.{kind}@fp.example.test"
        marker = {"virus": "VIRUS", "reject": "REJECT-ME"}.get(kind, "ok")
        body = (f"Message-ID: <{mid}>\r\nSubject: {kind}\r\n\r\n"
                f"{marker}\r\n").encode()
        s = None
        try:
            s = smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=20)
            s.ehlo("client.example.test")
            code, resp = s.mail("fp@example.test")
            if code == 250:
                code, resp = s.rcpt("sink@example.test")
            if code == 250:
                code, resp = s.data(body)
        except smtplib.SMTPResponseException as e:
            code, resp = e.smtp_code, e.smtp_error
        except (smtplib.SMTPException, OSError):
            code, resp = 0, b""  # cut
        finally:
            if s is not None:
                s.close()
        qid = None
        if code == 250:
            qid = QUEUED.search(resp).group(1).decode()
        return mid, kind, code, qid

    def states(self):
        """Queue id -> state, from the broker's Admin service (the spool's
        records are in its store)."""
        admin = AdminClient(self.stack.broker.port)
        try:
            return {m.queue_id: m.state for m in admin.messages()}
        finally:
            admin.close()

    def drained(self, spool):
        # Every message whose content is still in the spool waits for an
        # operator (held, quarantined, failed).
        committed = os.path.join(spool, "committed")
        ids = [n[:-4] for n in os.listdir(committed) if n.endswith(".msg")]
        if not ids:
            return True
        try:
            states = self.states()
        except Exception:  # the broker still starting
            return False
        return all(states.get(i) in WAITING for i in ids)

    def check(self, point, sent):
        d = os.path.join(self.workdir, point.replace(":", "-"))
        spool, queue = f"{d}/spool", f"{d}/queue/new"
        problems = []
        queued = {}  # message id -> [(queue id, envelope, data)]
        for qid in sorted(os.listdir(queue)) if os.path.isdir(queue) else []:
            with open(os.path.join(queue, qid), "rb") as f:
                first, _, data = f.read().partition(b"\n")
            mid = MESSAGE_ID.search(data).group(1).decode()
            queued.setdefault(mid, []).append((qid, json.loads(first), data))
        calls = {}
        if not os.path.exists(self.calls_path):
            open(self.calls_path, "a").close()
        with open(self.calls_path) as f:
            for line in f:
                c = json.loads(line)
                calls.setdefault(c["queue_id"], []).append(c["redelivery"])
        by_mid = {mid: (kind, code, qid) for mid, kind, code, qid in sent}
        states = self.states()
        for mid, (kind, code, qid) in by_mid.items():
            got = queued.get(mid, [])
            if kind in ("virus", "reject"):
                if got:
                    problems.append(f"refused {mid} submitted")
                if kind == "virus" and code == 250 and states.get(qid) not in (
                        5, 6):
                    problems.append(f"refused {mid} ({qid}) not quarantined")
                continue
            if code == 250 and [q for q, _, _ in got] != [qid]:
                problems.append(f"acknowledged {mid} ({qid}) queued as "
                                f"{[q for q, _, _ in got]}")
            if code != 250 and len(got) > 1:
                problems.append(f"{mid} queued {len(got)} times")
        for mid, entries in queued.items():
            if mid not in by_mid:
                problems.append(f"{mid} queued, never sent")
            for qid, env, data in entries:
                stamps = data.count(b"X-Policy: ")
                audit = [r for r in env["envelope"]["recipients"]
                         if r["address"] == AUDIT]
                runs = calls.get(qid, [])
                first_runs = [r for r in runs if not r]
                if len(first_runs) > 1:
                    problems.append(f"{qid}: sink ran {len(first_runs)} "
                                    "times unmarked")
                if stamps == 0 or len(audit) == 0:
                    problems.append(f"{qid}: lease writes in part or none "
                                    f"(headers {stamps}, audit {len(audit)})")
                if stamps > 1 and len(runs) < stamps:
                    problems.append(f"{qid}: {stamps} headers from "
                                    f"{len(runs)} sink runs")
        return problems

    def write_binding_state(self):
        """The spool's records are in its store: the durable file writes
        left (durable.* points) are the Admin bindings' state file and a
        DSN's content. A disabled binding created through Admin writes the
        former; the broker dies in the call."""
        from sinkline.v1 import admin_pb2, types_pb2
        admin = AdminClient(self.stack.broker.port)
        try:
            admin.call("CreateBinding", admin_pb2.CreateBindingRequest(
                binding=admin_pb2.Binding(
                    name="fp-admin", sink="policy-post",
                    event=types_pb2.EVENT_TYPE_EOD, priority=31000,
                    enabled=False)), admin_pb2.BindingResponse)
        except Exception:  # killed at the failpoint
            pass
        finally:
            admin.close()

    def run_point(self, point):
        broker = self.start_broker(point, 1, failpoint=point)
        if self.stack.edge is None:
            self.stack.start_edge(["--broker-connect-timeout-ms=5000"])
        if point.startswith("durable."):
            self.write_binding_state()
        sent = []
        for kind in KINDS:
            if not broker.running():
                break
            sent.append(self.send(kind))
        try:
            wait_for(lambda: not broker.running(), 15, f"failpoint {point}")
            fired = True
        except AssertionError:
            fired = False
        if fired:
            broker.proc.wait()
            broker = self.start_broker(point, 2)
        spool = os.path.join(self.workdir, point.replace(":", "-"), "spool")
        wait_for(lambda: self.drained(spool), 30,
                 f"spool drained after {point}")
        problems = self.check(point, sent)
        broker.stop()
        acked = sum(1 for s in sent if s[2] == 250)
        return fired, acked, len(sent), problems

    def test_every_failpoint(self):
        self.assertTrue(failpoints_compiled_in(),
                        "this build has no failpoints (SINKLINE_FAILPOINTS)")
        points = failpoints()
        self.assertGreater(len(points), 10)
        points += LATER_HITS
        rows = []
        started = time.monotonic()
        for point in points:
            fired, acked, sent, problems = self.run_point(point)
            outcome = "ok" if fired and not problems else (
                "; ".join(problems) if problems else "not reached")
            rows.append((point, fired, f"{acked}/{sent} acked", outcome))
        width = max(len(p) for p in points)
        print(f"\n{'point':<{width}}  fired  250s        outcome")
        for point, fired, acked, outcome in rows:
            print(f"{point:<{width}}  {'yes' if fired else 'NO ':<5}  "
                  f"{acked:<10}  {outcome}")
        print(f"{len(points)} points in {time.monotonic() - started:.0f} s")
        bad = [r for r in rows if r[3] != "ok"]
        self.assertEqual(bad, [])


if __name__ == "__main__":
    unittest.main()
