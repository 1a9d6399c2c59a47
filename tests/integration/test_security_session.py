"""The SessionService stream as a hostile client sends it: ids with `../`
in SessionStart, in DataChunk and in events. The broker refuses the stream
with INVALID_ARGUMENT, and no file outside the spool is created, truncated
or deleted (spool names come from the broker's own ids, never from the
wire).

And who may open a stream at all: only edges, by the edges' token
(--edge-token-file; the edge's --broker-token-file) or client-certificate
name (--edge-client-names), by loopback only with --session-allow-loopback;
a sink's lease claim or token is refused whatever the trust, and so are
streams past --session-streams-per-edge. Each refusal comes before any
event is read (a stream that starts with a traversal id is refused for who
it is, not for the id)."""

import os
import queue
import smtplib
import unittest

import grpc

from harness import StackTestCase, wait_for

from sinkline.v1 import session_pb2, types_pb2  # noqa: E402

VICTIM = b"precious bytes outside the spool\n"


class HostileSessionTest(StackTestCase):

    def setUp(self):
        super().setUp()
        self.stack.write_config([])
        self.stack.start_broker()
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{self.stack.broker.port}")
        self.addCleanup(self.channel.close)
        # spool/incoming/../../victim-x is <workdir>/victim-x.
        self.victim = os.path.join(self.workdir, "victim-x")
        with open(self.victim, "wb") as f:
            f.write(VICTIM)

    def outside_files(self):
        found = set()
        for root, dirs, files in os.walk(self.workdir):
            if os.path.abspath(root).startswith(
                    os.path.abspath(self.stack.spool_dir)):
                continue
            for name in files:
                found.add(os.path.join(root, name))
        return found

    def stream(self, requests, metadata=None):
        """Sends `requests`, half-closes, waits for the broker's end of the
        stream; returns the status code it ended with."""
        return self.stream_status(requests, metadata)[0]

    def stream_status(self, requests, metadata=None):
        """Like stream(); returns (code, details)."""
        q = queue.Queue()
        for r in requests:
            q.put(r)
        q.put(None)  # then half-close

        def gen():
            while True:
                item = q.get(timeout=15)
                if item is None:
                    return
                yield item

        call = self.channel.stream_stream(
            "/sinkline.v1.SessionService/Stream",
            request_serializer=session_pb2.SessionRequest.SerializeToString,
            response_deserializer=session_pb2.SessionResponse.FromString)(
                gen(), timeout=10, metadata=metadata)
        try:
            for _ in call:
                pass
        except grpc.RpcError as e:
            return e.code(), e.details()
        return grpc.StatusCode.OK, ""

    @staticmethod
    def start(session_id):
        return session_pb2.SessionRequest(start=session_pb2.SessionStart(
            session=types_pb2.SessionInfo(session_id=session_id,
                                          server_hostname="mx.test")))

    @staticmethod
    def data(tx, payload=b"Subject: x\r\n\r\nhostile\r\n"):
        return session_pb2.SessionRequest(
            data=session_pb2.DataChunk(transaction_id=tx, data=payload))

    def check_untouched(self, before):
        with open(self.victim, "rb") as f:
            self.assertEqual(f.read(), VICTIM, "victim truncated")
        self.assertEqual(self.outside_files(), before)

    def test_session_id_with_dot_dot_is_refused(self):
        before = self.outside_files()
        code = self.stream([self.start("../../victim"), self.data("x")])
        self.check_untouched(before)
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)

    def test_created_file_outside_spool(self):
        before = self.outside_files()
        code = self.stream([self.start("../../created"), self.data("x")])
        self.check_untouched(before)
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)

    def test_transaction_id_with_slash_is_refused(self):
        before = self.outside_files()
        code = self.stream([self.start("s1"), self.data("../../../victim")])
        self.check_untouched(before)
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)

    def test_event_transaction_id_is_refused(self):
        before = self.outside_files()
        ev = session_pb2.SessionRequest(notify_only=True, event=types_pb2.Event(
            type=types_pb2.EVENT_TYPE_MAIL, sequence=1,
            session=types_pb2.SessionInfo(session_id="s1"),
            transaction_id="../evil"))
        code = self.stream([self.start("s1"), ev])
        self.check_untouched(before)
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)

    def test_overlong_id_is_refused(self):
        code = self.stream([self.start("a" * 300)])
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)

    def test_valid_ids_still_work(self):
        code = self.stream([self.start("0123abcdef"), self.data("T1")])
        self.assertEqual(code, grpc.StatusCode.OK)


EDGE_TOKEN = "edge-token-for-the-session-tests-0123"
TRAVERSAL = "../../victim"


