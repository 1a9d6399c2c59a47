"""The spool's disk full: the broker's spool on a small tmpfs the test
mounts. Filled up, an EOD is answered 452 4.3.1 (RFC 3463: insufficient
system storage; counted in sinkline_broker_spool_full_total), never 250 for
a message that is not stored; with the space back, 250 again, and every 250
is queued. Before it is full: with less than --spool-min-free-bytes free,
MAIL is answered 452 4.3.1 before the client sends a body (Postfix's
queue_minfree; counted in sinkline_broker_spool_low_refusals_total), and
MAIL is taken again once the space is back."""

import errno
import os
import re
import shutil
import smtplib
import subprocess
import tempfile
import unittest

from harness import Stack, StackTestCase, wait_for
from test_metrics import metrics_port, samples, scrape

QUEUED = re.compile(rb"queued as (\S+)")


def send(port, n, size):
    body = (f"Message-ID: <{n}@full.example.test>\r\nSubject: {n}\r\n\r\n"
            + ("x" * 70 + "\r\n") * (size // 72)).encode()
    s = smtplib.SMTP("127.0.0.1", port, timeout=30)
    try:
        s.ehlo("client.example.test")
        s.mail("full@example.test")
        s.rcpt("sink@example.test")
        code, resp = s.data(body)
    except smtplib.SMTPResponseException as e:
        code, resp = e.smtp_code, e.smtp_error
    finally:
        s.close()
    return code, resp


class DiskFullTest(StackTestCase):

    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="sinkline-test-")
        self.mount = os.path.join(self.workdir, "spool")
        os.makedirs(self.mount)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m",
                            "sinkline-test-spool", self.mount],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0,
                         f"mount tmpfs (the tests run as root): {r.stderr}")
        self.stack = Stack(self.workdir)

    def tearDown(self):
        try:
            super().tearDown()
        finally:
            subprocess.run(["umount", self.mount], check=False)
            shutil.rmtree(self.workdir, ignore_errors=True)

    def fill(self, path):
        """Writes `path` until the disk is full."""
        with open(path, "wb", buffering=0) as f:
            try:
                for _ in range(4096):
                    f.write(b"\0" * 4096)
            except OSError as e:
                self.assertEqual(e.errno, errno.ENOSPC)
                return
        self.fail("the tmpfs never filled")

    def send_and_drain(self, edge):
        """One message acknowledged, submitted and out of the spool before
        the test fills it (its removal would make room); its 250."""
        code, resp = send(edge, "before", 20000)
        self.assertEqual(code, 250, resp)
        self.stack.queued(QUEUED.search(resp).group(1).decode())
        wait_for(lambda: os.listdir(os.path.join(self.mount, "committed"))
                 == [], 10, "committed/ empty")
        return resp

    def test_full_spool_answers_452_then_recovers(self):
        self.stack.write_config([])
        # No minimum free space: what a full disk does at EOD.
        self.stack.start_broker(extra=["--metrics-listen=127.0.0.1:0",
                                       "--spool-min-free-bytes=0"])
        self.stack.start_edge()
        mport = metrics_port(self.stack.broker)
        edge = self.stack.edge.port
        acked = [self.send_and_drain(edge)]

        filler = os.path.join(self.mount, "filler")
        self.fill(filler)
        for n in range(3):
            code, resp = send(edge, f"full-{n}", 20000)
            self.assertEqual(code, 452, resp)
            self.assertIn(b"4.3.1", resp)
        metrics = samples(scrape(mport)[2])
        self.assertEqual(metrics.get("sinkline_broker_spool_full_total"), 3)

        os.unlink(filler)
        for n in range(3):
            code, resp = send(edge, f"after-{n}", 20000)
            self.assertEqual(code, 250, resp)
            acked.append(resp)
        for resp in acked:
            qid = QUEUED.search(resp).group(1).decode()
            _, data = self.stack.queued(qid)
            self.assertGreater(len(data), 20000 - 200)
        # Nothing refused was kept in the spool.
        wait_for(lambda: os.listdir(os.path.join(self.mount, "incoming"))
                 == [], 10, "incoming/ empty")


    def test_low_space_refuses_mail_before_the_body(self):
        self.stack.write_config([])
        self.stack.start_broker(extra=["--metrics-listen=127.0.0.1:0",
                                       f"--spool-min-free-bytes={1 << 20}",
                                       "--spool-free-check-ms=100"])
        self.stack.start_edge()
        mport = metrics_port(self.stack.broker)
        edge = self.stack.edge.port
        acked = [self.send_and_drain(edge)]

        # Less than the minimum free, but room enough for a message.
        filler = os.path.join(self.mount, "filler")
        self.fill(filler)
        os.truncate(filler, os.path.getsize(filler) - (600 << 10))
        wait_for(lambda: mail_reply(edge)[0] == 452, 10,
                 "MAIL answered 452 with the space low")
        for n in range(3):
            code, resp = mail_reply(edge)
            self.assertEqual(code, 452, resp)
            self.assertIn(b"4.3.1", resp)
        # A client that sends on anyway never gets to DATA.
        code, resp = send(edge, "low", 20000)
        self.assertGreaterEqual(code, 500, resp)
        metrics = samples(scrape(mport)[2])
        self.assertGreaterEqual(metrics.get(
            'sinkline_broker_spool_low_refusals_total{at="mail"}', 0), 5)
        self.assertEqual(metrics.get("sinkline_broker_spool_low"), 1)
        self.assertEqual(os.listdir(os.path.join(self.mount, "incoming")),
                         [])

        os.unlink(filler)
        wait_for(lambda: mail_reply(edge)[0] == 250, 10,
                 "MAIL answered 250 with the space back")
        for n in range(3):
            code, resp = send(edge, f"after-{n}", 20000)
            self.assertEqual(code, 250, resp)
            acked.append(resp)
        for resp in acked:
            qid = QUEUED.search(resp).group(1).decode()
            _, data = self.stack.queued(qid)
            self.assertGreater(len(data), 20000 - 200)
        self.assertEqual(
            samples(scrape(mport)[2]).get("sinkline_broker_spool_low"), 0)


def mail_reply(port):
    """The reply to MAIL FROM in a fresh session."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("client.example.test")
        return s.mail("low@example.test")


if __name__ == "__main__":
    unittest.main()
