"""The SDK example from docs/sdk.md (sinkline-example-hello) runs as a real
sink: it refuses one RCPT of three, the message reaches the other two, and
it answers a custom verb the edge does not implement."""

import smtplib
import unittest

from harness import RawSmtp, StackTestCase


class SdkExampleTest(StackTestCase):

    def setUp(self):
        super().setUp()
        self.stack.start_sink("hello", "sinkline-example-hello")
        self.stack.write_config([
            {"name": "hello-rcpt", "sink": "hello", "event": "RCPT",
             "priority": 100, "failure_policy": "tempfail"},
            {"name": "hello-xstatus", "sink": "hello", "event": "XSTATUS",
             "failure_policy": "tempfail"},
        ])
        self.stack.start_broker()
        self.stack.start_edge()

    def test_one_recipient_of_three_refused(self):
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.net")
            self.assertEqual(s.mail("alice@example.net")[0], 250)
            self.assertEqual(s.rcpt("bob@example.test")[0], 250)
            code, resp = s.rcpt("nobody@example.test")
            self.assertEqual(code, 550)
            self.assertEqual(resp, b"5.1.1 No such user here")
            self.assertEqual(s.rcpt("carol@example.test")[0], 250)
            code, resp = s.data(b"Subject: three\r\n\r\nhi\r\n")
            self.assertEqual(code, 250, resp)
            qid = resp.decode().rsplit(" ", 1)[1]
        entry, _ = self.stack.queued(qid)
        self.assertEqual(
            [r["address"] for r in entry["envelope"]["recipients"]],
            ["bob@example.test", "carol@example.test"])

    def test_custom_verb_answered_by_the_sink(self):
        conn = RawSmtp(self.stack.edge.port)
        self.assertEqual(conn.reply()[0], 220)
        self.assertEqual(conn.cmd("EHLO client.example.net")[0], 250)
        self.assertEqual(conn.cmd("XSTATUS"),
                         (250, ["250 2.0.0 Status: all sinks fine"]))
        # A verb nobody binds is still unknown.
        code, lines = conn.cmd("XNOBODY")
        self.assertEqual(code, 500, lines)
        self.assertIn("5.5.2", lines[0])
        self.assertEqual(conn.cmd("QUIT")[0], 221)
        conn.close()


if __name__ == "__main__":
    unittest.main()
