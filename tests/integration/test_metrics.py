"""Prometheus metrics of every process (--metrics-listen=127.0.0.1:0, the
port read from the process's log): the output passes Debian's
`promtool check metrics` with nothing to say, before and after traffic, and
the counters move with the traffic sent: open SMTP sessions on the edge,
events and messages by state on the broker, sink calls per binding on the
broker and calls on the sink."""

import os
import re
import smtplib
import subprocess
import unittest
import urllib.request

from harness import RawSmtp, StackTestCase, wait_for

PROMTOOL = "/usr/bin/promtool"
SAMPLE = re.compile(
    r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)(?: \d+)?$")
MESSAGES = 3


def metrics_port(process):
    def port():
        m = re.search(r"metrics on port (\d+)", process.log())
        return int(m.group(1)) if m else None
    return wait_for(port, 10, f"{process.name}'s metrics port in its log")


def scrape(port, path="/metrics"):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}",
                                timeout=10) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read()


def samples(text):
    """{'name{labels}': value} of every sample line."""
    out = {}
    for line in text.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if m is None:
            raise AssertionError(f"not a sample line: {line!r}")
        out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


class MetricsTest(StackTestCase):

    def promtool(self, text, who):
        self.assertTrue(os.access(PROMTOOL, os.X_OK),
                        f"{PROMTOOL} missing (scripts/install-deps.sh)")
        r = subprocess.run([PROMTOOL, "check", "metrics"], input=text,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=60)
        out = r.stdout.decode(errors="replace")
        self.assertEqual((r.returncode, out), (0, ""),
                         f"promtool on {who}'s metrics:\n{out}\n"
                         f"--- metrics ---\n{text.decode()}")

    def test_promtool_speaks_up(self):
        """The check is not silent by nature: a counter without _total is
        refused."""
        r = subprocess.run([PROMTOOL, "check", "metrics"],
                           input=b"# HELP foo A counter.\n"
                                 b"# TYPE foo counter\nfoo 1\n",
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=60)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(b'should have "_total" suffix', r.stdout)

    def test_promtool_clean_and_counters_move_with_traffic(self):
        metrics = "--metrics-listen=127.0.0.1:0"
        self.stack.start_sink("stamp", "sinkline-sink-stamp",
                              ["--name=stamp", metrics])
        self.stack.write_config([{
            "name": "stamp-eod", "sink": "stamp", "event": "EOD",
            "priority": 30000, "deadline_ms": 5000,
            "failure_policy": "continue", "content_access": "read-write",
        }])
        self.stack.start_broker(extra=[metrics, "--spool-scan-interval-ms=100"])
        self.stack.start_edge(extra=[metrics])
        ports = {"edge": metrics_port(self.stack.edge),
                 "broker": metrics_port(self.stack.broker),
                 "sink": metrics_port(self.stack.sinks["stamp"])}

        for who, port in ports.items():
            status, ctype, text = scrape(port)
            self.assertEqual(status, 200)
            self.assertTrue(ctype.startswith("text/plain"), ctype)
            self.promtool(text, who)
            self.assertEqual(scrape(port, "/healthz")[2], b"ok\n")
        before = {who: samples(scrape(port)[2]) for who, port in ports.items()}

        # Sessions: one held open shows on the edge's gauge.
        held = RawSmtp(self.stack.edge.port)
        self.assertEqual(held.reply()[0], 220)
        wait_for(lambda: samples(scrape(ports["edge"])[2]).get(
            "sinkline_edge_sessions") == 1, 10, "one open session")

        for i in range(MESSAGES):
            with smtplib.SMTP("127.0.0.1", self.stack.edge.port,
                              timeout=30) as s:
                s.sendmail("a@example.com", ["b@example.test"],
                           f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode())
        wait_for(lambda: len(self.stack.queue_ids()) == MESSAGES, 30,
                 f"{MESSAGES} queued messages")
        self.assertEqual(held.cmd("QUIT")[0], 221)
        held.close()

        def after(who):
            return samples(scrape(ports[who])[2])

        wait_for(lambda: after("edge").get("sinkline_edge_sessions") == 0,
                 10, "no open session")
        wait_for(lambda: after("broker").get(
            'sinkline_broker_messages_total{what="submitted"}', 0)
            - before["broker"].get(
                'sinkline_broker_messages_total{what="submitted"}', 0)
            == MESSAGES, 10, f"{MESSAGES} submitted")

        # The edge: sessions accepted, commands by verb and reply class.
        e0, e1 = before["edge"], after("edge")
        for key, n in (("sinkline_edge_sessions_total", MESSAGES + 1),
                       ('sinkline_edge_commands_total{verb="MAIL",'
                        'reply="2xx"}', MESSAGES),
                       ('sinkline_edge_commands_total{verb="EOD",'
                        'reply="2xx"}', MESSAGES),
                       ('sinkline_edge_commands_total{verb="QUIT",'
                        'reply="2xx"}', MESSAGES + 1)):
            self.assertEqual(e1.get(key, 0) - e0.get(key, 0), n, key)

        b0, b1 = before["broker"], after("broker")

        def moved(key, snap0=b0, snap1=b1):
            return snap1.get(key, 0) - snap0.get(key, 0)

        self.assertEqual(
            moved('sinkline_broker_messages_total{what="committed"}'),
            MESSAGES, sorted(b1))
        self.assertEqual(
            moved('sinkline_broker_messages_total{what="submitted"}'),
            MESSAGES)
        self.assertEqual(
            moved('sinkline_broker_messages{state="submitted"}'), MESSAGES)
        self.assertEqual(
            moved('sinkline_broker_events_total{event="EOD"}'), MESSAGES)
        self.assertEqual(
            moved('sinkline_broker_events_total{event="MAIL"}'), MESSAGES)
        # Sink calls per binding: the histogram of the broker's calls.
        self.assertEqual(
            moved('sinkline_sink_call_seconds_count{binding="stamp-eod"}'),
            MESSAGES)
        self.assertEqual(
            moved('sinkline_broker_commit_to_submit_seconds_count'), MESSAGES)
        # The stamp sink runs after COMMIT, so each message spends some time
        # between COMMIT and submission: the sum moves, and not by whole
        # seconds (timestamps are taken to the nanosecond).
        spent = moved('sinkline_broker_commit_to_submit_seconds_sum')
        self.assertGreater(spent, 0)
        self.assertLess(spent, MESSAGES * 1.0)
        self.assertGreater(
            moved('sinkline_sink_call_seconds_sum{binding="stamp-eod"}'), 0)
        self.assertEqual(b1.get("sinkline_leases_active"), 0)
        # The spool is measured: empty again once everything is submitted.
        wait_for(lambda: after("broker").get(
            'sinkline_broker_spool_messages{dir="committed"}') == 0, 10,
            "the spool measured empty")
        self.assertIn('sinkline_broker_spool_bytes{dir="incoming"}',
                      after("broker"))
        # The sink counts the calls it served.
        s0, s1 = before["sink"], after("sink")
        calls = [k for k in s1 if k.startswith("sinkline_sink_calls_total")]
        self.assertTrue(calls, sorted(s1))
        self.assertEqual(sum(s1[k] - s0.get(k, 0) for k in calls), MESSAGES)

        for who, port in ports.items():
            self.promtool(scrape(port)[2], who)


if __name__ == "__main__":
    unittest.main()