class EdgeIdentityTest(StackTestCase):
    """Who may open a session stream. setUp starts no broker."""

    outside_files = HostileSessionTest.outside_files
    stream = HostileSessionTest.stream
    stream_status = HostileSessionTest.stream_status
    start = staticmethod(HostileSessionTest.start)
    data = staticmethod(HostileSessionTest.data)
    check_untouched = HostileSessionTest.check_untouched

    def setUp(self):
        StackTestCase.setUp(self)
        self.stack.write_config([])
        self.token_file = os.path.join(self.workdir, "edge-token")
        with open(self.token_file, "w") as f:
            f.write(EDGE_TOKEN + "\n")
        self.victim = os.path.join(self.workdir, "victim-x")
        with open(self.victim, "wb") as f:
            f.write(VICTIM)

    def broker(self, extra=(), session_loopback=False):
        self.stack.start_broker(extra=list(extra),
                                session_loopback=session_loopback)
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{self.stack.broker.port}")
        self.addCleanup(self.channel.close)

    def refused_before_reading(self, metadata, code, text):
        """A stream that opens with a traversal id is refused with `code`
        (not INVALID_ARGUMENT: no event was read), the message says `text`,
        nothing outside the spool changed."""
        before = self.outside_files()
        got, details = self.stream_status(
            [self.start(TRAVERSAL), self.data("x")], metadata)
        self.check_untouched(before)
        self.assertEqual(got, code, details)
        self.assertIn(text, details)

    def test_unconfigured_broker_refuses_loopback(self):
        self.broker()
        self.refused_before_reading(None, grpc.StatusCode.UNAUTHENTICATED,
                                    "--session-allow-loopback")

    def test_loopback_admitted_only_with_the_flag(self):
        self.broker(session_loopback=True)
        code = self.stream([self.start("0123abcdef"), self.data("T1")])
        self.assertEqual(code, grpc.StatusCode.OK)

    def test_edge_token(self):
        self.broker([f"--edge-token-file={self.token_file}"])
        # No credential, a wrong one, a sink's lease token: refused.
        self.refused_before_reading(None, grpc.StatusCode.UNAUTHENTICATED,
                                    "authorization")
        self.refused_before_reading(
            [("authorization", "Bearer not-the-edge-token-0000000000")],
            grpc.StatusCode.PERMISSION_DENIED, "credential refused")
        # The edges' token opens a stream.
        code = self.stream([self.start("0123abcdef"), self.data("T1")],
                           [("authorization", f"Bearer {EDGE_TOKEN}")])
        self.assertEqual(code, grpc.StatusCode.OK)
        # A real edge with --broker-token-file takes mail; one without is
        # refused by the broker and the client hears a 4xx, never 250.
        self.stack.start_edge([f"--broker-token-file={self.token_file}"])
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.test")
            s.mail("a@example.test")
            s.rcpt("b@example.test")
            code, resp = s.data(b"Subject: t\r\n\r\nhello\r\n")
            self.assertEqual(code, 250, resp)

    def test_edge_without_token_gets_no_session(self):
        self.broker([f"--edge-token-file={self.token_file}"])
        self.stack.start_edge()
        try:
            with smtplib.SMTP("127.0.0.1", self.stack.edge.port,
                              timeout=30) as s:
                code, resp = s.ehlo("client.example.test")
                if code == 250:
                    code, resp = s.mail("a@example.test")
        except smtplib.SMTPConnectError as e:  # the greeting was 4xx
            code, resp = e.smtp_code, e.smtp_error
        except smtplib.SMTPServerDisconnected:
            code, resp = 421, b"disconnected"
        self.assertGreaterEqual(code, 400, resp)
        self.assertLess(code, 500, resp)

    def test_sink_lease_claim_is_refused_even_on_trusted_loopback(self):
        self.broker(session_loopback=True)
        # A sink names its message and binding, and speaks with its lease
        # token: neither is an edge's credential.
        self.refused_before_reading(
            [("sinkline-queue-id", "Q0123456789"),
             ("sinkline-binding", "stamp")],
            grpc.StatusCode.PERMISSION_DENIED, "lease claim")
        self.refused_before_reading(
            [("authorization", "Bearer a-lease-token-0123456789abcdef")],
            grpc.StatusCode.PERMISSION_DENIED, "credential refused")

    def test_streams_per_edge_are_bounded(self):
        self.broker(["--session-streams-per-edge=2"], session_loopback=True)
        held = []
        for _ in range(2):
            q = queue.Queue()

            def gen(q=q):
                while True:
                    item = q.get(timeout=30)
                    if item is None:
                        return
                    yield item
            q.put(self.start("0123abcdef"))
            call = self.channel.stream_stream(
                "/sinkline.v1.SessionService/Stream",
                request_serializer=session_pb2.SessionRequest.
                SerializeToString,
                response_deserializer=session_pb2.SessionResponse.FromString)(
                    gen(), timeout=30)
            held.append((q, call))
            # Open once the broker answered (the binding map it sends).
            next(call)
        code, details = self.stream_status([self.start("0123abcdef")])
        self.assertEqual(code, grpc.StatusCode.RESOURCE_EXHAUSTED, details)
        self.assertIn("--session-streams-per-edge", details)
        for q, call in held:
            q.put(None)
            for _ in call:
                pass
        # Their places are given back once the broker is done with them
        # (just after the client heard the end).
        wait_for(lambda: self.stream([self.start("0123abcdef")]) ==
                 grpc.StatusCode.OK, 15, "a stream admitted again")


if __name__ == "__main__":
    unittest.main()
