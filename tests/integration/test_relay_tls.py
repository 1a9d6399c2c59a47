"""STARTTLS from the broker's relay backend to the next hop (--relay-tls).

Against a private Postfix with a certificate made here: `verify` with the
right CA file and name delivers over TLS (Postfix logs the TLS session and
writes it in its Received header; the broker counts it verified), `verify`
with a wrong name defers and delivers nothing, default `may` takes TLS when
offered. Against the aiosmtpd next hop: `encrypt` to a server without
STARTTLS defers; `may` with a handshake that fails defers, never goes on
in plaintext.
"""

import os
import re
import smtplib
import unittest

from harness import AdminClient, StackTestCase, make_cert, wait_for
from postfix import Postfix
from test_relay import NextHop

from sinkline.v1 import types_pb2  # noqa: E402  (PYTHONPATH)

QUEUED = re.compile(rb"queued as (\S+)")
BODY = (b"Subject: relay over TLS\r\nFrom: a@example.net\r\n"
        b"Message-ID: <tls@sinkline.test>\r\n\r\nover TLS\r\n")
TLS_COUNTER = 'sinkline_broker_relay_tls_total{{outcome="{}"}}'


class RelayTlsTest(StackTestCase):

    def start_broker(self, relay_host, *flags):
        self.stack.write_config([])
        self.stack.start_broker(extra=[
            f"--relay-host={relay_host}",
            "--relay-helo=broker.example.test",
            "--relay-connect-timeout-ms=2000",
            "--relay-timeout-ms=10000",
            "--submit-retry-min-ms=200",
            "--submit-retry-max-ms=1000"] + list(flags), queue_dir=False)
        self.stack.start_edge()
        self.admin = AdminClient(self.stack.broker.port)
        self.addCleanup(lambda: self.admin.close())

    def start_postfix(self):
        self.cert, key = make_cert(self.workdir)
        os.chmod(key, 0o600)
        self.postfix = Postfix(self.workdir, "next-hop", main={
            "smtpd_tls_cert_file": self.cert,
            "smtpd_tls_key_file": key,
            "smtpd_tls_security_level": "may",
            "smtpd_tls_loglevel": "1",
            "smtpd_tls_received_header": "yes",
        })
        self.stack.processes.append(self.postfix.start())

    def send(self, rcpt="one@example.test"):
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.net")
            s.mail("a@example.net")
            self.assertEqual(s.rcpt(rcpt)[0], 250)
            code, resp = s.data(BODY)
            self.assertEqual(code, 250, resp)
            return QUEUED.search(resp).group(1).decode()

    def deferred(self, qid):
        return wait_for(
            lambda: (lambda m: m if m.state ==
                     types_pb2.MESSAGE_STATE_RELEASING and m.reason
                     else None)(self.admin.message(qid)),
            20, f"{qid} deferred with a reason")

    def test_verify_delivers_over_verified_tls(self):
        self.start_postfix()
        self.start_broker(f"[127.0.0.1]:{self.postfix.port}",
                          "--relay-tls=verify",
                          f"--relay-tls-ca-file={self.cert}",
                          "--relay-tls-server-name=mx.example.test")
        qid = self.send()
        wait_for(lambda: self.admin.message(qid).state ==
                 types_pb2.MESSAGE_STATE_SUBMITTED, 20, "submitted")
        wait_for(lambda: self.postfix.delivered(), 20, "Postfix delivers")
        [(_, raw)] = self.postfix.delivered()
        # Postfix's smtpd: the session was TLS, the client anonymous.
        self.assertIn("Anonymous TLS connection established from",
                      self.postfix.log())
        self.assertRegex(raw, rb"\(using TLSv1\.[23] with cipher ")
        self.assertIn(b"over TLS", raw)
        counters = self.admin.counters()
        self.assertGreaterEqual(counters[TLS_COUNTER.format("verified")], 1)
        self.assertNotIn(TLS_COUNTER.format("plaintext"), counters)
        self.assertIn("verified", self.stack.broker.log())

    def test_verify_with_a_wrong_name_defers(self):
        self.start_postfix()
        self.start_broker(f"[127.0.0.1]:{self.postfix.port}",
                          "--relay-tls=verify",
                          f"--relay-tls-ca-file={self.cert}",
                          "--relay-tls-server-name=other.example.test")
        qid = self.send()
        info = self.deferred(qid)
        self.assertIn("certificate not verified for other.example.test",
                      info.reason)
        self.assertIn("hostname mismatch", info.reason)
        wait_for(lambda: self.admin.counters().get(
            TLS_COUNTER.format("failed"), 0) >= 2, 20, "a retry, failed")
        self.assertEqual(self.admin.message(qid).state,
                         types_pb2.MESSAGE_STATE_RELEASING)
        self.assertEqual(self.postfix.delivered(), [])
        self.assertNotIn(TLS_COUNTER.format("verified"),
                         self.admin.counters())

    def test_may_uses_tls_when_offered(self):
        self.start_postfix()
        self.start_broker(f"127.0.0.1:{self.postfix.port}")  # default: may
        qid = self.send()
        wait_for(lambda: self.admin.message(qid).state ==
                 types_pb2.MESSAGE_STATE_SUBMITTED, 20, "submitted")
        wait_for(lambda: self.postfix.delivered(), 20, "Postfix delivers")
        [(_, raw)] = self.postfix.delivered()
        self.assertRegex(raw, rb"\(using TLSv1\.[23] with cipher ")
        counters = self.admin.counters()
        self.assertGreaterEqual(counters[TLS_COUNTER.format("encrypted")], 1)

    def test_encrypt_without_starttls_defers(self):
        hop = NextHop(self.workdir)  # no STARTTLS offered
        self.stack.processes.append(hop.start())
        self.start_broker(f"[127.0.0.1]:{hop.port}", "--relay-tls=encrypt")
        qid = self.send()
        info = self.deferred(qid)
        self.assertIn("does not offer STARTTLS, which --relay-tls=encrypt "
                      "requires", info.reason)
        wait_for(lambda: self.admin.counters().get(
            TLS_COUNTER.format("required"), 0) >= 2, 20, "a retry, refused")
        self.assertEqual(hop.delivered(), [])

    def test_may_with_a_failed_handshake_defers_not_plaintext(self):
        cert, key = make_cert(self.workdir)
        hop = NextHop(self.workdir, extra=[
            f"--tls-cert={cert}", f"--tls-key={key}", "--tls-broken"])
        self.stack.processes.append(hop.start())
        self.start_broker(f"[127.0.0.1]:{hop.port}", "--relay-tls=may")
        qid = self.send()
        info = self.deferred(qid)
        self.assertIn("TLS handshake", info.reason)
        wait_for(lambda: self.admin.counters().get(
            TLS_COUNTER.format("failed"), 0) >= 2, 20, "a retry, failed")
        self.assertEqual(hop.delivered(), [])
        self.assertNotIn(TLS_COUNTER.format("plaintext"),
                         self.admin.counters())


if __name__ == "__main__":
    unittest.main()
