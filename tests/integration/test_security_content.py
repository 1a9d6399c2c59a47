"""The Content port as an attacker without a lease sends to it: 100
ReplaceBody streams with bogus tokens push data. The broker looks at the
token in the first message, before it buffers anything, and refuses each
stream at once (NOT_FOUND); its resident memory stays under 64 MiB above
idle. The same with 100 streams that carry a real token of another message
under an SDK sink's claim (PERMISSION_DENIED), and with a read lease's
token. The SDKs send that claim (sinkline-queue-id, sinkline-binding): the
Python SDK's ContentClient with another message's token is refused, with
its own it reads. Per-peer limits: open Content streams, bytes of writes in
flight, one ReplaceBody per lease, the largest new body; each refused with
RESOURCE_EXHAUSTED naming its flag, and counted."""

import concurrent.futures
import os
import queue
import sys
import unittest

import grpc

from harness import (AdminClient, PYTHON_DIR, ROOT, Process, StackTestCase,
                     wait_for)

from sinkline.v1 import content_pb2, sink_pb2, types_pb2  # noqa: E402

import test_content_service as content_tests  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "sinks", "python"))
import sinkline_sink  # noqa: E402


STREAMS = 100
CHUNK = b"x" * (1 << 20)  # 1 MiB per message
CHUNKS_PER_STREAM = 3


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


class BogusTokenFloodTest(StackTestCase):

    def setUp(self):
        super().setUp()
        self.stack.write_config([])
        self.stack.start_broker()
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{self.stack.broker.port}",
            options=[("grpc.max_send_message_length", 8 << 20)])
        self.addCleanup(self.channel.close)

    def test_bogus_token_flood_stays_small(self):
        pid = self.stack.broker.pid
        idle_kib = status_kib(pid, "VmRSS")
        fn = self.channel.stream_unary(
            "/sinkline.v1.Content/ReplaceBody",
            request_serializer=content_pb2.ReplaceBodyRequest.SerializeToString,
            response_deserializer=content_pb2.EditResponse.FromString)

        def requests(i):
            yield content_pb2.ReplaceBodyRequest(token=f"bogus-{i:04d}" * 4,
                                                 data=CHUNK)
            for _ in range(CHUNKS_PER_STREAM - 1):
                yield content_pb2.ReplaceBodyRequest(data=CHUNK)

        def one(i):
            try:
                fn(requests(i), timeout=60)
                return grpc.StatusCode.OK
            except grpc.RpcError as e:
                return e.code()

        with concurrent.futures.ThreadPoolExecutor(STREAMS) as pool:
            codes = list(pool.map(one, range(STREAMS)))
        peak_kib = status_kib(pid, "VmHWM")
        self.assertEqual(set(codes), {grpc.StatusCode.NOT_FOUND}, codes[:5])
        grown_mib = (peak_kib - idle_kib) / 1024
        print(f"broker idle {idle_kib // 1024} MiB, peak {peak_kib // 1024} "
              f"MiB, grown {grown_mib:.1f} MiB")
        self.assertLess(grown_mib, 64)


def flood(channel, first_request, metadata=None):
    """STREAMS ReplaceBody streams, each opening with `first_request(i)` and
    pushing CHUNKS_PER_STREAM MiB; the status codes they ended with."""
    fn = channel.stream_unary(
        "/sinkline.v1.Content/ReplaceBody",
        request_serializer=content_pb2.ReplaceBodyRequest.SerializeToString,
        response_deserializer=content_pb2.EditResponse.FromString)

    def requests(i):
        yield first_request(i)
        for _ in range(CHUNKS_PER_STREAM - 1):
            yield content_pb2.ReplaceBodyRequest(data=CHUNK)

    def one(i):
        try:
            fn(requests(i), timeout=60, metadata=metadata)
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as e:
            return e.code(), e.details()

    with concurrent.futures.ThreadPoolExecutor(STREAMS) as pool:
        return list(pool.map(one, range(STREAMS)))


class RealTokenTest(StackTestCase):
    """Real lease tokens, held by a sink after COMMIT."""

    broker_flags = []

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
        self.stack.start_broker(extra=["--received-header=false"] +
                                self.broker_flags)
        self.stack.start_edge()
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{self.stack.broker.port}",
            options=[("grpc.max_send_message_length", 8 << 20)])
        self.addCleanup(self.channel.close)

    # The same message and the same lease records as the Content tests.
    send = content_tests.ContentServiceTest.send
    leases = content_tests.ContentServiceTest.leases

    def two_messages(self):
        qa = self.send(b"Subject: A\r\n\r\nmessage a\r\n")
        qb = self.send(b"Subject: B\r\n\r\nmessage b\r\n")
        return qa, qb, self.leases(4)

    @staticmethod
    def invocation(queue_id, binding, lease):
        """The SinkRequest a sink got for (queue_id, binding), with `lease`'s
        token in it."""
        return sink_pb2.SinkRequest(
            binding=binding, event=types_pb2.Event(queue_id=queue_id),
            lease=types_pb2.Lease(token=lease["token"],
                                  content_endpoint=lease["endpoint"]))

    def limited(self, limit):
        client = AdminClient(self.stack.broker.port)
        self.addCleanup(client.close)
        return client.counters().get(
            f'sinkline_broker_peer_limited_total{{limit="{limit}"}}', 0)


