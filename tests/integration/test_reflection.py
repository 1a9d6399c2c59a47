"""Every gRPC server, inspected the way an operator would with grpcurl, by
a client nobody here wrote (grpc-reflection-js over @grpc/grpc-js from the
npm registry, tests/tools/reflect.js) that knows no Sinkline proto: it lists
the services through reflection, calls grpc.health.v1.Health/Check with the
descriptor reflection gave it, describes the broker's sinkline.v1.Admin and
calls ListBindings and GetCounters from the reflected descriptor."""

import json
import os
import re
import shutil
import smtplib
import subprocess
import unittest

from harness import ROOT, StackTestCase, wait_for

TOOLS = os.path.join(ROOT, "tests", "tools")


def reflect(*args):
    node = shutil.which("node")
    if node is None:
        raise AssertionError("node is not on PATH (scripts/install-deps.sh)")
    r = subprocess.run([node, os.path.join(TOOLS, "reflect.js")] + list(args),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=60)
    if r.returncode != 0:
        raise AssertionError(f"reflect.js failed ({r.returncode}):\n"
                             + r.stderr.decode(errors="replace"))
    return json.loads(r.stdout)


def proto_methods(path, service):
    """{method: (request, response)} of `service` in one of our protos."""
    with open(os.path.join(ROOT, "proto", path)) as f:
        text = f.read()
    body = re.search(r"service %s \{(.*?)\n\}" % service, text, re.S).group(1)
    return {m[0]: (f"sinkline.v1.{m[1]}", f"sinkline.v1.{m[2]}")
            for m in re.findall(
                r"rpc (\w+)\((\w+)\) returns \((\w+)\);", body)}


class ReflectionTest(StackTestCase):

    def test_grpcurl_style_inspection_of_broker_and_sink(self):
        self.start_default_stack()
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.sendmail("a@example.com", ["b@example.test"],
                       b"Subject: reflect\r\n\r\nhello\r\n")
        wait_for(lambda: len(self.stack.queue_ids()) == 1, 30, "queued")
        broker = f"127.0.0.1:{self.stack.broker.port}"
        sink = f"127.0.0.1:{self.stack.sinks['stamp'].port}"

        out = reflect(f"--target={broker}",
                      "--call=sinkline.v1.Admin/ListBindings={}",
                      "--call=sinkline.v1.Admin/GetCounters={}",
                      "--call=sinkline.v1.Admin/ListMessages="
                      '{"state": "MESSAGE_STATE_SUBMITTED"}',
                      f"--target={sink}")
        b, k = out

        # Listing.
        self.assertEqual(b["services"], sorted([
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
            "sinkline.v1.Admin", "sinkline.v1.Content",
            "sinkline.v1.SessionService"]))
        self.assertEqual(k["services"], sorted([
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection", "sinkline.v1.Sink"]))

        # Health through the reflected descriptor: the server and each of
        # its own services.
        for result, names in ((b, ["", "sinkline.v1.Admin",
                                   "sinkline.v1.Content",
                                   "sinkline.v1.SessionService"]),
                              (k, ["", "sinkline.v1.Sink"])):
            for name in names:
                self.assertEqual(result["health"][name], "SERVING",
                                 (result["target"], name))
        self.assertEqual(
            {m["name"] for m in b["methods"]["grpc.health.v1.Health"]},
            {"Check", "Watch"})

        # Describe: the Admin service reflection shows is the one in our
        # proto, method by method, with its types; OnEvent on the sink.
        described = {m["name"]: (m["request"], m["response"])
                     for m in b["methods"]["sinkline.v1.Admin"]}
        self.assertEqual(described,
                         proto_methods("sinkline/v1/admin.proto", "Admin"))
        self.assertTrue(all(not m["requestStream"] and not m["responseStream"]
                            for m in b["methods"]["sinkline.v1.Admin"]))
        stream = [m for m in b["methods"]["sinkline.v1.SessionService"]
                  if m["name"] == "Stream"][0]
        self.assertTrue(stream["requestStream"] and stream["responseStream"])
        self.assertEqual(
            {m["name"]: (m["request"], m["response"])
             for m in k["methods"]["sinkline.v1.Sink"]},
            proto_methods("sinkline/v1/sink.proto", "Sink"))

        # Calls made from the reflected descriptors.
        calls = {c["method"]: c for c in b["calls"]}
        lb = calls["sinkline.v1.Admin/ListBindings"]
        self.assertNotIn("error", lb)
        bindings = lb["response"]["bindings"]
        self.assertEqual([x["name"] for x in bindings], ["stamp-eod"])
        self.assertEqual(bindings[0]["sink"], "stamp")
        self.assertEqual(bindings[0]["event"], "EVENT_TYPE_EOD")
        self.assertEqual(bindings[0]["priority"], 30000)
        self.assertEqual(bindings[0]["failure_policy"],
                         "FAILURE_POLICY_CONTINUE")
        self.assertEqual(bindings[0]["origin"], "file")
        gc = calls["sinkline.v1.Admin/GetCounters"]
        self.assertNotIn("error", gc)
        counters = {c["name"]: int(c["value"])
                    for c in gc["response"]["counters"]}
        self.assertEqual(
            counters['sinkline_broker_messages_total{what="committed"}'], 1)
        lm = calls["sinkline.v1.Admin/ListMessages"]
        self.assertNotIn("error", lm)
        [message] = lm["response"]["messages"]
        self.assertEqual(message["queue_id"], self.stack.queue_ids()[0])
        self.assertEqual(message["state"], "MESSAGE_STATE_SUBMITTED")
        self.assertEqual(message["envelope"]["mail_from"], "a@example.com")


if __name__ == "__main__":
    unittest.main()
