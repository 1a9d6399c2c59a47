"""The broker killed with SIGKILL at random moments while sessions send
mail and a sink after COMMIT edits every message: every message a client
got 250 for is queued exactly once; no client ever gets 250 for a message
that is not queued. Messages queued although their client saw no 250 (the
broker committed, then died before the reply left) are counted and each is
shown to be such a case: RFC 5321 §6.1 allows a duplicate, never a loss."""

import os
import random
import re
import smtplib
import threading
import time
import unittest
from collections import Counter

from harness import StackTestCase, wait_for

QUEUED = re.compile(rb"queued as (\S+)")
SESSIONS = 4
KILLS = 8
TIME_LIMIT_S = 90
ACKED_PER_ROUND = 40
MESSAGE_ID = re.compile(rb"Message-ID: <([^>]+)>")


class CrashTest(StackTestCase):

    def test_sigkill_loses_nothing_acknowledged(self):
        self.stack.start_stamp_sink()
        self.stack.write_config([{
            "name": "stamp-eod", "sink": "stamp", "event": "EOD",
            "priority": 30000, "deadline_ms": 5000,
            "failure_policy": "continue", "content_access": "read-write"}])
        self.stack.start_broker()
        port = self.stack.broker.port
        self.stack.start_edge(["--broker-connect-timeout-ms=5000"])

        acked = {}        # message id -> queue id
        not_acked = {}  # message id -> reply code (0: cut) when not 250
        replies = []  # (time, reply code) of every attempt
        lock = threading.Lock()
        stop = threading.Event()
        rng = random.Random(5321)

        def client(n):
            i = 0
            while not stop.is_set():
                i += 1
                mid = f"{n}.{i}@crash.example.test"
                # 10 to 5,000 bytes of body in lines of 76.
                text = "x" * rng.randint(10, 5000)
                lines = [text[j:j + 76] for j in range(0, len(text), 76)]
                body = (f"Message-ID: <{mid}>\r\nSubject: crash {n} {i}\r\n"
                        "\r\n" + "\r\n".join(lines) + "\r\n").encode()
                s = None
                try:
                    s = smtplib.SMTP("127.0.0.1", self.stack.edge.port,
                                     timeout=20)
                    s.ehlo("client.example.test")
                    code, resp = s.mail("load@example.test")
                    if code == 250:
                        code, resp = s.rcpt("sink@example.test")
                    if code == 250:
                        code, resp = s.data(body)
                except smtplib.SMTPResponseException as e:
                    code, resp = e.smtp_code, e.smtp_error
                except (smtplib.SMTPException, OSError):
                    code, resp = 0, b""  # the connection was cut
                finally:
                    if s is not None:
                        s.close()  # no QUIT: its failure must not hide a 250
                with lock:
                    replies.append((time.monotonic(), code))
                    if code == 250:
                        acked[mid] = QUEUED.search(resp).group(1).decode()
                    else:
                        not_acked[mid] = code
                if code != 250:
                    time.sleep(0.05)

        threads = [threading.Thread(target=client, args=(n,))
                   for n in range(SESSIONS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + TIME_LIMIT_S

        def round_of_traffic(what):
            base, since = len(acked), time.monotonic()
            try:
                wait_for(lambda: len(acked) >= base + ACKED_PER_ROUND,
                         max(1.0, deadline - time.monotonic()), what)
            except AssertionError as e:
                with lock:
                    codes = Counter(c for t, c in replies if t >= since)
                raise AssertionError(
                    f"{e}: {len(acked) - base} of {ACKED_PER_ROUND}; replies "
                    f"since (0: cut): {dict(codes)}") from None

        try:
            for _ in range(KILLS):
                # Traffic between kills: some messages acknowledged by this
                # broker, then a random moment.
                round_of_traffic("messages acknowledged between kills")
                time.sleep(rng.uniform(0.0, 1.5))
                self.stack.broker.kill()
                time.sleep(rng.uniform(0.0, 0.5))
                self.stack.start_broker(listen=f"127.0.0.1:{port}")
                self.assertLess(time.monotonic(), deadline)
            round_of_traffic("messages acknowledged after the last restart")
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        self.assertGreaterEqual(len(acked), (KILLS + 1) * ACKED_PER_ROUND)
        # A broker that is down or restarting gets a temporary answer (or a
        # cut connection), never a permanent one.
        permanent = {m: c for m, c in not_acked.items() if c >= 500}
        self.assertEqual(permanent, {})

        # Everything committed reaches the queue once the broker is idle.
        committed = os.path.join(self.stack.spool_dir, "committed")
        wait_for(lambda: not [n for n in os.listdir(committed)
                              if n.endswith(".msg")], 60,
                 "the spool to drain into the queue")
        self.assertEqual(os.listdir(os.path.join(self.stack.spool_dir,
                                                 "incoming")), [])
        queued = {}
        for qid in self.stack.queue_ids():
            _, data = self.stack.queued(qid, timeout_s=1)
            mid = MESSAGE_ID.search(data).group(1).decode()
            queued.setdefault(mid, []).append((qid, data))

        for mid, qid in acked.items():
            self.assertTrue(mid in queued, f"acknowledged {mid} ({qid}) lost")
            self.assertEqual([q for q, _ in queued[mid]], [qid],
                             f"{mid} queued more than once or under another "
                             "queue id")
        extras = [mid for mid in queued if mid not in acked]
        for mid in extras:
            self.assertTrue(mid in not_acked, f"{mid} queued, never sent")
            self.assertEqual(len(queued[mid]), 1)
        # The sink after COMMIT ran for every queued message; a kill between
        # its edit and the record that it finished may run it again.
        stamps = [data.count(b"X-Sinkline-Stamp: ")
                  for entries in queued.values() for _, data in entries]
        self.assertTrue(all(1 <= n <= 2 for n in stamps), stamps)
        print(f"\nacknowledged {len(acked)}, refused or cut "
              f"{len(not_acked)}, queued without a 250 {len(extras)}, "
              f"stamped twice {sum(1 for n in stamps if n == 2)}")


if __name__ == "__main__":
    unittest.main()
