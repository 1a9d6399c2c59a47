"""Slow start of the relay's concurrency towards its next hop (Postfix's
initial_destination_concurrency): against a next hop that takes 300 ms to
answer each message, the broker starts with 2 messages in flight, grows by
one per delivery up to its limit of 4, and never has more in flight than
its window; the window's gauge shows it. When the next hop goes away, each
failed connection lowers the window by one."""

import re
import smtplib
import unittest

from harness import AdminClient, StackTestCase, wait_for
from test_relay import NextHop

QUEUED = re.compile(rb"queued as (\S+)")
MESSAGES = 16


class RelaySlowStartTest(StackTestCase):

    def test_window_grows_from_initial_to_limit_and_backs_off(self):
        hop = NextHop(self.workdir)
        hop.set_rules({"data_delay_ms": 300})
        self.stack.processes.append(hop.start())
        self.stack.write_config([])
        self.stack.start_broker(extra=[
            f"--relay-host=[127.0.0.1]:{hop.port}",
            "--relay-helo=broker.example.test",
            "--relay-connect-timeout-ms=2000",
            "--relay-timeout-ms=10000",
            "--relay-initial-destination-concurrency=2",
            "--relay-destination-concurrency=4",
            "--submit-retry-min-ms=200",
            "--submit-retry-max-ms=400"], queue_dir=False)
        self.stack.start_edge()
        admin = AdminClient(self.stack.broker.port)
        self.addCleanup(admin.close)
        gauge = ('sinkline_broker_relay_concurrency_window'
                 f'{{destination="[127.0.0.1]:{hop.port}"}}')
        self.assertEqual(admin.counters()[gauge], 2)

        # The edge takes them far faster than the next hop answers: a
        # backlog for the relay.
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.test")
            for n in range(MESSAGES):
                s.mail("sender@example.test")
                self.assertEqual(s.rcpt(f"r{n}@example.test")[0], 250)
                code, resp = s.data(
                    f"Subject: slow start {n}\r\n\r\nbody {n}\r\n".encode())
                self.assertEqual(code, 250, resp)
        wait_for(lambda: len(hop.delivered()) == MESSAGES, 60,
                 "every message delivered")
        envs = [env for env, _ in hop.delivered()]
        # Before the first delivery completed: at most the initial window.
        first = [e["active_at_mail"] for e in envs
                 if e["completed_before"] == 0]
        self.assertTrue(first, envs)
        self.assertLessEqual(max(first), 2, envs)
        # Never above the limit, and it got past the initial window.
        most = max(e["active_at_mail"] for e in envs)
        self.assertLessEqual(most, 4, envs)
        self.assertGreater(most, 2, envs)
        self.assertEqual(admin.counters()[gauge], 4)

        # The next hop goes away: each failed connection takes one off.
        hop.process.stop()
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.test")
            s.mail("sender@example.test")
            self.assertEqual(s.rcpt("late@example.test")[0], 250)
            code, resp = s.data(b"Subject: late\r\n\r\nlate\r\n")
            self.assertEqual(code, 250, resp)
        wait_for(lambda: admin.counters()[gauge] == 1, 30,
                 "the window down to 1 after failed connections")


if __name__ == "__main__":
    unittest.main()
