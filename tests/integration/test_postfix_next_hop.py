"""The broker's SMTP relay backend against a real Postfix (Debian's postfix,
a private instance on loopback) as the next hop: a message goes through at
once while Postfix runs; while Postfix is stopped, committed messages wait
(state releasing, with the reason) and are retried; once Postfix is back
they go through, byte for byte, each once, to every recipient."""

import os
import re
import smtplib
import time
import unittest

from harness import AdminClient, StackTestCase, wait_for
from postfix import Postfix

from sinkline.v1 import types_pb2  # noqa: E402  (PYTHONPATH)

QUEUED = re.compile(rb"queued as (\S+)")


def body(n):
    return (f"Subject: through postfix {n}\r\nFrom: a@example.net\r\n"
            f"Message-ID: <{n}@sinkline.test>\r\n"
            "Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n\r\n"
            "first line\r\n.a line that starts with a dot\r\n"
            f"{'y' * 900}\r\nlast line\r\n").encode()


class PostfixNextHopTest(StackTestCase):

    def setUp(self):
        super().setUp()
        self.postfix = Postfix(self.workdir, "next-hop")
        self.stack.processes.append(self.postfix.start())
        self.stack.write_config([])
        self.stack.start_broker(extra=[
            f"--relay-host=127.0.0.1:{self.postfix.port}",
            "--relay-helo=broker.example.test",
            "--relay-connect-timeout-ms=2000",
            "--relay-timeout-ms=10000",
            "--submit-retry-min-ms=200",
            "--submit-retry-max-ms=1000"], queue_dir=False)
        self.stack.start_edge()
        self.admin = AdminClient(self.stack.broker.port)
        self.addCleanup(lambda: self.admin.close())

    def send(self, n, rcpts):
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.net")
            s.mail("a@example.net")
            for r in rcpts:
                self.assertEqual(s.rcpt(r)[0], 250)
            code, resp = s.data(body(n))
            self.assertEqual(code, 250, resp)
            return QUEUED.search(resp).group(1).decode()

    def state(self, qid):
        return self.admin.message(qid).state

    def delivered_by_id(self):
        """Message-ID -> [(Delivered-To, raw bytes)] in Postfix's Maildir."""
        out = {}
        for headers, raw in self.postfix.delivered():
            out.setdefault(headers["Message-ID"], []).append(
                (headers["Delivered-To"], raw))
        return out

    def check_delivered(self, n, qid, rcpts):
        copies = self.delivered_by_id()[f"<{n}@sinkline.test>"]
        self.assertEqual(sorted(to for to, _ in copies), sorted(rcpts))
        for _, raw in copies:
            # Postfix's Maildir stores LF line ends; the bytes are the
            # client's, after the broker's and Postfix's trace headers.
            sent = body(n).replace(b"\r\n", b"\n")
            self.assertTrue(raw.endswith(sent), raw[-300:])
            self.assertIn(
                f"by mx.example.test (Sinkline) with ESMTP id {qid}".encode(),
                raw)
            self.assertIn(b"(Postfix) with ESMTP id", raw)

    def test_stopped_postfix_then_started(self):
        # Postfix up: straight through.
        qid = self.send(1, ["one@example.test"])
        wait_for(lambda: self.state(qid) == types_pb2.MESSAGE_STATE_SUBMITTED,
                 20, "the first message submitted")
        wait_for(lambda: "<1@sinkline.test>" in self.delivered_by_id(), 20,
                 "Postfix to deliver the first message")
        self.check_delivered(1, qid, ["one@example.test"])

        # Postfix stopped: the client still gets 250 (the message is
        # committed); the message waits with the reason and is retried.
        self.postfix.stop()
        waiting = [(n, self.send(n, rcpts), rcpts) for n, rcpts in (
            (2, ["two@example.test", "three@example.test"]),
            (3, ["four@example.test"]))]
        for _, qid, _ in waiting:
            info = wait_for(
                lambda: (lambda m: m if m.state ==
                         types_pb2.MESSAGE_STATE_RELEASING and m.reason
                         else None)(self.admin.message(qid)),
                15, f"{qid} deferred with a reason")
            self.assertIn(f"127.0.0.1:{self.postfix.port}", info.reason)
        time.sleep(2.0)  # several retries while Postfix is down
        for _, qid, _ in waiting:
            info = self.admin.message(qid)
            self.assertEqual(info.state, types_pb2.MESSAGE_STATE_RELEASING)
            self.assertGreaterEqual(
                sum(1 for h in info.history if "deferred" in h.what), 2,
                [h.what for h in info.history])
        self.assertEqual(len(self.postfix.delivered()), 1)

        # Postfix back on the same port: both go through, once each.
        self.postfix.start()
        for n, qid, rcpts in waiting:
            wait_for(lambda: self.state(qid) ==
                     types_pb2.MESSAGE_STATE_SUBMITTED, 30,
                     f"{qid} submitted")
        wait_for(lambda: len(self.postfix.delivered()) == 4, 30,
                 "Postfix to deliver every recipient")
        for n, qid, rcpts in waiting:
            self.check_delivered(n, qid, rcpts)
        wait_for(self.postfix.queue_empty, 10, "Postfix's queue empty")
        committed = os.path.join(self.stack.spool_dir, "committed")
        self.assertEqual([n for n in os.listdir(committed)
                          if n.endswith(".msg")], [])
        counters = self.admin.counters()
        self.assertEqual(
            counters['sinkline_broker_messages_total{what="submitted"}'], 3)


if __name__ == "__main__":
    unittest.main()
