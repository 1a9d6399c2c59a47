"""dkim-sign before COMMIT (priority 20000, read-write) and archive after it
(priority 30000, read, holding its lease) together, under 20 parallel SMTP
sessions sending 100 messages: every queued message carries RSA and Ed25519
signatures that verify with Debian's python3-dkim, and every one has an
archived copy equal to the queued one byte for byte."""

import os
import re
import smtplib
import threading
import unittest

from dkim_keys import DkimKeys, verify_all
from harness import StackTestCase

SESSIONS = 20
PER_SESSION = 5
QUEUED = re.compile(rb"queued as (\S+)")


class DkimAndArchiveTest(StackTestCase):

    def test_signed_and_archived_under_parallel_sessions(self):
        keys = DkimKeys(self.workdir, [
            ("example.test", "rsa2026", "rsa-sha256"),
            ("example.test", "ed2026", "ed25519-sha256"),
        ])
        archive_dir = os.path.join(self.workdir, "archive")
        os.makedirs(archive_dir)
        self.stack.start_sink("dkim", "sinkline-sink-dkim-sign", [
            f"--keys={keys.keys_file}"])
        self.stack.start_sink("archive", "sinkline-sink-archive", [
            f"--archive-dir={archive_dir}"])
        self.stack.write_config([
            {"name": "dkim-eod", "sink": "dkim", "event": "EOD",
             "priority": 20000, "content_access": "read-write",
             "deadline_ms": 20000, "failure_policy": "tempfail"},
            {"name": "archive-eod", "sink": "archive", "event": "EOD",
             "priority": 30000, "content_access": "read",
             "deadline_ms": 30000, "expiry_policy": "hold",
             "failure_policy": "continue"},
        ])
        self.stack.start_broker()
        self.stack.start_edge(
            ["--accepted-domains=example.test,example.net"])

        sent, errors = [], []
        lock = threading.Lock()

        def session(i):
            try:
                with smtplib.SMTP("127.0.0.1", self.stack.edge.port,
                                  timeout=60) as s:
                    s.ehlo(f"client{i}.example.net")
                    for n in range(PER_SESSION):
                        s.mail(f"s{i}@example.test", ["BODY=8BITMIME"])
                        s.rcpt("bob@example.net")
                        body = (f"From: Sender {i} <s{i}@example.test>\r\n"
                                f"To: bob@example.net\r\n"
                                f"Subject: message {n} of\r\n"
                                f" session {i}\r\n"
                                f"Message-ID: <{i}.{n}@example.test>\r\n"
                                f"\r\n").encode() + (
                            "caf\u00e9 \u2603 line\r\n" * (n * 300 + 1)
                        ).encode() + b"\r\n\r\n"
                        code, resp = s.data(body)
                        if code != 250:
                            raise AssertionError((code, resp))
                        with lock:
                            sent.append((QUEUED.search(resp).group(1)
                                         .decode(), body))
            except Exception as e:  # noqa: BLE001 - reported below
                with lock:
                    errors.append(f"session {i}: {e!r}")

        threads = [threading.Thread(target=session, args=(i,))
                   for i in range(SESSIONS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=240)
        self.assertFalse(any(t.is_alive() for t in threads), "sessions hung")
        self.assertEqual(errors, [])
        self.assertEqual(len(sent), SESSIONS * PER_SESSION)
        self.assertEqual(len({qid for qid, _ in sent}), len(sent))

        for qid, body in sent:
            _, queued = self.stack.queued(qid, timeout_s=60)
            self.assertTrue(queued.endswith(body), qid)
            sigs = verify_all(queued, keys)
            self.assertEqual(sorted(t["a"] for t in sigs),
                             ["ed25519-sha256", "rsa-sha256"], qid)
            with open(os.path.join(archive_dir, qid + ".eml"), "rb") as f:
                self.assertEqual(f.read(), queued, qid)
            self.assertTrue(
                os.path.exists(os.path.join(archive_dir, qid + ".json")))
        self.assertEqual(len(self.stack.queue_ids()), len(sent))


if __name__ == "__main__":
    unittest.main()
