"""STARTTLS, AUTH and relay control with real clients: Debian's swaks
(--tls, --auth over TLS, --pipeline) and Python's smtplib (starttls, login),
against an edge with a self-signed certificate made by openssl and a
credentials file of `openssl passwd -6` hashes."""

import os
import re
import signal
import smtplib
import ssl
import subprocess
import unittest

from harness import RawSmtp, StackTestCase, make_cert, split_received

QUEUED_RE = re.compile(r"2\.0\.0 Ok: queued as ([0-9A-Za-z]+)")
PASSWORD = "correct horse battery"


def make_auth_file(workdir):
    sha512 = subprocess.run(["openssl", "passwd", "-6", PASSWORD],
                            check=True, capture_output=True, text=True,
                            timeout=30).stdout.strip()
    path = os.path.join(workdir, "auth")
    with open(path, "w") as f:
        f.write(f"# users of the test edge\nalice:{sha512}\n")
    return path


class EdgeTlsAuthTest(StackTestCase):

    def setUp(self):
        super().setUp()
        self.cert, self.key = make_cert(self.workdir)
        self.auth_file = make_auth_file(self.workdir)

    def start(self, extra=()):
        self.stack.write_config([])
        self.stack.start_broker()
        self.stack.start_edge([f"--tls-cert={self.cert}",
                               f"--tls-key={self.key}",
                               f"--auth-file={self.auth_file}"]
                              + list(extra))

    def swaks(self, *args):
        return subprocess.run(
            ["swaks", "--server", f"127.0.0.1:{self.stack.edge.port}",
             "--from", "alice@example.net", "--timeout", "30",
             "--helo", "client.example.net"] + list(args),
            capture_output=True, text=True, timeout=60)

    def queued_from(self, output):
        m = QUEUED_RE.search(output)
        self.assertIsNotNone(m, output)
        return self.stack.queued(m.group(1))

    def tls_context(self):
        ctx = ssl.create_default_context(cafile=self.cert)
        ctx.check_hostname = False  # the certificate names mx.example.test
        return ctx

    def test_swaks_tls_message_is_marked_tls(self):
        self.start()
        r = self.swaks("--tls", "--to", "bob@example.test")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"<-  250[- ]STARTTLS\n")
        self.assertIn("220 2.0.0 Ready to start TLS", r.stdout)
        # swaks marks lines read over TLS with "<~".
        self.assertRegex(r.stdout, r"<~  250 2\.0\.0 Ok: queued as")
        entry, message = self.queued_from(r.stdout)
        tls = entry["session"]["tls"]
        self.assertTrue(tls["active"])
        self.assertRegex(tls["version"], r"^TLSv1\.[23]$")
        self.assertTrue(tls["cipher"])
        _, received = split_received(message)
        self.assertIn(b"with ESMTPS id", received)

    def test_swaks_auth_over_tls_may_relay(self):
        self.start()
        for mech in ("PLAIN", "LOGIN"):
            r = self.swaks("--tls", "--auth", mech, "--auth-user", "alice",
                           "--auth-password", PASSWORD,
                           "--to", "carol@elsewhere.example")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("~> AUTH", r.stdout)
            self.assertIn("235 2.7.0 Authentication successful", r.stdout)
            entry, _ = self.queued_from(r.stdout)
            self.assertEqual(entry["session"]["auth_identity"], "alice")
            self.assertEqual(entry["envelope"]["recipients"][0]["address"],
                             "carol@elsewhere.example")

    def test_relay_denied_without_auth_and_with_a_wrong_password(self):
        self.start()
        r = self.swaks("--tls", "--to", "carol@elsewhere.example")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("554 5.7.1 Relay access denied", r.stdout)
        r = self.swaks("--tls", "--auth", "PLAIN", "--auth-user", "alice",
                       "--auth-password", "wrong",
                       "--to", "carol@elsewhere.example")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("535 5.7.8 Authentication credentials invalid",
                      r.stdout)
        self.assertEqual(self.stack.queue_ids(), [])
        # The password never reaches the logs (events are logged by the
        # broker).
        self.assertNotIn(PASSWORD, self.stack.logs())

    def test_swaks_pipelining_over_tls(self):
        self.start()
        r = self.swaks("--tls", "--pipeline",
                       "--to", "bob@example.test,dave@example.test")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("250-PIPELINING", r.stdout)
        # MAIL, both RCPTs and DATA went in one write.
        self.assertRegex(r.stdout, r" ~> MAIL FROM:<alice@example\.net>\n"
                         r" ~> RCPT TO:<bob@example\.test>\n"
                         r" ~> RCPT TO:<dave@example\.test>\n ~> DATA\n")
        entry, _ = self.queued_from(r.stdout)
        self.assertEqual(
            [x["address"] for x in entry["envelope"]["recipients"]],
            ["bob@example.test", "dave@example.test"])

    def test_smtplib_starttls_and_login(self):
        self.start()
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.net")
            self.assertTrue(s.has_extn("starttls"))
            self.assertFalse(s.has_extn("auth"))  # not before TLS
            code, resp = s.docmd("AUTH", "PLAIN AGFsaWNlAHg=")
            self.assertEqual((code, resp[:5]), (530, b"5.7.0"))
            code, _ = s.starttls(context=self.tls_context())
            self.assertEqual(code, 220)
            s.ehlo("client.example.net")
            self.assertFalse(s.has_extn("starttls"))
            self.assertIn("LOGIN", s.esmtp_features["auth"].upper())
            # LOGIN explicitly; smtplib.login() would pick PLAIN.
            s.user, s.password = "alice", PASSWORD
            code, resp = s.auth("LOGIN", s.auth_login)
            self.assertEqual(code, 235, resp)
            s.mail("alice@example.net")
            code, resp = s.rcpt("erin@elsewhere.example")
            self.assertEqual(code, 250, resp)
            code, resp = s.data(b"Subject: smtplib over TLS\r\n\r\nhi\r\n")
            self.assertEqual(code, 250, resp)
            _, message = self.queued_from(resp.decode())
            _, received = split_received(message)
            self.assertIn(b"with ESMTPSA id", received)

    def test_plaintext_pipelined_after_starttls_is_discarded(self):
        self.start()
        c = RawSmtp(self.stack.edge.port)
        self.assertEqual(c.reply()[0], 220)
        # Injected after STARTTLS in the same packet: must not survive
        # into the TLS session.
        c.send(b"EHLO c.example\r\nSTARTTLS\r\n"
               b"MAIL FROM:<evil@elsewhere.example>\r\n")
        self.assertEqual(c.reply()[0], 250)
        self.assertEqual(c.reply()[0], 220)
        self.assertEqual(c.buf, b"")
        tls = self.tls_context().wrap_socket(c.sock,
                                             server_hostname="mx.example.test")
        c.sock = tls
        code, lines = c.cmd("EHLO c.example")
        self.assertEqual(code, 250)
        self.assertIn("250 AUTH PLAIN LOGIN", lines)
        # No transaction: the injected MAIL was dropped.
        self.assertEqual(c.cmd("RCPT TO:<bob@example.test>"),
                         (503, ["503 5.5.1 Error: need MAIL command"]))
        self.assertEqual(c.cmd("QUIT")[0], 221)
        c.close()

    def starttls(self):
        c = RawSmtp(self.stack.edge.port)
        self.assertEqual(c.reply()[0], 220)
        self.assertEqual(c.cmd("EHLO c.example")[0], 250)
        self.assertEqual(c.cmd("STARTTLS")[0], 220)
        return c

    def test_failed_handshake_closes_only_that_session(self):
        self.start()
        c = self.starttls()
        c.send(b"this is not a TLS ClientHello\r\n")
        self.assertTrue(c.closed_by_peer())
        c.close()
        r = self.swaks("--tls", "--to", "bob@example.test")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_drain_reaches_a_session_in_tls(self):
        self.start()
        c = self.starttls()
        c.sock = self.tls_context().wrap_socket(
            c.sock, server_hostname="mx.example.test")
        self.assertEqual(c.cmd("EHLO c.example")[0], 250)
        self.stack.edge.proc.send_signal(signal.SIGTERM)
        # Sent over TLS while the edge was waiting for the next command.
        self.assertEqual(c.reply(), (421, [
            "421 4.3.2 mx.example.test Service shutting down, closing "
            "transmission channel"]))
        c.close()
        self.stack.edge.proc.wait(timeout=30)
        self.assertEqual(self.stack.edge.proc.returncode, 0)

    def test_trusted_network_may_relay_without_auth(self):
        self.start(["--trusted-networks=127.0.0.0/8"])
        r = self.swaks("--to", "carol@elsewhere.example")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        entry, _ = self.queued_from(r.stdout)
        self.assertEqual(entry["session"].get("auth_identity", ""), "")

    def test_no_tls_configured_no_starttls(self):
        self.stack.write_config([])
        self.stack.start_broker()
        self.stack.start_edge([f"--auth-file={self.auth_file}"])
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.net")
            self.assertFalse(s.has_extn("starttls"))
            self.assertFalse(s.has_extn("auth"))
            self.assertEqual(s.docmd("STARTTLS")[0], 502)
            self.assertEqual(s.docmd("AUTH", "PLAIN AGFsaWNlAHg=")[0], 538)


if __name__ == "__main__":
    unittest.main()
