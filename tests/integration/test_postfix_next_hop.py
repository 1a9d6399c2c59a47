"""The broker's SMTP relay backend against a real Postfix (Debian's postfix,
a private instance on loopback) as the next hop: a message goes through at
once while Postfix runs; while Postfix is stopped, committed messages wait
(state releasing, with the reason) and are retried; once Postfix is back
they go through, byte for byte, each once, to every recipient. And, in
Postfix's own log: one connection carries many messages (RSET between
them), and MAIL, RCPT and DATA arrive in one read (PIPELINING)."""

import os
import re
import smtplib
import time
import unittest

from harness import AdminClient, StackTestCase, wait_for
from postfix import Postfix

from sinkline.v1 import types_pb2  # noqa: E402  (PYTHONPATH)

QUEUED = re.compile(rb"queued as (\S+)")


def body(n):
    return (f"Subject: through postfix {n}\r\nFrom: a@example.net\r\n"
            f"Message-ID: <{n}@sinkline.test>\r\n"
            "Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n\r\n"
            "first line\r\n.a line that starts with a dot\r\n"
            f"{'y' * 900}\r\nlast line\r\n").encode()


# Postfix's smtpd at debug_peer_level 3: each read from the client, and
# each command it then takes.
READ = re.compile(r"smtpd\[(\d+)\]: vstream_buf_get_ready: fd (\d+) got \d+")
COMMAND = re.compile(r"smtpd\[(\d+)\]: < localhost\[127\.0\.0\.1\]: (\w+)")


def command_groups(log):
    """[(smtpd pid, [commands taken after one read from the client])]."""
    groups, client_fd, last_fd = [], {}, {}
    for line in log.splitlines():
        m = READ.search(line)
        if m:
            pid, fd = m.groups()
            last_fd[pid] = fd
            if client_fd.get(pid) == fd:
                groups.append((pid, []))
            continue
        m = COMMAND.search(line)
        if m:
            pid, verb = m.groups()
            if pid not in client_fd:  # the first command: the client's fd
                client_fd[pid] = last_fd.get(pid)
                groups.append((pid, []))
            if groups and groups[-1][0] == pid:
                groups[-1][1].append(verb.upper())
    return groups


