"""Every answer and modification of a milter through sinkline-sink-milter,
bound at EOD before COMMIT (read-write), on a small test milter written
with Debian's python3-milter (mod_milter.py; its X-Test-Mode header picks
what it does): add, insert, change and delete headers, replace the body
(larger than one chunk), add recipients (with ESMTP args) and delete one,
change the sender, discard, quarantine, and refusals with the milter's own
reply code and enhanced code. Each is checked in the queued message, its
envelope or the SMTP reply."""

import os
import re
import smtplib
import time
import unittest

from harness import StackTestCase, has_failed, split_received, wait_for
from milter_tools import python_milter
from test_metrics import metrics_port, samples, scrape

QUEUED = re.compile(rb"queued as (\S+)")


def new_body(size):
    line = b"replaced body line of the mod-milter, 0123456789\r\n"
    return (line * (size // len(line) + 1))[:size]


class MilterModificationsTest(StackTestCase):

    BODY_SIZE = 300000

    def setUp(self):
        super().setUp()
        self.milter = python_milter(self.workdir, "mod-milter",
                                    "mod_milter.py",
                                    [f"--body-size={self.BODY_SIZE}"])
        self.addCleanup(self.milter.stop)
        self.milter.start()
        self.stack.start_sink("milter", "sinkline-sink-milter", [
            f"--milter=unix:{self.milter.sock}"])
        self.stack.write_config([
            {"name": "mod-milter", "sink": "milter", "event": "EOD",
             "priority": 20000, "content_access": "read-write",
             "deadline_ms": 10000, "failure_policy": "tempfail",
             "discard": True},
        ])
        self.stack.start_broker()
        self.stack.start_edge(
            ["--accepted-domains=example.test,example.net"])

    def tearDown(self):
        if has_failed(self):
            print("===== mod-milter =====\n" + self.milter.log())
        super().tearDown()

    def send(self, mode, rcpts=("bob@example.net",), extra=b""):
        body = (b"From: alice@example.test\r\nTo: bob@example.net\r\n"
                b"Subject: original\r\nX-Test-Mode: " + mode.encode()
                + b"\r\n" + extra + b"\r\nthe original body\r\n")
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.net")
            self.assertEqual(s.mail("alice@example.test")[0], 250)
            for r in rcpts:
                self.assertEqual(s.rcpt(r)[0], 250)
            code, resp = s.data(body)
        m = QUEUED.search(resp)
        return code, resp, m.group(1).decode() if m else None

    def queued(self, qid):
        """The envelope, and the message without the broker's Received:
        header (a header the milter inserts at index 0 lands above it, as
        above Postfix's own Received: header)."""
        envelope, message = self.stack.queued(qid)
        at = message.find(b"Received: from ")
        self.assertGreaterEqual(at, 0, message[:300])
        return envelope, split_received(message, at)[0]

    def test_headers(self):
        code, resp, qid = self.send(
            "headers", extra=b"X-Delete-Me: first\r\nX-Delete-Me: second\r\n"
                             b"X-Delete-Me: third\r\n")
        self.assertEqual(code, 250, resp)
        _, msg = self.queued(qid)
        head, _, body = msg.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.assertEqual(lines[0], b"X-Inserted: at the top", lines)
        self.assertEqual(lines[-1], b"X-Added: at the end", lines)
        self.assertIn(b"Subject: changed by mod-milter", lines)
        self.assertNotIn(b"Subject: original", lines)
        self.assertEqual([x for x in lines if x.startswith(b"X-Delete-Me")],
                         [b"X-Delete-Me: first", b"X-Delete-Me: third"])
        self.assertEqual(body, b"the original body\r\n")

    def test_replace_body(self):
        code, resp, qid = self.send("body")
        self.assertEqual(code, 250, resp)
        _, msg = self.queued(qid)
        head, _, body = msg.partition(b"\r\n\r\n")
        self.assertIn(b"X-Test-Mode: body", head)
        self.assertEqual(len(body), self.BODY_SIZE)
        self.assertEqual(body, new_body(self.BODY_SIZE))

    def test_add_and_delete_recipients(self):
        code, resp, qid = self.send(
            "rcpts", rcpts=("bob@example.net", "carol@example.net"))
        self.assertEqual(code, 250, resp)
        envelope, _ = self.queued(qid)
        rcpts = {r["address"]: r for r in envelope["envelope"]["recipients"]}
        self.assertEqual(sorted(rcpts), ["added@example.net",
                                         "carol@example.net",
                                         "plain@example.net"], envelope)
        params = {p["key"]: p.get("value")
                  for p in rcpts["added@example.net"].get("params", [])}
        self.assertEqual(params, {"NOTIFY": "NEVER"}, envelope)
        self.assertFalse(rcpts["plain@example.net"].get("params"))

    def test_change_sender(self):
        code, resp, qid = self.send("sender")
        self.assertEqual(code, 250, resp)
        envelope, _ = self.queued(qid)
        self.assertEqual(envelope["envelope"]["mail_from"],
                         "bounces@example.test", envelope)

    def test_discard(self):
        before = self.stack.queue_ids()
        code, resp, qid = self.send("discard")
        self.assertEqual(code, 250, resp)
        self.assertIn(b"discarded", resp)
        # A message after it is queued, the discarded one never is.
        code, resp, after = self.send("none")
        self.assertEqual(code, 250, resp)
        self.queued(after)
        self.assertEqual(sorted(set(self.stack.queue_ids()) - set(before)),
                         [after])
        # The binding says discard: true; the broker logged and counted it.
        self.assertIn("discarded the message", self.stack.broker.log())

    def test_quarantine_before_commit_is_a_header(self):
        code, resp, qid = self.send("quarantine")
        self.assertEqual(code, 250, resp)
        _, msg = self.queued(qid)
        self.assertIn(b"X-Sinkline-Quarantine: held by mod-milter\r\n", msg)

    def test_reject_with_its_reply(self):
        code, resp, qid = self.send("reject")
        self.assertEqual(code, 554, resp)
        self.assertEqual(resp, b"5.7.0 Refused by mod-milter")
        self.assertIsNone(qid)

    def test_tempfail_with_its_reply(self):
        code, resp, qid = self.send("tempfail")
        self.assertEqual(code, 452, resp)
        self.assertEqual(resp, b"4.3.1 Busy, mod-milter")
        self.assertIsNone(qid)


class MilterProgressTest(StackTestCase):
    """SMFIR_PROGRESS through the bridge (--eom-timeout=1s, binding
    deadline 4 s): a milter that sends progress every 0.3 s for 2.5 s is
    waited for, past the eom timeout; one that stalls as long without
    progress fails at the eom timeout; one that sends progress for longer
    than the binding's deadline is cut at that deadline, both by the broker
    and by the bridge (which stops waiting for the milter then). A body
    larger than --max-replaced-body fails the call."""

    def setUp(self):
        super().setUp()
        self.milter = python_milter(self.workdir, "mod-milter",
                                    "mod_milter.py",
                                    ["--progress-every=0.3",
                                     "--body-size=200000"])
        self.addCleanup(self.milter.stop)
        self.milter.start()
        self.bridge = self.stack.start_sink("milter", "sinkline-sink-milter", [
            f"--milter=unix:{self.milter.sock}", "--eom-timeout=1s",
            "--max-replaced-body=100000",
            "--metrics-listen=127.0.0.1:0"])
        self.stack.write_config([
            {"name": "mod-milter", "sink": "milter", "event": "EOD",
             "priority": 20000, "content_access": "read-write",
             "deadline_ms": 4000, "failure_policy": "tempfail"},
        ])
        self.stack.start_broker()
        self.stack.start_edge(
            ["--accepted-domains=example.test,example.net"])

    def tearDown(self):
        if has_failed(self):
            print("===== mod-milter =====\n" + self.milter.log())
        super().tearDown()

    send = MilterModificationsTest.send

    def timed(self, mode):
        started = time.monotonic()
        code, resp, qid = self.send(mode)
        return code, resp, qid, time.monotonic() - started

    def test_progress_keeps_the_call_alive_past_the_eom_timeout(self):
        code, resp, qid, took = self.timed("progress 2.5")
        self.assertEqual(code, 250, resp)
        self.assertGreater(took, 2.4)
        _, queued = self.stack.queued(qid)
        self.assertIn(b"X-Progress: done\r\n", queued)
        m = samples(scrape(metrics_port(self.bridge))[2])
        self.assertGreaterEqual(m["sinkline_milter_progress_total"], 7, m)
        for stage in ("connect", "command", "eom"):
            self.assertGreaterEqual(
                m[f'sinkline_milter_call_seconds_count{{stage="{stage}"}}'],
                1, m)
        # The eom answer took the whole 2.5 s: it is in the 5 s bucket,
        # not in the 1 s one.
        self.assertEqual(
            m['sinkline_milter_call_seconds_bucket{stage="eom",le="1"}'], 0)

    def test_no_progress_fails_at_the_eom_timeout(self):
        code, resp, qid, took = self.timed("stall 2.5")
        self.assertEqual(code, 451, resp)
        self.assertIsNone(qid)
        self.assertLess(took, 2.4)

    def test_progress_is_bounded_by_the_bindings_deadline(self):
        code, resp, qid, took = self.timed("progress 8")
        self.assertEqual(code, 451, resp)
        self.assertIsNone(qid)
        self.assertLess(took, 6)
        # The bridge gave up at the call's deadline too, not when the
        # milter finished (8 s).
        wait_for(lambda: "did not answer in time" in self.bridge.log(), 2.5,
                 "the bridge to stop waiting at the call's deadline")

    def test_replaced_body_over_the_limit_fails_the_call(self):
        code, resp, qid, _ = self.timed("body")
        self.assertEqual(code, 451, resp)
        self.assertIsNone(qid)
        self.assertIn("--max-replaced-body", self.bridge.log())


if __name__ == "__main__":
    unittest.main()
