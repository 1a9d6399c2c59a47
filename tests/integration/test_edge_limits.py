"""The edge's limits, each hit by a real client over loopback and answered
with its code while other sessions go on: sessions in total and per client
address, errors per session, session length, early talkers, and draining on
SIGTERM."""

import signal
import smtplib
import socket
import time
import unittest

from harness import RawSmtp, StackTestCase, wait_for


def connect(port, source="127.0.0.1"):
    """A RawSmtp from a given loopback source address."""
    c = RawSmtp.__new__(RawSmtp)
    c.sock = socket.create_connection(("127.0.0.1", port), timeout=30,
                                      source_address=(source, 0))
    c.buf = b""
    return c


class EdgeLimitsTest(StackTestCase):

    def start(self, extra):
        self.stack.write_config([])
        self.stack.start_broker()
        self.stack.start_edge(list(extra))
        return self.stack.edge.port

    def assert_serves(self, port):
        """A fresh session still gets a whole transaction through."""
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
            s.ehlo("ok.example")
            self.assertEqual(s.sendmail("a@example.net", ["b@example.test"],
                                        b"Subject: still here\r\n\r\nx\r\n"),
                             {})

    def test_sessions_in_total_and_per_client(self):
        port = self.start(["--max-sessions=3", "--max-sessions-per-client=2"])

        def admitted(source):
            # The harness's readiness probe may still hold a slot for a
            # moment: try again until the edge has let it go.
            def attempt():
                c = connect(port, source)
                if c.reply()[0] == 220:
                    return c
                c.close()
                return None
            return wait_for(attempt, 10, f"a session from {source}")

        open_ = [admitted("127.0.0.1"), admitted("127.0.0.1")]
        third = connect(port, "127.0.0.1")
        self.assertEqual(third.reply(), (421, [
            "421 4.7.0 mx.example.test Error: too many sessions from your "
            "address"]))
        self.assertTrue(third.closed_by_peer())
        open_.append(admitted("127.0.0.2"))  # another client: fits the total
        over = connect(port, "127.0.0.3")
        self.assertEqual(over.reply(), (421, [
            "421 4.7.0 mx.example.test Error: too many sessions"]))
        # The open sessions are unaffected.
        for c in open_:
            self.assertEqual(c.cmd("NOOP")[0], 250)
        # Once one ends there is room again.
        self.assertEqual(open_.pop(0).cmd("QUIT")[0], 221)
        open_.append(admitted("127.0.0.1"))
        for c in open_ + [third, over]:
            c.close()

    def test_message_limits(self):
        port = self.start(["--max-text-line=100", "--max-recipients=2",
                           "--max-message-size=2000", "--max-line-length=64"])
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
            s.ehlo("c.example")
            self.assertEqual(s.esmtp_features["size"], "2000")
            code, resp = s.docmd("NOOP " + "x" * 70)
            self.assertEqual((code, resp), (500, b"5.5.2 Error: line too long"))
            self.assertEqual(s.mail("a@example.net")[0], 250)
            self.assertEqual(s.rcpt("b@example.test")[0], 250)
            self.assertEqual(s.rcpt("c@example.test")[0], 250)
            self.assertEqual(s.rcpt("d@example.test"),
                             (452, b"4.5.3 Error: too many recipients"))
            code, resp = s.data(b"Subject: long\r\n\r\n" + b"y" * 99 +
                                b"\r\n")
            self.assertEqual((code, resp[:5]), (550, b"5.6.0"))
            s.mail("a@example.net")
            s.rcpt("b@example.test")
            code, resp = s.data(b"Subject: big\r\n\r\n" +
                                (b"z" * 90 + b"\r\n") * 30)
            self.assertEqual((code, resp[:5]), (552, b"5.3.4"))
            self.assertEqual(s.mail("a@example.net", ["SIZE=2001"])[0], 552)
            s.rset()
            s.mail("a@example.net")
            s.rcpt("b@example.test")
            code, resp = s.data(b"Subject: fits\r\n\r\n" + b"w" * 96 +
                                b"\r\n")
            self.assertEqual(code, 250, resp)

    def test_too_many_errors(self):
        port = self.start(["--max-errors=3"])
        c = RawSmtp(port)
        c.reply()
        self.assertEqual(c.cmd("XYZZY")[0], 500)
        self.assertEqual(c.cmd("MAIL FROM:<a@example.net>")[0], 503)
        c.send(b"RCPT TO:<b@example.test>\r\n")
        self.assertEqual(c.reply()[0], 503)
        self.assertEqual(c.reply(), (421, [
            "421 4.7.0 mx.example.test Error: too many errors"]))
        self.assertTrue(c.closed_by_peer())
        c.close()
        self.assert_serves(port)

    def test_session_length(self):
        port = self.start(["--max-session-s=1"])
        c = RawSmtp(port)
        c.reply()
        self.assertEqual(c.cmd("EHLO c.example")[0], 250)
        # A busy client is cut off too: keep talking until the edge ends it.
        c.sock.settimeout(30)
        for _ in range(600):
            try:
                c.send(b"NOOP\r\n")
                code, lines = c.reply()
            except (ConnectionError, OSError):
                self.fail("closed without a 421")
            if code == 421:
                break
            self.assertEqual(code, 250)
            time.sleep(0.05)  # never idle for long
        self.assertEqual(lines, [
            "421 4.4.2 mx.example.test Error: session too long"])
        self.assertTrue(c.closed_by_peer())
        c.close()
        self.assert_serves(port)

    def test_early_talker(self):
        port = self.start(["--greeting-delay-ms=300"])
        c = RawSmtp(port)
        c.send(b"EHLO impatient.example\r\n")  # before the greeting
        self.assertEqual(c.reply(), (554, [
            "554 5.5.1 mx.example.test Error: input before the greeting"]))
        self.assertTrue(c.closed_by_peer())
        c.close()
        # A client that waits gets the greeting.
        polite = RawSmtp(port)
        self.assertEqual(polite.reply()[0], 220)
        self.assertEqual(polite.cmd("EHLO polite.example")[0], 250)
        polite.close()

    def test_drain_on_sigterm(self):
        port = self.start(["--drain-grace-s=60"])
        busy = RawSmtp(port)
        busy.reply()
        busy.cmd("EHLO busy.example")
        self.assertEqual(busy.cmd("MAIL FROM:<a@example.net>")[0], 250)
        self.assertEqual(busy.cmd("RCPT TO:<b@example.test>")[0], 250)
        self.assertEqual(busy.cmd("DATA")[0], 354)
        busy.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
        idle = RawSmtp(port)
        idle.reply()
        self.assertEqual(idle.cmd("EHLO idle.example")[0], 250)

        self.stack.edge.proc.send_signal(signal.SIGTERM)
        # The idle session is told at once.
        self.assertEqual(idle.reply(), (421, [
            "421 4.3.2 mx.example.test Service shutting down, closing "
            "transmission channel"]))
        self.assertTrue(idle.closed_by_peer())
        idle.close()

        # No new sessions.
        def refused():
            try:
                c = RawSmtp(port, timeout_s=2)
            except OSError:
                return True
            try:
                return c.closed_by_peer(timeout_s=2)
            finally:
                c.close()
        wait_for(refused, 10, "the listener to close")

        # The transaction in flight finishes, then the session ends.
        busy.send(b"second half\r\n.\r\n")
        code, lines = busy.reply()
        self.assertEqual(code, 250, lines)
        self.assertIn("queued as", lines[0])
        # Then it is told, without waiting for another command.
        self.assertEqual(busy.reply()[0], 421)
        self.assertTrue(busy.closed_by_peer())
        busy.close()
        self.stack.edge.proc.wait(timeout=30)
        self.assertEqual(self.stack.edge.proc.returncode, 0)
        self.assertEqual(len(self.stack.queue_ids()), 1)

    def test_drain_grace_period_ends(self):
        port = self.start(["--drain-grace-s=1"])
        stuck = RawSmtp(port)
        stuck.reply()
        stuck.cmd("EHLO stuck.example")
        self.assertEqual(stuck.cmd("MAIL FROM:<a@example.net>")[0], 250)
        self.stack.edge.proc.send_signal(signal.SIGTERM)
        # Never finishes its transaction: closed once the grace is over.
        self.assertTrue(stuck.closed_by_peer(timeout_s=30))
        stuck.close()
        self.stack.edge.proc.wait(timeout=30)
        self.assertEqual(self.stack.edge.proc.returncode, 0)


if __name__ == "__main__":
    unittest.main()
