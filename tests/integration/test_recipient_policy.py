"""The recipient-policy sink as a real process at RCPT: of three recipients
the unknown one is refused with 550 5.1.1 and the message reaches the other
two; when the file changes, a new recipient is accepted without a restart."""

import os
import smtplib
import unittest

from harness import StackTestCase


class RecipientPolicyTest(StackTestCase):

    def setUp(self):
        super().setUp()
        self.recipients = os.path.join(self.workdir, "recipients.txt")
        self.write_recipients("# who we accept\n"
                              "Bob@Example.Test\n"
                              "@lists.example.test\n")
        self.stack.start_sink("policy", "sinkline-sink-recipient-policy", [
            f"--recipients={self.recipients}", "--check-interval=0s"])
        self.stack.write_config([
            {"name": "policy-rcpt", "sink": "policy", "event": "RCPT",
             "priority": 100, "failure_policy": "tempfail"},
        ])
        self.stack.start_broker()
        self.stack.start_edge(
            ["--accepted-domains=example.test,lists.example.test"])

    def write_recipients(self, text):
        # Written aside and renamed into place, as operators and
        # Kubernetes do.
        tmp = self.recipients + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, self.recipients)

    def send(self, recipients):
        """Returns ({recipient: (code, text)}, queue id or None)."""
        answers = {}
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.net")
            self.assertEqual(s.mail("alice@example.net")[0], 250)
            for r in recipients:
                answers[r] = s.rcpt(r)
            if not any(code == 250 for code, _ in answers.values()):
                return answers, None
            code, resp = s.data(b"Subject: policy\r\n\r\nhello\r\n")
            self.assertEqual(code, 250, resp)
            return answers, resp.decode().rsplit(" ", 1)[1]

    def test_unknown_recipient_refused_and_list_reloaded(self):
        answers, qid = self.send(["bob@example.test", "eve@example.test",
                                  "news@LISTS.example.test"])
        self.assertEqual(answers["bob@example.test"][0], 250)
        self.assertEqual(answers["news@LISTS.example.test"][0], 250)
        code, text = answers["eve@example.test"]
        self.assertEqual(code, 550)
        self.assertTrue(text.startswith(b"5.1.1 "), text)
        entry, message = self.stack.queued(qid)
        self.assertEqual(
            [r["address"] for r in entry["envelope"]["recipients"]],
            ["bob@example.test", "news@LISTS.example.test"])
        self.assertIn(b"\r\n\r\nhello\r\n", message)

        # Eve is added to the file; the running sink accepts her now.
        self.write_recipients("Bob@Example.Test\n@lists.example.test\n"
                              "eve@example.test\n")
        answers, qid = self.send(["eve@example.test", "mallory@example.test"])
        self.assertEqual(answers["eve@example.test"][0], 250)
        self.assertEqual(answers["mallory@example.test"][0], 550)
        entry, _ = self.stack.queued(qid)
        self.assertEqual(
            [r["address"] for r in entry["envelope"]["recipients"]],
            ["eve@example.test"])

        # Bob is taken out: refused from now on.
        self.write_recipients("eve@example.test\n")
        answers, qid = self.send(["bob@example.test"])
        self.assertEqual(answers["bob@example.test"][0], 550)
        self.assertIsNone(qid)
        self.assertIn("recipient list", self.stack.sinks["policy"].log())


if __name__ == "__main__":
    unittest.main()
