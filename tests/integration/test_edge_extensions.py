"""CHUNKING/BDAT over a raw socket, SMTPUTF8 and DSN parameters with Python's
smtplib: each reaches the queue exactly as sent."""

import re
import smtplib
import unittest

from harness import RawSmtp, StackTestCase, split_received, wait_for

QUEUED_RE = re.compile(r"2\.0\.0 Ok: queued as ([0-9A-Za-z]+)")


class EdgeExtensionsTest(StackTestCase):

    def setUp(self):
        super().setUp()
        self.stack.write_config([])
        self.stack.start_broker()
        self.stack.start_edge()

    def queued(self, reply_text):
        m = QUEUED_RE.search(reply_text)
        self.assertIsNotNone(m, reply_text)
        return self.stack.queued(m.group(1))

    def test_bdat_chunks_over_a_raw_socket(self):
        # Content BDAT takes as is: dots are not stuffed, ".\r\n" ends
        # nothing.
        part1 = b"Subject: chunked\r\n\r\n.one dot\r\n..two dots\r\n"
        part2 = b".\r\nafter a lone dot\r\n" + b"x" * 998 + b"\r\n"
        c = RawSmtp(self.stack.edge.port)
        self.assertEqual(c.reply()[0], 220)
        code, lines = c.cmd("EHLO client.example.net")
        self.assertIn("250-CHUNKING", lines)
        self.assertEqual(c.cmd("MAIL FROM:<alice@example.net>")[0], 250)
        self.assertEqual(c.cmd("RCPT TO:<bob@example.test>")[0], 250)
        c.send(b"BDAT %d\r\n" % len(part1) + part1)
        self.assertEqual(c.reply(), (250, [
            f"250 2.0.0 Ok: {len(part1)} octets received"]))
        c.send(b"BDAT %d LAST\r\n" % len(part2) + part2)
        code, lines = c.reply()
        self.assertEqual(code, 250, lines)
        entry, message = self.queued(lines[0])
        message, received = split_received(message)
        self.assertEqual(message, part1 + part2)

        # A second message in the same session, every chunk pipelined in one
        # write, then a refused chunk whose octets are skipped, not run.
        c.send(b"MAIL FROM:<alice@example.net>\r\n"
               b"RCPT TO:<carol@example.test>\r\n"
               b"BDAT 5\r\nab\r\nc"
               b"BDAT 2 LAST\r\n\r\n"
               b"BDAT 6\r\nQUIT\r\n"
               b"NOOP\r\n")
        self.assertEqual(c.reply()[0], 250)
        self.assertEqual(c.reply()[0], 250)
        self.assertEqual(c.reply(), (250, ["250 2.0.0 Ok: 5 octets received"]))
        code, lines = c.reply()
        self.assertEqual(code, 250, lines)
        _, message = self.queued(lines[0])
        self.assertEqual(split_received(message)[0], b"ab\r\nc\r\n")
        self.assertEqual(c.reply(),
                         (503, ["503 5.5.1 Error: need MAIL command"]))
        self.assertEqual(c.reply()[0], 250)  # NOOP: the QUIT was content
        self.assertEqual(c.cmd("QUIT")[0], 221)
        c.close()

    def test_smtplib_smtputf8(self):
        sender = "jörg@bücher.example"
        rcpt = "用户@example.test"
        body = ("Subject: Grüße\r\nFrom: " + sender + "\r\n\r\n"
                "ünïcödé body\r\n").encode()
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.net")
            self.assertTrue(s.has_extn("smtputf8"))
            self.assertTrue(s.has_extn("8bitmime"))
            # Without SMTPUTF8 a UTF-8 address is refused.
            s.command_encoding = "utf-8"
            code, resp = s.mail(sender)
            self.assertEqual(code, 553, resp)
            s.rset()
            code, resp = s.mail(sender, ["SMTPUTF8", "BODY=8BITMIME"])
            self.assertEqual(code, 250, resp)
            code, resp = s.rcpt(rcpt)
            self.assertEqual(code, 250, resp)
            code, resp = s.data(body)
            self.assertEqual(code, 250, resp)
        entry, message = self.queued(resp.decode())
        self.assertEqual(entry["envelope"]["mail_from"], sender)
        self.assertEqual(entry["envelope"]["recipients"][0]["address"], rcpt)
        message, received = split_received(message)
        self.assertEqual(message, body)
        self.assertIn(b"UTF8SMTP", received)

    def test_smtplib_dsn_parameters_kept_in_the_envelope(self):
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.net")
            self.assertTrue(s.has_extn("dsn"))
            refused = s.sendmail(
                "alice@example.net", ["bob@example.test"],
                b"Subject: dsn\r\n\r\nhi\r\n",
                mail_options=["RET=HDRS", "ENVID=QQ314159"],
                rcpt_options=["NOTIFY=SUCCESS,FAILURE",
                              "ORCPT=rfc822;bob@example.test"])
            self.assertEqual(refused, {})
            code, resp = s.mail("alice@example.net", ["RET=EVERYTHING"])
            self.assertEqual((code, resp), (501, b"5.5.4 Bad RET parameter"))
        [qid] = wait_for(self.stack.queue_ids, 10, "the queued message")
        entry, _ = self.stack.queued(qid)
        env = entry["envelope"]
        # smtplib adds SIZE itself.
        self.assertEqual(
            [(p["key"], p.get("value", "")) for p in env["mail_params"]],
            [("SIZE", "20"), ("RET", "HDRS"), ("ENVID", "QQ314159")])
        self.assertEqual(
            [(p["key"], p["value"]) for p in env["recipients"][0]["params"]],
            [("NOTIFY", "SUCCESS,FAILURE"),
             ("ORCPT", "rfc822;bob@example.test")])


if __name__ == "__main__":
    unittest.main()
