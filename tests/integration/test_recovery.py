"""A broker killed with SIGKILL while sinks after COMMIT still hold their
leases: on restart it finds every committed message in its spool, runs again
only the sinks after COMMIT that had not finished (telling them it is a
redelivery), and submits; nothing committed is lost, nothing is done twice."""

import json
import os
import re
import smtplib
import unittest

from harness import PYTHON_DIR, ROOT, Process, StackTestCase, wait_for

QUEUED = re.compile(rb"queued as (\S+)")
MESSAGES = 5


class RecoveryTest(StackTestCase):

    def test_restart_reruns_unfinished_sinks_and_submits(self):
        stats = os.path.join(self.workdir, "reader.json")
        reader = Process("slow-reader",
                         ["/usr/bin/python3",
                          os.path.join(ROOT, "tests", "integration",
                                       "slow_reader_sink.py"),
                          "--listen=127.0.0.1:0", "--delay-ms=4000",
                          f"--stats={stats}"],
                         self.workdir, env=dict(os.environ,
                                                PYTHONPATH=PYTHON_DIR))
        self.stack.processes.append(reader)
        self.stack.sinks["slow-reader"] = reader.start()
        self.stack.start_stamp_sink()
        self.stack.write_config([
            {"name": "stamp", "sink": "stamp", "event": "EOD",
             "priority": 26000, "content_access": "read-write",
             "failure_policy": "continue"},
            {"name": "reader", "sink": "slow-reader", "event": "EOD",
             "priority": 30000, "content_access": "read-write",
             "deadline_ms": 30000, "failure_policy": "continue"}])
        self.stack.start_broker()
        self.stack.start_edge()

        sent = []
        for i in range(MESSAGES):
            with smtplib.SMTP("127.0.0.1", self.stack.edge.port,
                              timeout=30) as s:
                s.ehlo("client.example.net")
                s.mail("alice@example.net")
                s.rcpt("bob@example.test")
                body = f"Subject: {i}\r\n\r\nmessage {i}\r\n".encode()
                code, resp = s.data(body)
                self.assertEqual(code, 250, resp)
                sent.append((QUEUED.search(resp).group(1).decode(), body))
        # Every message holds a lease now; nothing may be in the queue.
        wait_for(lambda: json.load(open(stats))["held"] == MESSAGES, 10,
                 "leases held")
        self.assertEqual(self.stack.queue_ids(), [])
        port = self.stack.broker.port
        self.stack.broker.kill()

        self.stack.start_broker(listen=f"127.0.0.1:{port}")
        wait_for(lambda: len(self.stack.queue_ids()) == MESSAGES, 60,
                 "recovered messages in the queue")
        for qid, body in sent:
            _, queued = self.stack.queued(qid, timeout_s=1)
            # The stamp had finished before the crash and ran once; the
            # reader ran again after the restart and its header is there
            # once, written over the recovered content.
            self.assertEqual(queued.count(b"X-Sinkline-Stamp: "), 1, queued)
            self.assertEqual(queued.count(b"X-Sinkline-Read: "), 1, queued)
            self.assertTrue(queued.endswith(body))
        final = json.load(open(stats))
        self.assertEqual(final["redelivered"], MESSAGES)
        self.assertEqual(final["released"], MESSAGES)
        self.assertIn("recovered committed queue_id=",
                      self.stack.broker.log())

    def test_partial_commits_removed_at_start(self):
        # What a kill in the middle of COMMIT or of a write leaves behind:
        # content moved without its envelope record (never acknowledged),
        # a half-written record, a half-written new version.
        committed = os.path.join(self.stack.spool_dir, "committed")
        os.makedirs(committed, exist_ok=True)
        leftovers = ["HALFCOMMIT.msg", "HALFCOMMIT.env.tmp",
                     "HALFCOMMIT.done", "ALSOHALF.msg.edit"]
        for name in leftovers:
            with open(os.path.join(committed, name), "wb") as f:
                f.write(b"Subject: never acknowledged\r\n\r\nx\r\n")
        self.stack.start_stamp_sink()
        self.stack.write_config([])
        self.stack.start_broker()
        self.stack.start_edge()
        self.assertEqual(sorted(os.listdir(committed)), [])
        for name in leftovers:
            self.assertIn(f"removed {name} from the spool",
                          self.stack.broker.log())
        self.assertEqual(self.stack.queue_ids(), [])
        # The broker works normally afterwards.
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.sendmail("a@example.net", ["b@example.test"],
                       b"Subject: after\r\n\r\nfine\r\n")
        wait_for(lambda: len(self.stack.queue_ids()) == 1, 10, "queued")


if __name__ == "__main__":
    unittest.main()
