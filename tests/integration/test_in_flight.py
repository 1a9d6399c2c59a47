"""Bounded in-flight work: with a slow sink after COMMIT, messages between
EOD and their hand-off to the queue never exceed --max-messages-in-flight.
At the limit an EOD waits for a slot (the client's reply is delayed), past
--in-flight-wait-ms it is answered 451 4.3.2, and once the sink answers the
waiting EOD gets its 250. Every 250 is queued."""

import os
import re
import smtplib
import threading

from harness import Process, StackTestCase, wait_for
from test_metrics import metrics_port, samples, scrape

HERE = os.path.dirname(os.path.abspath(__file__))
LIMIT = 3
QUEUED = re.compile(rb"queued as (\S+)")


def send(port, n):
    body = (f"Message-ID: <{n}@flight.example.test>\r\nSubject: {n}\r\n\r\n"
            "ok\r\n").encode()
    s = smtplib.SMTP("127.0.0.1", port, timeout=60)
    try:
        s.ehlo("client.example.test")
        s.mail("flight@example.test")
        s.rcpt("sink@example.test")
        code, resp = s.data(body)
    except smtplib.SMTPResponseException as e:
        code, resp = e.smtp_code, e.smtp_error
    finally:
        s.close()
    return code, resp


class InFlightTest(StackTestCase):

    def start(self, wait_ms):
        self.calls = os.path.join(self.workdir, "calls.jsonl")
        self.gate = os.path.join(self.workdir, "gate")
        env = dict(os.environ, PYTHONPATH=os.environ.get(
            "SINKLINE_PYTHON_DIR", ""))
        p = Process("slow", ["/usr/bin/python3",
                             os.path.join(HERE, "policy_sink.py"),
                             "--listen=127.0.0.1:0", "--phase=post",
                             f"--out={self.calls}", f"--gate={self.gate}",
                             "--workers=16"], self.workdir, env=env)
        self.stack.sinks["slow"] = self.stack._add(p)
        self.stack.write_config([{
            "name": "slow-archive", "sink": "slow", "event": "EOD",
            "priority": 30000, "deadline_ms": 60000,
            "failure_policy": "continue", "content_access": "read-write"}])
        self.stack.start_broker(extra=[
            f"--max-messages-in-flight={LIMIT}",
            f"--in-flight-wait-ms={wait_ms}", "--metrics-listen=127.0.0.1:0"])
        self.stack.start_edge()
        self.mport = metrics_port(self.stack.broker)
        # LIMIT messages answered 250 at once; their sink after COMMIT
        # waits at the gate, so each keeps its slot.
        self.results = {}
        for n in range(LIMIT):
            self.results[n] = send(self.stack.edge.port, n)
            self.assertEqual(self.results[n][0], 250, self.results[n])
        wait_for(lambda: self.calls_seen() == LIMIT, 20,
                 "the slow sink's calls")
        self.assertEqual(self.metric("sinkline_broker_messages_in_flight"),
                         LIMIT)

    def metric(self, name):
        return samples(scrape(self.mport)[2]).get(name, 0.0)

    def calls_seen(self):
        if not os.path.exists(self.calls):
            return 0
        with open(self.calls) as f:
            return sum(1 for _ in f)

    def open_gate_and_check_queued(self):
        with open(self.gate, "w"):
            pass
        wait_for(lambda: self.metric("sinkline_broker_messages_in_flight")
                 == 0, 30, "every message handed to the queue")
        self.assertLessEqual(
            self.metric("sinkline_broker_messages_in_flight_peak"), LIMIT)
        self.assertEqual(
            self.metric("sinkline_broker_messages_in_flight_limit"), LIMIT)
        for n, (code, resp) in self.results.items():
            qid = QUEUED.search(resp).group(1).decode()
            self.stack.queued(qid)

    def test_past_the_wait_eod_gets_451_4_3_2(self):
        self.start(wait_ms=500)
        code, resp = send(self.stack.edge.port, "refused")
        self.assertEqual(code, 451, resp)
        self.assertIn(b"4.3.2", resp)
        self.assertEqual(self.metric(
            'sinkline_broker_in_flight_waits_total{outcome="refused"}'), 1)
        self.assertEqual(self.calls_seen(), LIMIT)
        self.open_gate_and_check_queued()

    def test_at_the_limit_eod_waits_and_the_bound_holds(self):
        self.start(wait_ms=120000)
        waiting = {}

        def client(n):
            waiting[n] = send(self.stack.edge.port, n)

        extra = 4
        threads = [threading.Thread(target=client, args=(n,))
                   for n in range(LIMIT, LIMIT + extra)]
        for t in threads:
            t.start()
        try:
            # They wait: no reply, no more calls to the sink, the bound.
            wait_for(lambda: self.metric("sinkline_broker_in_flight_waiting")
                     == extra, 20, "EODs waiting for a slot")
            self.assertEqual(waiting, {})
            self.assertEqual(self.calls_seen(), LIMIT)
            self.assertEqual(self.metric(
                'sinkline_sink_calls_in_flight{binding="slow-archive"}'),
                LIMIT)
            self.assertEqual(
                self.metric("sinkline_broker_messages_in_flight"), LIMIT)
        finally:
            with open(self.gate, "w"):
                pass
            for t in threads:
                t.join(timeout=90)
        for n, (code, resp) in waiting.items():
            self.assertEqual(code, 250, (n, resp))
        self.assertEqual(len(waiting), extra)
        self.results.update(waiting)
        self.open_gate_and_check_queued()
        self.assertEqual(self.metric(
            'sinkline_broker_in_flight_waits_total{outcome="delayed"}'),
            extra)
