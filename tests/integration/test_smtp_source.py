"""Load from Postfix's smtp-source (Debian's postfix: /usr/sbin/smtp-source)
with 20 parallel sessions against the stack (stamp sink after COMMIT,
broker, edge): a new connection per message, then several messages per
connection (-d). smtp-source exits 0 only when every reply was the one it
expected, so every message was accepted; each is then in Sinkline's queue
exactly once (its Message-Id, unique per message, appears once) with its
payload whole. smtp-source cannot pipeline; a third run sends pipelined
transactions (RFC 2920) over raw sockets from 20 threads."""

import os
import re
import socket
import subprocess
import threading
import unittest

from harness import StackTestCase, split_received, wait_for

SMTP_SOURCE = "/usr/sbin/smtp-source"
SESSIONS = 20
MESSAGES = 400
PAYLOAD = 5000
RUN_TIMEOUT_S = 240  # a bound, not a measure
MESSAGE_ID = re.compile(rb"^Message-Id: (<[^>]+>)\r$", re.M | re.I)


class SmtpSourceTest(StackTestCase):

    def setUp(self):
        super().setUp()
        self.start_default_stack()

    def smtp_source(self, *args):
        r = subprocess.run(
            [SMTP_SOURCE, "-c", "-s", str(SESSIONS), "-m", str(MESSAGES),
             "-l", str(PAYLOAD), "-f", "load@example.net",
             "-t", "sink@example.test", "-M", "source.example.net",
             "-S", "smtp-source load"] + list(args)
            + [f"127.0.0.1:{self.stack.edge.port}"],
            capture_output=True, timeout=RUN_TIMEOUT_S)
        self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr)
        # -c counts each completed DATA; the last count is the total.
        counts = re.findall(rb"\d+", r.stdout)
        self.assertTrue(counts, r.stdout)
        self.assertEqual(int(counts[-1]), MESSAGES)
        return r

    def settled_queue(self, count):
        """Waits for `count` queued messages and for the broker to hold no
        committed message any more, so nothing more is on its way."""
        wait_for(lambda: len(self.stack.queue_ids()) >= count, 120,
                 f"{count} messages in the queue")
        committed = os.path.join(self.stack.spool_dir, "committed")
        wait_for(lambda: not os.path.isdir(committed) or not [
            n for n in os.listdir(committed) if n.endswith(".msg")], 60,
            "the broker's committed messages to be submitted")
        return self.stack.queue_ids()

    def check_queue(self, sender, recipient, body_check):
        ids = self.settled_queue(MESSAGES)
        self.assertEqual(len(ids), MESSAGES)
        seen = set()
        for qid in ids:
            entry, data = self.stack.queued(qid)
            self.assertEqual(entry["envelope"]["mail_from"], sender)
            self.assertEqual(
                [r["address"] for r in entry["envelope"]["recipients"]],
                [recipient])
            stamp = f"X-Sinkline-Stamp: stamp; {qid}\r\n".encode()
            self.assertTrue(data.startswith(stamp), data[:200])
            message, _ = split_received(data[len(stamp):])
            m = MESSAGE_ID.search(message)
            self.assertIsNotNone(m, message[:400])
            self.assertNotIn(m.group(1), seen)
            seen.add(m.group(1))
            body_check(message)
        self.assertEqual(len(seen), MESSAGES)

    def smtp_source_body(self, message):
        head, sep, body = message.partition(b"\r\n\r\n")
        self.assertEqual(sep, b"\r\n\r\n")
        self.assertIn(b"Subject: smtp-source load\r\n", head + b"\r\n")
        # PAYLOAD octets, CRLFs included, and the CRLF that ends the last
        # line: 'X' lines of at most 79 octets (a line number leads the
        # first ones).
        self.assertEqual(len(body), PAYLOAD + 2)
        lines = body.split(b"\r\n")
        self.assertEqual(lines[-1], b"")
        self.assertTrue(all(len(x) <= 79 for x in lines), lines[:3])
        self.assertTrue(all(re.fullmatch(rb"\d*X+", x) for x in lines[:-1]))

    def test_new_connection_per_message(self):
        self.smtp_source()
        self.check_queue("load@example.net", "sink@example.test",
                         self.smtp_source_body)

    def test_several_messages_per_connection(self):
        self.smtp_source("-d")
        self.check_queue("load@example.net", "sink@example.test",
                         self.smtp_source_body)

    def test_pipelined_transactions(self):
        """20 threads, 20 messages each over one connection: MAIL, RCPT and
        DATA go in one write, and the end of each message goes in one write
        with the next transaction's MAIL, RCPT and DATA."""
        per_session = MESSAGES // SESSIONS
        errors = []

        def message(session, n):
            head = (f"From: <pipe@example.net>\r\nTo: <sink@example.test>\r\n"
                    f"Message-Id: <{session}.{n}@pipeline.example.net>\r\n"
                    f"Subject: pipelined load\r\n\r\n").encode()
            line = (f"{session:02d}{n:03d}" + "p" * 70 + "\r\n").encode()
            # A dot-leading line, stuffed on the wire.
            return head + b"..dot line\r\n" + line * (PAYLOAD // len(line))

        def session(i):
            try:
                with socket.create_connection(
                        ("127.0.0.1", self.stack.edge.port), timeout=60) as s:
                    f = s.makefile("rb")

                    def reply():
                        lines = []
                        while True:
                            line = f.readline()
                            if not line:
                                raise ConnectionError(f"closed after {lines}")
                            lines.append(line)
                            if line[3:4] != b"-":
                                return int(line[:3]), lines

                    def expect(code):
                        got, lines = reply()
                        if got != code:
                            raise AssertionError(f"{code} expected: {lines}")
                        return lines

                    expect(220)
                    s.sendall(b"EHLO pipeline.example.net\r\n")
                    if b"250-PIPELINING\r\n" not in b"".join(expect(250)):
                        raise AssertionError("PIPELINING not announced")
                    txn = (b"MAIL FROM:<pipe@example.net>\r\n"
                           b"RCPT TO:<sink@example.test>\r\nDATA\r\n")
                    s.sendall(txn)
                    for n in range(per_session):
                        expect(250)
                        expect(250)
                        expect(354)
                        last = n == per_session - 1
                        s.sendall(message(i, n) + b".\r\n"
                                  + (b"QUIT\r\n" if last else txn))
                        queued = expect(250)
                        if b"queued as" not in queued[0]:
                            raise AssertionError(queued)
                    expect(221)
            except Exception as e:  # reported by the main thread
                errors.append(f"session {i}: {e!r}")

        threads = [threading.Thread(target=session, args=(i,))
                   for i in range(SESSIONS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(RUN_TIMEOUT_S)
            self.assertFalse(t.is_alive(), "a session did not finish")
        self.assertEqual(errors, [])

        def body_check(msg):
            m = re.search(rb"<(\d+)\.(\d+)@pipeline", msg)
            i, n = int(m.group(1)), int(m.group(2))
            self.assertEqual(msg, message(i, n).replace(b"\r\n..", b"\r\n."))
        self.check_queue("pipe@example.net", "sink@example.test", body_check)


if __name__ == "__main__":
    unittest.main()
