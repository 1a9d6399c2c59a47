"""The SMTP port as a hostile client uses it: sender-specified routing in a
recipient at an accepted domain (the percent hack `user%other@`, bang paths
`host!user@`, a quoted `@`) from a client that is neither in
--trusted-networks nor authenticated gets 550 5.7.1 and no RCPT reaches
the broker, counted in sinkline_edge_source_routed_refused_total; with
--allow-untrusted-routing it is taken. A Quoted-string local part
(RFC 5321 §4.1.2) is legal mail: 250, and the queued envelope holds it
byte for byte."""

import re
import unittest
import urllib.request

from harness import RawSmtp, StackTestCase, wait_for

QUEUED = re.compile(r"queued as (\S+)")
ROUTED = ["user%other@example.test", "host!user@example.test",
          '"a@b"@example.test']
QUOTED = '"quoted local"@example.test'
PAIRS = r'"odd \"one\" \\ here"@example.test'


def metrics_port(process):
    def port():
        m = re.search(r"metrics on port (\d+)", process.log())
        return int(m.group(1)) if m else None
    return wait_for(port, 10, f"{process.name}'s metrics port in its log")


def counter(port, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                timeout=10) as r:
        text = r.read().decode()
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


class SourceRoutingTest(StackTestCase):

    def start(self, extra=()):
        self.stack.write_config([])
        self.stack.start_broker()
        self.stack.start_edge(["--metrics-listen=127.0.0.1:0"] + list(extra))
        return metrics_port(self.stack.edge)

    def session(self):
        c = RawSmtp(self.stack.edge.port)
        self.addCleanup(c.close)
        self.assertEqual(c.reply()[0], 220)
        self.assertEqual(c.cmd("EHLO attacker.example")[0], 250)
        self.assertEqual(c.cmd("MAIL FROM:<a@attacker.example>")[0], 250)
        return c

    def send(self, c, recipients):
        for r in recipients:
            code, lines = c.cmd(f"RCPT TO:<{r}>")
            self.assertEqual(code, 250, (r, lines))
        self.assertEqual(c.cmd("DATA")[0], 354)
        c.send(b"Subject: quoted\r\n\r\nhello\r\n.\r\n")
        code, lines = c.reply()
        self.assertEqual(code, 250, lines)
        return QUEUED.search(lines[-1]).group(1)

    def test_routing_refused_from_untrusted_clients(self):
        port = self.start()
        c = self.session()
        for r in ROUTED:
            code, lines = c.cmd(f"RCPT TO:<{r}>")
            self.assertEqual(code, 550, (r, lines))
            self.assertTrue(lines[-1].startswith("550 5.7.1 Source routing"),
                            (r, lines))
        # Nothing was accepted: DATA has no recipient.
        self.assertEqual(c.cmd("DATA")[0], 554)
        self.assertEqual(
            counter(port, "sinkline_edge_source_routed_refused_total"), 3)
        # A plain recipient in the same session is still taken.
        qid = self.send(c, ["bob@example.test"])
        entry, _ = self.stack.queued(qid)
        self.assertEqual([r["address"] for r in
                          entry["envelope"]["recipients"]],
                         ["bob@example.test"])

    def test_routing_taken_with_the_flag(self):
        port = self.start(["--allow-untrusted-routing"])
        qid = self.send(self.session(), ROUTED)
        entry, _ = self.stack.queued(qid)
        self.assertEqual([r["address"] for r in
                          entry["envelope"]["recipients"]], ROUTED)
        self.assertEqual(
            counter(port, "sinkline_edge_source_routed_refused_total"), 0)

    def test_routing_taken_from_trusted_networks(self):
        self.start(["--trusted-networks=127.0.0.0/8"])
        qid = self.send(self.session(), ROUTED[:2])
        entry, _ = self.stack.queued(qid)
        self.assertEqual([r["address"] for r in
                          entry["envelope"]["recipients"]], ROUTED[:2])

    def test_quoted_local_parts_pass_through_exactly(self):
        self.start()
        c = self.session()
        qid = self.send(c, [QUOTED, PAIRS])
        entry, _ = self.stack.queued(qid)
        self.assertEqual([r["address"] for r in
                          entry["envelope"]["recipients"]], [QUOTED, PAIRS])
        # And as a sender.
        self.assertEqual(c.cmd(f"MAIL FROM:<{QUOTED}>")[0], 250)
        qid = self.send(c, ["bob@example.test"])
        entry, _ = self.stack.queued(qid)
        self.assertEqual(entry["envelope"]["mail_from"], QUOTED)


if __name__ == "__main__":
    unittest.main()
