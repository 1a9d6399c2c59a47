"""sinkline-sink-milter when its milter misbehaves: a milter that stalls
past the end-of-message timeout, and one that drops the connection in the
middle of a message, both fail the call, so the binding's failure policy
applies (tempfail: 451, continue: the message passes unchanged); once the
milter behaves again the bridge connects anew and messages pass through it.
"""

import os
import re
import smtplib
import time
import unittest

from harness import StackTestCase, has_failed, wait_for
from milter_tools import python_milter

QUEUED = re.compile(rb"queued as (\S+)")
BODY = b"From: alice@example.test\r\nSubject: f\r\n\r\nhello\r\n"


class MilterFailureTest(StackTestCase):

    def start(self, policy):
        self.mode_file = os.path.join(self.workdir, "mode")
        self.count_file = os.path.join(self.workdir, "connections")
        self.milter = python_milter(self.workdir, "fault-milter",
                                    "fault_milter.py",
                                    [f"--mode-file={self.mode_file}",
                                     f"--count-file={self.count_file}"])
        self.addCleanup(self.milter.stop)
        self.milter.start()
        self.stack.start_sink("milter", "sinkline-sink-milter", [
            f"--milter=unix:{self.milter.sock}", "--eom-timeout=1s",
            "--command-timeout=1s"])
        self.stack.write_config([
            {"name": "milter-eod", "sink": "milter", "event": "EOD",
             "priority": 20000, "content_access": "read-write",
             "deadline_ms": 5000, "failure_policy": policy},
        ])
        self.stack.start_broker()
        self.stack.start_edge()

    def tearDown(self):
        if has_failed(self):
            print("===== fault-milter =====\n" + self.milter.log())
        super().tearDown()

    def mode(self, m):
        with open(self.mode_file, "w") as f:
            f.write(m)

    def connections(self):
        try:
            with open(self.count_file) as f:
                return int(f.read() or 0)
        except FileNotFoundError:
            return 0

    def send(self):
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.net")
            self.assertEqual(s.mail("alice@example.test")[0], 250)
            self.assertEqual(s.rcpt("bob@example.test")[0], 250)
            try:
                code, resp = s.data(BODY)
            except smtplib.SMTPDataError as e:
                code, resp = e.smtp_code, e.smtp_error
            return code, resp

    def passes_through_milter(self):
        code, resp = self.send()
        self.assertEqual(code, 250, resp)
        _, queued = self.stack.queued(QUEUED.search(resp).group(1).decode())
        self.assertIn(b"X-Fault-Milter: passed", queued)

    def test_stall_and_drop_tempfail_then_reconnect(self):
        self.start("tempfail")
        self.passes_through_milter()
        for mode in ("stall", "drop"):
            with self.subTest(mode=mode):
                self.mode(mode)
                before = self.connections()
                started = time.monotonic()
                code, resp = self.send()
                self.assertEqual(code, 451, resp)
                self.assertIn(b"4.3.0", resp)
                # The stall is cut at the bridge's 1 s timeout, well before
                # the binding's 5 s deadline.
                self.assertLess(time.monotonic() - started, 4.5)
                self.mode("ok")
                self.passes_through_milter()
                # The broken connection was not reused: a new one was made.
                self.assertGreater(self.connections(), before)
        self.assertEqual(self.stack.queue_ids().__len__(), 3)

    def test_stall_and_drop_fail_open_with_continue(self):
        self.start("continue")
        for mode in ("stall", "drop"):
            with self.subTest(mode=mode):
                self.mode(mode)
                code, resp = self.send()
                self.assertEqual(code, 250, resp)
                _, queued = self.stack.queued(
                    QUEUED.search(resp).group(1).decode())
                self.assertNotIn(b"X-Fault-Milter", queued)
                self.assertTrue(queued.endswith(BODY))
        self.mode("ok")
        self.passes_through_milter()


if __name__ == "__main__":
    unittest.main()
