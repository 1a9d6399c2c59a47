"""What one lease may stage (issue 15): a sink holding a read-write lease
stages header edits, range writes, body replacements and envelope edits
through the Content service; without a bound it could make the broker keep
any number of them, of any size. Past --lease-max-staged-edits (1000 by
default) or --lease-max-staged-bytes a staging call is refused with
RESOURCE_EXHAUSTED naming the flag, nothing of it is staged, it is counted
(sinkline_lease_staged_refused_total), and what the lease staged before is
published whole when it is released."""

import unittest

import grpc

from harness import AdminClient

from sinkline.v1 import content_pb2, types_pb2  # noqa: E402

import test_security_content as security  # noqa: E402

DEFAULT_MAX_EDITS = 1000


class StagedLimitsTest(security.RealTokenTest):

    def call(self, method, request, response_type=content_pb2.EditResponse):
        fn = self.channel.unary_unary(
            f"/sinkline.v1.Content/{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString)
        return fn(request, timeout=10)

    def add_header(self, token, n):
        return self.call("AddHeader", content_pb2.AddHeaderRequest(
            token=token, header=types_pb2.AddHeader(name="X-Staged",
                                                    value=str(n))))

    def refused(self, fn, *args):
        with self.assertRaises(grpc.RpcError) as ctx:
            fn(*args)
        return ctx.exception.code(), ctx.exception.details()

    def counted(self, limit):
        client = AdminClient(self.stack.broker.port)
        self.addCleanup(client.close)
        return sum(v for k, v in client.counters().items()
                   if k.startswith("sinkline_lease_staged_refused_total")
                   and f'limit="{limit}"' in k and 'binding="writer"' in k)

    def release_both(self, leases, qid):
        for binding in ("writer", "reader"):
            self.call("Release", content_pb2.ReleaseRequest(
                token=leases[(qid, binding)]["token"]),
                content_pb2.ReleaseResponse)
        _, data = self.stack.queued(qid)
        return data


class DefaultEditLimitTest(StagedLimitsTest):

    def test_the_edit_past_the_default_is_refused_and_the_rest_kept(self):
        qid = self.send(b"Subject: many edits\r\n\r\nbody\r\n")
        leases = self.leases(2)
        token = leases[(qid, "writer")]["token"]
        for n in range(DEFAULT_MAX_EDITS):
            self.add_header(token, n)
        code, details = self.refused(self.add_header, token,
                                     DEFAULT_MAX_EDITS)
        self.assertEqual(code, grpc.StatusCode.RESOURCE_EXHAUSTED, details)
        self.assertIn("--lease-max-staged-edits", details)
        # An envelope edit counts as well.
        code, _ = self.refused(self.call, "AddRecipient",
                               content_pb2.AddRecipientRequest(
                                   token=token,
                                   recipient=types_pb2.Recipient(
                                       address="more@example.test")))
        self.assertEqual(code, grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertEqual(self.counted("edits"), 2)
        # The lease is still good: what it staged is published whole.
        data = self.release_both(leases, qid)
        self.assertEqual(data.count(b"X-Staged:"), DEFAULT_MAX_EDITS)
        self.assertIn(b"X-Staged: 999\r\n", data)
        self.assertNotIn(b"X-Staged: 1000\r\n", data)


class ByteLimitTest(StagedLimitsTest):

    broker_flags = ["--lease-max-staged-bytes=1048576"]

    def test_bytes_past_the_limit_are_refused(self):
        qid = self.send(b"Subject: big edits\r\n\r\nbody\r\n")
        leases = self.leases(2)
        token = leases[(qid, "writer")]["token"]
        body = b"A" * (600 << 10)

        def write(data):
            return self.call("WriteRange", content_pb2.WriteRangeRequest(
                token=token, offset=0, data=data))

        def replace(data):
            fn = self.channel.stream_unary(
                "/sinkline.v1.Content/ReplaceBody",
                request_serializer=(
                    content_pb2.ReplaceBodyRequest.SerializeToString),
                response_deserializer=content_pb2.EditResponse.FromString)
            return fn(iter([content_pb2.ReplaceBodyRequest(
                token=token, data=data)]), timeout=10)

        write(b"Subject: rewritten\r\n\r\n" + body)
        code, details = self.refused(write, body)
        self.assertEqual(code, grpc.StatusCode.RESOURCE_EXHAUSTED, details)
        self.assertIn("--lease-max-staged-bytes", details)
        code, details = self.refused(replace, body)
        self.assertEqual(code, grpc.StatusCode.RESOURCE_EXHAUSTED, details)
        self.assertEqual(self.counted("bytes"), 2)
        # Small edits still fit.
        self.add_header(token, 1)
        data = self.release_both(leases, qid)
        self.assertIn(b"Subject: rewritten\r\n", data)
        self.assertIn(b"X-Staged: 1\r\n", data)
        self.assertEqual(data.count(b"A"), len(body))


if __name__ == "__main__":
    unittest.main()
