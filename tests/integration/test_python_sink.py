"""A sink written in Python (Debian's python3-grpcio) takes part in the
chain like any other: subject-filter, bound to EOD before COMMIT with read
access, refuses one message and lets another through to the stamp sink and
the queue."""

import smtplib
import unittest

from harness import StackTestCase


class PythonSinkTest(StackTestCase):

    def setUp(self):
        super().setUp()
        self.stack.start_python_sink(
            "subject-filter", "subject_filter.py",
            ["--reject-subject=(?i)buy now"])
        self.stack.start_stamp_sink()
        self.stack.write_config([
            {"name": "filter-eod", "sink": "subject-filter", "event": "EOD",
             "priority": 100, "deadline_ms": 5000,
             "failure_policy": "tempfail", "content_access": "read"},
            {"name": "stamp-eod", "sink": "stamp", "event": "EOD",
             "priority": 30000, "deadline_ms": 5000,
             "failure_policy": "continue", "content_access": "read-write"},
        ])
        self.stack.start_broker()
        self.stack.start_edge()

    def send(self, subject):
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.net")
            s.mail("alice@example.net")
            s.rcpt("bob@example.test")
            s.putcmd("data")
            code, resp = s.getreply()
            self.assertEqual(code, 354, resp)
            s.send(f"Subject: {subject}\r\n\r\nhello\r\n.\r\n".encode())
            return s.getreply()

    def test_refused_subject_gets_550_and_is_not_queued(self):
        code, resp = self.send("Buy NOW, cheap")
        self.assertEqual(code, 550, resp)
        self.assertTrue(resp.startswith(b"5.7.1 "), resp)
        self.assertEqual(self.stack.queue_ids(), [])

    def test_other_subject_goes_through_to_the_queue(self):
        code, resp = self.send("quarterly report")
        self.assertEqual(code, 250, resp)
        qid = resp.decode().rsplit(" ", 1)[1]
        _, queued = self.stack.queued(qid)
        self.assertIn(b"Subject: quarterly report\r\n", queued)
        self.assertTrue(queued.startswith(b"X-Sinkline-Stamp: stamp; "))


if __name__ == "__main__":
    unittest.main()