class ForeignTokenTest(RealTokenTest):

    def test_python_sdk_names_its_message(self):
        qa, qb, leases = self.two_messages()
        wb = leases[(qb, "writer")]
        # A sink handling message A's invocation with B's token.
        mixed = sinkline_sink.ContentClient(
            self.channel, self.invocation(qa, "writer", wb))
        self.assertIn(("sinkline-queue-id", qa), mixed.metadata)
        self.assertIn(("sinkline-binding", "writer"), mixed.metadata)
        for call in (mixed.read, lambda: mixed.renew(1000),
                     lambda: mixed.write_range(0, b"X"),
                     lambda: mixed.replace_body(b"new body\r\n"),
                     mixed.release):
            with self.assertRaises(grpc.RpcError) as e:
                call()
            self.assertEqual(e.exception.code(),
                             grpc.StatusCode.PERMISSION_DENIED,
                             e.exception.details())
        # The same token in its own invocation reads its message.
        own = sinkline_sink.ContentClient(
            self.channel, self.invocation(qb, "writer", wb))
        self.assertEqual(own.read(), b"Subject: B\r\n\r\nmessage b\r\n")
        own.release()

    def test_foreign_and_read_token_floods_stay_small(self):
        qa, qb, leases = self.two_messages()
        wb, ra = leases[(qb, "writer")], leases[(qa, "reader")]
        pid = self.stack.broker.pid
        idle_kib = status_kib(pid, "VmRSS")
        # B's read-write token under A's claim (valid-looking, foreign).
        codes = flood(self.channel,
                      lambda i: content_pb2.ReplaceBodyRequest(
                          token=wb["token"], data=CHUNK),
                      metadata=sinkline_sink.claim_metadata(
                          self.invocation(qa, "writer", wb)))
        self.assertEqual({c for c, _ in codes},
                         {grpc.StatusCode.PERMISSION_DENIED}, codes[:3])
        # A read lease's own token, no claim: it may not write.
        codes = flood(self.channel,
                      lambda i: content_pb2.ReplaceBodyRequest(
                          token=ra["token"], data=CHUNK))
        self.assertEqual({c for c, _ in codes},
                         {grpc.StatusCode.PERMISSION_DENIED}, codes[:3])
        peak_kib = status_kib(pid, "VmHWM")
        grown_mib = (peak_kib - idle_kib) / 1024
        print(f"broker idle {idle_kib // 1024} MiB, peak {peak_kib // 1024} "
              f"MiB, grown {grown_mib:.1f} MiB")
        self.assertLess(grown_mib, 64)


