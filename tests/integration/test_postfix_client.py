"""Postfix as an SMTP client of the edge: a private Postfix instance
(Debian's postfix, tests/integration/postfix.py) relays everything to the
edge as its relay host. The test submits mail to Postfix's own smtpd with
smtplib; Postfix's SMTP client (PIPELINING, SIZE, 8BITMIME, STARTTLS against
the edge's self-signed certificate) delivers it to Sinkline. Every message
reaches Sinkline's queue once, byte for byte after the trace headers, and
Postfix logs the edge's "queued as <id>" for each recipient. A recipient the
edge refuses (relay denied) is bounced by Postfix with the edge's reply while
the other recipient is delivered."""

import os
import re
import smtplib
import unittest

from harness import StackTestCase, make_cert, split_received, wait_for
from postfix import Postfix

SENT = re.compile(r"to=<([^>]+)>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:(\d+),"
                  r".* status=sent \(250 2\.0\.0 Ok: queued as (\S+)\)")
BOUNCED = re.compile(r"to=<([^>]+)>,.* status=bounced \((.*)\)")


def headers(n, to, extra=b""):
    return (f"From: Alice <alice@example.test>\r\n"
            f"To: {to}\r\n"
            f"Subject: postfix client {n}\r\n"
            f"Message-ID: <pf-{n}@client.example.net>\r\n"
            "Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n").encode() + extra


def plain_message(n, to):
    return headers(n, to) + b"\r\nhello from Postfix\r\nsecond line\r\n"


def dot_8bit_message(n, to):
    return (headers(n, to, b"MIME-Version: 1.0\r\n"
                    b"Content-Type: text/plain; charset=utf-8\r\n"
                    b"Content-Transfer-Encoding: 8bit\r\n")
            + b"\r\n.a line that starts with a dot\r\n"
            b"..two dots\r\n"
            b".\r\n"
            + "Grüße aus Köln, ½ € – ünïcödé\r\n".encode("utf-8")
            + b"\xff\xfe raw high octets \x80\r\n"
            + b"y" * 990 + b"\r\n"
            b"last line\r\n")


def big_message(n, to):
    # About 1 MB in lines of 78 octets plus CRLF; a dot line now and then.
    lines = []
    for i in range(13000):
        prefix = "." if i % 1000 == 0 else ""
        lines.append(f"{prefix}{i:06d} " + "abcdefghij" * 7)
    return headers(n, to) + b"\r\n" + "\r\n".join(lines).encode() + b"\r\n"


