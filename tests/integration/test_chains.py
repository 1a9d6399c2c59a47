"""Chains with real sink processes: five sinks at mixed priorities on EOD
append a trace header each and the queued message shows the exact order;
CONSUME stops the chain and skips the native handler (no COMMIT); a 2xx
CONSUME at EOD before COMMIT is an invalid verdict."""

import smtplib
import unittest

from harness import RawSmtp, StackTestCase


class ChainOrderTest(StackTestCase):

    def test_five_sinks_run_in_priority_then_name_order(self):
        # (binding/sink name, priority); ties go by binding name.
        plan = [("trace-e", 30000), ("trace-a", 100), ("trace-d", 24575),
                ("trace-c", 8191), ("trace-b", 8191)]
        for name, _ in plan:
            self.stack.start_sink(name, "sinkline-sink-stamp",
                                  [f"--name={name}", "--header=X-Trace",
                                   "--append"])
        self.stack.write_config([
            {"name": name, "sink": name, "event": "EOD", "priority": prio,
             "content_access": "read-write", "failure_policy": "tempfail"}
            for name, prio in plan])
        self.stack.start_broker()
        self.stack.start_edge()
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.net")
            s.mail("alice@example.net")
            s.rcpt("bob@example.test")
            code, resp = s.data(b"Subject: order\r\n\r\nbody\r\n")
            self.assertEqual(code, 250, resp)
            qid = resp.decode().rsplit(" ", 1)[1]
        _, queued = self.stack.queued(qid)
        traces = [line.split(b";")[0].decode()
                  for line in queued.split(b"\r\n")
                  if line.startswith(b"X-Trace: ")]
        self.assertEqual(traces, ["X-Trace: trace-a", "X-Trace: trace-b",
                                  "X-Trace: trace-c", "X-Trace: trace-d",
                                  "X-Trace: trace-e"])
        # Before COMMIT the sinks saw the transaction id, after it the queue
        # id: only trace-e ran after COMMIT.
        self.assertIn(f"X-Trace: trace-e; {qid}\r\n".encode(), queued)
        self.assertNotIn(f"X-Trace: trace-d; {qid}\r\n".encode(), queued)

    def test_consume_stops_the_chain_and_skips_commit(self):
        self.stack.start_sink("taker", "sinkline-test-fault-sink",
                              ["--mode=consume"])
        self.stack.start_sink("after", "sinkline-test-fault-sink",
                              ["--mode=ok"])
        self.stack.write_config([
            {"name": "taker", "sink": "taker", "event": "EOD",
             "priority": 100},
            {"name": "after", "sink": "after", "event": "EOD",
             "priority": 200, "content_access": "read-write"},
        ])
        self.stack.start_broker()
        self.stack.start_edge()
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.net")
            s.mail("alice@example.net")
            s.rcpt("bob@example.test")
            code, resp = s.data(b"Subject: taken\r\n\r\nbody\r\n")
        # A 2xx CONSUME at EOD before COMMIT would acknowledge a message that
        # is never committed: an invalid verdict, failed under the binding's
        # policy (tempfail by default), and logged.
        self.assertEqual((code, resp),
                         (451, b"4.3.0 Temporary failure in message "
                          b"processing, try again later"))
        self.assertEqual(self.stack.queue_ids(), [])
        self.assertIn("invalid verdict: CONSUME with a 2xx reply at EOD",
                      self.stack.broker.log())
        # The fault sink logs every call it gets: "after" got none.
        self.assertNotIn("call after", self.stack.sinks["after"].log())
        self.assertIn("call taker", self.stack.sinks["taker"].log())

    def test_sink_refuses_the_session_at_connect(self):
        self.stack.start_sink("gate", "sinkline-test-fault-sink",
                              ["--mode=refuse"])
        self.stack.write_config([
            {"name": "gate", "sink": "gate", "event": "CONNECT",
             "rule": "client=127.0.0.1", "priority": 100}])
        self.stack.start_broker()
        self.stack.start_edge()
        conn = RawSmtp(self.stack.edge.port)
        self.assertEqual(conn.reply(),
                         (554, ["554 5.7.1 Refused by the fault sink"]))
        self.assertTrue(conn.closed_by_peer())
        conn.close()


if __name__ == "__main__":
    unittest.main()
