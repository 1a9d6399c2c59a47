"""The Content port as an attacker without a lease sends to it: 100
ReplaceBody streams with bogus tokens push data. The broker looks at the
token in the first message, before it buffers anything, and refuses each
stream at once (NOT_FOUND); its resident memory stays under 64 MiB above
idle."""

import concurrent.futures
import unittest

import grpc

from harness import StackTestCase

from sinkline.v1 import content_pb2, types_pb2  # noqa: E402

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


if __name__ == "__main__":
    unittest.main()
