"""The SessionService stream as a hostile client sends it: ids with `../`
in SessionStart, in DataChunk and in events. The broker refuses the stream
with INVALID_ARGUMENT, and no file outside the spool is created, truncated
or deleted (spool names come from the broker's own ids, never from the
wire)."""

import os
import queue
import unittest

import grpc

from harness import StackTestCase

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

    def stream(self, requests):
        """Sends `requests`, half-closes, waits for the broker's end of the
        stream; returns the status code it ended with."""
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
                gen(), timeout=10)
        try:
            for _ in call:
                pass
        except grpc.RpcError as e:
            return e.code()
        return grpc.StatusCode.OK

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


if __name__ == "__main__":
    unittest.main()
