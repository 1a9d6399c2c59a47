"""The broker's SMTP relay backend against a real next hop (Debian's
python3-aiosmtpd): a message committed while the next hop is down waits,
is retried with backoff and arrives byte for byte once the next hop is up;
a 4xx for one recipient defers only that recipient; a 5xx moves the message
to the failed state, which the admin service shows with the reason and
history, across a broker restart; an operator releases it and it goes."""

import json
import os
import re
import smtplib
import time
import unittest

import grpc

from harness import (PYTHON_DIR, ROOT, AdminClient, Process, StackTestCase,
                     spool_records, wait_for)

from sinkline.v1 import content_pb2, types_pb2  # noqa: E402  (PYTHONPATH)

QUEUED = re.compile(rb"queued as (\S+)")
BODY = (b"Subject: relay test\r\nFrom: a@example.test\r\n\r\n"
        b"line one\r\n.a line that starts with a dot\r\n..two dots\r\n"
        b"last line\r\n")


class NextHop:
    def __init__(self, workdir, name="next-hop", extra=()):
        self.workdir = workdir
        self.extra = list(extra)
        self.out = os.path.join(workdir, name)
        self.rules_path = os.path.join(workdir, name + "-rules.json")
        self.name = name
        self.process = None
        self.port = 0
        self.set_rules({})

    def set_rules(self, rules):
        tmp = self.rules_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(rules, f)
        os.rename(tmp, self.rules_path)

    def start(self):
        self.process = Process(
            self.name,
            ["/usr/bin/python3",
             os.path.join(ROOT, "tests", "integration", "next_hop.py"),
             f"--out={self.out}", f"--rules={self.rules_path}",
             f"--port={self.port}"] + self.extra,
            self.workdir)
        self.process.start()
        self.port = self.process.port
        return self.process

    def delivered(self):
        """[(envelope dict, bytes)] in arrival order."""
        out = []
        if not os.path.isdir(self.out):
            return out
        names = sorted((int(n[:-5]) for n in os.listdir(self.out)
                        if n.endswith(".json")))
        for n in names:
            with open(os.path.join(self.out, f"{n}.json")) as f:
                env = json.load(f)
            with open(os.path.join(self.out, f"{n}.eml"), "rb") as f:
                out.append((env, f.read()))
        return out


