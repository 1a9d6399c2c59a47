"""The `sinkline` operator command against a real stack: every subcommand,
its table and its --json output compared with what the Admin and
EdgeAdmin services answer, its exit codes, and check-config refusing each
broken bindings file with the message the broker itself gives."""

import base64
import os
import re
import smtplib
import socket
import subprocess
import unittest

from google.protobuf import json_format

from harness import (PYTHON_DIR, ROOT, AdminClient, Process, RawSmtp,
                     StackTestCase, binary, spool_records, wait_for)

QUEUED = re.compile(rb"queued as (\S+)")


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_dict(message):
    return json_format.MessageToDict(message,
                                     preserving_proto_field_name=True)


class CliTestCase(StackTestCase):

    def start(self, relay_dead=True):
        """Stamp after COMMIT; a keeper sink that holds its lease on mail
        to keep@example.test until it expires (then the message is held);
        a relay to a closed port, so that every message is deferred and
        waits; an edge with its EdgeAdmin service."""
        self.stack.start_stamp_sink()
        self.keeper_out = os.path.join(self.workdir, "keeper.jsonl")
        keeper = Process("keeper", [
            "/usr/bin/python3",
            os.path.join(ROOT, "tests", "integration", "token_keeper_sink.py"),
            "--listen=127.0.0.1:0", f"--out={self.keeper_out}"],
            self.workdir, env=dict(os.environ, PYTHONPATH=PYTHON_DIR))
        self.stack.processes.append(keeper)
        self.stack.sinks["keeper"] = keeper.start()
        self.stack.write_config([
            {"name": "stamp-eod", "sink": "stamp", "event": "EOD",
             "priority": 30000, "deadline_ms": 5000,
             "failure_policy": "continue", "content_access": "read-write"},
            {"name": "keeper", "sink": "keeper", "event": "EOD",
             "priority": 31000, "deadline_ms": 3000,
             "failure_policy": "continue", "content_access": "read",
             "expiry_policy": "hold", "rule": "rcpt to=keep@example.test"}])
        self.stack.start_broker(
            queue_dir=False,
            extra=[f"--relay-host=127.0.0.1:{closed_port()}",
                   "--relay-connect-timeout-ms=1000",
                   "--submit-retry-min-ms=600000",
                   "--submit-retry-max-ms=600000",
                   "--config-poll-ms=100"])
        self.edge_admin_file = os.path.join(self.workdir, "edge-admin.port")
        self.stack.start_edge(["--admin-listen=127.0.0.1:0",
                               f"--admin-port-file={self.edge_admin_file}"])
        self.edge_admin = int(wait_for(
            lambda: open(self.edge_admin_file).read().strip()
            if os.path.exists(self.edge_admin_file) else None,
            10, "edge admin port"))
        self.admin = AdminClient(self.stack.broker.port)
        self.addCleanup(self.admin.close)

    def cli(self, *args, broker=None):
        argv = [binary("sinkline"),
                f"--broker=127.0.0.1:{broker or self.stack.broker.port}",
                f"--edge-admin=127.0.0.1:{self.edge_admin}",
                "--timeout-ms=5000"] + list(args)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("SINKLINE_")}
        r = subprocess.run(argv, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60, env=env)
        return r.returncode, r.stdout.decode(), r.stderr.decode()

    def ok(self, *args):
        code, out, err = self.cli(*args)
        self.assertEqual(code, 0, f"sinkline {' '.join(args)}: {err}")
        return out

    def json(self, *args):
        import json
        return json.loads(self.ok(*args, "--json"))

    def send(self, rcpt, subject):
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.net")
            s.mail("a@example.net")
            s.rcpt(rcpt)
            code, resp = s.data(f"Subject: {subject}\r\n\r\nbody of "
                                f"{subject}\r\n".encode())
            self.assertEqual(code, 250)
        return QUEUED.search(resp).group(1).decode()

    def state(self, qid):
        from sinkline.v1 import types_pb2
        return types_pb2.MessageState.Name(self.admin.message(qid).state)

    def wait_deferred(self, qid):
        wait_for(lambda: self.admin.message(qid).history[-1].what
                 .startswith("deferred"), 15, f"{qid} deferred")

    def edge_call(self, method, request, response_type):
        import grpc
        with grpc.insecure_channel(f"127.0.0.1:{self.edge_admin}") as ch:
            fn = ch.unary_unary(
                f"/sinkline.v1.EdgeAdmin/{method}",
                request_serializer=type(request).SerializeToString,
                response_deserializer=response_type.FromString)
            return fn(request, timeout=10)


