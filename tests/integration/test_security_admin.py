"""The Admin port without a configured credential: a caller on loopback is
not an operator (behind a sidecar proxy every peer connects from loopback)
unless the broker was started with --admin-allow-loopback."""

import unittest

import grpc

from harness import AdminClient, StackTestCase

from sinkline.v1 import admin_pb2  # noqa: E402


class AdminLoopbackTest(StackTestCase):

    def list_bindings(self):
        client = AdminClient(self.stack.broker.port)
        self.addCleanup(client.close)
        return client.call("ListBindings", admin_pb2.ListBindingsRequest(),
                           admin_pb2.ListBindingsResponse)

    def test_unconfigured_broker_refuses_loopback(self):
        self.stack.write_config([])
        self.stack.start_broker(admin_loopback=False)
        with self.assertRaises(grpc.RpcError) as e:
            self.list_bindings()
        self.assertEqual(e.exception.code(),
                         grpc.StatusCode.UNAUTHENTICATED)
        self.assertIn("--admin-allow-loopback", e.exception.details())

    def test_loopback_admitted_with_the_flag(self):
        self.stack.write_config([])
        self.stack.start_broker(admin_loopback=True)
        self.list_bindings()


if __name__ == "__main__":
    unittest.main()
