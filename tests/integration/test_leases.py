"""The KB836549 scenario under load: a sink bound to EOD at priority 30000
holds its lease, waits, reads the whole message and adds a header, for 1,000
messages over 20 parallel sessions. Every queued message carries the header;
no content call fails; no message was submitted while one of its leases was
active; content calls after release are refused with FAILED_PRECONDITION."""

import json
import os
import re
import smtplib
import threading
import unittest

from harness import ROOT, StackTestCase, split_received, wait_for

SESSIONS = 20
PER_SESSION = 50
QUEUED = re.compile(rb"queued as (\S+)")


class LeaseTest(StackTestCase):

    def test_kb836549_scenario_under_load(self):
        stats_path = os.path.join(self.workdir, "slow-reader.json")
        from harness import Process, PYTHON_DIR
        p = Process("slow-reader",
                    ["/usr/bin/python3",
                     os.path.join(ROOT, "tests", "integration",
                                  "slow_reader_sink.py"),
                     "--listen=127.0.0.1:0", "--delay-ms=50",
                     f"--stats={stats_path}", "--workers=8"],
                    self.workdir, env=dict(os.environ, PYTHONPATH=PYTHON_DIR))
        self.stack.processes.append(p)
        self.stack.sinks["slow-reader"] = p.start()
        self.stack.write_config([{
            "name": "slow-reader", "sink": "slow-reader", "event": "EOD",
            "priority": 30000, "content_access": "read-write",
            "deadline_ms": 20000, "failure_policy": "continue"}])
        self.stack.start_broker()
        self.stack.start_edge()

        ids, errors = [], []
        lock = threading.Lock()

        def session(i):
            try:
                with smtplib.SMTP("127.0.0.1", self.stack.edge.port,
                                  timeout=60) as s:
                    s.ehlo(f"client{i}.example.net")
                    for n in range(PER_SESSION):
                        s.mail(f"s{i}@example.net")
                        s.rcpt("bob@example.test")
                        body = (f"Subject: {i}/{n}\r\n\r\n" +
                                f"line {n}\r\n" * (n + 1)).encode()
                        code, resp = s.data(body)
                        if code != 250:
                            raise AssertionError((code, resp))
                        with lock:
                            ids.append((QUEUED.search(resp).group(1).decode(),
                                        body))
            except Exception as e:
                with lock:
                    errors.append(repr(e))

        threads = [threading.Thread(target=session, args=(i,))
                   for i in range(SESSIONS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        self.assertEqual(errors, [])
        self.assertEqual(len(ids), SESSIONS * PER_SESSION)

        wait_for(lambda: len(self.stack.queue_ids()) == len(ids), 120,
                 "every message in the queue")
        for qid, body in ids:
            _, queued = self.stack.queued(qid, timeout_s=1)
            # The header the sink wrote after reading the whole message
            # (what it read: the message as committed, exactly).
            # The broker's trace header comes first in it.
            queued, received = split_received(queued,
                                              queued.index(b"\r\n") + 2)
            header = (f"X-Sinkline-Read: {len(received) + len(body)}; "
                      f"{qid}\r\n").encode()
            self.assertEqual(queued, header + body)

        wait_for(lambda: json.load(open(stats_path))["refused_after_release"]
                 + json.load(open(stats_path))["other_after_release"]
                 >= len(ids), 30, "the sink's checks after release")
        stats = json.load(open(stats_path))
        self.assertEqual(stats["content_failures"], 0, stats["errors"][:5])
        self.assertEqual(stats["held"], len(ids))
        self.assertEqual(stats["released"], len(ids))
        self.assertEqual(stats["refused_after_release"], len(ids))
        self.assertEqual(stats["other_after_release"], 0)

        # The broker's record: every submission with no active lease.
        submitted = re.findall(r"submitted queue_id=(\S+) .* active_leases=(\d+)",
                               self.stack.broker.log())
        self.assertEqual(len(submitted), len(ids))
        self.assertTrue(all(n == "0" for _, n in submitted))
        self.assertNotIn("active leases at submission",
                         self.stack.broker.log())


if __name__ == "__main__":
    unittest.main()
