"""The control plane over TLS with client certificates: edge → broker,
broker → sinks (a C++ sink and a Python one) and a sink → the broker's
content service all use certificates from a private CA, made here with
Debian's openssl. A message goes through; a plaintext client and a client
without a certificate are refused by the broker; the broker's Admin service
refuses a call without a credential (UNAUTHENTICATED) or with a wrong token
(PERMISSION_DENIED), and answers one with the bearer token or with the
operator's client certificate."""

import json
import os
import re
import smtplib
import subprocess
import unittest

import grpc

from harness import PYTHON_DIR, ROOT, Process, StackTestCase, wait_for

from sinkline.v1 import admin_pb2, content_pb2  # noqa: E402  (PYTHONPATH)

QUEUED = re.compile(rb"queued as (\S+)")
SERVER_NAME = "sinkline.test"
TOKEN = "a-long-operator-token-0123456789"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class Pki:
    """A CA and certificates for each part, in `directory`."""

    def __init__(self, directory, ca="ca"):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.ca = ca
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-subj", f"/CN={ca}", "-keyout", f"{ca}.key",
                "-out", f"{ca}.crt", cwd=directory)

    def issue(self, name, dns):
        with open(os.path.join(self.dir, f"{name}.ext"), "w") as f:
            f.write(f"subjectAltName=DNS:{dns},IP:127.0.0.1\n"
                    "extendedKeyUsage=serverAuth,clientAuth\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={dns}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=self.dir)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{self.ca}.crt",
                "-CAkey", f"{self.ca}.key", "-CAcreateserial", "-days", "2",
                "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=self.dir)
        return self.flags(name)

    def path(self, name):
        return os.path.join(self.dir, name)

    def flags(self, name):
        return [f"--grpc-tls-cert={self.path(name + '.crt')}",
                f"--grpc-tls-key={self.path(name + '.key')}",
                f"--grpc-tls-ca={self.path(self.ca + '.crt')}",
                f"--grpc-tls-server-name={SERVER_NAME}"]

    def read(self, name):
        with open(self.path(name), "rb") as f:
            return f.read()

    def channel(self, port, name=None, ca=None):
        """A TLS channel to 127.0.0.1:port, with `name`'s client certificate
        (or none)."""
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.read((ca or self.ca) + ".crt"),
            private_key=self.read(name + ".key") if name else None,
            certificate_chain=self.read(name + ".crt") if name else None)
        return grpc.secure_channel(
            f"127.0.0.1:{port}", creds,
            options=[("grpc.ssl_target_name_override", SERVER_NAME)])


def admin_call(channel, metadata=None):
    fn = channel.unary_unary(
        "/sinkline.v1.Admin/ListBindings",
        request_serializer=admin_pb2.ListBindingsRequest.SerializeToString,
        response_deserializer=admin_pb2.ListBindingsResponse.FromString)
    return fn(admin_pb2.ListBindingsRequest(), timeout=10, metadata=metadata)


