"""MAIL and RCPT parameters through the relay: passed on only when the next
hop offers their extension, and a message that needs an extension the next
hop lacks is refused for good with the reason (never silently sent
without it). The next hop is the aiosmtpd fake (next_hop.py), told which
extensions to offer; it keeps the MAIL and RCPT lines as received."""

import re
import smtplib
import unittest

from harness import AdminClient, StackTestCase, wait_for
from test_relay import NextHop

from sinkline.v1 import types_pb2  # noqa: E402  (PYTHONPATH)

QUEUED = re.compile(rb"queued as (\S+)")
BODY = (b"Subject: esmtp\r\nFrom: a@example.net\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n"
        + "caf\u00e9 \u00fcber alles\r\n".encode())
DSN_MAIL = ["RET=HDRS", "ENVID=env-42"]
DSN_RCPT = ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;one@example.test"]


class RelayEsmtpTest(StackTestCase):

    def start(self, rules):
        self.hop = NextHop(self.workdir)
        self.hop.set_rules(rules)
        self.stack.processes.append(self.hop.start())
        self.stack.write_config([])
        self.stack.start_broker(extra=[
            f"--relay-host=[127.0.0.1]:{self.hop.port}",
            "--relay-helo=broker.example.test",
            "--relay-connect-timeout-ms=2000",
            "--relay-timeout-ms=10000",
            "--submit-retry-min-ms=200",
            "--submit-retry-max-ms=1000"], queue_dir=False)
        self.stack.start_edge()
        self.admin = AdminClient(self.stack.broker.port)
        self.addCleanup(lambda: self.admin.close())

    def send(self, mail_options=(), rcpt_options=(), sender="a@example.net",
             rcpt="one@example.test", body=BODY):
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.net")
            code, resp = s.mail(sender, list(mail_options))
            self.assertEqual(code, 250, resp)
            code, resp = s.rcpt(rcpt, list(rcpt_options))
            self.assertEqual(code, 250, resp)
            code, resp = s.data(body)
            self.assertEqual(code, 250, resp)
            return QUEUED.search(resp).group(1).decode()

    def submitted(self, qid):
        wait_for(lambda: self.admin.message(qid).state ==
                 types_pb2.MESSAGE_STATE_SUBMITTED, 20, f"{qid} submitted")
        [(env, data)] = self.hop.delivered()
        return env, data

    def failed(self, qid, dsn_delivered=True):
        """The message fails; its DSN (from <>) goes to the same next hop,
        where it needs none of what was missing, or fails there too."""
        info = wait_for(
            lambda: (lambda m: m if m.state == types_pb2.MESSAGE_STATE_FAILED
                     else None)(self.admin.message(qid)),
            20, f"{qid} failed")
        [dsn_id] = [h.what.split()[1] for h in info.history
                    if h.what.startswith("DSN ")]
        final = (types_pb2.MESSAGE_STATE_SUBMITTED if dsn_delivered
                 else types_pb2.MESSAGE_STATE_FAILED)
        wait_for(lambda: self.admin.message(dsn_id).state == final, 20,
                 f"the DSN {dsn_id} done")
        self.assertEqual([env["mail_from"] for env, _ in self.hop.delivered()],
                         ["<>"] * dsn_delivered)
        return info.reason

    def test_dsn_8bitmime_and_size_passed_when_offered(self):
        self.start({"ehlo_add": ["DSN"]})
        qid = self.send(["BODY=8BITMIME"] + DSN_MAIL, DSN_RCPT)
        env, data = self.submitted(qid)
        mail, rcpt = env["commands"]
        self.assertRegex(mail, r"^MAIL FROM:<a@example\.net> SIZE=\d+ ")
        for p in ["BODY=8BITMIME"] + DSN_MAIL:
            self.assertIn(f" {p}", mail)
        self.assertEqual(
            rcpt, "RCPT TO:<one@example.test> " + " ".join(DSN_RCPT))
        self.assertTrue(data.endswith(BODY))

    def test_dsn_parameters_dropped_when_not_offered(self):
        # RFC 3461 §4.3: a relay to a server without DSN goes on without
        # the parameters (the fake refuses them with 555 when not offered).
        self.start({})
        qid = self.send(["BODY=8BITMIME"] + DSN_MAIL, DSN_RCPT)
        env, _ = self.submitted(qid)
        mail, rcpt = env["commands"]
        self.assertIn(" BODY=8BITMIME", mail)
        for p in DSN_MAIL:
            self.assertNotIn(p.split("=")[0], mail)
        self.assertEqual(rcpt, "RCPT TO:<one@example.test>")

    def test_8bit_body_without_8bitmime_fails(self):
        self.start({"ehlo_drop": ["8BITMIME"]})
        qid = self.send(["BODY=8BITMIME"])
        reason = self.failed(qid)
        self.assertIn("5.6.3 the next hop does not offer 8BITMIME, which the "
                      "message needs (BODY=8BITMIME)", reason)

    def test_utf8_address_without_smtputf8_fails(self):
        self.start({"ehlo_drop": ["SMTPUTF8"]})
        qid = self.send(["SMTPUTF8", "BODY=8BITMIME"],
                        sender="j\u00f6rg@example.net")
        # The DSN to j\u00f6rg@ needs SMTPUTF8 too: it fails, silently.
        reason = self.failed(qid, dsn_delivered=False)
        self.assertIn("5.6.7 the next hop does not offer SMTPUTF8", reason)

    def test_smtputf8_passed_when_offered(self):
        self.start({})
        qid = self.send(["SMTPUTF8", "BODY=8BITMIME"],
                        sender="j\u00f6rg@example.net")
        env, _ = self.submitted(qid)
        self.assertEqual(env["mail_from"], "j\u00f6rg@example.net")
        self.assertIn(" SMTPUTF8", env["commands"][0])

    def test_message_over_the_next_hops_size_fails(self):
        self.start({"size": 100})
        qid = self.send()
        # The DSN is over 100 octets too.
        reason = self.failed(qid, dsn_delivered=False)
        self.assertRegex(reason, r"5\.3\.4 message size \d+ exceeds the next "
                                 r"hop's SIZE limit 100")


if __name__ == "__main__":
    unittest.main()
