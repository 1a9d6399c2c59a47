"""The edge's operator service (sinkline.v1.EdgeAdmin, with health and
reflection) on --admin-listen: open sessions with their client and SMTP
state, counters that move with traffic (sessions, commands by verb and
reply class), and a drain that closes the listener, lets the transaction
in flight finish, answers 421 after it and turns the health NOT_SERVING.
Calls need the operator's token when one is configured."""

import os
from pathlib import Path
import smtplib
import socket
import unittest

import grpc

from harness import StackTestCase, wait_for

from sinkline.v1 import admin_pb2  # noqa: E402  (PYTHONPATH)
import health_pb2  # noqa: E402  (PYTHONPATH)

TOKEN = "edge-operator-token-0123456789"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


class EdgeAdminTest(StackTestCase):

    def call(self, method, request, response_type, metadata=AUTH):
        fn = self.channel.unary_unary(
            f"/sinkline.v1.EdgeAdmin/{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString)
        return fn(request, timeout=10, metadata=metadata)

    def counters(self):
        return {c.name: c.value for c in self.call(
            "GetCounters", admin_pb2.GetCountersRequest(),
            admin_pb2.GetCountersResponse).counters}

    def counters_when(self, ready, what):
        """The counters, once ready(counters) holds (within 10 s)."""
        return wait_for(lambda: (lambda c: c if ready(c) else None)(
            self.counters()), 10, what)

    def health(self):
        fn = self.channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString)
        return fn(health_pb2.HealthCheckRequest(), timeout=10).status

    def test_sessions_counters_and_drain(self):
        token_file = os.path.join(self.workdir, "admin-token")
        with open(token_file, "w") as f:
            f.write(TOKEN + "\n")
        admin_port_file = os.path.join(self.workdir, "edge-admin.port")
        self.stack.start_stamp_sink()
        self.stack.write_config([])
        self.stack.start_broker()
        self.stack.start_edge([
            "--admin-listen=127.0.0.1:0",
            f"--admin-port-file={admin_port_file}",
            f"--admin-token-file={token_file}", "--drain-grace-s=30"])
        # The admin port file follows the SMTP one: wait for it too.
        admin_port = wait_for(
            lambda: os.path.exists(admin_port_file)
            and Path(admin_port_file).read_text().strip(), 10,
            "the EdgeAdmin port file")
        admin_port = int(admin_port)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{admin_port}")
        self.addCleanup(self.channel.close)
        self.assertEqual(self.health(),
                         health_pb2.HealthCheckResponse.SERVING)

        # Without the token: refused.
        with self.assertRaises(grpc.RpcError) as ctx:
            self.call("ListSessions", admin_pb2.ListSessionsRequest(),
                      admin_pb2.ListSessionsResponse, metadata=None)
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.UNAUTHENTICATED)

        # The harness's readiness probe is a session too: wait until the
        # edge has counted it and closed it, so that it is not counted below
        # (a slow edge, e.g. under the sanitizers, counts it late).
        before = self.counters_when(
            lambda c: c.get("sinkline_edge_sessions_total", 0) >= 1
            and c.get("sinkline_edge_sessions", 0) == 0,
            "the readiness probe's session counted and over")
        # One whole message, and an unknown command.
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.sendmail("a@example.net", ["b@example.test"],
                       b"Subject: counted\r\n\r\nx\r\n")
            self.assertEqual(s.docmd("XYZZY")[0], 500)
        # A session left in the middle of a transaction.
        open_session = smtplib.SMTP("127.0.0.1", self.stack.edge.port,
                                    timeout=30)
        self.addCleanup(open_session.close)
        open_session.ehlo("busy.example.net")
        open_session.mail("c@example.net")
        sessions = wait_for(lambda: [
            x for x in self.call("ListSessions",
                                 admin_pb2.ListSessionsRequest(),
                                 admin_pb2.ListSessionsResponse).sessions
            if x.state == "MAIL"], 10, "the open session in MAIL")
        self.assertEqual(len(sessions), 1)
        info = sessions[0]
        self.assertEqual(info.session.client.ip, "127.0.0.1")
        self.assertEqual(info.session.helo_name, "busy.example.net")
        self.assertGreater(info.connected.seconds, 0)

        # The first session's QUIT is answered before the edge ends the
        # session and lowers the gauge: wait until only the open one is left.
        after = self.counters_when(
            lambda c: c.get("sinkline_edge_sessions", 0) == 1,
            "the first session over, the open one counted")

        def moved(key):
            return after.get(key, 0) - before.get(key, 0)
        self.assertEqual(moved("sinkline_edge_sessions_total"), 2)
        self.assertEqual(
            moved('sinkline_edge_commands_total{verb="CONNECT",reply="2xx"}'),
            2, sorted(after))
        self.assertEqual(
            moved('sinkline_edge_commands_total{verb="MAIL",reply="2xx"}'), 2)
        self.assertEqual(
            moved('sinkline_edge_commands_total{verb="DATA",reply="3xx"}'), 1)
        self.assertEqual(
            moved('sinkline_edge_commands_total{verb="EOD",reply="2xx"}'), 1)
        self.assertEqual(
            moved('sinkline_edge_commands_total{verb="UNKNOWN",reply="5xx"}'),
            1)
        self.assertEqual(after["sinkline_edge_sessions"], 1)

        # Drain: the listener closes, health goes NOT_SERVING, the open
        # transaction may finish, and its next command gets 421.
        drained = self.call("Drain", admin_pb2.DrainRequest(grace_ms=20000),
                            admin_pb2.DrainResponse)
        self.assertEqual(drained.sessions, 1)
        wait_for(lambda: self.health()
                 == health_pb2.HealthCheckResponse.NOT_SERVING, 5,
                 "NOT_SERVING")

        def refused():
            try:
                with socket.create_connection(
                        ("127.0.0.1", self.stack.edge.port), timeout=2) as c:
                    data = c.recv(100)
                    return data == b"" or data.startswith(b"421")
            except OSError:
                return True
        wait_for(refused, 5, "the listener closed")
        self.assertEqual(open_session.rcpt("d@example.test")[0], 250)
        code, resp = open_session.data(b"Subject: in flight\r\n\r\ny\r\n")
        self.assertEqual(code, 250, resp)
        code, resp = open_session.docmd("NOOP")
        self.assertEqual(code, 421, resp)
        with self.assertRaises(grpc.RpcError) as ctx:
            self.call("Drain", admin_pb2.DrainRequest(grace_ms=1000),
                      admin_pb2.DrainResponse)
        self.assertEqual(ctx.exception.code(),
                         grpc.StatusCode.FAILED_PRECONDITION)
        wait_for(lambda: len(self.stack.queue_ids()) == 2, 10,
                 "both messages queued")


if __name__ == "__main__":
    unittest.main()
