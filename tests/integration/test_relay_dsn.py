"""Delivery status notifications and durable per-recipient state, against a
private Postfix as the next hop (its check_recipient_access refuses one
recipient with 550 and defers another with 451):

  - a recipient refused for good: the sender gets an RFC 3464 report,
    from the null sender, through the same relay, in Postfix's Maildir;
    none for a message from the null sender;
  - with RET=FULL the report returns the whole original as message/rfc822,
    up to --dsn-max-return-bytes; a larger one gets its header and a note;
  - a recipient deferred, then the broker SIGKILLed: the state survives in
    the spool, the restarted broker delivers the deferred recipient, and
    every recipient gets the message exactly once.
"""

import email
import email.policy
import os
import re
import smtplib
import unittest

from harness import AdminClient, StackTestCase, spool_records, wait_for
from postfix import Postfix
from test_relay import NextHop

from sinkline.v1 import types_pb2  # noqa: E402  (PYTHONPATH)

QUEUED = re.compile(rb"queued as (\S+)")
# The access table's answers, and the replies Postfix makes of them.
REFUSE = "550 5.1.1 no such user here"
DEFER = "451 4.2.0 Greylisted, try later"
REFUSAL = ("550 5.1.1 <nobody@example.test>: Recipient address rejected: "
           "no such user here")
DEFERRAL = ("451 4.2.0 <later@example.test>: Recipient address rejected: "
            "Greylisted, try later")
DSN_COUNTER = "sinkline_broker_dsn_total"
RETURNED = 'sinkline_broker_dsn_returned_total{{content="{}"}}'
MAX_RETURN = 4096


def body(n):
    return (f"Subject: dsn test {n}\r\nFrom: sender@example.test\r\n"
            f"Message-ID: <dsn-{n}@sinkline.test>\r\n\r\nbody {n}\r\n"
            ).encode()


