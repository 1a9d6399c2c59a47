"""Debian's rspamd as a milter (its proxy worker with milter = yes,
self-scan, no Redis, a private config directory), bound through
sinkline-sink-milter at EOD before COMMIT: a message with the GTUBE test
string is refused with rspamd's own reply, and a plain one passes with the
X-Spamd-Result / X-Rspamd-* headers rspamd adds."""

import os
import re
import smtplib
import unittest

from harness import BIN_DIR, StackTestCase, has_failed
from milter_tools import rspamd

QUEUED = re.compile(rb"queued as (\S+)")
GTUBE = (b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL"
         b"*C.34X")


class MilterRspamdTest(StackTestCase):

    def setUp(self):
        super().setUp()
        cache = os.path.join(BIN_DIR or self.workdir, "..", "rspamd-cache")
        self.rspamd = rspamd(self.workdir, os.path.abspath(cache))
        self.addCleanup(self.rspamd.stop)
        # The first start compiles rspamd's Hyperscan databases.
        self.rspamd.start(timeout_s=240)
        self.stack.start_sink("milter", "sinkline-sink-milter", [
            f"--milter=unix:{self.rspamd.sock}", "--eom-timeout=60s"])
        self.stack.write_config([
            {"name": "rspamd", "sink": "milter", "event": "EOD",
             "priority": 20000, "content_access": "read-write",
             "deadline_ms": 60000, "failure_policy": "tempfail"},
        ])
        self.stack.start_broker()
        self.stack.start_edge(
            ["--accepted-domains=example.test,example.net"])

    def tearDown(self):
        if has_failed(self):
            print("===== rspamd =====\n" + self.rspamd.log())
            try:
                with open(os.path.join(self.workdir, "rspamd",
                                       "rspamd.log"), errors="replace") as f:
                    print(f.read()[-20000:])
            except FileNotFoundError:
                pass
        super().tearDown()

    def send(self, body):
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=90) as s:
            s.ehlo("client.example.net")
            self.assertEqual(s.mail("alice@example.test")[0], 250)
            self.assertEqual(s.rcpt("bob@example.test")[0], 250)
            try:
                code, resp = s.data(body)
            except smtplib.SMTPDataError as e:
                code, resp = e.smtp_code, e.smtp_error
            return code, resp

    def test_gtube_is_refused_with_rspamds_reply(self):
        code, resp = self.send(
            b"From: alice@example.test\r\nTo: bob@example.test\r\n"
            b"Subject: test\r\n\r\n" + GTUBE + b"\r\n")
        self.assertEqual(code, 554, resp)
        self.assertIn(b"5.7.1", resp)
        self.assertIn(b"Gtube pattern", resp)
        self.assertEqual(self.stack.queue_ids(), [])

    def test_plain_message_passes_with_rspamd_headers(self):
        body = (b"From: Alice <alice@example.test>\r\nTo: bob@example.test\r\n"
                b"Subject: lunch\r\nDate: Mon, 30 Nov 2026 03:00:00 +0000\r\n"
                b"Message-ID: <lunch@example.test>\r\n\r\n"
                b"Shall we have lunch on Tuesday?\r\n")
        code, resp = self.send(body)
        self.assertEqual(code, 250, resp)
        qid = QUEUED.search(resp).group(1).decode()
        _, queued = self.stack.queued(qid)
        header = queued.split(b"\r\n\r\n", 1)[0]
        self.assertRegex(header, rb"(?m)^X-Spamd-Result: default: False")
        self.assertRegex(header, rb"(?m)^X-Rspamd-(Queue-Id|Server|Action)")
        self.assertTrue(queued.endswith(b"Shall we have lunch on Tuesday?\r\n"))


if __name__ == "__main__":
    unittest.main()
