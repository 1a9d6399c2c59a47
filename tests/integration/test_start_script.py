"""The README's start command: scripts/start.sh brings the stack up on
$SINKLINE_SMTP_PORT with $SINKLINE_HOME, Debian's swaks gets a 250 with a
queue id, the queued file holds the stamp and the exact body, the example
sinks work (an unknown recipient refused, mail from example.test signed
with keys the script made and verified with python3-dkim, the archived copy
equal to the queued one), and Ctrl-C stops every process the script
started."""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import unittest

import dkim

from harness import BIN_DIR, has_failed, split_received, wait_for

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class StartScriptTest(unittest.TestCase):

    def setUp(self):
        self.home = tempfile.mkdtemp(prefix="sinkline-home-")
        self.port = free_port()
        env = dict(os.environ, SINKLINE_HOME=self.home,
                   SINKLINE_SMTP_PORT=str(self.port), SINKLINE_BIN_DIR=BIN_DIR)
        self.out_path = os.path.join(self.home, "start.out")
        self.out = open(self.out_path, "wb")
        self.script = subprocess.Popen(
            ["bash", os.path.join(ROOT, "scripts", "start.sh")], env=env,
            stdout=self.out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)

    def tearDown(self):
        if self.script.poll() is None:
            self.script.send_signal(signal.SIGINT)
            try:
                self.script.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.script.kill()
        self.out.close()
        if has_failed(self):
            print(open(self.out_path, errors="replace").read())
            logdir = os.path.join(self.home, "log")
            for name in sorted(os.listdir(logdir)) if os.path.isdir(logdir) else []:
                print(f"===== {name} =====")
                print(open(os.path.join(logdir, name), errors="replace").read())
        shutil.rmtree(self.home, ignore_errors=True)

    def output(self):
        with open(self.out_path, errors="replace") as f:
            return f.read()

    def test_swaks_through_started_stack_then_ctrl_c_stops_all(self):
        wait_for(lambda: "sinkline: up" in self.output(), 60, "stack up")
        self.assertIn(f"127.0.0.1:{self.port}", self.output())
        pids = {}
        for name in ("recipient-policy", "dkim-sign", "stamp", "archive",
                     "broker", "edge"):
            with open(os.path.join(self.home, "run", f"{name}.pid")) as f:
                pids[name] = int(f.read())
        self.assertTrue(all(pid_alive(p) for p in pids.values()), pids)

        long_line = "x" * 998
        # swaks ends the data with CRLF . CRLF itself: the file has no final
        # CRLF, and the message that arrives ends with one.
        body = ("Subject: swaks through sinkline\r\n\r\n"
                f"hello\r\n.dot first\r\n{long_line}\r\nend")
        body_file = os.path.join(self.home, "body.eml")
        with open(body_file, "w", newline="") as f:
            f.write(body)
        swaks = subprocess.run(
            ["swaks", "--server", f"127.0.0.1:{self.port}",
             "--to", "someone@example.test", "--from", "alice@example.net",
             "--data", body_file, "--timeout", "30"],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(swaks.returncode, 0, swaks.stdout + swaks.stderr)
        m = re.search(r"<[-~]  250 2\.0\.0 Ok: queued as (\S+)", swaks.stdout)
        self.assertIsNotNone(m, swaks.stdout)
        qid = m.group(1)

        path = os.path.join(self.home, "queue", "new", qid)
        wait_for(lambda: os.path.exists(path), 10, path)
        with open(path, "rb") as f:
            _, _, queued = f.read().partition(b"\n")
        stamp = f"X-Sinkline-Stamp: stamp; {qid}\r\n".encode()
        self.assertTrue(queued.startswith(stamp), queued[:200])
        queued, received = split_received(queued, len(stamp))
        self.assertIn(f"with ESMTP id {qid}".encode(), received)
        self.assertEqual(queued[len(stamp):], body.encode() + b"\r\n")

        # The archive sink ran last: its copy is the queued message.
        archived = os.path.join(self.home, "archive", qid + ".eml")
        wait_for(lambda: os.path.exists(archived), 10, archived)
        with open(archived, "rb") as f:
            self.assertEqual(f.read(), stamp + received + body.encode()
                             + b"\r\n")

        # recipient-policy: someone@ is in the list the script made,
        # nobody@ is not.
        unknown = subprocess.run(
            ["swaks", "--server", f"127.0.0.1:{self.port}",
             "--to", "nobody@example.test", "--from", "alice@example.net",
             "--timeout", "30"],
            capture_output=True, text=True, timeout=60)
        self.assertNotEqual(unknown.returncode, 0)
        self.assertIn("550 5.1.1", unknown.stdout)

        # dkim-sign: mail from example.test carries two signatures that
        # verify against the DNS records the script wrote.
        signed = subprocess.run(
            ["swaks", "--server", f"127.0.0.1:{self.port}",
             "--to", "bob@example.test", "--from", "alice@example.test",
             "--header", "Subject: signed", "--timeout", "30"],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(signed.returncode, 0, signed.stdout)
        sqid = re.search(r"queued as (\S+)", signed.stdout).group(1)
        spath = os.path.join(self.home, "queue", "new", sqid)
        wait_for(lambda: os.path.exists(spath), 10, spath)
        with open(spath, "rb") as f:
            _, _, smsg = f.read().partition(b"\n")
        self.assertEqual(smsg.count(b"DKIM-Signature:"), 2, smsg[:600])
        records = {}
        with open(os.path.join(self.home, "dkim", "dns.txt")) as f:
            for line in f:
                name, _, txt = line.partition(" TXT ")
                records[name.rstrip(".").encode()] = txt.strip().strip(
                    '"').encode()

        def dns(name, timeout=5):
            return records.get(name.rstrip(b"."))

        d = dkim.DKIM(smsg)
        for i in range(2):
            self.assertTrue(d.verify(idx=i, dnsfunc=dns), f"signature {i}")

        # STARTTLS with the self-signed certificate the script made.
        self.assertTrue(os.path.exists(
            os.path.join(self.home, "tls", "cert.pem")))
        tls = subprocess.run(
            ["swaks", "--server", f"127.0.0.1:{self.port}", "--tls",
             "--to", "someone@example.test", "--from", "alice@example.net",
             "--timeout", "30"],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(tls.returncode, 0, tls.stdout + tls.stderr)
        self.assertRegex(tls.stdout, r"<~  250 2\.0\.0 Ok: queued as")
        # Not an open relay.
        relay = subprocess.run(
            ["swaks", "--server", f"127.0.0.1:{self.port}",
             "--to", "someone@elsewhere.example", "--from",
             "alice@example.net", "--timeout", "30"],
            capture_output=True, text=True, timeout=60)
        self.assertNotEqual(relay.returncode, 0)
        self.assertIn("554 5.7.1 Relay access denied", relay.stdout)
        # ...but with the AUTH user the script made, over TLS, it relays.
        with open(os.path.join(self.home, "auth", "submit.password")) as f:
            password = f.read().strip()
        authed = subprocess.run(
            ["swaks", "--server", f"127.0.0.1:{self.port}", "--tls",
             "--auth", "PLAIN", "--auth-user", "submit",
             "--auth-password", password,
             "--to", "someone@elsewhere.example", "--from",
             "alice@example.test", "--timeout", "30"],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(authed.returncode, 0, authed.stdout)
        self.assertIn("235 2.7.0", authed.stdout)
        self.assertRegex(authed.stdout, r"<~  250 2\.0\.0 Ok: queued as")

        self.script.send_signal(signal.SIGINT)
        self.script.wait(timeout=30)
        for name, pid in pids.items():
            self.assertFalse(pid_alive(pid), f"{name} ({pid}) still running")
        self.assertIn("sinkline: stopped", self.output())

    def test_sinkline_command_finds_the_stack_without_flags(self):
        """`sinkline` with nothing but SINKLINE_HOME finds the broker and
        the edge's EdgeAdmin through the ports start.sh wrote to run/."""
        wait_for(lambda: "sinkline: up" in self.output(), 60, "stack up")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("SINKLINE_")}
        env["SINKLINE_HOME"] = self.home
        sinkline = os.path.join(BIN_DIR, "sinkline")

        def run(*args):
            r = subprocess.run([sinkline, *args], env=env, timeout=60,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self.assertEqual(r.returncode, 0, r.stderr.decode())
            return r.stdout.decode()

        bindings = run("bindings")
        for name in ("recipients", "dkim", "stamp-eod", "archive-eod"):
            self.assertRegex(bindings, rf"\n{name}\s")
        self.assertTrue(run("queue").endswith("-- 0 messages, 0 bytes\n"))
        self.assertTrue(run("sessions").startswith("SESSION"))
        self.assertTrue(run("counters", "edge").startswith("NAME"))
        self.assertIn(": ok (4 sinks, 4 bindings)",
                      run("check-config",
                          os.path.join(self.home, "run", "bindings.yaml")))


if __name__ == "__main__":
    unittest.main()
