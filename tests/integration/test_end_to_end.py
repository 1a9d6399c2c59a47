"""One real message through every kind of process: smtplib -> sinkline-edge ->
sinkline-broker -> the stamp sink (after COMMIT) -> the spool queue."""

import re
import smtplib
import unittest

from harness import StackTestCase

QUEUED_RE = re.compile(rb"2\.0\.0 Ok: queued as ([0-9A-Za-z]+)")


def message_bytes():
    long_line = b"L" * 998
    return (
        b"From: Alice <alice@example.net>\r\n"
        b"To: Bob <bob@example.test>\r\n"
        b"Subject: sinkline end to end\r\n"
        b"\r\n"
        b"first line\r\n"
        b".a line that begins with a dot\r\n"
        b"..two dots\r\n"
        b".\tdot and tab\r\n"
        + long_line + b"\r\n"
        b" \r\n"
        b"last line\r\n"
    )


class EndToEndTest(StackTestCase):

    def send(self, sender, recipients, body):
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            code, banner = s.ehlo("client.example.net")
            self.assertEqual(code, 250, banner)
            code, resp = s.mail(sender)
            self.assertEqual(code, 250, resp)
            for r in recipients:
                code, resp = s.rcpt(r)
                self.assertEqual(code, 250, resp)
            code, resp = s.data(body)
            self.assertEqual(code, 250, resp)
            m = QUEUED_RE.search(resp)
            self.assertIsNotNone(m, resp)
            return m.group(1).decode()

    def test_message_is_queued_stamped_and_byte_exact(self):
        self.start_default_stack()
        body = message_bytes()
        qid = self.send("alice@example.net",
                        ["bob@example.test", "carol@example.test"], body)

        entry, queued = self.stack.queued(qid)
        stamp = f"X-Sinkline-Stamp: stamp; {qid}\r\n".encode()
        self.assertTrue(queued.startswith(stamp), queued[:200])
        # Then the trace header (RFC 5321 §4.4) with the queue id.
        received = re.match(
            rb"Received: from client\.example\.net \(\[127\.0\.0\.1\]\)\r\n"
            rb"\tby mx\.example\.test \(Sinkline\) with ESMTP id "
            + qid.encode() + rb"; [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} "
            rb"\d\d:\d\d:\d\d \+0000\r\n", queued[len(stamp):])
        self.assertIsNotNone(received, queued[:300])
        # Exactly the bytes sent, after those: dots unstuffed, the
        # 998-octet line intact.
        self.assertEqual(queued[len(stamp) + received.end():], body)

        self.assertEqual(entry["queue_id"], qid)
        env = entry["envelope"]
        self.assertEqual(env["mail_from"], "alice@example.net")
        self.assertEqual([r["address"] for r in env["recipients"]],
                         ["bob@example.test", "carol@example.test"])
        self.assertEqual(entry["session"]["helo_name"], "client.example.net")
        # The record's size is the queued message's, stamp included.
        self.assertEqual(int(entry["size"]), len(queued))

    def test_several_messages_in_one_session_each_get_their_own_id(self):
        self.start_default_stack()
        ids = []
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.net")
            for i in range(3):
                s.mail(f"sender{i}@example.net")
                s.rcpt("bob@example.test")
                body = f"Subject: n{i}\r\n\r\nmessage {i}\r\n".encode()
                code, resp = s.data(body)
                self.assertEqual(code, 250, resp)
                ids.append(QUEUED_RE.search(resp).group(1).decode())
            code, resp = s.rset()
            self.assertEqual(code, 250)
        self.assertEqual(len(set(ids)), 3)
        for i, qid in enumerate(ids):
            entry, queued = self.stack.queued(qid)
            self.assertEqual(entry["envelope"]["mail_from"],
                             f"sender{i}@example.net")
            self.assertTrue(queued.endswith(f"message {i}\r\n".encode()))

    def test_null_sender_and_rset_discards_transaction(self):
        self.start_default_stack()
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.net")
            s.mail("dropped@example.net")
            s.rcpt("bob@example.test")
            code, _ = s.rset()
            self.assertEqual(code, 250)
            code, resp = s.mail("<>")
            self.assertEqual(code, 250, resp)
            s.rcpt("bob@example.test")
            code, resp = s.data(b"Subject: bounce\r\n\r\nx\r\n")
            self.assertEqual(code, 250, resp)
            qid = QUEUED_RE.search(resp).group(1).decode()
        entry, _ = self.stack.queued(qid)
        self.assertEqual(entry["envelope"].get("mail_from", ""), "")
        self.assertEqual(self.stack.queue_ids(), [qid])


if __name__ == "__main__":
    unittest.main()