class MessagesTest(CliTestCase):

    def test_queue_show_leases_hold_release_delete(self):
        from sinkline.v1 import admin_pb2
        self.start()
        waiting = self.send("bob@example.test", "waiting")
        self.wait_deferred(waiting)
        kept = self.send("keep@example.test", "kept")
        wait_for(lambda: os.path.exists(self.keeper_out), 10, "keeper lease")

        # leases: the keeper's lease, as ListLeases answers.
        leases = self.admin.call("ListLeases", admin_pb2.ListLeasesRequest(),
                                 admin_pb2.ListLeasesResponse)
        self.assertEqual(self.json("leases"), as_dict(leases))
        table = self.ok("leases")
        self.assertRegex(table, r"^LEASE\s+QUEUE ID\s+BINDING\s+ACCESS")
        self.assertRegex(table, rf"\n\S+\s+{kept}\s+keeper\s+read\s")

        # The lease expires under the hold policy: the message is held.
        wait_for(lambda: self.state(kept) == "MESSAGE_STATE_HELD", 15,
                 "kept message held")

        # queue: table and JSON against ListMessages.
        self.assertEqual(self.json("queue"), as_dict(
            admin_pb2.ListMessagesResponse(messages=self.admin.messages())))
        table = self.ok("queue").splitlines()
        self.assertEqual(table[0].split(), ["ID", "AGE", "SIZE", "SENDER",
                                            "RECIPIENTS", "STATE", "LEASES",
                                            "LAST"])
        rows = {line.split()[0]: line for line in table[1:-1]}
        info = self.admin.message(waiting)
        self.assertRegex(rows[waiting], rf"^{waiting}\s+\d+s\s+{info.size}\s+"
                         r"<a@example.net>\s+bob@example.test\s+releasing\s+"
                         r"-\s+deferred")
        self.assertIn(info.history[-1].what, rows[waiting])
        self.assertRegex(rows[kept], r"\sheld\s+-\s+held: ")
        self.assertEqual(table[-1], f"-- 2 messages, "
                         f"{info.size + self.admin.message(kept).size} bytes")
        held = self.json("queue", "--state", "held")
        self.assertEqual([m["queue_id"] for m in held["messages"]], [kept])
        self.assertEqual(self.json("queue", "--state=MESSAGE_STATE_HELD"),
                         held)

        # show: the message, its headers; --body its content.
        shown = self.json("show", waiting)
        self.assertEqual(shown["message"], as_dict(self.admin.message(waiting)))
        headers = base64.b64decode(shown["content"]["data"])
        self.assertTrue(headers.endswith(b"Subject: waiting\r\n\r\n"), headers)
        body = base64.b64decode(self.json("show", waiting, "--body")
                                ["content"]["data"])
        self.assertTrue(body.endswith(b"body of waiting\r\n"), body)
        text = self.ok("show", waiting)
        self.assertIn(f"queue id:    {waiting}\n", text)
        self.assertIn("state:       releasing (", text)
        self.assertIn("sender:      <a@example.net>", text)
        self.assertRegex(text, r"<bob@example.test>\s+deferred: ")
        for h in info.history:
            self.assertIn(h.what, text)
        self.assertIn("  Subject: waiting\n", text)
        self.assertNotIn("body of waiting", text)
        self.assertIn("  body of waiting\n", self.ok("show", waiting, "--body"))

        # hold: the waiting message stays; a second hold is refused.
        out = self.ok("hold", waiting, "--reason", "next hop down")
        self.assertEqual(out, f"{waiting}: held\nhistory: held by an "
                         "operator: next hop down\n")
        self.assertEqual(self.state(waiting), "MESSAGE_STATE_HELD")
        self.assertEqual(self.admin.message(waiting).history[-1].what,
                         "held by an operator: next hop down")
        self.assertTrue(spool_records(self.stack.spool_dir)[
            f"h/{waiting}"].startswith("held\n"))
        code, _, err = self.cli("hold", waiting)
        self.assertEqual(code, 4, err)
        self.assertIn("FAILED_PRECONDITION", err)

        # release: it goes on (and is deferred again).
        out = self.ok("release", waiting)
        self.assertIn("history: released by an operator", out)
        self.assertIn("released by an operator",
                      [h.what for h in self.admin.message(waiting).history])
        self.wait_deferred(waiting)

        # delete: gone from the spool for good, recorded and counted.
        released = self.json("release", kept)
        self.assertEqual(released["queue_id"], kept)
        self.wait_deferred(kept)
        deleted = self.json("delete", kept)
        self.assertEqual(deleted["state"], "MESSAGE_STATE_DELETED")
        self.assertEqual(deleted, as_dict(self.admin.message(kept)))
        out = self.ok("delete", waiting)
        self.assertEqual(out, f"{waiting}: deleted\nhistory: deleted by an "
                         "operator (was releasing)\n")
        left = [f for f in os.listdir(os.path.join(self.stack.spool_dir,
                                                   "committed"))
                if f.startswith((waiting, kept))]
        self.assertEqual(left, [])
        self.assertEqual([k for k in spool_records(self.stack.spool_dir)
                          if waiting in k or kept in k], [])
        code, _, err = self.cli("delete", waiting)
        self.assertEqual(code, 4, err)
        code, _, err = self.cli("show", waiting)
        self.assertEqual(code, 0, err)  # the record stays for inspection

        # counters: the broker's, as GetCounters answers.
        counters = self.json("counters")
        names = {c["name"]: int(c.get("value", "0"))
                 for c in counters["counters"]}
        self.assertEqual(set(names), set(self.admin.counters()))
        self.assertEqual(names['sinkline_broker_messages_total{what="deleted"}'],
                         2)
        self.assertRegex(self.ok("counters"),
                         r'\nsinkline_broker_messages_total\{what="deleted"\}'
                         r"\s+2\n")

    def test_exit_codes(self):
        self.start()
        code, _, err = self.cli("show", "NOSUCHID")
        self.assertEqual(code, 1, err)
        self.assertIn("NOT_FOUND", err)
        for argv in (["frobnicate"], ["queue", "--state", "bogus"],
                     ["queue", "--bogus"], ["show"], ["queue", "--body"],
                     []):
            code, _, err = self.cli(*argv)
            self.assertEqual(code, 2, f"{argv}: {err}")
            self.assertIn("usage: sinkline", err)
        code, _, err = self.cli("queue", broker=closed_port())
        self.assertEqual(code, 3, err)
        self.assertIn("UNAVAILABLE", err)
        code, _, err = self.cli("release", "NOSUCHID")
        self.assertEqual(code, 1, err)
        code, out, _ = self.cli("--help")
        self.assertEqual(code, 0)
        for word in ("queue", "show", "release", "hold", "delete", "bindings",
                     "leases", "sessions", "drain", "counters",
                     "check-config"):
            self.assertIn(f"  {word}", out)