class RelayDsnTest(StackTestCase):

    def setUp(self):
        super().setUp()
        self.access = os.path.join(self.workdir, "recipient-access")
        self.write_access({"nobody@example.test": REFUSE,
                           "later@example.test": DEFER})
        self.postfix = Postfix(self.workdir, "next-hop", main={
            "smtpd_recipient_restrictions":
                f"check_recipient_access texthash:{self.access}",
            "alias_maps": "",
            "alias_database": "",
        })
        self.stack.processes.append(self.postfix.start())
        self.stack.write_config([])
        self.broker_args = [
            f"--relay-host=[127.0.0.1]:{self.postfix.port}",
            "--relay-helo=broker.example.test",
            "--relay-connect-timeout-ms=2000",
            "--relay-timeout-ms=10000",
            "--submit-retry-min-ms=300",
            "--submit-retry-max-ms=1000",
            f"--dsn-max-return-bytes={MAX_RETURN}"]
        self.start_broker()
        self.stack.start_edge()

    def start_broker(self):
        self.stack.start_broker(extra=self.broker_args, queue_dir=False)
        self.admin = AdminClient(self.stack.broker.port)
        self.addCleanup(self.admin.close)

    def write_access(self, table):
        with open(self.access, "w") as f:
            for k, v in table.items():
                f.write(f"{k} {v}\n")

    def send(self, n, rcpts, sender="sender@example.test", options=(),
             data=None):
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.net")
            self.assertEqual(s.mail(sender, list(options))[0], 250)
            for r in rcpts:
                self.assertEqual(s.rcpt(r)[0], 250)
            code, resp = s.data(data or body(n))
            self.assertEqual(code, 250, resp)
            return QUEUED.search(resp).group(1).decode()

    def mailbox(self):
        """[(Delivered-To, parsed message)] in Postfix's Maildir."""
        return [(h["Delivered-To"],
                 email.message_from_bytes(raw, policy=email.policy.compat32))
                for h, raw in self.postfix.delivered()]

    def state(self, qid):
        return self.admin.message(qid).state

    def test_refused_recipient_gets_a_dsn_from_the_null_sender(self):
        qid = self.send(1, ["now@example.test", "nobody@example.test"])
        info = wait_for(lambda: (lambda m: m if m.state ==
                                 types_pb2.MESSAGE_STATE_FAILED else None)(
                                     self.admin.message(qid)),
                        20, "the refused recipient fails")
        self.assertIn(REFUSAL, info.reason)

        def dsn():
            for to, msg in self.mailbox():
                if to == "sender@example.test":
                    return msg
            return None
        report = wait_for(dsn, 30, "the DSN in the sender's mailbox")
        self.assertEqual(report["Return-Path"], "<>")
        self.assertEqual(report.get_content_type(), "multipart/report")
        self.assertEqual(report.get_param("report-type"), "delivery-status")
        parts = report.get_payload()
        self.assertEqual([p.get_content_type() for p in parts],
                         ["text/plain", "message/delivery-status",
                          "text/rfc822-headers"])
        self.assertIn(f"<nobody@example.test>: {REFUSAL}",
                      parts[0].get_payload())
        # message/delivery-status: the per-message group, then one per
        # recipient (email parses each group as a header block).
        groups = parts[1].get_payload()
        self.assertEqual(groups[0]["Reporting-MTA"], "dns; mx.example.test")
        self.assertEqual(groups[0]["X-Sinkline-Queue-ID"], qid)
        [rcpt] = groups[1:]
        self.assertEqual(rcpt["Final-Recipient"],
                         "rfc822; nobody@example.test")
        self.assertEqual(rcpt["Action"], "failed")
        self.assertEqual(rcpt["Status"], "5.1.1")
        self.assertEqual(rcpt["Diagnostic-Code"], f"smtp; {REFUSAL}")
        self.assertIn("Message-ID: <dsn-1@sinkline.test>",
                      parts[2].get_payload())
        # The other recipient got the message, once.
        self.assertEqual(sorted(to for to, _ in self.mailbox()),
                         ["now@example.test", "sender@example.test"])
        history = [h.what for h in self.admin.message(qid).history]
        self.assertTrue(any(h.startswith("DSN ") for h in history), history)

        # From the null sender: refused, and no DSN (RFC 5321 §6.1).
        qid2 = self.send(2, ["nobody@example.test"], sender="")
        wait_for(lambda: self.state(qid2) == types_pb2.MESSAGE_STATE_FAILED,
                 20, "the null sender's message fails")
        self.assertEqual(self.admin.counters()[DSN_COUNTER], 1)

    def dsns(self):
        return [msg for to, msg in self.mailbox()
                if to == "sender@example.test"]

    def test_ret_full_returns_the_whole_message_up_to_the_limit(self):
        qid = self.send(5, ["nobody@example.test"], options=["RET=FULL"])
        [report] = wait_for(lambda: self.dsns() or None, 30,
                            "the DSN in the sender's mailbox")
        parts = report.get_payload()
        self.assertEqual([p.get_content_type() for p in parts],
                         ["text/plain", "message/delivery-status",
                          "message/rfc822"])
        [original] = parts[2].get_payload()
        self.assertEqual(original["Message-ID"], "<dsn-5@sinkline.test>")
        self.assertIn(qid, original["Received"])  # the broker's trace header
        self.assertEqual(original.get_payload().strip(), "body 5")

        # Larger than --dsn-max-return-bytes: the header, and a note.
        big = body(6) + b"x" * 998 + b"\r\n"
        big = big * (MAX_RETURN // len(big) + 1)
        qid = self.send(6, ["nobody@example.test"], options=["RET=FULL"],
                        data=big)

        def second():
            for report in self.dsns():
                parts = report.get_payload()
                if parts[1].get_payload()[0]["X-Sinkline-Queue-ID"] == qid:
                    return parts
            return None
        parts = wait_for(second, 30, "the second DSN")
        self.assertEqual([p.get_content_type() for p in parts],
                         ["text/plain", "message/delivery-status",
                          "text/rfc822-headers"])
        self.assertIn("only its header is returned", parts[0].get_payload())
        self.assertIn(f"({MAX_RETURN} bytes)", parts[0].get_payload())
        self.assertIn("Message-ID: <dsn-6@sinkline.test>",
                      parts[2].get_payload())
        self.assertNotIn("x" * 998, parts[2].get_payload())
        counters = self.admin.counters()
        self.assertEqual(counters[RETURNED.format("full")], 1)
        self.assertEqual(counters[RETURNED.format("headers_over_limit")], 1)

    def test_deferred_recipient_survives_sigkill_delivered_once(self):
        qid = self.send(3, ["now@example.test", "later@example.test"])
        info = wait_for(lambda: (lambda m: m if m.state ==
                                 types_pb2.MESSAGE_STATE_RELEASING and
                                 DEFERRAL in m.reason else None)(
                                     self.admin.message(qid)),
                        20, "later@ deferred")
        wait_for(lambda: [to for to, _ in self.mailbox()] ==
                 ["now@example.test"], 20, "now@ delivered")
        # The per-recipient record in the spool's store (r/<id>).
        record = "r/" + qid
        text = spool_records(self.stack.spool_dir)[record]
        lines = sorted(line.split("\t") for line in text.splitlines())
        self.assertEqual(lines[0][:3], ["deferred", "later@example.test",
                                        DEFERRAL])
        self.assertEqual(lines[1][:2], ["delivered", "now@example.test"])

        self.stack.broker.kill()  # SIGKILL: nothing is saved on the way out
        self.admin.close()
        self.write_access({"nobody@example.test": REFUSE})
        self.postfix.reload()
        self.start_broker()
        wait_for(lambda: self.state(qid) == types_pb2.MESSAGE_STATE_SUBMITTED,
                 30, "submitted after the restart")
        wait_for(lambda: len(self.mailbox()) == 2, 20, "later@ delivered")
        wait_for(self.postfix.queue_empty, 10, "Postfix's queue empty")
        self.assertEqual(sorted(to for to, _ in self.mailbox()),
                         ["later@example.test", "now@example.test"])
        self.assertNotIn(record, spool_records(self.stack.spool_dir))
        self.assertNotIn(DSN_COUNTER, self.admin.counters())


class RelayExpiryTest(StackTestCase):

    def test_expired_recipient_gets_a_dsn(self):
        hop = NextHop(self.workdir)
        hop.set_rules({"defer": ["later@example.test"]})
        self.stack.processes.append(hop.start())
        self.stack.write_config([])
        self.stack.start_broker(extra=[
            f"--relay-host=[127.0.0.1]:{hop.port}",
            "--relay-helo=broker.example.test",
            "--relay-connect-timeout-ms=2000",
            "--relay-timeout-ms=10000",
            "--submit-retry-min-ms=300",
            "--submit-retry-max-ms=600",
            "--max-queue-age-s=3"], queue_dir=False)
        self.stack.start_edge()
        admin = AdminClient(self.stack.broker.port)
        self.addCleanup(admin.close)
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.net")
            s.mail("sender@example.test")
            self.assertEqual(s.rcpt("now@example.test")[0], 250)
            self.assertEqual(s.rcpt("later@example.test")[0], 250)
            code, resp = s.data(body(4))
            self.assertEqual(code, 250, resp)
            qid = QUEUED.search(resp).group(1).decode()
        # While it waits: one deferred message, and when it was committed.
        counters = wait_for(lambda: (lambda c: c if c.get(
            "sinkline_broker_deferred_messages") == 1 else None)(
                admin.counters()), 20, "one deferred message counted")
        self.assertGreater(counters[
            "sinkline_broker_oldest_deferred_commit_timestamp_seconds"], 0)
        wait_for(lambda: admin.message(qid).state ==
                 types_pb2.MESSAGE_STATE_FAILED, 30, "expired")
        wait_for(lambda: len(hop.delivered()) == 2, 20, "the DSN")
        (first, _), (dsn_env, dsn) = hop.delivered()
        self.assertEqual(first["rcpt_tos"], ["now@example.test"])
        self.assertEqual(dsn_env["mail_from"], "<>")  # the null sender
        self.assertEqual(dsn_env["rcpt_tos"], ["sender@example.test"])
        report = email.message_from_bytes(dsn, policy=email.policy.compat32)
        [rcpt] = report.get_payload()[1].get_payload()[1:]
        self.assertEqual(rcpt["Final-Recipient"],
                         "rfc822; later@example.test")
        self.assertEqual(rcpt["Action"], "failed")
        self.assertEqual(rcpt["Status"], "4.4.7")
        self.assertEqual(rcpt["Diagnostic-Code"],
                         "smtp; 451 4.2.0 Mailbox busy, try later")
        counters = admin.counters()
        self.assertEqual(counters["sinkline_broker_deferred_messages"], 0)
        self.assertEqual(counters[DSN_COUNTER], 1)


if __name__ == "__main__":
    unittest.main()
