"""Two brokers behind one edge: sessions land on both (gRPC round robin over
the brokers' addresses), and a sink's content calls always reach the broker
that holds the message (the lease names its content endpoint)."""

import json
import os
import re
import smtplib
import unittest

from harness import (PYTHON_DIR, ROOT, Process, StackTestCase, binary,
                     split_received, wait_for)

QUEUED = re.compile(rb"queued as (\S+)")
MESSAGES = 20


class TwoBrokersTest(StackTestCase):

    def test_sessions_spread_and_content_calls_reach_the_right_broker(self):
        stats = os.path.join(self.workdir, "reader.json")
        reader = Process("slow-reader",
                         ["/usr/bin/python3",
                          os.path.join(ROOT, "tests", "integration",
                                       "slow_reader_sink.py"),
                          "--listen=127.0.0.1:0", "--delay-ms=20",
                          f"--stats={stats}"],
                         self.workdir, env=dict(os.environ,
                                                PYTHONPATH=PYTHON_DIR))
        self.stack.processes.append(reader)
        self.stack.sinks["slow-reader"] = reader.start()
        self.stack.write_config([{
            "name": "reader", "sink": "slow-reader", "event": "EOD",
            "priority": 30000, "content_access": "read-write",
            "deadline_ms": 20000, "failure_policy": "continue"}])
        brokers = []
        for n in (1, 2):
            spool = os.path.join(self.workdir, f"spool{n}")
            os.makedirs(spool)
            p = Process(f"broker{n}",
                        [binary("sinkline-broker"), "--listen=127.0.0.1:0",
                         f"--config={self.stack.config_path}",
                         f"--spool-dir={spool}",
                         f"--queue-dir={self.stack.queue_dir}",
                         f"--broker-id=broker-{n}",
                         "--session-allow-loopback"], self.workdir)
            self.stack.processes.append(p)
            brokers.append(p.start())
        target = "ipv4:" + ",".join(f"127.0.0.1:{b.port}" for b in brokers)
        edge = Process("edge", [binary("sinkline-edge"),
                                "--listen=127.0.0.1:0", f"--broker={target}",
                                "--hostname=mx.example.test",
                                "--accepted-domains=example.test"],
                       self.workdir)
        self.stack.processes.append(edge)
        edge.start()

        sent = []
        for i in range(MESSAGES):  # a new session per message
            with smtplib.SMTP("127.0.0.1", edge.port, timeout=30) as s:
                s.ehlo("client.example.net")
                s.mail("alice@example.net")
                s.rcpt("bob@example.test")
                body = f"Subject: {i}\r\n\r\nmessage {i}\r\n".encode()
                code, resp = s.data(body)
                self.assertEqual(code, 250, resp)
                sent.append((QUEUED.search(resp).group(1).decode(), body))

        wait_for(lambda: len(self.stack.queue_ids()) == MESSAGES, 60,
                 "every message in the queue")
        by_broker = {}
        for qid, body in sent:
            entry, queued = self.stack.queued(qid, timeout_s=1)
            by_broker[entry["broker_id"]] = by_broker.get(
                entry["broker_id"], 0) + 1
            # The sink read the message through the broker that held it.
            # (The broker's trace header comes first in what it read.)
            queued, received = split_received(queued,
                                              queued.index(b"\r\n") + 2)
            self.assertEqual(
                queued, f"X-Sinkline-Read: {len(received) + len(body)}; "
                f"{qid}\r\n".encode() + body)
        self.assertEqual(set(by_broker), {"broker-1", "broker-2"}, by_broker)
        wait_for(lambda: json.load(open(stats))["released"] == MESSAGES, 30,
                 "all leases released")
        self.assertEqual(json.load(open(stats))["content_failures"], 0)


if __name__ == "__main__":
    unittest.main()
