"""The greylist sink at RCPT: a new (client /24, sender, recipient) triplet
gets 451 4.7.1, a retry before the delay too, a retry after it passes and
the message is queued. The state file keeps the triplets: after the sink is
killed and started again, a passed triplet still passes, a waiting one
passes once its delay is over, and a new one is still greylisted."""

import os
import signal
import smtplib
import time
import unittest

from harness import StackTestCase, wait_for

DELAY_S = 1.0


class GreylistTest(StackTestCase):

    def setUp(self):
        super().setUp()
        self.state_file = os.path.join(self.workdir, "greylist", "state")
        os.makedirs(os.path.dirname(self.state_file))
        self.stack.start_sink("grey", "sinkline-sink-greylist", [
            f"--delay={DELAY_S}s", f"--state-file={self.state_file}",
            "--flush-interval=50ms"])
        self.stack.write_config([
            {"name": "grey-rcpt", "sink": "grey", "event": "RCPT",
             "priority": 100, "failure_policy": "tempfail"},
        ])
        self.stack.start_broker()
        self.stack.start_edge()

    def attempt(self, recipients, sender="alice@example.net"):
        """One transaction; returns ({rcpt: (code, text)}, queue id)."""
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.net")
            self.assertEqual(s.mail(sender)[0], 250)
            answers = {r: s.rcpt(r) for r in recipients}
            if not any(c == 250 for c, _ in answers.values()):
                return answers, None
            code, resp = s.data(b"Subject: grey\r\n\r\nhi\r\n")
            self.assertEqual(code, 250, resp)
            return answers, resp.decode().rsplit(" ", 1)[1]

    def assertGreylisted(self, answer):
        code, text = answer
        self.assertEqual(code, 451, text)
        self.assertTrue(text.startswith(b"4.7.1 "), text)

    def state(self):
        try:
            with open(self.state_file) as f:
                return [line.rstrip("\n").split("\t") for line in f
                        if not line.startswith("#")]
        except FileNotFoundError:
            return []

    def test_greylisting_and_its_state_across_a_restart(self):
        first = time.monotonic()
        answers, qid = self.attempt(["bob@example.test"])
        self.assertGreylisted(answers["bob@example.test"])
        self.assertIsNone(qid)
        # Too early: still refused.
        answers, _ = self.attempt(["bob@example.test"])
        self.assertGreylisted(answers["bob@example.test"])
        # After the delay the retry passes and the message is queued.
        time.sleep(max(0.0, first + DELAY_S + 0.2 - time.monotonic()))
        carol_first = time.monotonic()
        answers, qid = self.attempt(["bob@example.test", "carol@example.test"])
        self.assertEqual(answers["bob@example.test"][0], 250)
        self.assertGreylisted(answers["carol@example.test"])
        entry, _ = self.stack.queued(qid)
        self.assertEqual(
            [r["address"] for r in entry["envelope"]["recipients"]],
            ["bob@example.test"])
        # Another sender to the same recipient is a new triplet.
        answers, _ = self.attempt(["bob@example.test"],
                                  sender="mallory@example.net")
        self.assertGreylisted(answers["bob@example.test"])

        # The state file holds every triplet (bob passed, carol waiting);
        # then the sink dies without a chance to write anything more.
        def written():
            rows = {(r[4], r[5]): r[2] for r in self.state()}
            return (rows.get(("alice@example.net", "bob@example.test")) == "1"
                    and ("alice@example.net", "carol@example.test") in rows
                    and ("mallory@example.net", "bob@example.test") in rows)
        wait_for(written, 10, "the state file with three triplets")
        self.assertEqual(self.state()[0][3], "127.0.0.0/24")
        self.assertEqual(os.listdir(os.path.dirname(self.state_file)),
                         ["state"])
        sink = self.stack.sinks["grey"]
        port = sink.port
        sink.stop(signal.SIGKILL)
        sink.argv.append(f"--listen=127.0.0.1:{port}")
        sink.start()
        self.assertIn("3 triplets", sink.log())

        # The broker reconnects; until then the binding's tempfail policy
        # answers 451 4.3.0 (never 250), so retry a bounded number of times.
        time.sleep(max(0.0, carol_first + DELAY_S + 0.2 - time.monotonic()))

        def through():
            answers, qid = self.attempt(["bob@example.test",
                                         "carol@example.test",
                                         "dave@example.test"])
            if any(t.startswith(b"4.3.0") for _, t in answers.values()):
                return None
            return answers, qid
        answers, qid = wait_for(through, 30, "the restarted sink")
        self.assertEqual(answers["bob@example.test"][0], 250)
        self.assertEqual(answers["carol@example.test"][0], 250)
        self.assertGreylisted(answers["dave@example.test"])
        entry, _ = self.stack.queued(qid)
        self.assertEqual(
            [r["address"] for r in entry["envelope"]["recipients"]],
            ["bob@example.test", "carol@example.test"])


if __name__ == "__main__":
    unittest.main()
