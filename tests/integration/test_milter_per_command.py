"""sinkline-sink-milter bound per command (CONNECT, HELO, MAIL, RCPT, EOD,
DISCONNECT) with session_affinity, in front of a tiny milter on Debian's
python3-milter: the milter refuses one recipient at RCPT time and the others
pass. Two bridge replicas sit behind one sink target; the broker sends every
event of a session to the same replica, so each SMTP session is one milter
session (one CONNECT), and the sessions spread over both replicas."""

import collections
import os
import re
import smtplib
import time
import unittest

from harness import StackTestCase, has_failed
from milter_tools import python_milter

QUEUED = re.compile(rb"queued as (\S+)")
EVENTS = ["CONNECT", "HELO", "EHLO", "MAIL", "RCPT", "EOD", "DISCONNECT"]


class MilterPerCommandTest(StackTestCase):

    def setUp(self):
        super().setUp()
        self.milter_log = os.path.join(self.workdir, "rcpt-milter.events")
        self.milter = python_milter(self.workdir, "rcpt-milter",
                                    "rcpt_milter.py",
                                    [f"--log={self.milter_log}"])
        self.addCleanup(self.milter.stop)
        self.milter.start()
        for name in ("bridge-a", "bridge-b"):
            self.stack.start_sink(name, "sinkline-sink-milter", [
                f"--milter=unix:{self.milter.sock}", "--mode=per-command",
                f"--daemon-name={name}"])
        a = self.stack.sinks["bridge-a"].port
        b = self.stack.sinks["bridge-b"].port
        bindings = [
            {"name": f"milter-{e.lower()}", "sink": "milter", "event": e,
             "priority": 100 if e != "EOD" else 20000,
             "deadline_ms": 10000, "failure_policy": "tempfail",
             "session_affinity": True}
            for e in EVENTS]
        for binding in bindings:
            if binding["event"] == "EOD":
                binding["content_access"] = "read-write"
        self.stack.write_config(
            bindings, targets={"milter": f"ipv4:127.0.0.1:{a},127.0.0.1:{b}"})
        self.stack.start_broker()
        self.stack.start_edge(
            ["--accepted-domains=example.test,example.net"])

    def tearDown(self):
        if has_failed(self):
            print("===== rcpt-milter =====\n" + self.milter.log())
        super().tearDown()

    def events(self):
        try:
            with open(self.milter_log) as f:
                return [line.split() for line in f]
        except FileNotFoundError:
            return []

    def test_refusal_at_rcpt_time_with_session_affinity(self):
        sessions = 12
        for i in range(sessions):
            with smtplib.SMTP("127.0.0.1", self.stack.edge.port,
                              timeout=30) as s:
                s.ehlo("client.example.net")
                self.assertEqual(s.mail("alice@example.test")[0], 250)
                code, resp = s.rcpt(f"refused{i}@example.test")
                self.assertEqual(code, 550, resp)
                self.assertIn(b"5.7.1 Recipient refused by rcpt-milter", resp)
                self.assertEqual(s.rcpt(f"bob{i}@example.test")[0], 250)
                code, resp = s.data(
                    b"From: alice@example.test\r\nSubject: s\r\n\r\nhi\r\n")
                self.assertEqual(code, 250, resp)
                qid = QUEUED.search(resp).group(1).decode()
                envelope, queued = self.stack.queued(qid)
                self.assertEqual(
                    [r["address"] for r in envelope["envelope"]["recipients"]],
                    [f"bob{i}@example.test"])
                self.assertRegex(queued,
                                 rb"X-Rcpt-Milter: seen by bridge-[ab]")
        # One CONNECT per SMTP session (keyed by the client's port), and
        # that session's recipients came through the same replica.
        # (The harness's readiness probe of the edge is a session too, with
        # a CONNECT and nothing else: only sessions with recipients count.)
        with_rcpts = {ev[2] for ev in self.events() if ev[0] == "rcpt"}
        connects = collections.Counter()
        replica_of = {}
        for ev in self.events():
            if ev[0] == "connect" and ev[2] in with_rcpts:
                connects[ev[2]] += 1
                replica_of[ev[2]] = ev[1]
        self.assertEqual(len(connects), sessions, self.events())
        self.assertTrue(all(n == 1 for n in connects.values()), connects)
        rcpts = collections.Counter()
        for ev in self.events():
            if ev[0] == "rcpt":
                self.assertEqual(ev[1], replica_of[ev[2]], ev)
                rcpts[(ev[2], ev[3])] += 1
        # Each recipient reached the milter once (not again at EOD).
        self.assertEqual(len(rcpts), 2 * sessions)
        self.assertTrue(all(n == 1 for n in rcpts.values()), rcpts)
        self.assertEqual(set(replica_of.values()), {"bridge-a", "bridge-b"},
                         replica_of)


if __name__ == "__main__":
    unittest.main()
