"""How the relay finds its next hop (--relay-host, relayhost syntax) and
resolves it with a deadline (--relay-dns-timeout-ms), against a DNS server
the test runs (fake_dns.py, --relay-dns-server):

  - [127.0.0.1]:port and localhost:port: no MX lookup, delivered;
  - relay.test:port: MX lookup, then the MX host's address, delivered;
  - a domain without MX: its own address;
  - a name that does not exist: deferred with the resolver's reason;
  - a DNS server that never answers: deferred once the deadline passes,
    and the one submit worker goes on to the next message.
"""

import json
import os
import re
import smtplib
import unittest

from harness import (ROOT, AdminClient, Process, StackTestCase, wait_for)
from test_relay import NextHop

from sinkline.v1 import types_pb2  # noqa: E402  (PYTHONPATH)

QUEUED = re.compile(rb"queued as (\S+)")
BODY = b"Subject: dns\r\nFrom: a@example.net\r\n\r\nfound by name\r\n"


class RelayDnsTest(StackTestCase):

    def start_dns(self, zone, silent=False):
        self.zone_path = os.path.join(self.workdir, "zone.json")
        self.dns_log = os.path.join(self.workdir, "dns-queries.log")
        with open(self.zone_path, "w") as f:
            json.dump(zone, f)
        dns = Process("dns", ["/usr/bin/python3",
                              os.path.join(ROOT, "tests", "integration",
                                           "fake_dns.py"),
                              f"--zone={self.zone_path}",
                              f"--log={self.dns_log}"]
                      + (["--silent"] if silent else []), self.workdir)
        self.stack.processes.append(dns.start())
        return dns

    def queries(self):
        if not os.path.exists(self.dns_log):
            return []
        with open(self.dns_log) as f:
            return [line.strip() for line in f if line.strip()]

    def start(self, relay_host, dns, *flags):
        self.stack.write_config([])
        self.stack.start_broker(extra=[
            f"--relay-host={relay_host}",
            f"--relay-dns-server=127.0.0.1:{dns.port}",
            "--relay-helo=broker.example.test",
            "--relay-connect-timeout-ms=2000",
            "--relay-timeout-ms=10000",
            "--submit-retry-min-ms=200",
            "--submit-retry-max-ms=1000"] + list(flags), queue_dir=False)
        self.stack.start_edge()
        self.admin = AdminClient(self.stack.broker.port)
        self.addCleanup(lambda: self.admin.close())

    def send(self, rcpt="one@example.test"):
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.net")
            s.mail("a@example.net")
            self.assertEqual(s.rcpt(rcpt)[0], 250)
            code, resp = s.data(BODY)
            self.assertEqual(code, 250, resp)
            return QUEUED.search(resp).group(1).decode()

    def delivered(self, hop, qid):
        wait_for(lambda: self.admin.message(qid).state ==
                 types_pb2.MESSAGE_STATE_SUBMITTED, 20, f"{qid} submitted")
        [(env, data)] = hop.delivered()
        self.assertEqual(env["rcpt_tos"], ["one@example.test"])
        self.assertTrue(data.endswith(BODY))

    def deferred(self, qid):
        return wait_for(
            lambda: (lambda m: m if m.state ==
                     types_pb2.MESSAGE_STATE_RELEASING and m.reason
                     else None)(self.admin.message(qid)),
            20, f"{qid} deferred with a reason")

    def hop(self):
        hop = NextHop(self.workdir)
        self.stack.processes.append(hop.start())
        return hop

    def test_bracketed_address_and_localhost_skip_dns(self):
        dns = self.start_dns({})
        hop = self.hop()
        self.start(f"[127.0.0.1]:{hop.port}", dns)
        self.delivered(hop, self.send())
        self.stack.broker.stop()
        self.admin.close()
        self.start(f"localhost:{hop.port}", dns)
        qid = self.send()
        wait_for(lambda: len(hop.delivered()) == 2, 20, "the second message")
        wait_for(lambda: self.admin.message(qid).state ==
                 types_pb2.MESSAGE_STATE_SUBMITTED, 20, "submitted")
        # Neither asked DNS: an IP literal needs nothing, localhost comes
        # from the hosts file and never has MX (RFC 6761).
        self.assertEqual(self.queries(), [])

    def test_mx_lookup_then_the_mx_hosts_address(self):
        dns = self.start_dns({
            "MX": {"relay.test.": [[20, "mx2.relay.test."],
                                   [10, "mx1.relay.test."]]},
            "A": {"mx1.relay.test.": ["127.0.0.1"],
                  "mx2.relay.test.": ["127.0.0.1"]}})
        hop = self.hop()
        self.start(f"relay.test:{hop.port}", dns)
        self.delivered(hop, self.send())
        queries = self.queries()
        self.assertEqual(queries[0], "MX relay.test.")
        self.assertIn("A mx1.relay.test.", queries)
        counters = self.admin.counters()
        self.assertGreaterEqual(
            counters['sinkline_broker_relay_dns_lookups_total{result="ok"}'],
            1)

    def test_dns_prefix_and_a_domain_without_mx(self):
        dns = self.start_dns({"A": {"plain.test.": ["127.0.0.1"]}})
        hop = self.hop()
        self.start(f"dns:plain.test:{hop.port}", dns)
        self.delivered(hop, self.send())
        queries = self.queries()
        self.assertEqual(queries[0], "MX plain.test.")
        self.assertIn("A plain.test.", queries)

    def test_a_name_that_does_not_exist_defers(self):
        dns = self.start_dns({})
        hop = self.hop()
        self.start(f"nosuch.test:{hop.port}", dns)
        qid = self.send()
        info = self.deferred(qid)
        self.assertIn("next hop nosuch.test: DNS address lookup", info.reason)
        self.assertEqual(hop.delivered(), [])

    def test_a_dns_server_that_never_answers_defers_at_the_deadline(self):
        dns = self.start_dns({}, silent=True)
        hop = self.hop()
        # One submit worker: the second message is tried only once the
        # first one's lookup gave up.
        self.start(f"relay.test:{hop.port}", dns,
                   "--relay-dns-timeout-ms=500", "--submit-workers=1")
        first, second = self.send(), self.send()
        for qid in (first, second):
            info = self.deferred(qid)
            self.assertIn("next hop relay.test: DNS MX lookup timed out "
                          "after 500 ms (--relay-dns-timeout-ms)",
                          info.reason)
        self.assertIn("MX relay.test.", self.queries())
        counters = self.admin.counters()
        self.assertGreaterEqual(counters[
            'sinkline_broker_relay_dns_lookups_total{result="timeout"}'], 2)
        self.assertEqual(hop.delivered(), [])


if __name__ == "__main__":
    unittest.main()
