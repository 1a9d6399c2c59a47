"""The three failure policies, each against a sink that hangs past its
deadline, one that is killed mid-call, and one that returns an invalid
verdict: continue gives the native reply, tempfail 451 4.3.0, reject
554 5.7.0; every failure is logged with the binding and the sink."""

import smtplib
import threading
import time
import unittest

from harness import StackTestCase, wait_for

POLICIES = {"continue": (250, b"2.1.0 Ok"),
            "tempfail": (451, None),
            "reject": (554, None)}
ENHANCED = {"tempfail": b"4.3.0 ", "reject": b"5.7.0 "}


class FailurePolicyTest(StackTestCase):

    def setUp(self):
        super().setUp()
        self.stack.start_sink("hang", "sinkline-test-fault-sink",
                              ["--mode=hang", "--hang-ms=3000"])
        self.stack.start_sink("invalid", "sinkline-test-fault-sink",
                              ["--mode=invalid"])
        for policy in POLICIES:
            self.stack.start_sink(f"killed-{policy}",
                                  "sinkline-test-fault-sink",
                                  ["--mode=hang", "--hang-ms=60000"])
        bindings = []
        for fault in ("hang", "invalid", "killed"):
            for policy in POLICIES:
                sink = f"killed-{policy}" if fault == "killed" else fault
                bindings.append({
                    "name": f"{fault}-{policy}", "sink": sink,
                    "event": "MAIL", "priority": 100,
                    "rule": f"mail from={fault}-{policy}@*",
                    "deadline_ms": 500 if fault == "hang" else 20000,
                    "failure_policy": policy})
        self.stack.write_config(bindings)
        self.stack.start_broker()
        self.stack.start_edge()

    def mail(self, sender):
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=60) as s:
            s.ehlo("client.example.net")
            return s.mail(sender)

    def check(self, fault, policy, reply):
        code, text = reply
        want_code, want_text = POLICIES[policy]
        self.assertEqual(code, want_code, (fault, policy, text))
        if want_text is not None:
            self.assertEqual(text, want_text)
        else:
            self.assertTrue(text.startswith(ENHANCED[policy]), text)
        self.assertIn(f"sink failure: binding={fault}-{policy} sink=",
                      self.stack.broker.log())

    def test_sink_that_hangs_past_its_deadline(self):
        for policy in POLICIES:
            started = time.monotonic()
            self.check("hang", policy, self.mail(f"hang-{policy}@example.net"))
            # The deadline, not the sink, decided.
            self.assertLess(time.monotonic() - started, 2.5)

    def test_sink_that_returns_an_invalid_verdict(self):
        for policy in POLICIES:
            self.check("invalid", policy,
                       self.mail(f"invalid-{policy}@example.net"))
        self.assertIn("invalid verdict", self.stack.broker.log())

    def test_sink_killed_mid_call(self):
        for policy in POLICIES:
            sink = self.stack.sinks[f"killed-{policy}"]
            result = {}
            t = threading.Thread(target=lambda: result.setdefault(
                "reply", self.mail(f"killed-{policy}@example.net")))
            t.start()
            wait_for(lambda: f"call killed-{policy}" in sink.log(), 10,
                     "the call to reach the sink")
            sink.kill()
            t.join(30)
            self.assertFalse(t.is_alive())
            self.check("killed", policy, result["reply"])


if __name__ == "__main__":
    unittest.main()