class ContentLimitsTest(RealTokenTest):

    broker_flags = ["--content-streams-per-peer=3",
                    f"--content-inflight-bytes-per-peer={2 << 20}"]

    def replace_body_fn(self):
        return self.channel.stream_unary(
            "/sinkline.v1.Content/ReplaceBody",
            request_serializer=content_pb2.ReplaceBodyRequest.
            SerializeToString,
            response_deserializer=content_pb2.EditResponse.FromString)

    def open_stream(self, first=None):
        """A ReplaceBody stream kept open (nothing more sent until its
        queue gets None); returns (queue, future)."""
        q = queue.Queue()
        if first is not None:
            q.put(first)

        def gen():
            while True:
                item = q.get(timeout=30)
                if item is None:
                    return
                yield item
        future = self.replace_body_fn().future(gen(), timeout=30)
        return q, future

    def code_of(self, requests):
        try:
            self.replace_body_fn()(iter(requests), timeout=30)
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as e:
            return e.code(), e.details()

    def test_inflight_bytes_and_one_replace_body_per_lease(self):
        qa, qb, leases = self.two_messages()
        wa = leases[(qa, "writer")]
        before = self.limited("content_inflight_bytes")
        # 3 MiB of new body in flight from one peer, 2 MiB allowed.
        code, details = self.code_of(
            [content_pb2.ReplaceBodyRequest(token=wa["token"], data=CHUNK)] +
            [content_pb2.ReplaceBodyRequest(data=CHUNK)] * 2)
        self.assertEqual(code, grpc.StatusCode.RESOURCE_EXHAUSTED, details)
        self.assertIn("--content-inflight-bytes-per-peer", details)
        self.assertEqual(self.limited("content_inflight_bytes"), before + 1)
        # What it held is given back: 1 MiB goes through.
        code, details = self.code_of(
            [content_pb2.ReplaceBodyRequest(token=wa["token"], data=CHUNK)])
        self.assertEqual(code, grpc.StatusCode.OK, details)
        # While one ReplaceBody of a lease is open, a second is refused.
        q, held = self.open_stream(
            content_pb2.ReplaceBodyRequest(token=wa["token"], data=b"x"))
        # The first is in once the broker has taken its first message:
        # retried until the second one sees it.
        def second():
            c, d = self.code_of([content_pb2.ReplaceBodyRequest(
                token=wa["token"], data=b"y")])
            return (c, d) if c != grpc.StatusCode.OK else None
        code, details = wait_for(second, 15, "the second ReplaceBody refused")
        self.assertEqual(code, grpc.StatusCode.RESOURCE_EXHAUSTED, details)
        self.assertIn("already open", details)
        q.put(None)
        held.result(timeout=30)

    def test_streams_per_peer(self):
        qids = [self.send(f"Subject: {i}\r\n\r\nbody {i}\r\n".encode())
                for i in range(3)]
        leases = self.leases(6)
        before = self.limited("content_streams")
        # Three ReplaceBody streams of this peer, each open on its own
        # lease with a first chunk, hold their places ...
        held = [self.open_stream(content_pb2.ReplaceBodyRequest(
            token=leases[(q, "writer")]["token"], data=b"new body\r\n"))
            for q in qids]

        # ... and the fourth stream is refused at once (once the three are
        # in: retried until it is).
        def fourth():
            c, d = self.code_of([content_pb2.ReplaceBodyRequest(
                token="bogus-token-0000000000000000", data=b"x")])
            return (c, d) if c == grpc.StatusCode.RESOURCE_EXHAUSTED else None
        code, details = wait_for(fourth, 15, "the fourth stream refused")
        self.assertIn("--content-streams-per-peer", details)
        self.assertGreater(self.limited("content_streams"), before)
        for q, future in held:
            q.put(None)
            future.result(timeout=30)
        # Their places are given back.
        code, _ = self.code_of([content_pb2.ReplaceBodyRequest(
            token="bogus-token-0000000000000000", data=b"x")])
        self.assertEqual(code, grpc.StatusCode.NOT_FOUND)


class MessageSizeLimitTest(StackTestCase):
    """The largest gRPC message a port takes is a flag
    (--grpc-max-receive-message-bytes): a bigger one is refused with
    RESOURCE_EXHAUSTED before the service sees it; the broker goes on."""

    def call_read_range(self, token_bytes):
        channel = grpc.insecure_channel(
            f"127.0.0.1:{self.stack.broker.port}",
            options=[("grpc.max_send_message_length", 8 << 20)])
        self.addCleanup(channel.close)
        stream = channel.unary_stream(
            "/sinkline.v1.Content/ReadRange",
            request_serializer=content_pb2.ReadRangeRequest.SerializeToString,
            response_deserializer=content_pb2.ReadRangeResponse.FromString)
        req = content_pb2.ReadRangeRequest(token="t" * token_bytes)
        try:
            list(stream(req, timeout=10))
        except grpc.RpcError as e:
            return e.code(), e.details()
        return grpc.StatusCode.OK, ""

    def test_a_message_over_the_limit_is_refused_before_it_is_read(self):
        self.stack.write_config([])
        self.stack.start_broker(
            extra=["--grpc-max-receive-message-bytes=65536"])
        code, details = self.call_read_range(100 << 10)
        self.assertEqual(code, grpc.StatusCode.RESOURCE_EXHAUSTED, details)
        # Under the limit the call reaches the service, which refuses the
        # token for what it is; the broker is still there.
        code, details = self.call_read_range(1 << 10)
        self.assertEqual(code, grpc.StatusCode.NOT_FOUND, details)
        self.assertTrue(self.stack.broker.running())

    def test_the_default_is_four_mib(self):
        self.stack.write_config([])
        self.stack.start_broker()
        code, details = self.call_read_range((4 << 20) + 1024)
        self.assertEqual(code, grpc.StatusCode.RESOURCE_EXHAUSTED, details)
        code, details = self.call_read_range(2 << 20)
        self.assertEqual(code, grpc.StatusCode.NOT_FOUND, details)


if __name__ == "__main__":
    unittest.main()