class BindingsAndEdgeTest(CliTestCase):

    def bindings(self):
        from sinkline.v1 import admin_pb2
        return self.admin.call("ListBindings", admin_pb2.ListBindingsRequest(),
                               admin_pb2.ListBindingsResponse)

    def test_bindings_list_enable_disable_apply(self):
        self.start()
        self.assertEqual(self.json("bindings"), as_dict(self.bindings()))
        table = self.ok("bindings").splitlines()
        self.assertEqual(table[0].split()[:4],
                         ["NAME", "EVENT", "PRIORITY", "SINK"])
        self.assertRegex(table[1], r"^stamp-eod\s+EOD\s+30000\s+stamp\s+yes\s+"
                         r"continue\s+read-write\s+5000ms\s+file\s+-$")
        code, _, err = self.cli("bindings", "disable", "stamp-eod")
        self.assertEqual(code, 4, err)
        self.assertIn("bindings file", err)

        path = os.path.join(self.workdir, "apply.yaml")
        with open(path, "w") as f:
            f.write("bindings:\n  - name: cli-rcpt\n    sink: stamp\n"
                    "    event: RCPT\n    priority: 20000\n")
        out = self.ok("bindings", "apply", path)
        self.assertIn("+ cli-rcpt (create: RCPT priority 20000 sink stamp)\n",
                      out)
        made = {b.name: b for b in self.bindings().bindings}["cli-rcpt"]
        self.assertEqual((made.priority, made.origin), (20000, "admin"))

        with open(path, "w") as f:
            f.write("bindings:\n  - name: cli-rcpt\n    sink: stamp\n"
                    "    event: RCPT\n    priority: 21000\n"
                    "    failure_policy: reject\n")
        out = self.ok("bindings", "apply", path, "--dry-run")
        self.assertIn("~ cli-rcpt (update)\n", out)
        self.assertIn("    priority: 20000 -> 21000\n", out)
        self.assertIn("    failure_policy: FAILURE_POLICY_TEMPFAIL -> "
                      "FAILURE_POLICY_REJECT\n", out)
        self.assertIn("dry run: nothing changed", out)
        self.assertEqual({b.name: b for b in self.bindings().bindings}
                         ["cli-rcpt"].priority, 20000)
        applied = self.json("bindings", "apply", path)
        now = {b.name: b for b in self.bindings().bindings}["cli-rcpt"]
        self.assertEqual(now.priority, 21000)
        self.assertEqual(applied["changes"],
                         [{"action": "update", "binding": as_dict(now)}])
        self.assertIn("= cli-rcpt (unchanged)", self.ok("bindings", "apply",
                                                        path))
        with open(path, "w") as f:
            f.write("bindings:\n  - name: x\n    sink: nosuch\n"
                    "    event: RCPT\n")
        code, _, err = self.cli("bindings", "apply", path)
        self.assertEqual(code, 4, err)
        self.assertIn("apply.yaml:3:11: unknown sink 'nosuch'", err)

        self.assertEqual(self.ok("bindings", "disable", "cli-rcpt"),
                         "cli-rcpt: disabled\n")
        self.assertFalse({b.name: b for b in self.bindings().bindings}
                         ["cli-rcpt"].enabled)
        enabled = self.json("bindings", "enable", "cli-rcpt")
        self.assertEqual(enabled["binding"], as_dict(
            {b.name: b for b in self.bindings().bindings}["cli-rcpt"]))
        code, _, err = self.cli("bindings", "enable", "ghost")
        self.assertEqual(code, 1, err)

    def test_sessions_counters_and_drain(self):
        from sinkline.v1 import admin_pb2
        self.start()
        smtp = RawSmtp(self.stack.edge.port)
        self.addCleanup(smtp.close)
        self.assertEqual(smtp.reply()[0], 220)
        self.assertEqual(smtp.cmd("EHLO client.example.net")[0], 250)
        sessions = self.edge_call("ListSessions",
                                  admin_pb2.ListSessionsRequest(),
                                  admin_pb2.ListSessionsResponse)
        self.assertEqual(len(sessions.sessions), 1)
        self.assertEqual(self.json("sessions"), as_dict(sessions))
        sid = sessions.sessions[0].session.session_id
        self.assertRegex(self.ok("sessions"),
                         rf"\n{re.escape(sid)}\s+127\.0\.0\.1:\d+\s+"
                         r"client\.example\.net\s+READY\s+no\s+-\s+\d+s\n")
        edge_counters = self.edge_call("GetCounters",
                                       admin_pb2.GetCountersRequest(),
                                       admin_pb2.GetCountersResponse)
        self.assertEqual(
            {c["name"] for c in self.json("counters", "edge")["counters"]},
            {c.name for c in edge_counters.counters})
        out = self.ok("drain", f"127.0.0.1:{self.edge_admin}",
                      "--grace-ms", "2000")
        self.assertEqual(out, f"edge 127.0.0.1:{self.edge_admin} draining: 1 "
                         "sessions open, grace 2000 ms\n")
        code, _, err = self.cli("drain")
        self.assertEqual(code, 4, err)
        self.assertIn("FAILED_PRECONDITION", err)


