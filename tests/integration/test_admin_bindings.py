"""Bindings through the broker's Admin service: create, update, enable,
disable, delete, with clear gRPC errors; they take effect at once and are
kept across a broker restart. Bindings from the file are changed in the
file only."""

import re
import smtplib
import time
import unittest

import grpc

from harness import RawSmtp, StackTestCase

from sinkline.v1 import admin_pb2, types_pb2  # noqa: E402  (PYTHONPATH)

QUEUED = re.compile(rb"queued as (\S+)")


class Admin:
    def __init__(self, port):
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")

    def call(self, method, request, response_type):
        fn = self.channel.unary_unary(
            f"/sinkline.v1.Admin/{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString)
        return fn(request, timeout=10)

    def bindings(self):
        return {b.name: b for b in self.call(
            "ListBindings", admin_pb2.ListBindingsRequest(),
            admin_pb2.ListBindingsResponse).bindings}


def stamp_binding(name, priority, sink="stamp"):
    return admin_pb2.Binding(
        name=name, sink=sink, event=types_pb2.EVENT_TYPE_EOD,
        priority=priority,
        content_access=types_pb2.CONTENT_ACCESS_READ_WRITE,
        failure_policy=types_pb2.FAILURE_POLICY_CONTINUE)


class AdminBindingsTest(StackTestCase):

    def setUp(self):
        super().setUp()
        self.stack.start_stamp_sink()
        self.stack.write_config([{
            "name": "from-file", "sink": "stamp", "event": "EOD",
            "priority": 30000, "content_access": "read-write",
            "failure_policy": "continue"}])
        self.stack.start_broker()
        self.stack.start_edge()
        self.admin = Admin(self.stack.broker.port)

    def tearDown(self):
        self.admin.channel.close()  # else the broker waits out its grace
        super().tearDown()

    def stamps(self):
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.net")
            s.mail("alice@example.net")
            s.rcpt("bob@example.test")
            code, resp = s.data(b"Subject: admin\r\n\r\nbody\r\n")
            self.assertEqual(code, 250, resp)
            qid = QUEUED.search(resp).group(1).decode()
        _, queued = self.stack.queued(qid)
        return queued.count(b"X-Sinkline-Stamp: ")

    def expect_error(self, code, fn, *args, contains=""):
        with self.assertRaises(grpc.RpcError) as cm:
            fn(*args)
        self.assertEqual(cm.exception.code(), code, cm.exception.details())
        self.assertIn(contains, cm.exception.details())

    def create(self, binding):
        return self.admin.call("CreateBinding",
                               admin_pb2.CreateBindingRequest(binding=binding),
                               admin_pb2.BindingResponse).binding

    def set_enabled(self, name, enabled):
        return self.admin.call(
            "EnableBinding" if enabled else "DisableBinding",
            admin_pb2.SetBindingEnabledRequest(name=name),
            admin_pb2.BindingResponse).binding

    def delete(self, name):
        return self.admin.call("DeleteBinding",
                               admin_pb2.DeleteBindingRequest(name=name),
                               admin_pb2.DeleteBindingResponse)

    def test_admin_bindings_apply_at_once_and_survive_a_restart(self):
        self.assertEqual(self.stamps(), 1)
        made = self.create(stamp_binding("early-stamp", 100))
        self.assertTrue(made.enabled)
        self.assertEqual(made.origin, "admin")
        self.assertEqual(self.stamps(), 2)

        # Kept across a restart of the broker.
        port = self.stack.broker.port
        self.admin.channel.close()  # an open channel holds the grace period
        self.stack.broker.stop()
        self.stack.start_broker(listen=f"127.0.0.1:{port}")
        self.admin = Admin(self.stack.broker.port)
        listed = self.admin.bindings()
        self.assertEqual(listed["early-stamp"].origin, "admin")
        self.assertEqual(listed["from-file"].origin, "file")

        self.assertFalse(self.set_enabled("early-stamp", False).enabled)
        self.assertEqual(self.stamps(), 1)
        self.assertTrue(self.set_enabled("early-stamp", True).enabled)
        updated = self.admin.call(
            "UpdateBinding",
            admin_pb2.UpdateBindingRequest(
                binding=stamp_binding("early-stamp", 200)),
            admin_pb2.BindingResponse).binding
        self.assertEqual(updated.priority, 200)
        self.assertTrue(updated.enabled)
        self.delete("early-stamp")
        self.assertEqual(self.stamps(), 1)
        self.assertNotIn("early-stamp", self.admin.bindings())

    def test_open_sessions_learn_new_bindings(self):
        # The edge skips the round trip for events nobody binds; a binding
        # made now must reach sessions that are already open.
        self.stack.start_sink("hello", "sinkline-example-hello")
        self.stack.broker.stop()
        self.stack.write_config([
            {"name": "from-file", "sink": "stamp", "event": "EOD",
             "priority": 30000, "content_access": "read-write"}])
        self.admin.channel.close()
        self.stack.start_broker(listen=f"127.0.0.1:{self.stack.broker.port}")
        self.admin = Admin(self.stack.broker.port)
        conn = RawSmtp(self.stack.edge.port)
        self.assertEqual(conn.reply()[0], 220)
        conn.cmd("EHLO client.example.net")
        conn.cmd("MAIL FROM:<a@example.net>")
        self.assertEqual(conn.cmd("RCPT TO:<nobody@example.test>")[0], 250)
        self.create(admin_pb2.Binding(name="rcpt-policy", sink="hello",
                                      event=types_pb2.EVENT_TYPE_RCPT,
                                      priority=100))
        # The new binding map reaches the edge within moments (it travels
        # on the session's stream); poll briefly, bounded.
        for _ in range(100):
            code, lines = conn.cmd("RCPT TO:<nobody@example.test>")
            if code != 250:
                break
            time.sleep(0.02)
        self.assertEqual((code, lines),
                         (550, ["550 5.1.1 No such user here"]))
        conn.close()

    def test_errors_say_what_is_wrong(self):
        self.create(stamp_binding("dup", 100))
        self.expect_error(grpc.StatusCode.ALREADY_EXISTS, self.create,
                          stamp_binding("dup", 100), contains="dup")
        self.expect_error(grpc.StatusCode.ALREADY_EXISTS, self.create,
                          stamp_binding("from-file", 100))
        self.expect_error(grpc.StatusCode.INVALID_ARGUMENT, self.create,
                          stamp_binding("x", 100, sink="nosuch"),
                          contains="unknown sink 'nosuch'")
        bad_rule = stamp_binding("y", 100)
        bad_rule.rule = "mail form=*@x"
        self.expect_error(grpc.StatusCode.INVALID_ARGUMENT, self.create,
                          bad_rule, contains="position 1")
        self.expect_error(grpc.StatusCode.INVALID_ARGUMENT, self.create,
                          admin_pb2.Binding(name="z", sink="stamp"),
                          contains="event is required")
        self.expect_error(grpc.StatusCode.FAILED_PRECONDITION,
                          self.set_enabled, "from-file", False,
                          contains="bindings file")
        self.expect_error(grpc.StatusCode.NOT_FOUND, self.delete, "ghost")


if __name__ == "__main__":
    unittest.main()
