"""The Admin port without a configured credential: a caller on loopback is
not an operator (behind a sidecar proxy every peer connects from loopback)
unless the broker was started with --admin-allow-loopback. An edge's
credential (the edges' token, a certificate in --edge-client-names) is
never an operator's, even where loopback is trusted; and with control-plane
mTLS, session streams open only for the edges' certificate names."""

import os
import smtplib
import unittest

import grpc

from harness import AdminClient, StackTestCase
from test_control_plane_tls import SERVER_NAME, Pki, admin_call

from sinkline.v1 import admin_pb2, session_pb2, types_pb2  # noqa: E402

EDGE_TOKEN = "edge-token-for-the-admin-tests-0123456"
OPERATOR_TOKEN = "operator-token-for-the-admin-tests-01"


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


    def token_file(self, name, token):
        path = os.path.join(self.workdir, name)
        with open(path, "w") as f:
            f.write(token + "\n")
        return path

    def test_edge_token_is_not_an_operator_on_trusted_loopback(self):
        self.stack.write_config([])
        edge = self.token_file("edge-token", EDGE_TOKEN)
        self.stack.start_broker(extra=[f"--edge-token-file={edge}"],
                                admin_loopback=True)
        client = AdminClient(self.stack.broker.port)
        self.addCleanup(client.close)
        with self.assertRaises(grpc.RpcError) as e:
            client.channel.unary_unary(
                "/sinkline.v1.Admin/ListBindings",
                request_serializer=admin_pb2.ListBindingsRequest.
                SerializeToString,
                response_deserializer=admin_pb2.ListBindingsResponse.
                FromString)(admin_pb2.ListBindingsRequest(), timeout=10,
                            metadata=[("authorization",
                                       f"Bearer {EDGE_TOKEN}")])
        self.assertEqual(e.exception.code(),
                         grpc.StatusCode.PERMISSION_DENIED)
        self.assertIn("edge's credential", e.exception.details())
        self.list_bindings()  # loopback without it is still trusted

    def test_same_token_for_edges_and_operators_is_refused_at_start(self):
        self.stack.write_config([])
        edge = self.token_file("edge-token", EDGE_TOKEN)
        admin = self.token_file("admin-token", EDGE_TOKEN)
        with self.assertRaises(AssertionError) as e:
            self.stack.start_broker(extra=[f"--edge-token-file={edge}",
                                           f"--admin-token-file={admin}"])
        self.assertIn("different tokens", str(e.exception))


class EdgeCertificateTest(StackTestCase):
    """Control-plane mTLS: the broker knows edges by certificate name."""

    def test_edge_certificate_names(self):
        pki = Pki(os.path.join(self.workdir, "pki"))
        tls = pki.issue("service", SERVER_NAME)
        edge_tls = pki.issue("edge", "edge.sinkline.test")
        pki.issue("operator", "operator.sinkline.test")
        self.stack.write_config([])
        self.stack.start_broker(
            extra=tls + ["--edge-client-names=edge.sinkline.test",
                         "--admin-client-names=operator.sinkline.test"],
            admin_loopback=False, session_loopback=False)
        self.stack.start_edge(edge_tls, admin_loopback=False)
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.test")
            s.mail("a@example.test")
            s.rcpt("b@example.test")
            code, resp = s.data(b"Subject: t\r\n\r\nhello\r\n")
            self.assertEqual(code, 250, resp)
        port = self.stack.broker.port

        def session(name):
            channel = pki.channel(port, name)
            self.addCleanup(channel.close)
            start = session_pb2.SessionRequest(start=session_pb2.SessionStart(
                session=types_pb2.SessionInfo(session_id="../../victim")))
            call = channel.stream_stream(
                "/sinkline.v1.SessionService/Stream",
                request_serializer=session_pb2.SessionRequest.
                SerializeToString,
                response_deserializer=session_pb2.SessionResponse.FromString)(
                    iter([start]), timeout=10)
            try:
                for _ in call:
                    pass
            except grpc.RpcError as e:
                return e.code(), e.details()
            return grpc.StatusCode.OK, ""

        # The operator's certificate opens no session stream (refused for
        # who it is, before the traversal id is read) ...
        code, details = session("operator")
        self.assertEqual(code, grpc.StatusCode.PERMISSION_DENIED, details)
        self.assertIn("--edge-client-names", details)
        # ... and the edge's certificate makes no operator call.
        channel = pki.channel(port, "edge")
        self.addCleanup(channel.close)
        with self.assertRaises(grpc.RpcError) as e:
            admin_call(channel)
        self.assertEqual(e.exception.code(),
                         grpc.StatusCode.PERMISSION_DENIED)
        operator = pki.channel(port, "operator")
        self.addCleanup(operator.close)
        admin_call(operator)


if __name__ == "__main__":
    unittest.main()
