"""A broker killed with SIGKILL while sinks after COMMIT still hold their
leases: on restart it finds every committed message in its spool, runs again
only the sinks after COMMIT that had not finished (telling them it is a
redelivery), and submits; nothing committed is lost, nothing is done twice."""

import json
import os
import re
import smtplib
import socket
import threading
import time
import unittest

from harness import (PYTHON_DIR, ROOT, Process, StackTestCase, binary,
                     wait_for)

QUEUED = re.compile(rb"queued as (\S+)")
MESSAGES = 5
LEFT_IN_SPOOL = 5000
SESSIONS = 20
SENDS_PER_SESSION = 3


def read_stats(path):
    with open(path) as f:
        return json.load(f)


class RecoveryTest(StackTestCase):

    def test_restart_reruns_unfinished_sinks_and_submits(self):
        stats = os.path.join(self.workdir, "reader.json")
        reader = Process("slow-reader",
                         ["/usr/bin/python3",
                          os.path.join(ROOT, "tests", "integration",
                                       "slow_reader_sink.py"),
                          "--listen=127.0.0.1:0", "--delay-ms=4000",
                          f"--stats={stats}"],
                         self.workdir, env=dict(os.environ,
                                                PYTHONPATH=PYTHON_DIR))
        self.stack.processes.append(reader)
        self.stack.sinks["slow-reader"] = reader.start()
        self.stack.start_stamp_sink()
        self.stack.write_config([
            {"name": "stamp", "sink": "stamp", "event": "EOD",
             "priority": 26000, "content_access": "read-write",
             "failure_policy": "continue"},
            {"name": "reader", "sink": "slow-reader", "event": "EOD",
             "priority": 30000, "content_access": "read-write",
             "deadline_ms": 30000, "failure_policy": "continue"}])
        self.stack.start_broker()
        self.stack.start_edge()

        sent = []
        for i in range(MESSAGES):
            with smtplib.SMTP("127.0.0.1", self.stack.edge.port,
                              timeout=30) as s:
                s.ehlo("client.example.net")
                s.mail("alice@example.net")
                s.rcpt("bob@example.test")
                body = f"Subject: {i}\r\n\r\nmessage {i}\r\n".encode()
                code, resp = s.data(body)
                self.assertEqual(code, 250, resp)
                sent.append((QUEUED.search(resp).group(1).decode(), body))
        # Every message holds a lease now; nothing may be in the queue.
        wait_for(lambda: read_stats(stats)["held"] == MESSAGES, 10,
                 "leases held")
        self.assertEqual(self.stack.queue_ids(), [])
        port = self.stack.broker.port
        self.stack.broker.kill()

        self.stack.start_broker(listen=f"127.0.0.1:{port}")
        wait_for(lambda: len(self.stack.queue_ids()) == MESSAGES, 60,
                 "recovered messages in the queue")
        for qid, body in sent:
            _, queued = self.stack.queued(qid, timeout_s=1)
            # The stamp had finished before the crash and ran once; the
            # reader ran again after the restart and its header is there
            # once, written over the recovered content.
            self.assertEqual(queued.count(b"X-Sinkline-Stamp: "), 1, queued)
            self.assertEqual(queued.count(b"X-Sinkline-Read: "), 1, queued)
            self.assertTrue(queued.endswith(body))
        # The reader saves its counts only after its check that a read
        # after the release is refused, a moment after the message moved on.
        wait_for(lambda: read_stats(stats)["released"] == MESSAGES, 10,
                 "leases released")
        final = read_stats(stats)
        self.assertEqual(final["redelivered"], MESSAGES)
        self.assertEqual(final["released"], MESSAGES)
        self.assertIn("recovered committed queue_id=",
                      self.stack.broker.log())

    def test_recovers_a_large_spool_before_serving(self):
        # What a previous run left: many committed messages, laid out as
        # COMMIT writes them (content, then the binary QueueEntry record).
        from sinkline.v1 import types_pb2
        committed = os.path.join(self.stack.spool_dir, "committed")
        os.makedirs(committed, exist_ok=True)
        left = {}
        for i in range(LEFT_IN_SPOOL):
            qid = f"0REC{i:012d}"
            body = f"Subject: left {i}\r\n\r\nleft over {i}\r\n".encode()
            entry = types_pb2.QueueEntry(queue_id=qid, transaction_id="T1",
                                         broker_id="broker-1", size=len(body))
            entry.envelope.mail_from = "alice@example.net"
            entry.envelope.recipients.add().address = "bob@example.test"
            with open(os.path.join(committed, qid + ".msg"), "wb") as f:
                f.write(body)
            with open(os.path.join(committed, qid + ".env"), "wb") as f:
                f.write(entry.SerializeToString())
            left[qid] = body
        self.stack.write_config([])

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        broker = Process("broker", [
            binary("sinkline-broker"),
            f"--listen=127.0.0.1:{port}",
            f"--config={self.stack.config_path}",
            f"--spool-dir={self.stack.spool_dir}",
            f"--queue-dir={self.stack.queue_dir}",
            "--session-allow-loopback"], self.workdir)
        self.stack.processes.append(broker)
        self.stack.broker = broker
        starting = threading.Thread(target=broker.start)
        starting.start()

        # Health, watched from the start: it may say SERVING only once the
        # broker logged that its spool was recovered.
        import grpc
        from health_pb2 import HealthCheckRequest, HealthCheckResponse
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=HealthCheckRequest.SerializeToString,
            response_deserializer=HealthCheckResponse.FromString)
        seen = {"not_serving": 0, "serving_early": None}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                status = check(HealthCheckRequest(service=""),
                               timeout=1).status
            except grpc.RpcError:
                status = None
            if status == HealthCheckResponse.SERVING:
                if "spool recovered in" not in broker.log():
                    seen["serving_early"] = broker.log()[-2000:]
                break
            seen["not_serving"] += 1
            time.sleep(0.005)
        channel.close()
        self.assertIsNone(seen["serving_early"],
                          "health SERVING before the spool was recovered")
        self.assertGreater(seen["not_serving"], 0)
        starting.join()
        self.assertRegex(broker.log(),
                         rf"spool recovered in \d+ ms: {LEFT_IN_SPOOL} "
                         "committed messages resumed")

        # New sessions send while the recovered messages are submitted.
        self.stack.start_edge()
        sent, errors = {}, []

        def sender(n):
            for i in range(SENDS_PER_SESSION):
                body = f"Subject: new {n}.{i}\r\n\r\nnew {n}.{i}\r\n"
                try:
                    with smtplib.SMTP("127.0.0.1", self.stack.edge.port,
                                      timeout=30) as s:
                        s.ehlo("client.example.net")
                        s.mail("alice@example.net")
                        s.rcpt("bob@example.test")
                        code, resp = s.data(body.encode())
                    if code != 250:
                        errors.append((code, resp))
                        continue
                    sent[QUEUED.search(resp).group(1).decode()] = body.encode()
                except (smtplib.SMTPException, OSError) as e:
                    errors.append(e)

        threads = [threading.Thread(target=sender, args=(n,))
                   for n in range(SESSIONS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        self.assertEqual(len(sent), SESSIONS * SENDS_PER_SESSION)
        wait_for(lambda: len(self.stack.queue_ids()) == len(left) + len(sent),
                 180, "every message in the queue")
        for qid, body in list(left.items())[::97] + list(sent.items()):
            _, queued = self.stack.queued(qid, timeout_s=1)
            self.assertTrue(queued.endswith(body), (qid, queued))
        self.assertEqual(set(self.stack.queue_ids()),
                         set(left) | set(sent))
        # Each left-over message recovered once, no new one taken for one.
        log = broker.log()
        recovered = re.findall(r"recovered committed queue_id=(\w+)", log)
        self.assertEqual(len(recovered), len(left))
        self.assertEqual(set(recovered), set(left))
        self.assertNotIn("No such file", log)
        self.assertEqual(os.listdir(committed), [])


    def test_partial_commits_removed_at_start(self):
        # What a kill in the middle of COMMIT or of a write leaves behind:
        # content moved without its envelope record (never acknowledged),
        # a half-written record, a half-written new version.
        committed = os.path.join(self.stack.spool_dir, "committed")
        os.makedirs(committed, exist_ok=True)
        leftovers = ["HALFCOMMIT.msg", "HALFCOMMIT.env.tmp",
                     "HALFCOMMIT.done", "ALSOHALF.msg.edit"]
        for name in leftovers:
            with open(os.path.join(committed, name), "wb") as f:
                f.write(b"Subject: never acknowledged\r\n\r\nx\r\n")
        self.stack.start_stamp_sink()
        self.stack.write_config([])
        self.stack.start_broker()
        self.stack.start_edge()
        self.assertEqual(sorted(os.listdir(committed)), [])
        for name in leftovers:
            self.assertIn(f"removed {name} from the spool",
                          self.stack.broker.log())
        self.assertEqual(self.stack.queue_ids(), [])
        # The broker works normally afterwards.
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.sendmail("a@example.net", ["b@example.test"],
                       b"Subject: after\r\n\r\nfine\r\n")
        wait_for(lambda: len(self.stack.queue_ids()) == 1, 10, "queued")


if __name__ == "__main__":
    unittest.main()
