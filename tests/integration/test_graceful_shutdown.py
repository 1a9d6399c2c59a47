"""SIGTERM in the order Kubernetes may give it: the broker gets SIGTERM while
an SMTP session is in the middle of a transaction; the session's stream is
served until it ends (within --shutdown-grace-s), so the client's message is
committed, stamped and queued, and the broker exits 0 once the session is
over. A sink that gets SIGTERM while a call is in flight finishes it."""

import os
import signal
import smtplib
import threading
import time
import unittest

from harness import StackTestCase, wait_for


class GracefulShutdownTest(StackTestCase):

    def test_broker_sigterm_lets_the_transaction_finish(self):
        self.stack.start_stamp_sink()
        self.stack.write_config([{
            "name": "stamp-eod", "sink": "stamp", "event": "EOD",
            "priority": 30000, "content_access": "read-write",
            "failure_policy": "tempfail"}])
        self.stack.start_broker(extra=["--shutdown-grace-s=20"])
        self.stack.start_edge()
        s = smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30)
        self.addCleanup(s.close)
        s.ehlo("client.example.net")
        self.assertEqual(s.mail("a@example.net")[0], 250)
        self.assertEqual(s.rcpt("b@example.test")[0], 250)

        broker = self.stack.broker
        broker.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "shutting down (grace 20s)" in broker.log(), 5,
                 "SIGTERM seen")
        # Longer than gRPC's usual few seconds: the stream is still served.
        time.sleep(6)
        self.assertTrue(broker.running())
        # The transaction in flight goes on to the end.
        code, resp = s.data(b"Subject: during shutdown\r\n\r\nstill here\r\n")
        self.assertEqual(code, 250, resp)
        qid = resp.split()[-1].decode()
        _, queued = self.stack.queued(qid)
        self.assertTrue(queued.startswith(
            f"X-Sinkline-Stamp: stamp; {qid}\r\n".encode()))
        s.quit()
        # Once its last session is over the broker is gone, cleanly.
        self.assertEqual(broker.proc.wait(timeout=25), 0)
        self.assertEqual(os.listdir(os.path.join(self.stack.spool_dir,
                                                 "committed")), [])

    def test_sink_sigterm_finishes_the_call_in_flight(self):
        # The fault sink's hang mode: a call that takes 1.5 s.
        self.stack.start_sink("slow", "sinkline-test-fault-sink",
                              ["--mode=hang", "--hang-ms=1500"])
        self.stack.write_config([{
            "name": "slow-eod", "sink": "slow", "event": "EOD",
            "priority": 20000, "deadline_ms": 10000,
            "failure_policy": "tempfail"}])
        self.stack.start_broker()
        self.stack.start_edge()
        result = {}

        def send():
            with smtplib.SMTP("127.0.0.1", self.stack.edge.port,
                              timeout=30) as c:
                result["reply"] = c.sendmail(
                    "a@example.net", ["b@example.test"],
                    b"Subject: slow\r\n\r\nx\r\n")
        t = threading.Thread(target=send)
        t.start()
        sink = self.stack.sinks["slow"]
        wait_for(lambda: "call slow-eod" in sink.log(), 10,
                 "the call in flight")
        sink.proc.send_signal(signal.SIGTERM)
        t.join(30)
        self.assertEqual(result.get("reply"), {})  # accepted, no refusals
        self.assertEqual(sink.proc.wait(timeout=25), 0)
        wait_for(lambda: len(self.stack.queue_ids()) == 1, 10, "queued")


if __name__ == "__main__":
    unittest.main()