class PostfixClientTest(StackTestCase):

    def setUp(self):
        super().setUp()
        self.cert, self.key = make_cert(self.workdir)
        self.stack.start_stamp_sink()
        self.stack.write_config([{
            "name": "stamp-eod", "sink": "stamp", "event": "EOD",
            "priority": 30000, "deadline_ms": 5000,
            "failure_policy": "continue", "content_access": "read-write",
        }])
        self.stack.start_broker()
        self.stack.start_edge([f"--tls-cert={self.cert}",
                               f"--tls-key={self.key}"])
        edge_port = self.stack.edge.port
        self.postfix = Postfix(
            self.workdir, "client", relayhost=f"[127.0.0.1]:{edge_port}",
            main={
                "smtp_tls_security_level": "may",
                "smtp_tls_loglevel": "1",
                # Verbose for the edge only: logs the features in use.
                "debug_peer_list": "127.0.0.1",
                "debug_peer_level": "1",
            })
        # Postfix's SMTP client takes its TLS entropy from tlsmgr: without
        # it, it disables TLS.
        with open(os.path.join(self.postfix.etc, "master.cf"), "a") as f:
            f.write("tlsmgr    unix  - - n 1000? 1 tlsmgr\n")
        self.stack.processes.append(self.postfix.start())

    def submit(self, sender, rcpts, data, mail_options=()):
        with smtplib.SMTP("127.0.0.1", self.postfix.port, timeout=60) as s:
            code, _ = s.ehlo("client.example.net")
            self.assertEqual(code, 250)
            self.assertTrue(s.has_extn("8bitmime"))
            refused = s.sendmail(sender, rcpts, data,
                                 mail_options=list(mail_options))
            self.assertEqual(refused, {})

    def log_matches(self, pattern, count):
        """Waits until Postfix's log has `count` lines matching, returns
        their match objects."""
        def found():
            ms = [m for m in map(pattern.search, self.postfix.log().
                                 splitlines()) if m]
            return ms if len(ms) >= count else None
        ms = wait_for(found, 60, f"{count} log lines like {pattern.pattern}")
        self.assertEqual(len(ms), count, [m.group(0) for m in ms])
        return ms

    def queued_by_message_id(self, count):
        wait_for(lambda: len(self.stack.queue_ids()) >= count, 60,
                 f"{count} messages in Sinkline's queue")
        out = {}
        for qid in self.stack.queue_ids():
            entry, data = self.stack.queued(qid)
            m = re.search(rb"^Message-ID: (\S+)\r$", data, re.M | re.I)
            self.assertIsNotNone(m, data[:600])
            self.assertNotIn(m.group(1).decode(), out)
            out[m.group(1).decode()] = (qid, entry, data)
        self.assertEqual(len(out), count)
        return out

    def strip_traces(self, qid, data):
        """The queued bytes without the stamp, the broker's Received: and
        Postfix's Received:, checking each."""
        stamp = f"X-Sinkline-Stamp: stamp; {qid}\r\n".encode()
        self.assertTrue(data.startswith(stamp), data[:200])
        data = data[len(stamp):]
        data, ours = split_received(data)
        self.assertRegex(
            ours, rb"^Received: from client\.postfix\.test \(\[127\.0\.0\.1\]"
            rb"\)\r\n\tby mx\.example\.test \(Sinkline\) with ESMTPS id "
            + qid.encode() + rb"\r\n\t\(using TLSv1\.[23] with cipher \S+\)"
            rb"(\r\n\tfor <[^>]+>)?; ")
        data, theirs = split_received(data)
        self.assertIn(b"by client.postfix.test (Postfix) with ESMTP", theirs)
        return data

    def test_messages_relayed_byte_for_byte_over_esmtp_and_tls(self):
        messages = [
            # (n, recipients, bytes, MAIL parameters at submission)
            (1, ["one@example.test", "two@example.test",
                 "Three@Example.Test"],
             plain_message(1, "one@example.test, two@example.test"), ()),
            (2, ["four@example.test"],
             dot_8bit_message(2, "four@example.test"), ("BODY=8BITMIME",)),
            (3, ["five@example.test", "six@example.test"],
             big_message(3, "five@example.test"), ()),
            (4, ["seven@example.test"], plain_message(4, "seven@example.test"),
             ()),
        ]
        for n, rcpts, data, opts in messages:
            self.submit("alice@example.test", rcpts, data, opts)

        wait_for(self.postfix.queue_empty, 60, "Postfix's queue empty")
        queued = self.queued_by_message_id(len(messages))
        n_rcpts = sum(len(r) for _, r, _, _ in messages)
        sent = self.log_matches(SENT, n_rcpts)

        by_qid = {}
        for m in sent:
            self.assertEqual(int(m.group(2)), self.stack.edge.port)
            by_qid.setdefault(m.group(3), []).append(m.group(1))
        # Each Sinkline queue id in Postfix's log is one queued message,
        # logged once per recipient, and nothing else was queued.
        self.assertEqual(sorted(by_qid), sorted(self.stack.queue_ids()))

        for n, rcpts, data, opts in messages:
            qid, entry, queued_data = queued[f"<pf-{n}@client.example.net>"]
            self.assertEqual(sorted(by_qid[qid]), sorted(rcpts))
            self.assertEqual(self.strip_traces(qid, queued_data), data,
                             f"message {n}")
            env = entry["envelope"]
            self.assertEqual(env["mail_from"], "alice@example.test")
            self.assertEqual(sorted(r["address"] for r in env["recipients"]),
                             sorted(rcpts))
            params = {p["key"]: p.get("value", "")
                      for p in env["mail_params"]}
            # Postfix announces the size it will send (its estimate).
            self.assertIn("SIZE", params)
            self.assertGreater(int(params["SIZE"]), len(data) * 0.9)
            if "BODY=8BITMIME" in opts:
                self.assertEqual(params.get("BODY"), "8BITMIME")
            session = entry["session"]
            self.assertEqual(session["helo_name"], "client.postfix.test")
            self.assertTrue(session["tls"]["active"])
            self.assertRegex(session["tls"]["version"], r"^TLSv1\.[23]$")

        log = self.postfix.log()
        # Postfix's client saw the edge's extensions and used them.
        self.assertRegex(log, r"TLS connection established to "
                         r"127\.0\.0\.1\[127\.0\.0\.1\]:\d+: TLSv1\.[23]")
        self.assertIn("Using ESMTP PIPELINING", log)
        self.assertNotIn("status=deferred", log)
        self.assertNotIn("status=bounced", log)

    def test_refused_recipient_bounced_other_delivered(self):
        data = plain_message(10, "ok@example.test, far@elsewhere.test")
        self.submit("alice@example.test",
                    ["ok@example.test", "far@elsewhere.test"], data)

        [bounced] = self.log_matches(BOUNCED, 1)
        self.assertEqual(bounced.group(1), "far@elsewhere.test")
        self.assertIn("said: 554 5.7.1 Relay access denied "
                      "(in reply to RCPT TO command)", bounced.group(2))
        # The message to ok@, then Postfix's bounce to the sender.
        [sent_ok, sent_bounce] = sorted(
            self.log_matches(SENT, 2),
            key=lambda m: m.group(1) != "ok@example.test")
        self.assertEqual(sent_ok.group(1), "ok@example.test")
        wait_for(self.postfix.queue_empty, 60, "Postfix's queue empty")

        # The message reached the accepted recipient only.
        queued = self.queued_by_message_id(2)
        qid, entry, queued_data = queued["<pf-10@client.example.net>"]
        self.assertEqual(sent_ok.group(3), qid)
        self.assertEqual(
            [r["address"] for r in entry["envelope"]["recipients"]],
            ["ok@example.test"])
        self.assertEqual(self.strip_traces(qid, queued_data), data)

        # Postfix's bounce to the sender (in an accepted domain) came
        # through the edge too, with the edge's refusal in it.
        [(bqid, bentry, bdata)] = [v for k, v in queued.items()
                                   if k != "<pf-10@client.example.net>"]
        self.assertEqual(sent_bounce.group(1), "alice@example.test")
        self.assertEqual(sent_bounce.group(3), bqid)
        self.assertEqual(bentry["envelope"].get("mail_from", ""), "")  # <>
        self.assertEqual(
            [r["address"] for r in bentry["envelope"]["recipients"]],
            ["alice@example.test"])
        self.assertIn(b"<far@elsewhere.test>", bdata)
        self.assertIn(b"554 5.7.1 Relay access denied", bdata)
        self.assertNotIn("status=deferred", self.postfix.log())


if __name__ == "__main__":
    unittest.main()
