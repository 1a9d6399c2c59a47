"""The dkim-sign sink at EOD before COMMIT (priority 20000, read-write):
every signature it adds verifies with an independent verifier, Debian's
python3-dkim, for RSA-SHA256 and Ed25519-SHA256, on messages with folded
headers, 8-bit bodies, trailing blank lines, whitespace runs, an empty body
and a body too large to travel inline. The broker's Received: trace header
is in the message the sink signs, and is left out of the signature."""

import re
import smtplib
import unittest

from dkim_keys import DkimKeys, signatures, verify_all
from harness import StackTestCase

QUEUED = re.compile(rb"queued as (\S+)")

MESSAGES = {
    "folded": (
        "alice@example.test",
        b"From: Alice Example <alice@example.test>\r\n"
        b"To: bob@example.net,\r\n"
        b"  carol@example.net,\r\n"
        b"\tdave@example.net\r\n"
        b"Subject: a subject folded\r\n"
        b"   over three\r\n"
        b"\tlines\r\n"
        b"Date: Mon, 30 Nov 2026 03:00:00 +0000\r\n"
        b"Message-ID: <folded@example.test>\r\n"
        b"\r\n"
        b"Hello.\r\n"),
    "eight-bit": (
        "alice@example.test",
        b"From: alice@example.test\r\n"
        b"To: bob@example.net\r\n"
        b"Subject: =?utf-8?q?caf=C3=A9?=\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"\r\n"
        b"\xc3\xa9t\xc3\xa9 \xc3\xa0 la plage \xe2\x98\x80\r\n"
        b"raw octets \xff\xfe\x80\r\n"),
    "trailing-blank-lines": (
        "alice@example.test",
        b"From: <alice@example.test>\r\n"
        b"Subject: trailing\r\n"
        b"\r\n"
        b"body   with \t runs of   whitespace  \r\n"
        b".a leading dot\r\n"
        b"\r\n"
        b"\r\n"
        b"\r\n"),
    "empty-body": (
        "alice@example.test",
        b"From: alice@example.test\r\nSubject: empty\r\n\r\n"),
    "subdomain": (
        "news@mail.example.test",
        b"From: News <news@Mail.Example.TEST>\r\nSubject: sub\r\n\r\nhi\r\n"),
    "other-domain-ed25519-only": (
        "ops@example.org",
        b"From: ops@example.org\r\nSubject: org\r\n\r\nfrom org\r\n"),
    "large": (
        "alice@example.test",
        b"From: alice@example.test\r\nSubject: large\r\n\r\n"
        + b"line of a body that does not fit inline\r\n" * 5000
        + b"\r\n\r\n"),
}


class DkimSignTest(StackTestCase):

    def setUp(self):
        super().setUp()
        self.keys = DkimKeys(self.workdir, [
            ("example.test", "rsa2026", "rsa-sha256"),
            ("example.test", "ed2026", "ed25519-sha256"),
            ("example.org", "edorg", "ed25519-sha256"),
        ])
        self.stack.start_sink("dkim", "sinkline-sink-dkim-sign", [
            f"--keys={self.keys.keys_file}"])
        self.stack.write_config([
            {"name": "dkim-eod", "sink": "dkim", "event": "EOD",
             "priority": 20000, "content_access": "read-write",
             "deadline_ms": 10000, "failure_policy": "tempfail"},
        ])
        self.stack.start_broker()
        self.stack.start_edge(
            ["--accepted-domains=example.test,example.net"])

    def send(self, sender, body):
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.net")
            self.assertEqual(s.mail(sender, ["BODY=8BITMIME"])[0], 250)
            self.assertEqual(s.rcpt("bob@example.net")[0], 250)
            code, resp = s.data(body)
            self.assertEqual(code, 250, resp)
            return QUEUED.search(resp).group(1).decode()

    def test_every_signature_verifies(self):
        ids = {name: self.send(sender, body)
               for name, (sender, body) in MESSAGES.items()}
        for name, qid in ids.items():
            with self.subTest(message=name):
                _, queued = self.stack.queued(qid)
                # The signatures sit on top, above the broker's trace header.
                self.assertTrue(queued.startswith(b"DKIM-Signature: "),
                                queued[:80])
                self.assertIn(b"\r\nReceived: ", queued.split(b"\r\n\r\n")[0])
                sigs = verify_all(queued, self.keys)
                got = sorted((t["a"], t["d"], t["s"]) for t in sigs)
                if name == "other-domain-ed25519-only":
                    want = [("ed25519-sha256", "example.org", "edorg")]
                else:
                    want = [("ed25519-sha256", "example.test", "ed2026"),
                            ("rsa-sha256", "example.test", "rsa2026")]
                self.assertEqual(got, want)
                for t in sigs:
                    self.assertEqual(t["c"], "relaxed/relaxed")
                    signed = t["h"].lower().split(":")
                    self.assertIn("from", signed)
                    self.assertNotIn("received", signed)
                # The original message follows the trace and signature
                # fields unchanged.
                self.assertTrue(queued.endswith(MESSAGES[name][1]), name)

    def test_a_changed_message_no_longer_verifies(self):
        import dkim
        qid = self.send(*MESSAGES["folded"])
        _, queued = self.stack.queued(qid)
        verify_all(queued, self.keys)
        tampered = queued.replace(b"Hello.", b"Hullo.")
        sigs = signatures(tampered)
        self.assertEqual(len(sigs), 2)
        for i in range(len(sigs)):
            try:
                ok = dkim.DKIM(tampered).verify(idx=i,
                                                dnsfunc=self.keys.dnsfunc)
            except dkim.ValidationError:
                ok = False
            self.assertFalse(ok, sigs[i]["a"])

    def test_unknown_domain_passes_unsigned(self):
        body = b"From: someone@example.net\r\nSubject: x\r\n\r\nhi\r\n"
        qid = self.send("someone@example.net", body)
        _, queued = self.stack.queued(qid)
        self.assertEqual(signatures(queued), [])
        self.assertTrue(queued.endswith(body))


if __name__ == "__main__":
    unittest.main()