class CheckConfigTest(CliTestCase):

    BROKEN = {
        # tests/integration/test_reload.py: a binding of an unknown sink.
        "unknown sink": "  - name: broken\n    sink: nosuch\n    event: EOD\n",
        # tests/integration/test_admin_bindings.py, as file entries: a rule
        # that does not parse, a binding without an event, a name twice.
        "bad rule": "  - name: y\n    sink: stamp\n    event: RCPT\n"
                    "    rule: \"mail form=*@x\"\n",
        "no event": "  - name: z\n    sink: stamp\n",
        "duplicate": "  - name: stamp-eod\n    sink: stamp\n    event: RCPT\n",
        "unknown key": "  - name: w\n    sink: stamp\n    event: RCPT\n"
                       "    priorty: 3\n",
        "not yaml": "  - name: [unclosed\n",
    }

    def broker_refusal(self, n):
        """The broker's message in its n-th refusal of the file."""
        pattern = re.compile(r"configuration refused \(file changed\), "
                             r"keeping the running one: [A-Z_]+: (.*)")
        found = wait_for(lambda: (lambda m: m if len(m) >= n else None)(
            pattern.findall(self.stack.broker.log())), 15,
            f"refusal {n} in the broker's log")
        return found[n - 1]

    def test_good_file_and_sinks(self):
        self.start()
        out = self.ok("check-config", self.stack.config_path)
        self.assertRegex(out, r"\nstamp\s+127\.0\.0\.1:\d+\s+ok\n")
        self.assertRegex(out, r"\nkeeper\s+127\.0\.0\.1:\d+\s+ok\n")
        self.assertTrue(out.endswith(": ok (2 sinks, 2 bindings)\n"), out)
        result = self.json("check-config", self.stack.config_path)
        self.assertEqual((result["ok"], len(result["sinks"]),
                          result["bindings"]), (True, 2, 2))

        path = os.path.join(self.workdir, "other.yaml")
        with open(path, "w") as f:
            f.write(f"sinks:\n  - name: gone\n    target: 127.0.0.1:"
                    f"{closed_port()}\n  - name: not-a-sink\n    target: "
                    f"127.0.0.1:{self.stack.broker.port}\nbindings: []\n")
        code, out, err = self.cli("check-config", path)
        # The broker answers health but does not serve sinkline.v1.Sink
        # (refused, 4, wins over unreachable, 3).
        self.assertEqual(code, 4, err)
        self.assertRegex(out, r"\nnot-a-sink\s+\S+\s+does not serve "
                         r"sinkline\.v1\.Sink\n")
        self.assertRegex(out, r"\ngone\s+\S+\s+health: ")
        with open(path, "w") as f:
            f.write(f"sinks:\n  - name: gone\n    target: 127.0.0.1:"
                    f"{closed_port()}\n")
        code, _, err = self.cli("check-config", path)
        self.assertEqual(code, 3, err)
        self.assertEqual(self.cli("check-config", path, "--no-health")[0], 0)
        code, _, err = self.cli("check-config", path + ".missing")
        self.assertEqual(code, 1, err)

    def test_broken_files_refused_with_the_brokers_message(self):
        self.start()
        with open(self.stack.config_path) as f:
            good = f.read()
        reloads = 0
        for n, (what, entry) in enumerate(self.BROKEN.items(), start=1):
            with open(self.stack.config_path, "w") as f:
                f.write(good + entry)
            code, out, err = self.cli("check-config", self.stack.config_path)
            self.assertEqual(code, 4, f"{what}: {out}{err}")
            broker_says = self.broker_refusal(n)
            self.assertEqual(err.strip(), broker_says, what)
            self.assertRegex(broker_says, r"bindings\.yaml:\d+:\d+: ", what)
            result = self.json_code("check-config", self.stack.config_path)
            self.assertEqual((result["ok"], result["error"]),
                             (False, broker_says))
            # Back to the good file before the next one.
            with open(self.stack.config_path, "w") as f:
                f.write(good)
            reloads += 1
            wait_for(lambda: self.stack.broker.log().count(
                "configuration reloaded (file changed)") >= reloads, 15,
                "the good file again")

    def json_code(self, *args):
        import json
        code, out, err = self.cli(*args, "--json")
        self.assertNotEqual(code, 0, err)
        return json.loads(out)


if __name__ == "__main__":
    unittest.main()
