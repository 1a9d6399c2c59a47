"""The bindings file changes while 20 sessions send mail: no session fails,
and messages after the reload follow the new bindings."""

import os
import re
import smtplib
import threading
import time
import unittest

from harness import StackTestCase, wait_for

QUEUED = re.compile(rb"queued as (\S+)")
SESSIONS = 20
MAX_MESSAGES = 100  # per session, a bound on the load
MAX_SECONDS = 30


class ReloadTest(StackTestCase):

    def bindings(self, sink):
        return [{"name": "stamp-eod", "sink": sink, "event": "EOD",
                 "priority": 30000, "content_access": "read-write",
                 "failure_policy": "continue"}]

    def test_reload_under_load(self):
        self.stack.start_stamp_sink("old", header="X-Old")
        self.stack.start_stamp_sink("new", header="X-New")
        self.stack.write_config(self.bindings("old"))
        self.stack.start_broker()
        self.stack.start_edge()

        reloaded = threading.Event()
        stop = threading.Event()
        errors = []
        sent_before = [0] * SESSIONS
        after = [None] * SESSIONS  # queue id of a message sent after reload

        def session(i):
            try:
                with smtplib.SMTP("127.0.0.1", self.stack.edge.port,
                                  timeout=30) as s:
                    s.ehlo(f"client{i}.example.net")
                    deadline = time.monotonic() + MAX_SECONDS
                    for n in range(MAX_MESSAGES):
                        if stop.is_set() or time.monotonic() > deadline:
                            break
                        was_reloaded = reloaded.is_set()
                        s.mail(f"s{i}@example.net")
                        s.rcpt("bob@example.test")
                        code, resp = s.data(f"Subject: {i}/{n}\r\n\r\nx\r\n")
                        if code != 250:
                            errors.append((i, n, code, resp))
                            return
                        if was_reloaded:
                            after[i] = QUEUED.search(resp).group(1).decode()
                            return
                        sent_before[i] += 1
                        time.sleep(0.02)
            except Exception as e:  # a failed session fails the test
                errors.append((i, repr(e)))

        threads = [threading.Thread(target=session, args=(i,))
                   for i in range(SESSIONS)]
        for t in threads:
            t.start()
        wait_for(lambda: sum(sent_before) >= SESSIONS * 2, 20,
                 "traffic before the reload")
        self.stack.write_config(self.bindings("new"))
        wait_for(lambda: "configuration reloaded (file changed)"
                 in self.stack.broker.log(), 10, "the reload")
        reloaded.set()
        for t in threads:
            t.join(60)
        stop.set()
        self.assertFalse(any(t.is_alive() for t in threads))
        self.assertEqual(errors, [])
        self.assertTrue(all(after), after)
        for qid in after:
            _, queued = self.stack.queued(qid)
            self.assertIn(b"X-New: new; ", queued)
            self.assertNotIn(b"X-Old: ", queued)

    def test_bad_file_is_refused_whole_and_running_config_stays(self):
        self.stack.start_stamp_sink("old", header="X-Old")
        self.stack.write_config(self.bindings("old"))
        self.stack.start_broker()
        self.stack.start_edge()
        with open(self.stack.config_path, "a") as f:
            f.write("  - name: broken\n    sink: nosuch\n    event: EOD\n")
        wait_for(lambda: "configuration refused" in self.stack.broker.log(),
                 10, "the refusal")
        log = self.stack.broker.log()
        self.assertRegex(log, r"bindings\.yaml:\d+:\d+: unknown sink 'nosuch'")
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.net")
            s.mail("a@example.net")
            s.rcpt("bob@example.test")
            code, resp = s.data(b"Subject: still\r\n\r\nx\r\n")
            self.assertEqual(code, 250)
        _, queued = self.stack.queued(QUEUED.search(resp).group(1).decode())
        self.assertIn(b"X-Old: old; ", queued)


if __name__ == "__main__":
    unittest.main()
