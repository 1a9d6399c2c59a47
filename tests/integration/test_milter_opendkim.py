"""Debian's OpenDKIM, in signing mode with a generated key, as a private
instance under the test's directory, bound through sinkline-sink-milter at
EOD before COMMIT (EOD-only: the bridge replays each transaction from the
event): every queued message carries OpenDKIM's signature, and Debian's
python3-dkim verifies it. The bridge's connections to OpenDKIM are pooled
and reused from one message to the next."""

import re
import smtplib
import unittest

from dkim_keys import DkimKeys, signatures, verify_all
from harness import StackTestCase, has_failed
from milter_tools import opendkim

QUEUED = re.compile(rb"queued as (\S+)")

MESSAGES = [
    b"From: Alice <alice@example.test>\r\nTo: bob@example.net\r\n"
    b"Subject: one\r\nDate: Mon, 30 Nov 2026 03:00:00 +0000\r\n"
    b"Message-ID: <one@example.test>\r\n\r\nHello from OpenDKIM.\r\n",
    b"From: alice@example.test\r\nTo: bob@example.net,\r\n"
    b"  carol@example.net\r\nSubject: a folded\r\n  subject\r\n\r\n"
    b"body   with  runs\r\n.leading dot\r\n\r\n\r\n",
    b"From: alice@example.test\r\nSubject: large\r\n\r\n"
    + b"a line of a body larger than one milter chunk\r\n" * 4000,
]


class MilterOpenDkimTest(StackTestCase):

    def setUp(self):
        super().setUp()
        self.keys = DkimKeys(self.workdir,
                             [("example.test", "mil2026", "rsa-sha256")])
        key = f"{self.keys.secret_dir}/example.test.mil2026.pem"
        self.opendkim = opendkim(self.workdir, "example.test", "mil2026",
                                 key)
        self.addCleanup(self.opendkim.stop)
        self.opendkim.start()
        self.stack.start_sink("milter", "sinkline-sink-milter", [
            f"--milter=unix:{self.opendkim.sock}"])
        self.stack.write_config([
            {"name": "opendkim", "sink": "milter", "event": "EOD",
             "priority": 20000, "content_access": "read-write",
             "deadline_ms": 10000, "failure_policy": "tempfail"},
        ])
        self.stack.start_broker()
        self.stack.start_edge(
            ["--accepted-domains=example.test,example.net"])

    def tearDown(self):
        if has_failed(self):
            print(f"===== opendkim =====\n{self.opendkim.log()}")
        super().tearDown()

    def send(self, body):
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.net")
            self.assertEqual(s.mail("alice@example.test")[0], 250)
            self.assertEqual(s.rcpt("bob@example.net")[0], 250)
            code, resp = s.data(body)
            self.assertEqual(code, 250, resp)
            return QUEUED.search(resp).group(1).decode()

    def test_every_queued_message_carries_a_valid_signature(self):
        ids = [self.send(m) for m in MESSAGES for _ in range(2)]
        for i, qid in enumerate(ids):
            with self.subTest(message=i):
                _, queued = self.stack.queued(qid)
                sigs = verify_all(queued, self.keys)
                self.assertEqual([(t["d"], t["s"]) for t in sigs],
                                 [("example.test", "mil2026")])
                self.assertEqual(sigs[0]["a"], "rsa-sha256")
                # OpenDKIM negotiates SMFIP_HDR_LEADSPC and sends the space
                # after the colon itself: one space, as behind Postfix.
                self.assertRegex(queued, rb"(?m)^DKIM-Signature: v=1; ")
                # The message itself is unchanged below the signature.
                self.assertTrue(queued.endswith(MESSAGES[i // 2]))

    def test_unknown_domain_passes_unsigned(self):
        body = b"From: someone@example.net\r\nSubject: x\r\n\r\nhi\r\n"
        qid = self.send(body)
        _, queued = self.stack.queued(qid)
        self.assertEqual(signatures(queued), [])
        self.assertTrue(queued.endswith(body))


if __name__ == "__main__":
    unittest.main()
