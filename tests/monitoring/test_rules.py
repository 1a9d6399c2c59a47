"""deploy/monitoring: the Prometheus rules pass `promtool check rules`, their
unit tests pass `promtool test rules`, every alert has a test in which it
fires and one in which it stays quiet, and a runbook section in
docs/operations.md; the Grafana dashboard is JSON whose queries are
well-formed enough to name metrics (their export is checked against running
processes by tests/integration/test_monitoring_metrics.py)."""

import json
import os
import re
import subprocess
import unittest

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MONITORING = os.path.join(ROOT, "deploy", "monitoring")
RULES = os.path.join(MONITORING, "sinkline-rules.yaml")
RULES_TEST = os.path.join(MONITORING, "rules-test.yaml")
DASHBOARD = os.path.join(MONITORING, "sinkline-dashboard.json")
PROMTOOL = "/usr/bin/promtool"


def alerts():
    with open(RULES) as f:
        doc = yaml.safe_load(f)
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def promtool(*args):
    r = subprocess.run([PROMTOOL, *args], cwd=MONITORING,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=120)
    return r.returncode, r.stdout.decode(errors="replace")


class RulesTest(unittest.TestCase):

    def setUp(self):
        self.assertTrue(os.access(PROMTOOL, os.X_OK),
                        f"{PROMTOOL} missing (scripts/install-deps.sh)")

    def test_promtool_check_rules(self):
        code, out = promtool("check", "rules", "sinkline-rules.yaml")
        self.assertEqual(code, 0, out)

    def test_promtool_test_rules(self):
        code, out = promtool("test", "rules", "rules-test.yaml")
        self.assertEqual(code, 0, out)
        self.assertIn("SUCCESS", out)

    def test_promtool_test_rules_can_fail(self):
        """The unit tests are not silent by nature: a broken threshold
        makes them fail."""
        with open(RULES) as f:
            broken = f.read().replace("> 0.05", "> 0.5")
        path = os.path.join(MONITORING, ".broken-rules.yaml")
        test_path = os.path.join(MONITORING, ".broken-test.yaml")
        with open(RULES_TEST) as f:
            tests = f.read().replace("- sinkline-rules.yaml",
                                     "- .broken-rules.yaml")
        try:
            with open(path, "w") as f:
                f.write(broken)
            with open(test_path, "w") as f:
                f.write(tests)
            code, out = promtool("test", "rules", ".broken-test.yaml")
        finally:
            for p in (path, test_path):
                if os.path.exists(p):
                    os.unlink(p)
        self.assertNotEqual(code, 0, out)
        self.assertIn("SinklineSinkFailing", out)

    def test_every_alert_fires_and_stays_quiet_in_a_test(self):
        with open(RULES_TEST) as f:
            tests = yaml.safe_load(f)["tests"]
        for rule in alerts():
            name = rule["alert"]
            fires = quiet = False
            for t in tests:
                cases = [c for c in t.get("alert_rule_test", [])
                         if c["alertname"] == name]
                for c in cases:
                    expected = c.get("exp_alerts") or []
                    fires = fires or bool(expected)
                    # Quiet: an evaluation that expects nothing, or input
                    # series beyond those the expected alerts come from.
                    quiet = quiet or not expected or (
                        len(t["input_series"]) > len(expected) and
                        len({s["series"].split("{")[0]
                             for s in t["input_series"]}) == 1)
            self.assertTrue(fires, f"{name}: no test in which it fires")
            self.assertTrue(quiet, f"{name}: no test in which it stays quiet")

    def test_every_alert_has_a_runbook(self):
        with open(os.path.join(ROOT, "docs", "operations.md")) as f:
            doc = f.read()
        for rule in alerts():
            name = rule["alert"]
            self.assertIn(f"\n### {name}\n", doc, f"no runbook for {name}")
            self.assertEqual(rule["annotations"]["runbook"],
                             f"docs/operations.md#{name.lower()}")

    def test_dashboard_is_grafana_json(self):
        with open(DASHBOARD) as f:
            dash = json.load(f)
        self.assertEqual(dash["uid"], "sinkline")
        exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
        self.assertTrue(exprs)
        for e in exprs:
            self.assertEqual(e.count("("), e.count(")"), e)
            self.assertRegex(e, r"sinkline[_:]")
        kinds = {p["type"] for p in dash["panels"]}
        self.assertIn("heatmap", kinds)


if __name__ == "__main__":
    unittest.main()
