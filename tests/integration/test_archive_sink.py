"""The archive sink after COMMIT (priority 30000, read access): it holds its
lease, copies each message through the Content service into the archive
directory with its envelope as JSON, and releases the lease; only then is
the message queued. The archived copy equals the queued one byte for byte.
When the copy cannot be written, the lease is left to expire and the
binding's `hold` expiry policy keeps the message for an operator: it is not
queued without its copy."""

import json
import os
import re
import shutil
import smtplib
import unittest

from harness import AdminClient, StackTestCase, wait_for

QUEUED = re.compile(rb"queued as (\S+)")


class ArchiveSinkTest(StackTestCase):

    def start(self, deadline_ms=10000, extra=()):
        self.archive_dir = os.path.join(self.workdir, "archive")
        os.makedirs(self.archive_dir)
        self.stack.start_sink("archive", "sinkline-sink-archive", [
            f"--archive-dir={self.archive_dir}"] + list(extra))
        self.stack.write_config([
            {"name": "archive-eod", "sink": "archive", "event": "EOD",
             "priority": 30000, "content_access": "read",
             "deadline_ms": deadline_ms, "expiry_policy": "hold",
             "failure_policy": "continue"},
        ])
        self.stack.start_broker()
        self.stack.start_edge()

    def archived(self, qid):
        with open(os.path.join(self.archive_dir, qid + ".eml"), "rb") as f:
            message = f.read()
        with open(os.path.join(self.archive_dir, qid + ".json")) as f:
            entry = json.load(f)
        return entry, message

    def test_archived_copy_is_the_queued_one(self):
        self.start()
        bodies = [
            b"Subject: plain\r\n\r\nhello\r\n",
            # dot lines, 8-bit octets, a long line, trailing blank lines
            (b"Subject: =?utf-8?q?caf=C3=A9?=\r\nX-Folded: a\r\n\tb\r\n\r\n"
             b".leading dot\r\n..two\r\n\xc3\xa9t\xc3\xa9 \xff\xfe\r\n"
             + b"x" * 998 + b"\r\n\r\n\r\n"),
            # bigger than any inline limit: read in several chunks
            b"Subject: big\r\n\r\n" + (b"0123456789abcdef" * 4 + b"\r\n") * 5000,
        ]
        ids = []
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.net")
            for i, body in enumerate(bodies):
                self.assertEqual(s.mail("alice@example.net")[0], 250)
                self.assertEqual(s.rcpt("bob@example.test")[0], 250)
                self.assertEqual(s.rcpt(f"r{i}@example.test")[0], 250)
                code, resp = s.data(body)
                self.assertEqual(code, 250, resp)
                ids.append(QUEUED.search(resp).group(1).decode())
        for i, qid in enumerate(ids):
            queued_entry, queued = self.stack.queued(qid, timeout_s=30)
            # The message is queued only after the archive released its
            # lease, so the copy is complete by now.
            entry, archived = self.archived(qid)
            self.assertEqual(archived, queued, qid)
            self.assertEqual(entry["queue_id"], qid)
            self.assertEqual(entry["envelope"]["mail_from"],
                             "alice@example.net")
            self.assertEqual(
                [r["address"] for r in entry["envelope"]["recipients"]],
                ["bob@example.test", f"r{i}@example.test"])
            self.assertEqual(entry["envelope"], queued_entry["envelope"])
            self.assertEqual(int(entry["size"]), len(archived))
            self.assertEqual(entry["session"]["helo_name"],
                             "client.example.net")
        self.assertEqual(sorted(os.listdir(self.archive_dir)),
                         sorted([q + ".eml" for q in ids]
                                + [q + ".json" for q in ids]))

    def test_message_without_its_copy_is_held_not_queued(self):
        # Short leases, no renewal: a copy that fails lets the lease expire.
        self.start(deadline_ms=1500, extra=["--renew=0s", "--attempts=2"])
        shutil.rmtree(self.archive_dir)  # every write fails from now on
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            # The client has its 250 at COMMIT, before the archive runs.
            self.assertEqual(s.sendmail("alice@example.net",
                                        ["bob@example.test"],
                                        b"Subject: lost?\r\n\r\nhi\r\n"), {})
        admin = AdminClient(self.stack.broker.port)
        try:
            from sinkline.v1 import types_pb2
            held = wait_for(
                lambda: admin.messages(types_pb2.MESSAGE_STATE_HELD), 20,
                "the message held after its lease expired")
            self.assertEqual(len(held), 1)
            self.assertEqual(self.stack.queue_ids(), [])
            self.assertIn("not archived",
                          self.stack.sinks["archive"].log())
            # The operator fixes the directory and lets it go on.
            admin.release(held[0].queue_id)
            self.stack.queued(held[0].queue_id)
        finally:
            admin.close()


if __name__ == "__main__":
    unittest.main()
