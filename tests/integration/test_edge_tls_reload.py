"""The edge's STARTTLS certificate renewed without a restart: on SIGHUP and
when its files change, new sessions get the new certificate while a session
already in TLS carries on; a certificate that does not load leaves the
current one in use, and says why in the log."""

import os
import shutil
import signal
import smtplib
import ssl
import unittest

import test_metrics as metrics
from harness import StackTestCase, make_cert, wait_for


def starttls(port):
    """A session in TLS (any certificate accepted: the test compares it)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s = smtplib.SMTP("127.0.0.1", port, timeout=30)
    s.ehlo("client.example.test")
    s.starttls(context=ctx)
    s.ehlo("client.example.test")
    return s


def presented(port):
    """The DER certificate the edge shows after STARTTLS."""
    with starttls(port) as s:
        return s.sock.getpeercert(binary_form=True)


def der(cert_path):
    with open(cert_path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


class EdgeTlsReloadTest(StackTestCase):

    def install(self, cert, key):
        """Puts a pair in place the way a Secret update does: new files
        renamed over the old ones."""
        for src, dst in ((cert, self.cert), (key, self.key)):
            shutil.copyfile(src, dst + ".new")
            os.replace(dst + ".new", dst)

    def test_certificate_renewed_on_sighup_and_on_file_change(self):
        pairs = []
        for name in ("a", "b"):
            d = os.path.join(self.workdir, name)
            os.makedirs(d)
            pairs.append(make_cert(d))
        (a_cert, a_key), (b_cert, b_key) = pairs
        live = os.path.join(self.workdir, "live")
        os.makedirs(live)
        self.cert = os.path.join(live, "cert.pem")
        self.key = os.path.join(live, "key.pem")
        self.install(a_cert, a_key)

        self.stack.start_stamp_sink()
        self.stack.write_config([])
        self.stack.start_broker()
        edge = self.stack.start_edge([f"--tls-cert={self.cert}",
                                      f"--tls-key={self.key}",
                                      "--tls-reload-interval-s=1",
                                      "--metrics-listen=127.0.0.1:0"])
        port = edge.port
        self.assertEqual(presented(port), der(a_cert))

        # A session in TLS with the first certificate stays open meanwhile.
        old = starttls(port)

        # SIGHUP: new sessions get the second certificate.
        self.install(b_cert, b_key)
        edge.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "TLS certificate reloaded" in edge.log(), 10,
                 "the reload after SIGHUP")
        self.assertEqual(presented(port), der(b_cert))

        # The session that began before the reload finishes its transaction.
        self.assertEqual(old.sendmail("a@example.test", ["b@example.test"],
                                      b"Subject: across a reload\r\n\r\nx\r\n"),
                         {})
        self.assertEqual(old.sock.getpeercert(binary_form=True), der(a_cert))
        old.quit()

        # A broken certificate: refused with its reason, the current one
        # stays in use.
        with open(self.cert + ".new", "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nnot base64\n"
                    "-----END CERTIFICATE-----\n")
        os.replace(self.cert + ".new", self.cert)
        edge.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "TLS certificate not reloaded" in edge.log(), 10,
                 "the refused reload")
        self.assertIn(f"cannot use TLS certificate {self.cert}", edge.log())
        self.assertEqual(presented(port), der(b_cert))
        self.assertTrue(edge.running())

        # No signal: the edge notices the files changed
        # (--tls-reload-interval-s=1).
        self.install(a_cert, a_key)
        wait_for(lambda: presented(port) == der(a_cert), 15,
                 "the first certificate again, from the changed files")

        # Operators see the reloads: at least two that took (SIGHUP, the
        # file change) and one refused (the broken certificate). The poller
        # may add some: it can see a new certificate before SIGHUP, or
        # beside the old key for a moment.
        _, _, text = metrics.scrape(metrics.metrics_port(edge))
        counts = metrics.samples(text)
        self.assertGreaterEqual(
            counts['sinkline_edge_tls_reloads_total{result="ok"}'], 2)
        self.assertGreaterEqual(
            counts['sinkline_edge_tls_reloads_total{result="error"}'], 1)


if __name__ == "__main__":
    unittest.main()
