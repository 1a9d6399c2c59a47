"""Descriptors (issue 13): a broker with a low RLIMIT_NOFILE (120) and a
slow sink after COMMIT that holds each message's lease while it reads must
never run out of descriptors (once that stored truncated mail and made
leases fail). The broker holds at most --max-message-descriptors for
messages (by default the soft RLIMIT_NOFILE less a reserve: 56 here); at
the limit a new transaction is answered 451 4.3.2 before anything of it is
stored. Every 250 is queued intact and read by the sink, every refusal is a
clear 451 4.3.2, and the broker's gauges show the bound."""

import concurrent.futures
import json
import os
import re
import resource
import smtplib
import unittest

from harness import Process, StackTestCase, wait_for
from test_metrics import metrics_port, samples, scrape

HERE = os.path.dirname(os.path.abspath(__file__))
NOFILE = 120
SESSIONS = 15
PER_SESSION = 10
QUEUED = re.compile(rb"queued as (\S+)")


def low_nofile():
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def body(tag):
    return (f"Message-ID: <{tag}@fd.example.test>\r\nSubject: {tag}\r\n\r\n"
            + "".join(f"{tag} line {i:04d} " + "y" * 50 + "\r\n"
                      for i in range(300))).encode()


def session(port, s):
    out = []
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as c:
        c.ehlo("client.example.test")
        for m in range(PER_SESSION):
            tag = f"s{s}m{m}"
            c.mail("fd@example.test")
            c.rcpt("sink@example.test")
            try:
                code, resp = c.data(body(tag))
            except smtplib.SMTPResponseException as e:
                code, resp = e.smtp_code, e.smtp_error
                c.rset()
            out.append((tag, code, resp))
    return out


class DescriptorLimitTest(StackTestCase):

    def test_slow_reader_with_a_low_rlimit(self):
        stats = os.path.join(self.workdir, "reader.json")
        p = Process("reader", ["/usr/bin/python3",
                               os.path.join(HERE, "slow_reader_sink.py"),
                               "--listen=127.0.0.1:0", "--delay-ms=1500",
                               f"--stats={stats}"], self.workdir,
                    env=dict(os.environ, PYTHONPATH=os.environ.get(
                        "SINKLINE_PYTHON_DIR", "")))
        self.stack.sinks["reader"] = self.stack._add(p)
        self.stack.write_config([{
            "name": "slow-reader", "sink": "reader", "event": "EOD",
            "priority": 30000, "deadline_ms": 60000,
            "failure_policy": "continue", "content_access": "read-write"}])
        broker = self.stack.start_broker(
            extra=["--metrics-listen=127.0.0.1:0", "--received-header=false"],
            preexec_fn=low_nofile)
        self.stack.start_edge()
        mport = metrics_port(broker)

        def metric(name):
            return samples(scrape(mport)[2]).get(name, 0.0)

        self.assertEqual(metric("sinkline_broker_message_descriptors_limit"),
                         NOFILE - 64)
        with concurrent.futures.ThreadPoolExecutor(SESSIONS) as pool:
            results = [r for f in [pool.submit(session, self.stack.edge.port,
                                               s) for s in range(SESSIONS)]
                       for r in f.result()]
        acked = [(t, resp) for t, code, resp in results if code == 250]
        refused = [(t, code, resp) for t, code, resp in results
                   if code != 250]
        for t, code, resp in refused:
            self.assertEqual(code, 451, (t, resp))
            self.assertIn(b"4.3.2", resp, (t, resp))
        self.assertGreater(len(acked), 0)
        # The limit was reached (the test shows something), and held: past
        # it only leases of messages already taken in (one per session at
        # most).
        self.assertGreater(len(refused), 0, "the limit was never reached")
        peak = metric("sinkline_broker_message_descriptors_peak")
        self.assertLessEqual(peak, NOFILE - 64 + SESSIONS)
        self.assertEqual(
            metric("sinkline_broker_descriptor_refusals_total"), len(refused))

        def read_stats():
            with open(stats) as f:
                s = json.load(f)
            return s if s["released"] + s["content_failures"] >= len(
                acked) else None
        s = wait_for(read_stats, 120, "the slow reader's releases")
        self.assertEqual(s["content_failures"], 0, s["errors"][:5])
        self.assertEqual(s["released"], len(acked))
        for tag, resp in acked:
            qid = QUEUED.search(resp).group(1).decode()
            _, data = self.stack.queued(qid, timeout_s=60)
            # Intact, and read whole by the sink.
            self.assertTrue(data.endswith(body(tag)), tag)
            self.assertIn(f"X-Sinkline-Read: {len(body(tag))}; {qid}"
                          .encode(), data)
        wait_for(lambda: metric("sinkline_broker_message_descriptors") == 0,
                 30, "every message descriptor given back")


if __name__ == "__main__":
    unittest.main()
