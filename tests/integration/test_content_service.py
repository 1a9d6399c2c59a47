"""The broker's Content service with real lease tokens held by a sink
after COMMIT: WriteRange (overwrite, append, truncate) becomes visible in
the queued message when the lease ends; a token used for another message or
binding is refused with PERMISSION_DENIED, a write under a read lease too;
a write past the end fails with OUT_OF_RANGE and leaves no partial write;
unknown tokens get NOT_FOUND, released ones FAILED_PRECONDITION, expired
ones FAILED_PRECONDITION "lease expired" (their staged writes dropped);
ReadHeaders shows the header block of the lease's own version, folding
kept."""

import json
import os
import re
import signal
import smtplib
import unittest

import grpc

from harness import PYTHON_DIR, ROOT, Process, StackTestCase, wait_for

from sinkline.v1 import content_pb2, types_pb2  # noqa: E402

QUEUED = re.compile(rb"queued as (\S+)")


class ContentServiceTest(StackTestCase):

    def setUp(self):
        super().setUp()
        self.out = os.path.join(self.workdir, "tokens.jsonl")
        keeper = Process("keeper",
                         ["/usr/bin/python3",
                          os.path.join(ROOT, "tests", "integration",
                                       "token_keeper_sink.py"),
                          "--listen=127.0.0.1:0", f"--out={self.out}"],
                         self.workdir, env=dict(os.environ,
                                                PYTHONPATH=PYTHON_DIR))
        self.stack.processes.append(keeper)
        self.stack.sinks["keeper"] = keeper.start()
        self.stack.write_config([
            {"name": "writer", "sink": "keeper", "event": "EOD",
             "priority": 30000, "content_access": "read-write",
             "deadline_ms": 30000, "failure_policy": "continue"},
            {"name": "reader", "sink": "keeper", "event": "EOD",
             "priority": 31000, "content_access": "read",
             "deadline_ms": 30000, "failure_policy": "continue"}])
        self.stack.start_broker(extra=["--received-header=false"])
        self.stack.start_edge()
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{self.stack.broker.port}")
        self.addCleanup(self.channel.close)

    def send(self, body):
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.test")
            s.mail("a@example.test")
            s.rcpt("b@example.test")
            code, resp = s.data(body)
            self.assertEqual(code, 250, resp)
            return QUEUED.search(resp).group(1).decode()

    def leases(self, count):
        def read():
            if not os.path.exists(self.out):
                return None
            with open(self.out) as f:
                lines = [json.loads(line) for line in f if line.strip()]
            return lines if len(lines) >= count else None
        found = wait_for(read, 15, f"{count} leases")
        return {(x["queue_id"], x["binding"]): x for x in found}

    def call(self, method, request, response_type, metadata=None):
        fn = self.channel.unary_unary(
            f"/sinkline.v1.Content/{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString)
        return fn(request, timeout=10, metadata=metadata)

    def write(self, token, offset, data, truncate=False, metadata=None):
        return self.call("WriteRange", content_pb2.WriteRangeRequest(
            token=token, offset=offset, data=data, truncate=truncate),
            content_pb2.EditResponse, metadata)

    def release(self, token, metadata=None):
        return self.call("Release", content_pb2.ReleaseRequest(token=token),
                         content_pb2.ReleaseResponse, metadata)

    def code_of(self, fn, *args, **kwargs):
        with self.assertRaises(grpc.RpcError) as ctx:
            fn(*args, **kwargs)
        return ctx.exception.code(), ctx.exception.details()

    def read_all(self, token):
        stream = self.channel.unary_stream(
            "/sinkline.v1.Content/ReadRange",
            request_serializer=content_pb2.ReadRangeRequest.SerializeToString,
            response_deserializer=content_pb2.ReadRangeResponse.FromString)
        return b"".join(p.data for p in stream(
            content_pb2.ReadRangeRequest(token=token), timeout=10))

    def test_write_range_and_foreign_tokens(self):
        body_a = b"Subject: A\r\n\r\nhello world\r\nsecond line\r\n"
        body_b = b"Subject: B\r\n\r\nanother message\r\n"
        qa = self.send(body_a)
        qb = self.send(body_b)
        leases = self.leases(4)  # writer and reader for each
        wa, ra = leases[(qa, "writer")], leases[(qa, "reader")]
        wb, rb = leases[(qb, "writer")], leases[(qb, "reader")]
        self.assertEqual(self.read_all(wa["token"]), body_a)

        # Foreign tokens: the metadata names another message or binding.
        code, details = self.code_of(
            self.write, wa["token"], 0, b"x",
            metadata=(("sinkline-queue-id", qb),))
        self.assertEqual(code, grpc.StatusCode.PERMISSION_DENIED, details)
        self.assertIn(qb, details)
        code, details = self.code_of(
            self.release, wb["token"],
            metadata=(("sinkline-binding", "reader"),))
        self.assertEqual(code, grpc.StatusCode.PERMISSION_DENIED, details)
        # A write under a read lease.
        code, details = self.code_of(self.write, ra["token"], 0, b"x")
        self.assertEqual(code, grpc.StatusCode.PERMISSION_DENIED, details)
        # Unknown token.
        code, _ = self.code_of(self.write, "0" * 64, 0, b"x")
        self.assertEqual(code, grpc.StatusCode.NOT_FOUND)

        # Message A: overwrite "world" with "WORLD", append a line; with the
        # right claims in the metadata.
        claim = (("sinkline-queue-id", qa), ("sinkline-binding", "writer"))
        at = body_a.index(b"world")
        self.write(wa["token"], at, b"WORLD", metadata=claim)
        self.write(wa["token"], len(body_a), b"appended\r\n", metadata=claim)
        # The reader's snapshot does not see staged writes.
        self.assertEqual(self.read_all(ra["token"]), body_a)
        self.release(wa["token"], metadata=claim)
        self.release(ra["token"])
        _, queued = self.stack.queued(qa)
        self.assertEqual(queued, body_a.replace(b"world", b"WORLD")
                         + b"appended\r\n")

        # Message B: a write past the end fails at release with OUT_OF_RANGE
        # and nothing of the lease's writes is published.
        self.write(wb["token"], 0, b"Subject: C", metadata=None)
        self.write(wb["token"], 10_000, b"far away")
        code, details = self.code_of(self.release, wb["token"])
        self.assertEqual(code, grpc.StatusCode.OUT_OF_RANGE, details)
        self.release(rb["token"])
        _, queued = self.stack.queued(qb)
        self.assertEqual(queued, body_b)

        # After release: FAILED_PRECONDITION.
        code, details = self.code_of(self.write, wa["token"], 0, b"x")
        self.assertEqual(code, grpc.StatusCode.FAILED_PRECONDITION)
        self.assertIn("released", details)

    def test_expired_lease(self):
        # A binding whose lease (its deadline) runs out while the sink holds
        # it without renewing; the message goes on ("release" policy).
        self.stack.write_config([
            {"name": "writer", "sink": "keeper", "event": "EOD",
             "priority": 30000, "content_access": "read-write",
             "deadline_ms": 2000, "failure_policy": "continue",
             "expiry_policy": "release"}])
        self.stack.broker.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in self.stack.broker.log(),
                 10, "the broker's reload")
        body = b"Subject: E\r\n\r\nexpires\r\n"
        qid = self.send(body)
        token = self.leases(1)[(qid, "writer")]["token"]
        self.write(token, 0, b"Subject: X")  # staged, never published
        _, queued = self.stack.queued(qid, timeout_s=20)
        self.assertEqual(queued, body)
        code, details = self.code_of(self.write, token, 0, b"x")
        self.assertEqual(code, grpc.StatusCode.FAILED_PRECONDITION, details)
        self.assertIn("lease expired", details)
        code, details = self.code_of(self.read_all, token)
        self.assertEqual(code, grpc.StatusCode.FAILED_PRECONDITION, details)
        self.assertIn("lease expired", details)

    def read_headers(self, token):
        return self.call("ReadHeaders",
                         content_pb2.ReadHeadersRequest(token=token),
                         content_pb2.ReadHeadersResponse)

    def test_read_headers_per_version(self):
        body = (b"Subject: headers\r\nX-Folded: first\r\n\tsecond\r\n"
                b"To: b@example.test\r\n\r\nbody\r\n")
        qid = self.send(body)
        leases = self.leases(2)
        w, r = leases[(qid, "writer")], leases[(qid, "reader")]
        before = self.read_headers(w["token"])
        self.assertEqual([(f.name, f.value) for f in before.fields],
                         [("Subject", "headers"),
                          ("X-Folded", "first\r\n\tsecond"),
                          ("To", "b@example.test")])
        self.assertEqual(before.body_offset, body.index(b"body"))
        # The writer adds a field at the top and ends its lease: the
        # reader's snapshot (taken before) keeps the old header block.
        self.call("AddHeader", content_pb2.AddHeaderRequest(
            token=w["token"], header=types_pb2.AddHeader(
                name="X-Added", value="yes",
                position=types_pb2.HeaderPosition(index=0))),
            content_pb2.EditResponse)
        self.release(w["token"])
        self.assertEqual(self.read_headers(r["token"]), before)
        self.release(r["token"])
        _, queued = self.stack.queued(qid)
        self.assertEqual(queued, b"X-Added: yes\r\n" + body)

    def test_truncate(self):
        body = b"Subject: T\r\n\r\nkeep this\r\ndrop this\r\n"
        qid = self.send(body)
        leases = self.leases(2)
        w, r = leases[(qid, "writer")], leases[(qid, "reader")]
        cut = body.index(b"drop")
        self.write(w["token"], cut, b"", truncate=True)
        self.release(w["token"])
        self.release(r["token"])
        _, queued = self.stack.queued(qid)
        self.assertEqual(queued, body[:cut])


if __name__ == "__main__":
    unittest.main()
