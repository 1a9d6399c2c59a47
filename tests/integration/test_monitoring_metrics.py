"""Every metric that deploy/monitoring's alert rules and Grafana dashboard
use is exported by a running process of the stack (read from its
/metrics), so that a renamed metric cannot silently break them. The stack
is driven so that each family has a sample: mail through a stamp sink, a
binding whose sink is down (sink failures), a sink that lets its lease
expire, and an edge whose broker went away."""

import json
import os
import re
import smtplib
import socket
import unittest
import urllib.request

import yaml

from harness import (PYTHON_DIR, ROOT, Process, RawSmtp, StackTestCase,
                     wait_for)

MONITORING = os.path.join(ROOT, "deploy", "monitoring")
# A metric name in PromQL: recording rules (sinkline:...) are not metrics.
NAME = re.compile(r"\b(sinkline_[a-z0-9_]+)\b")
HISTOGRAM_PARTS = ("_bucket", "_count", "_sum")


def used_names():
    """{metric name: where it is used} of the rules and the dashboard."""
    used = {}
    with open(os.path.join(MONITORING, "sinkline-rules.yaml")) as f:
        for group in yaml.safe_load(f)["groups"]:
            for rule in group["rules"]:
                who = rule.get("alert") or rule.get("record")
                for n in NAME.findall(rule["expr"]):
                    used.setdefault(n, f"rule {who}")
    with open(os.path.join(MONITORING, "sinkline-dashboard.json")) as f:
        dash = json.load(f)
    for panel in dash["panels"]:
        for t in panel["targets"]:
            for n in NAME.findall(t["expr"]):
                used.setdefault(n, f"panel {panel['title']!r}")
    for var in dash["templating"]["list"]:
        for n in NAME.findall(json.dumps(var.get("query", ""))):
            used.setdefault(n, f"variable {var['name']}")
    return used


def metrics_port(process):
    def port():
        m = re.search(r"metrics on port (\d+)", process.log())
        return int(m.group(1)) if m else None
    return wait_for(port, 10, f"{process.name}'s metrics port in its log")


def families(port):
    """{family: type} from the # TYPE lines of a /metrics page, for
    families with at least one sample."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                timeout=10) as r:
        text = r.read().decode()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    sampled = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.M))
    out = {}
    for name, kind in types.items():
        parts = [name + p for p in HISTOGRAM_PARTS] if kind == "histogram" \
            else [name]
        if any(p in sampled for p in parts):
            out[name] = kind
    return out


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MonitoringMetricsTest(StackTestCase):

    def test_rules_and_dashboard_use_exported_metrics(self):
        used = used_names()
        self.assertGreater(len(used), 10, used)
        metrics = "--metrics-listen=127.0.0.1:0"
        self.stack.start_sink("stamp", "sinkline-sink-stamp",
                              ["--name=stamp", metrics])
        out = os.path.join(self.workdir, "keeper.jsonl")
        keeper = Process("keeper", [
            "/usr/bin/python3",
            os.path.join(ROOT, "tests", "integration", "token_keeper_sink.py"),
            "--listen=127.0.0.1:0", f"--out={out}"], self.workdir,
            env=dict(os.environ, PYTHONPATH=PYTHON_DIR))
        self.stack.processes.append(keeper)
        self.stack.sinks["keeper"] = keeper.start()
        self.stack.write_config([
            {"name": "stamp-eod", "sink": "stamp", "event": "EOD",
             "priority": 30000, "failure_policy": "continue",
             "content_access": "read-write"},
            {"name": "down", "sink": "down", "event": "RCPT",
             "priority": 100, "deadline_ms": 1000,
             "failure_policy": "continue"},
            {"name": "keeper", "sink": "keeper", "event": "EOD",
             "priority": 31000, "deadline_ms": 500,
             "failure_policy": "continue", "content_access": "read"}])
        with open(self.stack.config_path) as f:
            config = f.read().replace(
                "bindings:", f"  - name: down\n    target: 127.0.0.1:"
                f"{closed_port()}\nbindings:", 1)
        with open(self.stack.config_path, "w") as f:
            f.write(config)
        self.stack.start_broker(extra=[metrics,
                                       "--spool-scan-interval-ms=100"])
        self.stack.start_edge([metrics])
        ports = {p.name: metrics_port(p)
                 for p in (self.stack.sinks["stamp"], self.stack.broker,
                           self.stack.edge)}
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.net")
            s.mail("a@example.net")
            s.rcpt("bob@example.test")
            code, _ = s.data(b"Subject: metrics\r\n\r\nx\r\n")
            self.assertEqual(code, 250)
        wait_for(lambda: "sinkline_leases_expired_total"
                 in families(ports["broker"]), 15, "the lease expiry")
        wait_for(lambda: "sinkline_broker_commit_to_submit_seconds"
                 in families(ports["broker"]), 15, "the message submitted")
        wait_for(lambda: "sinkline_broker_oldest_deferred_seconds"
                 in families(ports["broker"]), 15, "the spool scan")
        exported = {}
        for name in ("stamp", "broker"):
            exported.update(families(ports[name]))
        # The edge without its broker answers 421.
        self.stack.broker.stop()
        smtp = RawSmtp(self.stack.edge.port)
        code, _ = smtp.reply()
        smtp.close()
        self.assertEqual(code, 421)
        wait_for(lambda: "sinkline_edge_broker_unavailable_total"
                 in families(ports["edge"]), 10, "the edge's 421 counted")
        exported.update(families(ports["edge"]))

        missing = []
        for name, where in sorted(used.items()):
            base = name
            for suffix in HISTOGRAM_PARTS:
                if name.endswith(suffix) and \
                        exported.get(name[:-len(suffix)]) == "histogram":
                    base = name[:-len(suffix)]
            if base not in exported:
                missing.append(f"{name} ({where})")
        self.assertEqual(missing, [], f"exported: {sorted(exported)}")


if __name__ == "__main__":
    unittest.main()
