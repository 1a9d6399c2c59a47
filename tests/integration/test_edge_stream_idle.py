"""--broker-stream-idle-ms: a session idle between transactions gives its
broker stream back, and its next command opens a new one and waits for the
binding map before the session handles it; with no broker then, 421 4.3.0.
A session in a transaction keeps its stream however long it idles; a
parked session is closed with 421 4.3.2 when the edge drains."""

import re
import signal
import time
import unittest

from harness import RawSmtp, StackTestCase, wait_for

PARKED = "idle, broker stream closed"


class EdgeStreamIdleTest(StackTestCase):

    def start(self, extra=()):
        self.stack.start_stamp_sink()
        self.stack.write_config([{
            "name": "stamp-eod", "sink": "stamp", "event": "EOD",
            "priority": 30000, "deadline_ms": 5000,
            "failure_policy": "continue", "content_access": "read-write",
        }, {
            # Bound, so MAIL waits for the broker's answer on the new
            # stream.
            "name": "stamp-mail", "sink": "stamp", "event": "MAIL",
            "priority": 100, "deadline_ms": 5000,
            "failure_policy": "continue",
        }])
        self.stack.start_broker()
        return self.stack.start_edge(["--broker-stream-idle-ms=200",
                                      "--log-level=debug", *extra])

    def parked(self, edge):
        return edge.log().count(PARKED)

    def deliver(self, conn, subject):
        self.assertEqual(conn.cmd("MAIL FROM:<alice@example.net>")[0], 250)
        self.assertEqual(conn.cmd("RCPT TO:<bob@example.test>")[0], 250)
        self.assertEqual(conn.cmd("DATA")[0], 354)
        conn.send(f"Subject: {subject}\r\n\r\nbody\r\n.\r\n".encode())
        code, lines = conn.reply()
        self.assertEqual(code, 250, lines)
        qid = re.search(r"queued as (\S+)", lines[0]).group(1)
        _, message = self.stack.queued(qid)
        self.assertIn(b"X-Sinkline-Stamp", message)
        self.assertIn(subject.encode(), message)

    def test_idle_session_reopens_its_stream_and_delivers(self):
        edge = self.start()
        conn = RawSmtp(edge.port)
        self.assertEqual(conn.reply()[0], 220)
        self.assertEqual(conn.cmd("EHLO client.example.net")[0], 250)
        wait_for(lambda: self.parked(edge) >= 1, 10, "the idle stream closed")
        self.deliver(conn, "after an idle while")
        # Idle again after the transaction: parked again, and a second
        # message goes through a third stream.
        wait_for(lambda: self.parked(edge) >= 2, 10, "parked again")
        self.deliver(conn, "the second one")
        self.assertEqual(conn.cmd("QUIT")[0], 221)
        conn.close()

    def test_session_in_a_transaction_keeps_its_stream(self):
        edge = self.start()
        conn = RawSmtp(edge.port)
        self.assertEqual(conn.reply()[0], 220)
        self.assertEqual(conn.cmd("EHLO client.example.net")[0], 250)
        wait_for(lambda: self.parked(edge) >= 1, 10, "the idle stream closed")
        self.assertEqual(conn.cmd("MAIL FROM:<alice@example.net>")[0], 250)
        self.assertEqual(conn.cmd("RCPT TO:<bob@example.test>")[0], 250)
        time.sleep(1.0)  # five times the idle limit, inside a transaction
        self.assertEqual(self.parked(edge), 1)
        self.assertEqual(conn.cmd("DATA")[0], 354)
        conn.send(b"Subject: kept\r\n\r\nbody\r\n.\r\n")
        self.assertEqual(conn.reply()[0], 250)
        conn.close()

    def test_no_broker_at_the_next_command_gets_421(self):
        edge = self.start(["--broker-connect-timeout-ms=1000"])
        conn = RawSmtp(edge.port)
        self.assertEqual(conn.reply()[0], 220)
        self.assertEqual(conn.cmd("EHLO client.example.net")[0], 250)
        wait_for(lambda: self.parked(edge) >= 1, 10, "the idle stream closed")
        self.stack.broker.kill()
        code, lines = conn.cmd("MAIL FROM:<alice@example.net>")
        self.assertEqual(code, 421, lines)
        self.assertIn("4.3.0", lines[0])
        self.assertTrue(conn.closed_by_peer())
        conn.close()
        self.assertTrue(edge.running())
        self.assertEqual(self.stack.queue_ids(), [])

    def test_drain_closes_a_parked_session_with_421(self):
        edge = self.start(["--drain-grace-s=30"])
        conn = RawSmtp(edge.port)
        self.assertEqual(conn.reply()[0], 220)
        self.assertEqual(conn.cmd("EHLO client.example.net")[0], 250)
        wait_for(lambda: self.parked(edge) >= 1, 10, "the idle stream closed")
        edge.proc.send_signal(signal.SIGTERM)
        code, lines = conn.reply()
        self.assertEqual(code, 421, lines)
        self.assertIn("4.3.2", lines[0])
        self.assertTrue(conn.closed_by_peer())
        conn.close()
        wait_for(lambda: not edge.running(), 15, "the edge exited")


if __name__ == "__main__":
    unittest.main()