class PostfixNextHopTest(StackTestCase):

    def setUp(self, main=None, extra=()):
        super().setUp()
        self.postfix = Postfix(self.workdir, "next-hop", main=main)
        self.stack.processes.append(self.postfix.start())
        self.stack.write_config([])
        self.stack.start_broker(extra=list(extra) + [
            f"--relay-host=127.0.0.1:{self.postfix.port}",
            "--relay-helo=broker.example.test",
            "--relay-connect-timeout-ms=2000",
            "--relay-timeout-ms=10000",
            "--submit-retry-min-ms=200",
            "--submit-retry-max-ms=1000"], queue_dir=False)
        self.stack.start_edge()
        self.admin = AdminClient(self.stack.broker.port)
        self.addCleanup(lambda: self.admin.close())

    def send(self, n, rcpts):
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.net")
            s.mail("a@example.net")
            for r in rcpts:
                self.assertEqual(s.rcpt(r)[0], 250)
            code, resp = s.data(body(n))
            self.assertEqual(code, 250, resp)
            return QUEUED.search(resp).group(1).decode()

    def state(self, qid):
        return self.admin.message(qid).state

    def delivered_by_id(self):
        """Message-ID -> [(Delivered-To, raw bytes)] in Postfix's Maildir."""
        out = {}
        for headers, raw in self.postfix.delivered():
            out.setdefault(headers["Message-ID"], []).append(
                (headers["Delivered-To"], raw))
        return out

    def check_delivered(self, n, qid, rcpts):
        copies = self.delivered_by_id()[f"<{n}@sinkline.test>"]
        self.assertEqual(sorted(to for to, _ in copies), sorted(rcpts))
        for _, raw in copies:
            # Postfix's Maildir stores LF line ends; the bytes are the
            # client's, after the broker's and Postfix's trace headers.
            sent = body(n).replace(b"\r\n", b"\n")
            self.assertTrue(raw.endswith(sent), raw[-300:])
            self.assertIn(
                f"by mx.example.test (Sinkline) with ESMTP id {qid}".encode(),
                raw)
            self.assertIn(b"(Postfix) with ESMTP id", raw)

    def test_stopped_postfix_then_started(self):
        # Postfix up: straight through.
        qid = self.send(1, ["one@example.test"])
        wait_for(lambda: self.state(qid) == types_pb2.MESSAGE_STATE_SUBMITTED,
                 20, "the first message submitted")
        wait_for(lambda: "<1@sinkline.test>" in self.delivered_by_id(), 20,
                 "Postfix to deliver the first message")
        self.check_delivered(1, qid, ["one@example.test"])

        # Postfix stopped: the client still gets 250 (the message is
        # committed); the message waits with the reason and is retried.
        self.postfix.stop()
        waiting = [(n, self.send(n, rcpts), rcpts) for n, rcpts in (
            (2, ["two@example.test", "three@example.test"]),
            (3, ["four@example.test"]))]
        for _, qid, _ in waiting:
            info = wait_for(
                lambda: (lambda m: m if m.state ==
                         types_pb2.MESSAGE_STATE_RELEASING and m.reason
                         else None)(self.admin.message(qid)),
                15, f"{qid} deferred with a reason")
            self.assertIn(f"127.0.0.1:{self.postfix.port}", info.reason)
        time.sleep(2.0)  # several retries while Postfix is down
        for _, qid, _ in waiting:
            info = self.admin.message(qid)
            self.assertEqual(info.state, types_pb2.MESSAGE_STATE_RELEASING)
            self.assertGreaterEqual(
                sum(1 for h in info.history if "deferred" in h.what), 2,
                [h.what for h in info.history])
        self.assertEqual(len(self.postfix.delivered()), 1)

        # Postfix back on the same port: both go through, once each.
        self.postfix.start()
        for n, qid, rcpts in waiting:
            wait_for(lambda: self.state(qid) ==
                     types_pb2.MESSAGE_STATE_SUBMITTED, 30,
                     f"{qid} submitted")
        wait_for(lambda: len(self.postfix.delivered()) == 4, 30,
                 "Postfix to deliver every recipient")
        for n, qid, rcpts in waiting:
            self.check_delivered(n, qid, rcpts)
        wait_for(self.postfix.queue_empty, 10, "Postfix's queue empty")
        committed = os.path.join(self.stack.spool_dir, "committed")
        self.assertEqual([n for n in os.listdir(committed)
                          if n.endswith(".msg")], [])
        counters = self.admin.counters()
        self.assertEqual(
            counters['sinkline_broker_messages_total{what="submitted"}'], 3)


class PostfixConnectionReuseTest(PostfixNextHopTest):

    def setUp(self):
        super().setUp(main={"debug_peer_list": "127.0.0.1",
                            "debug_peer_level": "3"},
                      extra=["--relay-cache-idle-ms=60000"])

    test_stopped_postfix_then_started = None  # run once, by the base class

    def test_one_connection_many_messages_pipelined(self):
        for n in range(1, 6):
            qid = self.send(n, [f"r{n}@example.test"])
            wait_for(lambda: self.state(qid) ==
                     types_pb2.MESSAGE_STATE_SUBMITTED, 20, f"{qid} submitted")
        wait_for(lambda: len(self.postfix.delivered()) == 5, 30,
                 "Postfix to deliver the five")
        counters = self.admin.counters()
        self.assertEqual(
            counters['sinkline_broker_relay_connections_total{how="opened"}'],
            1)
        self.assertEqual(
            counters['sinkline_broker_relay_connections_total{how="reused"}'],
            4)
        # The broker's shutdown closes its cached connection: Postfix then
        # logs what that one session carried.
        self.stack.broker.stop()
        sessions = wait_for(lambda: [
            line for line in self.postfix.log().splitlines()
            if "disconnect from localhost[127.0.0.1]" in line and
            " mail=" in line], 15, "Postfix to log the session")
        self.assertEqual(len(sessions), 1, sessions)
        self.assertIn(" ehlo=1 mail=5 rcpt=5 data=5 rset=4 ", sessions[0])
        # Pipelined: one read brought MAIL, RCPT and DATA (with RSET
        # before them on the reused connection).
        groups = [g for _, g in command_groups(self.postfix.log())]
        batches = [g for g in groups if "MAIL" in g]
        self.assertEqual(len(batches), 5, groups)
        self.assertEqual(batches[0], ["MAIL", "RCPT", "DATA"], groups)
        for g in batches[1:]:
            self.assertEqual(g, ["RSET", "MAIL", "RCPT", "DATA"], groups)


if __name__ == "__main__":
    unittest.main()