class ControlPlaneTlsTest(StackTestCase):

    def code_of(self, fn, *args, **kwargs):
        with self.assertRaises(grpc.RpcError) as ctx:
            fn(*args, **kwargs)
        return ctx.exception.code(), ctx.exception.details()

    def test_everything_over_tls_and_admin_credentials(self):
        pki = Pki(os.path.join(self.workdir, "pki"))
        # Every part presents the name the others expect (SERVER_NAME);
        # the operator has a certificate of its own.
        tls = pki.issue("service", SERVER_NAME)
        pki.issue("operator", "operator.sinkline.test")
        token_file = os.path.join(self.workdir, "admin-token")
        with open(token_file, "w") as f:
            f.write(TOKEN + "\n")

        self.stack.start_sink("stamp", "sinkline-sink-stamp",
                              ["--name=stamp"] + tls)
        self.stack.start_python_sink("subject-filter", "subject_filter.py",
                                     ["--reject-subject=spam"] + tls)
        out = os.path.join(self.workdir, "tokens.jsonl")
        keeper = Process("keeper", [
            "/usr/bin/python3",
            os.path.join(ROOT, "tests", "integration", "token_keeper_sink.py"),
            "--listen=127.0.0.1:0", f"--out={out}"] + tls, self.workdir,
            env=dict(os.environ, PYTHONPATH=PYTHON_DIR))
        self.stack.processes.append(keeper)
        self.stack.sinks["keeper"] = keeper.start()
        self.stack.write_config([
            {"name": "filter", "sink": "subject-filter", "event": "EOD",
             "priority": 100, "content_access": "read",
             "failure_policy": "tempfail"},
            {"name": "stamp-eod", "sink": "stamp", "event": "EOD",
             "priority": 30000, "content_access": "read-write",
             "failure_policy": "tempfail"},
            {"name": "keeper", "sink": "keeper", "event": "EOD",
             "priority": 31000, "content_access": "read",
             "failure_policy": "continue", "deadline_ms": 10000}])
        self.stack.start_broker(extra=tls + [
            f"--admin-token-file={token_file}",
            "--admin-client-names=operator.sinkline.test"])
        self.stack.start_edge(tls)
        port = self.stack.broker.port

        body = b"Subject: over tls\r\n\r\nhello\r\n"
        with smtplib.SMTP("127.0.0.1", self.stack.edge.port, timeout=30) as s:
            s.ehlo("client.example.net")
            s.mail("a@example.net")
            s.rcpt("b@example.test")
            code, resp = s.data(body)
            self.assertEqual(code, 250, resp)
            qid = QUEUED.search(resp).group(1).decode()
            # The Python sink answered over TLS too.
            s.mail("a@example.net")
            s.rcpt("b@example.test")
            code, resp = s.data(b"Subject: spam\r\n\r\nbuy\r\n")
            self.assertEqual(code, 550, resp)

        # The content service: with a client certificate the sink's token
        # reads the message; without one, or in plaintext, nothing.
        lease = wait_for(lambda: os.path.exists(out) and [
            json.loads(line) for line in open(out) if line.strip()], 10,
            "the keeper's lease")[0]
        self.assertEqual(lease["endpoint"], f"127.0.0.1:{port}")

        def read(channel):
            stream = channel.unary_stream(
                "/sinkline.v1.Content/ReadRange",
                request_serializer=(
                    content_pb2.ReadRangeRequest.SerializeToString),
                response_deserializer=content_pb2.ReadRangeResponse.FromString)
            return b"".join(p.data for p in stream(
                content_pb2.ReadRangeRequest(token=lease["token"]),
                timeout=10))

        with pki.channel(port, "service") as ch:
            content = read(ch)
            self.assertTrue(content.endswith(b"\r\n\r\nhello\r\n"))
            self.assertTrue(content.startswith(
                f"X-Sinkline-Stamp: stamp; {qid}\r\n".encode()))
            ch.unary_unary(
                "/sinkline.v1.Content/Release",
                request_serializer=content_pb2.ReleaseRequest.SerializeToString,
                response_deserializer=content_pb2.ReleaseResponse.FromString)(
                    content_pb2.ReleaseRequest(token=lease["token"]),
                    timeout=10)
        _, queued = self.stack.queued(qid)
        self.assertEqual(queued, content)
        with pki.channel(port) as ch:  # no client certificate
            code, _ = self.code_of(read, ch)
            self.assertEqual(code, grpc.StatusCode.UNAVAILABLE)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            code, _ = self.code_of(read, ch)
            self.assertEqual(code, grpc.StatusCode.UNAVAILABLE)
        # A certificate from another CA is refused too.
        other = Pki(os.path.join(self.workdir, "other-pki"), ca="other-ca")
        other.issue("intruder", SERVER_NAME)
        creds = grpc.ssl_channel_credentials(
            root_certificates=pki.read("ca.crt"),
            private_key=other.read("intruder.key"),
            certificate_chain=other.read("intruder.crt"))
        with grpc.secure_channel(
                f"127.0.0.1:{port}", creds,
                options=[("grpc.ssl_target_name_override",
                          SERVER_NAME)]) as ch:
            code, _ = self.code_of(read, ch)
            self.assertEqual(code, grpc.StatusCode.UNAVAILABLE)

        # The Admin service needs a credential, even from a sink's
        # certificate on loopback.
        with pki.channel(port, "service") as ch:
            code, details = self.code_of(admin_call, ch)
            self.assertEqual(code, grpc.StatusCode.UNAUTHENTICATED, details)
            code, details = self.code_of(
                admin_call, ch,
                metadata=(("authorization", "Bearer wrong-token-0000"),))
            self.assertEqual(code, grpc.StatusCode.PERMISSION_DENIED)
            self.assertNotIn(TOKEN, details)
            names = [b.name for b in admin_call(
                ch, metadata=(("authorization", f"Bearer {TOKEN}"),)).bindings]
            self.assertEqual(names, ["filter", "stamp-eod", "keeper"])
        with pki.channel(port, "operator") as ch:
            self.assertEqual(len(admin_call(ch).bindings), 3)
        # Neither token nor lease token ever reaches the logs.
        for p in self.stack.processes:
            self.assertNotIn(TOKEN, p.log(), p.name)
            self.assertNotIn(lease["token"], p.log(), p.name)


if __name__ == "__main__":
    unittest.main()