class RelayTest(StackTestCase):

    def start(self, next_hop, bindings=()):
        self.stack.write_config(list(bindings))
        self.broker_args = [f"--relay-host=127.0.0.1:{next_hop.port}",
                            "--relay-helo=broker.example.test",
                            "--relay-connect-timeout-ms=2000",
                            "--relay-timeout-ms=5000",
                            "--submit-retry-min-ms=200",
                            "--submit-retry-max-ms=800"]
        self.stack.start_broker(extra=self.broker_args, queue_dir=False)
        self.stack.start_edge()
        self.admin = AdminClient(self.stack.broker.port)
        self.addCleanup(lambda: self.admin.close())

    def send(self, rcpts, body=BODY):
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            code, resp = s.ehlo("client.example.test")
            self.assertEqual(code, 250)
            s.mail("sender@example.test")
            for r in rcpts:
                self.assertEqual(s.rcpt(r)[0], 250)
            code, resp = s.data(body)
            self.assertEqual(code, 250, resp)
            return QUEUED.search(resp).group(1).decode()

    def state(self, queue_id):
        return self.admin.message(queue_id).state

    def test_next_hop_down_then_up(self):
        hop = NextHop(self.workdir)
        hop.start()
        hop.process.stop()  # keep its port; nobody listens there now
        self.start(hop)
        qid = self.send(["one@example.test", "two@example.test"])
        # Committed and acknowledged; waiting for the next hop.
        info = wait_for(
            lambda: (lambda m: m if m.state == types_pb2.MESSAGE_STATE_RELEASING
                     and m.reason else None)(self.admin.message(qid)),
            10, "the message deferred with a reason")
        self.assertIn(f"127.0.0.1:{hop.port}", info.reason)
        self.assertTrue(any("deferred" in h.what for h in info.history))
        self.assertEqual(hop.delivered(), [])
        time.sleep(1.0)  # a few retries while it is down
        self.assertEqual(self.state(qid), types_pb2.MESSAGE_STATE_RELEASING)
        self.stack.processes.append(hop.start())
        wait_for(lambda: hop.delivered(), 15, "delivery to the next hop")
        wait_for(lambda: self.state(qid) == types_pb2.MESSAGE_STATE_SUBMITTED,
                 10, "state submitted")
        [(env, data)] = hop.delivered()
        self.assertEqual(env["mail_from"], "sender@example.test")
        self.assertEqual(env["rcpt_tos"],
                         ["one@example.test", "two@example.test"])
        # Byte for byte what the client sent (dot-stuffed on the wire, the
        # next hop unstuffs), after the trace header the broker may add.
        self.assertTrue(data.endswith(BODY), data)
        self.assertIn(f"SIZE={len(data)}", env["mail_options"])
        history = [h.what for h in self.admin.message(qid).history]
        self.assertTrue(history[0].startswith("committed"), history)
        self.assertIn(f"submitted to smtp-relay 127.0.0.1:{hop.port}",
                      history[-1])
        # Nothing left in the spool.
        committed = os.path.join(self.stack.spool_dir, "committed")
        self.assertEqual([n for n in os.listdir(committed)
                          if n.startswith(qid)], [])
        counters = self.admin.counters()
        self.assertGreaterEqual(
            counters['sinkline_broker_messages_total{what="deferred"}'], 1)
        self.assertEqual(
            counters['sinkline_broker_messages_total{what="submitted"}'], 1)

    def test_defer_one_recipient_reject_another(self):
        hop = NextHop(self.workdir)
        hop.set_rules({"defer_once": ["later@example.test"],
                       "reject": ["nobody@example.test"]})
        self.stack.processes.append(hop.start())
        self.start(hop)
        qid = self.send(["now@example.test", "later@example.test",
                         "nobody@example.test"])
        info = wait_for(
            lambda: (lambda m: m if m.state == types_pb2.MESSAGE_STATE_FAILED
                     else None)(self.admin.message(qid)),
            15, "the message failed for the refused recipient")
        # The sender hears of the refused recipient: a DSN from <>.
        wait_for(lambda: len(hop.delivered()) == 3, 15, "the DSN")
        delivered = [d for d in hop.delivered() if d[0]["mail_from"] != "<>"]
        self.assertEqual([d[0]["rcpt_tos"] for d in delivered],
                         [["now@example.test"], ["later@example.test"]])
        [(dsn_env, dsn)] = [d for d in hop.delivered()
                            if d[0]["mail_from"] == "<>"]
        self.assertEqual(dsn_env["rcpt_tos"], ["sender@example.test"])
        self.assertIn(b"Final-Recipient: rfc822; nobody@example.test", dsn)
        self.assertIn("1 of 3 recipients refused", info.reason)
        self.assertIn("<nobody@example.test>: 550 5.1.1", info.reason)
        # What stays for the operator is the refused recipient only.
        self.assertEqual([r.address for r in info.envelope.recipients],
                         ["nobody@example.test"])
        failed = self.admin.messages(types_pb2.MESSAGE_STATE_FAILED)
        self.assertEqual([m.queue_id for m in failed], [qid])
        # Its content stays; the store records it failed, with the reason.
        self.assertTrue(os.path.exists(os.path.join(
            self.stack.spool_dir, "committed", qid + ".msg")))
        self.assertIn("1 of 3 recipients refused",
                      spool_records(self.stack.spool_dir)["f/" + qid])

        # A restart still shows it failed, with its reason.
        self.stack.broker.stop()
        self.admin.close()
        self.stack.start_broker(extra=self.broker_args, queue_dir=False)
        self.admin = AdminClient(self.stack.broker.port)
        info = self.admin.message(qid)
        self.assertEqual(info.state, types_pb2.MESSAGE_STATE_FAILED)
        self.assertIn("550 5.1.1", info.reason)

        # Released in another state: refused with FAILED_PRECONDITION.
        # The operator fixes the next hop and releases the message.
        hop.set_rules({})
        released = self.admin.release(qid)
        self.assertIn(released.state, (types_pb2.MESSAGE_STATE_RELEASING,
                                       types_pb2.MESSAGE_STATE_SUBMITTED))
        wait_for(lambda: len(hop.delivered()) == 4, 15, "the third delivery")
        self.assertEqual(hop.delivered()[3][0]["rcpt_tos"],
                         ["nobody@example.test"])
        wait_for(lambda: self.state(qid) == types_pb2.MESSAGE_STATE_SUBMITTED,
                 10, "state submitted")
        with self.assertRaises(self.admin.grpc.RpcError) as ctx:
            self.admin.release(qid)
        self.assertEqual(ctx.exception.code(),
                         self.admin.grpc.StatusCode.FAILED_PRECONDITION)
        with self.assertRaises(self.admin.grpc.RpcError) as ctx:
            self.admin.message("NOSUCHMESSAGE")
        self.assertEqual(ctx.exception.code(),
                         self.admin.grpc.StatusCode.NOT_FOUND)

    def test_envelope_injection_through_content_is_refused(self):
        """A sink holding a read-write lease tries to smuggle commands into
        the relay's MAIL FROM / RCPT TO through the Content service: every
        such edit is INVALID_ARGUMENT, and the next hop gets the message
        once, with the envelope the client gave, and no smuggled command."""
        hop = NextHop(self.workdir)
        self.stack.processes.append(hop.start())
        tokens = os.path.join(self.workdir, "tokens.jsonl")
        keeper = Process("keeper",
                         ["/usr/bin/python3",
                          os.path.join(ROOT, "tests", "integration",
                                       "token_keeper_sink.py"),
                          "--listen=127.0.0.1:0", f"--out={tokens}"],
                         self.workdir, env=dict(os.environ,
                                                PYTHONPATH=PYTHON_DIR))
        self.stack.processes.append(keeper)
        self.stack.sinks["keeper"] = keeper.start()
        self.start(hop, [{"name": "writer", "sink": "keeper", "event": "EOD",
                          "priority": 30000, "content_access": "read-write",
                          "deadline_ms": 30000,
                          "failure_policy": "continue"}])
        qid = self.send(["x@example.test"])

        def lease():
            if not os.path.exists(tokens):
                return None
            with open(tokens) as f:
                lines = [json.loads(x) for x in f if x.strip()]
            return lines[0] if lines else None
        token = wait_for(lease, 15, "the writer's lease")["token"]
        channel = grpc.insecure_channel(f"127.0.0.1:{self.stack.broker.port}")
        self.addCleanup(channel.close)

        def call(method, request, response_type):
            return channel.unary_unary(
                f"/sinkline.v1.Content/{method}",
                request_serializer=type(request).SerializeToString,
                response_deserializer=response_type.FromString)(
                    request, timeout=10)

        smuggle = ("evil@example.test>\r\nRCPT TO:<injected@example.org>\r\n"
                   "DATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n"
                   "MAIL FROM:<evil@example.test")
        edits = [
            ("SetSender", content_pb2.SetSenderRequest(
                token=token, mail_from=smuggle)),
            ("AddRecipient", content_pb2.AddRecipientRequest(
                token=token, recipient=types_pb2.Recipient(address=smuggle))),
            ("AddRecipient", content_pb2.AddRecipientRequest(
                token=token,
                recipient=types_pb2.Recipient(address="no-domain"))),
            ("RemoveRecipient", content_pb2.RemoveRecipientRequest(
                token=token, address=smuggle)),
        ]
        for method, request in edits:
            with self.assertRaises(grpc.RpcError) as ctx:
                call(method, request, content_pb2.EditResponse)
            self.assertEqual(ctx.exception.code(),
                             grpc.StatusCode.INVALID_ARGUMENT,
                             (method, ctx.exception.details()))
        call("Release", content_pb2.ReleaseRequest(token=token),
             content_pb2.ReleaseResponse)
        wait_for(lambda: self.state(qid) == types_pb2.MESSAGE_STATE_SUBMITTED,
                 15, "state submitted")
        time.sleep(0.5)  # a smuggled second message would have arrived
        [(env, data)] = hop.delivered()
        self.assertEqual(env["mail_from"], "sender@example.test")
        self.assertEqual(env["rcpt_tos"], ["x@example.test"])
        self.assertNotIn(b"smuggled", data)

    def test_sender_refused_fails_whole_message(self):
        hop = NextHop(self.workdir)
        hop.set_rules({"reject_mail": True})
        self.stack.processes.append(hop.start())
        self.start(hop)
        qid = self.send(["x@example.test"])
        info = wait_for(
            lambda: (lambda m: m if m.state == types_pb2.MESSAGE_STATE_FAILED
                     else None)(self.admin.message(qid)),
            15, "the message failed")
        self.assertIn("MAIL with 554 5.7.1", info.reason)
        self.assertEqual(hop.delivered(), [])


if __name__ == "__main__":
    unittest.main()
